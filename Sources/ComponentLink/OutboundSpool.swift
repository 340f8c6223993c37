// SPEC §18: where the link keeps what it must not lose. A stanza sent durably is written to the spool first; the
// sender hears "accepted" once it is committed. The link writes it with a barrier ping after it, and only the
// server's answer to that ping (the server handles one stream in order) lets the spool delete it. Whatever is
// still in the spool when a process dies is sent again, with its original id, by the next one to own the spool.

/// One stanza kept in the spool.
package struct SpooledStanza: Sendable, Equatable {
    package var seq: Int64
    package var xml: String

    package init(seq: Int64, xml: String) {
        self.seq = seq
        self.xml = xml
    }
}

/// The durable store under the link (the Storage module implements it over SQLite). Every call returns at once;
/// the work runs on the spool's own thread.
package protocol OutboundSpool: Sendable {
    /// Commits `xml`; `completion` gets its sequence number once it is on disk, or why it is not.
    func append(_ xml: String, completion: @escaping @Sendable (Result<Int64, SendError>) -> Void)
    /// The server has handled these entries: they are deleted (batched with the next commit).
    func confirm(_ seqs: [Int64])
    /// Starts handing over entries this process comes to own (at start, everything a stopped or crashed process
    /// left; later, what a stopping process releases): `adopted` runs on the spool's thread, in sequence order.
    func startAdopting(_ adopted: @escaping @Sendable ([SpooledStanza]) -> Void)
}
