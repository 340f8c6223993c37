"""Updates (SPEC §17) through real nginx and Prosody, slixmpp as the sender: a client fetching with offsets
gets every message once and in order, long-polls answer as the message arrives and hold no thread, overflow
drops the oldest and says so, and server-sent events stream through nginx and resume with Last-Event-ID."""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest

from harness import COMPONENT, Client, DOMAIN, rest_stanzad
from nginx import Nginx
from test_executor import condition

TOKEN = "Bearer dXBkYXRlcy10b2tlbg=="
ALICE = f"alice@{DOMAIN}"


@pytest.fixture(scope="module")
def stanzad(prosody, socket_path, tmp_path_factory):
    extra = f'''
[rest]
listen = "unix:{socket_path}"
credentials = ["{TOKEN}"]

[[route]]
name = "inbox"
to = ["inbox@{COMPONENT}"]
kinds = ["message", "iq"]
pull = true

[[route]]
name = "small"
to = ["small@{COMPONENT}"]
pull = true
queue = 3

[[route]]
name = "stream"
to = ["stream@{COMPONENT}"]
pull = true

[[route]]
name = "many"
to = ["many@{COMPONENT}"]
pull = true

[[route]]
name = "readme"
to = ["readme@{COMPONENT}"]
pull = true

[[route]]
name = "fanout"
to = ["fanout@{COMPONENT}"]
pull = true
'''
    daemon = rest_stanzad(prosody, tmp_path_factory, extra)
    yield daemon
    daemon.stop()


def get(nginx: Nginx, path: str, headers: dict | None = None, auth: bool = True) -> tuple[int, dict, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", nginx.port, timeout=60)
    connection.request("GET", path, headers={**({"Authorization": TOKEN} if auth else {}), **(headers or {})})
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, data


def send(client: Client, name: str, bodies: list[str]) -> None:
    def go():
        for body in bodies:
            client.xmpp.send_message(mto=f"{name}@{COMPONENT}", mbody=body, mtype="chat")
    client.loop.call_soon_threadsafe(go)


def fetch_all(nginx: Nginx, route: str, count: int, timeout: float = 60) -> list[dict]:
    """A client loop as the README shows it: fetch, handle, acknowledge with offset."""
    received, offset = [], None
    deadline = time.monotonic() + timeout
    while len(received) < count and time.monotonic() < deadline:
        query = f"?timeout=5&limit=100" + (f"&offset={offset}" if offset is not None else "")
        status, _, body = get(nginx, f"/rest/updates/{route}{query}")
        assert status == 200, body
        answer = json.loads(body)
        received += answer["updates"]
        offset = answer["next_offset"]
    return received


def threads(pid: int) -> int:
    return int(re.search(r"^Threads:\s+(\d+)", Path(f"/proc/{pid}/status").read_text(), re.M).group(1))


def rss_kib(pid: int) -> int:
    return int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text()).group(1))


def test_a_thousand_messages_are_fetched_each_once_and_in_order(nginx, alice):
    bodies = [f"m{i}" for i in range(1000)]
    send(alice, "inbox", bodies)
    received = fetch_all(nginx, "inbox", 1000)
    assert [u["stanza"]["body"] for u in received] == bodies
    assert all(u["stanza"]["from"].startswith(ALICE) and u["stanza"]["kind"] == "message" for u in received)
    ids = [u["update_id"] for u in received]
    assert ids == sorted(set(ids)), "ids only grow"
    # Acknowledged: nothing comes again.
    status, _, body = get(nginx, f"/rest/updates/inbox?offset={ids[-1] + 1}")
    assert status == 200 and json.loads(body) == {"updates": [], "next_offset": ids[-1] + 1}


def test_a_long_poll_started_before_the_message_answers_as_it_arrives(nginx, alice, stanzad):
    result = {}

    def poll():
        result["response"] = get(nginx, "/rest/updates/inbox?timeout=30")
        result["answered"] = time.monotonic()

    before = len(re.findall("update fetch waiting", stanzad.log()))
    poller = threading.Thread(target=poll)
    poller.start()
    stanzad.wait_for_log("update fetch waiting", count=before + 1)
    sent = time.monotonic()
    send(alice, "inbox", ["wake up"])
    poller.join(30)
    status, _, body = result["response"]
    assert status == 200
    updates = json.loads(body)["updates"]
    assert [u["stanza"]["body"] for u in updates] == ["wake up"]
    latency = result["answered"] - sent
    print(f"long-poll answered {latency * 1000:.1f} ms after the message was sent")
    assert latency < 0.5, f"answered {latency:.3f} s after the message was sent (Prosody and nginx included)"
    get(nginx, f"/rest/updates/inbox?offset={json.loads(body)['next_offset']}")


