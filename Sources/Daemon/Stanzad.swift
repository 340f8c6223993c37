// The `stanzad` command line.

import ArgumentParser
import FastCGIFront
import XMPPCore

@main
struct Stanzad: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stanzad",
        abstract: "Makes XMPP programmable with ordinary Unix tools (XEP-0114 component).",
        version: StanzadVersion.string,
        subcommands: [Version.self])
}

enum StanzadVersion {
    static let string = "0.1.0"
}

struct Version: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print the version and the library versions.")

    func run() {
        print("stanzad \(StanzadVersion.string)")
        print("libxml2 \(XMLLibrary.version)")
        print("libfcgi \(FastCGILibrary.version)")
    }
}
