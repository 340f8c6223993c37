// The link's outgoing bookkeeping as a pure value: stanzas waiting for the link and iqs waiting for their
// replies, each with a deadline. Time is an input: whatever can expire takes `now`, and `nextDeadline` says when
// to look again, so the shell can wake at the right moment in every state of the link (up, down, connecting).

import DequeModule
import XMPPCore

/// Stanzas queued for the link and iqs waiting for replies. `Waiter` is what a sender waiting for the write holds
/// (a continuation in the link), `Replier` what an iq's requester holds; the queue only keeps and returns them.
struct OutboundQueue<Waiter, Replier> {
    typealias Instant = ContinuousClock.Instant

    struct Item {
        var xml: String
        /// When it is dropped unwritten: `send_queue_ttl`, a sender's `send_wait`, or its iq's timeout.
        var deadline: Instant
        var waiter: Waiter?
        /// The iq whose request this is, if it is one.
        var iqID: String?
        /// Its entry in the spool (SPEC §18): it never expires and stays until the server confirms it.
        var seq: Int64? = nil
    }

    struct PendingIQ {
        /// When its requester stops waiting (`timeout`).
        var deadline: Instant
        /// Where the request went: only a reply from there counts.
        var to: String?
        /// Written to the server (a lost link then fails it: its reply cannot come any more).
        var sent = false
        var replier: Replier
    }

    /// What reached its deadline.
    struct Expired {
        /// Queued stanzas dropped unwritten; their waiters get `expired`.
        var items: [Item] = []
        /// iqs that stop waiting: `timeout` when their own deadline passed, `expired` when their request was
        /// dropped from the queue first (`send_queue_ttl` shorter than the timeout).
        var iqs: [(iq: PendingIQ, code: SendError.Code)] = []

        var isEmpty: Bool { items.isEmpty && iqs.isEmpty }
    }

    let capacity: Int
    private(set) var items = Deque<Item>()
    private(set) var pending: [String: PendingIQ] = [:]

    init(capacity: Int) {
        self.capacity = capacity
    }

    var isEmpty: Bool { items.isEmpty && pending.isEmpty }

    /// Queues a stanza (a full queue refuses it).
    mutating func append(_ item: Item) throws(SendError) {
        guard items.count < capacity else {
            throw SendError(.queueFull, "the send queue is full (\(capacity) stanzas waiting for the link)")
        }
        items.append(item)
    }

    /// Queues spooled stanzas beyond the capacity (the spool's own bound was checked when they were accepted):
    /// at the end, or at the front when they were written on a lost stream and go again first.
    mutating func appendSpooled(_ spooled: [Item], atFront: Bool = false) {
        if atFront {
            items.insert(contentsOf: spooled, at: 0)
        } else {
            items.append(contentsOf: spooled)
        }
    }

    /// Registers an iq waiting for its reply and queues its request, both or neither.
    mutating func request(_ item: Item, id: String, iq: PendingIQ, maxPending: Int) throws(SendError) {
        if pending[id] != nil { throw SendError(.duplicateID, "an iq with id \(id) is already waiting") }
        if pending.count >= maxPending { throw SendError(.tooManyPending, "\(maxPending) iqs are already waiting") }
        try append(item)
        pending[id] = iq
    }

    /// Everything queued, in order, for writing; their iqs count as sent from now on.
    mutating func takeAll() -> [Item] {
        guard !items.isEmpty else { return [] }
        let taken = Array(items)
        items.removeAll()
        for item in taken { if let id = item.iqID { pending[id]?.sent = true } }
        return taken
    }

    /// Everything queued that is not spooled, in order, for writing (their iqs count as sent from now on); spooled
    /// stanzas stay queued (and in the spool).
    mutating func takeUnspooled() -> [Item] {
        guard items.contains(where: { $0.seq == nil }) else { return [] }
        let taken = Array(items.filter { $0.seq == nil })
        items.removeAll { $0.seq == nil }
        for item in taken { if let id = item.iqID { pending[id]?.sent = true } }
        return taken
    }

