"""Process handlers (SPEC §5) through a real Prosody, with slixmpp as the user: the three contracts, the
clean environment, the torture cases of the executor issue, load and overload."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from harness import COMPONENT, DOMAIN, REPO, Client, Stanzad, component_config, stanzad_binary

STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
HANDLERS = REPO / "handlers"
SH = "/bin/sh"


def route(name: str, argv: list[str], fmt: str = "text", **extra) -> str:
    """One [[route]] addressed to name@component."""
    lines = ["[[route]]", f'name = "{name}"', f'to = ["{name}@{COMPONENT}"]',
             "exec = [" + ", ".join(f'"{a}"' for a in argv) + "]", f'format = "{fmt}"']
    for key, value in extra.items():
        lines.append(f"{key} = {value}")
    return "\n".join(lines) + "\n"


ROUTES = "".join([
    route("echo", [str(HANDLERS / "echo.sh")]),
    route("jsonecho", [str(HANDLERS / "echo.py")], "json"),
    route("xmlecho", [str(HANDLERS / "echo_xml.py")], "xml"),
    route("commands", [str(HANDLERS / "commands.sh")]),
    route("dice", [str(HANDLERS / "dice.py")], "xml", kinds='["iq"]'),
    route("env", [SH, "-c", "env | sort"], env='{ GREETING = "hello" }'),
    route("exit77", [SH, "-c", "echo members only; exit 77"]),
    route("exit1", [SH, "-c", "exit 1"]),
    route("signal", [SH, "-c", "kill -9 $$"]),
    route("slow", [SH, "-c", "sleep 300.1"], timeout=1),  # a duration no other test uses (unit tests sleep 300)
    route("big", [SH, "-c", "yes | head -c 10000000"]),
    route("badjson", [SH, "-c", "printf '{\\\"body\\\": '"], "json"),
    route("notstanza", [SH, "-c", "echo '<html><body>hi</body></html>'"], "xml"),
    route("badutf8", [SH, "-c", "printf 'caf\\\\351'"]),
    route("grandchild", [SH, "-c", "echo reply; sleep 301 & exit 0"]),
    # setsid leaves the handler's group; its shell backgrounds a sleep (holding stdout) and exits: a double fork.
    route("escaped", [SH, "-c", "setsid sh -c 'sleep 303.7 &'; echo reply"], timeout=5),
    route("fork50", [SH, "-c", "for i in $(seq 50); do sleep 302 & done; sleep 302"], timeout=1),
    route("cat", ["/bin/cat"], concurrency=4, queue=2000),
    route("wide", [SH, "-c", "sleep 1; cat"], concurrency=4, queue=100),
    route("narrow", [SH, "-c", "sleep 1; cat"], concurrency=4, queue=10),
])


@pytest.fixture(scope="module")
def stanzad(prosody, tmp_path_factory):
    env = dict(os.environ, STANZAD_TEST_SECRET="must-not-leak")
    daemon = Stanzad(tmp_path_factory.mktemp("stanzad"), component_config(prosody.component_port, extra=ROUTES), env=env)
    daemon.start()
    daemon.wait_for_log("component connected")
    yield daemon
    daemon.stop()


def ask(client: Client, name: str, body: str, timeout: float = 15):
    """Sends a chat message to name@component and returns the next message from there."""
    jid = f"{name}@{COMPONENT}"
    client.loop.call_soon_threadsafe(lambda: client.xmpp.send_message(mto=jid, mbody=body, mtype="chat"))
    deadline = time.monotonic() + timeout
    while True:
        message = client.next_message(max(0.1, deadline - time.monotonic()))
        if message["from"].bare == jid:
            return message


def condition(stanza) -> tuple[str, str] | None:
    """(error type, defined condition) of an error stanza."""
    error = stanza.xml.find("{jabber:client}error")
    if error is None:
        return None
    for child in error:
        if child.tag.startswith("{" + STANZAS + "}") and not child.tag.endswith("}text"):
            return error.get("type"), child.tag.split("}")[1]
    return None


def error_text(stanza) -> str | None:
    node = stanza.xml.find(f"{{jabber:client}}error/{{{STANZAS}}}text")
    return None if node is None else node.text


def gone(pattern: str, timeout: float = 3.0) -> bool:
    """True once no live process matches: SIGKILL is sent before the reply, but dying takes a moment."""
    deadline = time.monotonic() + timeout
    while live_processes(pattern):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def live_processes(pattern: str) -> list[str]:
    """Command lines of live processes matching `pattern` (zombies have no command line)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if re.search(pattern, cmdline):
                found.append(cmdline)
    return found


# --- the three contracts -------------------------------------------------------------------------------


def test_text_echo(alice):
    reply = ask(alice, "echo", "hello & <world> 🎉")
    assert reply["type"] == "chat"
    assert reply["body"] == "hello & <world> 🎉"


def test_json_echo(alice):
    assert ask(alice, "jsonecho", "ping json")["body"] == "ping json"


def test_xml_echo(alice):
    assert ask(alice, "xmlecho", "ping <xml> & more")["body"] == "ping <xml> & more"


