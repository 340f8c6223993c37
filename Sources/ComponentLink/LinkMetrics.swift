// `stanzad_stanzas_total{direction,kind}` (SPEC §19): stanzas read from and queued for the component stream.
// The counters are made on first use (after the daemon has bootstrapped its metrics backend).

import Metrics
import XMPPCore

enum LinkMetrics {
    private static let inbound = StanzaKind.allCases.map {
        Counter(label: "stanzad_stanzas_total", dimensions: [("direction", "in"), ("kind", $0.rawValue)])
    }
    private static let outbound = StanzaKind.allCases.map {
        Counter(label: "stanzad_stanzas_total", dimensions: [("direction", "out"), ("kind", $0.rawValue)])
    }

    static func received(_ kind: StanzaKind) {
        inbound[StanzaKind.allCases.firstIndex(of: kind) ?? 0].increment()
    }

    static func queued(_ kind: StanzaKind) {
        outbound[StanzaKind.allCases.firstIndex(of: kind) ?? 0].increment()
    }
}
