"""SPEC §18 take-over restart with real Prosody (component_conflict_resolve = "kick_old"), nginx and slixmpp: a
second stanzad started with --takeover while the first serves REST messages and an exec echo route at 200/s
each. The FastCGI socket is passed to both the way systemd's socket activation passes it (LISTEN_FDS), so the
kernel's backlog holds requests while one process stops accepting and the other starts."""

from __future__ import annotations

import collections
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ejabberd import Ejabberd
from harness import COMPONENT, DOMAIN, SECRET, Client, Prosody, Stanzad, component_config
from nginx import Nginx

TOKEN = "Bearer dGVzdC10b2tlbg=="
RATE = 200


class KickOldProsody(Prosody):
    def write_config(self) -> None:
        super().write_config()
        text = self.config.read_text()
        marker = f'Component "{COMPONENT}"\n'
        assert marker in text
        self.config.write_text(text.replace(marker, marker + '    component_conflict_resolve = "kick_old"\n'))


class Activated(Stanzad):
    """stanzad given an inherited listening socket as fd 3 with LISTEN_FDS=1 and LISTEN_PID = its own pid."""

    def __init__(self, *args, listener: socket.socket, **kwargs):
        super().__init__(*args, **kwargs)
        self.listener = listener

    def start(self) -> "Activated":
        fd = self.listener.fileno()
        environment = dict(os.environ if self.env is None else self.env, LISTEN_FDS="1")
        # A small launcher moves the socket to fd 3 and becomes stanzad (exec keeps its pid: LISTEN_PID).
        launcher = ("import os, sys; os.dup2(int(sys.argv[1]), 3); os.environ['LISTEN_PID'] = str(os.getpid()); "
                    "os.execv(sys.argv[2], sys.argv[2:])")
        self.process = subprocess.Popen([sys.executable, "-c", launcher, str(fd)] + self.args,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment,
                                        cwd=self.workdir, pass_fds=(fd,))
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self


class Paced(threading.Thread):
    """Calls `one(i)` RATE times a second until stopped."""

    def __init__(self, one):
        super().__init__(daemon=True)
        self.one = one
        self.done = threading.Event()
        self.count = 0

    def run(self) -> None:
        start = time.monotonic()
        while not self.done.is_set():
            self.one(self.count)
            self.count += 1
            delay = start + self.count / RATE - time.monotonic()
            if delay > 0:
                time.sleep(delay)


def spool_and_echo_route(workdir) -> str:
    """[storage] in `workdir` and an exec echo route that takes 0.2 s per stanza."""
    return f'''
[storage]
path = "{workdir}/spool.sqlite"

[[route]]
name = "echo"
to = ["echo@{COMPONENT}"]
exec = ["/bin/sh", "-c", "sleep 0.2; cat"]
format = "text"
concurrency = 128
in_flight = 512
'''


def send_echo(client: Client, i: int) -> None:
    """Echo request number i; its id is its body, so that a lost one can be looked for in the processes' logs."""
    def send() -> None:
        message = client.xmpp.make_message(mto=f"echo@{COMPONENT}", mbody=f"e-{i}", mtype="chat")
        message["id"] = f"e-{i}"
        message.send()
    client.loop.call_soon_threadsafe(send)


