#!/usr/bin/env python3
"""A worker that answers every request with an empty reply after DELAY seconds (env, default 2), in one
thread however many requests wait (for tests with thousands of long-polls)."""
import heapq
import json
import os
import select
import sys
import time

delay = float(os.environ.get("DELAY", "2"))
announce = os.environ.get("ANNOUNCE") == "1"  # a stderr line per request taken (tests wait for it)
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
            heapq.heappush(due, (time.monotonic() + delay, counter, json.loads(line)["ref"]))
            if announce:
                sys.stderr.write(f"request {counter} taken\n")
                sys.stderr.flush()
    out = []
    while due and due[0][0] <= time.monotonic():
        out.append(json.dumps({"ref": heapq.heappop(due)[2]}) + "\n")
    if out:
        sys.stdout.write("".join(out))
        sys.stdout.flush()
