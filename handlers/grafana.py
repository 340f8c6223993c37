#!/usr/bin/env python3
"""Hook handler for Grafana's webhook contact point (unified alerting).

    [[hook]]
    name = "grafana"
    exec = ["handlers/grafana.py"]
    to = ["ops@conference.example.org"]
    auth = "credentials"          # the contact point's "Authorization header" setting

Prints one plain-text message: Grafana's title ("[FIRING:1] DiskFull (host1)") and a line per alert with its
summary and the panel or dashboard link. Exit 65 on a body that is not a Grafana notification. Standard
library only.
"""
import json
import sys


def main() -> int:
    try:
        payload = json.load(sys.stdin)
    except ValueError as error:
        print(f"grafana: body is not JSON: {error}", file=sys.stderr)
        return 65
    if not isinstance(payload, dict) or not isinstance(payload.get("alerts"), list):
        print("grafana: no \"alerts\" list; is this a Grafana webhook contact point?", file=sys.stderr)
        return 65
    alerts = payload["alerts"]
    title = payload.get("title") or f"[{payload.get('status', 'firing').upper()}:{len(alerts)}]"
    lines = [title]
    for alert in alerts:
        labels = alert.get("labels") or {}
        annotations = alert.get("annotations") or {}
        text = annotations.get("summary") or annotations.get("description") or labels.get("alertname", "alert")
        state = "resolved" if alert.get("status") == "resolved" else "firing"
        line = f"- [{state}] {text}"
        if alert.get("valueString"):
            line += f" ({alert['valueString'].strip()})"
        link = alert.get("panelURL") or alert.get("dashboardURL") or alert.get("generatorURL")
        if link:
            line += f" {link}"
        lines.append(line)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
