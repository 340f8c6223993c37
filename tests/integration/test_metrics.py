"""`[metrics]` (SPEC §19) scraped through real nginx by Python's prometheus_client parser after a scripted
workload through real Prosody: every metric is there, and the counters equal what the workload did."""

from __future__ import annotations

import http.client
import json
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness import COMPONENT, DOMAIN, REPO, rest_stanzad
from nginx import Nginx
from test_executor import ask
from webhook_server import WebhookServer

TOKEN = "Bearer bWV0cmljcy10b2tlbg=="
ALICE = f"alice@{DOMAIN}"


@pytest.fixture(scope="module")
def hooks():
    server = WebhookServer()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stanzad(prosody, socket_path, hooks, tmp_path_factory):
    extra = f'''
[rest]
listen = "unix:{socket_path}"
credentials = ["{TOKEN}"]

[metrics]
path = "/metrics"

[[route]]
name = "echo"
to = ["echo@{COMPONENT}"]
exec = ["{REPO}/handlers/echo.sh"]

[[route]]
name = "hook"
to = ["hook@{COMPONENT}"]
webhook = "http://127.0.0.1:{hooks.port}/in/{{to}}"

[[route]]
name = "inbox"
to = ["inbox@{COMPONENT}"]
pull = true
'''
    daemon = rest_stanzad(prosody, tmp_path_factory, extra)
    yield daemon
    daemon.stop()


def request(nginx: Nginx, method: str, path: str, body: bytes = b"", headers: dict | None = None) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", nginx.port, timeout=30)
    connection.request(method, path, body=body, headers=headers or {})
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return response.status, data


def scrape(nginx: Nginx) -> dict[tuple[str, tuple], float]:
    status, body = request(nginx, "GET", "/metrics")
    assert status == 200
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_every_metric_is_there_and_the_counters_match_the_workload(nginx, alice, hooks, stanzad):
    before = scrape(nginx)
    # The workload: 5 echoes, 2 webhook deliveries, 2 updates left unfetched, REST: 3 messages (202), one
    # malformed (400), one without credentials (401).
    for i in range(5):
        assert ask(alice, "echo", f"e{i}")["body"] == f"e{i}"
    hooks.answer("hook", (200, "text/plain", "from the webhook"))
    for i in range(2):
        assert ask(alice, "hook", f"h{i}")["body"] == "from the webhook"
    alice.loop.call_soon_threadsafe(lambda: [alice.xmpp.send_message(mto=f"inbox@{COMPONENT}", mbody=f"u{i}", mtype="chat")
                                             for i in range(2)])
    stanzad.wait_for_log(r"route=inbox.*update=queued", count=2)
    auth = {"Authorization": TOKEN, "Content-Type": "text/plain"}
    for i in range(3):
        assert request(nginx, "POST", f"/rest/message/chat/{ALICE}", f"r{i}".encode(), auth)[0] == 202
    assert request(nginx, "POST", "/rest", b"<message", {"Authorization": TOKEN, "Content-Type": "application/xmpp+xml"})[0] == 400
    assert request(nginx, "POST", f"/rest/message/chat/{ALICE}", b"x", {"Content-Type": "text/plain"})[0] == 401

    after = scrape(nginx)
    delta = lambda name, **labels: value(after, name, **labels) - value(before, name, **labels)

    assert delta("stanzad_route_requests_total", route="echo", outcome="ok") == 5
    assert delta("stanzad_route_duration_seconds_count", route="echo") == 5
    assert delta("stanzad_route_duration_seconds_sum", route="echo") > 0
    assert delta("stanzad_route_requests_total", route="hook", outcome="ok") == 2
    assert delta("stanzad_webhook_responses_total", route="hook", code="200") == 2
    assert delta("stanzad_route_requests_total", route="inbox", outcome="ok") == 2
    assert value(after, "stanzad_updates_pending", route="inbox") == 2
    assert delta("stanzad_stanzas_total", direction="in", kind="message") == 9
    # Out: 5 echoes + 2 webhook replies + 3 REST messages.
    assert delta("stanzad_stanzas_total", direction="out", kind="message") == 10
    assert delta("stanzad_rest_requests_total", status="202") == 3
    assert delta("stanzad_rest_requests_total", status="400") == 1
    assert delta("stanzad_rest_requests_total", status="401") == 1
    assert delta("stanzad_rest_requests_total", status="200") == 1, "the scrape before this one"
    assert value(after, "stanzad_link_up") == 1
    assert value(after, "stanzad_link_reconnects_total") == 0
    assert value(after, "stanzad_rest_pending_iq") == 0
    assert value(after, "stanzad_spool_depth") == 0
    assert value(after, "stanzad_route_in_flight", route="echo") == 0
    assert value(after, "stanzad_route_queue_depth", route="echo") == 0
    for state in ("joining", "joined", "rejoining", "banned", "failed"):
        assert ("stanzad_rooms", (("state", state),)) in after
    assert value(after, "stanzad_process_open_fds") > 5
    assert value(after, "stanzad_process_resident_memory_bytes") > 1_000_000
    assert value(after, "stanzad_process_threads") >= 2


def test_a_lost_link_counts_a_reconnect_and_link_up_follows_it(nginx, prosody, stanzad):
    prosody.restart()
    stanzad.wait_for_log("component connected", count=2, timeout=30)
    samples = scrape(nginx)
    assert value(samples, "stanzad_link_reconnects_total") == 1
    assert value(samples, "stanzad_link_up") == 1


def test_metrics_with_credentials_and_without_rest_are_checked(tmp_path):
    from harness import stanzad_binary
    import subprocess
    config = tmp_path / "stanzad.toml"
    config.write_text(f'[component]\njid = "{COMPONENT}"\nserver = "127.0.0.1:1"\nsecret = "x"\n\n[metrics]\npath = "/metrics"\n')
    result = subprocess.run([str(stanzad_binary()), "check", "--config", str(config)], capture_output=True, text=True)
    assert result.returncode == 78
    assert "[metrics] is served on the FastCGI front: add a [rest] section" in result.stderr
