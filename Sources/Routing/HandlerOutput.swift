// Reads a handler's stdout by format (SPEC §5.2) into reply stanzas, and maps its exit status to a stanza
// error (SPEC §5.3). Pure: shared by process handlers, workers and `stanzad try`.

import XMPPCore

package enum HandlerOutput {
    /// Output that cannot become a reply; the sender gets internal-server-error and this is logged.
    package struct Problem: Error, Hashable, Sendable, CustomStringConvertible {
        package var description: String
        /// A bounded, printable excerpt of the offending output.
        package var excerpt: String

        init(_ description: String, output: [UInt8]) {
            self.description = description
            self.excerpt = HandlerOutput.excerpt(output)
        }
    }

    /// The replies encoded in `stdout` (unstamped; the dispatcher stamps them). Empty output → no reply.
    package static func replies(
        from stdout: [UInt8], format: HandlerFormat, incoming: Stanza, maxStanza: Int = 524_288
    ) throws(Problem) -> [Stanza] {
        guard UTF8Validator.isValid(stdout) else {
            throw Problem("handler output is not valid UTF-8", output: stdout)
        }
        switch format {
        case .text:
            var text = stdout
            if text.last == 0x0A { text.removeLast() }
            guard !text.isEmpty else { return [] }
            var reply = Stanza(kind: .message)
            reply.element.append(Element("body", namespace: Namespace.client, text: String(decoding: text, as: UTF8.self)))
            return [reply]
        case .json:
            guard !isBlank(stdout) else { return [] }
            let value: JSONValue
            do {
                value = try JSONValue.parse(stdout)
            } catch {
                throw Problem("handler output is not valid JSON: \(error.message)", output: stdout)
            }
            let objects: [JSONValue]
            switch value {
            case .array(let items): objects = items
            // mod_rest's form for several stanzas in one body.
            case .object(let members) where members.count == 1: if case .array(let items)? = members["xmpp"] { objects = items } else { objects = [value] }
            default: objects = [value]
            }
            var replies: [Stanza] = []
            let defaults = ReplyDefaults(replyingTo: incoming)
            for object in objects {
                do {
                    replies.append(try StanzaJSON.decode(object, defaults: defaults))
                } catch {
                    throw Problem("handler JSON is not a stanza: \(error.message)", output: stdout)
                }
            }
            return replies
        case .xml:
            guard !isBlank(stdout) else { return [] }
            let elements: [Element]
            do {
                elements = try XMLStreamParser.parseFragment(stdout, limits: XMLLimits(maxStanzaBytes: maxStanza))
            } catch {
                throw Problem("handler output is not well-formed XML: \(error.message)", output: stdout)
            }
            var replies: [Stanza] = []
            // mod_rest's <xmpp> wrapper for several stanzas: its children are the stanzas.
            let unwrapped = elements.flatMap { $0.name == "xmpp" && Namespace.isStanzaNamespace($0.namespace) ? $0.elements : [$0] }
            for element in unwrapped {
                guard let stanza = Stanza(element) else {
                    throw Problem(
                        "handler output <\(element.name)> is not a stanza (expected <message>, <presence> or <iq> in jabber:client)",
                        output: stdout)
                }
                replies.append(stanza)
            }
            return replies
        }
    }

    /// SPEC §5.3: the error for a handler that exited with `code` (non-zero).
    package static func error(forExitCode code: Int32) -> StanzaError {
        switch code {
        case 64: StanzaError(.modify, .badRequest)
        case 65: StanzaError(.modify, .notAcceptable)
        case 66, 67, 68: StanzaError(.cancel, .itemNotFound)
        case 69: StanzaError(.cancel, .serviceUnavailable)
        case 75: StanzaError(.wait, .resourceConstraint)
        case 77: StanzaError(.auth, .forbidden)
        default: StanzaError(.cancel, .internalServerError)
        }
    }

    /// The outcome of a handler that exited non-zero with `stdout`: with `text`, non-empty output becomes the
    /// error's text; with `json`/`xml`, an error stanza the handler printed is sent as given.
    package static func failure(exitCode code: Int32, stdout: [UInt8], format: HandlerFormat, incoming: Stanza) -> HandlerOutcome {
        var error = self.error(forExitCode: code)
        switch format {
        case .text:
            if UTF8Validator.isValid(stdout) {
                var text = String(decoding: stdout, as: UTF8.self)
                while text.last?.isNewline == true { text.removeLast() }
                if !text.isEmpty && !text.unicodeScalars.contains(where: { !isXMLCharacter($0) }) { error.text = text }
            }
        case .json, .xml:
            if let replies = try? replies(from: stdout, format: format, incoming: incoming),
               !replies.isEmpty, replies.allSatisfy({ $0.type == "error" })
            {
                return HandlerOutcome(replies: replies)
            }
        }
        return HandlerOutcome(failure: error)
    }

    /// XML 1.0 Char: tab, newline, carriage return, and everything from U+0020 except U+FFFE and U+FFFF.
    package static func isXMLCharacter(_ scalar: Unicode.Scalar) -> Bool {
        let v = scalar.value
        return v == 0x09 || v == 0x0A || v == 0x0D || (v >= 0x20 && v != 0xFFFE && v != 0xFFFF)
    }

    package static func isBlank(_ bytes: [UInt8]) -> Bool {
        bytes.allSatisfy { $0 == 0x20 || $0 == 0x09 || $0 == 0x0A || $0 == 0x0D }
    }

    /// At most 200 bytes of `bytes`, with non-printable bytes shown as \xNN.
    package static func excerpt(_ bytes: [UInt8]) -> String {
        var result = ""
        for byte in bytes.prefix(200) {
            if byte >= 0x20 && byte < 0x7F && byte != 0x5C {
                result.unicodeScalars.append(Unicode.Scalar(byte))
            } else {
                result += "\\x" + String(byte, radix: 16, uppercase: false).leftPadded(to: 2)
            }
        }
        if bytes.count > 200 { result += "… (\(bytes.count) bytes)" }
        return result
    }
}

extension String {
    fileprivate func leftPadded(to width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}