def test_commands_bot(alice):
    assert "commands:" in ask(alice, "commands", "help")["body"]
    assert ask(alice, "commands", "whoami")["body"] == f"you are alice@{DOMAIN}/test, talking to commands@{COMPONENT}"
    unknown = ask(alice, "commands", "rm -rf /")
    assert condition(unknown) == ("modify", "bad-request")
    assert error_text(unknown) == "unknown command: rm (try help)"


def test_xml_iq_in_a_custom_namespace(alice):
    result = alice.iq(f"<iq xmlns='jabber:client' type='get' to='dice@{COMPONENT}' id='d1'>"
                      "<roll xmlns='urn:example:dice' sides='20'/></iq>")
    assert result["type"] == "result"
    roll = result.xml.find("{urn:example:dice}roll")
    assert roll is not None and 1 <= int(roll.text) <= 20
    bad = alice.iq(f"<iq xmlns='jabber:client' type='get' to='dice@{COMPONENT}' id='d2'>"
                   "<roll xmlns='urn:example:dice' sides='lots'/></iq>")
    assert bad["type"] == "error" and condition(bad) == ("modify", "bad-request")


def test_handler_sees_exactly_the_spec_environment(alice):
    body = ask(alice, "env", "x")["body"]
    env = dict(line.split("=", 1) for line in body.splitlines())
    env.pop("PWD", None)  # set by the shell itself
    env.pop("SHLVL", None)
    env.pop("_", None)
    assert "STANZAD_TEST_SECRET" not in env
    assert env.pop("STANZA_ID")
    assert env == {
        "PATH": os.environ["PATH"], "LANG": "C.UTF-8", "GREETING": "hello", "STANZA_KIND": "message",
        "STANZA_TYPE": "chat", "STANZA_FROM": f"alice@{DOMAIN}/test", "STANZA_TO": f"env@{COMPONENT}",
        "STANZA_LANG": "en", "STANZAD_ROUTE": "env", "STANZAD_COMPONENT": COMPONENT,
    }


# --- torture ---------------------------------------------------------------------------------------------


def test_exit_77_is_forbidden_with_the_output_as_text(alice):
    reply = ask(alice, "exit77", "x")
    assert reply["type"] == "error"
    assert condition(reply) == ("auth", "forbidden")
    assert error_text(reply) == "members only"


def test_exit_1_is_internal_server_error(alice):
    assert condition(ask(alice, "exit1", "x")) == ("cancel", "internal-server-error")


def test_killed_by_a_signal_is_internal_server_error(alice, stanzad):
    assert condition(ask(alice, "signal", "x")) == ("cancel", "internal-server-error")
    stanzad.wait_for_log(r"route=signal .*signal=9|signal=9.*route=signal")


def test_timeout_is_remote_server_timeout(alice):
    started = time.monotonic()
    reply = ask(alice, "slow", "x")
    assert condition(reply) == ("wait", "remote-server-timeout")
    assert time.monotonic() - started < 10
    assert gone(r"^sleep 300\.1 ")


def test_ten_megabytes_of_output_is_internal_server_error(alice, stanzad):
    assert condition(ask(alice, "big", "x")) == ("cancel", "internal-server-error")
    stanzad.wait_for_log(r"handler output rejected.*max_output")


def test_invalid_json_is_internal_server_error_with_an_excerpt_in_the_log(alice, stanzad):
    assert condition(ask(alice, "badjson", "x")) == ("cancel", "internal-server-error")
    stanzad.wait_for_log(r'handler output rejected excerpt=.*body.* problem="handler output is not valid JSON')


def test_non_stanza_xml_is_internal_server_error(alice, stanzad):
    assert condition(ask(alice, "notstanza", "x")) == ("cancel", "internal-server-error")
    stanzad.wait_for_log(r"<html> is not a stanza")


def test_invalid_utf8_is_internal_server_error(alice, stanzad):
    assert condition(ask(alice, "badutf8", "x")) == ("cancel", "internal-server-error")
    stanzad.wait_for_log(r'handler output rejected excerpt=caf\\xe9 problem="handler output is not valid UTF-8"')


def test_grandchild_holding_stdout_neither_delays_the_reply_nor_survives(alice):
    started = time.monotonic()
    assert ask(alice, "grandchild", "x")["body"] == "reply"
    assert time.monotonic() - started < 5
    assert gone(r"^sleep 301 ")


def test_a_daemon_that_escaped_the_group_with_setsid_neither_delays_the_reply_nor_survives(alice):
    started = time.monotonic()
    assert ask(alice, "escaped", "x")["body"] == "reply"
    elapsed = time.monotonic() - started
    print(f"escaped daemon: reply after {elapsed * 1000:.0f} ms")
    assert elapsed < 5, "within the route's timeout"
    assert gone(r"^sleep 303\.7 ")


def test_fifty_sleepers_are_all_killed_at_the_timeout(alice):
    reply = ask(alice, "fork50", "x")
    assert condition(reply) == ("wait", "remote-server-timeout")
    assert gone(r"^sleep 302 ")


# --- overload --------------------------------------------------------------------------------------------


