"""stanzad's component link against a real ejabberd 23.01 (ejabberd.py), with slixmpp as the user.

Run: cd tests/integration && STANZAD_BIN=../../.build/debug/stanzad /usr/bin/python3 -m pytest -q \
        -p no:cacheprovider test_ejabberd_link.py
"""

from __future__ import annotations

import os
import re
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ejabberd import Ejabberd  # noqa: E402
from harness import COMPONENT, DOMAIN, SECRET, Client, Stanzad, component_config  # noqa: E402

STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
EXTRA = '[disco]\nname = "Test Bot"\n'


@pytest.fixture(scope="module")
def ejabberd(tmp_path_factory):
    # debug: ejabberd then logs every stanza it sends and receives on the component stream.
    server = Ejabberd(str(tmp_path_factory.mktemp("ejabberd")), domain=DOMAIN, component=COMPONENT,
                      secret=SECRET, users={"alice": "pw"}, loglevel="debug")
    server.start()
    yield server
    server.stop()


def start_stanzad(ejabberd, tmp_path, **component) -> Stanzad:
    component.setdefault("extra", EXTRA)
    return Stanzad(tmp_path, component_config(ejabberd.component_port, **component)).start()


@pytest.fixture
def stanzad(ejabberd, tmp_path):
    since = ejabberd.log_offset()
    daemon = start_stanzad(ejabberd, tmp_path)
    try:
        daemon.wait_for_log("component connected")
        # The route exists on ejabberd's side before any client addresses the component.
        ejabberd.wait_for_log(rf"Accepted external component handshake authentication for {re.escape(COMPONENT)}",
                              since=since)
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture
def alice(ejabberd):
    client = Client(f"alice@{DOMAIN}/test", "pw", ejabberd.c2s_port)
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


def test_handshake_completes_against_ejabberd(ejabberd, tmp_path):
    since = ejabberd.log_offset()
    daemon = start_stanzad(ejabberd, tmp_path)
    try:
        line = daemon.wait_for_log("component connected")[0]
        assert f"server=127.0.0.1:{ejabberd.component_port}" in line, line
        stream_id = re.search(r"stream\.id=(\S+)", line).group(1)
        # ejabberd accepted our <handshake> digest for this component...
        ejabberd.wait_for_log(rf"Accepted external component handshake authentication for {re.escape(COMPONENT)}",
                              since=since)
        # ...on the stream whose id stanzad hashed (ejabberd's stream header carries it).
        header = ejabberd.wait_for_log(r"Send XML on stream = <<\"<\?xml version='1\.0'\?><stream:stream "
                                       rf"id='{re.escape(stream_id)}'", since=since)[0]
        assert "jabber:component:accept" in header and f"from='{COMPONENT}'" in header, header
        assert " ERROR " not in daemon.log()
    finally:
        daemon.stop()
    assert "component stream closed for shutdown" in daemon.log()


def test_ping_disco_and_version_are_answered_through_ejabberd(stanzad, alice):
    rtt = alice.run(lambda: alice.xmpp["xep_0199"].ping(COMPONENT, timeout=10))
    assert isinstance(rtt, float) and rtt >= 0

    ping = alice.iq(f"<iq xmlns='jabber:client' type='get' to='{COMPONENT}' id='ejp1'><ping xmlns='urn:xmpp:ping'/></iq>")
    assert ping["type"] == "result"
    assert str(ping["from"]) == COMPONENT

    info = alice.run(lambda: alice.xmpp["xep_0030"].get_info(jid=COMPONENT, timeout=10))
    assert str(info["from"]) == COMPONENT
    assert ("component", "generic", None, "Test Bot") in info["disco_info"]["identities"]
    features = info["disco_info"]["features"]
    for feature in ("http://jabber.org/protocol/disco#info", "http://jabber.org/protocol/disco#items",
                    "urn:xmpp:ping", "jabber:iq:version", "urn:xmpp:time"):
        assert feature in features

    version = alice.run(lambda: alice.xmpp["xep_0092"].get_version(COMPONENT, timeout=10))
    assert version["software_version"]["name"] == "stanzad"
    assert re.fullmatch(r"\d+\.\d+\.\d+", version["software_version"]["version"])

    # stanzad answered them itself (not ejabberd on the component's behalf).
    line = stanzad.wait_for_log(r"stanza handled .*stanza\.id=ejp1")[0]
    for field in ("route=(built-in)", "kind=iq", "type=get", f"from=alice@{DOMAIN}/test", "outcome=reply"):
        assert field in line, line


@pytest.mark.parametrize("kind", ["get", "set"])
def test_unknown_iq_gets_service_unavailable(stanzad, alice, kind):
    reply = alice.iq(f"<iq xmlns='jabber:client' type='{kind}' to='{COMPONENT}' id='eju-{kind}'>"
                     "<query xmlns='urn:example:unknown'/></iq>")
    assert reply["type"] == "error"
    assert str(reply["from"]) == COMPONENT
    assert error_condition(reply) == "service-unavailable"
    assert reply.xml.find("{jabber:client}error").get("type") == "cancel"
    line = stanzad.wait_for_log(rf"stanza handled .*stanza\.id=eju-{kind}\b")[0]
    assert "service-unavailable" in line, line


def test_stanzad_pings_ejabberd_and_gets_pongs(ejabberd, tmp_path):
    since = ejabberd.log_offset()
    daemon = start_stanzad(ejabberd, tmp_path, ping_interval=1, ping_timeout=2)
    try:
        daemon.wait_for_log("component connected")
        # A ping goes out after 1 s of read silence, and the next one only once the previous one was
        # answered: without a pong stanzad would log "no reply to ping, reconnecting" after 2 s instead.
        pings = daemon.wait_for_log(rf"link idle, pinging the server .*to={re.escape(DOMAIN)}\b", count=3, timeout=15)
        assert len(pings) >= 3
        # ejabberd's side: the server domain answered each of those pings to the component.
        pongs = ejabberd.wait_for_log(
            rf"Send XML on stream = <<\"<iq to='{re.escape(COMPONENT)}' from='{re.escape(DOMAIN)}' "
            r"type='result' id='stanzad-ping-\d+'/>", count=3, since=since)
        assert len({re.search(r"id='(stanzad-ping-\d+)'", p).group(1) for p in pongs}) >= 3, pongs
        log = daemon.log()
        assert "no reply to ping" not in log, log
        assert "component link down" not in log, log
        assert len(re.findall(r"component connected", log)) == 1, log
    finally:
        daemon.stop()


def test_wrong_secret_gives_a_clear_not_authorized_error(ejabberd, tmp_path):
    since = ejabberd.log_offset()
    wrong = "wr0ng-s3cret-7f3a"
    daemon = start_stanzad(ejabberd, tmp_path, secret=wrong, reconnect_max=2)
    try:
        error = daemon.wait_for_log(r" ERROR component link refused by the server \(configuration error\)")[0]
        assert "not-authorized" in error, error
        assert "listener's password (ejabberd)" in error, error
        ejabberd.wait_for_log(rf"Failed external component handshake authentication for {re.escape(COMPONENT)}"
                              r" from 127\.0\.0\.1: not authorized", since=since)
        # It keeps retrying (SPEC §11), quietly: the error is logged once, the retries at debug.
        daemon.wait_for_log(r"component link refused again", timeout=10)
        log = daemon.log()
        assert len([line for line in daemon.lines if " ERROR " in line]) == 1, log
        assert "component connected" not in log, log
        assert wrong not in log, "the secret must never be logged (SPEC §12)"
    finally:
        daemon.stop()
