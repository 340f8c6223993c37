#!/usr/bin/python3
"""Shared pieces of bench/webhook, bench/worker and bench/rest: a private Prosody (from
tests/integration/harness.py, logging errors only), stanzad from .build-release, and lean asyncio parts that
cost far less per stanza than slixmpp:

  * EchoClient: a c2s client (SASL PLAIN over plain TCP, bind) that keeps a window of chat messages in
    flight to one JID and counts the replies (pipelined, replies parsed with pyexpat);
  * bare component (`xmpp_load.py bare PORT JID`): an XEP-0114 component that answers every message itself
    with its body, the Prosody-side limit;
  * HTTP echo (`xmpp_load.py http-echo PORT`): an asyncio HTTP/1.1 keep-alive server answering every POST
    with 200 text/plain and the request body.

Run with Debian's /usr/bin/python3.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from xml.parsers import expat
from xml.sax.saxutils import escape, quoteattr

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "integration"))

from harness import (COMPONENT, DOMAIN, SECRET, Prosody, Stanzad, component_config, free_port,  # noqa: E402
                     memory_kib, wait_for_port)

BARE = "bare.example.test"
BURN = "burn.example.test"  # a bare component that also spends a set CPU time per message (bench/anchors --burn-us)
STANZAD_BIN = Path(os.environ.get("BENCH_STANZAD_BIN", REPO / ".build-release" / "release" / "stanzad")).resolve()
PY = "/usr/bin/python3"


def start_prosody(workdir: Path, users: dict[str, str]) -> Prosody:
    """Prosody with the stanzad component and the bare component, logging errors only (the harness logs at
    debug level, which would make Prosody's logging the bottleneck)."""
    prosody = Prosody(workdir, users=users, extra_components={BARE: SECRET})
    prosody.write_config()
    prosody.config.write_text(prosody.config.read_text().replace('min = "debug"', 'min = "error"'))
    for user, password in users.items():
        subprocess.run(["prosodyctl", "--config", str(prosody.config), "register", user, DOMAIN, password],
                       check=True, capture_output=True)
    prosody.start()
    return prosody


def start_stanzad(workdir: Path, prosody: Prosody, extra: str, wait: tuple[tuple[str, int], ...] = ()) -> Stanzad:
    if not STANZAD_BIN.exists():
        raise SystemExit(f"{STANZAD_BIN} not found: swift build -c release --product stanzad --scratch-path .build-release")
    os.environ["STANZAD_BIN"] = str(STANZAD_BIN)
    daemon = Stanzad(workdir, component_config(prosody.component_port, extra=extra))
    daemon.args[daemon.args.index("--log-level") + 1] = "notice"  # no per-stanza log lines
    daemon.start()
    daemon.wait_for_log("component connected")
    for pattern, count in wait:
        daemon.wait_for_log(pattern, count=count)
    return daemon


def start_bare(prosody: Prosody, jid: str = BARE, burn_us: int = 0) -> subprocess.Popen:
    process = subprocess.Popen([PY, __file__, "bare", str(prosody.component_port), jid, str(burn_us)],
                               stdout=subprocess.PIPE, text=True)
    if process.stdout.readline().strip() != "ready":
        raise SystemExit("bare component failed to connect")
    return process


def pin_process(pid: int, cpus: set[int]) -> None:
    """Moves every thread of a running process to `cpus` (threads it starts later inherit)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), cpus)


def ensure_binary() -> None:
    if not STANZAD_BIN.exists():
        print("building stanzad (release, .build-release)", file=sys.stderr)
        subprocess.run(["swift", "build", "-c", "release", "--product", "stanzad", "--scratch-path", ".build-release"],
                       cwd=REPO, check=True, stdout=sys.stderr)


def process_cpu(pids: list[int]) -> float:
    """CPU seconds (user + system) used so far by these processes; vanished ones count 0."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def process_rss(pids: list[int]) -> int:
    """Resident memory (KiB) of these processes."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def pids_running(fragment: str) -> list[int]:
    """Processes whose command line contains `fragment`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if fragment.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def cpu_busy() -> dict[int, tuple[int, int]]:
    """Per CPU: (busy, total) jiffies so far, from /proc/stat."""
    found = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit():
            values = [int(v) for v in fields]
            idle = values[3] + values[4]  # idle + iowait
            found[int(name[3:])] = (sum(values[:8]) - idle, sum(values[:8]))
    return found


async def interleaved(client: "EchoClient", targets: list[tuple[str, str]], rounds: int, seconds: float,
                      window: int, cpu: dict[str, object] | None = None,
                      usage: dict[tuple[str, str], list[float]] | None = None) -> dict[str, list[float]]:
    """Measures every (label, jid) once per round, in turn; prints each measurement; returns label → rates.
    `cpu` maps a name to a function returning the pids to account (e.g. stanzad, prosody): each round then
    also prints their CPU time per echo, measured over the whole round including warm-up and drain, and appends
    it (µs) to `usage[(label, name)]` when given."""
    rates: dict[str, list[float]] = {label: [] for label, _ in targets}
    for number in range(1, rounds + 1):
        for label, jid in targets:
            before = {name: process_cpu(pids()) for name, pids in (cpu or {}).items()}
            busy_before = cpu_busy()
            sent_before = client.received_total
            rate, errors = await client.measure(jid, seconds, window)
            echoes = max(1, client.received_total - sent_before)
            per_echo = {name: (process_cpu(pids()) - before[name]) / echoes * 1e6 for name, pids in (cpu or {}).items()}
            used = "".join(f"  {name} {value:4.0f} µs" for name, value in per_echo.items())
            if usage is not None:
                for name, value in per_echo.items():
                    usage.setdefault((label, name), []).append(value)
            if cpu and "stanzad" in cpu:
                used += f"  stanzad RSS {process_rss(cpu['stanzad']()) // 1024} MiB"
            if cpu:
                busy_after = cpu_busy()
                used += "  busy " + " ".join(
                    f"cpu{n} {100 * (b - busy_before[n][0]) / max(1, t - busy_before[n][1]):.0f}%"
                    for n, (b, t) in sorted(busy_after.items()) if n in busy_before)
            rates[label].append(rate)
            print(f"  round {number} {label:<8} {rate:9.0f} echoes/s" + (f"  CPU/echo:{used}" if used else "")
                  + (f"  ({errors} error replies)" if errors else ""), flush=True)
    return rates


def median(values):
    return statistics.median(values) if values else 0.0


# ---------------------------------------------------------------------------------------------------------
# XML stream parsing (top-level stanzas only)


class StreamParser:
    """pyexpat without namespace processing; calls on_stanza(name, attrs, body) for every top-level element,
    where `body` is the text of its child <body> (None without one); other children are skipped."""

    def __init__(self, on_stanza, on_open=None):
        self.on_stanza = on_stanza
        self.on_open = on_open
        self.reset()

    def reset(self):
        p = expat.ParserCreate()
        p.buffer_text = True
        p.StartElementHandler = self._start
        p.EndElementHandler = self._end
        p.CharacterDataHandler = self._chars
        self.parser = p
        self.depth = 0
        self.name = None
        self.attrs = None
        self.body = None
        self.text = None

    def feed(self, data: bytes):
        self.parser.Parse(data, False)

    def _start(self, name, attrs):
        self.depth += 1
        d = self.depth
        if d == 2:
            self.name, self.attrs, self.body, self.text = name, attrs, None, None
        elif d == 3 and name == "body":
            self.text = []
        elif d == 1 and self.on_open:
            self.on_open(attrs)

    def _chars(self, data):
        if self.text is not None:
            self.text.append(data)

    def _end(self, name):
        d = self.depth
        if d == 3 and self.text is not None:
            self.body = "".join(self.text)
            self.text = None
        elif d == 2:
            self.on_stanza(self.name, self.attrs, self.body)
        self.depth = d - 1


# ---------------------------------------------------------------------------------------------------------
# the c2s load client


class EchoClient(asyncio.Protocol):
    def __init__(self, user: str, password: str, resource: str = "bench"):
        self.user, self.password, self.resource = user, password, resource
        self.jid = f"{user}@{DOMAIN}/{resource}"
        self.parser = StreamParser(self._stanza)
        self.queue: asyncio.Queue = asyncio.Queue()
        self.transport = None
        self.loading = False
        self.received = 0
        self.received_total = 0  # never reset: CPU accounting per round
        self.errors = 0
        self.sent = 0
        self.window = 0
        self.target = ""
        self.drained: asyncio.Event | None = None

    @classmethod
    async def connect(cls, port: int, user: str, password: str, resource: str = "bench") -> "EchoClient":
        loop = asyncio.get_running_loop()
        _, client = await loop.create_connection(lambda: cls(user, password, resource), "127.0.0.1", port)
        await client.login()
        return client

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.parser.feed(data)
        if self.loading:
            self._top_up()

    def _open(self):
        self.transport.write(f"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
                             f"xmlns:stream='http://etherx.jabber.org/streams' to='{DOMAIN}' version='1.0'>".encode())

    async def _next(self, name: str):
        while True:
            stanza = await asyncio.wait_for(self.queue.get(), 10)
            if stanza[0] == name:
                return stanza
            if stanza[0] in ("failure", "stream:error"):
                raise RuntimeError(f"login failed: {stanza}")

    async def login(self):
        self._open()
        await self._next("stream:features")
        token = base64.b64encode(f"\0{self.user}\0{self.password}".encode()).decode()
        self.transport.write(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>".encode())
        await self._next("success")
        self.parser.reset()
        self._open()
        await self._next("stream:features")
        self.transport.write(f"<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                             f"<resource>{self.resource}</resource></bind></iq>".encode())
        await self._next("iq")
        self.transport.write(b"<iq type='set' id='sess'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq><presence/>")
        await self._next("iq")

    def _stanza(self, name, attrs, body):
        if self.loading or self.drained is not None:
            if name == "message":
                if attrs.get("type") == "error":
                    self.errors += 1
                else:
                    self.received += 1
                    self.received_total += 1
                if self.drained is not None and self.sent - self.received - self.errors <= 0:
                    self.drained.set()
            return
        if name == "message":
            self.received_total += 1
            self.received += 1  # a sink (bench/rest) counts what arrives
            return
        self.queue.put_nowait((name, attrs, body))

    def _top_up(self):
        missing = self.window - (self.sent - self.received - self.errors)
        if missing <= 0:
            return
        start = self.sent
        target = self.target
        self.transport.write("".join(
            f"<message to='{target}' type='chat' id='m{n}'><body>hello {n}</body></message>"
            for n in range(start, start + missing)).encode())
        self.sent += missing

    async def measure(self, target: str, seconds: float, window: int = 64, warmup: float = 1.0) -> tuple[float, int]:
        """Echo rate (replies/s) over `seconds` after `warmup`, keeping `window` messages in flight; waits for
        every outstanding reply before returning. Returns (rate, errors during the round)."""
        self.target, self.window = target, window
        self.sent = self.received = self.errors = 0
        self.drained = None
        self.loading = True
        self._top_up()
        await asyncio.sleep(warmup)
        r0, e0, t0 = self.received, self.errors, time.perf_counter()
        await asyncio.sleep(seconds)
        r1, e1, t1 = self.received, self.errors, time.perf_counter()
        self.loading = False
        self.drained = asyncio.Event()
        if self.sent - self.received - self.errors > 0:
            try:
                await asyncio.wait_for(self.drained.wait(), 30)
            except asyncio.TimeoutError:
                print(f"  warning: {self.sent - self.received - self.errors} replies missing after 30 s", file=sys.stderr)
        self.drained = None
        return (r1 - r0) / (t1 - t0), e1 - e0


# ---------------------------------------------------------------------------------------------------------
# the bare component


class BareComponent(asyncio.Protocol):
    def __init__(self, jid: str, secret: str, ready: asyncio.Future, burn_ns: int = 0):
        self.jid, self.secret, self.ready, self.burn_ns = jid, secret, ready, burn_ns
        self.parser = StreamParser(self._stanza, self._open)
        self.out: list[str] = []

    def connection_made(self, transport):
        self.transport = transport
        transport.write(f"<stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams' "
                        f"to='{self.jid}'>".encode())

    def _open(self, attrs):
        digest = hashlib.sha1((attrs["id"] + self.secret).encode()).hexdigest()
        self.transport.write(f"<handshake>{digest}</handshake>".encode())

    def data_received(self, data):
        self.parser.feed(data)
        if self.out:
            self.transport.write("".join(self.out).encode())
            self.out.clear()

    def connection_lost(self, exc):
        if not self.ready.done():
            self.ready.set_exception(RuntimeError("component connection lost"))
        else:
            os._exit(0)

    def _stanza(self, name, attrs, body):
        if name == "message" and attrs.get("type") != "error":
            if self.burn_ns:
                # CPU time of this thread, as a handler stage would spend it on this core (no wake-ups of its own).
                end = time.thread_time_ns() + self.burn_ns
                while time.thread_time_ns() < end:
                    pass
            out = (f"<message to={quoteattr(attrs.get('from', ''))} from={quoteattr(attrs.get('to', ''))} "
                   f"type={quoteattr(attrs.get('type', 'normal'))}")
            if "id" in attrs:
                out += f" id={quoteattr(attrs['id'])}"
            self.out.append(out + f"><body>{escape(body or '')}</body></message>")
        elif name == "handshake" and not self.ready.done():
            self.ready.set_result(True)
        elif name == "stream:error":
            raise SystemExit("bare component: stream error")


async def run_bare(port: int, jid: str, burn_us: int = 0) -> None:
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    await loop.create_connection(lambda: BareComponent(jid, SECRET, ready, burn_us * 1000), "127.0.0.1", port)
    await asyncio.wait_for(ready, 10)
    print("ready", flush=True)
    await asyncio.Event().wait()


# ---------------------------------------------------------------------------------------------------------
# the HTTP echo webhook


class HttpServer(asyncio.Protocol):
    """A keep-alive HTTP/1.1 server loop (pipelined requests, Content-Length bodies); subclasses answer each
    request with `answer(head, body)`, the whole response in bytes."""

    def connection_made(self, transport):
        self.transport = transport
        self.buffer = b""

    def answer(self, head: bytes, body: bytes) -> bytes:
        raise NotImplementedError

    def data_received(self, data):
        buffer = self.buffer + data
        out = []
        close = False
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                break
            head = buffer[:end].lower()
            length = 0
            at = head.find(b"content-length:")
            if at >= 0:
                stop = head.find(b"\r\n", at)
                length = int(head[at + 15:stop if stop >= 0 else None].strip())
            if len(buffer) < end + 4 + length:
                break
            body = buffer[end + 4:end + 4 + length]
            buffer = buffer[end + 4 + length:]
            if b"connection: close" in head:
                close = True
            out.append(self.answer(head, body))
        self.buffer = buffer
        if out:
            self.transport.write(b"".join(out))
        if close:
            self.transport.close()


class HttpEcho(HttpServer):
    """Every POST is answered 200 text/plain with its body."""

    def answer(self, head: bytes, body: bytes) -> bytes:
        return b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


class HttpCallback(HttpServer):
    """A webhook app as users write one against mod_rest or mod_component_http: a stanza in XML is answered with
    a chat message in XML (application/xmpp+xml), a JSON object with {"body": ...} (application/json), echoing
    the body. OPTIONS (mod_rest's probe at load) gets 200 with nothing to negotiate."""

    def answer(self, head: bytes, body: bytes) -> bytes:
        import json
        if head.startswith(b"options"):
            return b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
        if body[:1] == b"<":
            start, stop = body.find(b"<body>"), body.find(b"</body>")
            text = body[start + 6:stop] if start >= 0 and stop > start else b""
            payload = b"<message type='chat'><body>" + text + b"</body></message>"
            kind = b"application/xmpp+xml"
        else:
            try:
                text = json.loads(body or b"{}").get("body", "")
            except ValueError:
                text = ""
            payload = json.dumps({"body": text}).encode()
            kind = b"application/json"
        return b"HTTP/1.1 200 OK\r\nContent-Type: " + kind + b"\r\nContent-Length: %d\r\n\r\n" % len(payload) + payload


HTTP_APPS = {"http-echo": HttpEcho, "http-callback": HttpCallback}


async def run_http(port: int, app) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(app, "127.0.0.1", port, backlog=1024)
    await server.serve_forever()


def start_http(mode: str) -> tuple[subprocess.Popen, int]:
    """Runs one of HTTP_APPS in a process of its own; returns it and its port."""
    port = free_port()
    process = subprocess.Popen([PY, __file__, mode, str(port)])
    wait_for_port(port)
    return process, port


def start_http_echo() -> tuple[subprocess.Popen, int]:
    return start_http("http-echo")


def start_http_callback() -> tuple[subprocess.Popen, int]:
    return start_http("http-callback")


def stop(process: subprocess.Popen | None) -> None:
    if process and process.poll() is None:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


if __name__ == "__main__":
    if sys.argv[1] == "bare":
        asyncio.run(run_bare(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]) if len(sys.argv) > 4 else 0))
    elif sys.argv[1] in HTTP_APPS:
        asyncio.run(run_http(int(sys.argv[2]), HTTP_APPS[sys.argv[1]]))
    else:
        raise SystemExit("usage: xmpp_load.py bare PORT JID [BURN_US] | http-echo PORT | http-callback PORT")
