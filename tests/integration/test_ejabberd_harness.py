"""Checks that tests/integration/ejabberd.py really gives a working private ejabberd.

Run: /usr/bin/python3 -m pytest -q tests/integration/test_ejabberd_harness.py
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import socket
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ejabberd import MARKER_VAR, Ejabberd  # noqa: E402

slixmpp = pytest.importorskip("slixmpp")

DOMAIN = "example.test"
COMPONENT = "bot.example.test"
SECRET = "s3cret"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    ej = Ejabberd(str(tmp_path_factory.mktemp("ejabberd")), users={"alice": "pw", "bob": "secret-b"})
    ej.start()
    print(f"ejabberd started in {ej.startup_seconds:.2f} s")
    yield ej
    ej.stop()


# ---------------------------------------------------------------- slixmpp client

def run_client(port: int, jid: str, password: str, plain: bool = False, timeout: float = 20) -> dict:
    """Log in with slixmpp, ping the server domain, ask its version; return what happened."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        client = slixmpp.ClientXMPP(jid, password, sasl_mech="PLAIN" if plain else None)
        if plain:
            client["feature_mechanisms"].unencrypted_plain = True  # PLAIN over a cleartext stream
        client.register_plugin("xep_0199")
        client.register_plugin("xep_0092")
        outcome: dict = {}
        done = loop.create_future()

        async def session_start(_event):
            try:
                outcome["mech"] = client["feature_mechanisms"].mech.name
                outcome["bound"] = str(client.boundjid)
                outcome["rtt"] = await client["xep_0199"].ping(DOMAIN, timeout=5)
                version = await client["xep_0092"].get_version(DOMAIN, timeout=5)
                outcome["version"] = version["software_version"]["name"]
            except Exception as exc:  # noqa: BLE001
                outcome["error"] = repr(exc)
            client.disconnect()
            if not done.done():
                done.set_result(True)

        def failed(_event=None):
            outcome["error"] = "failed_auth"
            if not done.done():
                done.set_result(False)

        closed = loop.create_future()
        client.add_event_handler("session_start", session_start)
        client.add_event_handler("failed_all_auth", failed)
        client.add_event_handler("disconnected", lambda _e: closed.done() or closed.set_result(True))
        client.add_event_handler("connection_failed", lambda e: outcome.setdefault("error", f"conn: {e}"))
        # Plain TCP; ejabberd offers no STARTTLS here (no certificate, starttls: false).
        client.connect(("127.0.0.1", port), use_ssl=False, force_starttls=False, disable_starttls=True)
        loop.run_until_complete(asyncio.wait_for(done, timeout))
        client.disconnect()
        try:
            loop.run_until_complete(asyncio.wait_for(asyncio.shield(closed), 5))
        except asyncio.TimeoutError:
            client.abort()
        return outcome
    finally:
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for t in pending:
            t.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.close()
        asyncio.set_event_loop(None)


def test_client_logs_in_scram_and_pings_server(server):
    out = run_client(server.c2s_port, "alice@example.test/harness", "pw")
    assert "error" not in out, out
    assert out["mech"].startswith("SCRAM-"), out
    assert out["bound"].startswith("alice@example.test/"), out
    assert isinstance(out["rtt"], float) and out["rtt"] < 5
    assert out["version"] == "ejabberd"


def test_client_logs_in_with_plain(server):
    out = run_client(server.c2s_port, "bob@example.test/plain", "secret-b", plain=True)
    assert "error" not in out, out
    assert out["mech"] == "PLAIN"
    assert isinstance(out["rtt"], float)


def test_wrong_password_is_rejected(server):
    out = run_client(server.c2s_port, "alice@example.test/x", "nope", timeout=15)
    assert out.get("error") == "failed_auth", out


def test_users_registered_via_ctl(server):
    users = server.ctl("registered_users", DOMAIN).stdout.split()
    assert sorted(users) == ["alice", "bob"]


# ---------------------------------------------------------------- raw XEP-0114

class RawComponent:
    def __init__(self, port: int, to: str = COMPONENT):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.buf = b""
        self.sock.sendall(
            f"<stream:stream xmlns='jabber:component:accept' "
            f"xmlns:stream='http://etherx.jabber.org/streams' to='{to}'>".encode())
        header = self.read_until(rb"<stream:stream[^>]*>")
        self.stream_id = re.search(rb"\sid=['\"]([^'\"]+)['\"]", header).group(1).decode()

    def read_until(self, pattern: bytes, timeout: float = 5) -> bytes:
        deadline = time.monotonic() + timeout
        while True:
            m = re.search(pattern, self.buf, re.S)
            if m:
                self.buf = self.buf[m.end():]
                return m.group(0)
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {pattern!r} in {self.buf!r}")
            self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(f"closed; buffer {self.buf!r}")
            self.buf += chunk

    def handshake(self, secret: str, upper: bool = False) -> bytes:
        digest = hashlib.sha1((self.stream_id + secret).encode()).hexdigest()
        self.sock.sendall(f"<handshake>{digest.upper() if upper else digest}</handshake>".encode())
        return self.read_until(rb"<handshake\s*/>|<handshake>\s*</handshake>|<stream:error>.*?</stream:error>")

    def close(self) -> None:
        try:
            self.sock.sendall(b"</stream:stream>")
        except OSError:
            pass
        self.sock.close()


