import Testing

@testable import FastCGIFront

@Suite struct FormBodyTests {
    private func decode(_ text: String, _ charset: BodyCharset = .utf8) -> Result<[String: String], FormBody.Failure> {
        FormBody.decode(Array(text.utf8), charset: charset)
    }

    @Test func decodesPairsPlusAndEscapes() throws {
        let form = try decode("to=alice%40example.org&body=caf%C3%A9+au+lait&empty=&body2=a%2Bb").get()
        #expect(form == ["to": "alice@example.org", "body": "café au lait", "empty": "", "body2": "a+b"])
    }

    @Test func emptyBodyAndEmptyPairsAreNoPairs() throws {
        #expect(try decode("").get() == [:])
        #expect(try decode("a=1&&b=2&").get() == ["a": "1", "b": "2"])
    }

    @Test(arguments: [
        ("body=%zz%", "invalid percent escape \"%zz\""),
        ("body=50%", "invalid percent escape \"%\""),
        ("body=%4", "invalid percent escape \"%4\""),
        ("body=ok&to", "pair 2 has no \"=\""),
        ("body=%C3%28", "value of pair 1 is not valid UTF-8"),
        ("b%FFdy=x", "key of pair 1 is not valid UTF-8"),
    ])
    func malformedFormsAreRefusedWithTheReason(body: String, reason: String) {
        guard case .failure(let failure) = decode(body) else {
            Issue.record("\(body) was accepted")
            return
        }
        #expect(failure.description.contains(reason), "\(failure.description)")
    }

    @Test func rawInvalidUTF8IsRefused() {
        let body: [UInt8] = Array("body=caf".utf8) + [0xE9]
        guard case .failure(let failure) = FormBody.decode(body, charset: .utf8) else {
            Issue.record("invalid UTF-8 was accepted")
            return
        }
        #expect(failure.description == "the value of pair 1 is not valid UTF-8")
    }

    @Test func latin1BytesBecomeTheirCharacters() throws {
        #expect(try decode("body=caf%E9", .latin1).get() == ["body": "café"])
        let raw: [UInt8] = Array("body=caf".utf8) + [0xE9]
        #expect(try FormBody.decode(raw, charset: .latin1).get() == ["body": "café"])
    }

    @Test(arguments: [
        (nil as String?, BodyCharset.utf8),
        ("application/x-www-form-urlencoded", .utf8),
        ("application/x-www-form-urlencoded; charset=UTF-8", .utf8),
        ("text/plain;charset=\"iso-8859-1\"", .latin1),
        ("text/plain; Charset=latin1", .latin1),
        ("text/plain; charset=us-ascii", .ascii),
    ])
    func charsetComesFromTheContentType(contentType: String?, expected: BodyCharset) throws {
        #expect(try BodyCharset.of(contentType: contentType) == expected)
    }

    @Test func otherCharsetsAreNamedInTheError() {
        #expect(throws: BodyCharset.Unsupported(name: "utf-16")) {
            try BodyCharset.of(contentType: "application/x-www-form-urlencoded; charset=utf-16")
        }
    }
}
