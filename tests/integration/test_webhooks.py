"""Webhook routes (SPEC §6) through a real Prosody with slixmpp as the user, against local HTTP servers:
every row of the response table and of the HTTP→stanza table, retries, signatures, and the two example apps
(mod_rest callback style and mod_component_http style) unchanged."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import sys
import time

import pytest

from harness import COMPONENT, REPO, Client, Stanzad, component_config, free_port, wait_for_port
from test_executor import ask, condition, error_text
from webhook_server import WebhookServer

SECRET = "hook-secret"


@pytest.fixture(scope="module")
def hooks():
    server = WebhookServer()
    yield server
    server.stop()


def start_app(script: str, env: dict[str, str]) -> tuple[subprocess.Popen, int]:
    port = free_port()
    process = subprocess.Popen([sys.executable if "flask" not in script else "/usr/bin/python3",
                                str(REPO / "examples" / script), str(port)],
                               env=dict(os.environ, **env), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port)
    return process, port


@pytest.fixture(scope="module")
def apps():
    env = {"STANZAD_HMAC_SECRET": SECRET}
    flask, flask_port = start_app("flask_echo.py", env)
    plain, plain_port = start_app("component_http_echo.py", env)
    yield flask_port, plain_port
    for process in (flask, plain):
        process.terminate()
        process.wait(5)


@pytest.fixture(scope="module")
def stanzad(prosody, hooks, apps, tmp_path_factory):
    flask_port, plain_port = apps
    dead_port = free_port()
    routes = f'''
[[route]]
name = "flask"
to = ["flask@{COMPONENT}"]
webhook = "http://127.0.0.1:{flask_port}/"
format = "xml"
hmac_secret = "{SECRET}"

[[route]]
name = "component-http"
to = ["chttp@{COMPONENT}"]
webhook = "http://127.0.0.1:{plain_port}/"
format = "json"
hmac_secret = "{SECRET}"

[[route]]
name = "down"
to = ["down@{COMPONENT}"]
kinds = ["message", "iq"]
webhook = "http://127.0.0.1:{dead_port}/x"
timeout = 1
retries = 2

[[route]]
name = "hook"
kinds = ["message", "iq"]
to = ["*@{COMPONENT}"]
webhook = "http://127.0.0.1:{hooks.port}/in/{{kind}}/{{to}}"
format = "xml"
timeout = 2
retries = 2
concurrency = 16
headers = {{ Authorization = "Bearer app-token" }}
hmac_secret = "{SECRET}"
'''
    daemon = Stanzad(tmp_path_factory.mktemp("stanzad"), component_config(prosody.component_port, extra=routes))
    daemon.start()
    daemon.wait_for_log("component connected")
    yield daemon
    daemon.stop()


def send(client: Client, name: str, body: str, msg_id: str) -> None:
    def go():
        message = client.xmpp.make_message(mto=f"{name}@{COMPONENT}", mbody=body, mtype="chat")
        message["id"] = msg_id
        message.send()
    client.loop.call_soon_threadsafe(go)


# --- the response table ------------------------------------------------------------------------------------

@pytest.mark.parametrize("status,content_type,body", [
    (202, "application/json", '{"body": "ignored"}'),
    (204, None, ""),
    (200, "application/xmpp+xml", ""),
])
def test_no_reply_for_accepted_no_content_or_empty_body(alice, hooks, stanzad, status, content_type, body):
    key = f"none{status}"
    hooks.answer(key, (status, content_type, body))
    send(alice, key, "x", f"id-{key}")
    stanzad.wait_for_log(rf"outcome=none.*stanza\.id=id-{key}")
    # The next exchange on the same route is answered normally: nothing was queued for the first one.
    hooks.answer("after", (200, "text/plain", "after"))
    assert ask(alice, "after", "y")["body"] == "after"


def test_iq_with_no_content_gets_an_empty_result(alice, hooks):
    hooks.answer("iqnone", (204, None, ""))
    result = alice.iq(f"<iq xmlns='jabber:client' type='get' to='iqnone@{COMPONENT}' id='q1'><query xmlns='urn:x'/></iq>")
    assert result["type"] == "result" and result["id"] == "q1" and len(result.xml) == 0


@pytest.mark.parametrize("content_type,body,expected", [
    ("application/xmpp+xml", "<message><body>from xml</body></message>", "from xml"),
    ("application/json; charset=utf-8", '{"body": "from json"}', "from json"),
    ("text/plain; charset=utf-8", "from text\n", "from text"),
])
def test_2xx_bodies_by_content_type(alice, hooks, content_type, body, expected):
    key = "ok" + content_type.split("/")[1].split(";")[0].replace("+", "")
    hooks.answer(key, (200, content_type, body))
    reply = ask(alice, key, "x")
    assert reply["type"] == "chat" and reply["body"] == expected


def test_error_stanza_in_a_4xx_body_is_sent_as_given(alice, hooks):
    hooks.answer("xmlerr", (400, "application/xmpp+xml",
                            "<message type='error'><error type='auth'><forbidden xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"
                            "<text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>go away</text></error></message>"))
    reply = ask(alice, "xmlerr", "x")
    assert condition(reply) == ("auth", "forbidden") and error_text(reply) == "go away"


def test_json_error_in_a_5xx_body_is_sent(alice, hooks):
    hooks.answer("jsonerr", (503, "application/json", '{"error": {"type": "wait", "condition": "policy-violation", "text": "slow down"}}'))
    reply = ask(alice, "jsonerr", "x", timeout=30)
    assert condition(reply) == ("wait", "policy-violation") and error_text(reply) == "slow down"


HTTP_TABLE = [
    (301, "cancel", "undefined-condition"), (400, "modify", "bad-request"), (401, "auth", "not-authorized"),
    (402, "auth", "payment-required"), (403, "auth", "forbidden"), (404, "cancel", "item-not-found"),
    (405, "cancel", "not-allowed"), (406, "modify", "not-acceptable"), (407, "auth", "registration-required"),
    (408, "wait", "remote-server-timeout"), (409, "cancel", "conflict"), (410, "cancel", "gone"),
    (411, "modify", "bad-request"), (412, "cancel", "conflict"), (413, "modify", "resource-constraint"),
    (414, "modify", "resource-constraint"), (415, "cancel", "feature-not-implemented"),
    (416, "modify", "bad-request"), (422, "modify", "bad-request"), (423, "wait", "resource-constraint"),
    (429, "wait", "resource-constraint"), (431, "modify", "resource-constraint"), (451, "auth", "forbidden"),
    (500, "wait", "internal-server-error"), (501, "cancel", "feature-not-implemented"),
    (502, "wait", "remote-server-timeout"), (503, "cancel", "service-unavailable"),
    (504, "wait", "remote-server-timeout"), (507, "wait", "resource-constraint"), (511, "auth", "not-authorized"),
    (418, "cancel", "undefined-condition"),
]


def test_http_status_table(alice, hooks):
    """Every entry of the HTTP→stanza table, as iqs (not retried) so the run stays short."""
    for status, type_, cond in HTTP_TABLE:
        key = f"s{status}"
        hooks.answer(key, (status, "text/html", "<h1>no</h1>"))
        reply = alice.iq(f"<iq xmlns='jabber:client' type='get' to='{key}@{COMPONENT}' id='{key}'><query xmlns='urn:x'/></iq>")
        assert reply["type"] == "error", status
        assert condition(reply) == (type_, cond), status
        assert error_text(reply), status  # the reason phrase


def test_connection_failure_is_recipient_unavailable_after_the_retries(alice, stanzad):
    started = time.monotonic()
    reply = ask(alice, "down", "x", timeout=30)
    assert condition(reply) == ("wait", "recipient-unavailable")
    assert time.monotonic() - started < 6
    assert len(stanzad.wait_for_log(r"webhook attempt failed; retrying.*route=down")) >= 2


def test_timeout_is_remote_server_timeout(alice, hooks):
    hooks.answer("slowiq", (200, "text/plain", "late", 5))
    reply = alice.iq(f"<iq xmlns='jabber:client' type='get' to='slowiq@{COMPONENT}' id='t1'><query xmlns='urn:x'/></iq>", timeout=20)
    assert condition(reply) == ("wait", "remote-server-timeout")


# --- retries -------------------------------------------------------------------------------------------------

def test_503_twice_then_200_delivers_the_200_reply_with_one_delivery_id(alice, hooks):
    hooks.answer("flaky", ((503, {"Retry-After": "0"}), "text/plain", "busy"), ((503, {"Retry-After": "0"}), "text/plain", "busy"),
                 (200, "text/plain", "third time lucky"))
    reply = ask(alice, "flaky", "x", timeout=30)
    assert reply["body"] == "third time lucky"
    deliveries = [r.headers["Stanzad-Delivery"] for r in hooks.requests_for("flaky")]
    assert len(deliveries) == 3 and len(set(deliveries)) == 1


def test_a_webhook_down_for_the_whole_window_gives_one_error_reply(alice, hooks):
    hooks.answer("alwaysdown", (503, "text/plain", "down"))
    reply = ask(alice, "alwaysdown", "x", timeout=30)
    assert condition(reply) == ("cancel", "service-unavailable")
    assert len(hooks.requests_for("alwaysdown")) == 3
    # Exactly one reply: the next message from there is the answer to a new question.
    hooks.answer("alwaysdown", (200, "text/plain", "back"))
    assert ask(alice, "alwaysdown", "y")["body"] == "back"


# --- headers and signature -------------------------------------------------------------------------------------

def test_headers_and_signature(alice, hooks):
    hooks.answer("headers", (204, None, ""))
    send(alice, "headers", "sign me", "h1")
    deadline = time.monotonic() + 10
    while not hooks.requests_for("headers") and time.monotonic() < deadline:
        time.sleep(0.05)
    request = hooks.requests_for("headers")[0]
    assert request.path == f"/in/message/headers%40{COMPONENT}"
    assert request.headers["Content-Type"] == "application/xmpp+xml"
    assert request.headers["Accept"] == "application/xmpp+xml, application/json, text/plain"
    assert request.headers["User-Agent"].startswith("stanzad/")
    assert request.headers["Content-Language"] == "en"
    assert request.headers["Authorization"] == "Bearer app-token"
    expected = "sha256=" + hmac.new(SECRET.encode(), request.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(expected, request.headers["Stanzad-Signature"])
    assert b"<body>sign me</body>" in request.body


# --- the example apps, unchanged ------------------------------------------------------------------------------

def test_flask_echo_from_the_mod_rest_docs_works_unchanged(alice):
    assert ask(alice, "flask", "hello flask")["body"] == "hello flask"


def test_component_http_style_json_app_works_unchanged(alice):
    assert ask(alice, "chttp", "hello json app")["body"] == "hello json app"
