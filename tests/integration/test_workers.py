"""Worker routes (SPEC §5.4) through a real Prosody, with slixmpp as the users: echo, out-of-order answers,
crashes, garbage, recycling, shutdown."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from harness import COMPONENT, DOMAIN, REPO, Client, Stanzad, component_config, stanzad_binary
from test_executor import ask, burst, condition, process_state

TRICKY = Path(__file__).parent / "handlers" / "tricky_worker.py"


def worker_route(name: str, argv: list[str], **extra) -> str:
    lines = ["[[route]]", f'name = "{name}"', f'to = ["{name}@{COMPONENT}"]',
             "worker = [" + ", ".join(f'"{a}"' for a in argv) + "]", 'format = "json"']
    lines += [f"{key} = {value}" for key, value in extra.items()]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def pid_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("pids")


@pytest.fixture(scope="module")
def stanzad(prosody, pid_dir, tmp_path_factory):
    routes = "".join([
        worker_route("echo", [str(REPO / "handlers" / "worker_echo.py")], workers=2),
        worker_route("tricky", [str(TRICKY)], workers=1, in_flight=4, timeout=3, concurrency=8,
                     pass_env='["PID_DIR"]'),
        worker_route("recycled", [str(REPO / "handlers" / "worker_echo.py")], workers=2, max_requests=100,
                     concurrency=8, queue=2000),
    ])
    env = dict(os.environ, PID_DIR=str(pid_dir))
    daemon = Stanzad(tmp_path_factory.mktemp("stanzad"), component_config(prosody.component_port, extra=routes), env=env)
    daemon.start()
    daemon.wait_for_log("component connected")
    daemon.wait_for_log("worker started", count=5)
    yield daemon
    daemon.stop()


@pytest.fixture(scope="module")
def bob(prosody, stanzad):
    client = Client(f"bob@{DOMAIN}/test", "pw", prosody.c2s_port)
    yield client
    client.close()


def send(client: Client, name: str, body: str) -> None:
    jid = f"{name}@{COMPONENT}"
    client.loop.call_soon_threadsafe(lambda: client.xmpp.send_message(mto=jid, mbody=body, mtype="chat"))


def test_echo_through_a_python_worker(alice):
    assert ask(alice, "echo", "hello worker")["body"] == "hello worker"


def test_out_of_order_answers_reach_the_right_senders(alice, bob, stanzad):
    delaying = len(stanzad.wait_for_log(r"worker stderr line=delaying", count=0))
    send(alice, "tricky", "slow for alice")
    stanzad.wait_for_log(r"worker stderr line=delaying", count=delaying + 1)  # the worker holds the slow one
    fast = ask(bob, "tricky", "fast for bob")
    assert fast["body"] == "fast for bob"
    slow = alice.next_message(10)
    assert slow["body"] == "slow for alice"


def worker_pid(client: Client) -> int:
    return int(ask(client, "tricky", "pid")["body"])


def test_kill_9_mid_request_fails_that_stanza_and_the_next_is_answered_by_a_new_worker(alice, bob, stanzad):
    old = worker_pid(alice)
    hanging = len(stanzad.wait_for_log(r"worker stderr line=hanging", count=0))
    send(alice, "tricky", "hang")
    stanzad.wait_for_log(r"worker stderr line=hanging", count=hanging + 1)  # the worker holds the request now
    os.kill(old, signal.SIGKILL)
    failed = alice.next_message(10)
    assert condition(failed) == ("cancel", "internal-server-error")
    stanzad.wait_for_log(r"worker ended unexpectedly.*status=\"signal 9\"|status=\"signal 9\".*worker ended unexpectedly")
    new = worker_pid(bob)
    assert new != old
    assert ask(bob, "tricky", "still there?")["body"] == "still there?"


def test_a_worker_printing_garbage_is_restarted(alice, stanzad):
    old = worker_pid(alice)
    failed = ask(alice, "tricky", "garbage")
    assert condition(failed) == ("cancel", "internal-server-error")
    stanzad.wait_for_log(r"worker output rejected; restarting it.*not JSON")
    assert worker_pid(alice) != old


def test_an_unknown_ref_restarts_the_worker(alice, stanzad):
    old = worker_pid(alice)
    send(alice, "tricky", "wrongref")
    stanzad.wait_for_log(r"worker answered unknown ref")
    # The request itself was never answered by the worker: it fails with the restart.
    assert condition(alice.next_message(10)) == ("cancel", "internal-server-error")
    assert worker_pid(alice) != old


def test_a_request_past_its_timeout_gets_remote_server_timeout(alice):
    reply = ask(alice, "tricky", "hang", timeout=15)
    assert condition(reply) == ("wait", "remote-server-timeout")
    assert ask(alice, "tricky", "after the timeout")["body"] == "after the timeout"


def recycling_settled(stanzad) -> int:
    """Waits until every recycled worker of the route has ended and been replaced (each running worker holds a
    few descriptors: its stdin, stdout and stderr pipes and its stdin's wake-up pipe, so counting in the middle
    of a replacement would see two generations at once); returns how many were recycled."""
    pattern = r"worker reached max_requests; recycling.*route=recycled"
    while True:
        recycled = len([line for line in list(stanzad.lines) if re.search(pattern, line)])
        stanzad.wait_for_log(r"worker ended.*route=recycled", count=recycled)
        stanzad.wait_for_log(r"worker started.*route=recycled", count=2 + recycled)
        if len([line for line in list(stanzad.lines) if re.search(pattern, line)]) == recycled:
            return recycled


def test_max_requests_recycles_workers_over_a_thousand_stanzas(alice, stanzad):
    pid = stanzad.process.pid
    burst(alice, "recycled", 200, timeout=60)  # warm-up
    recycling_settled(stanzad)
    fds_before, _, _ = process_state(pid)
    answers = burst(alice, "recycled", 1000, timeout=120)
    assert sorted(a["body"] for a in answers) == sorted(f"m{i}" for i in range(1000))
    # 1,200 requests at 100 per process: at least 10 processes were recycled, whatever the warm-up left running.
    assert recycling_settled(stanzad) >= 10
    fds_after, _, zombies = process_state(pid)
    assert zombies == 0
    assert abs(fds_after - fds_before) <= 5


def test_sigterm_stops_workers_cleanly(prosody, tmp_path):
    daemon = Stanzad(tmp_path, component_config(prosody.component_port, extra=worker_route(
        "echo", [str(REPO / "handlers" / "worker_echo.py")], workers=3)))
    daemon.start()
    daemon.wait_for_log("worker started", count=3)
    started = time.monotonic()
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(10) == 0
    assert time.monotonic() - started < 3
    assert len(daemon.wait_for_log(r'worker ended .*status="exit 0"', count=3)) == 3


def test_try_starts_only_the_workers_of_its_route(tmp_path):
    marker = tmp_path / "b-started"
    config = tmp_path / "stanzad.toml"
    config.write_text(component_config(1, extra=worker_route("a", [str(REPO / "handlers" / "worker_echo.py")])
                                       + worker_route("b", ["/bin/sh", "-c", f"touch {marker}; exec cat >/dev/null"])))
    result = subprocess.run([str(stanzad_binary()), "try", "--config", str(config), "--route", "a", "--body", "hi"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "<body>hi</body>" in result.stdout, result.stdout
    assert result.stderr.count("worker started") == 1, result.stderr
    assert not marker.exists(), "route b's worker was started"