def test_five_hundred_long_polls_hold_no_thread_each(nginx, stanzad):
    pid = stanzad.process.pid
    idle = threads(pid)
    before = len(re.findall("update fetch waiting", stanzad.log()))

    async def many():
        async def one():
            reader, writer = await asyncio.open_connection("127.0.0.1", nginx.port)
            writer.write(f"GET /rest/updates/many?timeout=20 HTTP/1.1\r\nHost: x\r\nAuthorization: {TOKEN}\r\n"
                         "Connection: close\r\n\r\n".encode())
            await writer.drain()
            return reader, writer
        return await asyncio.gather(*(one() for _ in range(500)))

    loop = asyncio.new_event_loop()
    connections = loop.run_until_complete(many())
    try:
        stanzad.wait_for_log("update fetch waiting", count=before + 500, timeout=60)
        waiting = threads(pid)
        print(f"threads: {idle} idle, {waiting} with 500 long-polls waiting")
        assert abs(waiting - idle) <= 2, f"{idle} threads idle, {waiting} with 500 long-polls"
    finally:
        for _, writer in connections:
            writer.close()
        loop.close()


def test_a_full_queue_drops_the_oldest_and_says_so(nginx, alice, stanzad):
    send(alice, "small", ["s1", "s2", "s3", "s4", "s5"])
    stanzad.wait_for_log("update queue full", count=2)
    line = stanzad.wait_for_log("update queue full", count=2)[-1]
    assert "route=small" in line and "dropped_total=2" in line
    status, _, body = get(nginx, "/rest/updates/small")
    assert [u["stanza"]["body"] for u in json.loads(body)["updates"]] == ["s3", "s4", "s5"]


def test_an_iq_to_a_pull_route_is_queued_and_answered_service_unavailable(nginx, alice):
    reply = alice.iq(f"<iq type='get' to='inbox@{COMPONENT}' id='q1'><query xmlns='jabber:iq:version'/></iq>")
    assert condition(reply) == ("cancel", "service-unavailable")
    status, _, body = get(nginx, "/rest/updates/inbox?limit=1000")
    iqs = [u["stanza"] for u in json.loads(body)["updates"] if u["stanza"]["kind"] == "iq"]
    assert iqs and iqs[-1]["id"] == "q1"


@pytest.mark.parametrize("path,headers,auth,status,text", [
    ("/rest/updates/nosuch", {}, True, 404, "no pull route named"),
    ("/rest/updates/inbox?offset=-1", {}, True, 400, "offset must be"),
    ("/rest/updates/inbox?limit=5000", {}, True, 400, "limit must be"),
    ("/rest/updates/inbox?timeout=9999", {}, True, 400, "timeout must be"),
    ("/rest/updates/inbox", {}, False, 401, "credentials required"),
    ("/rest/events/stream", {"Last-Event-ID": "abc"}, True, 400, "Last-Event-ID must be"),
])
def test_bad_requests_get_a_clear_error(nginx, path, headers, auth, status, text):
    got, _, body = get(nginx, path, headers=dict(headers, Accept="application/json"), auth=auth)
    assert got == status
    assert text in json.loads(body)["error"]["text"]


class EventReader:
    """`curl -N` through nginx, as a user would run it; events as (id, data) pairs."""

    def __init__(self, nginx: Nginx, route: str, last_event_id: int | None = None):
        command = ["curl", "-sS", "-N", "-H", f"Authorization: {TOKEN}", f"http://127.0.0.1:{nginx.port}/rest/events/{route}"]
        if last_event_id is not None:
            command[5:5] = ["-H", f"Last-Event-ID: {last_event_id}"]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        self.comments = 0

    def next_event(self, timeout: float = 10) -> tuple[int, dict]:
        fields: dict[str, str] = {}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if line == "":
                raise EOFError("the stream ended")
            line = line.rstrip("\n")
            if line.startswith(":"):
                self.comments += 1
            elif line == "" and fields:
                return int(fields["id"]), json.loads(fields["data"])
            elif ":" in line:
                name, _, value = line.partition(":")
                fields[name] = value.lstrip(" ")
        raise TimeoutError

    def wait_for_comment(self) -> None:
        line = self.process.stdout.readline()
        assert line.startswith(":"), line

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(5)


