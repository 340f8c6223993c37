import Testing

@testable import XMPPCore

private func element(_ xml: String) throws -> Element {
    try #require(try XMLStreamParser.parseFragment(Array(xml.utf8), maxElements: 1).first)
}

/// XEP-0004 forms and mod_rest's `dataform` / `formdata` JSON (its jsonmap.lib.lua st2json / json2st).
@Suite struct DataFormTests {
    let formXML = """
        <x xmlns='jabber:x:data' type='form'><title>Remind</title><instructions>Fill in</instructions>\
        <field var='what' type='text-single' label='What'><desc>the text</desc><required/><value>milk</value></field>\
        <field var='when' type='list-single' label='When'><value>1h</value><option label='In an hour'><value>1h</value></option>\
        <option><value>2h</value></option></field>\
        <field var='tags' type='list-multi'><value>a</value><value>b</value></field>\
        <field var='notes' type='text-multi'><value>l1</value><value>l2</value></field>\
        <field var='loud' type='boolean'><value>1</value></field>\
        <field type='fixed'><value>Just so you know</value></field></x>
        """

    @Test func aFormReadFromXMLBecomesModRestDataformJSON() throws {
        let form = try #require(DataForm(element: try element(formXML)))
        #expect(form.json == .object([
            "type": "form", "title": "Remind", "instructions": "Fill in",
            "fields": .array([
                .object(["var": "what", "type": "text-single", "label": "What", "desc": "the text", "required": true, "value": "milk"]),
                .object(["var": "when", "type": "list-single", "label": "When", "value": "1h",
                         "options": .array([.object(["label": "In an hour", "value": "1h"]), .object(["value": "2h"])])]),
                .object(["var": "tags", "type": "list-multi", "value": .array(["a", "b"]), "options": .array([])]),
                .object(["var": "notes", "type": "text-multi", "value": "l1\nl2"]),
                .object(["var": "loud", "type": "boolean", "value": "1"]),
                .object(["type": "fixed", "value": "Just so you know"]),
            ]),
        ]))
    }

    @Test func dataformJSONRoundTripsThroughXML() throws {
        let form = try #require(DataForm(element: try element(formXML)))
        let again = try DataForm(json: form.json)
        #expect(again == form)
        #expect(DataForm(element: again.element) == form)
        #expect(try again.element.serialized().hasPrefix("<x xmlns=\"jabber:x:data\" type=\"form\"><title>Remind</title>"))
    }

    @Test func formdataFollowsModRestTypesAndUsesTheFormsTypesForUntypedFields() throws {
        let submitted = try #require(DataForm(element: try element("""
            <x xmlns='jabber:x:data' type='submit'><field var='what'><value>milk</value></field>\
            <field var='when' type='list-single'><value>1h</value></field><field var='loud'><value>true</value></field>\
            <field var='notes'><value>a</value><value>b</value></field><field var='extra'><value>x</value></field>\
            <field var='empty' type='text-single'/></x>
            """)))
        // Untyped and without a form to ask: arrays, as mod_rest.
        #expect(submitted.formData() == .object([
            "what": .array(["milk"]), "when": .array(["1h"]), "loud": .array(["true"]), "notes": .array(["a", "b"]),
            "extra": .array(["x"]), "empty": .null,
        ]))
        let asked = try #require(DataForm(element: try element(formXML)))
        #expect(submitted.formData(types: asked.typesByVariable) == .object([
            "what": "milk", "when": .array(["1h"]), "loud": true, "notes": "a\nb", "extra": .array(["x"]), "empty": .null,
        ]))
    }

    @Test func formdataJSONBecomesASubmitForm() throws {
        let form = try DataForm(formData: .object(["what": "milk", "tags": .array(["a", "b"]), "loud": true]))
        #expect(try form.element.serialized() == """
            <x xmlns="jabber:x:data" type="submit"><field var="loud"><value>1</value></field>\
            <field var="tags"><value>a</value><value>b</value></field><field var="what"><value>milk</value></field></x>
            """)
    }

    @Test func malformedDataformJSONIsRefusedWithThePlace() {
        func problem(_ json: JSONValue) -> String? {
            do { _ = try DataForm(json: json); return nil } catch { return error.description }
        }
        #expect(problem("a form") == "the form must be an object with \"fields\", not a string")
        #expect(problem(.object(["fields": "x"])) == "fields must be an array of field objects, not a string")
        #expect(problem(.object(["type": "quiz"])) == "form type \"quiz\" is not one of form, submit, cancel, result")
        #expect(problem(.object(["fields": .array([.object(["var": "a", "value": 42])])]))
            == "fields[0].value must be a string or an array of strings, not a number")
        #expect(problem(.object(["fields": .array([.object(["label": "no var"])])]))
            == "fields[0] has no \"var\" (only fixed fields may go without one)")
        #expect(problem(.object(["fields": .array([.object(["var": "a", "type": "text"])])]))?.hasPrefix("fields[0].type \"text\" is not a XEP-0004 field type") == true)
        #expect(problem(.object(["fields": .array([.object(["var": "a", "type": "text-single", "value": .array(["x", "y"])])])]))
            == "fields[0].value has 2 values but a text-single field takes one")
        #expect(problem(.object(["fields": .array([.object(["var": "a", "options": .array([.object(["label": "L"])])])])]))
            == "fields[0].options[0] has no \"value\"")
        #expect(problem(.object(["fields": .array([.object(["var": "a", "colour": "red"])])]))
            == "unknown key \"colour\" in fields[0] (allowed: var, type, label, desc, required, value, options)")
        #expect(problem(.object(["title": "bell \u{07}"])) == "title contains a character XML cannot carry")
        #expect(problem(.object(["fields": .array([.object(["var": "a", "type": "boolean", "value": true])])])) == nil)
    }
}
