"""Hooks (SPEC §16) through real nginx and Prosody, with slixmpp receiving: the shipped handlers fed samples
of their tools' payloads, the three kinds of auth, and every failure a hook can have."""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from harness import COMPONENT, Client, DOMAIN, REPO, rest_stanzad
from nginx import Nginx

TOKEN = "Bearer aG9vay10b2tlbg=="
HMAC_SECRET = "forgejo-webhook-secret"
SAMPLES = Path(__file__).parent / "samples"
BEHAVIOUR = Path(__file__).parent / "handlers" / "hook_behaviour.py"
ALICE = f"alice@{DOMAIN}"


@pytest.fixture(scope="module")
def marks(tmp_path_factory):
    return tmp_path_factory.mktemp("marks")


@pytest.fixture(scope="module")
def stanzad(prosody, socket_path, marks, tmp_path_factory):
    handlers = REPO / "handlers"
    extra = f'''
[rest]
listen = "unix:{socket_path}"
credentials = ["{TOKEN}"]

[[hook]]
name = "alertmanager"
exec = ["{handlers}/alertmanager.py"]
to = ["{ALICE}"]

[[hook]]
name = "grafana"
exec = ["{handlers}/grafana.py"]
to = ["{ALICE}"]

[[hook]]
name = "forgejo"
exec = ["{handlers}/forgejo.py"]
to = ["{ALICE}"]
auth = "hmac"
hmac_secret = "{HMAC_SECRET}"
hmac_header = "X-Forgejo-Signature"

[[hook]]
name = "slack"
exec = ["{handlers}/slack_incoming.py"]
to = ["{ALICE}"]
auth = "none"

[[hook]]
name = "behaviour"
exec = ["{BEHAVIOUR}"]
to = ["{ALICE}"]
env = {{ HOOK_MARKS = "{marks}" }}
timeout = 1

[[hook]]
name = "signed"
exec = ["{BEHAVIOUR}"]
to = ["{ALICE}"]
auth = "hmac"
hmac_secret = "{HMAC_SECRET}"
env = {{ HOOK_MARKS = "{marks}" }}
'''
    daemon = rest_stanzad(prosody, tmp_path_factory, extra)
    yield daemon
    daemon.stop()


