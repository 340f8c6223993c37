// swift-tools-version:6.0
import PackageDescription

let strict: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
]

// The release binary carries the Swift runtime and Foundation (linked statically, so it runs where no Swift
// toolchain is installed) and is linked by the toolchain's lld with packed relative relocations (glibc 2.36,
// Debian 12) and no exported symbol table. An idle stanzad then maps 26 MB instead of 35 MB: the dynamic loader no
// longer reads megabytes of relocations and symbol tables of the Swift libraries, and only the parts of Foundation
// stanzad uses are in the binary (docs/PERFORMANCE.md, "Idle memory"). Debug builds (the tests) link as usual.
let releaseLinking: [LinkerSetting] = [
    .unsafeFlags(
        ["-static-stdlib", "-use-ld=lld", "-Xlinker", "-z", "-Xlinker", "pack-relative-relocs",
         "-Xlinker", "--no-export-dynamic", "-Xlinker", "--start-group"]
        // Foundation's static archives refer to each other (and to its ICU): one group resolves them in any order.
        + ["Foundation", "FoundationEssentials", "FoundationInternationalization", "_FoundationICU",
           "_FoundationCShims", "_FoundationCollections", "CoreFoundation"].flatMap { ["-Xlinker", "-l\($0)"] }
        + ["-Xlinker", "--end-group"],
        .when(platforms: [.linux], configuration: .release)),
]

// Linux only: the executor is built on epoll, pidfd and glibc (Debian 12 is what CI and the docs use).
let package = Package(
    name: "stanzad",
    products: [
        .executable(name: "stanzad", targets: ["Daemon"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.80.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-collections", from: "1.1.0"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.0.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.6.0"),
        .package(url: "https://github.com/LebJe/TOMLKit", from: "0.6.0"),
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.20.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.5.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.1.0"),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.10.0"),
    ],
    targets: [
        // The system library of the design (Debian: libxml2-dev).
        .systemLibrary(
            name: "CLibXML2", path: "Sources/CLibXML2",
            pkgConfig: "libxml-2.0", providers: [.apt(["libxml2-dev"])]),
        // glibc's <malloc.h> (malloc_trim after a burst of long-polls).
        .systemLibrary(name: "CMalloc", path: "Sources/CMalloc"),

        // posix_spawn, pidfd_open and epoll for the process loop.
        .target(name: "CSpawn", path: "Sources/CSpawn"),

        // XMPP core: element tree, serializer, JIDs, stanza errors, the hardened libxml2 parser and the
        // JSON mapping. No I/O.
        .target(name: "XMPPCore", dependencies: ["CLibXML2"], swiftSettings: strict),

        // The XEP-0114 component link: pure parts (HandshakeStateMachine, OutboundQueue with the send queue and
        // the iq tracker, SessionTimers, ReconnectSchedule) in a NIO connection service; outbound validation.
        .target(
            name: "ComponentLink",
            dependencies: [
                "XMPPCore",
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strict),

        // Routing of inbound stanzas: route rules, then the built-in responders (SPEC §10); the handler codec
        // (HandlerFormat, HandlerInput, HandlerOutput) shared by process handlers, workers and webhooks.
        .target(
            name: "Routing",
            dependencies: [
                "XMPPCore", "ComponentLink",
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strict),

        // The spool (SPEC §18): one SQLite file through GRDB, written by one thread in group commits.
        .target(
            name: "Storage",
            dependencies: [
                "ComponentLink",
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strict),

        // Group chats (SPEC §14): a pure RoomStateMachine per room, the MUC stanzas, and the RoomKeeper that keeps
        // stanzad in its rooms over the link and tells the router which messages come from them.
        .target(
            name: "Rooms",
            dependencies: [
                "XMPPCore", "ComponentLink", "Routing",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strict),

        // Process handlers (spawn per stanza, workers): one spawner (CSpawn) and one epoll thread (ProcessLoop).
        .target(
            name: "Executor",
            dependencies: [
                "XMPPCore", "Routing", "CSpawn",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "HeapModule", package: "swift-collections"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strict),

        // Webhook routes (SPEC §6), mod_rest callback and mod_component_http compatible: our own keep-alive
        // HTTP/1.1 client on NIOHTTP1 for http://, async-http-client for https://.
        .target(
            name: "Webhooks",
            dependencies: [
                "XMPPCore", "Routing",
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict),

        // The FastCGI responder on SwiftNIO (records, a state machine per connection) and the mod_rest-compatible
        // REST API. It reaches the link only through its StanzaSender protocol (the Daemon connects the two).
        .target(
            name: "FastCGIFront",
            dependencies: [
                "XMPPCore", "CMalloc",
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strict),

        // The `stanzad` executable: CLI, config, wiring, lifecycle.
        .executableTarget(
            name: "Daemon",
            dependencies: [
                "XMPPCore", "ComponentLink", "Routing", "Rooms", "Executor", "Webhooks", "FastCGIFront", "Storage",
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "TOMLKit", package: "TOMLKit"),
            ],
            swiftSettings: strict,
            linkerSettings: releaseLinking),

        // libFuzzer entry (built by scripts/fuzz with -DFUZZING); without it, a corpus replayer.
        .executableTarget(name: "StanzaFuzz", dependencies: ["XMPPCore"], swiftSettings: strict),

        // bench/parser: our parser against a no-op libxml2 SAX loop over the same bytes.
        .executableTarget(name: "ParserBench", dependencies: ["XMPPCore", "CLibXML2"], swiftSettings: strict),

        // bench/exec: replies/s through the executor (dispatcher, process handler, stamping) against a raw
        // posix_spawn loop of the same handler at the same concurrency.
        .executableTarget(
            name: "ExecBench",
            dependencies: ["XMPPCore", "Routing", "Executor", .product(name: "Logging", package: "swift-log")],
            swiftSettings: strict),

        .testTarget(name: "XMPPCoreTests", dependencies: ["XMPPCore"], swiftSettings: strict),
        .testTarget(
            name: "ComponentLinkTests",
            dependencies: [
                "ComponentLink", .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strict),
        .testTarget(name: "RoutingTests", dependencies: ["Routing"], swiftSettings: strict),
        .testTarget(name: "RoomsTests", dependencies: ["Rooms"], swiftSettings: strict),
        .testTarget(
            name: "ExecutorTests", dependencies: ["Executor", .product(name: "NIOPosix", package: "swift-nio")],
            swiftSettings: strict),
        .testTarget(name: "WebhooksTests", dependencies: ["Webhooks"], swiftSettings: strict),
        .testTarget(
            name: "FastCGIFrontTests",
            dependencies: ["FastCGIFront", .product(name: "NIOCore", package: "swift-nio"), .product(name: "NIOEmbedded", package: "swift-nio")],
            swiftSettings: strict),
        .testTarget(name: "StorageTests", dependencies: ["Storage"], swiftSettings: strict),
        .testTarget(name: "DaemonTests", dependencies: ["Daemon"], swiftSettings: strict),
    ],
    swiftLanguageModes: [.v6]
)
