"""Ad-hoc commands (SPEC §15, XEP-0050) through a real Prosody, with slixmpp's xep_0050 plugin as the client:
listing, a text command, the two-step json remind command, cancel, the `from` allowlist, and bad input (a
malformed form from the handler, an unknown action, stale session ids, 1001 concurrent sessions). Every
handler run goes through handlers/record_step.py, which records what the handler was given and answered."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from pathlib import Path

import pytest

from harness import COMPONENT, DOMAIN, REPO, Client, Stanzad, component_config, stanzad_binary

HANDLERS = Path(__file__).parent / "handlers"
RECORD = HANDLERS / "record_step.py"
NS = "http://jabber.org/protocol/commands"
BOT = f"bot@{COMPONENT}"


def command(node: str, argv: list[str], log: Path | None, **extra) -> str:
    if log is not None:
        argv = [str(RECORD), str(log)] + argv
    lines = ["[[command]]", f'node = "{node}"', "exec = [" + ", ".join(json.dumps(a) for a in argv) + "]"]
    for key, value in extra.items():
        lines.append(f"{key} = {value}" if isinstance(value, int) or value.startswith(("[", "{")) else f'{key} = "{value}"')
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def logs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("steps")


@pytest.fixture(scope="module")
def stanzad(prosody, logs, socket_path, tmp_path_factory):
    config = "".join([
        f'[rest]\nlisten = "unix:{socket_path}"\ncredentials = ["Bearer x"]\n\n[metrics]\npath = "/metrics"\n\n',
        command("hello", ["/bin/sh", "-c", 'echo "hello $STANZA_FROM, $(cat | wc -c) bytes on stdin"'], logs / "hello.jsonl",
                name="Say hello", **{"from": f'["alice@{DOMAIN}", "bob@{DOMAIN}"]'}),
        command("remind", [str(REPO / "handlers" / "remind.py")], logs / "remind.jsonl", name="Set a reminder", to=BOT,
                format="json", env=f'{{ REMIND_FILE = "{logs / "reminders.jsonl"}" }}'),
        command("admin", ["/bin/sh", "-c", "echo secret"], logs / "admin.jsonl", name="Admin", **{"from": f'["bob@{DOMAIN}"]'}),
        command("badform", ["/bin/sh", "-c", """echo '{"command": {"status": "executing", "form": {"fields": [{"var": "n", "value": 42}]}}}'"""],
                logs / "badform.jsonl", format="json"),
        command("short", [str(REPO / "handlers" / "remind.py")], None, format="json", session_timeout=1),
        "[[command]]\nnode = \"many\"\nworker = [\"" + str(HANDLERS / "command_worker.py") + "\"]\nformat = \"json\"\n"
        "workers = 2\nin_flight = 16\nconcurrency = 32\nqueue = 2000\nsession_timeout = 8\n",
    ])
    daemon = Stanzad(tmp_path_factory.mktemp("stanzad"), component_config(prosody.component_port, extra=config))
    daemon.start()
    daemon.wait_for_log("component connected")
    daemon.wait_for_log("worker started")
    daemon.wait_for_log("REST API listening")
    yield daemon
    daemon.stop()


def with_commands(client: Client) -> Client:
    def register():
        if "xep_0050" not in client.xmpp.plugin:
            client.xmpp.register_plugin("xep_0004")
            client.xmpp.register_plugin("xep_0050")

    client.loop.call_soon_threadsafe(register)
    client.run(asyncio.sleep(0))
    return client


@pytest.fixture(scope="module")
def alice_cmd(alice) -> Client:
    return with_commands(alice)


@pytest.fixture(scope="module")
def bob(prosody, stanzad):
    client = with_commands(Client(f"bob@{DOMAIN}/test", "pw", prosody.c2s_port))
    yield client
    client.close()


def run_command(client: Client, jid: str, node: str, action: str = "execute", sessionid: str | None = None,
                payload=None, timeout: float = 20):
    """Sends one command step with the plugin's send_command; returns the result iq or the error iq."""
    from slixmpp.exceptions import IqError

    async def go():
        try:
            return await client.xmpp["xep_0050"].send_command(jid, node, action=action, sessionid=sessionid,
                                                              payload=payload, timeout=timeout)
        except IqError as error:
            return error.iq

    return client.run(go(), timeout + 5)


def command_sessions(socket_path) -> dict[str, float]:
    """stanzad_command_sessions by command, from GET /metrics on the FastCGI socket."""
    import fcgi_client

    status, _, body = asyncio.run(fcgi_client.call(str(socket_path), "GET", "/metrics"))
    assert status == 200
    return {m.group(1): float(m.group(2)) for m in re.finditer(r'^stanzad_command_sessions\{command="([^"]+)"\} (\S+)$', body.decode(), re.M)}