def post(nginx: Nginx, path: str, body: bytes, headers: dict | None = None) -> tuple[int, dict, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", nginx.port, timeout=30)
    connection.request("POST", path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
    response = connection.getresponse()
    data = response.read()
    result = response.status, {k.lower(): v for k, v in response.getheaders()}, data
    connection.close()
    return result


def next_body(client: Client, timeout: float = 10) -> str:
    """The body of the next message from the component."""
    deadline = time.monotonic() + timeout
    while True:
        message = client.next_message(max(0.1, deadline - time.monotonic()))
        if message["from"].bare == COMPONENT:
            return message["body"]


def runs(marks: Path) -> int:
    return len([name for name in os.listdir(marks) if name.startswith("ran-")])


def sign(body: bytes) -> str:
    return hmac.new(HMAC_SECRET.encode(), body, hashlib.sha256).hexdigest()


# --- the shipped handlers ------------------------------------------------------------------------------------

@pytest.mark.parametrize("hook,sample,headers,expected", [
    ("alertmanager", "alertmanager_firing.json", {},
     "[FIRING:2] HighLatency (critical)\n- [firing] api-1:9100: p99 latency above 2s for 5 minutes\n"
     "- [firing] api-2:9100: p99 latency above 2s for 5 minutes\nhttp://alertmanager.example.org:9093"),
    ("alertmanager", "alertmanager_resolved.json", {},
     "[RESOLVED:1] DiskFull (warning)\n- [resolved] db-1:9100: /var is 95% full\nhttp://alertmanager.example.org:9093"),
    ("grafana", "grafana_firing.json", {},
     "[FIRING:1] CPU high Servers (web-1)\n- [firing] CPU above 90% on web-1 ([ var='B' labels={host=web-1} value=93.5 ]) "
     "https://grafana.example.org/d/xyz?viewPanel=2"),
    ("forgejo", "forgejo_push.json", {"X-Forgejo-Event": "push"},
     "[team/stanzad] ada pushed 2 commits to main\n- 22222222 Rooms: rejoin after a kick (Ada)\n"
     "- 33333333 Hooks: exit 75 is 503 (Grace)\nhttps://forgejo.example.org/team/stanzad/compare/1111111111...3333333333"),
    ("forgejo", "forgejo_issue.json", {"X-Forgejo-Event": "issues"},
     "[team/stanzad] grace opened issue #42: Bot leaves the room after a server restart\n"
     "https://forgejo.example.org/team/stanzad/issues/42"),
    ("forgejo", "forgejo_release.json", {"X-Gitea-Event": "release"},
     "[team/stanzad] ada published release stanzad 1.2.0\nhttps://forgejo.example.org/team/stanzad/releases/tag/v1.2.0"),
    ("slack", "slack_text.json", {},
     "*Deploy finished* for build 99 (https://ci.example.org/build/99) & tests green :tada:"),
])
def test_a_shipped_handler_turns_its_tools_payload_into_a_chat_message(nginx, alice, hook, sample, headers, expected):
    body = (SAMPLES / sample).read_bytes()
    headers = dict(headers)
    if hook == "forgejo":
        headers["X-Forgejo-Signature"] = sign(body)
    elif hook != "slack":
        headers["Authorization"] = TOKEN
    status, _, response = post(nginx, f"/rest/hooks/{hook}", body, headers)
    assert (status, json.loads(response)) == (202, {"sent": 1})
    assert next_body(alice) == expected


# --- auth ------------------------------------------------------------------------------------------------------

def test_hmac_right_signature_202_wrong_or_missing_403_and_the_handler_does_not_run(nginx, alice, marks):
    body = b"signed payload"
    before = runs(marks)
    for headers in ({}, {"X-Hub-Signature-256": "sha256=" + "0" * 64}, {"X-Hub-Signature-256": sign(b"other body")}):
        status, _, response = post(nginx, "/rest/hooks/signed", body, headers)
        assert status == 403, response
        assert "signature" in json.loads(response)["error"]["text"]
    assert runs(marks) == before, "the handler ran for a request with a bad signature"
    for signature in ("sha256=" + sign(body), sign(body).upper()):
        status, _, _ = post(nginx, "/rest/hooks/signed", body, {"X-Hub-Signature-256": signature})
        assert status == 202
        assert next_body(alice) == "text: signed payload"
    environment = json.loads((marks / f"env-{runs(marks)}").read_text())
    assert "HTTP_X_HUB_SIGNATURE_256" not in environment, "the signature is withheld from the handler"


def test_credentials_hook_401_without_403_with_wrong_credentials(nginx, marks):
    before = runs(marks)
    status, headers, _ = post(nginx, "/rest/hooks/behaviour", b"{}")
    assert status == 401 and "www-authenticate" in headers
    status, _, _ = post(nginx, "/rest/hooks/behaviour", b"{}", {"Authorization": "Bearer wrong"})
    assert status == 403
    assert runs(marks) == before


def test_an_unknown_hook_is_404_and_get_is_405(nginx):
    status, _, response = post(nginx, "/rest/hooks/nosuch", b"{}", {"Authorization": TOKEN})
    assert status == 404 and "no hook named" in json.loads(response)["error"]["text"]
    connection = http.client.HTTPConnection("127.0.0.1", nginx.port, timeout=10)
    connection.request("GET", "/rest/hooks/slack")
    response = connection.getresponse()
    assert response.status == 405 and response.getheader("Allow") == "POST"
    connection.close()


def test_the_handler_gets_the_cgi_environment_without_credentials(nginx, alice, marks):
    status, _, _ = post(nginx, "/rest/hooks/behaviour?source=ci", b"env please",
                        {"Authorization": TOKEN, "X-Event": "deploy", "Cookie": "session=1", "Content-Type": "text/plain"})
    assert status == 202
    assert next_body(alice) == "text: env please"
    environment = json.loads((marks / f"env-{runs(marks)}").read_text())
    assert environment["STANZAD_HOOK"] == "behaviour"
    assert environment["STANZAD_TO"] == ALICE
    assert environment["REQUEST_METHOD"] == "POST"
    assert environment["QUERY_STRING"] == "source=ci"
    assert environment["CONTENT_TYPE"] == "text/plain"
    assert environment["HTTP_X_EVENT"] == "deploy"
    assert "HTTP_AUTHORIZATION" not in environment and "HTTP_COOKIE" not in environment


# --- output ----------------------------------------------------------------------------------------------------

def test_xml_json_and_ndjson_output_are_sent_as_stanzas(nginx, alice):
    status, _, response = post(nginx, "/rest/hooks/behaviour?output=xml", b"a", {"Authorization": TOKEN})
    assert (status, json.loads(response)) == (202, {"sent": 2})
    assert [next_body(alice), next_body(alice)] == ["xml: a", "xml to all: a"]
    status, _, response = post(nginx, "/rest/hooks/behaviour?output=json", b"b", {"Authorization": TOKEN})
    assert (status, json.loads(response)) == (202, {"sent": 1})
    assert next_body(alice) == "json: b"
    status, _, response = post(nginx, "/rest/hooks/behaviour?output=ndjson", b"c", {"Authorization": TOKEN})
    assert (status, json.loads(response)) == (202, {"sent": 2})
    assert [next_body(alice), next_body(alice)] == ["ndjson 1: c", "ndjson 2: c"]


def test_invalid_output_is_500_and_nothing_is_sent(nginx, alice, stanzad):
    status, _, response = post(nginx, "/rest/hooks/behaviour?output=bad", b"x", {"Authorization": TOKEN})
    assert status == 500
    assert b"must not arrive" not in response, "the handler's output is never echoed"
    assert "cannot send" in json.loads(response)["error"]["text"]
    stanzad.wait_for_log("hook failed.*bogus")
    # The next message alice gets is a later one: the valid stanza before <bogus/> was not sent either.
    assert post(nginx, "/rest/hooks/behaviour", b"after", {"Authorization": TOKEN})[0] == 202
    assert next_body(alice) == "text: after"


# --- failures --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("code,status", [(64, 400), (65, 400), (77, 403), (75, 503), (1, 500), (3, 500)])
def test_exit_status_maps_to_http_status(nginx, code, status):
    got, headers, response = post(nginx, f"/rest/hooks/behaviour?exit={code}", b"{}", {"Authorization": TOKEN})
    assert got == status
    assert f"exit {code}" in json.loads(response)["error"]["text"]
    if status == 503:
        assert headers.get("retry-after") == "30"


def test_a_hanging_handler_is_504_at_its_timeout_and_its_process_group_is_gone(nginx, marks):
    started = time.monotonic()
    status, _, _ = post(nginx, "/rest/hooks/behaviour?hang=1", b"{}", {"Authorization": TOKEN})
    elapsed = time.monotonic() - started
    assert status == 504
    assert elapsed < 10, f"answered after {elapsed:.1f} s (timeout 1 s + kill grace)"
    for pid in (int(p) for p in (marks / "pids").read_text().split()):
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2], f"pid {pid} survived"


def test_a_body_over_the_limit_is_413_before_the_handler_runs(nginx, marks):
    before = runs(marks)
    status, _, _ = post(nginx, "/rest/hooks/behaviour", b"x" * (10 * 1024 * 1024), {"Authorization": TOKEN})
    assert status == 413
    assert runs(marks) == before


def test_try_hook_prints_the_stanzas_and_the_status_without_a_server(tmp_path):
    config = tmp_path / "stanzad.toml"
    config.write_text(f'''[component]
jid = "{COMPONENT}"
server = "127.0.0.1:1"
secret = "x"

[rest]
credentials = ["{TOKEN}"]

[[hook]]
name = "alertmanager"
exec = ["{REPO}/handlers/alertmanager.py"]
to = ["{ALICE}"]
''')
    from harness import stanzad_binary
    sample = (SAMPLES / "alertmanager_resolved.json").read_bytes()
    result = subprocess.run([str(stanzad_binary()), "try", "--config", str(config), "--hook", "alertmanager"],
                            input=sample, capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    assert f'to="{ALICE}"' in out and "[RESOLVED:1] DiskFull (warning)" in out
    assert b'HTTP 202 {"sent": 1}' in result.stderr
    bad = subprocess.run([str(stanzad_binary()), "try", "--config", str(config), "--hook", "alertmanager"],
                         input=b"not json", capture_output=True, timeout=30)
    assert bad.returncode == 1 and b"HTTP 400: the handler exited with 65" in bad.stderr
    missing = subprocess.run([str(stanzad_binary()), "try", "--config", str(config), "--hook", "nope"],
                             input=b"", capture_output=True, timeout=30)
    assert missing.returncode != 0 and b'no hook named "nope"' in missing.stderr and b"hooks: alertmanager" in missing.stderr
