"""Real parts for integration tests: a private Prosody, stanzad itself, and slixmpp clients.

Everything runs on loopback ports chosen at random, with its own files under a temporary directory.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOMAIN = "example.test"
COMPONENT = "bot.example.test"
SECRET = "s3cret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"port {port} did not open within {timeout} s")


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS, RssAnon (what the process holds: heap, stacks, written data) and RssFile (mapped code and read-only
    data, shared with other processes) of one process, in KiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return {key: int(re.search(rf"^{key}:\s+(\d+) kB", status, re.M).group(1)) for key in ("VmRSS", "RssAnon", "RssFile")}


def stanzad_binary() -> Path:
    path = Path(os.environ.get("STANZAD_BIN", REPO / ".build" / "debug" / "stanzad"))
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: build first (swift build)")
    return path


class Prosody:
    """A private Prosody 0.12 with a virtual host, a component and test users."""

    def __init__(self, workdir: Path, users: dict[str, str] | None = None, component_secret: str = SECRET,
                 extra_components: dict[str, str] | None = None):
        self.workdir = Path(workdir)
        self.users = users or {"alice": "pw", "bob": "pw"}
        self.c2s_port = free_port()
        self.component_port = free_port()
        self.secret = component_secret
        self.extra_components = extra_components or {}
        self.process: subprocess.Popen | None = None
        self.config = self.workdir / "prosody.cfg.lua"
        self.log = self.workdir / "prosody.log"

    def write_config(self) -> None:
        (self.workdir / "data").mkdir(parents=True, exist_ok=True)
        components = "".join(
            f'Component "{name}"\n    component_secret = "{secret}"\n'
            for name, secret in {COMPONENT: self.secret, **self.extra_components}.items()
        )
        self.config.write_text(f"""
run_as_root = true
daemonize = false
pidfile = "{self.workdir}/prosody.pid"
data_path = "{self.workdir}/data"
certificates = "{self.workdir}/certs"
modules_enabled = {{ "roster"; "saslauth"; "disco"; "ping"; "presence"; "version"; "time" }}
modules_disabled = {{ "s2s" }}
c2s_ports = {{ {self.c2s_port} }}
c2s_interfaces = {{ "127.0.0.1" }}
component_ports = {{ {self.component_port} }}
component_interfaces = {{ "127.0.0.1" }}
s2s_ports = {{}}
http_ports = {{}}
https_ports = {{}}
authentication = "internal_plain"
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
log = {{ {{ levels = {{ min = "debug" }}, to = "file", filename = "{self.log}" }} }}
VirtualHost "{DOMAIN}"
{components}
""")
        (self.workdir / "certs").mkdir(exist_ok=True)

    def start(self) -> None:
        if not self.config.exists():
            self.write_config()
            for user, password in self.users.items():
                subprocess.run(["prosodyctl", "--config", str(self.config), "register", user, DOMAIN, password],
                               check=True, capture_output=True)
        self.process = subprocess.Popen(["prosody", "--config", str(self.config), "-F"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.c2s_port)
        wait_for_port(self.component_port)

    def start_timed(self) -> float:
        """Starts Prosody (configured before) and returns the wall-clock time (time.time()) at which its component
        port first accepted a connection, probed every few milliseconds."""
        self.process = subprocess.Popen(["prosody", "--config", str(self.config), "-F"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.component_port), timeout=0.5):
                    listening = time.time()
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"component port {self.component_port} did not open within 20 s")
                time.sleep(0.005)
        wait_for_port(self.c2s_port)
        return listening

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class Stanzad:
    """stanzad run as a child process, with its log captured line by line."""

    def __init__(self, workdir: Path, config: str, name: str = "stanzad.toml", extra_args: list[str] | None = None,
                 env: dict[str, str] | None = None):
        self.workdir = Path(workdir)
        self.config_path = self.workdir / name
        self.config_path.write_text(config)
        self.args = [str(stanzad_binary()), "run", "--config", str(self.config_path), "--log-level", "debug"] + (extra_args or [])
        self.env = env
        self.process: subprocess.Popen | None = None
        self.lines: list[str] = []
        self._lock = threading.Condition()
        self._reader: threading.Thread | None = None

    def start(self) -> "Stanzad":
        self.process = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        env=self.env, cwd=self.workdir)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self.process and self.process.stdout
        for line in self.process.stdout:
            with self._lock:
                self.lines.append(line.rstrip("\n"))
                self._lock.notify_all()
        with self._lock:
            self._lock.notify_all()

    def wait_for_log(self, pattern: str, timeout: float = 20.0, count: int = 1) -> list[str]:
        """Waits until `count` log lines match the regex `pattern`; returns the matching lines."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                found = [line for line in self.lines if regex.search(line)]
                if len(found) >= count:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.process and self.process.poll() is not None and not self._reader_alive()):
                    raise AssertionError(f"no {count}× log line matching {pattern!r} within {timeout} s; log:\n" + "\n".join(self.lines[-40:]))
                self._lock.wait(min(remaining, 0.5))

    def _reader_alive(self) -> bool:
        return bool(self._reader and self._reader.is_alive())

    def log(self) -> str:
        with self._lock:
            return "\n".join(self.lines)

    def signal(self, sig: int) -> None:
        assert self.process
        self.process.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.process
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._reader:
            self._reader.join(5)


