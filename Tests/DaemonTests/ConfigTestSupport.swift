import Foundation

@testable import Daemon

/// The configuration `text` as loaded from /etc/stanzad/stanzad.toml.
func load(_ text: String) -> Result<StanzadConfig, ConfigErrors> {
    Result { () throws(ConfigErrors) in try ConfigLoader.load(text: text, file: "/etc/stanzad/stanzad.toml") }
}

/// The errors loading `text` reports, as `file:line: message`; empty when it loads.
func errors(_ text: String) -> [String] {
    if case .failure(let e) = load(text) { return e.errors.map(\.description) }
    return []
}

/// A minimal `[component]` section (lines 1–4, then an empty line): tests append the section they check.
let componentSection = """
    [component]
    jid = "bot.example.org"
    server = "127.0.0.1:5347"
    secret = "s3cret"

    """
