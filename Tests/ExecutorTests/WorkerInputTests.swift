// A worker's stdin pipe: lines written straight from the caller, buffered (in order) while the pipe is full,
// closed only after everything accepted is written, and refusing lines once closed or broken.

import Foundation
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

@Suite struct WorkerInputTests {
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
