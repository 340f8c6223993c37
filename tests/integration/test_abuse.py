"""Floods and loops (issue 16): two addresses of the component that answer each other do not loop, and a
sender over `[limits] per_sender` gets an error while the handler runs no more than the limit allows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness import COMPONENT, DOMAIN, Client, Stanzad, component_config

STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"


def counting_handler(path: Path, log: Path, answer_to: str) -> Path:
    """A json handler that counts its runs (one line each in `log`) and answers by writing to `answer_to`."""
    path.write_text(f"""#!/bin/sh
cat > /dev/null
echo run >> {log}
printf '%s\\n' '{json.dumps({"to": answer_to, "body": "pong"})}'
""")
    path.chmod(0o755)
    return path


@pytest.fixture(scope="module")
def setup(prosody, tmp_path_factory):
    work = tmp_path_factory.mktemp("abuse")
    runs = {name: work / f"{name}.runs" for name in ("ping", "pong", "limited")}
    ping = counting_handler(work / "ping.sh", runs["ping"], f"pong@{COMPONENT}")
    pong = counting_handler(work / "pong.sh", runs["pong"], f"ping@{COMPONENT}")
    limited = work / "limited.sh"
    limited.write_text(f"#!/bin/sh\necho run >> {runs['limited']}\ncat\n")
    limited.chmod(0o755)
    extra = f'''
[limits]
per_sender = "3/60s"

[[route]]
name = "ping"
to = ["ping@{COMPONENT}"]
exec = ["{ping}"]
format = "json"

[[route]]
name = "pong"
to = ["pong@{COMPONENT}"]
exec = ["{pong}"]
format = "json"

[[route]]
name = "limited"
to = ["limited@{COMPONENT}"]
exec = ["{limited}"]
'''
    daemon = Stanzad(work, component_config(prosody.component_port, extra=extra))
    daemon.start()
    daemon.wait_for_log("component connected")
    bob = Client(f"bob@{DOMAIN}/test", "pw", prosody.c2s_port)
    yield daemon, runs, bob
    bob.close()
    daemon.stop()


def lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_two_addresses_answering_each_other_do_not_loop(setup):
    daemon, runs, bob = setup
    bob.send_raw(f"<message type='chat' to='ping@{COMPONENT}' id='start'><body>go</body></message>")
    # ping answers pong@ (from ping@, an address of the component): the loop guard keeps that message from
    # pong's route, so the built-in responder refuses it (service-unavailable, to ping@), and an error is never
    # answered. Both built-in steps are logged; then the chain is over.
    component = COMPONENT.replace(".", r"\.")
    daemon.wait_for_log(rf"from=ping@{component} .*outcome=\"error service-unavailable\" route=\(built-in\)")
    daemon.wait_for_log(rf"from=pong@{component} .*outcome=none route=\(built-in\)")
    assert lines(runs["ping"]) == 1
    assert lines(runs["pong"]) == 0  # before the guard, ping and pong ran ~400 times a second, forever


def test_a_sender_over_its_rate_limit_gets_an_error_and_the_handler_runs_no_more(setup, prosody):
    daemon, runs, _ = setup
    carol = Client(f"alice@{DOMAIN}/flood", "pw", prosody.c2s_port)  # a sender with a full bucket
    try:
        flood(daemon, runs, carol)
    finally:
        carol.close()


def flood(daemon, runs, bob):
    for index in range(6):
        bob.send_raw(f"<message type='chat' to='limited@{COMPONENT}' id='l{index}'><body>hi {index}</body></message>")
    answers = [bob.next_message(10) for _ in range(6)]
    replies = [m for m in answers if m["type"] == "chat"]
    errors = [m for m in answers if m["type"] == "error"]
    assert sorted(m["body"] for m in replies) == ["hi 0", "hi 1", "hi 2"]
    assert len(errors) == 3
    for error in errors:
        element = error.xml.find("{jabber:client}error")
        assert element.get("type") == "wait"
        assert element.find(f"{{{STANZAS}}}policy-violation") is not None
        assert "rate limit" in element.find(f"{{{STANZAS}}}text").text
    assert lines(runs["limited"]) == 3
    assert daemon.wait_for_log("sender over its rate limit")
