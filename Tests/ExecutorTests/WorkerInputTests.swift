// A worker's stdin pipe: lines written straight from the caller (gathered to the end of the turn on an event
// loop), buffered (in order) while the pipe is full, closed only after everything accepted is written, and refusing
// lines once closed or broken.

import Foundation
import NIOPosix
import Testing

@testable import Executor

/// Reads `fd` to EOF on a thread of its own.
private func readAll(_ fd: Int32) async -> [UInt8] {
    await withCheckedContinuation { continuation in
        Thread.detachNewThread {
            var all: [UInt8] = []
            var buffer = [UInt8](repeating: 0, count: 65_536)
            while true {
                let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                if count < 0 && errno == EINTR { continue }
                if count <= 0 { break }
                all += buffer[0..<count]
            }
            close(fd)
            continuation.resume(returning: all)
        }
    }
}

/// Whether `fd` has bytes to read right now.
private func readable(_ fd: Int32) -> Bool {
    var descriptor = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
    return poll(&descriptor, 1, 0) == 1
}

@Suite struct WorkerInputTests {
    @Test func linesSentDuringAnEventLoopTurnReachThePipeTogetherWhenItEnds() async throws {
        let input = try WorkerInput()
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let lines = (0..<16).map { Array("stanza \($0)\n".utf8) }
        let (accepted, writtenDuringTheTurn) = try await loop.submit {
            (lines.allSatisfy { input.send($0) }, readable(input.readEnd))
        }.get()
        #expect(accepted)
        #expect(!writtenDuringTheTurn, "the lines of one turn wait for its end, to leave in one write")
        // Off an event loop a line is written at once; it queues behind the turn's lines if they are still there.
        let late = Array("off the loop\n".utf8)
        #expect(input.send(late))
        #expect(readable(input.readEnd))
        input.close()
        let received = await readAll(input.readEnd)
        #expect(received == lines.flatMap { $0 } + late, "every line, in order, before EOF")
        await input.waitUntilClosed()
    }

    @Test func linesBeyondThePipesCapacityArriveWholeAndInOrderBeforeEOF() async throws {
        let input = try WorkerInput()
        // 2,000 lines of 1 KiB: about 2 MB, 30 times what a pipe holds, written while nobody reads.
        var expected: [UInt8] = []
        for number in 0..<2_000 {
            var line = Array("\(number) ".utf8)
            line += [UInt8](repeating: UInt8(ascii: "a") + UInt8(number % 26), count: 1_024 - line.count - 1)
            line.append(0x0A)
            #expect(input.send(line))
            expected += line
        }
        input.close()
        #expect(!input.send(Array("late\n".utf8)), "a closed input refuses lines")
        let received = await readAll(input.readEnd)
        #expect(received.count == expected.count)
        #expect(received == expected)
        await input.waitUntilClosed()
    }

    @Test func aReaderThatGoesAwayBreaksTheInputAndLaterLinesAreRefused() async throws {
        let input = try WorkerInput()
        close(input.readEnd)
        // The first write fails with EPIPE (SIGPIPE is ignored): the line is refused, and so is every later one.
        #expect(!input.send(Array("one\n".utf8)))
        #expect(!input.send(Array("two\n".utf8)))
        await input.waitUntilClosed()
    }
}
