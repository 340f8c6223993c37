"""Component round-trip benchmark (run through bench/component).

One logged-in c2s client on a private Prosody (tests/integration/harness.py) keeps WINDOW XEP-0199 pings in
flight and counts answers per second, for three targets on the same connection, in interleaved rounds:

    component   to='bot.example.test': Prosody routes each ping over the XEP-0114 link to stanzad (run as in
                production, --log-level info), whose built-in responder answers; the result comes back over the
                link and Prosody delivers it.
    component(notice)
                the same through a second stanzad at --log-level notice (to='quiet.bot.example.test'), to show
                what the per-stanza info log line (SPEC §13) costs.
    baseline    to='example.test': Prosody's own mod_ping answers (the same client, c2s and Prosody).

The client is a minimal asyncio XMPP client (SASL PLAIN, bind, then raw pipelined iqs) so it costs far less
CPU per ping than either server path. Prints every round, CPU per ping of stanzad and Prosody (from /proc),
the median rates and a final line "ratio: X.XX" (component / baseline medians).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))
from harness import COMPONENT, DOMAIN, Prosody, component_config  # noqa: E402

STREAM_HEADER = (f"<?xml version='1.0'?><stream:stream to='{DOMAIN}' version='1.0' xmlns='jabber:client' "
                 "xmlns:stream='http://etherx.jabber.org/streams'>")
IQ = re.compile(rb"<iq\b[^>]*?(?:/>|>.*?</iq>)", re.S)
RESULT = re.compile(rb"^<iq\b[^>]*\btype=['\"]result['\"]")
CLK_TCK = os.sysconf("SC_CLK_TCK")


class QuietProsody(Prosody):
    """The harness's Prosody, logging at info instead of debug (debug writes several lines per stanza)."""

    def write_config(self) -> None:
        super().write_config()
        self.config.write_text(self.config.read_text().replace('levels = { min = "debug" }', 'levels = { min = "info" }'))


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all threads), from /proc."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class RawClient:
    """Just enough of RFC 6120 for a cleartext PLAIN login and a bound resource."""

    def __init__(self) -> None:
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.buf = b""

    async def read_until(self, pattern: bytes, timeout: float = 10) -> re.Match:
        regex = re.compile(pattern, re.S)
        deadline = time.monotonic() + timeout
        while True:
            m = regex.search(self.buf)
            if m:
                self.buf = self.buf[m.end():]
                return m
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {pattern!r} in {self.buf[-500:]!r}")
            chunk = await asyncio.wait_for(self.reader.read(65536), left)
            if not chunk:
                raise EOFError(f"server closed the stream; buffer {self.buf[-500:]!r}")
            self.buf += chunk

    async def login(self, port: int, user: str, password: str, resource: str = "bench") -> str:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port)
        self.writer.write(STREAM_HEADER.encode())
        await self.read_until(rb"</stream:features>")
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        self.writer.write(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>".encode())
        m = await self.read_until(rb"<success\b[^>]*?(?:/>|>.*?</success>)|<failure\b.*?</failure>")
        if not m.group(0).startswith(b"<success"):
            raise RuntimeError(f"SASL PLAIN failed: {m.group(0)!r}")
        self.writer.write(STREAM_HEADER.encode())
        await self.read_until(rb"</stream:features>")
        self.writer.write(f"<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                          f"<resource>{resource}</resource></bind></iq>".encode())
        m = await self.read_until(rb"<iq\b[^>]*\bid=['\"]bind1['\"].*?</iq>")
        jid = re.search(rb"<jid>([^<]+)</jid>", m.group(0))
        if not RESULT.match(m.group(0)) or not jid:
            raise RuntimeError(f"bind failed: {m.group(0)!r}")
        return jid.group(1).decode()

    async def ping_round(self, target: str, count: int, window: int, tag: str) -> float:
        """Sends `count` pings to `target` with at most `window` unanswered; returns answers per second."""
        writer, reader = self.writer, self.reader
        prefix = f"<iq type='get' to='{target}' id='{tag}-"
        suffix = "'><ping xmlns='urn:xmpp:ping'/></iq>"
        sent = answered = 0

        def send(n: int) -> None:
            nonlocal sent
            writer.write("".join(f"{prefix}{i}{suffix}" for i in range(sent, sent + n)).encode())
            sent += n

        started = time.perf_counter()
        send(min(window, count))
        buf = self.buf
        while answered < count:
            chunk = await asyncio.wait_for(reader.read(262144), 30)
            if not chunk:
                raise EOFError("server closed the stream during a round")
            buf += chunk
            end = 0
            got = 0
            for m in IQ.finditer(buf):
                stanza = m.group(0)
                if not RESULT.match(stanza):
                    raise RuntimeError(f"a ping to {target} was not answered with a result: {stanza[:400]!r}")
                got += 1
                end = m.end()
            buf = buf[end:]
            answered += got
            more = min(got, count - sent)
            if more:
                send(more)
        elapsed = time.perf_counter() - started
        self.buf = buf
        return count / elapsed

    async def close(self) -> None:
        if self.writer:
            self.writer.write(b"</stream:stream>")
            try:
                await self.writer.drain()
                self.writer.close()
                await self.writer.wait_closed()
            except OSError:
                pass


QUIET_COMPONENT = "quiet." + COMPONENT


def start_stanzad(binary: Path, workdir: Path, port: int, jid: str, log_level: str) -> tuple[subprocess.Popen, Path]:
    workdir.mkdir()
    config = workdir / "stanzad.toml"
    config.write_text(component_config(port, jid=jid))
    log = workdir / "stanzad.log"
    with open(log, "wb") as stderr:
        process = subprocess.Popen([str(binary), "run", "--config", str(config), "--log-level", log_level],
                                   stdout=subprocess.DEVNULL, stderr=stderr, cwd=workdir)
    deadline = time.monotonic() + 20
    while "component connected" not in log.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("stanzad did not connect:\n" + log.read_text(errors="replace")[-3000:])
        time.sleep(0.05)
    return process, log


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def measure(args, prosody: Prosody, targets: dict[str, tuple[str, int | None]]) -> dict[str, list[float]]:
    """targets: name -> (JID to ping, pid of the stanzad answering it or None). Returns the rates per round."""
    client = RawClient()
    jid = await client.login(prosody.c2s_port, "alice", "pw")
    print(f"client bound as {jid}; {args.window} pings in flight, {args.pings} pings per round and target", flush=True)
    names = list(targets)
    rates: dict[str, list[float]] = {name: [] for name in names}
    cpu = {name: {"stanzad": 0.0, "prosody": 0.0, "pings": 0} for name in names}
    for index, name in enumerate(names):  # warm-up: caches, allocators and TCP windows settle
        await client.ping_round(targets[name][0], args.warmup, args.window, f"w{index}")
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]  # rotate who goes first
        if r % 2:
            order.reverse()
        results = {}
        for name in order:
            target, pid = targets[name]
            s0, p0 = (cpu_seconds(pid) if pid else 0.0), cpu_seconds(prosody.process.pid)
            rate = await client.ping_round(target, args.pings, args.window, f"r{r}{names.index(name)}")
            cpu[name]["stanzad"] += (cpu_seconds(pid) - s0) if pid else 0.0
            cpu[name]["prosody"] += cpu_seconds(prosody.process.pid) - p0
            cpu[name]["pings"] += args.pings
            rates[name].append(rate)
            results[name] = rate
        print(f"round {r + 1}: " + "   ".join(f"{name} {results[name]:6.0f}/s" for name in names), flush=True)
    await client.close()
    for name in names:
        c = cpu[name]
        print(f"CPU per ping, {name:>17}: stanzad {c['stanzad'] / c['pings'] * 1e6:6.1f} µs, "
              f"Prosody {c['prosody'] / c['pings'] * 1e6:6.1f} µs", flush=True)
    return rates


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stanzad", type=Path, default=ROOT / ".build-release" / "release" / "stanzad")
    parser.add_argument("--pings", type=int, default=4000, help="pings per round and target (default 4000)")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    parser.add_argument("--window", type=int, default=64, help="pings in flight (default 64)")
    parser.add_argument("--warmup", type=int, default=2000, help="pings per target before the rounds (default 2000)")
    args = parser.parse_args()
    args.stanzad = args.stanzad.resolve()
    if not args.stanzad.exists():
        parser.error(f"{args.stanzad} not found (bench/component builds it)")

    with tempfile.TemporaryDirectory(prefix="stanzad-bench-") as tmp:
        work = Path(tmp)
        (work / "prosody").mkdir()
        prosody = QuietProsody(work / "prosody", users={"alice": "pw"},
                               extra_components={QUIET_COMPONENT: "s3cret"})
        prosody.start()
        daemons: list[tuple[subprocess.Popen, Path]] = []
        try:
            # The measured one runs as in production (default --log-level info: one line per stanza, SPEC §13);
            # a second one at notice shows what that line costs.
            daemons.append(start_stanzad(args.stanzad, work / "info", prosody.component_port, COMPONENT, "info"))
            daemons.append(start_stanzad(args.stanzad, work / "notice", prosody.component_port, QUIET_COMPONENT, "notice"))
            version = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "prosody"], capture_output=True,
                                     text=True).stdout.strip() or "?"
            print(f"stanzad {args.stanzad}; Prosody {version}; {os.cpu_count()} cores; "
                  f"load average {os.getloadavg()[0]:.2f}", flush=True)
            targets = {
                "component": (COMPONENT, daemons[0][0].pid),
                "component(notice)": (QUIET_COMPONENT, daemons[1][0].pid),
                "baseline": (DOMAIN, None),
            }
            started = time.monotonic()
            rates = asyncio.run(measure(args, prosody, targets))
            median = {name: statistics.median(values) for name, values in rates.items()}
            print(f"measured in {time.monotonic() - started:.1f} s; load average {os.getloadavg()[0]:.2f}")
            print(f"baseline  (Prosody's own ping, to {DOMAIN}): median {median['baseline']:.0f} pings/s")
            print(f"component (stanzad's built-in ping over XEP-0114, to {COMPONENT}, --log-level info): "
                  f"median {median['component']:.0f} pings/s")
            print(f"component at --log-level notice (no per-stanza log line, to {QUIET_COMPONENT}): "
                  f"median {median['component(notice)']:.0f} pings/s; ratio "
                  f"{median['component(notice)'] / median['baseline']:.2f}")
            print(f"ratio: {median['component'] / median['baseline']:.2f}")
        finally:
            for process, log in daemons:
                stop(process)
                if process.returncode != 0:
                    print(f"stanzad exited with {process.returncode}:\n" + log.read_text(errors="replace")[-2000:],
                          file=sys.stderr)
            prosody.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
