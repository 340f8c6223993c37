#!/usr/bin/env python3
"""Hook handler for Forgejo, Gitea and GitHub webhooks: pushes, issues, pull requests and releases.

    [[hook]]
    name = "forgejo"
    exec = ["handlers/forgejo.py"]
    to = ["dev@conference.example.org"]
    auth = "hmac"
    hmac_secret_file = "/etc/stanzad/forgejo.secret"
    hmac_header = "X-Forgejo-Signature"   # Gitea: X-Gitea-Signature; GitHub: X-Hub-Signature-256

The event comes from the X-Forgejo-Event, X-Gitea-Event or X-GitHub-Event header (HTTP_X_…_EVENT here).
Prints one plain-text message per event; events it does not describe (ping, stars, …) print nothing (202 with
nothing sent). Exit 65 on a body that is not JSON. Standard library only.
"""
import json
import os
import sys


def who(payload: dict, *keys: str) -> str:
    for key in keys:
        person = payload.get(key)
        if isinstance(person, dict):
            name = person.get("login") or person.get("username") or person.get("name")
            if name:
                return name
    return "someone"


def push(payload: dict, repo: str) -> str:
    ref = payload.get("ref", "")
    branch = ref.split("/", 2)[-1] if ref.startswith("refs/") else ref
    commits = payload.get("commits") or []
    pusher = who(payload, "pusher", "sender")
    lines = [f"[{repo}] {pusher} pushed {len(commits)} commit{'s' if len(commits) != 1 else ''} to {branch}"]
    for commit in commits[:10]:
        first = (commit.get("message") or "").splitlines()[0] if commit.get("message") else ""
        author = (commit.get("author") or {}).get("name") or (commit.get("author") or {}).get("username") or ""
        lines.append(f"- {commit.get('id', '')[:8]} {first}" + (f" ({author})" if author else ""))
    if len(commits) > 10:
        lines.append(f"… and {len(commits) - 10} more")
    compare = payload.get("compare_url") or payload.get("compare")
    if compare:
        lines.append(compare)
    return "\n".join(lines)


def issue(payload: dict, repo: str, kind: str) -> str:
    item = payload.get(kind) or {}
    label = "pull request" if kind == "pull_request" else "issue"
    action = payload.get("action", "updated")
    if kind == "pull_request" and action == "closed" and item.get("merged"):
        action = "merged"
    return (f"[{repo}] {who(payload, 'sender')} {action} {label} #{item.get('number', payload.get('number', '?'))}: "
            f"{item.get('title', '')}\n{item.get('html_url', '')}").rstrip()


def release(payload: dict, repo: str) -> str:
    item = payload.get("release") or {}
    name = item.get("name") or item.get("tag_name", "")
    return (f"[{repo}] {who(payload, 'sender')} {payload.get('action', 'published')} release {name}\n"
            f"{item.get('html_url', '')}").rstrip()


def main() -> int:
    try:
        payload = json.load(sys.stdin)
    except ValueError as error:
        print(f"forgejo: body is not JSON: {error}", file=sys.stderr)
        return 65
    if not isinstance(payload, dict):
        print("forgejo: the body must be a JSON object", file=sys.stderr)
        return 65
    event = (os.environ.get("HTTP_X_FORGEJO_EVENT") or os.environ.get("HTTP_X_GITEA_EVENT")
             or os.environ.get("HTTP_X_GITHUB_EVENT") or "")
    repo = (payload.get("repository") or {}).get("full_name", "repository")
    if event == "push":
        text = push(payload, repo)
    elif event == "issues":
        text = issue(payload, repo, "issue")
    elif event == "pull_request":
        text = issue(payload, repo, "pull_request")
    elif event == "release":
        text = release(payload, repo)
    else:
        return 0  # ping, stars, …: nothing to say
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
