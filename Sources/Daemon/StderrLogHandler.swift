// swift-log output to stderr (SPEC §13): `text` (one line, metadata as key=value) or `json` (one object per
// line). Only the daemon bootstraps logging.

import Foundation
import Logging
import Synchronization

enum LogFormat: String, CaseIterable, Sendable {
    case text, json
}

struct StderrLogHandler: LogHandler {
    var logLevel: Logger.Level
    var metadata: Logger.Metadata = [:]
    var metadataProvider: Logger.MetadataProvider?
    let label: String
    let format: LogFormat

    private static let lock = Mutex(())

    init(label: String, level: Logger.Level, format: LogFormat) {
        self.label = label
        self.logLevel = level
        self.format = format
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var merged = metadata
        if let provided = metadataProvider?.get() { merged.merge(provided) { $1 } }
        if let extra = event.metadata { merged.merge(extra) { $1 } }
        let line: String
        switch format {
        case .text:
            var text = "\(Self.timestamp()) \(event.level.rawValue.uppercased()) \(event.message)"
            for key in merged.keys.sorted() {
                text += " \(key)=\(Self.quoteIfNeeded("\(merged[key].map { "\($0)" } ?? "")"))"
            }
            line = text
        case .json:
            var object: [String: Any] = ["ts": Self.timestamp(), "level": event.level.rawValue, "msg": "\(event.message)"]
            for (key, value) in merged { object[key] = Self.jsonValue(value) }
            if let data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes]),
                let text = String(data: data, encoding: .utf8)
            {
                line = text
            } else {
                line = "{\"level\":\"error\",\"msg\":\"log line could not be encoded\"}"
            }
        }
        Self.lock.withLock { _ in
            FileHandle.standardError.write(Data((line + "\n").utf8))
        }
    }

    static func jsonValue(_ value: Logger.MetadataValue) -> Any {
        switch value {
        case .string(let s): return s
        case .stringConvertible(let c): return "\(c)"
        case .array(let a): return a.map(jsonValue)
        case .dictionary(let d): return d.mapValues(jsonValue)
        }
    }

    static func quoteIfNeeded(_ s: String) -> String {
        if s.isEmpty || s.contains(where: { $0 == " " || $0 == "\"" || $0 == "=" || $0.isNewline }) {
            let escaped = s.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
                .replacingOccurrences(of: "\n", with: "\\n").replacingOccurrences(of: "\r", with: "\\r")
            return "\"\(escaped)\""
        }
        return s
    }

    /// `2026-11-30T18:35:04.138Z`. Formatted by hand: an ISO8601DateFormatter per line cost about a quarter
    /// of a millisecond (ICU), more than handling the stanza the line describes.
    static func timestamp() -> String {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        var seconds = now.tv_sec
        var parts = tm()
        gmtime_r(&seconds, &parts)
        func pad(_ value: Int32, _ width: Int) -> String {
            let digits = String(value)
            return digits.count >= width ? digits : String(repeating: "0", count: width - digits.count) + digits
        }
        return "\(pad(parts.tm_year + 1900, 4))-\(pad(parts.tm_mon + 1, 2))-\(pad(parts.tm_mday, 2))T"
            + "\(pad(parts.tm_hour, 2)):\(pad(parts.tm_min, 2)):\(pad(parts.tm_sec, 2)).\(pad(Int32(now.tv_nsec / 1_000_000), 3))Z"
    }
}
