// Response content negotiation (SPEC §9): the Accept header with q-values and wildcards, else the request's
// own type, else XML.

import Foundation

enum Negotiation {
    static let supported = ["application/xmpp+xml", "application/json"]

    static func choose(accept: String?, requestType: String) -> String {
        let fallback = supported.contains(requestType) ? requestType : "application/xmpp+xml"
        guard let accept, !accept.trimmingCharacters(in: .whitespaces).isEmpty else { return fallback }
        var ranges: [(type: String, q: Double, order: Int)] = []
        for (order, item) in accept.split(separator: ",").enumerated() {
            let parts = item.split(separator: ";")
            guard let first = parts.first else { continue }
            let type = String(first).trimmingCharacters(in: .whitespaces).lowercased()
            var q = 1.0
            for parameter in parts.dropFirst() {
                let pair = parameter.split(separator: "=", maxSplits: 1).map { String($0).trimmingCharacters(in: .whitespaces) }
                if pair.count == 2, pair[0].lowercased() == "q", let value = Double(pair[1]) { q = max(0, min(1, value)) }
            }
            ranges.append((type, q, order))
        }
        // For each type we can produce, the q of the most specific range that matches it.
        func quality(_ candidate: String) -> (Double, Int)? {
            let (major, _) = split(candidate)
            var best: (specificity: Int, q: Double, order: Int)?
            for range in ranges {
                let specificity: Int
                if range.type == candidate { specificity = 2 }
                else if range.type == "\(major)/*" { specificity = 1 }
                else if range.type == "*/*" { specificity = 0 }
                else { continue }
                if let current = best, specificity <= current.specificity { continue }
                best = (specificity, range.q, range.order)
            }
            return best.map { ($0.q, $0.specificity == 2 ? $0.order : Int.max) }
        }
        var candidates = supported.compactMap { type in quality(type).map { (type, $0.0, $0.1) } }.filter { $0.1 > 0 }
        guard !candidates.isEmpty else { return fallback }
        // Highest q; then a type named explicitly (in header order); then the request's own type; then XML.
        candidates.sort { a, b in
            if a.1 != b.1 { return a.1 > b.1 }
            if a.2 != b.2 { return a.2 < b.2 }
            if (a.0 == fallback) != (b.0 == fallback) { return a.0 == fallback }
            return a.0 == "application/xmpp+xml"
        }
        return candidates[0].0
    }

    private static func split(_ type: String) -> (String, String) {
        let parts = type.split(separator: "/", maxSplits: 1)
        return (parts.first.map(String.init) ?? "", parts.count > 1 ? String(parts[1]) : "")
    }
}

