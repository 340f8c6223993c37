import Testing

@testable import Daemon

private let component = """
    [component]
    jid = "bot.example.org"
    server = "127.0.0.1:5347"
    secret = "s3cret"

    """

/// `[component] instance_jid` (SPEC §20) in the configuration.
@Suite struct InstanceConfigTests {
    @Test func instanceJIDIsOptionalAndReadAsABareDomain() throws {
        #expect(try load(component).get().component.instanceJID == nil)
        let config = try load(component.replacingOccurrences(of: "secret = \"s3cret\"\n", with: "secret = \"s3cret\"\ninstance_jid = \"I1.Bot.Example.org\"\n")).get()
        #expect(config.component.instanceJID == "i1.bot.example.org")
    }

    @Test func instanceJIDMistakesAreReportedWithFileLine() {
        #expect(errors(component + "") == [])
        #expect(errors(component.replacingOccurrences(of: "secret = \"s3cret\"\n", with: "secret = \"s3cret\"\ninstance_jid = \"bot.example.org\"\n")) == [
            "/etc/stanzad/stanzad.toml:5: instance_jid \"bot.example.org\" must differ from jid: it is this instance's own domain, e.g. i1.bot.example.org",
        ])
        #expect(errors(component.replacingOccurrences(of: "secret = \"s3cret\"\n", with: "secret = \"s3cret\"\ninstance_jid = \"i1@bot.example.org\"\n")) == [
            "/etc/stanzad/stanzad.toml:5: instance_jid \"i1@bot.example.org\" must be a bare domain such as i1.bot.example.org (no user@, no /resource)",
        ])
        #expect(errors(component.replacingOccurrences(of: "secret = \"s3cret\"\n", with: "secret = \"s3cret\"\ninstance_jid = \"i1.bot.example.org/x\"\n")) == [
            "/etc/stanzad/stanzad.toml:5: instance_jid \"i1.bot.example.org/x\" must be a bare domain such as i1.bot.example.org (no user@, no /resource)",
        ])
        #expect(errors(component.replacingOccurrences(of: "secret = \"s3cret\"\n", with: "secret = \"s3cret\"\ninstance_jid = 1\n")) == [
            "/etc/stanzad/stanzad.toml:5: instance_jid must be a string, not an integer",
        ])
    }
}
