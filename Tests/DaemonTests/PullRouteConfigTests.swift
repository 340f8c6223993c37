import Testing

@testable import Daemon

private let component = """
    [component]
    jid = "bot.example.org"
    server = "127.0.0.1:5347"
    secret = "s3cret"

    """

/// `pull = true` routes (SPEC §17) and `[metrics]` (SPEC §19) in the configuration.
@Suite struct PullRouteAndMetricsConfigTests {
    @Test func aPullRouteKeepsTenThousandUpdatesForADayByDefault() throws {
        let config = try load(component + "[rest]\ncredentials = [\"Bearer x\"]\n[[route]]\nname = \"inbox\"\npull = true\n").get()
        let route = try #require(config.routes.first)
        #expect(route.target == .pull)
        #expect(route.queue == 10_000 && route.retention == 86_400)
    }

    @Test func pullMistakesAreReportedWithFileLine() {
        #expect(errors(component + "[[route]]\nname = \"inbox\"\npull = true\n") == [
            "/etc/stanzad/stanzad.toml:7: route \"inbox\" has pull = true but there is no [rest] section; updates are fetched at GET {rest.path}/updates/inbox",
        ])
        #expect(errors(component + "[rest]\ncredentials = [\"Bearer x\"]\n[[route]]\nname = \"a\"\nexec = [\"/bin/cat\"]\nretention = 60\n") == [
            "/etc/stanzad/stanzad.toml:10: retention applies to pull routes only (pull = true)",
        ])
        #expect(errors(component + "[rest]\ncredentials = [\"Bearer x\"]\n[[route]]\nname = \"a\"\nexec = [\"/bin/cat\"]\npull = true\n") == [
            "/etc/stanzad/stanzad.toml:7: route \"a\" needs exactly one of exec, worker, webhook or pull = true (found exec, pull)",
        ])
    }

    @Test func metricsNeedRestAndAPath() throws {
        #expect(errors(component + "[metrics]\n") == [
            "/etc/stanzad/stanzad.toml:5: [metrics] is served on the FastCGI front: add a [rest] section (its listen socket serves both)",
        ])
        #expect(errors(component + "[rest]\ncredentials = [\"Bearer x\"]\n[metrics]\npath = \"metrics\"\n") == [
            "/etc/stanzad/stanzad.toml:8: metrics path \"metrics\" must be a URL path starting with /, e.g. \"/metrics\"",
        ])
        #expect(errors(component + "[rest]\ncredentials = [\"Bearer x\"]\n[metrics]\npath = \"/rest\"\n") == [
            "/etc/stanzad/stanzad.toml:8: metrics path \"/rest\" collides with the REST API's own path",
        ])
        let config = try load(component + "[rest]\ncredentials = [\"Bearer x\"]\n[metrics]\ncredentials = [\"Bearer m\"]\n").get()
        #expect(config.metrics == StanzadConfig.Metrics(path: "/metrics", credentials: ["Bearer m"]))
    }
}
