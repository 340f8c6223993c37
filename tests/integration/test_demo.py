"""scripts/demo, the first-run command: `--check` does both round trips (an XMPP message answered by
handlers/echo.sh, a curl to /rest delivered to an XMPP user) and exits 0; the interactive demo prints
commands that work as printed, and Ctrl-C stops everything it started.

STANZAD_BIN (set by scripts/test) makes the demo use the binary under test instead of a release build."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from harness import REPO, stanzad_binary

DEMO = REPO / "scripts" / "demo"


def demo_env() -> dict[str, str]:
    return dict(os.environ, STANZAD_BIN=str(stanzad_binary()))


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes whose argv contains `text`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{entry}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state not in (b"Z", b"X"):
            found.append(f"{entry}: {cmdline}")
    return found


def test_demo_check_does_both_round_trips_and_exits_0():
    started = time.monotonic()
    result = subprocess.run([str(DEMO), "--check"], env=demo_env(), stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "echo@bot.localhost -> alice@localhost: hello from alice" in output, output
    assert "HTTP 202" in output and "bot.localhost -> bob@localhost: hello bob, from curl" in output, output
    assert output.count("    ok\n") == 2, output
    assert "demo: OK" in output
    assert time.monotonic() - started < 30, "scripts/demo --check should take well under 30 s"
    # It cleaned up after itself.
    directories = re.findall(r"(/\S+/stanzad-demo\.\w+)", output)
    assert not processes_mentioning("stanzad-demo."), processes_mentioning("stanzad-demo.")
    for directory in directories:
        assert not Path(directory).exists()


def test_interactive_demo_prints_working_commands_and_ctrl_c_stops_everything():
    # Its own process group, like a shell job: Ctrl-C in a terminal is SIGINT to the foreground group.
    process = subprocess.Popen([str(DEMO)], env=demo_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 60
        assert process.stdout
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            if "Press Ctrl-C" in line or time.monotonic() > deadline:
                break
        output = "\n".join(lines)
        assert "Press Ctrl-C" in output, output
        directory = re.search(r"tail -f (\S+)/stanzad\.log", output).group(1)
        assert len(processes_mentioning(directory)) >= 3, "Prosody, stanzad and nginx should be running"

        # Every command the demo prints works as printed.
        commands = [line.strip() for line in lines if line.startswith("  curl ") or " try --config " in line]
        assert len(commands) == 6, output
        expected = [r"^$", r'<iq [^>]*type="result"', r'"name":"Prosody"', r'<roll xmlns="urn:example:dice" sides="20">\d+</roll>',
                    r'"component":"connected"', r"<body>commands: help"]
        for command, pattern in zip(commands, expected):
            run = subprocess.run(["bash", "-c", command.replace("curl ", "curl -sS --fail-with-body ", 1)],
                                 capture_output=True, text=True, timeout=30)
            assert run.returncode == 0, f"{command}\n{run.stdout}{run.stderr}"
            assert re.search(pattern, run.stdout), f"{command}\n{run.stdout}"

        os.killpg(process.pid, signal.SIGINT)
        try:
            status = process.wait(30)
        except subprocess.TimeoutExpired:
            # Which of its servers is still stopping, and what stanzad logged meanwhile (the demo gives each 10 s).
            log = Path(directory, "stanzad.log")
            pytest.fail(f"the demo did not stop within 30 s of Ctrl-C; still running: {processes_mentioning(directory)}\n"
                        f"stanzad.log (end):\n{log.read_text()[-3000:] if log.exists() else '(gone)'}")
        assert status == 130
        rest = process.stdout.read()
        assert "stopping the demo" in rest
        assert not processes_mentioning(directory), processes_mentioning(directory)
        assert not Path(directory).exists()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(30)
