// The handler formats of SPEC §5: what goes to stdin and how stdout is read.

package enum HandlerFormat: String, Hashable, Sendable, CaseIterable {
    case text, json, xml
}
