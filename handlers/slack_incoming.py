#!/usr/bin/env python3
"""Hook handler for anything that posts Slack-style incoming webhooks ({"text": "…"}, Uptime Kuma, CI tools).

    [[hook]]
    name = "slack"
    exec = ["handlers/slack_incoming.py"]
    to = ["ops@conference.example.org"]
    auth = "none"                 # Slack URLs carry no credentials: keep the URL secret (a long random name)

Prints the text as plain text: Slack links <url|label> become "label (url)", <url> the bare URL, user and
channel mentions <@U123> / <#C1|name> their names, and &amp; &lt; &gt; are decoded. Without "text", the
attachments' fallback or text lines are used. Accepts a form body with a "payload" field too. Exit 65 when
there is nothing to say. Standard library only.
"""
import json
import os
import re
import sys
import urllib.parse

LINK = re.compile(r"<([^<>|]+)(?:\|([^<>]+))?>")


def plain(text: str) -> str:
    def link(match: re.Match) -> str:
        target, label = match.group(1), match.group(2)
        if target.startswith(("@", "#", "!")):
            return label or target
        return f"{label} ({target})" if label and label != target else target
    text = LINK.sub(link, text)
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def main() -> int:
    raw = sys.stdin.buffer.read()
    try:
        if os.environ.get("CONTENT_TYPE", "").startswith("application/x-www-form-urlencoded"):
            form = urllib.parse.parse_qs(raw.decode("utf-8"))
            payload = json.loads(form.get("payload", ["{}"])[0])
        else:
            payload = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        print(f"slack_incoming: body is not JSON: {error}", file=sys.stderr)
        return 65
    if not isinstance(payload, dict):
        print("slack_incoming: the body must be a JSON object", file=sys.stderr)
        return 65
    parts = []
    if isinstance(payload.get("text"), str) and payload["text"].strip():
        parts.append(payload["text"])
    for attachment in payload.get("attachments") or []:
        if isinstance(attachment, dict):
            piece = attachment.get("fallback") or "\n".join(
                str(attachment[key]) for key in ("pretext", "title", "text") if attachment.get(key))
            if piece:
                parts.append(piece)
    if not parts:
        print("slack_incoming: no \"text\" and no attachment text", file=sys.stderr)
        return 65
    print(plain("\n".join(parts)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
