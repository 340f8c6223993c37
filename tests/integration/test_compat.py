"""mod_rest parity (SPEC §7, §9; docs/COMPAT.md): the real mod_rest (the pinned copy in ../shared/anchors) runs in
the same Prosody as stanzad, and every stanza of compat_corpus.py goes through both POST /rest/echo's, XML → JSON
and JSON → XML, then the reference's answer back the other way. Every difference must be listed, with the
COMPAT.md entry that explains it, in compat_allowed.json: an unlisted difference fails, and so does a listed one
that no longer occurs (or changed)."""

from __future__ import annotations

import json
import os
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from compat_corpus import JSON_CASES, XML_CASES
from harness import REPO, SECRET, Stanzad, component_config, rest_stanzad
from nginx import Nginx
from modrest import ANCHORS, REST_HOST, TOKEN as MODREST_TOKEN, ModRestProsody, echo

TOKEN = "Bearer Y29tcGF0LXRva2Vu"
HERE = Path(__file__).parent
ALLOWED_FILE = HERE / "compat_allowed.json"
COMPAT_DOC = REPO / "docs" / "COMPAT.md"
XMPP_XML = "application/xmpp+xml"
MODREST_IDENTITY = f"api@{REST_HOST}"
SCALED = "scaled.example.test"
JSON = "application/json"


@pytest.fixture(scope="module")
def prosody(tmp_path_factory):
    # A second component and its instance domain (SPEC §20), for the archive query over an instance link.
    server = ModRestProsody(tmp_path_factory.mktemp("prosody"),
                            extra_components={SCALED: SECRET, f"i1.{SCALED}": SECRET})
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stanzad(prosody, socket_path, tmp_path_factory):
    daemon = rest_stanzad(prosody, tmp_path_factory, f'''
[rest]
listen = "unix:{socket_path}"
credentials = ["{TOKEN}"]
iq_timeout = 5
''')
    yield daemon
    daemon.stop()


# ---------------------------------------------------------------------------------------------------------
# Normal forms: what may differ by design (the stamped `from`, whose identity differs between the two servers)
# is removed; XML children are compared as a multiset (mod_rest writes them in hash order).


def canonical_xml(text: str, top: bool = True) -> str:
    element = ET.fromstring(text) if isinstance(text, str) else text
    if top:
        element.attrib.pop("from", None)
    return _canon(element)


def _canon(element) -> str:
    attrs = " ".join(f"{k}={v!r}" for k, v in sorted(element.attrib.items()))
    children = sorted(_canon(child) + f"~{child.tail or ''!r}" for child in element)
    return f"<{element.tag} {attrs}>{(element.text or '')!r}[{', '.join(children)}]"


def normal_json(value, path: str = ""):
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if path == "" and key == "from":
                continue
            if key == "html" and isinstance(item, str):
                try:
                    item = "XML:" + _canon(ET.fromstring(item))
                except ET.ParseError:
                    pass
            out[key] = normal_json(item, f"{path}.{key}")
        return out
    if isinstance(value, list):
        return [normal_json(item, f"{path}[]") for item in value]
    return value


def json_diff(a, b, path: str = "") -> list[str]:
    """Differences between mod_rest's JSON `a` and stanzad's `b`, one line each."""
    if isinstance(a, dict) and isinstance(b, dict):
        lines = []
        for key in sorted(set(a) | set(b)):
            where = f"{path}.{key}" if path else key
            if key not in a:
                lines.append(f"{where}: only stanzad has it: {json.dumps(b[key], sort_keys=True, ensure_ascii=False)}")
            elif key not in b:
                lines.append(f"{where}: only mod_rest has it: {json.dumps(a[key], sort_keys=True, ensure_ascii=False)}")
            else:
                lines += json_diff(a[key], b[key], where)
        return lines
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        lines = []
        for index, (x, y) in enumerate(zip(a, b)):
            lines += json_diff(x, y, f"{path}[{index}]")
        return lines
    if a == b and type(a) is type(b):
        return []
    return [f"{path}: mod_rest {json.dumps(a, sort_keys=True, ensure_ascii=False)} "
            f"stanzad {json.dumps(b, sort_keys=True, ensure_ascii=False)}"]


