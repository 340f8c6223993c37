#!/usr/bin/env python3
"""A worker for the tests: answers "slow …" after a second (out of order), hangs on "hang", prints garbage on
"garbage", answers an unknown ref on "wrongref", and echoes anything else. Writes its pid to $PID_DIR."""
import json
import os
import sys
import threading
import time

lock = threading.Lock()
if os.environ.get("PID_DIR"):
    with open(os.path.join(os.environ["PID_DIR"], f"{os.getpid()}.pid"), "w") as f:
        f.write(str(os.getpid()))


def answer(obj):
    with lock:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()


for line in sys.stdin:
    request = json.loads(line)
    body = request.get("body", "")
    ref = request["ref"]
    if body.startswith("slow"):
        print("delaying", file=sys.stderr, flush=True)  # tests wait for this before sending the fast one
        threading.Timer(1.0, answer, [{"ref": ref, "body": body}]).start()
    elif body == "hang":
        print("hanging", file=sys.stderr, flush=True)  # tests wait for this (stanzad logs worker stderr)
        # never answered
    elif body == "garbage":
        with lock:
            sys.stdout.write("this is not json\n")
            sys.stdout.flush()
    elif body == "wrongref":
        answer({"ref": "nope", "body": body})
    elif body == "pid":
        answer({"ref": ref, "body": str(os.getpid())})
    else:
        answer({"ref": ref, "body": body})
