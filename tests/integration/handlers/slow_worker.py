#!/usr/bin/env python3
"""A worker that answers every iq with an empty result after 2 seconds (for long-poll tests); announces each
request it holds on stderr."""
import json
import sys
import threading

lock = threading.Lock()


def answer(ref):
    with lock:
        sys.stdout.write(json.dumps({"ref": ref}) + "\n")
        sys.stdout.flush()


for line in sys.stdin:
    ref = json.loads(line)["ref"]
    threading.Timer(2.0, answer, [ref]).start()
    print(f"holding {ref}", file=sys.stderr, flush=True)  # tests count these to know the requests arrived