def xml_diff(a: str, b: str) -> list[str]:
    try:
        ea, eb = ET.fromstring(a), ET.fromstring(b)
    except ET.ParseError as error:
        return [f"unparsable XML: {error}: mod_rest {a!r} stanzad {b!r}"]
    ea.attrib.pop("from", None)
    eb.attrib.pop("from", None)
    lines = []
    if ea.tag != eb.tag:
        lines.append(f"element: mod_rest {ea.tag} stanzad {eb.tag}")
    for key in sorted(set(ea.attrib) | set(eb.attrib)):
        if ea.attrib.get(key) != eb.attrib.get(key):
            lines.append(f"@{key}: mod_rest {ea.attrib.get(key)!r} stanzad {eb.attrib.get(key)!r}")
    if (ea.text or "") != (eb.text or ""):
        lines.append(f"text: mod_rest {ea.text!r} stanzad {eb.text!r}")
    ca = sorted(_canon(c) for c in ea)
    cb = sorted(_canon(c) for c in eb)
    for child in ca:
        if child in cb:
            cb.remove(child)
        else:
            lines.append(f"child only in mod_rest: {child}")
    for child in cb:
        lines.append(f"child only in stanzad: {child}")
    return lines


# ---------------------------------------------------------------------------------------------------------


def both(prosody, nginx, body: str, content_type: str, accept: str):
    reference = echo(prosody.base, body, content_type, accept, MODREST_TOKEN)
    ours = echo(nginx.base, body, content_type, accept, TOKEN)
    return reference, ours


def compare(reference, ours, accept: str) -> list[str]:
    (ref_status, ref_body), (our_status, our_body) = reference, ours
    if ref_status != our_status:
        return [f"status: mod_rest {ref_status} stanzad {our_status}"]
    if ref_status != 200:
        return []
    if accept == JSON:
        if not isinstance(ref_body, dict) or not isinstance(our_body, dict):
            return [f"not JSON: mod_rest {ref_body!r} stanzad {our_body!r}"]
        return json_diff(normal_json(ref_body), normal_json(our_body))
    return xml_diff(ref_body, our_body)


def run_corpus(prosody, nginx) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for name, xml in XML_CASES:
        first = both(prosody, nginx, xml, XMPP_XML, JSON)
        found[f"{name} xml>json"] = compare(*first, JSON)
        if first[0][0] == 200 and isinstance(first[0][1], dict):
            # The reference's answer without the `from` it stamped (its own identity, which stanzad refuses).
            answer = {key: value for key, value in first[0][1].items() if key != "from"}
            back = both(prosody, nginx, json.dumps(answer), JSON, XMPP_XML)
            found[f"{name} json>xml (back)"] = compare(*back, XMPP_XML)
    for name, value in JSON_CASES:
        first = both(prosody, nginx, json.dumps(value), JSON, XMPP_XML)
        found[f"{name} json>xml"] = compare(*first, XMPP_XML)
        if first[0][0] == 200 and isinstance(first[0][1], str):
            answer = first[0][1].replace(f" from='{MODREST_IDENTITY}'", "", 1)
            back = both(prosody, nginx, answer, XMPP_XML, JSON)
            found[f"{name} xml>json (back)"] = compare(*back, JSON)
    return {key: lines for key, lines in found.items() if lines}


