// Process handlers: spawn-per-stanza (CGI-style) and long-lived workers. Built in the executor issue.

import XMPPCore

/// The handler formats of SPEC §5: what goes to stdin and how stdout is read.
public enum HandlerFormat: String, Hashable, Sendable, CaseIterable {
    case text, json, xml
}
