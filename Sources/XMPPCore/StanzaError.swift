// Stanza errors (RFC 6120 §8.3): types, defined conditions, the <error/> element, and error replies.

/// A stanza error: what goes inside `<error/>`.
public struct StanzaError: Error, Hashable, Sendable, CustomStringConvertible {
    public enum ErrorType: String, Hashable, Sendable, CaseIterable {
        case auth, cancel, `continue`, modify, wait
    }

    /// A defined condition. Unknown conditions read from the wire are kept as they are.
    public struct Condition: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
        public let rawValue: String
        public init(rawValue: String) { self.rawValue = rawValue }
        public var description: String { rawValue }

        public static let badRequest = Condition(rawValue: "bad-request")
        public static let conflict = Condition(rawValue: "conflict")
        public static let featureNotImplemented = Condition(rawValue: "feature-not-implemented")
        public static let forbidden = Condition(rawValue: "forbidden")
        public static let gone = Condition(rawValue: "gone")
        public static let internalServerError = Condition(rawValue: "internal-server-error")
        public static let itemNotFound = Condition(rawValue: "item-not-found")
        public static let jidMalformed = Condition(rawValue: "jid-malformed")
        public static let notAcceptable = Condition(rawValue: "not-acceptable")
        public static let notAllowed = Condition(rawValue: "not-allowed")
        public static let notAuthorized = Condition(rawValue: "not-authorized")
        public static let paymentRequired = Condition(rawValue: "payment-required")
        public static let policyViolation = Condition(rawValue: "policy-violation")
        public static let recipientUnavailable = Condition(rawValue: "recipient-unavailable")
        public static let redirect = Condition(rawValue: "redirect")
        public static let registrationRequired = Condition(rawValue: "registration-required")
        public static let remoteServerNotFound = Condition(rawValue: "remote-server-not-found")
        public static let remoteServerTimeout = Condition(rawValue: "remote-server-timeout")
        public static let resourceConstraint = Condition(rawValue: "resource-constraint")
        public static let serviceUnavailable = Condition(rawValue: "service-unavailable")
        public static let subscriptionRequired = Condition(rawValue: "subscription-required")
        public static let undefinedCondition = Condition(rawValue: "undefined-condition")
        public static let unexpectedRequest = Condition(rawValue: "unexpected-request")

        /// RFC 6120's defined conditions (plus RFC 3920's payment-required, which XEP-0086 still maps).
        public static let defined: [Condition] = [
            .badRequest, .conflict, .featureNotImplemented, .forbidden, .gone, .internalServerError,
            .itemNotFound, .jidMalformed, .notAcceptable, .notAllowed, .notAuthorized, .paymentRequired,
            .policyViolation, .recipientUnavailable, .redirect, .registrationRequired, .remoteServerNotFound,
            .remoteServerTimeout, .resourceConstraint, .serviceUnavailable, .subscriptionRequired,
            .undefinedCondition, .unexpectedRequest,
        ]

        public var isDefined: Bool { Self.defined.contains(self) }
    }

    public var type: ErrorType
    public var condition: Condition
    public var text: String?
    public var by: String?

    public init(_ type: ErrorType, _ condition: Condition, text: String? = nil, by: String? = nil) {
        self.type = type
        self.condition = condition
        self.text = text
        self.by = by
    }

    public var description: String {
        "\(type.rawValue)/\(condition.rawValue)" + (text.map { " (\($0))" } ?? "")
    }

    /// `<error type=… by=…><condition xmlns=stanzas/><text xmlns=stanzas>…</text></error>` in `namespace`.
    public func element(namespace: String? = Namespace.client) -> Element {
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
    public init?(element: Element) {
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
