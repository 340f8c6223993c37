#!/usr/bin/env python3
"""Hook handler for Prometheus Alertmanager's webhook receiver (payload version 4).

    [[hook]]
    name = "alertmanager"
    exec = ["handlers/alertmanager.py"]
    to = ["ops@conference.example.org"]
    auth = "credentials"          # Alertmanager: http_config.authorization (Bearer) in the receiver

Reads the notification on stdin and prints one plain-text message: a header line per group
("[FIRING:2] HighLatency") and one line per alert with its instance and summary. Exit 65 on a body that is
not an Alertmanager notification (stanzad answers 400). Standard library only.
"""
import json
import sys


def describe(alert: dict) -> str:
    labels = alert.get("labels") or {}
    annotations = alert.get("annotations") or {}
    where = labels.get("instance") or labels.get("job") or ""
    text = annotations.get("summary") or annotations.get("description") or annotations.get("message") or ""
    state = "resolved" if alert.get("status") == "resolved" else "firing"
    parts = [f"- [{state}]"]
    if where:
        parts.append(f"{where}:")
    parts.append(text or labels.get("alertname", "alert"))
    return " ".join(parts)


def main() -> int:
    try:
        payload = json.load(sys.stdin)
    except ValueError as error:
        print(f"alertmanager: body is not JSON: {error}", file=sys.stderr)
        return 65
    if not isinstance(payload, dict) or not isinstance(payload.get("alerts"), list):
        print("alertmanager: no \"alerts\" list; is this an Alertmanager webhook?", file=sys.stderr)
        return 65
    alerts = payload["alerts"]
    firing = [a for a in alerts if a.get("status") != "resolved"]
    common = payload.get("commonLabels") or payload.get("groupLabels") or {}
    name = common.get("alertname") or (alerts[0].get("labels") or {}).get("alertname", "alerts") if alerts else "alerts"
    status = payload.get("status", "firing").upper()
    count = len(firing) if status == "FIRING" else len(alerts)
    header = f"[{status}:{count}] {name}"
    if common.get("severity"):
        header += f" ({common['severity']})"
    lines = [header] + [describe(alert) for alert in alerts]
    if payload.get("truncatedAlerts"):
        lines.append(f"… and {payload['truncatedAlerts']} more")
    if payload.get("externalURL"):
        lines.append(payload["externalURL"])
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