def test_events_stream_through_nginx_and_resume_with_last_event_id(nginx, alice, stanzad):
    reader = EventReader(nginx, "stream")
    try:
        reader.wait_for_comment()  # the head and a first comment have come through nginx unbuffered
        send(alice, "stream", ["e1"])
        first_id, first = reader.next_event()
        assert first["body"] == "e1"
        send(alice, "stream", ["e2"])
        second_id, second = reader.next_event()
        assert second["body"] == "e2" and second_id > first_id
    finally:
        reader.close()
    # Gone: what arrives now waits in the queue.
    stanzad.wait_for_log("update fetch waiting|event stream opened")
    send(alice, "stream", ["e3", "e4"])
    stanzad.wait_for_log(r"route=stream.*update=queued", count=4)
    reader = EventReader(nginx, "stream", last_event_id=second_id)
    try:
        reader.wait_for_comment()
        assert [reader.next_event()[1]["body"], reader.next_event()[1]["body"]] == ["e3", "e4"]
    finally:
        reader.close()


def test_a_hundred_streams_for_a_minute_keep_stanzads_memory_flat_and_get_keepalives(nginx, alice, stanzad):
    pid = stanzad.process.pid
    seconds = 60

    async def streams():
        async def one():
            reader, writer = await asyncio.open_connection("127.0.0.1", nginx.port)
            writer.write(f"GET /rest/events/fanout HTTP/1.1\r\nHost: x\r\nAuthorization: {TOKEN}\r\n\r\n".encode())
            await writer.drain()
            return reader, writer

        connections = await asyncio.gather(*(one() for _ in range(100)))
        counts = [{"events": 0, "keepalives": 0} for _ in connections]

        async def read(index, reader):
            while True:
                line = await reader.readline()
                if not line:
                    return
                if line.startswith(b"data: "):
                    counts[index]["events"] += 1
                elif line.startswith(b": keepalive"):
                    counts[index]["keepalives"] += 1

        readers = [asyncio.ensure_future(read(i, r)) for i, (r, _) in enumerate(connections)]
        start = time.monotonic()
        sample = None
        sent = 0
        while time.monotonic() - start < seconds:
            send(alice, "fanout", [f"f{sent}", f"f{sent + 1}"])
            sent += 2
            if sample is None and time.monotonic() - start > 10:
                sample = rss_kib(pid)
            await asyncio.sleep(0.1)  # the pace of the load, not a synchronisation
        end = rss_kib(pid)
        for _, writer in connections:
            writer.close()
        for task in readers:
            task.cancel()
        return sample, end, counts, sent

    loop = asyncio.new_event_loop()
    sample, end, counts, sent = loop.run_until_complete(streams())
    loop.close()
    print(f"RSS {sample} KiB after 10 s, {end} KiB after {seconds} s; {sent} messages; "
          f"events per stream {min(c['events'] for c in counts)}–{max(c['events'] for c in counts)}")
    assert end <= sample * 1.10, f"RSS grew from {sample} to {end} KiB"
    assert all(c["keepalives"] >= 3 for c in counts), "a comment line every 15 s on every stream"
    assert all(c["events"] >= sent * 0.9 for c in counts), "every stream saw the messages"


def test_the_readmes_python_loop_prints_each_message(nginx, alice):
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("## Receiving without a webhook"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    code = code.replace("https://xmpp.example.org/rest/updates/inbox", f"http://127.0.0.1:{nginx.port}/rest/updates/readme")
    code = code.replace("Bearer change-me", TOKEN)
    process = subprocess.Popen(["/usr/bin/python3", "-u", "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        send(alice, "inbox", [])  # nothing: the loop must wait, not fail
        send(alice, "readme", ["r1", "r2", "r3"])
        lines = [process.stdout.readline().strip() for _ in range(3)]
        assert lines == [f"{ALICE}/test r1", f"{ALICE}/test r2", f"{ALICE}/test r3"]
    finally:
        process.kill()
        process.wait()
