"""mod_rest's own example callback app (`example/app.py` in ../shared/anchors, a Flask app, run unchanged) as a
stanzad webhook with `format = "auto"`: stanzad probes it with OPTIONS as mod_rest does, the app's Accept picks
JSON, and it answers a slixmpp user's message and disco query through stanzad."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from harness import COMPONENT, Stanzad, component_config, free_port, wait_for_port
from modrest import ANCHORS
from test_executor import ask

APP_DIR = ANCHORS / "prosody-modules" / "mod_rest" / "example"


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("app") / "app.log"
    # The file as published, imported and served on a free port (its __main__ would take port 5000).
    process = subprocess.Popen(
        ["/usr/bin/python3", "-c", f"import sys; sys.path.insert(0, {str(APP_DIR)!r}); from app import app; app.run(port={port})"],
        stdout=log.open("w"), stderr=subprocess.STDOUT)
    wait_for_port(port)
    yield port, log
    process.terminate()
    process.wait(5)


@pytest.fixture(scope="module")
def stanzad(prosody, app, tmp_path_factory):
    port, _ = app
    routes = f'''
[[route]]
name = "flask-app"
kinds = ["message", "iq"]
to = ["app@{COMPONENT}"]
webhook = "http://127.0.0.1:{port}/api"
format = "auto"
'''
    daemon = Stanzad(tmp_path_factory.mktemp("stanzad"), component_config(prosody.component_port, extra=routes))
    daemon.start()
    daemon.wait_for_log("component connected")
    yield daemon
    daemon.stop()


def test_mod_rest_example_app_answers_a_message(alice, stanzad, app):
    reply = ask(alice, "app", "hello app")
    assert reply["type"] == "chat" and reply["body"] == "Yes this is flask app"
    log = app[1].read_text()
    # The probe came first and the message went as JSON (the app prints the body it was given).
    assert '"OPTIONS /api HTTP/1.1" 200' in log and '"POST /api HTTP/1.1" 200' in log, log
    assert log.index("OPTIONS /api") < log.index("POST /api")
    assert '"kind": "message"' in log or '"kind":"message"' in log, log


def test_mod_rest_example_app_answers_a_disco_query(alice, stanzad):
    result = alice.iq(f"<iq xmlns='jabber:client' type='get' to='app@{COMPONENT}' id='d1'>"
                      "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
    assert result["type"] == "result" and result["id"] == "d1"
    query = result.xml.find("{http://jabber.org/protocol/disco#info}query")
    identity = query.find("{http://jabber.org/protocol/disco#info}identity")
    assert identity.attrib == {"category": "component", "type": "generic", "name": "Flask app"}
    features = {f.attrib["var"] for f in query.findall("{http://jabber.org/protocol/disco#info}feature")}
    assert {"urn:xmpp:ping", "jabber:iq:version"} <= features


def test_mod_rest_example_app_answers_disco_items_and_version(alice, stanzad):
    items = alice.iq(f"<iq xmlns='jabber:client' type='get' to='app@{COMPONENT}' id='i1'>"
                     "<query xmlns='http://jabber.org/protocol/disco#items'/></iq>")
    item = items.xml.find("{http://jabber.org/protocol/disco#items}query/{http://jabber.org/protocol/disco#items}item")
    assert item.attrib == {"jid": "example.org", "name": "Example Dot Org"}
    version = alice.iq(f"<iq xmlns='jabber:client' type='get' to='app@{COMPONENT}' id='v1'>"
                       "<query xmlns='jabber:iq:version'/></iq>")
    assert version.xml.find("{jabber:iq:version}query/{jabber:iq:version}name").text == "app.py"
