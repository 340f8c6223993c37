#!/usr/bin/python3
"""The XMPP side of scripts/demo: two users log in to the demo's Prosody and check both directions.

1. alice sends a chat message to echo@<component>; the echo handler (handlers/echo.sh) must answer it.
2. With --rest-url: bob stays online while `curl` POSTs a text/plain message to /rest/message/chat/bob@…;
   the message must reach bob, from the component.

Prints each step; exits 0 when every round trip worked, 1 otherwise. Needs Debian's python3-slixmpp
(run it with /usr/bin/python3).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shlex
import subprocess
import sys
import time

logging.basicConfig(level=logging.ERROR)  # no slixmpp chatter (e.g. its stringprep notice)
import slixmpp  # noqa: E402


def say(text: str) -> None:
    print(text, flush=True)


class User:
    """A logged-in slixmpp client that queues the messages it receives."""

    def __init__(self, jid: str, password: str, port: int):
        self.jid = jid
        self.messages: asyncio.Queue = asyncio.Queue()
        self.xmpp = slixmpp.ClientXMPP(jid, password)
        self.xmpp["feature_mechanisms"].unencrypted_plain = True  # loopback only, no TLS in the demo
        self.xmpp.enable_starttls = False
        self.ready = asyncio.Event()
        self.failed: str | None = None
        self.xmpp.add_event_handler("session_start", self._started)
        self.xmpp.add_event_handler("failed_auth", lambda _: self._fail("authentication failed"))
        self.xmpp.add_event_handler("message", self.messages.put_nowait)
        self.xmpp.add_event_handler("message_error", self.messages.put_nowait)
        self.xmpp.connect(("127.0.0.1", port))

    def _fail(self, why: str) -> None:
        self.failed = why
        self.ready.set()

    async def _started(self, _event) -> None:
        await self.xmpp.get_roster()
        self.xmpp.send_presence()
        self.ready.set()

    async def login(self, timeout: float) -> None:
        await asyncio.wait_for(self.ready.wait(), timeout)
        if self.failed:
            raise RuntimeError(f"{self.jid}: {self.failed}")

    async def next_message(self, sender: str, timeout: float):
        """The next message whose sender's bare JID is `sender`."""
        deadline = time.monotonic() + timeout
        while True:
            message = await asyncio.wait_for(self.messages.get(), max(0.01, deadline - time.monotonic()))
            if message["from"].bare == sender:
                return message


async def echo_round_trip(alice: User, component: str, timeout: float) -> bool:
    echo = f"echo@{component}"
    text = "hello from alice"
    say(f"    {alice.jid} -> {echo}: {text}")
    alice.xmpp.send_message(mto=echo, mbody=text, mtype="chat")
    try:
        reply = await alice.next_message(echo, timeout)
    except asyncio.TimeoutError:
        say(f"    no answer from {echo} within {timeout:.0f} s")
        return False
    if reply["type"] == "error":
        say(f"    {echo} answered with an error: {reply['error']['condition']} {reply['error']['text']}")
        return False
    say(f"    {echo} -> {alice.jid}: {reply['body']}")
    if reply["body"] != text:
        say(f"    expected the same text back, got {reply['body']!r}")
        return False
    return True


async def rest_round_trip(bob: User, component: str, url: str, token: str, timeout: float) -> bool:
    text = "hello bob, from curl"
    command = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", str(int(timeout)),
               "-H", f"Authorization: Bearer {token}", "-H", "Content-Type: text/plain",
               "--data-binary", text, f"{url}/message/chat/{bob.jid}"]
    say("    $ " + shlex.join(command))
    result = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True)
    status = result.stdout.strip()
    say(f"    HTTP {status or '(none)'}" + (f" {result.stderr.strip()}" if result.stderr.strip() else ""))
    if status != "202":
        say("    expected 202 Accepted")
        return False
    try:
        message = await bob.next_message(component, timeout)
    except asyncio.TimeoutError:
        say(f"    {bob.jid} received nothing from {component} within {timeout:.0f} s")
        return False
    say(f"    {component} -> {bob.jid}: {message['body']}")
    return message["body"] == text


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="Prosody's c2s port on 127.0.0.1")
    parser.add_argument("--domain", required=True)
    parser.add_argument("--component", required=True)
    parser.add_argument("--alice", required=True, metavar="NAME:PASSWORD")
    parser.add_argument("--bob", required=True, metavar="NAME:PASSWORD")
    parser.add_argument("--rest-url", help="base URL of the REST API, e.g. http://127.0.0.1:8080/rest")
    parser.add_argument("--token", default="")
    parser.add_argument("--timeout", type=float, default=10)
    args = parser.parse_args()

    users = []
    for spec in (args.alice, args.bob):
        name, _, password = spec.partition(":")
        users.append(User(f"{name}@{args.domain}", password, args.port))
    alice, bob = users
    ok = True
    try:
        await asyncio.gather(*(user.login(args.timeout) for user in users))
        say(f"==> logged in as {alice.jid} and {bob.jid}")
        say("==> round trip 1: an XMPP message answered by handlers/echo.sh")
        if await echo_round_trip(alice, args.component, args.timeout):
            say("    ok")
        else:
            ok = False
        if args.rest_url:
            say("==> round trip 2: curl POST /rest delivered to an XMPP user")
            if await rest_round_trip(bob, args.component, args.rest_url, args.token, args.timeout):
                say("    ok")
            else:
                ok = False
    except (asyncio.TimeoutError, RuntimeError) as error:
        say(f"    could not log in: {error or 'timeout'}")
        ok = False
    finally:
        for user in users:
            user.xmpp.disconnect()
        await asyncio.sleep(0.2)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
