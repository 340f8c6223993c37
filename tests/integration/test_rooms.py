"""Rooms (SPEC §14) against a real Prosody with its MUC component, slixmpp users in the rooms: joining at start,
mentions, history and reflections never routed, private messages, a taken nick, a password room, REST group chat
and GET /rest/rooms, kicks, bans, destroyed rooms, a silently dropped occupant (self-ping), SIGHUP, and a Prosody
killed with -9 and started again."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
from pathlib import Path

import pytest

import fcgi_client
from harness import COMPONENT, DOMAIN, Client, Prosody, Stanzad, component_config

MUC = f"conference.{DOMAIN}"
ROOM1 = f"room1@{MUC}"
ROOM2 = f"room2@{MUC}"
BUSY = f"busy@{MUC}"
SECRET_ROOM = f"secret@{MUC}"
BANNED = f"banned@{MUC}"
LATER = f"later@{MUC}"
PARTY = f"party@{MUC}"
TOKEN = "Bearer cm9vbXM="
REJOIN_DELAY = 1
RECONNECT_MAX = 2


class MUCProsody(Prosody):
    """Prosody with a MUC component (rooms unlocked at creation, so the first joiner need not configure them) and
    the admin shell, through which a test makes the room forget an occupant without telling it."""

    def write_config(self) -> None:
        super().write_config()
        text = self.config.read_text().replace('"time" }', '"time"; "admin_shell" }')
        self.config.write_text(text + f'Component "{MUC}" "muc"\n    muc_room_locking = false\n'
                               '    muc_room_default_history_length = 20\n')


@pytest.fixture(scope="module")
def prosody(tmp_path_factory):
    server = MUCProsody(tmp_path_factory.mktemp("prosody"), users={"alice": "pw", "bob": "pw", "carol": "pw"})
    server.start()
    yield server
    server.stop()


class User:
    """A slixmpp user with XEP-0045, collecting every message it gets."""

    def __init__(self, name: str, port: int):
        self.name = name
        self.client = Client(f"{name}@{DOMAIN}/muc", "pw", port)

        async def load():
            self.client.xmpp.register_plugin("xep_0045")

        self.client.run(load())

    def join(self, room: str, nick: str | None = None, password: str | None = None) -> None:
        async def go():
            await self.client.xmpp["xep_0045"].join_muc_wait(room, nick or self.name, password=password, maxstanzas=0, timeout=10)

        self.client.run(go())

    def say(self, room: str, text: str) -> None:
        self.client.send_raw(f"<message xmlns='jabber:client' to='{room}' type='groupchat'><body>{text}</body></message>")

    def iq(self, xml: str):
        reply = self.client.iq(xml)
        assert reply["type"] == "result", str(reply)
        return reply

    def wait_message(self, predicate, timeout: float = 15):
        """The first message matching `predicate` (others are dropped)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{self.name}: no matching message within {timeout} s")
            try:
                message = self.client.next_message(remaining)
            except (asyncio.TimeoutError, TimeoutError):
                raise AssertionError(f"{self.name}: no matching message within {timeout} s")
            if predicate(message):
                return message

    def drain(self) -> None:
        queue = self.client.messages
        self.client.loop.call_soon_threadsafe(lambda: [queue.get_nowait() for _ in range(queue.qsize())])

    def close(self) -> None:
        self.client.close()


def from_bot(room: str, nick: str = "bot"):
    return lambda m: m["type"] == "groupchat" and str(m["from"]) == f"{room}/{nick}"


def admin(room: str, item: str) -> str:
    return (f"<iq xmlns='jabber:client' type='set' to='{room}' id='a{time.monotonic_ns()}'>"
            f"<query xmlns='http://jabber.org/protocol/muc#admin'>{item}</query></iq>")


def owner(room: str, payload: str) -> str:
    return (f"<iq xmlns='jabber:client' type='set' to='{room}' id='o{time.monotonic_ns()}'>"
            f"<query xmlns='http://jabber.org/protocol/muc#owner'>{payload}</query></iq>")


def rest(socket_path: Path, method: str, uri: str, body: bytes = b"", headers: dict | None = None):
    all_headers = {"Authorization": TOKEN}
    all_headers.update(headers or {})
    return asyncio.run(fcgi_client.call(str(socket_path), method, uri, body, all_headers))