def steps(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def notes(iq) -> list[tuple[str, str]]:
    return list(iq["command"]["notes"])


def error_of(iq) -> tuple[str, str, str, list[str]]:
    """type, condition, text and the XEP-0050 specific conditions of an error iq."""
    error = iq.xml.find("{jabber:client}error")
    specific = [child.tag.split("}")[1] for child in error if child.tag.startswith("{" + NS + "}")]
    return iq["error"]["type"], iq["error"]["condition"], iq["error"]["text"], specific


# ---------------------------------------------------------------------------------------------------------
# Listing


def test_the_commands_are_listed_for_the_requester_and_disco_describes_them(alice_cmd, bob):
    async def items(client, jid):
        return await client.xmpp["xep_0050"].get_commands(jid)

    listed = alice_cmd.run(items(alice_cmd, COMPONENT))
    assert {(item[0], item[1], item[2]) for item in listed["disco_items"]["items"]} == {
        (COMPONENT, "hello", "Say hello"), (COMPONENT, "badform", "badform"), (COMPONENT, "short", "short"),
        (COMPONENT, "many", "many"),
    }  # no "admin": alice is not in its `from`
    assert "admin" in [item[1] for item in bob.run(items(bob, COMPONENT))["disco_items"]["items"]]
    at_bot = alice_cmd.run(items(alice_cmd, BOT))
    assert {(item[0], item[1], item[2]) for item in at_bot["disco_items"]["items"]} == {(BOT, "remind", "Set a reminder")}

    async def info(jid, node=None):
        return await alice_cmd.xmpp["xep_0030"].get_info(jid=jid, node=node)

    assert NS in alice_cmd.run(info(COMPONENT))["disco_info"]["features"]
    assert NS in alice_cmd.run(info(BOT))["disco_info"]["features"]
    node = alice_cmd.run(info(BOT, "remind"))["disco_info"]
    assert ("automation", "command-node", None, "Set a reminder") in node["identities"]
    assert NS in node["features"] and "jabber:x:data" in node["features"]


# ---------------------------------------------------------------------------------------------------------
# Running


def test_a_text_command_runs_with_empty_stdin_and_its_output_is_the_note(alice_cmd, logs):
    result = run_command(alice_cmd, COMPONENT, "hello")
    assert result["type"] == "result"
    assert result["command"]["status"] == "completed"
    [step] = steps(logs / "hello.jsonl")
    assert step["stdin"] == "" and step["exit"] == 0
    assert step["stdout"] == f"hello alice@{DOMAIN}/test, 0 bytes on stdin\n"
    assert notes(result) == [("info", step["stdout"].rstrip("\n"))]


def test_the_two_step_remind_command_runs_to_completion(alice_cmd, logs):
    log = logs / "remind.jsonl"
    before = len(steps(log))
    first = run_command(alice_cmd, BOT, "remind")
    assert first["command"]["status"] == "executing"
    sessionid = first["command"]["sessionid"]
    assert sessionid and first["command"]["node"] == "remind"
    assert first["command"]["actions"] == {"complete"}
    form = first["command"]["form"]
    assert form["title"] == "Set a reminder"
    assert [(f["var"], f["type"], f["required"]) for f in form.get_fields().values()] == [
        ("what", "text-single", True), ("when", "text-single", True)]
    step1 = steps(log)[before]
    given = json.loads(step1["stdin"])
    assert given["kind"] == "iq" and given["type"] == "set" and given["from"] == f"alice@{DOMAIN}/test"
    assert given["command"] == {"node": "remind", "action": "execute", "sessionid": sessionid}
    assert "session" not in given
    answered = json.loads(step1["stdout"])
    assert answered["session"] == {"step": "ask"} and answered["command"]["status"] == "executing"

    # The client fills the form it was given and submits it (slixmpp strips the field types from a submit form).
    form["type"] = "submit"
    form.set_values({"what": "buy milk", "when": "in 10 minutes"})
    second = run_command(alice_cmd, BOT, "remind", action="complete", sessionid=sessionid, payload=form)
    assert second["command"]["status"] == "completed"
    assert second["command"]["sessionid"] == sessionid
    assert notes(second) == [("info", "OK, I will remind you in 10 minutes: buy milk")]
    step2 = steps(log)[before + 1]
    given = json.loads(step2["stdin"])
    # The data is typed by the form of the previous step: strings, not mod_rest's arrays for untyped fields.
    assert given["command"] == {"node": "remind", "action": "complete", "sessionid": sessionid,
                                "data": {"what": "buy milk", "when": "in 10 minutes"}}
    assert given["session"] == {"step": "ask"}
    assert json.loads(step2["stdout"])["command"]["note"]["text"] == "OK, I will remind you in 10 minutes: buy milk"
    assert steps(logs / "reminders.jsonl")[-1] == {"for": f"alice@{DOMAIN}/test", "what": "buy milk", "when": "in 10 minutes"}
    # The session is gone: continuing it is refused.
    again = run_command(alice_cmd, BOT, "remind", action="complete", sessionid=sessionid)
    assert error_of(again)[1:2] == ("bad-request",) and error_of(again)[3] == ["bad-sessionid"]


def test_a_command_canceled_in_the_middle_is_answered_by_stanzad(alice_cmd, stanzad, logs):
    log = logs / "remind.jsonl"
    first = run_command(alice_cmd, BOT, "remind")
    sessionid = first["command"]["sessionid"]
    ran = len(steps(log))
    canceled = run_command(alice_cmd, BOT, "remind", action="cancel", sessionid=sessionid)
    assert canceled["type"] == "result"
    assert canceled["command"]["status"] == "canceled"
    assert canceled["command"]["sessionid"] == sessionid
    stanzad.wait_for_log(rf"stanza handled .*command_status=canceled.*session={sessionid}")
    assert len(steps(log)) == ran  # the handler did not run for cancel
    after = run_command(alice_cmd, BOT, "remind", action="next", sessionid=sessionid)
    assert error_of(after)[3] == ["bad-sessionid"]


def test_a_requester_outside_from_is_forbidden_and_the_handler_never_runs(alice_cmd, bob, logs):
    refused = run_command(alice_cmd, COMPONENT, "admin")
    assert refused["type"] == "error"
    assert error_of(refused)[:3] == ("auth", "forbidden", 'you may not run the command "admin"')
    assert steps(logs / "admin.jsonl") == []
    allowed = run_command(bob, COMPONENT, "admin")
    assert notes(allowed) == [("info", "secret")]
    assert len(steps(logs / "admin.jsonl")) == 1


def test_a_command_nobody_offers_is_item_not_found(alice_cmd):
    missing = run_command(alice_cmd, BOT, "hello")  # offered at the domain, not at bot@
    assert error_of(missing)[:2] == ("cancel", "item-not-found")


# ---------------------------------------------------------------------------------------------------------
# Bad input


def test_a_malformed_form_from_the_handler_is_an_error_note_and_no_session(alice_cmd, logs):
    result = run_command(alice_cmd, COMPONENT, "badform")
    assert result["type"] == "result"
    assert result["command"]["status"] == "completed"
    [step] = steps(logs / "badform.jsonl")
    assert json.loads(step["stdout"])["command"]["form"]["fields"][0]["value"] == 42
    assert notes(result) == [("error", "the command's handler gave an invalid answer: the command's form is malformed: "
                                       "fields[0].value must be a string or an array of strings, not a number")]


def test_an_unknown_action_is_a_malformed_action_error(alice_cmd):
    reply = alice_cmd.iq(f"<iq type='set' to='{BOT}' id='act1'><command xmlns='{NS}' node='remind' action='jump'/></iq>")
    assert error_of(reply) == ("modify", "bad-request",
                               'unknown action "jump" (XEP-0050 knows execute, next, prev, complete and cancel)', ["malformed-action"])
    first = run_command(alice_cmd, BOT, "remind")
    offered_not = run_command(alice_cmd, BOT, "remind", action="prev", sessionid=first["command"]["sessionid"])
    assert error_of(offered_not) == ("modify", "bad-request", 'action "prev" is not offered at this step (offered: execute, complete, cancel)',
                                     ["bad-action"])
    run_command(alice_cmd, BOT, "remind", action="cancel", sessionid=first["command"]["sessionid"])


def test_stale_and_unknown_session_ids_are_bad_sessionid(alice_cmd, stanzad):
    unknown = run_command(alice_cmd, BOT, "remind", action="next", sessionid="no-such-session")
    assert error_of(unknown) == ("modify", "bad-request",
                                 'no open command session "no-such-session" for you here (it completed, was canceled or expired)',
                                 ["bad-sessionid"])
    first = run_command(alice_cmd, COMPONENT, "short")
    sessionid = first["command"]["sessionid"]
    stanzad.wait_for_log(r"command sessions expired .*command:short", timeout=10)  # session_timeout = 1
    stale = run_command(alice_cmd, COMPONENT, "short", action="complete", sessionid=sessionid)
    assert error_of(stale)[1] == "bad-request" and error_of(stale)[3] == ["bad-sessionid"]


def test_1001_concurrent_sessions_hit_the_limit_and_all_expire(alice_cmd, stanzad, socket_path):
    from slixmpp.exceptions import IqError

    async def start_all():
        async def one():
            try:
                return await alice_cmd.xmpp["xep_0050"].send_command(COMPONENT, "many", timeout=60)
            except IqError as error:
                return error.iq

        return await asyncio.gather(*(one() for _ in range(1001)))

    expired_before = len([line for line in stanzad.log().splitlines() if re.search(r"command sessions expired .*open=0\b", line)])
    replies = alice_cmd.run(start_all(), 90)
    executing = [r for r in replies if r["type"] == "result" and r["command"]["status"] == "executing"]
    refused = [r for r in replies if r["type"] == "error"]
    assert len(executing) == 1000
    assert len({r["command"]["sessionid"] for r in executing}) == 1000
    assert [error_of(r)[:3] for r in refused] == [(
        "wait", "resource-constraint",
        'the command "many" has 1000 sessions open, the most it allows; finish or cancel one, or try again later')]
    stanzad.wait_for_log(r"command session limit reached")
    assert command_sessions(socket_path)["command:many"] == 1000
    # session_timeout = 8 (far more than the 1001 starts take, even on a loaded machine, so that the first
    # sessions are still open when the last one is refused): every session expires and the count goes back to 0.
    stanzad.wait_for_log(r"command sessions expired .*open=0\b", count=expired_before + 1, timeout=30)
    assert command_sessions(socket_path) == {"command:hello": 0, "command:bot@bot.example.test/remind": 0, "command:admin": 0,
                                             "command:badform": 0, "command:short": 0, "command:many": 0}
    # Room again.
    assert run_command(alice_cmd, COMPONENT, "many")["command"]["status"] == "executing"


# ---------------------------------------------------------------------------------------------------------
# check and try (no server)

MINIMAL = f'[component]\njid = "{COMPONENT}"\nserver = "127.0.0.1:5347"\nsecret = "x"\n\n'


def stanzad_cli(args: list[str], config: Path, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([str(stanzad_binary())] + args + ["--config", str(config)], input=stdin, capture_output=True,
                          text=True, timeout=30)


def test_check_reports_command_mistakes_with_file_line(tmp_path):
    config = tmp_path / "stanzad.toml"
    config.write_text(MINIMAL + '[[command]]\nnode = "a"\nworker = ["/bin/cat"]\n\n[[command]]\nnode = "b"\nexec = ["/bin/true"]\nformat = "xml"\n')
    result = stanzad_cli(["check"], config)
    assert result.returncode == 78
    assert result.stderr.splitlines() == [
        f'{config}:8: a worker command speaks JSON lines: set format = "json"',
        f'{config}:13: unknown command format "xml" (use text or json; a command has no xml contract)',
    ]
    config.write_text(MINIMAL + '[[command]]\nnode = "a"\nexec = ["handlers/missing.sh"]\n')
    result = stanzad_cli(["check"], config)
    assert result.returncode == 78
    assert f'{config}:6: command "a": handler {tmp_path}/handlers/missing.sh does not exist' in result.stderr
    config.write_text(MINIMAL + f'[[command]]\nnode = "remind"\nexec = ["{REPO}/handlers/remind.py"]\nformat = "json"\n')
    result = stanzad_cli(["check"], config)
    assert result.returncode == 0, result.stderr
    assert f'command remind ("remind") at {COMPONENT} → exec {REPO}/handlers/remind.py, format json, from anyone' in result.stdout


def test_try_runs_one_step_of_a_command_from_stdin(tmp_path):
    config = tmp_path / "stanzad.toml"
    config.write_text(MINIMAL + f'[[command]]\nnode = "remind"\nexec = ["{REPO}/handlers/remind.py"]\nformat = "json"\n')
    first = stanzad_cli(["try", "--command", "remind"], config)
    assert first.returncode == 0, first.stderr
    assert re.search(r'<command xmlns="http://jabber.org/protocol/commands" node="remind" sessionid="[^"]+" status="executing">', first.stdout)
    assert "<field var=\"what\" type=\"text-single\" label=\"What\"><required/>" in first.stdout
    assert 'command status executing; session: {"step":"ask"}' in first.stderr
    wrong = stanzad_cli(["try", "--command", "remind", "--session", '{"step": "ask"}', "--action", "complete"], config,
                        '{"what": "tea", "when": "soon"}')
    assert "status=\"executing\"" in wrong.stdout
    assert "<note type=\"error\">I cannot read the time 'soon': use HH:MM or \"in 10 minutes\".</note>" in wrong.stdout
    done = stanzad_cli(["try", "--command", "remind", "--session", '{"step": "ask"}', "--action", "complete"], config,
                       '{"what": "tea", "when": "16:30"}')
    assert 'status="completed"><note type="info">OK, I will remind you 16:30: tea</note></command>' in done.stdout
    assert "command status completed" in done.stderr