def test_component_handshake_and_ping_server(server):
    comp = RawComponent(server.component_port)
    try:
        assert comp.stream_id
        assert re.fullmatch(rb"<handshake\s*/>|<handshake>\s*</handshake>", comp.handshake(SECRET))
        comp.sock.sendall(f"<iq type='get' id='cping1' from='{COMPONENT}' to='{DOMAIN}'>"
                          f"<ping xmlns='urn:xmpp:ping'/></iq>".encode())
        reply = comp.read_until(rb"<iq\b[^>]*\bid=['\"]cping1['\"][^>]*?(/>|>.*?</iq>)")
        assert re.search(rb"type=['\"]result['\"]", reply), reply
        assert re.search(rb"from=['\"]example\.test['\"]", reply), reply
        assert re.search(rb"to=['\"]bot\.example\.test['\"]", reply), reply
    finally:
        comp.close()


def test_component_wrong_secret_not_authorized(server):
    comp = RawComponent(server.component_port)
    try:
        reply = comp.handshake("wrong-secret")
        assert b"<stream:error>" in reply and b"<not-authorized" in reply, reply
    finally:
        comp.close()


def test_component_uppercase_hex_is_rejected(server):
    # ejabberd compares the handshake digest as a case-sensitive string: lowercase hex only.
    comp = RawComponent(server.component_port)
    try:
        reply = comp.handshake(SECRET, upper=True)
        assert b"<not-authorized" in reply, reply
    finally:
        comp.close()


def test_unknown_component_host_is_refused(server):
    comp = RawComponent(server.component_port, to="other.example.test")
    try:
        reply = comp.handshake(SECRET)
        assert b"<stream:error>" in reply, reply
    finally:
        comp.close()


def test_log_text(server):
    log = server.log_text()
    assert f"is started in the node {server.node}" in log
    assert f"127.0.0.1:{server.component_port} for ejabberd_service" in log


# ---------------------------------------------------------------- lifecycle / cleanup

def _ps() -> list[tuple[int, str, str, str]]:
    """(pid, stat, comm, args) of every process."""
    out = subprocess.run(["ps", "-eo", "pid=,stat=,comm=,args="], capture_output=True, text=True,
                         check=True).stdout
    rows = []
    for line in out.splitlines():
        pid, stat, comm, args = (line.strip().split(None, 3) + ["", ""])[:4]
        rows.append((int(pid), stat, comm, args))
    return rows


def _live_with_marker(marker: str) -> list[int]:
    pids = []
    for pid, stat, _comm, _args in _ps():
        if stat.startswith("Z"):
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if f"{MARKER_VAR}={marker}".encode() in f.read().split(b"\0"):
                    pids.append(pid)
        except OSError:
            pass
    return pids


def _epmd_pids() -> set[int]:
    return {pid for pid, stat, comm, _args in _ps() if not stat.startswith("Z") and comm == "epmd"}


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def test_second_instance_starts_and_stops_cleanly(server, tmp_path):
    """A second private instance runs next to the first one and leaves nothing behind."""
    epmd_before = _epmd_pids()
    ej = Ejabberd(str(tmp_path / "ej2"), users={"carol": "pw3"})
    assert len({ej.c2s_port, ej.component_port, server.c2s_port, server.component_port}) == 4
    t0 = time.monotonic()
    try:
        ej.start(timeout=60)
        elapsed = time.monotonic() - t0
        print(f"second instance started in {elapsed:.2f} s")
        assert elapsed < 30
        assert _accepts(ej.c2s_port) and _accepts(ej.component_port)
        running = [(pid, args) for pid, stat, _comm, args in _ps()
                   if not stat.startswith("Z") and ej.node in args and "beam" in args]
        assert len(running) == 1, running
        assert _live_with_marker(ej.harness_id)
        assert _epmd_pids() == epmd_before, "no epmd must be started (ERL_DIST_PORT is used)"
        out = run_client(ej.c2s_port, "carol@example.test/t", "pw3")
        assert "error" not in out and isinstance(out["rtt"], float), out
    finally:
        t1 = time.monotonic()
        ej.stop()
        print(f"second instance stopped in {time.monotonic() - t1:.2f} s")
    ej.stop()  # idempotent
    assert not _live_with_marker(ej.harness_id)
    leftovers = [(pid, stat, args) for pid, stat, _comm, args in _ps()
                 if not stat.startswith("Z") and (ej.node in args or str(ej.workdir) in args)]
    assert not leftovers, leftovers
    assert _epmd_pids() == epmd_before
    assert not _accepts(ej.c2s_port) and not _accepts(ej.component_port) and not _accepts(ej.dist_port)
    assert "is stopped in the node" in ej.log_text()
    # the first instance is unaffected
    assert _accepts(server.c2s_port) and _accepts(server.component_port)