def rooms_listing(socket_path: Path) -> dict[str, dict]:
    status, _, body = rest(socket_path, "GET", "/rest/rooms")
    assert status == 200, body
    return {item["room"]: item for item in json.loads(body)}


def wait_state(socket_path: Path, room: str, state: str, timeout: float = 15) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        listing = rooms_listing(socket_path)
        if listing.get(room, {}).get("state") == state:
            return listing[room]
        if time.monotonic() > deadline:
            raise AssertionError(f"{room} not {state} within {timeout} s: {listing.get(room)}")
        time.sleep(0.05)


def room_tables(*rooms: str, nicks: dict[str, str] | None = None) -> str:
    text = ""
    for room in rooms:
        text += f'[[room]]\njid = "{room}"\n'
        if room in (nicks or {}):
            text += f'nick = "{(nicks or {})[room]}"\n'
        if room == ROOM1:
            text += "history = 5\n"
        if room == SECRET_ROOM:
            text += 'password_file = "room-password"\n'
    return text


def config(prosody: Prosody, workdir: Path, rooms: str) -> str:
    return component_config(prosody.component_port, reconnect_max=RECONNECT_MAX, extra=f'''
[disco]
name = "bot"

[rest]
listen = "unix:{workdir}/fastcgi.sock"
credentials = ["{TOKEN}"]

[metrics]
path = "/metrics"

[rooms]
self_ping = 2
rejoin_delay = {REJOIN_DELAY}
accept_invites = ["alice@{DOMAIN}"]

{rooms}

[[route]]
name = "private"
rooms = ["*"]
types = ["chat"]
exec = ["/bin/sh", "-c", "echo \\"private from $STANZA_NICK in $STANZA_ROOM: $(cat)\\""]

[[route]]
name = "mention"
rooms = ["*"]
mentions = true
exec = ["/bin/sh", "-c", "echo \\"echo $STANZA_NICK: $(cat)\\""]

[[hook]]
name = "deploy"
exec = ["/bin/sh", "-c", "echo \\"deployed $(cat)\\""]
to = ["{ROOM1}"]

[[route]]
name = "log"
rooms = ["{ROOM1}"]
body = "^!log"
format = "json"
exec = ["/bin/sh", "-c", "cat >> {workdir}/log.jsonl"]
''')


@pytest.fixture(scope="module")
def users(prosody):
    alice, bob, carol = (User(name, prosody.c2s_port) for name in ("alice", "bob", "carol"))
    # The rooms exist before stanzad comes, owned by alice (so she can kick, ban and destroy), with history.
    for room in (ROOM1, ROOM2, BANNED):
        alice.join(room)
    alice.say(ROOM1, "bot: this is history and must not be answered")
    bob.join(ROOM1)
    carol.join(BUSY, nick="bot")
    alice.join(SECRET_ROOM)
    alice.iq(owner(SECRET_ROOM, "<x xmlns='jabber:x:data' type='submit'>"
                   "<field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#roomconfig</value></field>"
                   "<field var='muc#roomconfig_passwordprotectedroom'><value>1</value></field>"
                   "<field var='muc#roomconfig_roomsecret'><value>sesame</value></field></x>"))
    yield alice, bob, carol
    for user in (alice, bob, carol):
        user.close()


