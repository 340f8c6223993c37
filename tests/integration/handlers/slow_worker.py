#!/usr/bin/env python3
"""A worker that answers every iq with an empty result after 2 seconds (for long-poll tests)."""
import json
import sys
import threading

lock = threading.Lock()


def answer(ref):
    with lock:
        sys.stdout.write(json.dumps({"ref": ref}) + "\n")
        sys.stdout.flush()


for line in sys.stdin:
    threading.Timer(2.0, answer, [json.loads(line)["ref"]]).start()
