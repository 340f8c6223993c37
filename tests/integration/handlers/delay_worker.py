#!/usr/bin/env python3
"""A worker that answers every request with an empty reply after DELAY seconds (env, default 2), in one
thread however many requests wait (for tests with thousands of long-polls). With HOLD=N (env), requests are held
until N have been taken, and the N are answered DELAY seconds after the last: all N wait at once however long the
client takes to send them."""
import heapq
import json
import os
import select
import sys
import time

delay = float(os.environ.get("DELAY", "2"))
announce = os.environ.get("ANNOUNCE") == "1"  # a stderr line per request taken (tests wait for it)
hold = int(os.environ.get("HOLD", "0"))
held: list[tuple[int, str]] = []
due: list[tuple[float, int, str]] = []
counter = 0
buffered = b""
stdin = sys.stdin.buffer.fileno()
while True:
    timeout = max(0.0, due[0][0] - time.monotonic()) if due else None
    readable, _, _ = select.select([stdin], [], [], timeout)
    if readable:
        chunk = os.read(stdin, 65536)
        if not chunk:
            break
        buffered += chunk
        *lines, buffered = buffered.split(b"\n")
        for line in lines:
            counter += 1
            held.append((counter, json.loads(line)["ref"]))
            if len(held) >= hold:  # without HOLD, at once
                answer_at = time.monotonic() + delay
                for number, ref in held:
                    heapq.heappush(due, (answer_at, number, ref))
                held = []
            if announce:
                sys.stderr.write(f"request {counter} taken\n")
                sys.stderr.flush()
    out = []
    while due and due[0][0] <= time.monotonic():
        out.append(json.dumps({"ref": heapq.heappop(due)[2]}) + "\n")
    if out:
        sys.stdout.write("".join(out))
        sys.stdout.flush()
