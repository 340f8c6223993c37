"""Per-stanza limits on the component link (SPEC §12) against a real Prosody: a stanza over a limit costs that
stanza (its sender gets an error), never the link."""

from __future__ import annotations

import time

import pytest

from harness import COMPONENT, DOMAIN, REPO, Stanzad, component_config

STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
ECHO = f"echo@{COMPONENT}"


@pytest.fixture(scope="module")
def stanzad(prosody, tmp_path_factory):
    routes = f'[[route]]\nname = "echo"\nto = ["{ECHO}"]\nexec = ["{REPO / "handlers" / "echo.sh"}"]\nconcurrency = 8\n'
    daemon = Stanzad(tmp_path_factory.mktemp("stanzad"), component_config(prosody.component_port, extra=routes))
    daemon.start()
    daemon.wait_for_log("component connected")
    yield daemon
    daemon.stop()


def deep_message(id: str, levels: int) -> str:
    """A chat message to the echo route whose innermost element is `levels` deep (the message is level 1)."""
    return (f"<message to='{ECHO}' type='chat' id='{id}'><body>deep</body>"
            + "<x xmlns='urn:example:deep'>" * (levels - 1) + "</x>" * (levels - 1) + "</message>")


def error_of(message) -> tuple[str, str, str | None] | None:
    """(type, condition, text) of an error message."""
    error = message.xml.find("{jabber:client}error")
    if error is None:
        return None
    condition = next((c.tag.split("}")[1] for c in error
                      if c.tag.startswith("{" + STANZAS + "}") and not c.tag.endswith("}text")), None)
    text = error.find(f"{{{STANZAS}}}text")
    return error.get("type"), condition, None if text is None else text.text


def test_a_too_deep_stanza_gets_an_error_and_the_link_stays_up(prosody, stanzad, alice):
    sessions_before = prosody.log_text().count("External component successfully authenticated")
    assert sessions_before == 1
    sent: list[str] = []
    echoes: set[str] = set()
    errors: dict[str, tuple] = {}

    def receive_until(done, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            try:
                message = alice.next_message(max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                pytest.fail(f"no answer within {timeout} s (errors so far: {errors}); stanzad log:\n"
                            + "\n".join(stanzad.lines[-15:]))
            if message["type"] == "error":
                errors[message["id"]] = error_of(message)
            elif message["from"].bare == ECHO:
                echoes.add(message["body"])

    started = time.monotonic()
    # Ten deep messages about 0.2 s apart in steady echo traffic: one echo at a time, each waiting for its reply
    # (the replies are the synchronisation and the clock only says when the next deep message is due).
    for round in range(10):
        alice.send_raw(deep_message(f"deep{round}", 100))
        while time.monotonic() < started + 0.2 * (round + 1) or f"deep{round}" not in errors:
            body = f"normal {len(sent)}"
            sent.append(body)
            alice.loop.call_soon_threadsafe(lambda b=body: alice.xmpp.send_message(mto=ECHO, mbody=b, mtype="chat"))
            receive_until(lambda: body in echoes)
    elapsed = time.monotonic() - started

    assert echoes == set(sent), "every normal message is answered"
    assert set(errors) == {f"deep{round}" for round in range(10)}
    for id, error in errors.items():
        assert error == ("modify", "policy-violation", "stanza nested deeper than 64 levels"), (id, error)
    # The link never dropped: one component session in Prosody's log, no reconnect in stanzad's.
    assert prosody.log_text().count("External component successfully authenticated") == 1
    log = stanzad.log()
    assert "component link down" not in log and log.count("component connected") == 1
    refused = [line for line in stanzad.lines if "inbound stanza refused" in line]
    assert len(refused) == 10 and all(" NOTICE inbound stanza refused" in line for line in refused), refused
    assert f"from=alice@{DOMAIN}/test" in refused[0] and "stanza.id=deep0" in refused[0]
    print(f"10 deep stanzas among {len(sent)} echoes in {elapsed:.2f} s")
