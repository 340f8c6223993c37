"""SPEC §20 on a real ejabberd 23.01: three stanzad instances serve one component domain, balanced by ejabberd
(examples/ejabberd/cluster.yml: domain_balancing bare_source, component_number 3, one instance_jid each), with a
real nginx upstream over their three FastCGI sockets (examples/nginx/cluster.conf). Ten slixmpp users send chat
messages to an exec echo route; REST iq pings go through nginx; one instance is kill -9'd under load.

Run: cd tests/integration && STANZAD_BIN=../../.build/debug/stanzad /usr/bin/python3 -m pytest -q \
        -p no:cacheprovider -s test_scale.py
"""

from __future__ import annotations

import asyncio
import collections
import http.client
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ejabberd import Ejabberd
import fcgi_client
from harness import COMPONENT, DOMAIN, REPO, SECRET, Client, Stanzad, component_config, free_port, wait_for_port

CLUSTER_YML = REPO / "examples" / "ejabberd" / "cluster.yml"
CLUSTER_CONF = REPO / "examples" / "nginx" / "cluster.conf"
TOKEN = "Bearer dGVzdC10b2tlbg=="
INSTANCES = 3
# Ten senders. erlang:phash2({User, <<"example.test">>, <<>>}, 3), the hash bare_source balances on, puts
# user3-6 on one slot and user0,2,8 and user1,7,9 on the others: 40/30/30.
USERS = [f"user{i}" for i in range(10)]
RATE = 250  # echoes a second, all users together (a pace, not synchronisation)


class ClusterEjabberd(Ejabberd):
    """The harness's ejabberd with its component listener replaced by examples/ejabberd/cluster.yml, included as
    its comment says; only the port, the domains (example.org → example.test) and the secret are this test's."""

    def _write_files(self) -> None:
        super()._write_files()
        config = self.etc_dir / "ejabberd.yml"
        text, count = re.subn(r'  -\n    port: \d+\n    ip: "127\.0\.0\.1"\n    module: ejabberd_service\n(?:      .*\n|    .*\n)*?(?=auth_method)',
                              "", config.read_text())
        assert count == 1, text
        snippet = CLUSTER_YML.read_text()
        assert snippet.count("port: 5347") == 1 and "component_number: 3" in snippet and "global_routes: false" in snippet
        snippet = (snippet.replace("port: 5347", f"port: {self.component_port}")
                   .replace("example.org", DOMAIN).replace("change-me-to-a-long-random-secret", SECRET))
        (self.etc_dir / "cluster.yml").write_text(snippet)
        config.write_text(text + f"include_config_file:\n  {self.etc_dir / 'cluster.yml'}:\n"
                                 "    allow_only: [listen, domain_balancing]\n")