@pytest.mark.parametrize("server", ["prosody", "ejabberd"])
def test_a_takeover_under_load_refuses_no_request_and_loses_no_reply(server, tmp_path_factory):
    if server == "prosody":
        prosody = KickOldProsody(tmp_path_factory.mktemp("prosody"))
    else:
        # ejabberd admits a second connection for the component: the old process is stopped by SIGTERM.
        prosody = Ejabberd(str(tmp_path_factory.mktemp("ejabberd")), domain=DOMAIN, component=COMPONENT,
                           secret=SECRET, users={"alice": "pw", "bob": "pw"})
    prosody.start()
    workdir = tmp_path_factory.mktemp("stanzad")
    socket_path = workdir / "fastcgi.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(socket_path))
    listener.listen(512)
    web = Nginx(tmp_path_factory.mktemp("nginx"), socket_path).start()
    config = component_config(prosody.component_port, reconnect_max=1, extra=f'''
[rest]
listen = "systemd"
credentials = ["{TOKEN}"]

''' + spool_and_echo_route(workdir))
    old = Activated(workdir, config, listener=listener).start()
    old.wait_for_log("component connected")
    old.wait_for_log("REST API listening")
    alice = Client(f"alice@{DOMAIN}/r", "pw", prosody.c2s_port)
    bob = Client(f"bob@{DOMAIN}/e", "pw", prosody.c2s_port)
    statuses: collections.Counter = collections.Counter()
    local = threading.local()

    def post(i: int) -> None:
        body = json.dumps({"to": f"alice@{DOMAIN}", "type": "chat", "id": f"t-{i}", "body": f"t-{i}"})
        try:
            if getattr(local, "connection", None) is None:
                local.connection = http.client.HTTPConnection("127.0.0.1", web.port, timeout=30)
            local.connection.request("POST", "/rest", body=body,
                                     headers={"Authorization": TOKEN, "Content-Type": "application/json"})
            response = local.connection.getresponse()
            response.read()
            statuses[response.status] += 1
        except (OSError, http.client.HTTPException) as error:
            local.connection = None
            statuses[type(error).__name__] += 1

    rest, echoes = Paced(post), Paced(lambda i: send_echo(bob, i))
    new = None
    try:
        rest.start()
        echoes.start()
        time.sleep(1.5)  # steady load before the hand-over (a rate, not synchronisation)
        new = Activated(workdir, config, listener=listener, extra_args=["--takeover"]).start()
        new.wait_for_log("taking over: asking the running stanzad to stop")
        assert old.wait(30) == 0, old.log()
        time.sleep(1.5)  # steady load after it
    finally:
        rest.done.set()
        echoes.done.set()
        rest.join(10)
        echoes.join(10)
    try:
        sent_rest, sent_echo = rest.count, echoes.count
        received = collections.Counter()
        deadline = time.monotonic() + 30
        while len(received) < sent_rest and time.monotonic() < deadline:
            try:
                received[str(alice.next_message(2)["body"])] += 1
            except Exception:
                break
        replies, bounced, conditions = collections.Counter(), 0, collections.Counter()
        deadline = time.monotonic() + 30
        while len(replies) + bounced < sent_echo and time.monotonic() < deadline:
            try:
                message = bob.next_message(3)
            except Exception:
                break
            if message["type"] == "error":
                bounced += 1
                conditions[message["error"]["condition"]] += 1
            else:
                replies[str(message["body"])] += 1
        # Stanzas the old process would not handle any more (still queued, or read after its router stopped) are kept
        # in the spool and routed by the new one, each once.
        kept = old.log().count('queue="kept in the spool at shutdown"')
        routed_again = sum(int(n) for n in re.findall(r"spool: routing again stanzas a stopped stanzad kept count=(\d+)",
                                                      new.log() if new else ""))
        lost_rest = sent_rest - len([b for b in received if b.startswith("t-")])
        lost_echo = sent_echo - len(replies) - bounced
        print(f"\n[take-over, {server}] REST sent {sent_rest}, statuses {dict(statuses)}, arrived "
              f"{len(received)}, duplicates {sum(n - 1 for n in received.values())}; echo sent {sent_echo}, "
              f"replied {len(replies)}, bounced {bounced} {dict(conditions)}, lost {lost_echo}, duplicates {sum(n - 1 for n in replies.values())}; "
              f"kept by the old process {kept}, routed again by the new one {routed_again}")
        assert routed_again == kept, "every stanza the old process kept was routed by the new one"
        assert statuses[202] == sent_rest, f"REST requests refused during the take-over: {dict(statuses)}"
        assert lost_rest == 0
        missing = sorted(set(f'e-{i}' for i in range(sent_echo)) - set(replies))[:10]

        def seen(ids: list[str]) -> str:
            """Where each lost request was last seen: in which process's log lines (debug) its id appears."""
            logs = {"old": old.log(), "new": new.log() if new else ""}
            found = "; ".join(f"{i}: " + ", ".join(f"{name}: " + (" | ".join(
                line.strip()[:200] for line in text.splitlines() if f"={i} " in line) or "-")
                for name, text in logs.items()) for i in ids)
            problems = [f"{name}: {line.strip()[:200]}" for name, text in logs.items() for line in text.splitlines()
                        if " WARNING " in line or " ERROR " in line][:10]
            return found + "; warnings and errors: " + (" | ".join(problems) or "none")
        if server == "prosody":
            # The old process holds its link (writes nothing) while Prosody closes it: Prosody 0.12 drops a closing
            # component connection's unwritten stanzas when that component writes meanwhile (1 run in 4-6 lost 2-5
            # before the hold).
            assert lost_echo == 0, f"echo replies lost: {missing}; {seen(missing)}"
        else:
            # ejabberd routes to both links until the old one closes its stream; what it routed to that link and had
            # not written when it handled the close is dropped by ejabberd (its mailbox goes with the connection's
            # process). Measured at this rate: 0 lost in 49 of 54 runs, 1 in 3, 2 in a row in 2 (README). More than 3
            # is not that. A failure says where each lost request was last seen in the two processes' logs.
            assert lost_echo <= 3, f"echo replies lost: {missing}; {seen(missing)}"
        assert "stanzad stopped" in old.log()
        # The old process left the link to the new one: thrown out by Prosody, or leaving by itself on ejabberd.
        assert ("another process took over the component link" in old.log()
                or "handing it the component link" in old.log())
    finally:
        if new:
            new.stop()
        old.stop()
        alice.close()
        bob.close()
        web.stop()
        prosody.stop()
        listener.close()


