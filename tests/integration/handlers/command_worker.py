#!/usr/bin/env python3
"""A command worker (SPEC §15 over §5.4): every step opens or keeps a session (status executing with a form)."""
import json
import sys

for line in sys.stdin:
    request = json.loads(line)
    session = request.get("session") or {"steps": 0}
    session["steps"] += 1
    answer = {
        "ref": request["ref"],
        "command": {"status": "executing", "form": {"fields": [{"var": "n", "type": "text-single"}]}, "actions": {"next": True}},
        "session": session,
    }
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()
