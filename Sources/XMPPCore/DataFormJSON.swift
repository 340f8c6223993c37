// XEP-0004 data forms in mod_rest's two JSON shapes: `dataform` (the whole form, both directions) and `formdata`
// (`{var: value}`, for submitting; forms read from XML come back as `dataform`). Used by the `dataform`,
// `formdata`, `command` and `disco` keys of StanzaJSON.

enum DataFormJSON {
    static let namespace = "jabber:x:data"
    static let formTypes = ["cancel", "form", "result", "submit"]
    static let fieldTypes = [
        "boolean", "fixed", "hidden", "jid-multi", "jid-single", "list-multi", "list-single", "text-multi", "text-private",
        "text-single",
    ]

    // MARK: XML → JSON

    /// `{type, title, instructions, fields: [{var, type, label, desc, required, value, options}]}`: `value` is the
    /// first value, an array for jid-multi and list-multi, the lines joined with "\n" for text-multi; `options`
    /// only for list fields.
    static func dataform(_ x: Element) -> JSONValue {
        let ns = x.namespace
        var form: [String: JSONValue] = [:]
        if let type = x[attribute: "type"] { form["type"] = .string(type) }
        if let title = x.child("title", namespace: ns) { form["title"] = .string(title.text) }
        if let instructions = x.child("instructions", namespace: ns) { form["instructions"] = .string(instructions.text) }
        var fields: [JSONValue] = []
        for field in x.elements where field.name == "field" && field.namespace == ns {
            var out: [String: JSONValue] = [:]
            for name in ["var", "type", "label"] {
                if let value = field[attribute: name] { out[name] = .string(value) }
            }
            if let desc = field.child("desc", namespace: ns) { out["desc"] = .string(desc.text) }
            if field.child("required", namespace: ns) != nil { out["required"] = true }
            let values = field.elements.filter { $0.name == "value" && $0.namespace == ns }.map(\.text)
            switch field[attribute: "type"] {
            case "jid-multi", "list-multi": out["value"] = .array(values.map(JSONValue.string))
            case "text-multi": out["value"] = .string(values.joined(separator: "\n"))
            default: if let first = values.first { out["value"] = .string(first) }
            }
            if let type = field[attribute: "type"], type == "list-single" || type == "list-multi" {
                out["options"] = .array(field.elements.filter { $0.name == "option" && $0.namespace == ns }.map { option in
                    var o: [String: JSONValue] = [:]
                    if let label = option[attribute: "label"] { o["label"] = .string(label) }
                    if let value = option.child("value", namespace: ns) { o["value"] = .string(value.text) }
                    return .object(o)
                })
            }
            fields.append(.object(out))
        }
        form["fields"] = .array(fields)
        return .object(form)
    }

    /// `{var: value}`: booleans as true/false, list fields as arrays, text-multi as one string, other typed fields
    /// as their first value (null without one), untyped fields as arrays (nothing says how many values they take).
    static func formdata(_ x: Element) -> [String: JSONValue] {
        let ns = x.namespace
        var out: [String: JSONValue] = [:]
        for field in x.elements where field.name == "field" && field.namespace == ns {
            guard let variable = field[attribute: "var"] else { continue }
            let values = field.elements.filter { $0.name == "value" && $0.namespace == ns }.map(\.text)
            switch field[attribute: "type"] {
            case "list-single"?, "list-multi"?: out[variable] = .array(values.map(JSONValue.string))
            case "text-multi"?: out[variable] = .string(values.joined(separator: "\n"))
            case "boolean"?: out[variable] = .bool(values.first == "1" || values.first == "true")
            case .some: out[variable] = values.first.map(JSONValue.string) ?? .null
            case nil: out[variable] = .array(values.map(JSONValue.string))
            }
        }
        return out
    }

    // MARK: JSON → XML

    /// The `<x xmlns='jabber:x:data'/>` a `dataform` object describes; `field` names it in errors.
    static func element(dataform fields: StanzaJSON.Fields) throws(JSONMappingError) -> Element {
        var x = Element("x", namespace: namespace)
        if let type = try fields.string("type") {
            guard formTypes.contains(type) else {
                throw JSONMappingError(
                    .invalidField, "\"\(fields.name("type"))\" must be one of \(formTypes.joined(separator: ", ")), got \(StanzaJSON.quoted(type))",
                    field: fields.name("type"))
            }
            x[attribute: "type"] = type
        }
        if let title = try fields.string("title") { x.append(Element("title", namespace: namespace, text: title)) }
        if let instructions = try fields.string("instructions") {
            x.append(Element("instructions", namespace: namespace, text: instructions))
        }
        for field in try fields.objects("fields") {
            var f = Element("field", namespace: namespace)
            f[attribute: "var"] = try field.string("var")
            if let type = try field.string("type") {
                guard fieldTypes.contains(type) else {
                    throw JSONMappingError(
                        .invalidField,
                        "\"\(field.name("type"))\" must be a XEP-0004 field type (\(fieldTypes.joined(separator: ", "))), got \(StanzaJSON.quoted(type))",
                        field: field.name("type"))
                }
                f[attribute: "type"] = type
            }
            f[attribute: "label"] = try field.string("label")
            if let desc = try field.string("desc") { f.append(Element("desc", namespace: namespace, text: desc)) }
            if let required = field.value("required") {
                guard case .bool(let flag) = required else { throw field.invalid("required", "true or false", required) }
                if flag { f.append(Element("required", namespace: namespace)) }
            }
            for value in try values(field, "value") { f.append(Element("value", namespace: namespace, text: value)) }
            for option in try field.objects("options") {
                var o = Element("option", namespace: namespace)
                o[attribute: "label"] = try option.string("label")
                guard let value = try option.string("value") else {
                    throw JSONMappingError(.invalidField, "\"\(option.path)\" needs a string \"value\"", field: option.name("value"))
                }
                o.append(Element("value", namespace: namespace, text: value))
                f.append(o)
            }
            x.append(f)
        }
        return x
    }

    /// The form a `formdata` object (`{var: "value" | ["values"] | true/false | number}`) submits, of `type`.
    static func element(formdata fields: StanzaJSON.Fields, type: String?) throws(JSONMappingError) -> Element {
        var x = Element("x", namespace: namespace)
        x[attribute: "type"] = type
        for key in fields.object.keys.sorted() {
            try StanzaJSON.checkXMLCharacters(key, field: fields.name(key))
            var f = Element("field", namespace: namespace, attributes: [Attribute(name: "var", value: key)])
            for value in try values(fields, key) { f.append(Element("value", namespace: namespace, text: value)) }
            x.append(f)
        }
        return x
    }

    /// A field's values: a string, an array of strings, a boolean ("1"/"0") or a number.
    private static func values(_ fields: StanzaJSON.Fields, _ key: String) throws(JSONMappingError) -> [String] {
        guard let value = fields.value(key) else { return [] }
        switch value {
        case .string: return [try fields.string(key) ?? ""]
        case .bool(let flag): return [flag ? "1" : "0"]
        case .int(let number): return [String(number)]
        case .double(let number): return [number.description]
        case .array: return try fields.strings(key)
        default: throw fields.invalid(key, "a string, an array of strings or a boolean", value)
        }
    }
}