class ClusterNginx:
    """nginx serving examples/nginx/cluster.conf with its three TCP upstream servers replaced by the instances'
    unix sockets and its listen port by a free one."""

    def __init__(self, workdir: Path, sockets: list[Path]):
        self.workdir = Path(workdir)
        self.port = free_port()
        self.sockets = sockets
        self.process: subprocess.Popen | None = None

    def start(self) -> "ClusterNginx":
        block = CLUSTER_CONF.read_text()
        assert "listen 127.0.0.1:8080;" in block
        block = block.replace("listen 127.0.0.1:8080;", f"listen 127.0.0.1:{self.port};")
        for index, path in enumerate(self.sockets):
            address = f"server 10.0.0.{index + 1}:9000"
            assert address in block
            block = block.replace(address, f"server unix:{path}")
        (self.workdir / "cluster.conf").write_text(block)
        shutil.copy("/etc/nginx/fastcgi_params", self.workdir / "fastcgi_params")
        temp = self.workdir / "tmp"
        temp.mkdir(exist_ok=True)
        config = self.workdir / "nginx.conf"
        config.write_text(f"""
{"user root root;" if os.geteuid() == 0 else ""}
daemon off;
worker_processes 1;
error_log {self.workdir}/error.log warn;
pid {self.workdir}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {temp}/body;
    fastcgi_temp_path {temp}/fastcgi;
    proxy_temp_path {temp}/proxy;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    include {self.workdir}/cluster.conf;
}}
""")
        check = subprocess.run(["nginx", "-t", "-p", str(self.workdir), "-c", str(config)], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        self.process = subprocess.Popen(["nginx", "-p", str(self.workdir), "-c", str(config)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def instance_config(port: int, index: int, socket_path: Path, extra: str = "", **component) -> str:
    return component_config(port, instance_jid=f"i{index}.{COMPONENT}", **component, extra=extra + f'''
[rest]
listen = "unix:{socket_path}"
credentials = ["{TOKEN}"]

[metrics]

[[route]]
name = "echo"
to = ["echo@{COMPONENT}"]
exec = ["/bin/cat"]
format = "text"
concurrency = 16
queue = 1000
''')


def start_instance(workdir: Path, port: int, index: int, extra: str = "", **component) -> Stanzad:
    daemon = Stanzad(workdir, instance_config(port, index, workdir / "fastcgi.sock", extra, **component)).start()
    # Both links up (the main link and the instance link log "component connected" each), REST listening.
    daemon.wait_for_log("component connected", count=2)
    daemon.wait_for_log("REST API listening")
    return daemon


def handled(daemon: Stanzad) -> list[tuple[str, str]]:
    """(stanza id, sender's bare JID) of every echo this instance answered, from its log."""
    found = []
    for line in daemon.log().splitlines():
        if "stanza handled" in line and "route=echo" in line:
            sid = re.search(r"stanza\.id=(\S+)", line)
            sender = re.search(r" from=([^/\s]+)", line)
            if sid and sender:
                found.append((sid.group(1), sender.group(1)))
    return found


class Load:
    """Sends `count` echo messages round-robin from the users at RATE a second (ids `<tag>-<n>`), and collects the
    replies of every user on their own loops."""

    def __init__(self, users: dict[str, Client], tag: str, count: int):
        self.users, self.tag, self.count = users, tag, count
        self.sent: dict[str, tuple[str, float]] = {}  # id → (user, time sent)
        self.replies: dict[str, float] = {}  # id → time replied
        self.bounced: dict[str, str] = {}
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.started = threading.Event()
        self.half = threading.Event()

    def send_all(self) -> None:
        names = list(self.users)
        start = time.monotonic()
        self.started.set()
        for n in range(self.count):
            user = names[n % len(names)]
            sid = f"{self.tag}-{n}"
            with self.lock:
                self.sent[sid] = (user, time.monotonic())
            self.users[user].send_raw(f"<message xmlns='jabber:client' to='echo@{COMPONENT}' type='chat' id='{sid}'>"
                                      f"<body>{sid}</body></message>")
            if n == self.count // 2:
                self.half.set()
            delay = start + (n + 1) / RATE - time.monotonic()
            if delay > 0:
                time.sleep(delay)

    def collect(self, until: float, expected: set[str] | None = None) -> None:
        """Takes replies until every message (or every one in `expected`) is answered or bounced, or the deadline:
        one reader per user waits for that user's next message, and this waits for the readers' news."""
        news = threading.Condition(self.lock)
        stop = threading.Event()

        def done() -> bool:
            return (len(self.replies) + len(self.bounced) >= self.count
                    or (expected is not None and expected <= set(self.replies)))

        def read(client: Client) -> None:
            while not stop.is_set():
                try:
                    message = client.next_message(0.5)
                except Exception:
                    continue  # nothing within 0.5 s: look at `stop` and wait again
                with news:
                    if message["type"] == "error":
                        self.bounced[str(message["id"])] = message["error"]["condition"]
                    elif str(message["body"]).startswith(self.tag + "-"):
                        self.replies.setdefault(str(message["body"]), time.monotonic())
                    news.notify_all()

        readers = [threading.Thread(target=read, args=(client,), daemon=True) for client in self.users.values()]
        for reader in readers:
            reader.start()
        with news:
            news.wait_for(done, timeout=max(0.0, until - time.monotonic()))
        stop.set()
        for reader in readers:
            reader.join(5)

    @property
    def lost(self) -> list[str]:
        return [sid for sid in self.sent if sid not in self.replies and sid not in self.bounced]


def rest_ping(port: int) -> tuple[int, dict | str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", f"/rest/ping/{DOMAIN}", headers={"Authorization": TOKEN, "Accept": "application/json"})
        response = connection.getresponse()
        body = response.read().decode()
        try:
            return response.status, json.loads(body)
        except ValueError:
            return response.status, body
    finally:
        connection.close()


def pings(port: int, count: int) -> collections.Counter:
    """`count` REST iq pings through nginx, eight at a time; statuses counted, and every 200 checked to be the
    server's result addressed to the component domain (as without instance_jid)."""
    statuses: collections.Counter = collections.Counter()
    with ThreadPoolExecutor(8) as pool:
        for status, body in pool.map(lambda _: rest_ping(port), range(count)):
            statuses[status] += 1
            if status == 200:
                assert isinstance(body, dict) and body.get("type") == "result", body
                assert body.get("from") == DOMAIN and body.get("to") == COMPONENT, body
    return statuses


def test_three_instances_share_the_load_and_survive_one_killed(tmp_path_factory):
    server = ClusterEjabberd(str(tmp_path_factory.mktemp("ejabberd")), domain=DOMAIN, component=COMPONENT,
                             secret=SECRET, users={name: "pw" for name in USERS})
    server.start()
    daemons: list[Stanzad] = []
    clients: dict[str, Client] = {}
    web = None
    try:
        workdirs = [tmp_path_factory.mktemp(f"i{i}") for i in range(1, INSTANCES + 1)]
        # One after the other: each takes the next balancing slot.
        for index, workdir in enumerate(workdirs, start=1):
            daemons.append(start_instance(workdir, server.component_port, index))
        web = ClusterNginx(tmp_path_factory.mktemp("nginx"), [w / "fastcgi.sock" for w in workdirs]).start()
        with ThreadPoolExecutor(len(USERS)) as pool:
            for name, client in zip(USERS, pool.map(lambda n: Client(f"{n}@{DOMAIN}/r", "pw", server.c2s_port), USERS)):
                clients[name] = client

        health = [rest_health(web.port) for _ in range(6)]
        assert {h["instance_jid"] for h in health} <= {f"i{i}.{COMPONENT}" for i in range(1, 4)}, health
        assert all(h["component"] == "connected" and h["instance"] == "connected" for h in health), health
        # Each instance domain answers a ping itself (a monitor can check every instance) and nothing else.
        user = clients[USERS[0]]
        for index in range(1, INSTANCES + 1):
            pong = user.iq(f"<iq xmlns='jabber:client' type='get' to='i{index}.{COMPONENT}' id='ip{index}'>"
                           "<ping xmlns='urn:xmpp:ping'/></iq>")
            assert pong["type"] == "result" and str(pong["from"]) == f"i{index}.{COMPONENT}", pong
        other = user.iq(f"<iq xmlns='jabber:client' type='get' to='i1.{COMPONENT}' id='iv1'>"
                        "<query xmlns='jabber:iq:version'/></iq>")
        assert other["type"] == "error" and other["error"]["condition"] == "service-unavailable", other

        # 1. 3,000 echoes, REST pings beside them: everything answered, spread over the three.
        load = Load(clients, "a", 3000)
        sender = threading.Thread(target=load.send_all, daemon=True)
        sender.start()
        load.started.wait(5)
        ping_statuses = pings(web.port, 300)
        sender.join(60)
        load.collect(time.monotonic() + 30)
        spread = [len([sid for sid, _ in handled(d) if sid.startswith("a-")]) for d in daemons]
        print(f"\n[scale] 3000 echoes from {len(USERS)} users: answered {len(load.replies)}, bounced "
              f"{len(load.bounced)}, lost {len(load.lost)}; per instance {spread} "
              f"({', '.join(f'{100 * n / 3000:.0f}%' for n in spread)}); REST pings {dict(ping_statuses)}")
        assert not load.lost and not load.bounced, f"lost {load.lost[:10]}, bounced {list(load.bounced.items())[:10]}"
        assert sum(spread) == 3000, spread
        assert all(n >= 600 for n in spread), f"each instance should answer at least 20%: {spread}"
        assert ping_statuses == {200: 300}, ping_statuses
        samples = [metrics(d) for d in daemons]
        served = [int(s.get('stanzad_rest_requests_total{status="200"}', 0)) for s in samples]
        print(f"[scale] REST requests answered 200 per instance (pings and health checks through nginx): {served}")
        assert all(s.get("stanzad_instance_link_up") == 1.0 and s.get("stanzad_link_up") == 1.0 for s in samples), samples
        assert all(n > 0 for n in served), served

        # Which instance holds which sender (bare_source): from the logs.
        owner = {}
        for index, daemon in enumerate(daemons):
            for _, sender_jid in handled(daemon):
                owner[sender_jid.split("@")[0]] = index
        assert len(owner) == len(USERS), owner

        # 2. kill -9 the second instance in the middle of 1,500 more echoes and 200 pings, and start it again at
        # once (as systemd's Restart= would): ejabberd keeps its balancing slot, so its senders are not moved to
        # the others; what they send until the slot is taken again is dropped.
        victim = 1
        victims_users = {u for u, i in owner.items() if i == victim}
        load2 = Load(clients, "b", 1500)
        sender = threading.Thread(target=load2.send_all, daemon=True)
        sender.start()
        load2.half.wait(10)
        held_before = {sid for sid, _ in handled(daemons[victim])}
        killed_at = time.monotonic()
        daemons[victim].process.send_signal(signal.SIGKILL)
        daemons[victim].process.wait(10)
        with ThreadPoolExecutor(1) as pool:
            pinging = pool.submit(pings, web.port, 200)
            dead = daemons[victim]
            daemons[victim] = start_instance(workdirs[victim], server.component_port, victim + 1)
            restarted_at = time.monotonic()
            ping_statuses2 = pinging.result(60)
        sender.join(30)
        must = {sid for sid, (user, sent) in load2.sent.items() if user not in victims_users or sent >= restarted_at}
        load2.collect(time.monotonic() + 10, expected=must)
        lost = load2.lost
        in_flight = [sid for sid in lost if load2.sent[sid][1] < killed_at]
        gap = [sid for sid in lost if killed_at <= load2.sent[sid][1] < restarted_at]
        victims_in_gap = [sid for sid, (user, sent) in load2.sent.items()
                          if user in victims_users and killed_at <= sent < restarted_at]
        handled_by_dead = {sid for sid, _ in handled(dead)}
        print(f"[scale] kill -9 of instance 2 (senders {sorted(victims_users)}) mid-load at {RATE}/s, restarted at "
              f"once: back after {restarted_at - killed_at:.2f} s; 1500 echoes sent, answered {len(load2.replies)}, "
              f"bounced {len(load2.bounced)}, lost {len(lost)}: {len(in_flight)} in flight at the kill "
              f"({len([s for s in in_flight if s in handled_by_dead - held_before])} of them handled by the dead "
              f"instance, reply unsent), {len(gap)} of the {len(victims_in_gap)} its senders sent while its slot "
              f"was empty, {len(lost) - len(in_flight) - len(gap)} after; REST pings through nginx "
              f"{dict(ping_statuses2)}")
        strays = [sid for sid in lost + list(load2.bounced) if load2.sent[sid][0] not in victims_users]
        assert not strays, f"messages of senders on the surviving instances were lost: {strays[:10]}"
        assert must <= set(load2.replies), "everything not routed to the dead instance is answered"
        assert ping_statuses2 == {200: 200}, ping_statuses2
    finally:
        for client in clients.values():
            client.close()
        for daemon in daemons:
            daemon.stop()
        if web:
            web.stop()
        server.stop()


def metrics(daemon: Stanzad) -> dict[str, float]:
    """The instance's Prometheus samples, read from its own FastCGI socket (not through the balancing upstream)."""
    status, _, body = asyncio.run(fcgi_client.call(str(daemon.workdir / "fastcgi.sock"), "GET", "/metrics"))
    assert status == 200, body
    samples = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def rest_health(port: int) -> dict:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", "/rest/health")
        response = connection.getresponse()
        return json.loads(response.read())
    finally:
        connection.close()


def test_each_instance_gets_the_answers_to_its_own_pings_and_spool_barriers(tmp_path_factory):
    """The main link's keepalive pings and [storage] barriers go from the instance domain: with bare_source, an
    answer addressed to the component domain would reach the instance that the server domain's hash picks (one of
    three), and the other two would reconnect after ping_timeout and never see their spool confirmed."""
    senders = ["user0", "user1", "user3"]  # one on each balancing slot
    server = ClusterEjabberd(str(tmp_path_factory.mktemp("ejabberd")), domain=DOMAIN, component=COMPONENT,
                             secret=SECRET, users={name: "pw" for name in senders})
    server.start()
    daemons: list[Stanzad] = []
    clients: dict[str, Client] = {}
    try:
        workdirs = [tmp_path_factory.mktemp(f"p{i}") for i in range(1, INSTANCES + 1)]
        for index, workdir in enumerate(workdirs, start=1):
            daemons.append(start_instance(workdir, server.component_port, index, ping_interval=1, ping_timeout=2,
                                          extra=f'[storage]\npath = "{workdir}/spool.sqlite"\n'))
        for name in senders:
            clients[name] = Client(f"{name}@{DOMAIN}/r", "pw", server.c2s_port)
        load = Load(clients, "p", 90)
        load.send_all()
        load.collect(time.monotonic() + 15)
        assert not load.lost and not load.bounced
        assert all(handled(d) for d in daemons), "each instance answered some: its spool had barriers to confirm"
        for daemon in daemons:
            # Three keepalive pings of the main link, each answered before the next (else: "no reply to ping").
            daemon.wait_for_log(rf"link idle, pinging the server .*component={re.escape(COMPONENT)}\b", count=3, timeout=15)
        # A graceful restart of one instance under load (stop, then start: a --takeover would find every balancing
        # slot taken): it stops without waiting for anything but its last barrier, and its senders lose only what
        # they send while its slot is empty.
        owner = {sender.split("@")[0]: i for i, d in enumerate(daemons) for _, sender in handled(d)}
        victim = 1
        victims = {u for u, i in owner.items() if i == victim}
        restart = Load(clients, "g", 750)
        sender = threading.Thread(target=restart.send_all, daemon=True)
        sender.start()
        restart.half.wait(10)
        old = daemons[victim]
        stopping = time.monotonic()
        old.stop()
        stopped = time.monotonic()
        assert old.process.returncode == 0
        daemons[victim] = start_instance(workdirs[victim], server.component_port, victim + 1, ping_interval=1, ping_timeout=2,
                                         extra=f'[storage]\npath = "{workdirs[victim]}/spool.sqlite"\n')
        started = time.monotonic()
        sender.join(30)
        must = {sid for sid, (user, sent) in restart.sent.items() if user not in victims or sent >= started}
        restart.collect(time.monotonic() + 10, expected=must)
        print(f"\n[scale] graceful restart of instance 2 under load: stopped in {stopped - stopping:.2f} s, connected "
              f"again {started - stopped:.2f} s later; {len(restart.lost)} of its senders' messages lost while its slot "
              f"was empty, {len(restart.sent) - len(restart.lost)} of 750 answered")
        assert must <= set(restart.replies)
        assert "kept for the next start" not in old.log(), "the last barrier confirmed everything it wrote"
        for daemon in daemons:
            daemon.stop()
        for index, (daemon, workdir) in enumerate(zip(daemons, workdirs), start=1):
            log = daemon.log()
            assert "no reply to ping" not in log, f"instance {index}:\n{log[-3000:]}"
            assert "component link down" not in log, f"instance {index}:\n{log[-3000:]}"
            with sqlite3.connect(workdir / "spool.sqlite") as db:
                left = db.execute("SELECT count(*) FROM outbox").fetchone()[0]
            assert left == 0, f"instance {index}: {left} replies never confirmed by a barrier"
        print(f"[scale] pings and barriers: every instance's main link answered, spools empty after "
              f"{len(load.replies) + len(restart.replies)} echoes")
    finally:
        for client in clients.values():
            client.close()
        for daemon in daemons:
            daemon.stop()
        server.stop()