def test_every_difference_from_mod_rest_is_listed_with_its_reason(prosody, nginx):
    found = run_corpus(prosody, nginx)
    allowed = json.loads(ALLOWED_FILE.read_text())
    doc = COMPAT_DOC.read_text()
    if os.environ.get("COMPAT_WRITE_FOUND"):
        Path(os.environ["COMPAT_WRITE_FOUND"]).write_text(json.dumps(found, indent=1, ensure_ascii=False, sort_keys=True))
    problems = []
    for key, lines in sorted(found.items()):
        entry = allowed.get(key)
        if entry is None:
            problems.append(f"UNLISTED {key}:\n    " + "\n    ".join(lines))
        elif sorted(entry["diff"]) != sorted(lines):
            problems.append(f"CHANGED {key}: listed\n    " + "\n    ".join(entry["diff"]) + "\n  found\n    "
                            + "\n    ".join(lines))
    for key, entry in sorted(allowed.items()):
        if key == "openapi":
            continue
        if key not in found:
            problems.append(f"STALE {key}: listed but no longer differs")
        elif f"**{entry['reason']}**" not in doc:
            problems.append(f"{key}: reason {entry['reason']} is not explained in docs/COMPAT.md")
    total = len(XML_CASES) + len(JSON_CASES)
    print(f"{total} cases, {2 * total} comparisons, {len(found)} with listed differences")
    assert not problems, "\n".join(problems)


def test_corpus_covers_every_key_of_the_mapping():
    keys = set()

    def walk(value):
        if isinstance(value, dict):
            keys.update(value)

    for _, value in JSON_CASES:
        walk(value)
    text = " ".join(xml for _, xml in XML_CASES)
    namespaces = {
        "rsm": "http://jabber.org/protocol/rsm", "dataform": "jabber:x:data", "reactions": "urn:xmpp:reactions:0",
        "reply": "urn:xmpp:reply:0", "fallback": "urn:xmpp:fallback:0", "reference": "urn:xmpp:reference:0",
        "markable": "<markable", "displayed": "<displayed", "stanza_ids": "urn:xmpp:sid:0",
        "occupant_id": "urn:xmpp:occupant-id:0", "encryption": "urn:xmpp:eme:0", "attach_to": "urn:xmpp:message-attaching:1",
        "invite": "jabber:x:conference", "forwarded": "urn:xmpp:forward:0", "archive": "urn:xmpp:mam:2", "result": "<fin",
        "caps": "http://jabber.org/protocol/caps", "idle_since": "urn:xmpp:idle:1", "vcard_update": "vcard-temp:x:update",
        "muc": "http://jabber.org/protocol/muc", "upload_request": "<request", "upload_slot": "<slot",
        "lastactivity": "jabber:iq:last", "stats": "protocol/stats", "extdisco": "urn:xmpp:extdisco:2",
        "register": "jabber:iq:register", "gateway": "jabber:iq:gateway", "oob": "jabber:iq:oob",
        "block": "<block ", "blocklist": "<blocklist", "command": "protocol/commands", "disco": "disco#info",
        "items": "disco#items", "ping": "urn:xmpp:ping", "version": "jabber:iq:version", "delay": "urn:xmpp:delay",
        "nick": "protocol/nick", "payload": "json-msg", "html": "xhtml-im", "state": "chatstates",
        "replace": "message-correct", "thread": "<thread", "subject": "<subject", "body": "<body", "show": "<show",
        "status": "<status", "priority": "<priority", "error": "<error", "lang": "xml:lang",
    }
    missing_xml = [key for key, marker in namespaces.items() if marker not in text]
    # Every XML case also goes JSON → XML (the reference's JSON back through both), so the JSON cases need only
    # add the keys that exist in JSON alone and the inferences.
    missing_json = sorted({"formdata", "oob_url", "join", "kind", "type", "dataform", "command", "archive"} - keys)
    assert not missing_xml and not missing_json, (missing_xml, missing_json)


# ---------------------------------------------------------------------------------------------------------
# GET shortcuts: the same query to Prosody through both, the same answer (addresses and ids aside).

SHORTCUTS = [
    "ping", "version", "disco", "disco?node=http://jabber.org/protocol/commands", "items", "archive?with=bob@example.test&max=5",
    "extdisco?type=stun", "lastactivity", "oob", "payload?datatype=urn:example:t&data=x", "stats",
    "upload_request?filename=a.txt&size=12",
]


