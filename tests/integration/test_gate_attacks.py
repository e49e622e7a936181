"""Attacks on the command gate (a deciding filter in the chain), as a hostile client and a
broken server would make them.

With a filter that decides about a command, the relay holds it, gives the client its own
``+`` for each small synchronising literal, assembles it, asks the chain, and sends it
upstream in segments, each after the server's ``+``.  Whatever a client or a server does,
the server must never run bytes the proxy did not see as the command the filter passed.

Against the real Dovecot (through a recording relay, so the bytes that reached Dovecot are
known) each test checks three things: the answers the client got; Dovecot's state, read
directly (the refused thing did not happen); and that the commands in the bytes that
reached Dovecot are exactly the commands the filter passed, in order.  The faults only a
broken server makes come from the scripted fake server.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import re
import socket
import time
from collections.abc import Callable

import pytest
import trio

from imapproxy.config import Endpoint, ListenerConfig, ProxyConfig, Timeouts, UpstreamConfig
from imapproxy.filters import (
    PASS,
    ChainEntry,
    ClientLineView,
    CommandView,
    Filter,
    FilterChain,
    OnError,
    Reject,
    SessionInfo,
)
from imapproxy.filters.views import mailbox_arguments
from imapproxy.wire import NEED_DATA, PAUSED, Decoder, Frame, Limits, LiteralChunk, Side
from imapproxy.wire.limits import DEFAULT_LIMITS
from imapproxy.wire.secret import Secret
from tests.support.dovecot import DovecotServer
from tests.support.fakeserver import (
    Expect,
    FakeConnection,
    ImapClient,
    Script,
    Send,
    Stall,
    fake_server,
    recording_relay,
    status_of,
    wait_session_end,
)
from tests.support.proxy import running_proxy

LIMIT = 20.0
PROMPTLY = 5.0  # what must happen at once, generous for a loaded 2-core machine
SECRET = "Secret"

TIMEOUTS = Timeouts(
    upstream_connect=2.0,
    upstream_greeting=2.0,
    idle_unauthenticated=30.0,
    idle_authenticated=30.0,
    answer_timeout=30.0,
    shutdown_drain=0.2,
    farewell=0.5,
)


# --------------------------------------------------------------------------- the filter


class Guard(Filter):
    """Refuses DELETE and any command naming a mailbox that contains "Secret"; records
    every whole command it decided on, and every SASL/IDLE line it was shown."""

    name = "guard"

    def __init__(self, record: Record) -> None:
        self.record = record

    def command(self, cmd: CommandView, session):  # type: ignore[no-untyped-def]
        partial = not cmd.complete and cmd.literals and cmd.literals[-1].inline
        if cmd.name == "DELETE" or any(SECRET in m for m in mailbox_arguments(cmd)):
            self.record.refused.append(cmd)  # (on its head, or whole)
            return Reject("not this one", code="NOPERM")
        if not partial:
            self.record.passed.append(cmd)
        return PASS

    def client_line(self, line: ClientLineView, session):  # type: ignore[no-untyped-def]
        self.record.lines.append(line)
        return PASS


class Record:
    def __init__(self) -> None:
        self.passed: list[CommandView] = []
        self.refused: list[CommandView] = []
        self.lines: list[ClientLineView] = []

    def chain(self) -> FilterChain:
        def factory(info: SessionInfo) -> Guard:
            return Guard(self)

        return FilterChain([ChainEntry("guard", factory, OnError.CLOSED)])


def config(port: int, *, limits: Limits = DEFAULT_LIMITS, timeouts: Timeouts = TIMEOUTS):
    return ProxyConfig(
        listeners=(ListenerConfig(Endpoint("127.0.0.1", 0), implicit_tls=False),),
        upstream=UpstreamConfig(Endpoint("127.0.0.1", port)),
        limits=limits,
        timeouts=timeouts,
    )


@pytest.fixture(autouse=True)
def _capture_proxy_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="imapproxy")


def messages(caplog: pytest.LogCaptureFixture) -> Callable[[], list[str]]:
    return lambda: [r.getMessage() for r in caplog.records]


# --------------------------------------------------------------------------- helpers


def as_sent(raw: bytes) -> bytes:
    """A command as the relay sends it upstream: every {n+} written {n}."""
    return re.sub(rb"\{(\d+)\+\}\r\n", rb"{\1}\r\n", raw)


def commands_in(data: bytes) -> list[bytes]:
    """The commands in bytes sent to a server, split the way a server reads them (every
    literal there is synchronising: the relay sends none other)."""
    dec = Decoder(Side.CLIENT, DEFAULT_LIMITS)
    dec.authenticated = True
    if data:  # (no bytes would be read as the end of the stream)
        dec.receive_data(data)
    out: list[bytes] = []
    current = b""
    for _ in range(100_000):
        ev = dec.next_event()
        if ev is NEED_DATA:
            break
        if ev is PAUSED:
            assert dec.continuation()
            continue
        if isinstance(ev, Frame):
            current += ev.raw
            if ev.final:
                out.append(current)
                current = b""
        elif isinstance(ev, LiteralChunk):
            current += ev.data
        else:
            raise AssertionError((ev, data))
    assert current == b"" and dec.buffered == 0, (current, data)
    return out


def assert_upstream_is_what_passed(upstream: bytes, record: Record) -> None:
    """The commands that reached the server are exactly the commands the filter passed."""
    assert commands_in(upstream) == [as_sent(c.raw) for c in record.passed]


def tagged_answers(from_server: bytes) -> set[bytes]:
    return {m.group(1) for m in re.finditer(rb"(?m)^([^*+\s][^\s]*) (?:OK|NO|BAD)\b", from_server)}


class Direct:
    """A plain socket session straight to Dovecot: its state, read without the proxy."""

    def __init__(self, dovecot: DovecotServer, user: str, password: str) -> None:
        self.sock = socket.create_connection((dovecot.host, dovecot.port), timeout=10)
        self.n = 0
        self._read(b"* OK")
        assert b"d0 OK" in self.cmd(b"LOGIN " + user.encode() + b" " + password.encode())

    def _read(self, until: bytes) -> bytes:
        """Until a line starting with ``until`` is complete."""
        out = b""
        pattern = re.compile(rb"(?:^|\r\n)" + re.escape(until) + rb"[^\r\n]*\r\n")
        deadline = time.monotonic() + 10
        while not pattern.search(out) and time.monotonic() < deadline:
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            out += chunk
        return out

    def cmd(self, text: bytes) -> bytes:
        tag = b"d%d" % self.n
        self.n += 1
        self.sock.sendall(tag + b" " + text + b"\r\n")
        return self._read(tag + b" ")

    def mailboxes(self) -> set[str]:
        out = self.cmd(b'LIST "" *')
        return {
            m.group(1).decode().strip('"')
            for m in re.finditer(rb'(?m)^\* LIST \([^)]*\) (?:"."|NIL) (.+?)\r$', out)
        }

    def messages(self, box: bytes) -> int:
        out = self.cmd(b"STATUS " + box + b" (MESSAGES)")
        m = re.search(rb"MESSAGES (\d+)", out)
        assert m, out
        return int(m.group(1))

    def close(self) -> None:
        self.sock.close()


class Client:
    def __init__(self, client: ImapClient) -> None:
        self.c = client

    async def send(self, data: bytes) -> None:
        await self.c.send(data)

    async def until(self, tag: bytes) -> list[bytes]:
        return await self.c.read_until_tagged(tag)

    async def plus(self) -> bytes:
        line = await self.c.read_line()
        assert line.startswith(b"+"), line
        return line


async def login(client: ImapClient, user: str, password: str) -> None:
    assert (await client.read_response()).startswith(b"* OK")
    await client.send(b"L LOGIN " + user.encode() + b" " + password.encode() + b"\r\n")
    assert status_of((await client.read_until_tagged(b"L"))[-1]) == b"OK"


def status_by_tag(responses: list[bytes]) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    for r in responses:
        tag, _, rest = r.partition(b" ")
        if tag not in (b"*", b"+"):
            out[tag] = rest.split(b" ", 1)[0]
    return out


async def read_tags(client: ImapClient, tags: list[bytes]) -> tuple[dict[bytes, bytes], bytes]:
    """Read responses until every tag in ``tags`` is completed."""
    got: dict[bytes, bytes] = {}
    start = len(client.received)
    while not set(tags) <= set(got):
        response = await client.read_response()
        assert response, f"EOF; so far {got}"
        got.update(status_by_tag([response]))
    return got, bytes(client.received[start:])


@pytest.fixture
def account(dovecot: DovecotServer, new_user):  # type: ignore[no-untyped-def]
    """A fresh user with mailboxes Secret (one message) and Keep (one message)."""
    user, password = new_user()
    direct = Direct(dovecot, user, password)
    msg = b"Subject: x\r\n\r\nhello\r\n"
    for box in (b"Secret", b"Keep"):
        assert b" OK" in direct.cmd(b"CREATE " + box)
        direct.sock.sendall(b"ap APPEND " + box + b" {%d}\r\n" % len(msg))
        assert direct._read(b"+").startswith(b"+")
        direct.sock.sendall(msg + b"\r\n")
        assert b"ap OK" in direct._read(b"ap ")
    yield user, password, direct
    direct.close()


async def through_proxy(dovecot, record: Record, body, **kw):  # type: ignore[no-untyped-def]
    """Run ``body(client, upstream_conn)`` against Dovecot through the proxy (with the
    Guard) and a recording relay; returns the bytes the proxy sent Dovecot (after LOGIN)."""
    with trio.fail_after(LIMIT):
        async with (
            recording_relay(dovecot.host, dovecot.port) as relay,
            running_proxy(config(relay.port, **kw), filters=record.chain()) as (_, addrs),
        ):
            client = await ImapClient.connect(*addrs[0])
            await body(client)
            await client.send(b"Z LOGOUT\r\n")
            await client.read_until_eof()
            up = await relay.connection(0)
            await up.done.wait()
    record.passed = [c for c in record.passed if c.name not in ("LOGIN", "LOGOUT")]
    upstream = bytes(up.received)
    first = upstream.index(b"\r\n") + 2  # the LOGIN line
    logout = upstream.rindex(b"Z LOGOUT\r\n")
    return upstream[first:logout], bytes(up.sent)


DOVECOT = pytest.mark.dovecot


# --------------------------------------------------------------------------- pipelining


@DOVECOT
async def test_pipelined_mix_of_held_refused_and_literal_smuggling(dovecot, account) -> None:
    user, password, direct = account
    record = Record()
    smuggle = b"x DELETE Secret\r\n"

    async def body(client: ImapClient) -> None:
        await login(client, user, password)
        # one write: passed, refused at the head ({n+} literal discarded), refused whole,
        # a literal that looks like commands, case and quoting variants, then more
        await client.send(
            b"p1 NOOP\r\n"
            b"p2 CREATE {4+}\r\nbox1\r\n"
            b"p3 DELETE {6+}\r\nSecret\r\n"
            b"p4 RENAME Keep {6+}\r\nSecret\r\n"
            b"p5 CREATE {%d+}\r\n%s\r\n"
            b'p6 delete "Keep"\r\n'
            b"p7 SELECT {4+}\r\nKeep\r\n"
            b"p8 UID COPY 1:* {6+}\r\nSecret\r\n"
            b"p9 uid move 1:* Secret\r\n"
            b"p10 STATUS Keep (MESSAGES)\r\n" % (len(smuggle), smuggle)
        )
        tags = [b"p%d" % i for i in range(1, 11)]
        got, text = await read_tags(client, tags)
        assert got[b"p1"] == b"OK" and got[b"p2"] == b"OK" and got[b"p7"] == b"OK", text
        assert got[b"p10"] == b"OK", text
        for refused in (b"p3", b"p4", b"p6", b"p8", b"p9"):
            assert got[refused] == b"NO", text
            assert re.search(rb"(?m)^" + refused + rb" NO \[NOPERM\]", text), text
        assert got[b"p5"] in (b"NO", b"BAD"), text  # Dovecot's own answer to that name
        assert b"x OK" not in text and b"x NO" not in text
        # {n} after {n+}: the proxy's own "+", then a refused one whose literal the
        # client sends anyway (it is read as commands, and decided as such)
        await client.send(b"q1 CREATE {4}\r\n")
        assert (await client.read_line()).startswith(b"+")
        await client.send(b"box2\r\nq2 DELETE {6}\r\n")
        got, text = await read_tags(client, [b"q1", b"q2"])
        assert got == {b"q1": b"OK", b"q2": b"NO"}, text
        await client.send(smuggle + b"q3 NOOP\r\n")
        got, text = await read_tags(client, [b"x", b"q3"])
        assert got == {b"x": b"NO", b"q3": b"OK"}, text
        assert b"[NOPERM]" in text

    upstream, from_server = await through_proxy(dovecot, record, body)
    assert {"Secret", "Keep", "box1", "box2"} <= direct.mailboxes()
    assert direct.messages(b"Secret") == 1 and direct.messages(b"Keep") == 1
    assert_upstream_is_what_passed(upstream, record)
    seen = {c.tag for c in record.passed} | {b"L", b"Z"}
    assert tagged_answers(from_server) <= seen, from_server


@DOVECOT
async def test_tag_reused_while_a_held_command_is_in_progress() -> None:
    """Fake server: "a" stays in progress until the client has been answered about the
    reused tag; the second "a" must be refused, never forwarded."""
    record = Record()
    got_reuse = trio.Event()

    async def server(conn: FakeConnection) -> None:
        head = await conn.read_line()
        assert head == b"a CREATE {3}\r\n", head
        await conn.send(b"+ go\r\n")
        assert await conn.read_exact(5) == b"abc\r\n"
        await got_reuse.wait()  # "a" is in progress until then
        await conn.send(b"a OK created\r\n")
        # next must be b NOOP: the reused "a NOOP" never arrives
        assert await conn.read_line() == b"b NOOP\r\n"
        await conn.send(b"b OK noop\r\n")

    script: Script = [Send(GREETING), Expect("LOGIN", reply=b"{tag} OK in\r\n"), server,
                      Expect("LOGOUT", reply=b"* BYE bye\r\n{tag} OK bye\r\n")]  # fmt: skip
    with trio.fail_after(LIMIT):
        async with (
            fake_server(script) as fake,
            running_proxy(config(fake.port), filters=record.chain()) as (_, addrs),
        ):
            client = await ImapClient.connect(*addrs[0])
            await fake_login(client)
            await client.send(b"a CREATE {3}\r\n")
            assert (await client.read_line()).startswith(b"+")
            await client.send(b"abc\r\na NOOP\r\nb NOOP\r\n")
            # the reused tag is answered by the relay while "a" is still in progress
            first = await client.read_response()
            assert first.startswith(b"a BAD"), first
            got_reuse.set()
            got, text = await read_tags(client, [b"a", b"b"])
            assert got == {b"a": b"OK", b"b": b"OK"}, text
            await client.send(b"Z LOGOUT\r\n")
            await client.read_until_eof()


GREETING = b"* OK [CAPABILITY IMAP4rev1 LITERAL+ IDLE AUTH=PLAIN] fake ready\r\n"


async def fake_login(client: ImapClient) -> None:
    assert (await client.read_response()).startswith(b"* OK")
    await client.send(b"L LOGIN u p\r\n")
    assert status_of((await client.read_until_tagged(b"L"))[-1]) == b"OK"


# --------------------------------------------------------------------------- spelling


SPELLINGS = [
    pytest.param([b"s DELETE Secret\r\n"], id="atom"),
    pytest.param([b"s delete Secret\r\n"], id="lower"),
    pytest.param([b's DeLeTe "Secret"\r\n'], id="mixed-quoted"),
    pytest.param([b"s DELETE {6}\r\n", b"Secret\r\n"], id="sync-literal"),
    pytest.param([b"s DELETE {6+}\r\nSecret\r\n"], id="nonsync-literal"),
    pytest.param([b"s DELETE {06+}\r\nSecret\r\n"], id="nonsync-leading-zero"),
    pytest.param([b"s RENAME Secret Other\r\n"], id="rename-atom"),
    pytest.param([b"s RENAME {6}\r\n", b"Secret Other\r\n"], id="rename-sync"),
    pytest.param([b"s RENAME Keep {6}\r\n", b"Secret\r\n"], id="rename-to-secret"),
    pytest.param([b"s SELECT Keep\r\ns2 UID COPY 1:* Secret\r\n"], id="uid-copy"),
    pytest.param([b"s SELECT Keep\r\ns2 Uid Move 1:* {6+}\r\nSecret\r\n"], id="uid-move"),
    pytest.param([b's SELECT Keep\r\ns2 COPY 1 "Secret"\r\n'], id="copy-quoted"),
    pytest.param([b"s APPEND Secret {5}\r\n", b"hello\r\n"], id="append-sync"),
    pytest.param([b"s APPEND {6+}\r\nSecret {5+}\r\nhello\r\n"], id="append-literals"),
]


@DOVECOT
@pytest.mark.parametrize("parts", SPELLINGS)
async def test_spellings_of_the_refused_command(dovecot, account, parts) -> None:
    user, password, direct = account
    record = Record()

    async def body(client: ImapClient) -> None:
        await login(client, user, password)
        for part in parts[:-1]:
            await client.send(part)
            line = await client.read_line()
            if not line.startswith(b"+"):  # refused at the head: the literal never goes
                assert re.match(rb"s NO \[NOPERM\]", line), line
                return
        await client.send(parts[-1] + b"n NOOP\r\n")
        _got, text = await read_tags(client, [b"n"])
        assert re.search(rb"(?m)^s2? NO \[NOPERM\]", text), text

    upstream, _from_server = await through_proxy(dovecot, record, body)
    assert record.refused, "the filter was never asked"
    assert {"Secret", "Keep"} <= direct.mailboxes()
    assert "Other" not in direct.mailboxes()
    assert direct.messages(b"Secret") == 1 and direct.messages(b"Keep") == 1
    assert_upstream_is_what_passed(upstream, record)


@DOVECOT
@pytest.mark.parametrize(
    "line",
    [
        b's DELETE "Secr\\et"\r\n',
        b's rename "Secr\\et" Other\r\n',
        b's2 COPY 1 "Secr\\et"\r\n',
    ],
    ids=["delete", "rename", "copy"],
)
async def test_a_name_only_the_server_can_read_is_refused(dovecot, account, line) -> None:
    """A quoted string with a backslash before an ordinary character is no IMAP string
    (the proxy's parser says so), but Dovecot reads "Secr\\et" as "Secret".  A command a
    deciding filter wants whose arguments the proxy cannot read is refused, fail closed:
    otherwise the spelling would talk the filter around."""
    user, password, direct = account
    record = Record()

    async def body(client: ImapClient) -> None:
        await login(client, user, password)
        await client.send(b"k SELECT Keep\r\n" + line + b"n NOOP\r\n")
        tag = line.split(b" ")[0]
        got, text = await read_tags(client, [b"k", tag, b"n"])
        assert got[tag] == b"BAD" and b"[CLIENTBUG]" in text, text
        assert got[b"n"] == b"OK", text

    upstream, _ = await through_proxy(dovecot, record, body)
    assert {"Secret", "Keep"} <= direct.mailboxes() and "Other" not in direct.mailboxes()
    assert direct.messages(b"Secret") == 1 and direct.messages(b"Keep") == 1
    assert b"Secr" not in upstream
    assert_upstream_is_what_passed(upstream, record)


@DOVECOT
async def test_modified_utf7_name_is_decided_decoded(dovecot, account) -> None:
    """ "Secret-ä" written in modified UTF-7 (Secret-&AOQ-) is a name containing Secret."""
    user, password, direct = account
    assert b" OK" in direct.cmd(b"CREATE Secret-&AOQ-")
    record = Record()

    async def body(client: ImapClient) -> None:
        await login(client, user, password)
        await client.send(b"s RENAME {12+}\r\nSecret-&AOQ- Gone\r\nn NOOP\r\n")
        got, text = await read_tags(client, [b"s", b"n"])
        assert got == {b"s": b"NO", b"n": b"OK"}, text

    upstream, _ = await through_proxy(dovecot, record, body)
    assert "Secret-&AOQ-" in direct.mailboxes() and "Gone" not in direct.mailboxes()
    assert_upstream_is_what_passed(upstream, record)


@DOVECOT
async def test_uid_with_two_spaces_is_not_a_way_around(dovecot, account) -> None:
    """ "UID  COPY" (two spaces): the relay's name for it is "UID"; if a filter deciding
    about COPY is bypassed that way, Dovecot must not run it either."""
    user, password, direct = account
    record = Record()

    async def body(client: ImapClient) -> None:
        await login(client, user, password)
        await client.send(b"s SELECT Keep\r\nc UID  COPY 1:* Secret\r\nn NOOP\r\n")
        got, text = await read_tags(client, [b"s", b"c", b"n"])
        assert got[b"c"] in (b"NO", b"BAD"), text

    upstream, _ = await through_proxy(dovecot, record, body)
    assert direct.messages(b"Secret") == 1
    assert_upstream_is_what_passed(upstream, record)


# --------------------------------------------------------------------------- the bound


@DOVECOT
@pytest.mark.parametrize("plus", [b"", b"+"], ids=["sync", "nonsync"])
async def test_over_the_assembly_bound_then_the_literal_anyway(dovecot, account, plus) -> None:
    """Small inline literals (1 KiB: the bound is 4 KiB): five of them are refused
    [TOOBIG]; the client sends the refused literal anyway, and what it holds is read as
    commands (a DELETE among them, which the filter refuses)."""
    user, password, direct = account
    record = Record()
    limits = Limits(inline_literal_bytes=1024)
    filler = b"x DELETE Secret\r\ny NOOP\r\n"
    literal = filler + b"z" * (1000 - len(filler))

    async def body(client: ImapClient) -> None:
        await login(client, user, password)
        head = b"t SEARCH"
        for _ in range(5):
            await client.send(head + b" TEXT {1000%s}\r\n" % plus)
            head = b""
            if plus:
                await client.send(literal)
                continue
            line = await client.read_line()
            if not line.startswith(b"+"):
                assert line.startswith(b"t BAD [TOOBIG]"), line
                break
            await client.send(literal)
        else:
            if not plus:
                pytest.fail("never refused")
        if plus:
            await client.send(b"\r\nn NOOP\r\n")
            got, text = await read_tags(client, [b"t", b"n"])
            assert got == {b"t": b"BAD", b"n": b"OK"}, text
            assert b"[TOOBIG]" in text
            return
        # the literal anyway: its lines are commands now
        await client.send(literal + b"\r\nn NOOP\r\n")
        got, text = await read_tags(client, [b"x", b"y", b"n"])
        assert got[b"x"] == b"NO" and got[b"y"] == b"OK" and got[b"n"] == b"OK", text

    upstream, _ = await through_proxy(dovecot, record, body, limits=limits)
    assert "Secret" in direct.mailboxes()
    assert_upstream_is_what_passed(upstream, record)


# --------------------------------------------------------------------------- timers


@DOVECOT
@pytest.mark.parametrize("sent", [b"", b"Sec"], ids=["no-literal", "half-literal"])
async def test_client_stalls_inside_a_held_command(dovecot, account, caplog, sent) -> None:
    user, password, _direct = account
    record = Record()
    fast = Timeouts(idle_authenticated=1.5, idle_unauthenticated=10.0, answer_timeout=30.0,
                    shutdown_drain=0.2, farewell=0.5)  # fmt: skip
    with trio.fail_after(LIMIT):
        async with running_proxy(config(dovecot.port, timeouts=fast),
                                 filters=record.chain()) as (_, addrs):  # fmt: skip
            client = await ImapClient.connect(*addrs[0])
            await login(client, user, password)
            await client.send(b"a CREATE {6}\r\n")
            assert (await client.read_line()).startswith(b"+")
            await client.send(sent)
            rest = await client.read_until_eof()
            assert rest.startswith(b"* BYE"), rest
            _, end = await wait_session_end(messages(caplog), client.local_port)
    assert "client_stalled" in end, end
    assert not any(c.name == "CREATE" for c in record.passed)


# --------------------------------------------------------------------------- broken servers


def held_create_script(after_segment: Callable) -> Script:  # type: ignore[type-arg]
    """Greeting, LOGIN; then reads the first segment of "a CREATE {3}" and hands over."""

    async def segment(conn: FakeConnection) -> None:
        assert await conn.read_line() == b"a CREATE {3}\r\n"
        await after_segment(conn)

    return [Send(GREETING), Expect("LOGIN", reply=b"{tag} OK in\r\n"), segment]


async def send_held_create(client: ImapClient, rest: bytes = b"") -> None:
    await fake_login(client)
    await client.send(b"a CREATE {3}\r\n")
    assert (await client.read_line()).startswith(b"+")
    await client.send(b"abc\r\n" + rest)


async def run_fake(script: Script, client_part, caplog, *, timeouts: Timeouts = TIMEOUTS,
                   expect_errors=frozenset()):  # type: ignore[no-untyped-def]  # fmt: skip
    record = Record()
    with trio.fail_after(LIMIT):
        async with (
            fake_server(script, expect_errors=expect_errors) as fake,
            running_proxy(config(fake.port, timeouts=timeouts), filters=record.chain()) as (
                _,
                addrs,
            ),  # fmt: skip
        ):
            client = await ImapClient.connect(*addrs[0])
            await client_part(client)
            with trio.fail_after(PROMPTLY):
                _, end = await wait_session_end(messages(caplog), client.local_port)
            conn = await fake.connection(0)
    return client, conn, end


@pytest.mark.parametrize("write", [b"+ one\r\n+ two\r\n"], ids=["two-plus-one-write"])
async def test_server_answers_a_segment_with_two_plus(caplog, write) -> None:
    async def twice(conn: FakeConnection) -> None:
        await conn.send(write)
        await Stall()(conn)

    async def client_part(client: ImapClient) -> None:
        await send_held_create(client)
        rest = await client.read_until_eof()
        assert rest.startswith(b"* BYE [UNAVAILABLE]"), rest

    _, conn, end = await run_fake(held_create_script(twice), client_part, caplog)
    assert "upstream_desync" in end, end
    assert bytes(conn.received).endswith(b"a CREATE {3}\r\n") or bytes(conn.received).endswith(
        b"a CREATE {3}\r\nabc\r\n"
    )


async def test_server_plus_after_the_last_segment(caplog) -> None:
    async def plus_plus(conn: FakeConnection) -> None:
        await conn.send(b"+ go\r\n")
        assert await conn.read_exact(5) == b"abc\r\n"
        await conn.send(b"+ again\r\n")
        await Stall()(conn)

    async def client_part(client: ImapClient) -> None:
        await send_held_create(client, b"b NOOP\r\n")
        rest = await client.read_until_eof()
        assert b"* BYE [UNAVAILABLE]" in rest, rest

    _, _conn, end = await run_fake(held_create_script(plus_plus), client_part, caplog)
    assert "upstream_desync" in end, end


@pytest.mark.parametrize("answer", [b"a NO no\r\n", b"* BAD what\r\na BAD bad\r\n"],
                         ids=["tagged-no", "untagged-bad-then-tagged"])  # fmt: skip
async def test_server_refuses_in_the_middle_then_conversation_goes_on(caplog, answer) -> None:
    async def refuse(conn: FakeConnection) -> None:
        await conn.send(answer)
        # the next thing must be the next command: never "abc" (the refused literal)
        assert await conn.read_line() == b"b NOOP\r\n"
        await conn.send(b"b OK noop\r\n")
        assert await conn.read_line() == b"Z LOGOUT\r\n"
        await conn.send(b"* BYE bye\r\nZ OK bye\r\n")

    async def client_part(client: ImapClient) -> None:
        await send_held_create(client, b"b NOOP\r\n")
        got, text = await read_tags(client, [b"a", b"b"])
        assert got[b"a"] in (b"NO", b"BAD") and got[b"b"] == b"OK", text
        await client.send(b"Z LOGOUT\r\n")
        await client.read_until_eof()

    _, _conn, end = await run_fake(held_create_script(refuse), client_part, caplog)
    assert "logout" in end, end


async def test_server_tagged_answer_early_then_plus(caplog) -> None:
    async def early(conn: FakeConnection) -> None:
        await conn.send(b"a OK early\r\n+ late\r\n")
        await Stall()(conn)

    async def client_part(client: ImapClient) -> None:
        await send_held_create(client, b"b NOOP\r\n")
        rest = await client.read_until_eof()
        assert b"a OK early" in rest and b"* BYE [UNAVAILABLE]" in rest, rest

    _, conn, end = await run_fake(held_create_script(early), client_part, caplog)
    assert "upstream_desync" in end, end
    assert b"abc" not in bytes(conn.received)


async def test_server_plus_while_nothing_is_held(caplog) -> None:
    script: Script = [Send(GREETING), Expect("LOGIN", reply=b"{tag} OK in\r\n+ stray\r\n"),
                      Stall()]  # fmt: skip

    async def client_part(client: ImapClient) -> None:
        await fake_login(client)
        rest = await client.read_until_eof()
        assert b"* BYE [UNAVAILABLE]" in rest and b"+ stray" not in rest, rest

    _, _, end = await run_fake(script, client_part, caplog)
    assert "upstream_desync" in end, end


async def test_server_closes_mid_segment(caplog) -> None:
    async def close(conn: FakeConnection) -> None:
        await conn.close()

    async def client_part(client: ImapClient) -> None:
        await send_held_create(client)
        rest = await client.read_until_eof()
        assert rest.startswith(b"* BYE [UNAVAILABLE]"), rest

    _, _, end = await run_fake(held_create_script(close), client_part, caplog)
    assert "upstream_closed" in end, end


async def test_client_vanishes_while_the_relay_waits_for_the_segment_plus(caplog) -> None:
    """The server never answers the first segment; the client closes.  The session must
    end at once as client_closed (as without a filter, where the client pump keeps
    reading while the client waits), not live on until a timer."""

    async def client_part(client: ImapClient) -> None:
        await send_held_create(client)
        await client.aclose()

    _, _conn, end = await run_fake(held_create_script(Stall()), client_part, caplog)
    assert "client_closed" in end, end


async def test_server_silent_after_a_segment_is_upstream_stalled(caplog) -> None:
    slow_idle = Timeouts(idle_authenticated=3.0, idle_unauthenticated=30.0, answer_timeout=1.0,
                         shutdown_drain=0.2, farewell=0.5)  # fmt: skip

    async def client_part(client: ImapClient) -> None:
        await send_held_create(client)
        rest = await client.read_until_eof()
        assert rest.startswith(b"* BYE"), rest

    _, _, end = await run_fake(held_create_script(Stall()), client_part, caplog,
                               timeouts=slow_idle)  # fmt: skip
    assert "upstream_stalled" in end, end


# --------------------------------------------------------------------------- exchanges


@DOVECOT
async def test_authenticate_and_idle_with_a_deciding_filter(dovecot, new_user, caplog) -> None:
    user, password = new_user()
    record = Record()
    payload = base64.b64encode(b"\0" + user.encode() + b"\0" + password.encode())

    async def body(client: ImapClient) -> None:
        assert (await client.read_response()).startswith(b"* OK")
        await client.send(b"L AUTHENTICATE PLAIN\r\n")
        assert (await client.read_line()).startswith(b"+")
        await client.send(payload + b"\r\n")
        got, text = await read_tags(client, [b"L"])
        assert got == {b"L": b"OK"}, text
        await client.send(b"s SELECT Keep\r\ni IDLE\r\n")
        got, text = await read_tags(client, [b"s"])
        assert got[b"s"] == b"NO", text  # no Keep for this user: a plain NO from Dovecot
        assert (await client.read_line()).startswith(b"+")
        await client.send(b"DONE\r\nd DELETE INBOX\r\n")
        got, text = await read_tags(client, [b"i", b"d"])
        assert got == {b"i": b"OK", b"d": b"NO"}, text
        assert b"d NO [NOPERM]" in text

    _upstream, _ = await through_proxy(dovecot, record, body)
    assert record.lines, "the SASL line and DONE were not shown"
    for line in record.lines:
        assert isinstance(line.data, Secret)
        assert payload.decode() not in repr(line) and payload.decode() not in str(line)
    text = "\n".join(messages(caplog)())
    assert payload.decode() not in text and password not in text


@DOVECOT
async def test_authenticate_with_initial_response_and_literal(dovecot, new_user) -> None:
    """SASL-IR and a literal on AUTHENTICATE: the literal is refused by the relay
    (nothing legitimate gives AUTHENTICATE one), the plain form works."""
    user, password = new_user()
    record = Record()
    payload = base64.b64encode(b"\0" + user.encode() + b"\0" + password.encode())

    async def body(client: ImapClient) -> None:
        assert (await client.read_response()).startswith(b"* OK")
        await client.send(b"A AUTHENTICATE PLAIN {%d+}\r\n%s\r\n" % (len(payload), payload))
        got, text = await read_tags(client, [b"A"])
        assert got[b"A"] == b"BAD", text
        await client.send(b"L AUTHENTICATE PLAIN " + payload + b"\r\n")
        got, text = await read_tags(client, [b"L"])
        assert got == {b"L": b"OK"}, text

    await through_proxy(dovecot, record, body)


@DOVECOT
@pytest.mark.parametrize(
    "first", [b"A AUTHENTICATE PLAIN\r\n", b"A LOGIN {%d+}\r\n"], ids=["authenticate", "login"]
)
async def test_refused_login_before_tls_then_the_credentials_anyway(
    dovecot, new_user, caplog, tls_certs, first
) -> None:
    """require_tls_for_login on plaintext: the capability stage refuses the login; the
    client sends its SASL line (or the literal's credentials) anyway, in the same write.
    Those bytes are then read as a command line: no filter may see them unredacted, no
    log line may hold them, and Dovecot never sees them."""
    user, password = new_user()
    payload = base64.b64encode(b"\0" + user.encode() + b"\0" + password.encode())
    record = Record()
    if b"%d" in first:
        first = first % len(user) + user.encode() + b" " + password.encode() + b"\r\n"
        secret = password.encode()
    else:
        first += payload + b"\r\n"
        secret = payload
    with trio.fail_after(LIMIT):
        async with (
            recording_relay(dovecot.host, dovecot.port) as relay,
            running_proxy(
                dataclasses.replace(
                    config(relay.port),
                    require_tls_for_login=True,
                    cert_file=str(tls_certs.cert_path),
                    key_file=str(tls_certs.key_path),
                ),
                filters=record.chain(),
            ) as (_, addrs),
        ):
            client = await ImapClient.connect(*addrs[0])
            assert (await client.read_response()).startswith(b"* OK")
            await client.send(first + b"n NOOP\r\n")
            got, text = await read_tags(client, [b"A", b"n"])
            assert got[b"A"] in (b"NO", b"BAD") and got[b"n"] == b"OK", text
            await client.send(b"Z LOGOUT\r\n")
            await client.read_until_eof()
            up = await relay.connection(0)
            await up.done.wait()
    assert secret not in bytes(up.received)
    for view in record.passed + record.refused:
        assert view.sensitive or secret not in view.raw, view
    assert secret.decode() not in "\n".join(messages(caplog)())