def test_a_process_thrown_out_by_kick_old_stops_instead_of_throwing_the_other_out(tmp_path_factory):
    prosody = KickOldProsody(tmp_path_factory.mktemp("prosody"))
    prosody.start()
    first = second = None
    try:
        config = component_config(prosody.component_port, reconnect_max=1)
        first = Stanzad(tmp_path_factory.mktemp("first"), config).start()
        first.wait_for_log("component connected")
        second = Stanzad(tmp_path_factory.mktemp("second"), config).start()
        second.wait_for_log("component connected")
        assert first.wait(20) == 0
        assert "another process took over the component link (conflict); not reconnecting" in first.log()
        assert len([line for line in second.lines if "component connected" in line]) == 1, "never thrown out"
    finally:
        for daemon in (first, second):
            if daemon:
                daemon.stop()
        prosody.stop()


def test_a_plain_restart_under_load_loses_no_inbound_stanza(prosody, tmp_path):
    """SIGTERM, then a new start (no take-over), with [storage], under 200 echo requests/s: every request is answered,
    by the old process, by the new one (what the old one kept: still queued, read after its router stopped, or read
    after it closed its side of the stream), or bounced by Prosody while no process is connected. None is lost
    silently."""
    workdir = tmp_path / "stanzad"
    workdir.mkdir()
    config = component_config(prosody.component_port, reconnect_max=1, extra=spool_and_echo_route(workdir))
    old = Stanzad(workdir, config).start()
    old.wait_for_log("component connected")
    bob = Client(f"bob@{DOMAIN}/restart", "pw", prosody.c2s_port)

    echoes = Paced(lambda i: send_echo(bob, i))
    new = None
    try:
        echoes.start()
        time.sleep(1.5)  # steady load before the restart (a rate, not synchronisation)
        old.signal(signal.SIGTERM)
        assert old.wait(30) == 0, old.log()
        new = Stanzad(workdir, config, name="stanzad-new.toml").start()
        new.wait_for_log("component connected")
        time.sleep(1.5)  # steady load after it
    finally:
        echoes.done.set()
        echoes.join(10)
    try:
        sent = echoes.count
        replies, conditions, bounced_ids = collections.Counter(), collections.Counter(), set()
        deadline = time.monotonic() + 30
        while sum(conditions.values()) + len(replies) < sent and time.monotonic() < deadline:
            try:
                message = bob.next_message(3)
            except Exception:
                break
            if message["type"] == "error":
                conditions[f'{message["error"]["condition"]} "{message["error"]["text"]}" from {message["from"]}'] += 1
                bounced_ids.add(str(message["id"]))
            else:
                replies[str(message["body"])] += 1
        bounced = sum(conditions.values())
        kept = old.log().count('queue="kept in the spool at shutdown"')
        routed_again = sum(int(n) for n in re.findall(r"spool: routing again stanzas a stopped stanzad kept count=(\d+)", new.log()))
        lost = sent - len(replies) - bounced
        print(f"\n[restart] echo sent {sent}, replied {len(replies)}, bounced {bounced} {dict(conditions)}, lost {lost}, "
              f"kept by the old process {kept}, routed again by the new one {routed_again}")
        assert routed_again == kept
        missing = sorted(set(f"e-{i}" for i in range(sent)) - set(replies) - bounced_ids)[:10]
        assert lost == 0, f"echo requests neither answered nor bounced: {missing}"
        assert "component stream closed for shutdown" in old.log()
    finally:
        if new:
            new.stop()
        old.stop()
        bob.close()
