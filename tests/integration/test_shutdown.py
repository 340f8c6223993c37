"""Shutdown (SPEC §11) with work in flight: what a sender waiting on stanzad hears when it stops."""

from __future__ import annotations

import signal

from harness import COMPONENT, DOMAIN, Client, Stanzad, component_config
from test_executor import condition
from webhook_server import WebhookServer


def test_a_webhook_retry_waiting_at_shutdown_answers_its_sender_before_the_link_closes(prosody, tmp_path):
    hooks = WebhookServer()
    # The webhook asks for a minute's pause: the retry is still waiting when stanzad is told to stop.
    hooks.answer("later", ((503, {"Retry-After": "60"}), "text/plain", "busy"))
    routes = f'''
[[route]]
name = "later"
to = ["later@{COMPONENT}"]
webhook = "http://127.0.0.1:{hooks.port}/in/{{to}}"
timeout = 120
retries = 3
'''
    daemon = Stanzad(tmp_path, component_config(prosody.component_port, extra=routes))
    daemon.start()
    client = None
    try:
        daemon.wait_for_log("component connected")
        client = Client(f"alice@{DOMAIN}/shutdown", "pw", prosody.c2s_port)
        client.loop.call_soon_threadsafe(
            lambda: client.xmpp.send_message(mto=f"later@{COMPONENT}", mbody="page me", mtype="chat"))
        daemon.wait_for_log("webhook attempt failed; retrying")
        daemon.signal(signal.SIGTERM)
        reply = client.next_message(15)
        assert str(reply["from"].bare) == f"later@{COMPONENT}"
        assert condition(reply) == ("cancel", "service-unavailable"), "the outcome of the attempt before"
        assert daemon.wait(15) == 0
        assert "webhook retry dropped: stanzad is shutting down" in daemon.log()
        assert len(hooks.requests_for("later")) == 1, "the retry was not sent"
    finally:
        if client:
            client.close()
        daemon.stop()
        hooks.stop()
