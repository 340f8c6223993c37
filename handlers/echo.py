#!/usr/bin/env python3
"""echo.py: replies with the body of the message it gets (format = "json").

    [[route]]
    name = "echo-json"
    exec = ["handlers/echo.py"]
    format = "json"

stdin is one JSON object (stanzad's JSON mapping: kind, type, id, from, to, body, …, and "stanza" with the
full XML); print one JSON object (or an array of them) as the reply. Missing fields are filled in: the
reply goes to the sender, from the addressed JID, with the incoming type and thread. Print nothing for no
reply. Standard library only.
"""
import json
import sys

stanza = json.load(sys.stdin)
body = stanza.get("body")
if body:
    json.dump({"body": body}, sys.stdout)
