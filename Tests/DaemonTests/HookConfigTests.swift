import Foundation
import Testing

@testable import Daemon

private let base = """
    [component]
    jid = "bot.example.org"
    server = "127.0.0.1:5347"
    secret = "s3cret"

    [rest]
    credentials = ["Bearer x"]

    """

/// `[[hook]]` (SPEC §16): what is read, and every mistake with its file:line and what to do.
@Suite struct HookConfigTests {
    @Test func aHookIsReadWithItsDefaults() throws {
        let config = try load(base + """
            [[hook]]
            name = "alertmanager"
            exec = ["handlers/alertmanager.py", "--verbose"]
            to = ["ops@conference.example.org"]
            """).get()
        let hook = try #require(config.hooks.first)
        #expect(hook.name == "alertmanager")
        #expect(hook.argv == ["/etc/stanzad/handlers/alertmanager.py", "--verbose"])
        #expect(hook.to == ["ops@conference.example.org"])
        #expect(hook.auth == .credentials)
        #expect(hook.hmacHeader == "X-Hub-Signature-256")
        #expect(hook.timeout == 10)
        #expect(config.hookSettings.first?.auth == .credentials)
    }

    @Test func anHmacHookNeedsItsSecret() throws {
        #expect(errors(base + "[[hook]]\nname = \"f\"\nexec = [\"/bin/cat\"]\nauth = \"hmac\"\n") == [
            "/etc/stanzad/stanzad.toml:8: missing hmac_secret (or hmac_secret_file)",
        ])
        let config = try load(base + "[[hook]]\nname = \"f\"\nexec = [\"/bin/cat\"]\nauth = \"hmac\"\nhmac_secret = \"k\"\nhmac_header = \"X-Forgejo-Signature\"\n").get()
        #expect(config.hookSettings.first?.auth == .hmac(secret: Array("k".utf8), header: "X-Forgejo-Signature"))
    }

    @Test func mistakesAreReportedWithFileLine() {
        #expect(errors(base + "[[hook]]\nname = \"a/b\"\nexec = [\"/bin/cat\"]\n") == [
            "/etc/stanzad/stanzad.toml:9: hook name \"a/b\" must be letters, digits, '-', '_' or '.' (it is a URL path segment)",
        ])
        #expect(errors(base + "[[hook]]\nname = \"a\"\n") == [
            "/etc/stanzad/stanzad.toml:8: hook \"a\" needs exec = [\"program\", …]",
        ])
        #expect(errors(base + "[[hook]]\nname = \"a\"\nworker = [\"/bin/cat\"]\n") == [
            "/etc/stanzad/stanzad.toml:8: hook \"a\" needs exec = [\"program\", …]",
            "/etc/stanzad/stanzad.toml:10: hooks run exec handlers only for now: use exec = [...]",
        ])
        #expect(errors(base + "[[hook]]\nname = \"a\"\nexec = [\"/bin/cat\"]\nauth = \"token\"\n") == [
            "/etc/stanzad/stanzad.toml:11: unknown auth \"token\" (use credentials, hmac or none)",
        ])
        #expect(errors(base + "[[hook]]\nname = \"a\"\nexec = [\"/bin/cat\"]\nto = [\"not a jid@\"]\n") == [
            "/etc/stanzad/stanzad.toml:11: to: \"not a jid@\" is not a valid JID",
        ])
        #expect(errors(base + "[[hook]]\nname = \"a\"\nexec = [\"/bin/cat\"]\nhmac_secret = \"k\"\n") == [
            "/etc/stanzad/stanzad.toml:11: hmac_secret is set but auth is \"credentials\"; set auth = \"hmac\" to check signatures",
        ])
        #expect(errors(base + "[[hook]]\nname = \"a\"\nexec = [\"/bin/cat\"]\n[[hook]]\nname = \"a\"\nexec = [\"/bin/cat\"]\n") == [
            "/etc/stanzad/stanzad.toml:12: hook name \"a\" is used twice; hook names must be unique",
        ])
        #expect(errors(base + "[[hook]]\nname = \"a\"\nexec = [\"/bin/cat\"]\nretries = 2\n") == [
            "/etc/stanzad/stanzad.toml:11: unknown key \"retries\" in [hook]; allowed: name, exec, worker, to, auth, hmac_secret, hmac_secret_file, hmac_header, timeout, env, pass_env, workdir, max_output",
        ])
    }

    @Test func hooksNeedTheRestAPIAndCredentialsHooksNeedCredentials() {
        let noRest = """
            [component]
            jid = "bot.example.org"
            server = "127.0.0.1:5347"
            secret = "s3cret"

            [[hook]]
            name = "a"
            exec = ["/bin/cat"]
            auth = "none"
            """
        #expect(errors(noRest) == [
            "/etc/stanzad/stanzad.toml:6: [[hook]] needs the REST API: add a [rest] section (hooks are served at POST {rest.path}/hooks/{name})",
        ])
        let noCredentials = base.replacingOccurrences(of: "credentials = [\"Bearer x\"]", with: "path = \"/rest\"")
            + "[[hook]]\nname = \"a\"\nexec = [\"/bin/cat\"]\n"
        #expect(errors(noCredentials) == [
            "/etc/stanzad/stanzad.toml:8: hook \"a\" has auth = \"credentials\" but [rest] has no credentials; add credentials to [rest] or use auth = \"hmac\"",
        ])
    }
}
