// XEP-0050 ad-hoc commands (SPEC §15), the pure part: reading a command request, the JSON a `json` handler
// gets, reading a handler's answer (text or json), and the `<command/>` reply or the XEP-0050 error.

import XMPPCore

package enum AdHocCommand {
    package static let namespace = "http://jabber.org/protocol/commands"

    package enum Action: String, Hashable, Sendable, CaseIterable {
        case execute, next, prev, complete, cancel
    }

    /// An `<iq type='set'><command/></iq>` as the requester sent it.
    package struct Request: Hashable, Sendable {
        package var node: String
        package var action: Action
        package var sessionID: String?
        /// The submitted form (`<x xmlns='jabber:x:data'/>` inside the command), if any.
        package var form: DataForm?
    }

    /// A command error: a stanza error plus, where XEP-0050 defines one, its specific condition.
    package struct Failure: Error, Hashable, Sendable, CustomStringConvertible {
        package var error: StanzaError
        /// `bad-action`, `malformed-action`, `bad-sessionid`, `session-expired`, `bad-payload` (XEP-0050 §4.6).
        package var specific: String?

        package init(_ error: StanzaError, specific: String? = nil) {
            self.error = error
            self.specific = specific
        }

        package var description: String { error.description + (specific.map { " <\($0)/>" } ?? "") }

        /// The error reply to `stanza`, `by` the component.
        package func reply(to stanza: Stanza, by domain: String) -> Stanza {
            var error = self.error
            error.by = domain
            var reply = stanza.errorReply(error)
            if let specific {
                var children = reply.element.children
                if let index = children.firstIndex(where: { if case .element(let e) = $0 { e.name == "error" } else { false } }),
                   case .element(var element) = children[index]
                {
                    element.append(Element(specific, namespace: AdHocCommand.namespace))
                    children[index] = .element(element)
                    reply.element.children = children
                }
            }
            return reply
        }
    }

    /// Reads the command request in `stanza` (an iq set whose one child is `<command/>`).
    package static func request(in stanza: Stanza) -> Result<Request, Failure> {
        guard stanza.kind == .iq, stanza.type == "set",
              let command = stanza.element.elements.first(where: { $0.name == "command" && $0.namespace == namespace })
        else {
            return .failure(Failure(StanzaError(.modify, .badRequest, text: "a command is run with <iq type='set'><command xmlns='\(namespace)'/></iq>")))
        }
        guard let node = command[attribute: "node"], !node.isEmpty else {
            return .failure(Failure(StanzaError(.modify, .badRequest, text: "the command has no node")))
        }
        let actionText = command[attribute: "action"] ?? "execute"
        guard let action = Action(rawValue: actionText) else {
            return .failure(Failure(
                StanzaError(.modify, .badRequest, text: "unknown action \"\(actionText)\" (XEP-0050 knows execute, next, prev, complete and cancel)"),
                specific: "malformed-action"))
        }
        let sessionID = command[attribute: "sessionid"].flatMap { $0.isEmpty ? nil : $0 }
        let form = command.elements.first { $0.name == "x" && $0.namespace == DataForm.namespace }.flatMap(DataForm.init(element:))
        return .success(Request(node: node, action: action, sessionID: sessionID, form: form))
    }

    // MARK: Handler input

    /// The §7 JSON of the iq for a `json` handler, with `command` = `{node, action, sessionid, data}` (`data`: the
    /// submitted form as mod_rest's `formdata`, typed by the form of the previous step) and `session` = what the
    /// handler returned with the previous step (absent on the first).
    package static func input(for stanza: Stanza, request: Request, sessionID: String, session: JSONValue?,
                              previousForm: DataForm?) -> JSONValue {
        var object: [String: JSONValue] = [:]
        if case .object(let fields) = HandlerInput.json(for: stanza, room: nil) { object = fields }
        var command: [String: JSONValue] = [
            "node": .string(request.node), "action": .string(request.action.rawValue), "sessionid": .string(sessionID),
        ]
        if let form = request.form {
            command["data"] = form.formData(types: previousForm?.typesByVariable ?? [:])
        }
        object["command"] = .object(command)
        if let session { object["session"] = session } else { object.removeValue(forKey: "session") }
        return .object(object)
    }

    // MARK: Handler answer

    package enum Status: String, Hashable, Sendable {
        case executing, completed, canceled
    }

    package struct Note: Hashable, Sendable {
        package enum Kind: String, Hashable, Sendable { case info, warn, error }
        package var type: Kind
        package var text: String

        package init(_ type: Kind, _ text: String) {
            self.type = type
            self.text = text
        }
    }

    /// The `<actions/>` of an executing step: which actions the requester may take next.
    package struct Actions: Hashable, Sendable {
        package var execute: Action?
        package var next = false
        package var prev = false
        package var complete = false

        package init(execute: Action? = nil, next: Bool = false, prev: Bool = false, complete: Bool = false) {
            self.execute = execute
            self.next = next
            self.prev = prev
            self.complete = complete
        }

        /// What the requester may send back (cancel and execute, the default action, always).
        package var allowed: Set<Action> {
            var set: Set<Action> = [.execute, .cancel]
            if next { set.insert(.next) }
            if prev { set.insert(.prev) }
            if complete { set.insert(.complete) }
            return set
        }
    }

    /// One step's result as the handler gave it.
    package struct Answer: Hashable, Sendable {
        package var status: Status
        package var form: DataForm?
        package var note: Note?
        package var actions: Actions?
        /// Kept by stanzad and handed back with the next step.
        package var session: JSONValue?

        package init(status: Status, form: DataForm? = nil, note: Note? = nil, actions: Actions? = nil, session: JSONValue? = nil) {
            self.status = status
            self.form = form
            self.note = note
            self.actions = actions
            self.session = session
        }

        /// What the requester may do at the next step. Without `<actions/>` in an executing step: execute, next and
        /// complete (XEP-0050 leaves the default to the client), never prev.
        package var allowedNext: Set<Action> {
            actions?.allowed ?? [.execute, .next, .complete, .cancel]
        }
    }

    /// A handler answer that cannot become a command reply.
    package struct Problem: Error, Hashable, Sendable, CustomStringConvertible {
        package var description: String
        package init(_ description: String) { self.description = description }
    }

    /// A `text` command's stdout: a completed command with the output as an info note.
    package static func textAnswer(_ stdout: [UInt8]) throws(Problem) -> Answer {
        guard UTF8Validator.isValid(stdout) else { throw Problem("the command's output is not valid UTF-8") }
        var text = String(decoding: stdout, as: UTF8.self)
        if text.hasSuffix("\n") { text.removeLast() }
        guard text.unicodeScalars.allSatisfy(HandlerOutput.isXMLCharacter) else {
            throw Problem("the command's output contains a character XML cannot carry")
        }
        return Answer(status: .completed, note: text.isEmpty ? nil : Note(.info, text))
    }

    /// A `json` command's stdout: `{"command": {...}, "session": any}`; empty → completed.
    package static func jsonAnswer(_ stdout: [UInt8]) throws(Problem) -> Answer {
        guard !HandlerOutput.isBlank(stdout) else { return Answer(status: .completed) }
        let value: JSONValue
        do {
            value = try JSONValue.parse(stdout)
        } catch {
            throw Problem("the command's output is not valid JSON: \(error.message)")
        }
        return try jsonAnswer(value)
    }

    /// A worker's answer objects (none, or one `{"command": {...}, "session": any}`).
    package static func jsonAnswer(objects: [JSONValue]) throws(Problem) -> Answer {
        guard let first = objects.first else { return Answer(status: .completed) }
        guard objects.count == 1 else { throw Problem("a command step answers one object, not \(objects.count)") }
        return try jsonAnswer(first)
    }

    package static func jsonAnswer(_ value: JSONValue) throws(Problem) -> Answer {
        guard case .object(let object) = value else {
            throw Problem("the command's answer must be an object {\"command\": {…}, \"session\": …}, not \(DataForm.kind(value))")
        }
        let session = object["session"].flatMap { $0 == .null ? nil : $0 }
        guard let commandValue = object["command"] else {
            throw Problem("the command's answer has no \"command\" object")
        }
        guard case .object(let command) = commandValue else {
            throw Problem("\"command\" must be an object {status, form, note, actions}, not \(DataForm.kind(commandValue))")
        }
        var form: DataForm?
        if let formValue = command["form"], formValue != .null {
            do {
                form = try DataForm(json: formValue)
            } catch {
                throw Problem("the command's form is malformed: \(error.description)")
            }
        }
        var status = form == nil ? Status.completed : .executing
        if let value = command["status"] {
            guard case .string(let text) = value, let parsed = Status(rawValue: text), parsed != .canceled else {
                throw Problem("command.status must be \"executing\" or \"completed\", not \(value.serialized())")
            }
            status = parsed
        }
        var note: Note?
        if let value = command["note"], value != .null {
            guard case .object(let fields) = value, case .string(let text)? = fields["text"] else {
                throw Problem("command.note must be {\"type\": \"info\" | \"warn\" | \"error\", \"text\": \"…\"}")
            }
            var kind = Note.Kind.info
            if let typeValue = fields["type"] {
                guard case .string(let typeText) = typeValue, let parsed = Note.Kind(rawValue: typeText) else {
                    throw Problem("command.note.type must be \"info\", \"warn\" or \"error\", not \(typeValue.serialized())")
                }
                kind = parsed
            }
            guard text.unicodeScalars.allSatisfy(HandlerOutput.isXMLCharacter) else {
                throw Problem("command.note.text contains a character XML cannot carry")
            }
            note = Note(kind, text)
        }
        var actions: Actions?
        if let value = command["actions"], value != .null {
            guard case .object(let fields) = value else {
                throw Problem("command.actions must be an object {\"execute\": …, \"next\": true, \"prev\": true, \"complete\": true}")
            }
            var parsed = Actions()
            for (key, flag) in fields {
                switch key {
                case "execute":
                    guard case .string(let text) = flag, let action = Action(rawValue: text), [.next, .prev, .complete].contains(action) else {
                        throw Problem("command.actions.execute must be \"next\", \"prev\" or \"complete\", not \(flag.serialized())")
                    }
                    parsed.execute = action
                case "next", "prev", "complete":
                    guard case .bool(let on) = flag else { throw Problem("command.actions.\(key) must be true or false") }
                    if key == "next" { parsed.next = on } else if key == "prev" { parsed.prev = on } else { parsed.complete = on }
                default:
                    throw Problem("unknown key \"\(key)\" in command.actions (allowed: execute, next, prev, complete)")
                }
            }
            if let execute = parsed.execute, !parsed.allowed.contains(execute) {
                throw Problem("command.actions.execute is \"\(execute.rawValue)\" but that action is not offered (set \"\(execute.rawValue)\": true)")
            }
            actions = parsed
        }
        if status == .completed, actions != nil {
            throw Problem("a completed command offers no actions (use \"status\": \"executing\" with actions)")
        }
        return Answer(status: status, form: form, note: note, actions: actions, session: session)
    }

    // MARK: Reply

    /// The iq result for `stanza`: `<command node sessionid status>` with actions, note and form.
    package static func reply(to stanza: Stanza, node: String, sessionID: String, answer: Answer) -> Stanza {
        var reply = stanza.replySkeleton()
        var command = Element("command", namespace: namespace)
        command[attribute: "node"] = node
        command[attribute: "sessionid"] = sessionID
        command[attribute: "status"] = answer.status.rawValue
        if answer.status == .executing, let actions = answer.actions {
            var element = Element("actions", namespace: namespace)
            element[attribute: "execute"] = actions.execute?.rawValue
            if actions.prev { element.append(Element("prev", namespace: namespace)) }
            if actions.next { element.append(Element("next", namespace: namespace)) }
            if actions.complete { element.append(Element("complete", namespace: namespace)) }
            command.append(element)
        }
        if let note = answer.note {
            command.append(Element("note", namespace: namespace, attributes: ["type": note.type.rawValue], text: note.text))
        }
        if let form = answer.form { command.append(form.element) }
        reply.element.append(command)
        return reply
    }
}
