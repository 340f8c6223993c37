"""SIGHUP (SPEC §11): routes are swapped without dropping the component link or running handlers; a broken
configuration is rejected with file:line and the old routes keep working."""

from __future__ import annotations

import signal
import time
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


def alive(pid: int) -> bool:
    """A live (not zombie) process with that pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:].split()[0] != "Z"


def worker_routes(*names: str, pid_dirs: dict[str, Path]) -> str:
    return "".join(f'''
[[route]]
name = "{name}"
to = ["{name}@{COMPONENT}"]
worker = ["{TRICKY}"]
workers = 2
format = "json"
env = {{ PID_DIR = "{pid_dirs[name]}" }}
''' for name in names)


def test_sighup_removing_or_renaming_a_worker_route_stops_its_workers(prosody, tmp_path):
    pid_dirs = {name: tmp_path / name for name in ("keep", "gone", "old", "renamed")}
    for directory in pid_dirs.values():
        directory.mkdir()
    daemon = Stanzad(tmp_path, component_config(prosody.component_port,
                                                extra=worker_routes("keep", "gone", "old", pid_dirs=pid_dirs)))
    daemon.start()
    alice = None
    try:
        daemon.wait_for_log("component connected")
        daemon.wait_for_log("worker started", count=6)
        alice = Client(f"alice@{DOMAIN}/test", "pw", prosody.c2s_port)
        for name in ("keep", "gone", "old"):
            assert ask(alice, name, "hi")["body"] == "hi"
        # Each worker writes its pid file once it runs (a moment after stanzad logs its start).
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(len(list(pid_dirs[n].glob("*.pid"))) < 2 for n in ("gone", "old")):
            time.sleep(0.05)
        started = {name: [int(p.stem) for p in pid_dirs[name].glob("*.pid")] for name in ("gone", "old")}
        assert all(len(pids) == 2 for pids in started.values()), started

        # "gone" is removed and "old" is renamed to "renamed".
        daemon.config_path.write_text(component_config(prosody.component_port,
                                                       extra=worker_routes("keep", "renamed", pid_dirs=pid_dirs)))
        daemon.signal(signal.SIGHUP)
        daemon.wait_for_log("configuration reloaded")

        # The workers of both old routes exit (stdin closed, kill_grace, then killed): poll /proc until then.
        deadline = time.monotonic() + 15
        while any(alive(pid) for pids in started.values() for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [pid for pids in started.values() for pid in pids if alive(pid)], daemon.log()[-3000:]
        assert len(daemon.wait_for_log("worker route removed; stopping its workers", count=2)) == 2
        assert ask(alice, "renamed", "hi")["body"] == "hi"
        assert ask(alice, "keep", "hi")["body"] == "hi"
        assert not any(alive(int(p.stem)) for p in pid_dirs["gone"].glob("*.pid")), "nothing restarted them"
    finally:
        if alice:
            alice.close()
        daemon.stop()
