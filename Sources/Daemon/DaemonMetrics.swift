// `[metrics]` (SPEC §19): swift-metrics bootstrapped with swift-prometheus. Counters and histograms are kept by
// the parts that count (routes, the link, webhooks, the REST front); the gauges are read when Prometheus scrapes:
// the link, queues, routes' load, update queues and the process itself.

import ComponentLink
import FastCGIFront
import Foundation
import Metrics
import Prometheus
import Routing
import Synchronization

final class DaemonMetrics: Sendable {
    let registry = PrometheusCollectorRegistry()
    private let reconnects: Prometheus.Counter
    /// Route gauges by route name, so that a route a reload removed stops being reported.
    private let routeGauges = Mutex<[String: [Prometheus.Gauge]]>([:])
    /// `stanzad_updates_pending` by pull route, likewise.
    private let updateGauges = Mutex<[String: Prometheus.Gauge]>([:])

    /// Bootstraps swift-metrics (once per process, before any route or counter is made).
    init() {
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.durationHistogramBuckets["stanzad_route_duration_seconds"] = [
            .milliseconds(1), .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50),
            .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1), .milliseconds(2500),
            .seconds(5), .seconds(10), .seconds(30),
        ]
        MetricsSystem.bootstrap(factory)
        reconnects = registry.makeCounter(descriptor: Self.name("stanzad_link_reconnects_total", "times the component link was lost"))
    }

    private static func name(_ name: String, _ help: String) -> MetricNameDescriptor {
        MetricNameDescriptor(metricName: name, unitName: "", helpText: help)
    }

    private func gauge(_ name: String, _ help: String, labels: [(String, String)] = []) -> Prometheus.Gauge {
        registry.makeGauge(descriptor: Self.name(name, help), labels: labels)
    }

    /// The link went down (a reconnect follows).
    func linkLost() {
        reconnects.increment()
    }

    /// The text Prometheus scrapes, with the gauges read now.
    func render(connection: ComponentConnection, dispatcher: Dispatcher, queues: [UpdateQueue],
                rooms: [String: Int] = [:], commandSessions: [String: Int] = [:], instance: ComponentConnection? = nil) -> [UInt8] {
        gauge("stanzad_link_up", "1 while the component link is connected").set(connection.isConnected ? 1.0 : 0.0)
        let depth = connection.depth
        if let instance {
            gauge("stanzad_instance_link_up", "1 while the instance link (instance_jid) is connected").set(instance.isConnected ? 1.0 : 0.0)
        }
        gauge("stanzad_rest_pending_iq", "iqs waiting for their replies")
            .set(Double(depth.pendingIQs + (instance?.depth.pendingIQs ?? 0)))
        gauge("stanzad_spool_depth", "stanzas waiting to be written to the component link; with [storage], also those stored and not yet confirmed by the server")
            .set(Double(depth.queued))
        var seen = Set<String>()
        for route in dispatcher.routes {
            seen.insert(route.name)
            let gauges = routeGauges.withLock { gauges in
                if let existing = gauges[route.name] { return existing }
                let made = [
                    gauge("stanzad_route_in_flight", "handler runs in progress", labels: [("route", route.name)]),
                    gauge("stanzad_route_queue_depth", "stanzas waiting for a run slot", labels: [("route", route.name)]),
                ]
                gauges[route.name] = made
                return made
            }
            let waiting = route.gate.waiting
            gauges[0].set(Double(max(0, route.gate.load - waiting)))
            gauges[1].set(Double(waiting))
        }
        let removed = routeGauges.withLock { gauges -> [Prometheus.Gauge] in
            let gone = gauges.keys.filter { !seen.contains($0) }
            return gone.flatMap { gauges.removeValue(forKey: $0) ?? [] }
        }
        for gauge in removed { registry.unregisterGauge(gauge) }
        var pullRoutes = Set<String>()
        for queue in queues {
            pullRoutes.insert(queue.route)
            let pending = updateGauges.withLock { gauges in
                if let existing = gauges[queue.route] { return existing }
                let made = gauge("stanzad_updates_pending", "updates waiting to be fetched", labels: [("route", queue.route)])
                gauges[queue.route] = made
                return made
            }
            pending.set(Double(queue.count))
        }
        let removedQueues = updateGauges.withLock { gauges -> [Prometheus.Gauge] in
            let gone = gauges.keys.filter { !pullRoutes.contains($0) }
            return gone.compactMap { gauges.removeValue(forKey: $0) }
        }
        for gauge in removedQueues { registry.unregisterGauge(gauge) }
        // Every command of the configuration, 0 when it has no session open (its route is named command:<node>).
        for route in dispatcher.routes where route.name.hasPrefix("command:") {
            gauge("stanzad_command_sessions", "open ad-hoc command sessions", labels: [("command", route.name)])
                .set(Double(commandSessions[route.name] ?? 0))
        }
        for state in ["joining", "joined", "rejoining", "banned", "failed"] {
            gauge("stanzad_rooms", "rooms by state", labels: [("state", state)]).set(Double(rooms[state] ?? 0))
        }
        let process = ProcessSample.now()
        gauge("stanzad_process_open_fds", "open file descriptors").set(Double(process.fds))
        gauge("stanzad_process_resident_memory_bytes", "resident set size").set(Double(process.rss))
        gauge("stanzad_process_threads", "OS threads").set(Double(process.threads))
        return registry.emitToBuffer()
    }
}

/// Open descriptors, RSS and threads of this process, from /proc.
struct ProcessSample {
    var fds = 0
    var rss = 0
    var threads = 0

    static func now() -> ProcessSample {
        var sample = ProcessSample()
        sample.fds = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").count) ?? 0
        if let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) {
            for line in status.split(separator: "\n") {
                let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
                if fields.first == "VmRSS:", fields.count > 1, let kib = Int(fields[1]) { sample.rss = kib * 1024 }
                if fields.first == "Threads:", fields.count > 1, let count = Int(fields[1]) { sample.threads = count }
            }
        }
        return sample
    }
}
