"""The component link and the built-in responders against a real Prosody, with slixmpp as the user."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from datetime import datetime, timezone

import pytest

from harness import COMPONENT, DOMAIN, Client, Prosody, Stanzad, component_config, stanzad_binary

STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"


@pytest.fixture
def stanzad(prosody, tmp_path):
    daemon = Stanzad(tmp_path, component_config(prosody.component_port, extra='[disco]\nname = "Test Bot"\n'
                                                '[[route]]\nname = "echo"\nto = ["echo@bot.example.test"]\nexec = ["/bin/cat"]\n'))
    daemon.start()
    daemon.wait_for_log("component connected")
    yield daemon
    daemon.stop()


@pytest.fixture
def alice(prosody):
    client = Client(f"alice@{DOMAIN}/test", "pw", prosody.c2s_port)
    yield client
    client.close()


def error_condition(iq) -> str | None:
    error = iq.xml.find("{jabber:client}error")
    if error is None:
        return None
    for child in error:
        if child.tag.startswith("{" + STANZAS + "}") and not child.tag.endswith("}text"):
            return child.tag.split("}")[1]
    return None


def test_builtin_responders_answer_through_prosody(stanzad, alice):
    ping = alice.iq(f"<iq xmlns='jabber:client' type='get' to='{COMPONENT}' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>")
    assert ping["type"] == "result"

    info = alice.run(lambda: alice.xmpp["xep_0030"].get_info(jid=COMPONENT, timeout=10))
    identities = info["disco_info"]["identities"]
    assert ("component", "generic", None, "Test Bot") in identities
    features = info["disco_info"]["features"]
    for feature in ("http://jabber.org/protocol/disco#info", "http://jabber.org/protocol/disco#items",
                    "urn:xmpp:ping", "jabber:iq:version", "urn:xmpp:time"):
        assert feature in features

    bot = alice.run(lambda: alice.xmpp["xep_0030"].get_info(jid=f"echo@{COMPONENT}", timeout=10))
    assert ("client", "bot", None, "Test Bot") in bot["disco_info"]["identities"]

    items = alice.run(lambda: alice.xmpp["xep_0030"].get_items(jid=COMPONENT, timeout=10))
    assert [item[0] for item in items["disco_items"]["items"]] == [f"echo@{COMPONENT}"]

    version = alice.run(lambda: alice.xmpp["xep_0092"].get_version(COMPONENT, timeout=10))
    assert version["software_version"]["name"] == "stanzad"
    assert re.fullmatch(r"\d+\.\d+\.\d+", version["software_version"]["version"])

    before = datetime.now(timezone.utc).replace(microsecond=0)
    entity_time = alice.run(lambda: alice.xmpp["xep_0202"].get_entity_time(COMPONENT, timeout=10))
    # Read the text: slixmpp 1.8's getter appends a second "Z" to XEP-0082 values and fails to parse them.
    utc_text = entity_time["entity_time"].xml.find("{urn:xmpp:time}utc").text
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", utc_text), utc_text
    utc = datetime.fromisoformat(utc_text.replace("Z", "+00:00"))
    assert entity_time["entity_time"].xml.find("{urn:xmpp:time}tzo").text == "+00:00"
    assert abs((utc - before).total_seconds()) < 5

    # One log line per handled stanza, with the fields SPEC §13 names.
    line = stanzad.wait_for_log(r"stanza handled .*stanza\.id=p1")[0]
    for field in ("route=", "kind=iq", "type=get", "from=alice@example.test/test", "outcome=reply", "duration_ms="):
        assert field in line


def test_unknown_iq_gets_service_unavailable(stanzad, alice):
    reply = alice.iq(f"<iq xmlns='jabber:client' type='get' to='{COMPONENT}' id='u1'><query xmlns='urn:example:unknown'/></iq>")
    assert reply["type"] == "error"
    assert error_condition(reply) == "service-unavailable"
    assert reply.xml.find("{jabber:client}error").get("type") == "cancel"


def test_presence_subscription_is_accepted(stanzad, alice):
    alice.presences.clear()
    alice.send_raw(f"<presence to='echo@{COMPONENT}' type='subscribe' id='s1'/>")
    deadline = time.monotonic() + 10
    seen = []
    while time.monotonic() < deadline:
        seen = [(str(p["from"]), p["type"]) for p in list(alice.presences) if str(p["from"]).startswith(f"echo@{COMPONENT}")]
        if ("echo@" + COMPONENT, "subscribed") in seen and ("echo@" + COMPONENT, "available") in seen:
            break
        time.sleep(0.05)
    assert (f"echo@{COMPONENT}", "subscribed") in seen
    assert (f"echo@{COMPONENT}", "available") in seen
    assert seen.index((f"echo@{COMPONENT}", "subscribed")) < seen.index((f"echo@{COMPONENT}", "available"))


def test_unhandled_chat_gets_service_unavailable(prosody, tmp_path, alice):
    daemon = Stanzad(tmp_path, component_config(prosody.component_port)).start()
    try:
        daemon.wait_for_log("component connected")
        alice.send_raw(f"<message to='nobody@{COMPONENT}' type='chat' id='c1'><body>hello</body></message>")
        reply = alice.next_message()
        assert reply["type"] == "error"
        assert reply["id"] == "c1"
        assert error_condition(reply) == "service-unavailable"
    finally:
        daemon.stop()


def test_an_idle_link_pings_the_server_and_stays_up_on_its_replies(prosody, tmp_path):
    # SPEC §11: a ping after ping_interval of read silence; Prosody's reply keeps the link up past ping_timeout.
    daemon = Stanzad(tmp_path, component_config(prosody.component_port, ping_interval=1, ping_timeout=1))
    daemon.start()
    try:
        daemon.wait_for_log("component connected")
        daemon.wait_for_log("link idle, pinging the server", count=3, timeout=10)
        log = daemon.log()
        assert "no reply to ping" not in log
        assert log.count("component connected") == 1
    finally:
        daemon.stop()


def test_reconnects_after_prosody_restart(tmp_path):
    server = Prosody(tmp_path / "prosody")
    server.workdir.mkdir()
    server.start()
    daemon = Stanzad(tmp_path, component_config(server.component_port, reconnect_max=3))
    daemon.start()
    try:
        daemon.wait_for_log("component connected")
        server.stop()
        daemon.wait_for_log("component link down")
        restarted = time.monotonic()
        server.start()
        daemon.wait_for_log("component connected", count=2, timeout=15)
        reconnect = time.monotonic() - restarted
        assert reconnect <= 3 + 1.5, f"reconnected after {reconnect:.1f} s, reconnect_max is 3 s"
        client = Client(f"alice@{DOMAIN}/r", "pw", server.c2s_port)
        try:
            ping = client.iq(f"<iq xmlns='jabber:client' type='get' to='{COMPONENT}' id='after'><ping xmlns='urn:xmpp:ping'/></iq>")
            assert ping["type"] == "result"
        finally:
            client.close()
    finally:
        daemon.stop()
        server.stop()


def log_time(line: str) -> float:
    """The wall-clock time of a stanzad text log line (it starts with an ISO 8601 UTC timestamp)."""
    return datetime.fromisoformat(line.split(" ")[0].replace("Z", "+00:00")).timestamp()


def test_after_a_minute_long_outage_the_link_is_back_within_3_s_of_prosody_listening(tmp_path):
    server = Prosody(tmp_path / "prosody")
    server.workdir.mkdir()
    server.start()
    daemon = Stanzad(tmp_path, component_config(server.component_port, reconnect_max=60))
    daemon.start()
    try:
        daemon.wait_for_log("component connected")
        server.stop()
        down = daemon.wait_for_log("component link down")[0]
        time.sleep(60)  # the outage itself: Prosody stays stopped for a minute
        listening = server.start_timed()
        connected = daemon.wait_for_log("component connected", count=2, timeout=30)[1]
        delay = log_time(connected) - listening
        # Attempts while Prosody was down: the first failure logs "link down", repeats log "attempt failed".
        failures = [line for line in daemon.lines
                    if re.search(r"component link (down|attempt failed)", line) and log_time(line) < listening]
        outage = listening - log_time(down)
        rate = len(failures) / outage
        print(f"outage {outage:.1f} s, {len(failures)} attempts ({rate:.2f}/s), connected {delay:.2f} s after Prosody listened")
        assert delay <= 3.0, f"connected {delay:.2f} s after Prosody was listening"
        assert rate <= 1.2, f"{len(failures)} attempts in {outage:.1f} s"
    finally:
        daemon.stop()
        server.stop()


def test_wrong_secret_logs_one_clear_error_and_backs_off(prosody, tmp_path):
    daemon = Stanzad(tmp_path, component_config(prosody.component_port, secret="wrong", reconnect_max=4))
    daemon.start()
    try:
        # Attempts at about 1, 2, 4, 4 s apart (±20% jitter): five attempts take well over 5 s.
        attempts = daemon.wait_for_log(r"component link (refused|attempt failed|refused again)", count=5, timeout=30)
        times = [datetime.fromisoformat(line.split(" ")[0].replace("Z", "+00:00")) for line in attempts]
        gaps = [(b - a).total_seconds() for a, b in zip(times, times[1:])]
        assert gaps[0] >= 0.75, gaps
        assert gaps[1] >= 1.5, gaps
        assert gaps[2] >= 3.0, gaps
        assert all(gap <= 4 * 1.25 for gap in gaps), gaps
        errors = [line for line in daemon.lines if " ERROR " in line]
        assert len(errors) == 1, errors
        assert "not-authorized" in errors[0]
        assert "secret" in errors[0] and "component_secret" in errors[0]
    finally:
        daemon.stop()


def test_sigterm_closes_the_stream_and_exits_zero_quickly(prosody, tmp_path):
    daemon = Stanzad(tmp_path, component_config(prosody.component_port))
    daemon.start()
    daemon.wait_for_log("component connected")
    closes_before = prosody.log_text().count("Received </stream:stream>")
    started = time.monotonic()
    daemon.signal(signal.SIGTERM)
    status = daemon.wait(timeout=5)
    elapsed = time.monotonic() - started
    assert status == 0
    assert elapsed < 2.0, f"exited after {elapsed:.2f} s"
    assert "component stream closed for shutdown" in daemon.log()
    # Prosody read our </stream:stream>: a clean close, not a dropped connection.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and prosody.log_text().count("Received </stream:stream>") == closes_before:
        time.sleep(0.05)
    assert prosody.log_text().count("Received </stream:stream>") == closes_before + 1


def test_check_reports_unknown_key_and_wrong_type_with_file_line(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text('[component]\njid = "bot.example.test"\nserver = "127.0.0.1:5347"\nsecret = "x"\nping_interval = "60"\nreconect_max = 5\n')
    result = subprocess.run([str(stanzad_binary()), "check", "--config", str(config)], capture_output=True, text=True)
    assert result.returncode == 78
    assert f"{config}:5: ping_interval must be an integer, not a string" in result.stderr
    assert f"{config}:6: unknown key \"reconect_max\" in [component] (did you mean reconnect_max?)" in result.stderr


def test_check_prints_route_table_for_a_good_config(tmp_path):
    config = tmp_path / "good.toml"
    config.write_text('[component]\njid = "bot.example.test"\nserver = "127.0.0.1:5347"\nsecret = "x"\n'
                      '[[route]]\nname = "echo"\nexec = ["/bin/cat"]\n')
    result = subprocess.run([str(stanzad_binary()), "check", "--config", str(config)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "echo" in result.stdout and "exec /bin/cat" in result.stdout


def test_check_reports_a_handler_that_is_not_executable(tmp_path):
    handler = tmp_path / "handler.sh"
    handler.write_text("#!/bin/sh\necho hi\n")
    config = tmp_path / "c.toml"
    config.write_text('[component]\njid = "bot.example.test"\nserver = "127.0.0.1:5347"\nsecret = "x"\n'
                      '[[route]]\nname = "h"\nexec = ["./handler.sh"]\n')
    result = subprocess.run([str(stanzad_binary()), "check", "--config", str(config)], capture_output=True, text=True)
    assert result.returncode == 78
    assert f"{config}:5: route \"h\": handler {handler} is not executable (chmod +x {handler})" in result.stderr


def test_sigterm_lets_a_running_handler_finish_and_its_reply_go_out(prosody, tmp_path, alice):
    # SPEC §11: running handlers get up to 10 s; the drain ends when the last one finishes, not at the limit.
    extra = f'[[route]]\nname = "slow"\nto = ["slow@{COMPONENT}"]\nexec = ["/bin/sh", "-c", "echo started >&2; sleep 1; echo done"]\n'
    daemon = Stanzad(tmp_path, component_config(prosody.component_port, extra=extra))
    daemon.start()
    try:
        daemon.wait_for_log("component connected")
        alice.loop.call_soon_threadsafe(lambda: alice.xmpp.send_message(mto=f"slow@{COMPONENT}", mbody="x", mtype="chat"))
        daemon.wait_for_log(r"handler stderr line=started.*route=slow")
        started = time.monotonic()
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(timeout=10) == 0
        elapsed = time.monotonic() - started
        assert "waiting for running handlers" in daemon.log()
        assert "handlers still running at shutdown" not in daemon.log()
        assert elapsed < 5, f"exited after {elapsed:.2f} s: the drain waited for its limit"
        assert alice.next_message(10)["body"] == "done"
    finally:
        daemon.stop()
