#!/usr/bin/env python3
"""remind.py: a two-step ad-hoc command (XEP-0050, SPEC §15) with a form. Standard library only.

    [[command]]
    node = "remind"
    name = "Set a reminder"
    exec = ["handlers/remind.py"]
    format = "json"
    env = { REMIND_FILE = "/var/lib/stanzad/reminders.jsonl" }   # optional: where confirmed reminders go

Step 1 (execute): a form asking what and when.
Step 2 (next or complete, with the form): a confirmation, completed; the reminder is appended to REMIND_FILE
(one JSON object per line) when that is set. A wrong "when" shows the form again with an error note.

stanzad writes one JSON object to stdin: the iq in stanzad's JSON mapping, with
    "command": {"node", "action", "sessionid", "data": {var: value}}   (data: the submitted form)
    "session": what this script returned with the previous step (absent on the first)
and reads one object from stdout:
    {"command": {"status": "executing" | "completed", "form": {...}, "note": {"type", "text"},
                 "actions": {"execute": "complete", "complete": true}},
     "session": any JSON kept by stanzad for the next step}
stanzad owns the session id, answers "cancel" itself, and drops the session after session_timeout.
"""
import json
import os
import re
import sys

WHEN = re.compile(r"^(?:in (\d{1,4}) ?(minutes?|min|hours?|h|days?|d)|(\d{1,2}):(\d{2}))$")


def ask(what="", when="", error=None):
    command = {
        "status": "executing",
        "form": {
            "type": "form",
            "title": "Set a reminder",
            "instructions": "What should I remind you of, and when? (when: HH:MM, or e.g. \"in 10 minutes\")",
            "fields": [
                {"var": "what", "type": "text-single", "label": "What", "required": True, "value": what},
                {"var": "when", "type": "text-single", "label": "When", "required": True, "value": when or "in 10 minutes"},
            ],
        },
        "actions": {"execute": "complete", "complete": True},
    }
    if error:
        command["note"] = {"type": "error", "text": error}
    return {"command": command, "session": {"step": "ask"}}


def value(data, var):
    """A submitted value: a string when stanzad knew the field's type (from the form it sent), else a list."""
    v = data.get(var)
    if isinstance(v, list):
        v = v[0] if v else ""
    return str(v or "").strip()


def confirm(request, data):
    what = value(data, "what")
    when = value(data, "when").lower()
    if not what:
        return ask(what, when, "Please say what to remind you of.")
    match = WHEN.match(when)
    if not match or (match.group(3) and (int(match.group(3)) > 23 or int(match.group(4)) > 59)):
        return ask(what, when, f"I cannot read the time {when!r}: use HH:MM or \"in 10 minutes\".")
    reminder = {"for": request.get("from"), "what": what, "when": when}
    path = os.environ.get("REMIND_FILE")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(reminder) + "\n")
    return {"command": {"status": "completed", "note": {"type": "info", "text": f"OK, I will remind you {when}: {what}"}}}


def main():
    request = json.loads(sys.stdin.readline())
    command = request.get("command", {})
    session = request.get("session")
    if session is None:
        answer = ask()
    else:
        answer = confirm(request, command.get("data") or {})
    sys.stdout.write(json.dumps(answer) + "\n")


if __name__ == "__main__":
    main()
