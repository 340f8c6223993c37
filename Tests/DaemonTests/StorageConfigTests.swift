import Testing

@testable import Daemon

private let component = componentSection

/// `[storage]` (SPEC §18) in the configuration.
@Suite struct StorageConfigTests {
    @Test func aRelativePathResolvesAgainstTheConfigFileAndSyncIsNormal() throws {
        let config = try load(component + "[storage]\npath = \"spool/stanzad.sqlite\"\n").get()
        #expect(config.storage == StanzadConfig.Storage(path: "/etc/stanzad/spool/stanzad.sqlite", sync: "normal"))
        #expect(!config.component.sendQueueGiven, "the spool's bound then defaults to 10,000")
    }

    @Test func storageMistakesAreReportedWithFileLine() {
        #expect(errors(component + "[storage]\n") == [
            "/etc/stanzad/stanzad.toml:5: missing required key \"path\" in storage",
        ])
        #expect(errors(component + "[storage]\npath = \"\"\n") == [
            "/etc/stanzad/stanzad.toml:6: storage path is empty: give the spool file, e.g. \"/var/lib/stanzad/stanzad.sqlite\"",
        ])
        #expect(errors(component + "[storage]\npath = \"/var/lib/stanzad/s.sqlite\"\nsync = \"fast\"\n") == [
            "/etc/stanzad/stanzad.toml:7: storage sync \"fast\" must be \"normal\" (survives a crash of stanzad) or \"full\" (also a power loss)",
        ])
        #expect(errors("storage = \"/var/lib/stanzad/s.sqlite\"\n" + component) == [
            "/etc/stanzad/stanzad.toml:1: storage must be a table ([storage])",
        ])
        #expect(errors(component + "[storage]\npath = \"/x.sqlite\"\nwal = true\n") == [
            "/etc/stanzad/stanzad.toml:7: unknown key \"wal\" in [storage]; allowed: path, sync",
        ])
    }
}
