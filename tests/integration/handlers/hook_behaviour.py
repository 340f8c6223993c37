#!/usr/bin/python3
"""A hook handler whose behaviour the query string picks (tests/integration/test_hooks.py):
exit=N exits with N; hang=1 starts a child and sleeps (both pids written to $HOOK_MARKS/pids); output=xml,
json, ndjson or bad prints stanzas. Every run writes $HOOK_MARKS/ran-<n> first, so a test can tell whether it
ran, and $HOOK_MARKS/env-<n> with its environment."""
import json
import os
import subprocess
import sys
import time
import urllib.parse

marks = os.environ["HOOK_MARKS"]
body = sys.stdin.buffer.read()
count = len([name for name in os.listdir(marks) if name.startswith("ran-")]) + 1
with open(os.path.join(marks, f"ran-{count}"), "wb") as f:
    f.write(body)
with open(os.path.join(marks, f"env-{count}"), "w") as f:
    json.dump(dict(os.environ), f)

query = dict(urllib.parse.parse_qsl(os.environ.get("QUERY_STRING", "")))
to = os.environ.get("STANZAD_TO", "").split(",")[0]
if "exit" in query:
    sys.exit(int(query["exit"]))
if query.get("hang"):
    child = subprocess.Popen(["sleep", "305.5"])  # a duration no other test uses (test_executor looks for its own)
    with open(os.path.join(marks, "pids"), "w") as f:
        f.write(f"{os.getpid()} {child.pid}\n")
    time.sleep(300)
output = query.get("output", "")
text = body.decode()
if output == "xml":
    print(f"<message to='{to}' type='chat'><body>xml: {text}</body></message>"
          f"<message type='chat'><body>xml to all: {text}</body></message>")
elif output == "json":
    print(json.dumps([{"kind": "message", "type": "chat", "to": to, "body": f"json: {text}"}]))
elif output == "ndjson":
    print(json.dumps({"kind": "message", "type": "chat", "body": f"ndjson 1: {text}"}))
    print(json.dumps({"kind": "message", "type": "chat", "to": to, "body": f"ndjson 2: {text}"}))
elif output == "bad":
    print(f"<message to='{to}' type='chat'><body>must not arrive</body></message><bogus/>")
else:
    print(f"text: {text}")
