"""SPEC §18 with real Prosody, nginx and slixmpp: what a REST client was told is accepted (202) reaches the user
across kill -9 of stanzad and of Prosody, with the spool; what is lost without it; the spool's errors and limits."""

from __future__ import annotations

import collections
import http.client
import json
import signal
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from harness import COMPONENT, DOMAIN, Client, Prosody, Stanzad, component_config
from nginx import Nginx

TOKEN = "Bearer dGVzdC10b2tlbg=="


def rest_extra(socket_path: Path, spool: Path | None, **rest) -> str:
    text = f'[rest]\nlisten = "unix:{socket_path}"\ncredentials = ["{TOKEN}"]\nsend_wait = 1\n'
    text += "".join(f"{key} = {value}\n" for key, value in rest.items())
    if spool:
        text += f'\n[storage]\npath = "{spool}"\n'
    return text


class OffliningProsody(Prosody):
    """Prosody with offline storage: a message routed while alice is away waits for her (the server's part of
    "delivered", so that the test measures stanzad's)."""

    def write_config(self) -> None:
        super().write_config()
        text = self.config.read_text().replace('"time" }', '"time"; "offline" }')
        assert '"offline"' in text
        self.config.write_text(text)


class Load:
    """`total` REST messages to alice from `workers` threads with keep-alive connections through nginx. A message
    is retried until it is answered 202 (connection errors, 502 while stanzad is down, 503 while the spool is
    full), so that every index is accepted once the load is done."""

    def __init__(self, nginx: Nginx, total: int, workers: int = 8, tag: str = "m"):
        self.nginx = nginx
        self.total = total
        self.tag = tag
        self.accepted: set[int] = set()
        self.refusals = collections.Counter()
        self.lock = threading.Condition()
        self.threads = [threading.Thread(target=self.work, args=(w, workers), daemon=True) for w in range(workers)]

    def start(self) -> "Load":
        for thread in self.threads:
            thread.start()
        return self

    def work(self, first: int, step: int) -> None:
        connection = None
        for index in range(first, self.total, step):
            body = json.dumps({"to": f"alice@{DOMAIN}", "type": "chat", "id": f"{self.tag}-{index}",
                               "body": f"{self.tag}-{index}"})
            while True:
                try:
                    if connection is None:
                        connection = http.client.HTTPConnection("127.0.0.1", self.nginx.port, timeout=30)
                    connection.request("POST", "/rest", body=body,
                                       headers={"Authorization": TOKEN, "Content-Type": "application/json"})
                    response = connection.getresponse()
                    response.read()
                    status = response.status
                except (OSError, http.client.HTTPException) as error:
                    connection = None
                    status = type(error).__name__
                if status == 202:
                    with self.lock:
                        self.accepted.add(index)
                        self.lock.notify_all()
                    break
                with self.lock:
                    self.refusals[status] += 1
                time.sleep(0.02)

    def wait_accepted(self, count: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        with self.lock:
            while len(self.accepted) < count:
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"only {len(self.accepted)} of {count} accepted; refusals {dict(self.refusals)}"
                self.lock.wait(remaining)

    def join(self, timeout: float = 120) -> None:
        for thread in self.threads:
            thread.join(timeout)
        assert len(self.accepted) == self.total, f"{len(self.accepted)} accepted; refusals {dict(self.refusals)}"


def collect(clients: list[Client], tag: str, wanted: set[int], timeout: float) -> collections.Counter:
    """Bodies `tag-N` that reached alice (over all her sessions), counted; waits until `wanted` are all in or
    nothing has come for `timeout` seconds."""
    counts: collections.Counter = collections.Counter()
    for client in clients:
        while True:
            try:
                message = client.next_message(timeout if client is clients[-1] and not wanted <= set(counts) else 0.5)
            except Exception:
                break
            body = str(message["body"])
            if body.startswith(tag + "-"):
                counts[int(body.split("-", 1)[1])] += 1
            if client is clients[-1] and wanted <= set(counts):
                # Everything is in; duplicates still on their way are picked up briefly.
                timeout = 1.0
    return counts


def report(name: str, load: Load, counts: collections.Counter) -> tuple[int, int]:
    lost = sorted(load.accepted - set(counts))
    duplicates = sum(n - 1 for n in counts.values() if n > 1)
    print(f"\n[{name}] accepted {len(load.accepted)}, arrived {len(counts)}, lost {len(lost)}, "
          f"duplicates {duplicates}, refusals {dict(load.refusals)}")
    return len(lost), duplicates


@pytest.fixture
def parts(tmp_path_factory):
    """A Prosody with offline storage, nginx in front of a socket path, alice logged in."""
    server = OffliningProsody(tmp_path_factory.mktemp("prosody"))
    server.start()
    socket_path = tmp_path_factory.mktemp("run") / "fastcgi.sock"
    web = Nginx(tmp_path_factory.mktemp("nginx"), socket_path).start()
    clients = [Client(f"alice@{DOMAIN}/crash", "pw", server.c2s_port)]
    yield server, web, socket_path, clients
    for client in clients:
        client.close()
    web.stop()
    server.stop()


def start_stanzad(workdir: Path, prosody: Prosody, extra: str) -> Stanzad:
    daemon = Stanzad(workdir, component_config(prosody.component_port, reconnect_max=1, extra=extra))
    daemon.start()
    daemon.wait_for_log("REST API listening")
    return daemon


def test_stanzad_killed_twice_under_load_loses_nothing_it_accepted(parts, tmp_path):
    prosody, web, socket_path, clients = parts
    extra = rest_extra(socket_path, tmp_path / "spool.sqlite")
    daemons = [start_stanzad(tmp_path, prosody, extra)]
    daemons[0].wait_for_log("component connected")
    load = Load(web, 5000, tag="k").start()
    try:
        for mark in (1500, 3000):
            load.wait_accepted(mark)
            daemons[-1].signal(signal.SIGKILL)
            daemons[-1].wait(10)
            daemons.append(start_stanzad(tmp_path, prosody, extra))
        load.join()
        counts = collect(clients, "k", load.accepted, 30)
    finally:
        for daemon in daemons:
            daemon.stop()
    lost, duplicates = report("stanzad kill -9 ×2, with storage", load, counts)
    assert lost == 0, f"lost {sorted(load.accepted - set(counts))[:20]}"
    # The second and third process sent what the one before left, with the original ids.
    assert any("another process left" in line for daemon in daemons[1:] for line in daemon.lines) or duplicates == 0
    with sqlite3.connect(tmp_path / "spool.sqlite") as db:
        assert db.execute("SELECT count(*) FROM outbox").fetchone()[0] == 0


def kill_prosody_twice(parts, tmp_path, spool: Path | None, tag: str):
    """5,000 REST messages while Prosody is kill -9'd and restarted twice; alice logs in again each time."""
    prosody, web, socket_path, clients = parts
    daemon = start_stanzad(tmp_path, prosody, rest_extra(socket_path, spool))
    try:
        daemon.wait_for_log("component connected")
        load = Load(web, 5000, tag=tag).start()
        for number, mark in enumerate((1500, 3000), start=2):
            load.wait_accepted(mark)
            prosody.process.send_signal(signal.SIGKILL)
            prosody.process.wait(10)
            prosody.start()
            daemon.wait_for_log("component connected", count=number)
            clients.append(Client(f"alice@{DOMAIN}/crash{number}", "pw", prosody.c2s_port))
        load.join()
        counts = collect(clients, tag, load.accepted, 30 if spool else 5)
    finally:
        daemon.stop()
    return load, counts, daemon


def test_prosody_killed_twice_under_load_loses_nothing_stanzad_accepted(parts, tmp_path):
    load, counts, daemon = kill_prosody_twice(parts, tmp_path, tmp_path / "spool.sqlite", "p")
    lost, duplicates = report("Prosody kill -9 ×2, with storage", load, counts)
    assert lost == 0, f"lost {sorted(load.accepted - set(counts))[:20]}"
    assert "will be sent again" in daemon.log() or duplicates == 0


def test_without_storage_a_server_crash_loses_what_was_written_to_it(parts, tmp_path):
    """The documented contrast: without [storage], 202 means "written to the component stream"; what the dying
    server had read and not yet routed is gone. The test reports how much; it asserts the accounting adds up."""
    load, counts, _ = kill_prosody_twice(parts, tmp_path, None, "n")
    lost, _ = report("Prosody kill -9 ×2, without storage", load, counts)
    assert len(set(counts) & load.accepted) + lost == 5000


def test_a_spool_that_cannot_be_opened_stops_stanzad_with_what_to_do(prosody, tmp_path):
    daemon = Stanzad(tmp_path, component_config(prosody.component_port,
                                                extra=f'[storage]\npath = "{tmp_path}/missing/spool.sqlite"\n')).start()
    assert daemon.wait(20) == 78
    assert (f"the spool cannot be opened problem=\"cannot open the spool {tmp_path}/missing/spool.sqlite: the directory "
            f"{tmp_path}/missing does not exist (create it, writable by stanzad)\"") in daemon.log()


def test_takeover_without_storage_is_refused(prosody, tmp_path):
    daemon = Stanzad(tmp_path, component_config(prosody.component_port), extra_args=["--takeover"]).start()
    assert daemon.wait(20) == 78
    assert "--takeover needs [storage]: the process being replaced hands over what it holds through the spool" in daemon.log()


def test_the_spool_holds_nothing_once_the_server_confirmed_and_metrics_show_its_depth(prosody, tmp_path):
    """A quiet link: the barrier after a burst empties the spool; stanzad_spool_depth says so."""
    socket_path = tmp_path / "fastcgi.sock"
    web = Nginx(tmp_path / "nginx", socket_path)
    (tmp_path / "nginx").mkdir()
    daemon = start_stanzad(tmp_path, prosody, rest_extra(socket_path, tmp_path / "spool.sqlite")
                           + '\n[metrics]\npath = "/metrics"\n')
    web.start()
    alice = Client(f"alice@{DOMAIN}/quiet", "pw", prosody.c2s_port)
    try:
        daemon.wait_for_log("component connected")
        for i in range(20):
            connection = http.client.HTTPConnection("127.0.0.1", web.port, timeout=10)
            connection.request("POST", f"/rest/message/chat/alice@{DOMAIN}", body=f"q-{i}",
                               headers={"Authorization": TOKEN, "Content-Type": "text/plain"})
            assert connection.getresponse().status == 202
        bodies = {str(alice.next_message(10)["body"]) for _ in range(20)}
        assert bodies == {f"q-{i}" for i in range(20)}
        deadline = time.monotonic() + 10
        while True:
            with sqlite3.connect(tmp_path / "spool.sqlite") as db:
                left = db.execute("SELECT count(*) FROM outbox").fetchone()[0]
            connection = http.client.HTTPConnection("127.0.0.1", web.port, timeout=10)
            connection.request("GET", "/metrics", headers={"Authorization": TOKEN})
            metrics = connection.getresponse().read().decode()
            if left == 0 and "stanzad_spool_depth 0" in metrics:
                break
            assert time.monotonic() < deadline, f"{left} entries left; {[l for l in metrics.splitlines() if 'spool' in l]}"
            time.sleep(0.1)  # polling a file another process writes: no event to wait for
    finally:
        alice.close()
        daemon.stop()
        web.stop()


def test_pull_route_updates_survive_a_kill_with_their_ids_and_acknowledged_ones_stay_gone(parts, tmp_path):
    prosody, web, socket_path, clients = parts
    alice = clients[0]
    spool = tmp_path / "spool.sqlite"
    extra = rest_extra(socket_path, spool) + f'\n[[route]]\nname = "inbox"\nto = ["inbox@{COMPONENT}"]\npull = true\n'

    def updates(query: str) -> dict:
        connection = http.client.HTTPConnection("127.0.0.1", web.port, timeout=30)
        connection.request("GET", f"/rest/updates/inbox?{query}", headers={"Authorization": TOKEN})
        response = connection.getresponse()
        assert response.status == 200
        return json.loads(response.read())

    def stored() -> int:
        with sqlite3.connect(spool) as db:
            return db.execute("SELECT count(*) FROM updates").fetchone()[0]

    daemon = start_stanzad(tmp_path, prosody, extra)
    try:
        daemon.wait_for_log("component connected")
        alice.loop.call_soon_threadsafe(lambda: [alice.xmpp.send_message(mto=f"inbox@{COMPONENT}", mbody=f"u{i}", mtype="chat")
                                                 for i in range(3)])
        first = updates("timeout=10&limit=1")["updates"][0]
        assert first["stanza"]["body"] == "u0"
        # The client handled u0: its offset acknowledges it.
        rest_ids = [u["update_id"] for u in updates(f"offset={first['update_id'] + 1}&timeout=0")["updates"]]
        while len(rest_ids) < 2:
            rest_ids += [u["update_id"] for u in updates(f"offset={first['update_id'] + 1}&timeout=5")["updates"]][len(rest_ids):]
        deadline = time.monotonic() + 10
        while stored() != 2:  # committed by the spool's thread: a file another process writes, polled
            assert time.monotonic() < deadline, f"{stored()} updates stored"
            time.sleep(0.05)
        daemon.signal(signal.SIGKILL)
        daemon.wait(10)
        daemon = start_stanzad(tmp_path, prosody, extra)
        daemon.wait_for_log("spool: updates kept from before count=2")
        daemon.wait_for_log("component connected")
        again = updates(f"offset={first['update_id'] + 1}&timeout=0")["updates"]
        assert [(u["update_id"], u["stanza"]["body"]) for u in again] == list(zip(rest_ids, ["u1", "u2"]))
        # New updates get ids after the kept ones.
        alice.loop.call_soon_threadsafe(lambda: alice.xmpp.send_message(mto=f"inbox@{COMPONENT}", mbody="u3", mtype="chat"))
        later = updates(f"offset={rest_ids[-1] + 1}&timeout=10")["updates"]
        assert [u["stanza"]["body"] for u in later] == ["u3"] and later[0]["update_id"] > rest_ids[-1]
    finally:
        daemon.stop()


def test_a_webhook_retry_waiting_at_shutdown_is_routed_again_by_the_next_start(prosody, tmp_path):
    from webhook_server import WebhookServer

    alice = Client(f"alice@{DOMAIN}/kept", "pw", prosody.c2s_port)

    hook = WebhookServer()
    # The first attempt is told to come back in 30 s; stanzad stops before that.
    hook.answer("hook", ((503, {"Retry-After": "30"}), "text/plain", "busy"), (200, "text/plain", "answered after the restart"))
    extra = (f'[storage]\npath = "{tmp_path}/spool.sqlite"\n\n[[route]]\nname = "hook"\nto = ["hook@{COMPONENT}"]\n'
             f'webhook = "http://127.0.0.1:{hook.port}/hook"\nformat = "text"\nretries = 3\ntimeout = 10\n')
    daemon = Stanzad(tmp_path, component_config(prosody.component_port, extra=extra)).start()
    try:
        daemon.wait_for_log("component connected")
        alice.loop.call_soon_threadsafe(lambda: alice.xmpp.send_message(mto=f"hook@{COMPONENT}", mbody="ping", mtype="chat"))
        daemon.wait_for_log("webhook attempt failed; retrying")
        daemon.stop()
        assert "webhook retry kept in the spool: the next start routes the stanza again" in daemon.log()
        with sqlite3.connect(tmp_path / "spool.sqlite") as db:
            assert db.execute("SELECT count(*) FROM deliveries").fetchone()[0] == 1
        daemon = Stanzad(tmp_path, component_config(prosody.component_port, extra=extra)).start()
        daemon.wait_for_log("spool: routing again stanzas a stopped stanzad kept count=1")
        reply = alice.next_message(15)
        assert str(reply["body"]) == "answered after the restart", "the sender heard nothing in between, then the answer"
        assert str(reply["from"]) == f"hook@{COMPONENT}"
        assert len(hook.requests_for("hook")) == 2
    finally:
        daemon.stop()
        hook.stop()
        alice.close()


def test_stanzas_queued_or_arriving_at_shutdown_are_routed_by_the_next_start(prosody, tmp_path):
    from test_shutdown import held_handler, send_with_id, wait_for_file_line

    alice = Client(f"alice@{DOMAIN}/queued", "pw", prosody.c2s_port)

    def kept() -> int:
        with sqlite3.connect(tmp_path / "spool.sqlite") as db:
            return db.execute("SELECT count(*) FROM deliveries").fetchone()[0]
    extra = f'[storage]\npath = "{tmp_path}/spool.sqlite"\n' + held_handler(tmp_path)
    daemon = Stanzad(tmp_path, component_config(prosody.component_port, extra=extra)).start()
    try:
        daemon.wait_for_log("component connected")
        send = lambda body: alice.loop.call_soon_threadsafe(lambda: send_with_id(alice, body, f"id-{body}"))  # noqa: E731
        send("m1")
        wait_for_file_line(tmp_path / "started", "started m1")
        # m2 waits in the route's queue (concurrency 1) or has not been taken yet when stanzad is told to stop; m3
        # arrives after: either way each is kept, not answered.
        send("m2")
        daemon.signal(signal.SIGTERM)
        daemon.wait_for_log("waiting for running handlers")
        send("m3")
        daemon.wait_for_log("stanzas this process will not handle are kept in the spool for the next one")
        deadline = time.monotonic() + 15
        while kept() != 2:  # committed by the spool's thread: a file another process writes, polled
            assert time.monotonic() < deadline, f"{kept()} stanzas kept; log:\n{daemon.log()}"
            time.sleep(0.05)
        (tmp_path / "release").touch()
        first = alice.next_message(15)
        assert str(first["body"]) == "done m1"
        assert daemon.wait(15) == 0
        assert kept() == 2
        assert (tmp_path / "started").read_text().split() == ["started", "m1"]
        daemon = Stanzad(tmp_path, component_config(prosody.component_port, extra=extra)).start()
        daemon.wait_for_log("spool: routing again stanzas a stopped stanzad kept count=2")
        replies = [alice.next_message(15) for _ in range(2)]
        # m2 (queued, or not yet taken) and m3 (read during the stop) are kept in the order they arrived, and the
        # next start routes them in that order (concurrency 1: the answers come in the same order).
        assert [(str(r["body"]), str(r["from"])) for r in replies] == [
            ("done m2", f"held@{COMPONENT}"), ("done m3", f"held@{COMPONENT}")], \
            "the sender heard nothing at the stop, then the answers, in order"
        assert kept() == 0
        assert daemon.log().count("spool: routing again stanzas a stopped stanzad kept") == 1, "routed once"
    finally:
        daemon.stop()
        alice.close()
