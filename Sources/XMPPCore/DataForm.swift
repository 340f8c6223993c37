// XEP-0004 data forms: the `<x xmlns='jabber:x:data'/>` element and mod_rest's two JSON shapes for it,
// `dataform` (the whole form) and `formdata` (`{var: value or [values]}`), both directions. Pure.

/// A data form (XEP-0004).
package struct DataForm: Hashable, Sendable {
    package static let namespace = "jabber:x:data"
    package static let formTypes: Set<String> = ["form", "submit", "cancel", "result"]
    package static let fieldTypes: Set<String> = [
        "boolean", "fixed", "hidden", "jid-multi", "jid-single", "list-multi", "list-single", "text-multi",
        "text-private", "text-single",
    ]

    package struct Option: Hashable, Sendable {
        package var label: String?
        package var value: String

        package init(label: String? = nil, value: String) {
            self.label = label
            self.value = value
        }
    }

    package struct Field: Hashable, Sendable {
        package var variable: String?
        package var type: String?
        package var label: String?
        package var desc: String?
        package var required = false
        package var values: [String] = []
        package var options: [Option] = []

        package init(variable: String?, type: String? = nil, label: String? = nil, desc: String? = nil, required: Bool = false,
                     values: [String] = [], options: [Option] = []) {
            self.variable = variable
            self.type = type
            self.label = label
            self.desc = desc
            self.required = required
            self.values = values
            self.options = options
        }

        /// Types whose value is a list (several `<value/>`s).
        var isMulti: Bool { type == "jid-multi" || type == "list-multi" || type == "text-multi" }
    }

    package var type: String
    package var title: String?
    package var instructions: String?
    package var fields: [Field]

    package init(type: String = "form", title: String? = nil, instructions: String? = nil, fields: [Field] = []) {
        self.type = type
        self.title = title
        self.instructions = instructions
        self.fields = fields
    }

    /// A form that cannot be built: what is wrong, with the JSON path (e.g. `fields[1].value`).
    package struct Problem: Error, Hashable, Sendable, CustomStringConvertible {
        package var description: String
        package init(_ description: String) { self.description = description }
    }

    // MARK: XML

    /// Reads `<x xmlns='jabber:x:data'>`; nil for any other element.
    package init?(element: Element) {
        guard element.name == "x", element.namespace == Self.namespace else { return nil }
        let ns = Self.namespace
        self.type = element[attribute: "type"] ?? "form"
        self.title = element.child("title", namespace: ns)?.text
        self.instructions = element.child("instructions", namespace: ns)?.text
        self.fields = element.elements.filter { $0.name == "field" && $0.namespace == ns }.map { field in
            Field(
                variable: field[attribute: "var"], type: field[attribute: "type"], label: field[attribute: "label"],
                desc: field.child("desc", namespace: ns)?.text, required: field.child("required", namespace: ns) != nil,
                values: field.elements.filter { $0.name == "value" && $0.namespace == ns }.map(\.text),
                options: field.elements.filter { $0.name == "option" && $0.namespace == ns }.map { option in
                    Option(label: option[attribute: "label"], value: option.child("value", namespace: ns)?.text ?? "")
                })
        }
    }

    /// The `<x xmlns='jabber:x:data'/>` element.
    package var element: Element {
        let ns = Self.namespace
        var x = Element("x", namespace: ns)
        x[attribute: "type"] = type
        if let title { x.append(Element("title", namespace: ns, text: title)) }
        if let instructions { x.append(Element("instructions", namespace: ns, text: instructions)) }
        for field in fields {
            var f = Element("field", namespace: ns)
            f[attribute: "var"] = field.variable
            f[attribute: "type"] = field.type
            f[attribute: "label"] = field.label
            if let desc = field.desc { f.append(Element("desc", namespace: ns, text: desc)) }
            if field.required { f.append(Element("required", namespace: ns)) }
            for value in field.values { f.append(Element("value", namespace: ns, text: value)) }
            for option in field.options {
                var o = Element("option", namespace: ns)
                o[attribute: "label"] = option.label
                o.append(Element("value", namespace: ns, text: option.value))
                f.append(o)
            }
            x.append(f)
        }
        return x
    }

    // MARK: JSON: dataform

    /// mod_rest's `dataform` (its st2json): `{type, title, instructions, fields: [{var, type, label, desc, required,
    /// value, options: [{label, value}]}]}`. Multi-valued fields have an array `value` (text-multi: lines joined
    /// with "\n").
    package var json: JSONValue {
        var object: [String: JSONValue] = ["type": .string(type)]
        if let title { object["title"] = .string(title) }
        if let instructions { object["instructions"] = .string(instructions) }
        object["fields"] = .array(fields.map { field in
            var f: [String: JSONValue] = [:]
            if let variable = field.variable { f["var"] = .string(variable) }
            if let type = field.type { f["type"] = .string(type) }
            if let label = field.label { f["label"] = .string(label) }
            if let desc = field.desc { f["desc"] = .string(desc) }
            if field.required { f["required"] = .bool(true) }
            if field.type == "text-multi" {
                f["value"] = .string(field.values.joined(separator: "\n"))
            } else if field.isMulti {
                f["value"] = .array(field.values.map(JSONValue.string))
            } else if let first = field.values.first {
                f["value"] = .string(first)
            }
            if field.type == "list-single" || field.type == "list-multi" {
                f["options"] = .array(field.options.map { option in
                    var o: [String: JSONValue] = ["value": .string(option.value)]
                    if let label = option.label { o["label"] = .string(label) }
                    return .object(o)
                })
            }
            return .object(f)
        })
        return .object(object)
    }

    /// Builds a form from mod_rest's `dataform` JSON, strictly: anything that would make a wrong or empty form is a
    /// `Problem` naming the key (a handler's mistake shows up as a clear error, not as a half form).
    package init(json: JSONValue, defaultType: String = "form") throws(Problem) {
        guard case .object(let object) = json else {
            throw Problem("the form must be an object with \"fields\", not \(Self.kind(json))")
        }
        let known: Set<String> = ["type", "title", "instructions", "fields"]
        if let unknown = object.keys.sorted().first(where: { !known.contains($0) }) {
            throw Problem("unknown key \"\(unknown)\" in the form (allowed: type, title, instructions, fields)")
        }
        let type = try Self.string(object["type"], at: "type") ?? defaultType
        guard Self.formTypes.contains(type) else {
            throw Problem("form type \"\(type)\" is not one of form, submit, cancel, result")
        }
        self.type = type
        self.title = try Self.string(object["title"], at: "title")
        self.instructions = try Self.string(object["instructions"], at: "instructions")
        var fields: [Field] = []
        switch object["fields"] {
        case nil, .null?: break
        case .array(let items)?:
            for (index, item) in items.enumerated() {
                fields.append(try Self.field(item, at: "fields[\(index)]"))
            }
        case let other?:
            throw Problem("fields must be an array of field objects, not \(Self.kind(other))")
        }
        self.fields = fields
    }

    private static func field(_ json: JSONValue, at path: String) throws(Problem) -> Field {
        guard case .object(let object) = json else { throw Problem("\(path) must be a field object, not \(kind(json))") }
        let known: Set<String> = ["var", "type", "label", "desc", "required", "value", "options"]
        if let unknown = object.keys.sorted().first(where: { !known.contains($0) }) {
            throw Problem("unknown key \"\(unknown)\" in \(path) (allowed: var, type, label, desc, required, value, options)")
        }
        var field = Field(variable: try string(object["var"], at: "\(path).var"))
        field.type = try string(object["type"], at: "\(path).type")
        if let type = field.type, !fieldTypes.contains(type) {
            throw Problem("\(path).type \"\(type)\" is not a XEP-0004 field type (\(fieldTypes.sorted().joined(separator: ", ")))")
        }
        if field.variable == nil, field.type != "fixed" {
            throw Problem("\(path) has no \"var\" (only fixed fields may go without one)")
        }
        if field.variable?.isEmpty == true { throw Problem("\(path).var must not be empty") }
        field.label = try string(object["label"], at: "\(path).label")
        field.desc = try string(object["desc"], at: "\(path).desc")
        switch object["required"] {
        case nil, .null?: break
        case .bool(let value)?: field.required = value
        case let other?: throw Problem("\(path).required must be true or false, not \(kind(other))")
        }
        field.values = try values(object["value"], at: "\(path).value", splitLines: field.type == "text-multi")
        if field.values.count > 1, !field.isMulti, field.type != nil {
            throw Problem("\(path).value has \(field.values.count) values but a \(field.type ?? "") field takes one")
        }
        switch object["options"] {
        case nil, .null?: break
        case .array(let items)?:
            for (index, item) in items.enumerated() {
                let at = "\(path).options[\(index)]"
                guard case .object(let option) = item else { throw Problem("\(at) must be {\"label\", \"value\"}, not \(kind(item))") }
                guard let value = try string(option["value"], at: "\(at).value") else { throw Problem("\(at) has no \"value\"") }
                field.options.append(Option(label: try string(option["label"], at: "\(at).label"), value: value))
            }
        case let other?:
            throw Problem("\(path).options must be an array of {\"label\", \"value\"}, not \(kind(other))")
        }
        return field
    }

    // MARK: JSON: formdata

    /// mod_rest's `formdata` (its st2json): `{var: value}` for the fields that have a `var`. With a type (from the
    /// field, else from `types`, e.g. the form this one answers): boolean → true/false, list-single and list-multi →
    /// an array, text-multi → the lines joined with "\n", others → the first value or null. Without a type → an array.
    /// One difference: jid-multi is an array here (mod_rest keeps only its first value).
    package func formData(types: [String: String] = [:]) -> JSONValue {
        var object: [String: JSONValue] = [:]
        for field in fields {
            guard let variable = field.variable else { continue }
            switch field.type ?? types[variable] {
            case "list-single"?, "list-multi"?, "jid-multi"?:
                object[variable] = .array(field.values.map(JSONValue.string))
            case "text-multi"?:
                object[variable] = .string(field.values.joined(separator: "\n"))
            case "boolean"?:
                object[variable] = .bool(field.values.first == "1" || field.values.first == "true")
            case .some:
                object[variable] = field.values.first.map(JSONValue.string) ?? .null
            case nil:
                object[variable] = .array(field.values.map(JSONValue.string))
            }
        }
        return .object(object)
    }

    /// A form from mod_rest's `formdata` JSON (`{var: "value" | ["values"] | true/false}`), of type `type`.
    package init(formData json: JSONValue, type: String = "submit") throws(Problem) {
        guard case .object(let object) = json else { throw Problem("form data must be an object {var: value}, not \(Self.kind(json))") }
        self.type = type
        var fields: [Field] = []
        for key in object.keys.sorted() {
            fields.append(Field(variable: key, values: try Self.values(object[key], at: key, splitLines: false)))
        }
        self.fields = fields
    }

    /// The field types of this form by `var`.
    package var typesByVariable: [String: String] {
        var types: [String: String] = [:]
        for field in fields { if let variable = field.variable, let type = field.type { types[variable] = type } }
        return types
    }

    // MARK: Helpers

    private static func string(_ value: JSONValue?, at path: String) throws(Problem) -> String? {
        switch value {
        case nil, .null?: return nil
        case .string(let s)?:
            guard s.unicodeScalars.allSatisfy(isXMLCharacter) else { throw Problem("\(path) contains a character XML cannot carry") }
            return s
        case let other?: throw Problem("\(path) must be a string, not \(kind(other))")
        }
    }

    private static func values(_ value: JSONValue?, at path: String, splitLines: Bool) throws(Problem) -> [String] {
        switch value {
        case nil, .null?: return []
        case .bool(let b)?: return [b ? "1" : "0"]
        case .string?:
            let text = try string(value, at: path) ?? ""
            return splitLines ? text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init) : [text]
        case .array(let items)?:
            var result: [String] = []
            for (index, item) in items.enumerated() {
                guard case .string = item, let text = try string(item, at: "\(path)[\(index)]") else {
                    throw Problem("\(path)[\(index)] must be a string, not \(kind(item))")
                }
                result.append(text)
            }
            return result
        case let other?: throw Problem("\(path) must be a string or an array of strings, not \(kind(other))")
        }
    }

    private static func isXMLCharacter(_ scalar: Unicode.Scalar) -> Bool {
        let v = scalar.value
        return v == 0x09 || v == 0x0A || v == 0x0D || (v >= 0x20 && v != 0xFFFE && v != 0xFFFF)
    }

    package static func kind(_ value: JSONValue) -> String {
        switch value {
        case .null: "null"
        case .bool: "a boolean"
        case .int, .double: "a number"
        case .string: "a string"
        case .array: "an array"
        case .object: "an object"
        }
    }
}
