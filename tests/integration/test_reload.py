"""SIGHUP (SPEC §11): routes are swapped without dropping the component link or running handlers; a broken
configuration is rejected with file:line and the old routes keep working."""

from __future__ import annotations

import signal
from pathlib import Path

from harness import COMPONENT, DOMAIN, Client, Stanzad, component_config
from test_executor import ask

TRICKY = Path(__file__).parent / "handlers" / "tricky_worker.py"


def routes(greeting: str) -> str:
    return f'''
[[route]]
name = "greet"
to = ["greet@{COMPONENT}"]
exec = ["/bin/sh", "-c", "echo {greeting}"]

[[route]]
name = "slow"
to = ["slow@{COMPONENT}"]
exec = ["/bin/sh", "-c", "echo started >&2; sleep 2; echo slow-{greeting}"]

[[route]]
name = "worker"
to = ["worker@{COMPONENT}"]
worker = ["{TRICKY}"]
format = "json"
'''


def test_sighup_swaps_routes_keeps_the_link_and_rejects_a_broken_config(prosody, tmp_path):
    daemon = Stanzad(tmp_path, component_config(prosody.component_port, extra=routes("old")))
    daemon.start()
    alice = None
    try:
        daemon.wait_for_log("component connected")
        alice = Client(f"alice@{DOMAIN}/test", "pw", prosody.c2s_port)
        assert ask(alice, "greet", "hi")["body"] == "old"
        worker_pid = ask(alice, "worker", "pid")["body"]

        # A handler that runs across the reload.
        alice.loop.call_soon_threadsafe(lambda: alice.xmpp.send_message(mto=f"slow@{COMPONENT}", mbody="x", mtype="chat"))
        daemon.wait_for_log(r"handler stderr line=started.*route=slow")  # running before the reload
        daemon.config_path.write_text(component_config(prosody.component_port, extra=routes("new")))
        daemon.signal(signal.SIGHUP)
        daemon.wait_for_log("configuration reloaded")

        assert ask(alice, "greet", "hi")["body"] == "new"
        # The first answer from slow@ is the one started before the reload, from the old argv.
        assert ask(alice, "slow", "after", timeout=10)["body"] == "slow-old"
        assert ask(alice, "worker", "pid")["body"] != worker_pid  # recycled with the new settings

        # A broken config: rejected with file:line, the routes stay.
        daemon.config_path.write_text(component_config(prosody.component_port, extra=routes("broken") + "bogus_key = 1\n"))
        daemon.signal(signal.SIGHUP)
        lines = daemon.wait_for_log(r"configuration not reloaded")
        assert any(f"{daemon.config_path}:" in line and "bogus_key" in line for line in lines), lines
        assert ask(alice, "greet", "hi")["body"] == "new"

        # One connection for the whole test, in stanzad's log and in Prosody's: the link was never dropped.
        assert len(daemon.wait_for_log("component connected")) == 1
        assert prosody.log_text().count("External component successfully authenticated") == 1, prosody.log_text()[-3000:]
    finally:
        if alice:
            alice.close()
        daemon.stop()
