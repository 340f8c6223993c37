"""The REST API (SPEC §9) through real nginx (examples/nginx/stanzad.conf) and real Prosody, with slixmpp
receiving: every route and status, the four body types, bad input in XML and JSON, 1,000 long-polls."""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import time
from pathlib import Path

import pytest

from harness import COMPONENT, DOMAIN, Stanzad, component_config, free_port
from nginx import Nginx

TOKEN = "Bearer dGVzdC10b2tlbg=="
SLOW_WORKER = Path(__file__).parent / "handlers" / "slow_worker.py"
STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"


@pytest.fixture(scope="module")
def stanzad(prosody, socket_path, tmp_path_factory):
    extra = f'''
[rest]
listen = "unix:{socket_path}"
socket_mode = "0660"
credentials = ["{TOKEN}"]
iq_timeout = 10
max_body = 4096
send_wait = 1

[[route]]
name = "slowiq"
kinds = ["iq"]
to = ["slow@{COMPONENT}"]
worker = ["{SLOW_WORKER}"]
format = "json"
in_flight = 1000
concurrency = 1000
queue = 1000
timeout = 30
'''
    daemon = Stanzad(tmp_path_factory.mktemp("stanzad"), component_config(prosody.component_port, extra=extra))
    daemon.start()
    daemon.wait_for_log("component connected")
    daemon.wait_for_log("REST API listening")
    yield daemon
    daemon.stop()


