// Stanza errors (RFC 6120 §8.3): types, defined conditions, the <error/> element, and error replies.

/// A stanza error: what goes inside `<error/>`.
package struct StanzaError: Error, Hashable, Sendable, CustomStringConvertible {
    package enum ErrorType: String, Hashable, Sendable, CaseIterable {
        case auth, cancel, `continue`, modify, wait
    }

    /// A defined condition. Unknown conditions read from the wire are kept as they are.
    package struct Condition: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
        package let rawValue: String
        package init(rawValue: String) { self.rawValue = rawValue }
        package var description: String { rawValue }

        package static let badRequest = Condition(rawValue: "bad-request")
        package static let conflict = Condition(rawValue: "conflict")
        package static let featureNotImplemented = Condition(rawValue: "feature-not-implemented")
        package static let forbidden = Condition(rawValue: "forbidden")
        package static let gone = Condition(rawValue: "gone")
        package static let internalServerError = Condition(rawValue: "internal-server-error")
        package static let itemNotFound = Condition(rawValue: "item-not-found")
        package static let jidMalformed = Condition(rawValue: "jid-malformed")
        package static let notAcceptable = Condition(rawValue: "not-acceptable")
        package static let notAllowed = Condition(rawValue: "not-allowed")
        package static let notAuthorized = Condition(rawValue: "not-authorized")
        package static let paymentRequired = Condition(rawValue: "payment-required")
        package static let policyViolation = Condition(rawValue: "policy-violation")
        package static let recipientUnavailable = Condition(rawValue: "recipient-unavailable")
        package static let redirect = Condition(rawValue: "redirect")
        package static let registrationRequired = Condition(rawValue: "registration-required")
        package static let remoteServerNotFound = Condition(rawValue: "remote-server-not-found")
        package static let remoteServerTimeout = Condition(rawValue: "remote-server-timeout")
        package static let resourceConstraint = Condition(rawValue: "resource-constraint")
        package static let serviceUnavailable = Condition(rawValue: "service-unavailable")
        package static let subscriptionRequired = Condition(rawValue: "subscription-required")
        package static let undefinedCondition = Condition(rawValue: "undefined-condition")
        package static let unexpectedRequest = Condition(rawValue: "unexpected-request")

        /// RFC 6120's defined conditions (plus RFC 3920's payment-required, which XEP-0086 still maps).
        package static let defined: [Condition] = [
            .badRequest, .conflict, .featureNotImplemented, .forbidden, .gone, .internalServerError,
            .itemNotFound, .jidMalformed, .notAcceptable, .notAllowed, .notAuthorized, .paymentRequired,
            .policyViolation, .recipientUnavailable, .redirect, .registrationRequired, .remoteServerNotFound,
            .remoteServerTimeout, .resourceConstraint, .serviceUnavailable, .subscriptionRequired,
            .undefinedCondition, .unexpectedRequest,
        ]

        package var isDefined: Bool { Self.defined.contains(self) }
    }

    package var type: ErrorType
    package var condition: Condition
    package var text: String?
    package var by: String?

    package init(_ type: ErrorType, _ condition: Condition, text: String? = nil, by: String? = nil) {
        self.type = type
        self.condition = condition
        self.text = text
        self.by = by
    }

    package var description: String {
        "\(type.rawValue)/\(condition.rawValue)" + (text.map { " (\($0))" } ?? "")
    }

    /// `<error type=… by=…><condition xmlns=stanzas/><text xmlns=stanzas>…</text></error>` in `namespace`.
    package func element(namespace: String? = Namespace.client) -> Element {
        var error = Element("error", namespace: namespace)
        error[attribute: "type"] = type.rawValue
        if let by { error[attribute: "by"] = by }
        error.append(Element(condition.rawValue, namespace: Namespace.stanzas))
        if let text, !text.isEmpty {
            error.append(Element("text", namespace: Namespace.stanzas, text: text))
        }
        return error
    }

    /// Reads an `<error/>` element. Returns nil when it carries no condition element.
    package init?(element: Element) {
        guard element.name == "error" else { return nil }
        let condition = element.elements.first { $0.namespace == Namespace.stanzas && $0.name != "text" }
        let typeValue = element[attribute: "type"].flatMap(ErrorType.init(rawValue:))
        guard let condition else { return nil }
        self.init(
            typeValue ?? .cancel, Condition(rawValue: condition.name),
            text: element.child("text", namespace: Namespace.stanzas)?.text,
            by: element[attribute: "by"])
    }
}
