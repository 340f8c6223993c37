"""stanzad's thread count stays small whatever runs (the executor issue): at idle, with 64 exec handlers
running at once and with 8 workers busy, the daemon has at most 16 threads (read from /proc/<pid>/status)."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import threading

import pytest

from harness import Stanzad, component_config, memory_kib
from test_executor import burst, route
from test_workers import worker_route

MAX_THREADS = 16

SLOW_WORKER = '''#!/usr/bin/env python3
import json, os, sys, time
for line in sys.stdin:
    request = json.loads(line)
    open(os.path.join(os.environ["BUSY_DIR"], request["ref"]), "w").close()
    time.sleep(2)
    sys.stdout.write(json.dumps({"ref": request["ref"], "body": request.get("body", "")}) + "\\n")
    sys.stdout.flush()
'''


def threads(pid: int) -> int:
    return int(re.search(r"^Threads:\s+(\d+)", Path(f"/proc/{pid}/status").read_text(), re.M).group(1))


def thread_names(pid: int) -> str:
    """Each thread name with its count, for the failure message."""
    names: dict[str, int] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
        except OSError:
            continue
        names[name] = names.get(name, 0) + 1
    return ", ".join(f"{name} ×{count}" for name, count in sorted(names.items()))


def parents() -> dict[int, tuple[int, str]]:
    """pid → (parent pid, command name) of every process."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            name = stat[stat.index("(") + 1:stat.rindex(")")]
            table[int(entry.name)] = (int(stat[stat.rindex(")") + 2:].split()[1]), name)
    return table


def sleeps_under(pid: int) -> int:
    """`sleep` processes whose parent is a child of `pid` (the handlers' shells)."""
    table = parents()
    return sum(1 for parent, name in table.values()
               if name == "sleep" and table.get(parent, (0, ""))[0] == pid)


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.02)


@pytest.fixture(scope="module")
def busy_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("busy")


@pytest.fixture(scope="module")
def stanzad(prosody, busy_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("stanzad")
    worker = work / "slow_worker.py"
    worker.write_text(SLOW_WORKER)
    worker.chmod(0o755)
    extra = "[limits]\nmax_processes = 64\n\n" + "".join([
        route("sleepy", ["/bin/sh", "-c", "sleep 2; cat"], concurrency=64, queue=100),
        worker_route("slowworker", [str(worker)], workers=8, concurrency=8, queue=100, timeout=20,
                     pass_env='["BUSY_DIR"]'),
    ])
    env = dict(os.environ, BUSY_DIR=str(busy_dir))
    daemon = Stanzad(work, component_config(prosody.component_port, extra=extra), env=env)
    daemon.start()
    daemon.wait_for_log("component connected")
    daemon.wait_for_log("worker started", count=8)
    yield daemon
    daemon.stop()


def test_an_idle_stanzad_has_at_most_16_threads(stanzad, alice):
    count, names = threads(stanzad.process.pid), thread_names(stanzad.process.pid)
    print(f"idle: {count} threads")
    assert count <= MAX_THREADS, names


# Issue 21's idle goal is 30 MB of RSS. Most of an idle stanzad's RSS is code pages (RssFile: shared with every
# other process that maps them, dropped by the kernel under memory pressure at no cost): the release binary, linked
# statically with lld (Package.swift), idles at about 26 MB in all, which bench/anchors prints for the binary it
# runs; this debug build links the Swift libraries dynamically and idles at about 42 MB. The memory stanzad itself
# holds (RssAnon: heap, stacks, its data) is 3-4 MB in both. This test bounds the latter, at half the goal, so that
# a leak or a large idle cache shows whatever the build.
MAX_IDLE_ANON_KIB = 15 * 1024


def test_an_idle_stanzad_holds_little_memory_of_its_own(stanzad, alice):
    # It has been used: alice's session is up, the link is up and the workers started.
    usage = memory_kib(stanzad.process.pid)
    print(f"idle: RSS {usage['VmRSS'] / 1024:.1f} MiB, of it anonymous {usage['RssAnon'] / 1024:.1f} MiB, "
          f"file-backed (code) {usage['RssFile'] / 1024:.1f} MiB")
    assert usage["RssAnon"] <= MAX_IDLE_ANON_KIB, usage


def test_64_exec_handlers_running_at_once_cost_no_thread_each(stanzad, alice):
    pid = stanzad.process.pid
    answers: list = []
    sender = threading.Thread(target=lambda: answers.extend(burst(alice, "sleepy", 64, timeout=60)))
    sender.start()
    wait_until(lambda: sleeps_under(pid) >= 64, 30, "64 handlers running at once")
    count, names = threads(pid), thread_names(pid)
    print(f"64 exec handlers running: {count} threads")
    sender.join(60)
    assert len(answers) == 64
    assert sorted(a["body"] for a in answers) == sorted(f"m{i}" for i in range(64))
    assert count <= MAX_THREADS, names


def test_8_busy_workers_cost_no_thread_each(stanzad, alice, busy_dir):
    pid = stanzad.process.pid
    answers: list = []
    sender = threading.Thread(target=lambda: answers.extend(burst(alice, "slowworker", 8, timeout=60)))
    sender.start()
    wait_until(lambda: len(os.listdir(busy_dir)) >= 8, 30, "8 workers busy at once")
    count, names = threads(pid), thread_names(pid)
    print(f"8 workers busy: {count} threads")
    sender.join(60)
    assert len(answers) == 8
    assert sorted(a["body"] for a in answers) == sorted(f"m{i}" for i in range(8))
    assert count <= MAX_THREADS, names