def call(nginx: Nginx, method: str, path: str, body: bytes | str = b"", headers: dict | None = None,
         auth: bool = True) -> tuple[int, dict, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", nginx.port, timeout=30)
    all_headers = {"Authorization": TOKEN} if auth else {}
    all_headers.update(headers or {})
    connection.request(method, path, body=body.encode() if isinstance(body, str) else body, headers=all_headers)
    response = connection.getresponse()
    data = response.read()
    result = response.status, {k.lower(): v for k, v in response.getheaders()}, data
    connection.close()
    return result


def test_a_socket_that_cannot_be_created_stops_stanzad_with_a_clear_error(prosody, tmp_path):
    extra = f'[rest]\nlisten = "unix:{tmp_path}/missing-dir/fastcgi.sock"\ncredentials = ["{TOKEN}"]\n'
    daemon = Stanzad(tmp_path, component_config(prosody.component_port, extra=extra))
    daemon.start()
    assert daemon.wait(10) == 78
    line = daemon.wait_for_log("REST API cannot start")[0]
    assert "missing-dir/fastcgi.sock" in line and "No such file or directory" in line and "RuntimeDirectory" in line


def test_more_than_max_pending_long_polls_get_503(prosody, tmp_path_factory):
    socket_path = tmp_path_factory.mktemp("run") / "fastcgi.sock"
    extra = f'''
[rest]
listen = "unix:{socket_path}"
credentials = ["{TOKEN}"]
max_pending = 2

[[route]]
name = "slowiq"
kinds = ["iq"]
to = ["slow@{COMPONENT}"]
worker = ["{SLOW_WORKER}"]
format = "json"
in_flight = 10
concurrency = 10
'''
    daemon = Stanzad(tmp_path_factory.mktemp("stanzad"), component_config(prosody.component_port, extra=extra))
    daemon.start()
    nginx = None
    try:
        daemon.wait_for_log("component connected")
        nginx = Nginx(tmp_path_factory.mktemp("nginx"), socket_path).start()
        loop = asyncio.new_event_loop()
        statuses = loop.run_until_complete(long_poll(nginx.port, 3))
        loop.close()
        # Two wait for the worker (which answers after 2 s); the third finds the limit reached.
        assert sorted(statuses) == [200, 200, 503]
    finally:
        if nginx:
            nginx.stop()
        daemon.stop()


def test_deadlines_fire_while_the_link_is_down(tmp_path_factory):
    # Nothing listens on the component port: the link never comes up and waits in its reconnect backoff.
    socket_path = tmp_path_factory.mktemp("run") / "fastcgi.sock"
    extra = f'[rest]\nlisten = "unix:{socket_path}"\ncredentials = ["{TOKEN}"]\nsend_wait = 2\n'
    daemon = Stanzad(tmp_path_factory.mktemp("stanzad"), component_config(free_port(), extra=extra))
    daemon.start()
    nginx = None
    try:
        daemon.wait_for_log("REST API listening")
        daemon.wait_for_log("component link down")
        nginx = Nginx(tmp_path_factory.mktemp("nginx"), socket_path).start()
        # A lone message: nothing else happens until its send_wait runs out.
        started = time.monotonic()
        status, headers, body = call(nginx, "POST", f"/rest/message/chat/alice@{DOMAIN}", "x",
                                     {"Content-Type": "text/plain", "Accept": "application/json"})
        elapsed = time.monotonic() - started
        assert status == 503 and headers["retry-after"] == "2", body
        assert json.loads(body)["error"]["condition"] == "service-unavailable"
        assert 1.9 < elapsed < 4, f"503 after {elapsed:.2f} s (send_wait = 2)"
        # A lone iq: it ends at its Rest-Timeout like any iq without a reply (SPEC §9: 504).
        started = time.monotonic()
        status, _, body = call(nginx, "POST", "/rest", f"<iq type='get' to='{DOMAIN}'><ping xmlns='urn:xmpp:ping'/></iq>",
                               {"Content-Type": "application/xmpp+xml", "Accept": "application/json", "Rest-Timeout": "2"})
        elapsed = time.monotonic() - started
        assert status == 504 and json.loads(body)["error"]["condition"] == "remote-server-timeout", body
        assert 1.9 < elapsed < 4, f"504 after {elapsed:.2f} s (Rest-Timeout: 2)"
        print(f"link down: message 503 and iq 504, each after about 2 s")
    finally:
        if nginx:
            nginx.stop()
        daemon.stop()


def test_health_needs_no_auth(nginx):
    status, headers, body = call(nginx, "GET", "/rest/health", auth=False)
    assert status == 200 and headers["content-type"] == "application/json"
    assert json.loads(body)["component"] == "connected"


@pytest.mark.parametrize("content_type,path,body", [
    ("application/xmpp+xml", "/rest", f"<message to='alice@{DOMAIN}' type='chat'><body>via xml</body></message>"),
    ("application/json", "/rest", json.dumps({"to": f"alice@{DOMAIN}", "type": "chat", "body": "via json"})),
    ("application/x-www-form-urlencoded", "/rest", f"to=alice%40{DOMAIN}&type=chat&body=via+form"),
    ("text/plain; charset=utf-8", f"/rest/message/chat/alice@{DOMAIN}", "via text"),
    ("application/json", f"/rest/message/chat/alice@{DOMAIN}", json.dumps({"body": "via path and json"})),
])
def test_messages_posted_arrive_from_the_component_domain(nginx, alice, content_type, path, body):
    status, _, _ = call(nginx, "POST", path, body, {"Content-Type": content_type})
    assert status == 202
    message = alice.next_message(10)
    expected = {"application/xmpp+xml": "via xml", "application/json": "via json",
                "application/x-www-form-urlencoded": "via form", "text/plain; charset=utf-8": "via text"}[content_type]
    if "path" in body:
        expected = "via path and json"
    assert message["body"] == expected
    assert str(message["from"]) == COMPONENT


@pytest.mark.parametrize("content_type,body", [
    ("application/x-www-form-urlencoded; charset=iso-8859-1", b"body=caf%E9+cr%E8me"),
    ("application/x-www-form-urlencoded; charset=ISO-8859-1", b"body=caf\xe9 cr\xe8me"),
    ("text/plain; charset=iso-8859-1", b"caf\xe9 cr\xe8me"),
])
def test_iso_8859_1_bodies_arrive_intact(nginx, alice, content_type, body):
    status, _, data = call(nginx, "POST", f"/rest/message/chat/alice@{DOMAIN}", body, {"Content-Type": content_type})
    assert status == 202, data
    assert alice.next_message(10)["body"] == "café crème"


def test_from_may_be_any_address_of_the_component(nginx, alice):
    status, _, _ = call(nginx, "POST", "/rest", f"<message to='alice@{DOMAIN}' from='news@{COMPONENT}/feed'><body>n</body></message>",
                        {"Content-Type": "application/xmpp+xml"})
    assert status == 202
    assert str(alice.next_message(10)["from"]) == f"news@{COMPONENT}/feed"


def test_iq_ping_to_the_server_returns_its_result_in_xml_and_json(nginx):
    status, headers, body = call(nginx, "POST", "/rest", f"<iq type='get' to='{DOMAIN}' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>",
                                 {"Content-Type": "application/xmpp+xml"})
    assert status == 200 and headers["content-type"] == "application/xmpp+xml"
    assert re.search(rb'<iq [^>]*type="result"', body) and b'id="p1"' in body
    status, headers, body = call(nginx, "POST", "/rest", json.dumps({"kind": "iq", "type": "get", "to": DOMAIN, "ping": True}),
                                 {"Content-Type": "application/json"})
    assert status == 200 and headers["content-type"] == "application/json"
    assert json.loads(body)["type"] == "result"


@pytest.mark.parametrize("query", ["ping", "version", "disco", "items", "time"])
def test_get_shortcuts(nginx, query):
    status, headers, body = call(nginx, "GET", f"/rest/{query}/{COMPONENT}", headers={"Accept": "application/json"})
    assert status == 200, body
    assert json.loads(body)["type"] == "result"


def test_accept_q_values_choose_the_response_type(nginx):
    headers = {"Content-Type": "application/json", "Accept": "application/json;q=0.5, application/xmpp+xml;q=0.9"}
    status, response_headers, _ = call(nginx, "GET", f"/rest/ping/{COMPONENT}", headers=headers)
    assert status == 200 and response_headers["content-type"] == "application/xmpp+xml"
    status, response_headers, _ = call(nginx, "GET", f"/rest/ping/{COMPONENT}", headers={"Accept": "*/*;q=0.1, application/json"})
    assert response_headers["content-type"] == "application/json"


def test_echo_stamps_without_sending(nginx):
    status, _, body = call(nginx, "POST", "/rest/echo", f"<message to='alice@{DOMAIN}' foo='bar'><body>e</body></message>",
                           {"Content-Type": "application/xmpp+xml"})
    assert status == 200
    assert f'from="{COMPONENT}"'.encode() in body and b"foo=" not in body and b'id="' in body


BILLION_LAUGHS = ('<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
                  + "".join(f'<!ENTITY lol{i} "{("&lol" + str(i - 1) + ";") * 10 if i > 1 else "&lol;" * 10}">' for i in range(1, 10))
                  + f"]><message to='alice@{DOMAIN}'><body>&lol9;</body></message>")

BAD = [
    # (name, method, path, content type, body, extra headers, auth, status, condition)
    ("malformed xml", "POST", "/rest", "application/xmpp+xml", "<message to='a@b'><body>x</message>", {}, True, 400, "bad-request"),
    ("billion laughs", "POST", "/rest", "application/xmpp+xml", BILLION_LAUGHS, {}, True, 400, "bad-request"),
    ("two stanzas", "POST", "/rest", "application/xmpp+xml", f"<message to='alice@{DOMAIN}'/><message to='alice@{DOMAIN}'/>", {}, True, 400, "bad-request"),
    ("malformed json", "POST", "/rest", "application/json", '{"to": ', {}, True, 400, "bad-request"),
    ("foreign xmlns", "POST", "/rest", "application/xmpp+xml", f"<message xmlns='urn:other' to='alice@{DOMAIN}'/>", {}, True, 422, "bad-request"),
    ("not a stanza", "POST", "/rest", "application/xmpp+xml", "<hello/>", {}, True, 422, "bad-request"),
    ("no to", "POST", "/rest", "application/json", '{"body": "x"}', {}, True, 422, "bad-request"),
    ("invalid to", "POST", "/rest", "application/xmpp+xml", "<message to='a@@b'/>", {}, True, 422, "jid-malformed"),
    ("invalid from", "POST", "/rest", "application/xmpp+xml", f"<message to='alice@{DOMAIN}' from='@x'/>", {}, True, 422, "jid-malformed"),
    ("from outside the domain", "POST", "/rest", "application/xmpp+xml", f"<message to='alice@{DOMAIN}' from='alice@{DOMAIN}'/>", {}, True, 403, "forbidden"),
    ("iq result", "POST", "/rest", "application/xmpp+xml", f"<iq type='result' to='{DOMAIN}'/>", {}, True, 422, "bad-request"),
    ("iq with two children", "POST", "/rest", "application/xmpp+xml", f"<iq type='get' to='{DOMAIN}'><a xmlns='x'/><b xmlns='y'/></iq>", {}, True, 422, "bad-request"),
    ("over max_body", "POST", "/rest", "text/plain", "x" * 5000, {}, True, 413, "resource-constraint"),
    ("unknown content type", "POST", "/rest", "image/png", "x", {}, True, 415, "feature-not-implemented"),
    ("wrong method", "GET", "/rest", None, "", {}, True, 405, "not-allowed"),
    ("missing credentials", "POST", "/rest", "text/plain", "x", {}, False, 401, "not-authorized"),
    ("wrong credentials", "POST", "/rest", "text/plain", "x", {"Authorization": "Bearer wrong"}, True, 403, "forbidden"),
    ("unknown route", "POST", "/rest/a/b/c/d", "text/plain", "x", {}, True, 404, "item-not-found"),
    ("unknown query", "GET", f"/rest/frobnicate/{DOMAIN}", None, "", {}, True, 404, "item-not-found"),
    ("bad timeout header", "GET", f"/rest/ping/{DOMAIN}", None, "", {"Rest-Timeout": "soon"}, True, 400, "bad-request"),
    # Forms are decoded strictly: nothing altered silently (it used to become U+FFFD, "%%", or lose its é).
    ("form with invalid escape", "POST", f"/rest/message/chat/alice@{DOMAIN}", "application/x-www-form-urlencoded", "body=%zz%", {}, True, 400, "bad-request"),
    ("form with truncated escape", "POST", f"/rest/message/chat/alice@{DOMAIN}", "application/x-www-form-urlencoded", "body=50%", {}, True, 400, "bad-request"),
    ("form escaping invalid UTF-8", "POST", f"/rest/message/chat/alice@{DOMAIN}", "application/x-www-form-urlencoded", "body=%C3%28", {}, True, 400, "bad-request"),
    ("form with raw invalid UTF-8", "POST", f"/rest/message/chat/alice@{DOMAIN}", "application/x-www-form-urlencoded", b"body=caf\xe9", {}, True, 400, "bad-request"),
    ("form pair without =", "POST", "/rest", "application/x-www-form-urlencoded", f"to=alice%40{DOMAIN}&body", {}, True, 400, "bad-request"),
    ("form in utf-16", "POST", f"/rest/message/chat/alice@{DOMAIN}", "application/x-www-form-urlencoded; charset=utf-16", "body=x", {}, True, 415, "feature-not-implemented"),
    ("text in utf-16", "POST", f"/rest/message/chat/alice@{DOMAIN}", "text/plain; charset=utf-16", "x", {}, True, 415, "feature-not-implemented"),
    ("text with invalid UTF-8", "POST", f"/rest/message/chat/alice@{DOMAIN}", "text/plain", b"caf\xe9", {}, True, 400, "bad-request"),
    ("query with invalid escape", "GET", f"/rest/disco/{DOMAIN}?node=%zz", None, "", {}, True, 400, "bad-request"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
@pytest.mark.parametrize("accept", ["application/xmpp+xml", "application/json"])
def test_bad_input_gets_its_status_and_a_clear_error_body(nginx, case, accept):
    name, method, path, content_type, body, extra, auth, status, cond = case
    headers = {"Accept": accept}
    if content_type:
        headers["Content-Type"] = content_type
    headers.update(extra)
    started = time.monotonic()
    got, response_headers, data = call(nginx, method, path, body, headers, auth=auth)
    elapsed = time.monotonic() - started
    assert got == status, data
    assert response_headers["content-type"] == accept
    if accept == "application/json":
        error = json.loads(data)
        assert error["type"] == "error" and error["code"] == status
        assert error["error"]["condition"] == cond and error["error"]["text"]
    else:
        assert data.startswith(b"<error ") and f'code="{status}"'.encode() in data
        assert f"<{cond} xmlns=\"{STANZAS}\"/>".encode() in data and b"<text " in data
    if status == 405:
        assert response_headers["allow"] == "POST"
    if status == 401:
        assert response_headers["www-authenticate"] == f'Bearer realm="{COMPONENT}"'
    if name == "billion laughs":
        assert elapsed < 0.1


def test_billion_laughs_leaves_memory_unchanged(nginx, stanzad):
    rss = lambda: int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{stanzad.process.pid}/status").read_text()).group(1))
    call(nginx, "POST", "/rest", BILLION_LAUGHS, {"Content-Type": "application/xmpp+xml"})  # warm-up
    before = rss()
    for _ in range(50):
        status, _, _ = call(nginx, "POST", "/rest", BILLION_LAUGHS, {"Content-Type": "application/xmpp+xml"})
        assert status == 400
    after = rss()
    print(f"rss {before} -> {after} KiB")
    assert after - before < 2048  # KiB: expanding it even once would take gigabytes


def test_rest_timeout_header_gives_504(nginx):
    # The slow worker answers after 2 s; the request allows 1 s.
    iq = f"<iq type='get' to='slow@{COMPONENT}'><query xmlns='urn:x'/></iq>"
    started = time.monotonic()
    status, _, body = call(nginx, "POST", "/rest", iq, {"Content-Type": "application/xmpp+xml", "Rest-Timeout": "1",
                                                         "Accept": "application/json"})
    assert status == 504 and json.loads(body)["error"]["condition"] == "remote-server-timeout"
    assert time.monotonic() - started < 1.9
    status, _, _ = call(nginx, "POST", "/rest", iq, {"Content-Type": "application/xmpp+xml", "Prosody-Rest-Timeout": "1"})
    assert status == 504


async def long_poll(port: int, n: int) -> list[int]:
    async def one(i: int) -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        body = f"<iq type='get' to='slow@{COMPONENT}' id='lp{i}'><query xmlns='urn:x'/></iq>".encode()
        writer.write(b"POST /rest HTTP/1.1\r\nHost: x\r\nAuthorization: " + TOKEN.encode() +
                     b"\r\nContent-Type: application/xmpp+xml\r\nConnection: close\r\nContent-Length: " +
                     str(len(body)).encode() + b"\r\n\r\n" + body)
        await writer.drain()
        status_line = await reader.readline()
        rest = await reader.read()
        writer.close()
        status = int(status_line.split()[1])
        if status == 200:
            # The worker's answer, an empty iq result, is what must come back.
            assert re.search(rb'<iq [^>]*type="result"', rest) and f'id="lp{i}"'.encode() in rest, rest
        return status

    return await asyncio.gather(*(one(i) for i in range(n)))


def threads(pid: int) -> int:
    return int(re.search(r"Threads:\s+(\d+)", Path(f"/proc/{pid}/status").read_text()).group(1))


def test_a_thousand_concurrent_long_polls(nginx, stanzad):
    pid = stanzad.process.pid
    peak = [threads(pid)]
    loop = asyncio.new_event_loop()

    async def run():
        task = asyncio.ensure_future(long_poll(nginx.port, 1000))
        while not task.done():
            peak.append(threads(pid))
            await asyncio.sleep(0.1)
        return await task

    statuses = loop.run_until_complete(run())
    loop.close()
    assert statuses.count(200) == 1000, {s: statuses.count(s) for s in set(statuses)}
    print(f"peak threads {max(peak)}")
    assert max(peak) <= 16


def test_link_cut_mid_poll_gives_502(nginx, stanzad, prosody):
    # Last in this module: it stops the module's Prosody.
    loop = asyncio.new_event_loop()

    async def run():
        holding = len(stanzad.wait_for_log(r"worker stderr line=\"?holding", count=0))
        task = asyncio.ensure_future(long_poll(nginx.port, 50))
        # The worker holds all 50 (it answers after 2 s): the polls are in flight.
        await asyncio.get_running_loop().run_in_executor(
            None, lambda: stanzad.wait_for_log(r"worker stderr line=\"?holding", count=holding + 50))
        prosody.process.kill()  # a cut, not a clean shutdown
        await asyncio.get_running_loop().run_in_executor(None, prosody.process.wait)
        return await task

    statuses = loop.run_until_complete(run())
    loop.close()
    assert statuses == [502] * 50
    status, _, body = call(nginx, "GET", "/rest/health", auth=False)
    assert status == 503 and json.loads(body)["component"] in ("connecting", "failed")
    # With the link down, a message waits send_wait (1 s) for it, then 503 with Retry-After.
    started = time.monotonic()
    status, headers, body = call(nginx, "POST", f"/rest/message/chat/alice@{DOMAIN}", "x",
                                 {"Content-Type": "text/plain", "Accept": "application/json"})
    assert status == 503 and headers["retry-after"] == "1", body
    assert json.loads(body)["error"]["condition"] == "service-unavailable"
    assert 0.9 < time.monotonic() - started < 5
