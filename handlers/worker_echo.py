#!/usr/bin/env python3
"""worker_echo.py: a long-lived worker that echoes message bodies (SPEC §5.4). Standard library only; a
template for hot bots that should not pay an interpreter start per stanza.

    [[route]]
    name = "hot-echo"
    worker = ["handlers/worker_echo.py"]
    workers = 2
    format = "json"

stanzad writes one JSON object per line (the stanza in stanzad's JSON mapping plus "ref"); answer one line
per request, echoing "ref":
    {"ref": "r1"}                                  no reply
    {"ref": "r1", "body": "hi"}                    one reply (addresses, type, thread filled in)
    {"ref": "r1", "replies": [{...}, {...}]}       several replies
Answers may come in any order. Flush after every line. Exit when stdin ends.
"""
import json
import sys


def handle(stanza):
    body = stanza.get("body")
    return {"body": body} if body else {}


for line in sys.stdin:
    request = json.loads(line)
    answer = handle(request)
    answer["ref"] = request["ref"]
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()