@pytest.fixture(scope="module")
def bot(prosody, users, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("stanzad")
    (workdir / "room-password").write_text("sesame\n")
    (workdir / "room-password").chmod(0o600)
    daemon = Stanzad(workdir, config(prosody, workdir, room_tables(ROOM1, ROOM2, BUSY, SECRET_ROOM, BANNED)))
    daemon.workdir = workdir
    daemon.start()
    daemon.wait_for_log("component connected")
    for room in (ROOM1, ROOM2, BUSY, SECRET_ROOM, BANNED):
        daemon.wait_for_log(rf"room joined .*room={re.escape(room)}")
    yield daemon
    daemon.stop()


def socket(bot: Stanzad) -> Path:
    return bot.workdir / "fastcgi.sock"


def test_joins_every_room_and_answers_a_mention_exactly_once(bot, users):
    alice, bob, _ = users
    listing = rooms_listing(socket(bot))
    for room in (ROOM1, ROOM2, SECRET_ROOM, BANNED):
        assert listing[room]["state"] == "joined", listing[room]
        assert listing[room]["nick"] == "bot"
    assert {"alice", "bob", "bot"} <= set(listing[ROOM1]["occupants"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", listing[ROOM1]["since"])
    status, _, scrape = asyncio.run(fcgi_client.call(str(socket(bot)), "GET", "/metrics"))
    assert status == 200
    assert re.search(r'^stanzad_rooms\{state="joined"\} 5(\.0)?$', scrape.decode(), re.M), scrape.decode()

    bob.drain()
    # History present at the join was not answered; each mention once: the bot's own answers (which mention
    # "bot" again) are not routed back to it, or a second answer would come before the next one.
    alice.say(ROOM1, "bot: one")
    assert bob.wait_message(from_bot(ROOM1))["body"] == "echo alice: bot: one"
    alice.say(ROOM1, "hey Bot, two")
    assert bob.wait_message(from_bot(ROOM1))["body"] == "echo alice: hey Bot, two"
    alice.say(ROOM2, "bot, three")
    assert alice.wait_message(from_bot(ROOM2))["body"] == "echo alice: bot, three"
    alice.say(ROOM1, "bot: four")
    assert bob.wait_message(from_bot(ROOM1))["body"] == "echo alice: bot: four"
    assert len(bot.wait_for_log(r"stanza handled .*route=mention", count=4)) == 4
    assert "this is history" not in bot.log()


def test_a_message_without_mention_reaches_only_the_route_without_mentions(bot, users):
    alice, bob, _ = users
    log = bot.workdir / "log.jsonl"
    alice.say(ROOM1, "!log deploy done")
    alice.say(ROOM1, "robots are not bots")
    alice.say(ROOM1, "bot: after")
    assert bob.wait_message(from_bot(ROOM1))["body"] == "echo alice: bot: after"
    bot.wait_for_log(r"stanza handled .*route=log")
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["body"] for e in entries] == ["!log deploy done"]
    assert entries[0]["room"] == ROOM1 and entries[0]["room_nick"] == "alice"
    assert entries[0]["type"] == "groupchat"


def test_a_private_message_from_an_occupant_is_answered_privately(bot, users):
    alice, _, _ = users
    alice.drain()
    alice.client.send_raw(f"<message xmlns='jabber:client' to='{ROOM1}/bot' type='chat'><body>psst</body></message>")
    reply = alice.wait_message(lambda m: m["type"] == "chat" and str(m["from"]) == f"{ROOM1}/bot")
    assert reply["body"] == f"private from alice in {ROOM1}: psst"


def test_a_taken_nick_joins_as_bot_underscore(bot, users):
    _, _, carol = users
    listing = rooms_listing(socket(bot))
    assert listing[BUSY]["nick"] == "bot_"
    assert listing[BUSY]["state"] == "joined"
    carol.say(BUSY, "bot_: hello")
    assert carol.wait_message(from_bot(BUSY, "bot_"))["body"] == "echo bot: bot_: hello"


def test_a_password_room_is_joined_with_password_file(bot, users):
    alice, _, _ = users
    assert rooms_listing(socket(bot))[SECRET_ROOM]["state"] == "joined"
    alice.say(SECRET_ROOM, "bot: secret?")
    assert alice.wait_message(from_bot(SECRET_ROOM))["body"] == "echo alice: bot: secret?"


def test_rest_groupchat_reaches_the_room_from_our_occupant(bot, users):
    _, bob, _ = users
    status, _, body = rest(socket(bot), "POST", f"/rest/message/groupchat/{ROOM1}", b"deploy finished",
                           {"Content-Type": "text/plain"})
    assert status == 202, body
    assert bob.wait_message(from_bot(ROOM1))["body"] == "deploy finished"


def test_a_hooks_plain_text_goes_to_its_room_as_group_chat_from_our_occupant(bot, users):
    _, bob, _ = users
    status, _, body = rest(socket(bot), "POST", "/rest/hooks/deploy", b"v1.2.0", {"Content-Type": "text/plain"})
    assert status == 202 and json.loads(body) == {"sent": 1}, body
    message = bob.wait_message(from_bot(ROOM1))
    assert message["body"] == "deployed v1.2.0" and message["type"] == "groupchat"


def test_kicked_comes_back_after_rejoin_delay(bot, users):
    alice, bob, _ = users
    kicked = time.monotonic()
    alice.iq(admin(ROOM1, "<item nick='bot' role='none'><reason>out</reason></item>"))
    bot.wait_for_log(rf"removed from room .*room={re.escape(ROOM1)}")
    wait_state(socket(bot), ROOM1, "joined", timeout=REJOIN_DELAY + 10)
    back = time.monotonic() - kicked
    print(f"kicked → joined again after {back:.2f} s (rejoin_delay {REJOIN_DELAY} s)")
    assert REJOIN_DELAY - 0.2 <= back <= REJOIN_DELAY + 3
    bob.drain()
    alice.say(ROOM1, "bot: still there?")
    assert bob.wait_message(from_bot(ROOM1))["body"] == "echo alice: bot: still there?"


def test_a_destroyed_room_is_rejoined_when_it_is_back(bot, users):
    alice, _, _ = users
    destroyed = time.monotonic()
    alice.iq(owner(ROOM2, "<destroy><reason>moving</reason></destroy>"))
    bot.wait_for_log(rf"room destroyed .*room={re.escape(ROOM2)}")
    alice.join(ROOM2)
    wait_state(socket(bot), ROOM2, "joined", timeout=20)
    print(f"destroyed and recreated → joined again after {time.monotonic() - destroyed:.2f} s")
    alice.say(ROOM2, "bot: welcome back")
    assert alice.wait_message(from_bot(ROOM2))["body"] == "echo alice: bot: welcome back"


def test_banned_stays_out(bot, users):
    alice, _, _ = users
    alice.iq(admin(BANNED, f"<item jid='{COMPONENT}' affiliation='outcast'/>"))
    bot.wait_for_log(rf"banned from room.*room={re.escape(BANNED)}")
    assert wait_state(socket(bot), BANNED, "banned")["occupants"] == []
    # Still banned well after the rejoin delay, and no join was tried.
    joins = bot.log().count(f"joining room room={BANNED}")
    alice.say(ROOM1, "bot: marker")
    alice.wait_message(from_bot(ROOM1))
    time_after = time.monotonic() + REJOIN_DELAY * 2
    while time.monotonic() < time_after:
        assert rooms_listing(socket(bot))[BANNED]["state"] == "banned"
        time.sleep(0.2)
    assert bot.log().count(f"joining room room={BANNED}") == joins


def test_self_ping_finds_a_silently_dropped_occupant(bot, users, prosody):
    alice, bob, _ = users
    # The room forgets the bot without a presence (as after a MUC restart that lost its occupants).
    lua = (f'> local room = prosody.hosts["{MUC}"].modules.muc.get_room_from_jid("{ROOM1}"); '
           f'local occupant = room:get_occupant_by_nick("{ROOM1}/bot"); '
           'for real in occupant:each_session() do room._jid_nick[real] = nil end; '
           f'room._occupants["{ROOM1}/bot"] = nil; return "dropped"')
    import subprocess
    result = subprocess.run(["prosodyctl", "--config", str(prosody.config), "shell"], input=lua + "\n",
                            capture_output=True, text=True, timeout=20)
    assert "dropped" in result.stdout, result.stdout + result.stderr
    dropped = time.monotonic()
    bot.wait_for_log(rf"self-ping says we are no longer in room.*room={re.escape(ROOM1)}", timeout=10)
    wait_state(socket(bot), ROOM1, "joined")
    print(f"silently dropped → rejoined after {time.monotonic() - dropped:.2f} s (self_ping 2 s)")
    bob.drain()
    alice.say(ROOM1, "bot: found you")
    assert bob.wait_message(from_bot(ROOM1))["body"] == "echo alice: bot: found you"


def test_invites_are_accepted_only_from_accept_invites(bot, users):
    alice, _, carol = users
    alice.join(PARTY)
    # Non-anonymous, so that the invite the room forwards names alice's real JID, which accept_invites checks.
    alice.iq(owner(PARTY, "<x xmlns='jabber:x:data' type='submit'>"
                   "<field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#roomconfig</value></field>"
                   "<field var='muc#roomconfig_whois'><value>anyone</value></field></x>"))
    carol.client.send_raw(f"<message xmlns='jabber:client' to='{COMPONENT}'><x xmlns='jabber:x:conference' jid='{LATER}'/></message>")
    bot.wait_for_log(rf"room invite ignored .*inviter=carol@{DOMAIN}")
    alice.client.send_raw(f"<message xmlns='jabber:client' to='{PARTY}'><x xmlns='http://jabber.org/protocol/muc#user'>"
                          f"<invite to='{COMPONENT}'><reason>join us</reason></invite></x></message>")
    bot.wait_for_log(rf"room invite accepted .*room={re.escape(PARTY)}")
    wait_state(socket(bot), PARTY, "joined")
    assert LATER not in rooms_listing(socket(bot))
    alice.say(PARTY, "bot: thanks for coming")
    assert alice.wait_message(from_bot(PARTY))["body"] == "echo alice: bot: thanks for coming"


def test_sighup_joins_added_rooms_and_leaves_removed_ones(bot, users, prosody):
    alice, _, _ = users
    alice.join(LATER)
    connected = bot.log().count("component connected")
    bot.config_path.write_text(config(prosody, bot.workdir, room_tables(ROOM1, BUSY, SECRET_ROOM, BANNED, LATER,
                                                                        nicks={SECRET_ROOM: "robot"})))
    bot.signal(signal.SIGHUP)
    bot.wait_for_log(rf"room joined .*room={re.escape(LATER)}")
    bot.wait_for_log(rf"leaving room .*room={re.escape(ROOM2)}")
    listing = rooms_listing(socket(bot))
    assert ROOM2 not in listing
    assert listing[LATER]["state"] == "joined"
    assert listing[PARTY]["state"] == "joined", "a room joined on an invite stays until the next restart"
    alice.say(LATER, "bot: new room")
    assert alice.wait_message(from_bot(LATER))["body"] == "echo alice: bot: new room"
    # The changed nick was asked for in the room, and mentions follow it.
    bot.wait_for_log(rf"changing nick in room .*room={re.escape(SECRET_ROOM)}")
    deadline = time.monotonic() + 10
    while rooms_listing(socket(bot))[SECRET_ROOM]["nick"] != "robot":
        assert time.monotonic() < deadline, rooms_listing(socket(bot))[SECRET_ROOM]
        time.sleep(0.05)
    alice.say(SECRET_ROOM, "robot: renamed?")
    assert alice.wait_message(from_bot(SECRET_ROOM, "robot"))["body"] == "echo alice: robot: renamed?"
    assert bot.log().count("component connected") == connected, "the link was not dropped"


def test_prosody_killed_and_restarted_rooms_rejoined(bot, users, prosody):
    prosody.process.send_signal(signal.SIGKILL)
    prosody.process.wait()
    bot.wait_for_log("component link down")
    started = time.monotonic()
    prosody.start()
    joined_before = len(bot.wait_for_log(rf"room joined .*room={re.escape(ROOM1)}"))
    bot.wait_for_log(rf"room joined .*room={re.escape(ROOM1)}", count=joined_before + 1, timeout=RECONNECT_MAX + REJOIN_DELAY + 10)
    back = time.monotonic() - started
    print(f"Prosody restarted → {ROOM1} rejoined after {back:.2f} s (reconnect_max {RECONNECT_MAX} s)")
    assert back <= RECONNECT_MAX + REJOIN_DELAY + 2
    user = User("bob", prosody.c2s_port)
    try:
        user.join(ROOM1, nick="bob2")
        user.say(ROOM1, "bot: after the restart")
        assert user.wait_message(from_bot(ROOM1))["body"] == "echo bob2: bot: after the restart"
    finally:
        user.close()


def test_the_readme_room_bot_works_as_shown(bot, prosody, tmp_path):
    from harness import REPO, SECRET
    from test_docs_snippets import README, code_blocks

    text = next(t for lang, t, _ in code_blocks(README) if lang == "toml" and 'name = "room-commands"' in t)
    text = (text.replace('jid = "bot.example.org"', f'jid = "{COMPONENT}"')
            .replace('server = "127.0.0.1:5347"', f'server = "127.0.0.1:{prosody.component_port}"')
            .replace('secret = "change-me"', f'secret = "{SECRET}"')
            .replace("conference.example.org", MUC))
    (tmp_path / "handlers").symlink_to(REPO / "handlers")
    bot.stop()  # the README's bot is the component now (after the restart test, on the restarted Prosody)
    alice = User("alice", prosody.c2s_port)
    ops = f"ops@{MUC}"
    daemon = Stanzad(tmp_path, text).start()
    try:
        daemon.wait_for_log(rf"room joined .*room={re.escape(ops)}")
        daemon.wait_for_log(rf"room joined .*room={re.escape('oncall@' + MUC)}")
        alice.join(ops)
        alice.drain()
        alice.say(ops, "!ping")
        assert alice.wait_message(from_bot(ops, "opsbot"))["body"] == "pong"
        alice.say(ops, "!whoami")
        assert alice.wait_message(from_bot(ops, "opsbot"))["body"] == f"alice in {ops}"
        alice.say(ops, "opsbot: help")
        assert alice.wait_message(from_bot(ops, "opsbot"))["body"] == "alice: I know !ping, !time, !whoami and !roll N"
        alice.say(ops, "!roll 20")
        assert re.fullmatch(r"alice rolls ([1-9]|1\d|20) \(d20\)", alice.wait_message(from_bot(ops, "opsbot"))["body"])
    finally:
        daemon.stop()
        alice.close()


def test_ejabberd_mod_muc_rooms(tmp_path):
    from ejabberd import Ejabberd

    server = Ejabberd(str(tmp_path / "ejabberd"), domain=DOMAIN, component=COMPONENT, secret="s3cret",
                      users={"alice": "pw", "bob": "pw"},
                      extra_modules={"mod_muc": {"access_create": "all", "history_size": 20}})
    server.start()
    users: list[User] = []
    daemon = None
    try:
        alice, bob = User("alice", server.c2s_port), User("bob", server.c2s_port)
        users += [alice, bob]
        for room in (ROOM1, ROOM2):
            alice.join(room)
        bob.join(ROOM1)
        alice.say(ROOM1, "bot: this is history and must not be answered")
        workdir = tmp_path / "stanzad"
        workdir.mkdir()
        daemon = Stanzad(workdir, config(server, workdir, room_tables(ROOM1, ROOM2)))
        daemon.start()
        for room in (ROOM1, ROOM2):
            daemon.wait_for_log(rf"room joined .*room={re.escape(room)}", timeout=30)
        alice.say(ROOM1, "bot: one")
        assert bob.wait_message(from_bot(ROOM1))["body"] == "echo alice: bot: one"
        alice.say(ROOM1, "!log no mention here")
        alice.say(ROOM2, "bot, two")
        assert alice.wait_message(from_bot(ROOM2))["body"] == "echo alice: bot, two"
        daemon.wait_for_log(r"stanza handled .*route=log")
        assert [json.loads(line)["body"] for line in (workdir / "log.jsonl").read_text().splitlines()] == ["!log no mention here"]
        assert len(daemon.wait_for_log(r"stanza handled .*route=mention", count=2)) == 2
        assert "this is history" not in daemon.log()

        kicked = time.monotonic()
        alice.iq(admin(ROOM1, "<item nick='bot' role='none'/>"))
        daemon.wait_for_log(rf"removed from room .*room={re.escape(ROOM1)}")
        daemon.wait_for_log(rf"room joined .*room={re.escape(ROOM1)}", count=2, timeout=REJOIN_DELAY + 10)
        print(f"ejabberd: kicked → joined again after {time.monotonic() - kicked:.2f} s")
        bob.drain()
        alice.say(ROOM1, "bot: back?")
        assert bob.wait_message(from_bot(ROOM1))["body"] == "echo alice: bot: back?"
    finally:
        if daemon:
            daemon.stop()
        for user in users:
            user.close()
        server.stop()