def component_config(prosody_port: int, **component) -> str:
    """A minimal stanzad config for the test component, with [component] overrides and extra text."""
    extra = component.pop("extra", "")
    values = {"jid": COMPONENT, "server": f"127.0.0.1:{prosody_port}", "secret": SECRET, "reconnect_max": 4}
    values.update(component)
    lines = ["[component]"]
    for key, value in values.items():
        lines.append(f"{key} = {value}" if isinstance(value, int) else f'{key} = "{value}"')
    return "\n".join(lines) + "\n" + extra


# ---------------------------------------------------------------------------------------------------------
# slixmpp, driven from synchronous tests


class Client:
    """A logged-in slixmpp client on its own event loop thread; methods block and return results."""

    def __init__(self, jid: str, password: str, port: int):
        import slixmpp  # Debian's python3-slixmpp

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.messages: asyncio.Queue | None = None
        self.presences: list = []
        ready = threading.Event()

        async def make():
            xmpp = slixmpp.ClientXMPP(jid, password)
            for plugin in ("xep_0030", "xep_0092", "xep_0199", "xep_0202"):
                xmpp.register_plugin(plugin)
            xmpp["feature_mechanisms"].unencrypted_plain = True
            xmpp.enable_starttls = False
            xmpp.auto_authorize = None  # we inspect presence ourselves
            self.messages = asyncio.Queue()
            xmpp.add_event_handler("message", lambda m: self.messages.put_nowait(m))
            xmpp.add_event_handler("message_error", lambda m: self.messages.put_nowait(m))
            xmpp.add_event_handler("presence", lambda p: self.presences.append(p))
            async def session_start(_event):
                # Roster and initial presence make Prosody deliver presence (and subscriptions) to us.
                await xmpp.get_roster()
                xmpp.send_presence()
                ready.set()

            xmpp.add_event_handler("session_start", session_start)
            xmpp.connect(("127.0.0.1", port))
            return xmpp

        self.xmpp = self.run(make())
        if not ready.wait(20):
            raise TimeoutError(f"{jid} did not log in")

    def run(self, work, timeout: float = 30):
        """Runs a coroutine, or a callable returning an awaitable (evaluated on the client's loop), and
        returns its result."""
        if asyncio.iscoroutine(work):
            return asyncio.run_coroutine_threadsafe(work, self.loop).result(timeout)

        async def call():
            return await work()

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(timeout)

    def iq(self, xml: str, timeout: float = 10):
        """Sends a raw iq (XML text) and returns the reply stanza (result or error)."""
        from slixmpp.exceptions import IqError

        async def go():
            iq = self.xmpp.Iq(xml=__import__("xml.etree.ElementTree", fromlist=["x"]).fromstring(xml))
            try:
                return await iq.send(timeout=timeout)
            except IqError as error:
                return error.iq

        return self.run(go(), timeout + 5)

    def send_raw(self, xml: str) -> None:
        self.loop.call_soon_threadsafe(self.xmpp.send_raw, xml)

    def next_message(self, timeout: float = 10):
        async def go():
            return await asyncio.wait_for(self.messages.get(), timeout)

        return self.run(go(), timeout + 5)

    def close(self) -> None:
        async def go():
            self.xmpp.disconnect()

        try:
            self.run(go(), 5)
        except Exception:
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def rest_stanzad(prosody: "Prosody", tmp_path_factory, extra: str) -> Stanzad:
    """stanzad with `extra` (a [rest] section and whatever else), started and connected, its REST API listening."""
    daemon = Stanzad(tmp_path_factory.mktemp("stanzad"), component_config(prosody.component_port, extra=extra))
    daemon.start()
    daemon.wait_for_log("component connected")
    daemon.wait_for_log("REST API listening")
    return daemon