def get(base: str, path: str, auth: str) -> tuple[int, object]:
    import urllib.error
    import urllib.request

    from modrest import REST_HOST as host

    request = urllib.request.Request(base + path, headers={"Accept": JSON, "Authorization": auth, "Host": host})
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        body = error.read()
        return error.code, json.loads(body) if body.startswith(b"{") else body.decode(errors="replace")


@pytest.mark.parametrize("query", SHORTCUTS)
def test_get_shortcut_asks_what_mod_rest_asks(prosody, nginx, query):
    from harness import DOMAIN

    name, _, params = query.partition("?")
    path = f"/rest/{name}/{DOMAIN}" + (f"?{params}" if params else "")
    reference = get(prosody.base, path, MODREST_TOKEN)
    ours = get(nginx.base, path, TOKEN)
    if "_" in name:
        # COMPAT.md D10: the pinned mod_rest's route takes no "_" in this segment (the newer one does).
        assert reference[0] == 400 and ours[0] == 200, (reference, ours)
        assert ours[1]["kind"] == "iq" and ours[1]["type"] in ("result", "error"), ours
        return
    assert reference[0] == ours[0] == 200, (reference, ours)
    strip = lambda answer: {k: v for k, v in answer.items() if k not in ("from", "to", "id")}  # noqa: E731
    assert strip(ours[1]) == strip(reference[1])


def test_archive_query_answers_its_results_and_the_reply_in_one_body(prosody, nginx, alice):
    """mod_rest collects the result messages of an archive query and answers {"xmpp": [results…, iq]}."""
    from modrest import MUC_HOST

    room = f"archive@{MUC_HOST}"
    alice.send_raw(f"<presence to='{room}/alice'><x xmlns='http://jabber.org/protocol/muc'/></presence>")
    time.sleep(0.5)
    for n in (1, 2):
        alice.send_raw(f"<message to='{room}' type='groupchat' id='g{n}'><body>archived {n}</body></message>")
    time.sleep(0.5)
    path = f"/rest/archive/{room}?max=10"
    reference = get(prosody.base, path, MODREST_TOKEN)
    ours = get(nginx.base, path, TOKEN)
    assert reference[0] == ours[0] == 200, (reference, ours)

    def strip(answer):
        return [{k: v for k, v in stanza.items() if k not in ("from", "to", "id")} for stanza in answer["xmpp"]]

    assert len(ours[1]["xmpp"]) == 3, ours
    assert [s["kind"] for s in ours[1]["xmpp"]] == ["message", "message", "iq"]
    assert ours[1]["xmpp"][0]["archive"]["forward"]["message"]["body"] == "archived 1"
    assert strip(ours[1]) == strip(reference[1])
    # The results went to the REST answer, not to the routes (nothing reached the built-in responders).


# ---------------------------------------------------------------------------------------------------------
# mod_rest's own OpenAPI document (res/openapi.yaml) against stanzad's /rest, with schemathesis.

MODREST_OPENAPI = ANCHORS / "prosody-modules" / "mod_rest" / "res" / "openapi.yaml"


def schemathesis(base: str, headers: list[str], report: Path) -> tuple[list[str], str]:
    import subprocess

    binary = os.environ.get("SCHEMATHESIS_BIN", str(REPO / ".build-venv" / "bin" / "schemathesis"))
    assert os.path.exists(binary), f"{binary} missing: scripts/test installs schemathesis into .build-venv"
    arguments = [binary, "run", str(MODREST_OPENAPI), "--url", base]
    for header in headers:
        arguments += ["-H", header]
    result = subprocess.run(
        arguments + ["--checks", "status_code_conformance,content_type_conformance,response_schema_conformance",
                     "--max-examples", os.environ.get("SCHEMATHESIS_EXAMPLES", "15"), "--request-timeout", "20",
                     "--generation-deterministic", "--report-dir", str(report)],
        capture_output=True, text=True, timeout=600, env=dict(os.environ, SCHEMATHESIS_HOOKS=""))
    return schemathesis_failures(result.stdout), result.stdout