    /// The earliest deadline of anything held, nil when nothing is.
    var nextDeadline: Instant? {
        var earliest: Instant?
        for item in items where item.seq == nil && earliest.map({ item.deadline < $0 }) ?? true { earliest = item.deadline }
        for iq in pending.values where earliest.map({ iq.deadline < $0 }) ?? true { earliest = iq.deadline }
        return earliest
    }

    /// Removes and returns whatever is due at `now`.
    mutating func expire(now: Instant) -> Expired {
        var expired = Expired()
        if pending.contains(where: { $0.value.deadline <= now }) {
            for (id, iq) in pending where iq.deadline <= now {
                pending[id] = nil
                expired.iqs.append((iq, .timeout))
            }
        }
        // An item goes at its own deadline, or when nobody waits for its iq any more.
        guard items.contains(where: { $0.seq == nil && ($0.deadline <= now || $0.iqID.map { pending[$0] == nil } ?? false) })
        else {
            return expired
        }
        var kept = Deque<Item>()
        for item in items {
            if item.seq != nil {
                kept.append(item)  // accepted for good: it waits for the link however long that takes
                continue
            }
            if let id = item.iqID, pending[id] == nil {
                continue  // its requester is gone (timed out just now, or cancelled): not worth sending
            }
            if item.deadline <= now {
                if let id = item.iqID, let iq = pending.removeValue(forKey: id) { expired.iqs.append((iq, .expired)) }
                expired.items.append(item)
            } else {
                kept.append(item)
            }
        }
        items = kept
        return expired
    }

    /// The iq waiting for this reply, removed; nil when none is (or the reply comes from elsewhere).
    mutating func resolve(id: String, from: String?) -> PendingIQ? {
        guard let entry = pending[id] else { return nil }
        // A reply must come from the address the request went to (bare/full forms compare by JID).
        if let to = entry.to, let from, JID.parse(to) != JID.parse(from) { return nil }
        return removePending(id)
    }

    /// Removes a waiting iq; the table's storage goes when it empties (after a burst of 10,000 long-polls it
    /// would otherwise stay at its largest).
    private mutating func removePending(_ id: String) -> PendingIQ? {
        let removed = pending.removeValue(forKey: id)
        if pending.isEmpty && pending.capacity > 64 { pending = [:] }
        return removed
    }

    /// Stops an iq waiting (its requester was cancelled); its request is not sent any more.
    mutating func cancelRequest(id: String) -> PendingIQ? {
        guard let iq = removePending(id) else { return nil }
        if let index = items.firstIndex(where: { $0.iqID == id }) { items.remove(at: index) }
        return iq
    }

    /// Removes the first queued item matching `predicate` (a cancelled sender's).
    mutating func removeItem(where predicate: (Item) -> Bool) -> Item? {
        guard let index = items.firstIndex(where: predicate) else { return nil }
        return items.remove(at: index)
    }

    /// The link went down: iqs already written cannot get their replies.
    mutating func removeSent() -> [PendingIQ] {
        let ids = pending.filter { $0.value.sent }.map(\.key)
        return ids.compactMap { pending.removeValue(forKey: $0) }
    }

    /// Shutdown: everything.
    mutating func removeAll() -> (items: [Item], iqs: [PendingIQ]) {
        let all = (Array(items), Array(pending.values))
        items.removeAll()
        pending.removeAll()
        return all
    }
}

extension OutboundQueue: Sendable where Waiter: Sendable, Replier: Sendable {}
extension OutboundQueue.Item: Sendable where Waiter: Sendable {}
extension OutboundQueue.PendingIQ: Sendable where Replier: Sendable {}
extension OutboundQueue.Expired: Sendable where Waiter: Sendable, Replier: Sendable {}
