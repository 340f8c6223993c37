// The line protocol between stanzad and a worker (SPEC §5.4): one JSON object per line each way; requests
// carry a string `ref`, answers echo it. Pure, so the framing is tested without processes.

import Routing
import XMPPCore

package enum WorkerProtocol {
    /// A line a worker wrote that is not a valid answer; the worker is restarted.
    package struct Problem: Error, Hashable, Sendable, CustomStringConvertible {
        package var description: String
    }

    /// An answer: the request it belongs to and the reply objects (§7), possibly none.
    package struct Answer: Hashable, Sendable {
        package var ref: String
        package var replies: [JSONValue]
    }

    /// The request line for `stanza`: its §7 JSON (with `stanza`) plus `ref`, and a newline.
    package static func requestLine(for stanza: Stanza, ref: String, room: RoomOrigin? = nil) -> [UInt8] {
        var object: [String: JSONValue] = [:]
        if case .object(let fields) = HandlerInput.json(for: stanza, room: room) { object = fields }
        object["ref"] = .string(ref)
        return JSONValue.object(object).serializedBytes() + [0x0A]
    }

    /// Parses one answer line (without its newline).
    package static func parseAnswer(_ line: [UInt8]) throws(Problem) -> Answer {
        let value: JSONValue
        do {
            value = try JSONValue.parse(line)
        } catch {
            throw Problem(description: "worker wrote a line that is not JSON: \(error.message)")
        }
        guard case .object(var object) = value else {
            throw Problem(description: "worker wrote \(value.kindDescription), not an object with a \"ref\"")
        }
        guard case .string(let ref)? = object.removeValue(forKey: "ref") else {
            throw Problem(description: "worker answer has no string \"ref\"")
        }
        if let replies = object["replies"] {
            guard case .array(let items) = replies, items.allSatisfy({ if case .object = $0 { true } else { false } }) else {
                throw Problem(description: "worker answer \(ref): \"replies\" must be an array of objects")
            }
            return Answer(ref: ref, replies: items)
        }
        return Answer(ref: ref, replies: object.isEmpty ? [] : [.object(object)])
    }
}

/// Splits a byte stream into lines, refusing lines longer than `limit`.
struct LineSplitter {
    let limit: Int
    private var pending: [UInt8] = []

    init(limit: Int) { self.limit = limit }

    /// Feeds bytes; returns the complete lines, or nil when a line exceeds the limit.
    mutating func feed(_ bytes: UnsafeRawBufferPointer) -> [[UInt8]]? {
        var lines: [[UInt8]] = []
        for byte in bytes {
            if byte == 0x0A {
                if pending.last == 0x0D { pending.removeLast() }
                lines.append(pending)
                pending.removeAll(keepingCapacity: true)
            } else {
                pending.append(byte)
                if pending.count > limit { return nil }
            }
        }
        return lines
    }
}