def test_mod_rest_openapi_document_against_stanzad(prosody, nginx, tmp_path):
    """The same generated requests against mod_rest itself and against stanzad: what the document does not
    describe in stanzad's answers is listed in compat_allowed.json ("openapi"), with whether mod_rest does the same."""
    reference, _ = schemathesis(prosody.base, [f"Authorization: {MODREST_TOKEN}", f"Host: {REST_HOST}"], tmp_path / "ref")
    failures, output = schemathesis(nginx.base, [f"Authorization: {TOKEN}"], tmp_path / "ours")
    print(output[-20000:])
    if os.environ.get("COMPAT_WRITE_FOUND"):
        Path(os.environ["COMPAT_WRITE_FOUND"] + ".openapi").write_text(json.dumps({"stanzad": failures, "mod_rest": reference}, indent=1))
    result = output
    allowed = json.loads(ALLOWED_FILE.read_text()).get("openapi", {})
    unexplained = sorted(set(failures) - set(allowed))
    stale = sorted(set(allowed) - set(failures))
    assert not unexplained and not stale, (unexplained, stale, result[-6000:])
    doc = COMPAT_DOC.read_text()
    assert all(f"**{reason}**" in doc for reason in allowed.values())
    print("mod_rest itself, same requests:", *reference, sep="\n  ")


def schemathesis_failures(output: str) -> list[str]:
    """`METHOD /path: check (received status)` for each failure schemathesis reports."""
    import re

    found = []
    operation = None
    check = None
    for line in output.splitlines():
        stripped = line.strip()
        header = re.match(r"^_+ (.+?) _+$", stripped)
        if header:
            operation = header.group(1)
            continue
        if stripped.startswith("=") :
            operation = None
        failed = re.match(r"^- (\w+ .+)$", stripped)
        if operation and failed:
            check = failed.group(1)
            found.append(f"{operation}: {check}")
            continue
        received = re.match(r"^Received: (.+)$", stripped)
        if operation and received and found and found[-1] == f"{operation}: {check}":
            found[-1] += f" (received {received.group(1)})"
    return sorted(set(found))


def test_archive_query_over_an_instance_link_answers_the_same(prosody, nginx, alice, tmp_path_factory):
    """With instance_jid (SPEC §20) the query goes from the instance domain; its results come back there and are
    answered as without it."""
    from modrest import MUC_HOST

    room = f"archive2@{MUC_HOST}"
    alice.send_raw(f"<presence to='{room}/alice'><x xmlns='http://jabber.org/protocol/muc'/></presence>")
    time.sleep(0.5)
    alice.send_raw(f"<message to='{room}' type='groupchat' id='h1'><body>kept</body></message>")
    time.sleep(0.5)
    socket = tmp_path_factory.mktemp("run2") / "fastcgi.sock"
    daemon = Stanzad(tmp_path_factory.mktemp("stanzad2"), component_config(
        prosody.component_port, jid=SCALED, instance_jid=f"i1.{SCALED}",
        extra=f'[rest]\nlisten = "unix:{socket}"\ncredentials = ["{TOKEN}"]\niq_timeout = 5\n'))
    daemon.start()
    try:
        daemon.wait_for_log("REST API listening")
        daemon.wait_for_log("component connected", count=2)
        front = Nginx(tmp_path_factory.mktemp("nginx2"), socket).start()
        try:
            status, answer = get(front.base, f"/rest/archive/{room}?max=10", TOKEN)
        finally:
            front.stop()
    finally:
        daemon.stop()
    assert status == 200, answer
    stanzas = answer["xmpp"]
    assert [s["kind"] for s in stanzas] == ["message", "iq"], answer
    assert stanzas[0]["archive"]["forward"]["message"]["body"] == "kept"
    assert all(s["to"] == SCALED for s in stanzas), stanzas