def burst(client: Client, name: str, count: int, timeout: float = 30) -> list:
    """Sends `count` messages at once to name@component; returns the `count` answers."""
    jid = f"{name}@{COMPONENT}"

    def send_all():
        for i in range(count):
            client.xmpp.send_message(mto=jid, mbody=f"m{i}", mtype="chat")

    client.loop.call_soon_threadsafe(send_all)
    answers = []
    deadline = time.monotonic() + timeout
    while len(answers) < count:
        message = client.next_message(max(0.1, deadline - time.monotonic()))
        if message["from"].bare == jid:
            answers.append(message)
    return answers


def test_fifty_at_once_with_room_in_the_queue_are_all_answered(alice):
    answers = burst(alice, "wide", 50)
    assert sorted(a["body"] for a in answers) == sorted(f"m{i}" for i in range(50))


def test_overflow_of_a_short_queue_gets_resource_constraint_and_nothing_else_is_lost(alice):
    answers = burst(alice, "narrow", 50)
    echoed = [a["body"] for a in answers if a["type"] != "error"]
    refused = [a for a in answers if a["type"] == "error"]
    assert len(echoed) == 14 and len(refused) == 36
    assert all(condition(a) == ("wait", "resource-constraint") for a in refused)
    assert len(set(echoed)) == 14


def process_state(pid: int) -> tuple[int, int, int]:
    """(open descriptors, RSS in KiB, zombie children) of a process."""
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    rss = int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text()).group(1))
    zombies = 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            if fields[0] == "Z" and int(fields[1]) == pid:
                zombies += 1
    return fds, rss, zombies


def test_ten_thousand_stanzas_no_zombie_no_leak(alice, stanzad):
    pid = stanzad.process.pid
    burst(alice, "cat", 1000, timeout=120)  # warm-up at the same burst size: pools, buffers, allocator arenas
    fds_before, rss_before, _ = process_state(pid)
    total = 0
    rounds = int(os.environ.get("STANZAD_SOAK_ROUNDS", "10"))  # more for a soak run; the acceptance is 10
    for _ in range(rounds):
        answers = burst(alice, "cat", 1000, timeout=120)
        assert all(a["type"] == "chat" for a in answers)
        total += len(answers)
        print("rss", process_state(pid)[1])
    assert total == rounds * 1000
    fds_after, rss_after, zombies = process_state(pid)
    print(f"fds {fds_before} -> {fds_after}, rss {rss_before} -> {rss_after} KiB, zombies {zombies}")
    assert zombies == 0
    assert abs(fds_after - fds_before) <= 5
    assert rss_after <= rss_before * 1.10


# --- stanzad try -----------------------------------------------------------------------------------------


def test_try_runs_a_route_without_a_server(tmp_path):
    config = tmp_path / "stanzad.toml"
    config.write_text(component_config(1, extra=route("echo", [str(HANDLERS / "echo.sh")])))
    result = subprocess.run([str(stanzad_binary()), "try", "--config", str(config), "--route", "echo", "--body", "hi"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(rf'<message from="echo@{COMPONENT}" to="user@example.org/try" id="[^"]+" type="chat">'
                        r"<body>hi</body></message>\n", result.stdout)
    assert "exit=0" in result.stderr and "duration_ms=" in result.stderr


def test_try_kills_a_daemon_that_escaped_the_group_with_setsid(tmp_path):
    config = tmp_path / "stanzad.toml"
    config.write_text(component_config(1, extra=route("escaped", [SH, "-c", "setsid sh -c 'sleep 304.7 &'; echo reply"])))
    started = time.monotonic()
    result = subprocess.run([str(stanzad_binary()), "try", "--config", str(config), "--route", "escaped", "--body", "x"],
                            capture_output=True, text=True, timeout=30)
    print(f"try with an escaped daemon: {(time.monotonic() - started) * 1000:.0f} ms")
    assert result.returncode == 0, result.stderr
    assert "<body>reply</body>" in result.stdout
    assert gone(r"^sleep 304\.7 ")


def test_try_reads_a_stanza_from_stdin_and_reports_failures(tmp_path):
    config = tmp_path / "stanzad.toml"
    config.write_text(component_config(1, extra=route("exit77", [SH, "-c", "echo no >&2; exit 77"])))
    stanza = f"<message to='exit77@{COMPONENT}' from='bob@example.org/x' id='t1' type='chat'><body>x</body></message>"
    result = subprocess.run([str(stanzad_binary()), "try", "--config", str(config), "--route", "exit77"],
                            input=stanza, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert 'type="error"' in result.stdout and "<forbidden " in result.stdout and 'id="t1"' in result.stdout
    assert "line=no" in result.stderr and "exit=77" in result.stderr


def test_try_with_an_unknown_route_names_the_routes(tmp_path):
    config = tmp_path / "stanzad.toml"
    config.write_text(component_config(1, extra=route("echo", [str(HANDLERS / "echo.sh")])))
    result = subprocess.run([str(stanzad_binary()), "try", "--config", str(config), "--route", "nope", "--body", "x"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 64
    assert 'no route named "nope"' in result.stderr and "routes: echo" in result.stderr
