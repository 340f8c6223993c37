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


def held_handler(directory) -> str:
    """A text handler that notes each body it starts on and answers "done <body>" once `release` exists."""
    script = directory / "held.sh"
    script.write_text(f"""#!/bin/sh
body=$(/bin/cat)
echo "started $body" >> {directory}/started
while [ ! -e {directory}/release ]; do /bin/sleep 0.05; done
echo "done $body"
""")
    script.chmod(0o755)
    return f'''
[[route]]
name = "held"
to = ["held@{COMPONENT}"]
exec = ["{script}"]
format = "text"
concurrency = 1
queue = 5
timeout = 60
'''


def send_with_id(client: Client, body: str, stanza_id: str) -> None:
    """On the client's loop: a chat message to held@ with this id."""
    message = client.xmpp.make_message(mto=f"held@{COMPONENT}", mbody=body, mtype="chat")
    message["id"] = stanza_id
    message.send()


def wait_for_file_line(path, line: str, timeout: float = 15) -> None:
    import time
    deadline = time.monotonic() + timeout
    while not (path.exists() and line in path.read_text().splitlines()):  # a file a handler writes, polled
        assert time.monotonic() < deadline, f"{line!r} not in {path}"
        time.sleep(0.05)


def test_a_stanza_that_arrives_while_handlers_drain_is_answered_shutting_down_not_dropped(prosody, tmp_path):
    daemon = Stanzad(tmp_path, component_config(prosody.component_port, extra=held_handler(tmp_path)))
    daemon.start()
    client = None
    try:
        daemon.wait_for_log("component connected")
        client = Client(f"alice@{DOMAIN}/drain", "pw", prosody.c2s_port)
        client.loop.call_soon_threadsafe(lambda: client.xmpp.send_message(mto=f"held@{COMPONENT}", mbody="m1", mtype="chat"))
        wait_for_file_line(tmp_path / "started", "started m1")
        daemon.signal(signal.SIGTERM)
        daemon.wait_for_log("waiting for running handlers")
        # The router takes no more stanzas; the link still reads and sends while m1's handler finishes.
        client.loop.call_soon_threadsafe(lambda: send_with_id(client, "late", "late-1"))
        refused = client.next_message(15)
        assert str(refused["id"]) == "late-1" and refused["type"] == "error"
        assert condition(refused) == ("cancel", "service-unavailable")
        assert refused["error"]["text"] == "stanzad is shutting down"
        (tmp_path / "release").touch()
        done = client.next_message(15)
        assert str(done["body"]) == "done m1", "the running handler finished and its reply went out"
        assert daemon.wait(15) == 0
        assert (tmp_path / "started").read_text().split() == ["started", "m1"], "the late stanza never ran"
    finally:
        if client:
            client.close()
        daemon.stop()
