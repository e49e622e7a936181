"""The filter chain end to end against the real Dovecot (issue 9, "Tests it must have").

Every test runs the in-process proxy (``running_proxy``) with small filters defined here.
Where it matters that a command never reached Dovecot, a recording relay sits between the
proxy and Dovecot (every byte the proxy sent upstream is kept), and Dovecot's own state is
checked directly (not through the proxy) afterwards.
"""

from __future__ import annotations

import imaplib
import io
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence

import pytest
import trio

from imapproxy.config import Endpoint, ListenerConfig, ProxyConfig, UpstreamConfig
from imapproxy.filters import PASS, ChainEntry, FilterChain, OnError
from imapproxy.filters.api import DROP as DROP_VERDICT
from imapproxy.filters.api import (
    Answer,
    CommandView,
    Disconnect,
    Filter,
    LiteralInfo,
    Reject,
    Replace,
    ResponseView,
    SessionInfo,
    SessionView,
    Verdict,
)
from imapproxy.filters.sink import RecordSink
from imapproxy.filters.transcript import TranscriptFactory, format_jsonl
from tests.support.dovecot import DovecotServer
from tests.support.fakeserver import (
    Expect,
    FakeConnection,
    ImapClient,
    Send,
    WaitEof,
    fake_server,
    recording_relay,
    status_of,
    wait_session_end,
)
from tests.support.proxy import running_proxy, transcript_chain

MSG = b"Subject: x\r\n\r\nhello\r\n"
NewUser = Callable[[], tuple[str, str]]


# ----------------------------------------------------------------------------- helpers


def config_for(port: int) -> ProxyConfig:
    return ProxyConfig(
        listeners=(ListenerConfig(Endpoint("127.0.0.1", 0), implicit_tls=False),),
        upstream=UpstreamConfig(Endpoint("127.0.0.1", port)),
    )


def chain(*filters: type[Filter] | Callable[[SessionInfo], Filter], on_error: str = "closed"):  # type: ignore[no-untyped-def]
    mode = OnError(on_error)
    return FilterChain([ChainEntry(getattr(f, "name", "f"), f, mode) for f in filters])


def direct(dovecot: DovecotServer, user: str, password: str) -> imaplib.IMAP4:
    """A client straight to Dovecot, not through the proxy."""
    conn = imaplib.IMAP4(dovecot.host, dovecot.port, timeout=15)
    conn.login(user, password)
    return conn


def mailboxes(dovecot: DovecotServer, user: str, password: str) -> set[str]:
    conn = direct(dovecot, user, password)
    try:
        typ, lines = conn.list()
        assert typ == "OK"
        names = set()
        for line in lines:
            assert isinstance(line, bytes)
            names.add(line.rsplit(b' "." ', 1)[-1].strip(b'"').decode())
        return names
    finally:
        conn.logout()


def message_count(dovecot: DovecotServer, user: str, password: str, box: str = "INBOX") -> int:
    conn = direct(dovecot, user, password)
    try:
        typ, data = conn.status(box, "(MESSAGES)")
        assert typ == "OK", data
        m = re.search(rb"MESSAGES (\d+)", data[0])  # type: ignore[arg-type]
        assert m, data
        return int(m.group(1))
    finally:
        conn.logout()


def create_boxes(dovecot: DovecotServer, user: str, password: str, *names: str) -> None:
    conn = direct(dovecot, user, password)
    try:
        for name in names:
            assert conn.create(name)[0] == "OK"
    finally:
        conn.logout()


async def login(client: ImapClient, user: str, password: str) -> None:
    greeting = await client.read_response()
    assert greeting.startswith(b"* OK"), greeting
    reply = await client.command(b"L", b'LOGIN "%s" "%s"' % (user.encode(), password.encode()))
    assert status_of(reply[-1]) == b"OK", reply


def log_messages(caplog: pytest.LogCaptureFixture) -> Callable[[], list[str]]:
    return lambda: [r.getMessage() for r in caplog.records]


# ----------------------------------------------------------------------------- filters


class PassAll(Filter):
    """Decides about every command and looks at every response, and passes them all."""

    name = "pass-all"

    def __init__(self, info: SessionInfo) -> None:
        self.seen: list[str] = []

    def command(self, cmd: CommandView, session: SessionView) -> Verdict:
        if cmd.complete:  # partial ones are shown first (a refusal saves the literal)
            self.seen.append(cmd.full_name)
        return PASS

    def response(self, resp: ResponseView, session: SessionView) -> Verdict:
        return PASS


class RenameSelect(Filter):
    """SELECT Source is rewritten to SELECT Target."""

    name = "rename-select"
    wants_commands = frozenset({"SELECT"})

    def __init__(self, info: SessionInfo) -> None:
        pass

    def command(self, cmd: CommandView, session: SessionView) -> Verdict:
        if b"Source" in cmd.raw:
            return Replace(cmd.tag + b" SELECT Target\r\n")
        return PASS


class DenyChanges(Filter):
    name = "deny-changes"
    wants_commands = frozenset({"CREATE", "DELETE", "APPEND"})

    def __init__(self, info: SessionInfo) -> None:
        pass

    def command(self, cmd: CommandView, session: SessionView) -> Verdict:
        return Reject("changes are not allowed here", code="NOPERM")


class AnswerId(Filter):
    name = "answer-id"
    wants_commands = frozenset({"ID"})

    def __init__(self, info: SessionInfo) -> None:
        pass

    def command(self, cmd: CommandView, session: SessionView) -> Verdict:
        return Answer((b'* ID ("name" "answered-by-filter")\r\n',), text="ID done locally")


class DropRecent(Filter):
    name = "drop-recent"
    wants_commands = frozenset()
    wants_responses = frozenset({"RECENT", "LIST"})

    def __init__(self, info: SessionInfo) -> None:
        pass

    def response(self, resp: ResponseView, session: SessionView) -> Verdict:
        if resp.name == "RECENT" or b"Hidden" in resp.raw:
            return DROP_VERDICT
        return PASS


class DisconnectOnExamine(Filter):
    name = "disconnect-examine"
    wants_commands = frozenset({"EXAMINE"})

    def __init__(self, info: SessionInfo) -> None:
        pass

    def command(self, cmd: CommandView, session: SessionView) -> Verdict:
        return Disconnect("no examining here")


class Recorder(Filter):
    """Decides about the commands named (passes them) and records what it saw."""

    name = "recorder"
    seen: list[CommandView]

    def __init__(self, seen: list[CommandView], names: frozenset[str]) -> None:
        self.seen = seen
        self.wants_commands = names  # type: ignore[misc]

    def command(self, cmd: CommandView, session: SessionView) -> Verdict:
        self.seen.append(cmd)
        return PASS


def recorder(seen: list[CommandView], *names: str) -> Callable[[SessionInfo], Filter]:
    factory = lambda info: Recorder(seen, frozenset(names))  # noqa: E731
    factory.name = "recorder"  # type: ignore[attr-defined]
    return factory


class Explodes(Filter):
    name = "explodes"
    wants_commands = frozenset({"CREATE"})

    def __init__(self, info: SessionInfo) -> None:
        pass

    def command(self, cmd: CommandView, session: SessionView) -> Verdict:
        raise RuntimeError("filter bug on purpose")


# ----------------------------------------------------------------------------- verdicts


async def test_pass_is_byte_transparent(dovecot: DovecotServer, new_user: NewUser) -> None:
    """A filter that looks at everything and passes it: Dovecot gets exactly the client's
    bytes (synchronising literals included), the client gets exactly Dovecot's (capability
    lists aside, which the capability stage mediates)."""
    user, password = new_user()
    create_boxes(dovecot, user, password, "Finance")
    seen: list[str] = []

    def factory(info: SessionInfo) -> Filter:
        f = PassAll(info)
        f.seen = seen
        return f

    with trio.fail_after(20):
        async with recording_relay(dovecot.host, dovecot.port) as relay:
            async with running_proxy(config_for(relay.port), filters=chain(factory)) as (_, addrs):
                client = await ImapClient.connect(*addrs[0])
                await login(client, user, password)
                await client.command(b"a1", b"SELECT INBOX")
                await client.send(b"a2 APPEND INBOX (\\Seen) {%d}\r\n" % len(MSG))
                assert (await client.read_response()).startswith(b"+")
                await client.send(MSG + b"\r\n")
                assert status_of((await client.read_until_tagged(b"a2"))[-1]) == b"OK"
                await client.command(b"a3", b"FETCH 1 (FLAGS BODY.PEEK[])")
                await client.command(b"a4", b'LIST "" "*"')
                await client.command(b"a5", b"LOGOUT")
                assert await client.read_until_eof() == b""
            conn = await relay.connection(0)
            with trio.fail_after(5):
                await conn.eof.wait()
    assert seen == ["LOGIN", "SELECT", "APPEND", "FETCH", "LIST", "LOGOUT"]
    assert bytes(conn.received) == bytes(client.sent)

    def without_capabilities(data: bytes) -> list[bytes]:
        # lines carrying a capability list are mediated; the APPEND's '+' is the proxy's own
        # (it assembles the command), Dovecot's '+' was consumed by the proxy
        lines = data.split(b"\r\n")
        assert sum(x.startswith(b"+ ") for x in lines) == 1, lines
        return [x for x in lines if b"CAPABILITY" not in x and not x.startswith(b"+ ")]

    got, sent = without_capabilities(bytes(client.received)), without_capabilities(bytes(conn.sent))
    assert got == sent, (
        [x for x in got if x not in sent] + [b"--"] + [x for x in sent if x not in got]
    )
    assert b"hello" in client.received and b"* 1 FETCH" in client.received


async def test_replace_rewrites_select(dovecot: DovecotServer, new_user: NewUser) -> None:
    """SELECT Source is replaced by SELECT Target: imaplib sees Target's messages, and a
    STORE afterwards changed Target in Dovecot (checked directly)."""
    user, password = new_user()
    create_boxes(dovecot, user, password, "Source", "Target")
    for n in range(3):
        dovecot.seed_message(user, b"Subject: t%d\r\n\r\nbody\r\n" % n, mailbox="Target")
    with trio.fail_after(20):
        async with running_proxy(config_for(dovecot.port), filters=chain(RenameSelect)) as (
            _,
            addrs,
        ):

            def through_proxy() -> tuple[bytes, list[bytes]]:
                conn = imaplib.IMAP4(*addrs[0], timeout=15)
                conn.login(user, password)
                typ, data = conn.select("Source")
                assert typ == "OK", data
                typ2, data2 = conn.store("1", "+FLAGS", "(\\Flagged)")
                assert typ2 == "OK", data2
                conn.logout()
                return data[0], data2  # type: ignore[return-value]

            exists, _ = await trio.to_thread.run_sync(through_proxy)
    assert exists == b"3"
    conn = direct(dovecot, user, password)
    try:
        conn.select("Target", readonly=True)
        _typ, data = conn.fetch("1", "(FLAGS)")
        assert b"\\Flagged" in data[0]  # type: ignore[operator]
        assert conn.select("Source", readonly=True)[1] == [b"0"]
    finally:
        conn.logout()


async def test_reject_never_reaches_dovecot(dovecot: DovecotServer, new_user: NewUser) -> None:
    """CREATE, DELETE and APPEND (with a small synchronising literal) are refused NO
    [NOPERM] by the proxy; Dovecot never saw them (its bytes and its state say so) and the
    session goes on."""
    user, password = new_user()
    create_boxes(dovecot, user, password, "Keep")
    with trio.fail_after(20):
        async with recording_relay(dovecot.host, dovecot.port) as relay:
            filters = chain(DenyChanges)
            async with running_proxy(config_for(relay.port), filters=filters) as (_, addrs):
                client = await ImapClient.connect(*addrs[0])
                await login(client, user, password)
                for tag, text in ((b"c1", b"CREATE Fresh"), (b"c2", b"DELETE Keep")):
                    reply = await client.command(tag, text)
                    assert reply == [tag + b" NO [NOPERM] changes are not allowed here\r\n"]
                # refused on its head: the client is never asked for the literal
                await client.send(b"c3 APPEND INBOX {%d}\r\n" % len(MSG))
                reply = await client.read_until_tagged(b"c3")
                assert reply == [b"c3 NO [NOPERM] changes are not allowed here\r\n"]
                assert status_of((await client.command(b"c4", b"NOOP"))[-1]) == b"OK"
                await client.command(b"c5", b"LOGOUT")
            conn = await relay.connection(0)
    upstream = bytes(conn.received)
    for word in (b"CREATE", b"DELETE", b"APPEND", b"hello"):
        assert word not in upstream, upstream
    assert b"c4 NOOP\r\n" in upstream
    assert mailboxes(dovecot, user, password) == {"INBOX", "Keep"}
    assert message_count(dovecot, user, password) == 0


async def test_answer_id_locally(dovecot: DovecotServer, new_user: NewUser) -> None:
    user, password = new_user()
    with trio.fail_after(20):
        async with recording_relay(dovecot.host, dovecot.port) as relay:
            filters = chain(AnswerId)
            async with running_proxy(config_for(relay.port), filters=filters) as (_, addrs):
                client = await ImapClient.connect(*addrs[0])
                await login(client, user, password)
                reply = await client.command(b"i1", b'ID ("name" "test-client")')
                assert reply == [
                    b'* ID ("name" "answered-by-filter")\r\n',
                    b"i1 OK ID done locally\r\n",
                ]
                assert status_of((await client.command(b"i2", b"NOOP"))[-1]) == b"OK"
                await client.command(b"i3", b"LOGOUT")
            conn = await relay.connection(0)
    assert b"ID" not in bytes(conn.received).replace(b"i2 NOOP", b""), bytes(conn.received)
    assert b"i2 NOOP\r\n" in conn.received


async def test_drop_untagged_responses(dovecot: DovecotServer, new_user: NewUser) -> None:
    """``* n RECENT`` and the ``* LIST`` entry of Hidden are dropped: Dovecot sent them, the
    client never sees them; everything else arrives."""
    user, password = new_user()
    create_boxes(dovecot, user, password, "Hidden", "Shown")
    dovecot.seed_message(user, b"Subject: r\r\n\r\nbody\r\n")
    with trio.fail_after(20):
        async with recording_relay(dovecot.host, dovecot.port) as relay:
            filters = chain(DropRecent)
            async with running_proxy(config_for(relay.port), filters=filters) as (_, addrs):
                client = await ImapClient.connect(*addrs[0])
                await login(client, user, password)
                select = await client.command(b"s1", b"SELECT INBOX")
                listing = await client.command(b"s2", b'LIST "" "*"')
                await client.command(b"s3", b"LOGOUT")
            conn = await relay.connection(0)
    from_dovecot = bytes(conn.sent)
    assert b" RECENT\r\n" in from_dovecot and b"Hidden" in from_dovecot  # it did send them
    assert not any(b"RECENT" in r for r in select), select
    assert b"* 1 EXISTS\r\n" in select and status_of(select[-1]) == b"OK"
    assert not any(b"Hidden" in r for r in listing), listing
    assert any(b"Shown" in r for r in listing) and any(b"INBOX" in r for r in listing)
    assert b"Hidden" not in client.received and b"RECENT" not in client.received


async def test_disconnect(
    caplog: pytest.LogCaptureFixture, dovecot: DovecotServer, new_user: NewUser
) -> None:
    caplog.set_level(logging.INFO, logger="imapproxy")
    user, password = new_user()
    with trio.fail_after(20):
        async with recording_relay(dovecot.host, dovecot.port) as relay:
            filters = chain(DisconnectOnExamine)
            async with running_proxy(config_for(relay.port), filters=filters) as (_, addrs):
                client = await ImapClient.connect(*addrs[0])
                await login(client, user, password)
                await client.send(b"e1 EXAMINE INBOX\r\n")
                rest = await client.read_until_eof()
                assert rest == b"* BYE [UNAVAILABLE] no examining here\r\n"
                conn = await relay.connection(0)
                await conn.eof.wait()  # the upstream leg is closed too
                _, end = await wait_session_end(log_messages(caplog), client.local_port)
    assert "reason=filter_disconnect" in end, end
    assert b"EXAMINE" not in conn.received


# ----------------------------------------------------------------------------- literals


@pytest.mark.parametrize("nonsync", [False, True], ids=["sync", "nonsync"])
async def test_command_assembled_across_a_literal(
    dovecot: DovecotServer, new_user: NewUser, nonsync: bool
) -> None:
    """``a SELECT {7}`` + ``Finance``: the filter sees the whole command; Dovecot gets it
    as a synchronising literal after its own '+', the client gets exactly one '+' (the
    proxy's; none for {7+}) and one tagged answer."""
    user, password = new_user()
    create_boxes(dovecot, user, password, "Finance")
    dovecot.seed_message(user, b"Subject: f\r\n\r\nbody\r\n", mailbox="Finance")
    seen: list[CommandView] = []
    with trio.fail_after(20):
        async with recording_relay(dovecot.host, dovecot.port) as relay:
            filters = chain(recorder(seen, "SELECT"))
            async with running_proxy(config_for(relay.port), filters=filters) as (_, addrs):
                client = await ImapClient.connect(*addrs[0])
                await login(client, user, password)
                mark = len(client.received)
                if nonsync:
                    await client.send(b"a SELECT {7+}\r\nFinance\r\n")
                else:
                    await client.send(b"a SELECT {7}\r\n")
                    assert (await client.read_response()).startswith(b"+")
                    await client.send(b"Finance\r\n")
                replies = await client.read_until_tagged(b"a")
                answered = bytes(client.received[mark:])
                assert status_of(replies[-1]) == b"OK", replies
                assert b"* 1 EXISTS\r\n" in replies
                assert status_of((await client.command(b"b", b"NOOP"))[-1]) == b"OK"
                await client.command(b"z", b"LOGOUT")
            conn = await relay.connection(0)
    whole = [c for c in seen if c.complete]
    assert len(whole) == 1, seen
    assert whole[0].raw.endswith(b"Finance\r\n"), whole[0].raw
    assert whole[0].literals == (LiteralInfo(7, nonsync=nonsync),), whole[0].literals
    upstream = bytes(conn.received)
    assert b"a SELECT {7}\r\nFinance\r\n" in upstream, upstream  # {7+} went on as {7}
    assert re.search(rb"\r\n\+ [^\r\n]*\r\n", bytes(conn.sent))  # Dovecot's own '+'
    lines = answered.split(b"\r\n")
    assert sum(x.startswith(b"+") for x in lines) == (0 if nonsync else 1), answered
    assert sum(x.startswith(b"a ") for x in lines) == 1, answered


async def test_login_with_two_literals_through_a_deciding_filter(
    dovecot: DovecotServer, new_user: NewUser
) -> None:
    user, password = new_user()
    seen: list[CommandView] = []
    with trio.fail_after(20):
        async with running_proxy(
            config_for(dovecot.port), filters=chain(recorder(seen, "LOGIN"))
        ) as (_, addrs):
            client = await ImapClient.connect(*addrs[0])
            await client.read_response()
            u, p = user.encode(), password.encode()
            await client.send(b"l LOGIN {%d}\r\n" % len(u))
            assert (await client.read_response()).startswith(b"+")
            await client.send(u + b" {%d}\r\n" % len(p))
            assert (await client.read_response()).startswith(b"+")
            await client.send(p + b"\r\n")
            reply = await client.read_until_tagged(b"l")
            assert status_of(reply[-1]) == b"OK", reply
            assert status_of((await client.command(b"s", b"SELECT INBOX"))[-1]) == b"OK"
            await client.command(b"z", b"LOGOUT")
    whole = [c for c in seen if c.complete]
    assert len(whole) == 1 and whole[0].name == "LOGIN" and whole[0].sensitive, seen
    assert [lit.size for lit in whole[0].literals] == [len(user), len(password)]


async def test_server_refusing_in_the_middle_of_an_assembled_command() -> None:
    """The server answers the first segment of ``a SELECT {7}`` with a tagged NO instead of
    '+': the rest (``Finance``) is never sent upstream, the client gets that NO once, and
    the next command is in step (the fake server's strict script proves the bytes)."""

    async def refuse_segment(conn: FakeConnection) -> None:
        line = await conn.read_line()
        assert line == b"a SELECT {7}\r\n", line
        await conn.send(b"a NO [CANNOT] not now\r\n")

    script = [
        Send(b"* OK [CAPABILITY IMAP4rev1 LITERAL+] fake\r\n"),
        Expect("LOGIN", b"{tag} OK logged in\r\n"),
        refuse_segment,
        Expect("NOOP", b"{tag} OK noop done\r\n"),
        Expect("LOGOUT", b"* BYE bye\r\n{tag} OK bye\r\n"),
        WaitEof(),
    ]
    seen: list[CommandView] = []
    with trio.fail_after(20):
        async with fake_server(script) as fake:
            filters = chain(recorder(seen, "SELECT"))
            async with running_proxy(config_for(fake.port), filters=filters) as (_, addrs):
                client = await ImapClient.connect(*addrs[0])
                await client.read_response()
                await client.command(b"l", b"LOGIN u p")
                await client.send(b"a SELECT {7}\r\n")
                assert (await client.read_response()).startswith(b"+")
                await client.send(b"Finance\r\n")
                assert await client.read_until_tagged(b"a") == [b"a NO [CANNOT] not now\r\n"]
                assert await client.command(b"b", b"NOOP") == [b"b OK noop done\r\n"]
                await client.command(b"z", b"LOGOUT")
                await client.aclose()
            conn = await fake.connection(0)
            with trio.fail_after(5):
                await conn.done.wait()
    assert b"Finance" not in conn.received
    assert [c.complete for c in seen][-1:] == [True], seen


async def test_large_append_rejected_on_its_head(dovecot: DovecotServer, new_user: NewUser) -> None:
    """A 2 MB APPEND is refused before any '+': the client never sends the literal."""
    user, password = new_user()
    seen: list[CommandView] = []

    def deny_append(info: SessionInfo) -> Filter:
        f = DenyChanges(info)
        f.seen = seen  # type: ignore[attr-defined]
        orig = f.command

        def command(cmd: CommandView, session: SessionView) -> Verdict:
            seen.append(cmd)
            return orig(cmd, session)

        f.command = command  # type: ignore[method-assign]
        return f

    size = 2 * 1024 * 1024
    with trio.fail_after(20):
        async with recording_relay(dovecot.host, dovecot.port) as relay:
            filters = chain(deny_append)
            async with running_proxy(config_for(relay.port), filters=filters) as (_, addrs):
                client = await ImapClient.connect(*addrs[0])
                await login(client, user, password)
                await client.send(b"a APPEND INBOX (\\Seen) {%d}\r\n" % size)
                first = await client.read_response()
                assert first == b"a NO [NOPERM] changes are not allowed here\r\n", first
                assert status_of((await client.command(b"b", b"NOOP"))[-1]) == b"OK"
                await client.command(b"z", b"LOGOUT")
            conn = await relay.connection(0)
    assert len(seen) == 1 and not seen[0].complete
    assert seen[0].literals and seen[0].literals[0].size == size
    assert b"APPEND" not in conn.received
    assert message_count(dovecot, user, password) == 0


async def test_rejected_nonsync_append_is_discarded(
    dovecot: DovecotServer, new_user: NewUser
) -> None:
    """A rejected 300 KB ``{n+}`` APPEND whose content looks like commands: its bytes are
    read and discarded, none of them ran in Dovecot, and the next command works."""
    user, password = new_user()
    create_boxes(dovecot, user, password, "Keep")
    evil = b"x1 CREATE Evil\r\nx2 DELETE Keep\r\nx3 APPEND INBOX {5+}\r\nhello\r\n"
    body = (evil * (300 * 1024 // len(evil) + 1))[: 300 * 1024]
    with trio.fail_after(20):
        async with recording_relay(dovecot.host, dovecot.port) as relay:
            filters = chain(DenyChanges)
            async with running_proxy(config_for(relay.port), filters=filters) as (_, addrs):
                client = await ImapClient.connect(*addrs[0])
                await login(client, user, password)
                await client.send(b"a APPEND INBOX {%d+}\r\n" % len(body) + body + b"\r\n")
                reply = await client.read_until_tagged(b"a")
                assert reply == [b"a NO [NOPERM] changes are not allowed here\r\n"], reply
                listing = await client.command(b"b", b'LIST "" "*"')
                assert status_of(listing[-1]) == b"OK", listing
                assert any(b"Keep" in r for r in listing)
                await client.command(b"z", b"LOGOUT")
                rest = await client.read_until_eof()
            conn = await relay.connection(0)
    assert b"x1" not in rest and b"x1 " not in client.received
    assert b"CREATE" not in conn.received and b"APPEND" not in conn.received
    assert mailboxes(dovecot, user, password) == {"INBOX", "Keep"}
    assert message_count(dovecot, user, password) == 0


# ----------------------------------------------------------------------------- on_error


@pytest.mark.parametrize("mode", ["closed", "open"])
async def test_a_filter_that_raises(
    caplog: pytest.LogCaptureFixture, dovecot: DovecotServer, new_user: NewUser, mode: str
) -> None:
    """closed: NO [UNAVAILABLE], the CREATE never reached Dovecot; open: it passed.  Either
    way the error is logged with the session id and another session is untouched."""
    caplog.set_level(logging.INFO, logger="imapproxy")
    user, password = new_user()
    with trio.fail_after(20):
        async with running_proxy(
            config_for(dovecot.port), filters=chain(Explodes, on_error=mode)
        ) as (_, addrs):
            other = await ImapClient.connect(*addrs[0])
            await login(other, user, password)
            client = await ImapClient.connect(*addrs[0])
            await login(client, user, password)
            reply = await client.command(b"c", b"CREATE Boom")
            if mode == "closed":
                assert reply == [b"c NO [UNAVAILABLE] filter failed\r\n"], reply
            else:
                assert status_of(reply[-1]) == b"OK", reply
            assert status_of((await client.command(b"n", b"NOOP"))[-1]) == b"OK"
            assert status_of((await other.command(b"n", b"NOOP"))[-1]) == b"OK"
            await other.command(b"z", b"LOGOUT")
            await client.command(b"z", b"LOGOUT")
            sid, end = await wait_session_end(log_messages(caplog), client.local_port)
            _, other_end = await wait_session_end(log_messages(caplog), other.local_port)
    assert "reason=logout" in end and "reason=logout" in other_end
    errors = [
        r for r in caplog.records if "filter bug on purpose" in (r.getMessage() + str(r.exc_info))
    ]
    assert errors, caplog.text
    assert any(f"session {sid}" in r.getMessage() for r in errors), [r.getMessage() for r in errors]
    assert ("Boom" in mailboxes(dovecot, user, password)) == (mode == "open")


# ----------------------------------------------------------------------------- transcript


def _records(text: str) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(line) for line in text.splitlines() if line.strip()]


COMMON = {"v", "t", "type", "session", "client", "user"}
BY_TYPE = {
    "session_start": {"listener", "tls"},
    "command": {"tag", "name", "text", "bytes", "literals"},
    "client_line": {"tag", "kind", "bytes"},
    "response": {"tag", "name", "text", "bytes", "literals"},
    "session_end": {"reason", "detail", "bytes_in", "bytes_out", "duration"},
}


async def test_transcript_jsonl_schema(dovecot: DovecotServer, new_user: NewUser) -> None:
    user, password = new_user()
    out = io.StringIO()
    import base64

    plain = base64.b64encode(b"\0" + user.encode() + b"\0" + password.encode())
    with trio.fail_after(20):
        async with running_proxy(
            config_for(dovecot.port), filters=transcript_chain(out, jsonl=True)
        ) as (_, addrs):
            client = await ImapClient.connect(*addrs[0])
            await client.read_response()
            await client.send(b"a AUTHENTICATE PLAIN\r\n")
            assert (await client.read_response()).startswith(b"+")
            await client.send(plain + b"\r\n")
            assert status_of((await client.read_until_tagged(b"a"))[-1]) == b"OK"
            await client.send(b"b APPEND INBOX {%d}\r\n" % len(MSG))
            await client.read_response()
            await client.send(MSG + b"\r\n")
            assert status_of((await client.read_until_tagged(b"b"))[-1]) == b"OK"
            await client.command(b"c", b"SELECT INBOX")
            await client.command(b"d", b"FETCH 1 BODY.PEEK[]")
            await client.command(b"z", b"LOGOUT")
            await client.read_until_eof()
            with trio.fail_after(5):
                while '"session_end"' not in out.getvalue():  # noqa: ASYNC110
                    await trio.sleep(0.02)
    records = _records(out.getvalue())
    types = {r["type"] for r in records}
    assert types == set(BY_TYPE), types
    for r in records:
        missing = (COMMON | BY_TYPE[r["type"]]) - set(r)
        assert not missing, (missing, r)
        assert r["v"] == 1
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}.*", r["t"]), r["t"]
    completions = [r for r in records if r["type"] == "response" and r["tag"]]
    assert {r["tag"] for r in completions} >= {"a", "b", "c", "d", "z"}
    for r in completions:
        assert isinstance(r["latency_ms"], int | float) and r["latency_ms"] >= 0, r
        assert r["status"] in ("OK", "NO", "BAD") and "command" in r
    append = next(r for r in records if r["type"] == "command" and r["tag"] == "b")
    assert append["name"] == "APPEND" and append["literals"] == [len(MSG)], append
    assert "hello" not in append["text"]
    assert next(r for r in records if r["type"] == "client_line")["kind"] == "auth_data"
    end = records[-1]
    assert end["type"] == "session_end" and end["reason"] == "logout", end
    assert end["user"] == user
    assert plain.decode() not in out.getvalue() and password not in out.getvalue()


def _login_forms(user: str, password: str) -> list[tuple[str, Sequence[bytes], bytes]]:
    """(form, chunks the client sends one after another waiting for a response between
    each, the secret payload that must appear nowhere)."""
    import base64

    u, p = user.encode(), password.encode()
    plain = base64.b64encode(b"\0" + u + b"\0" + p)
    return [
        ("atom", [b"a LOGIN " + u + b" " + p + b"\r\n"], p),
        ("quoted", [b'a LOGIN "' + u + b'" "' + p + b'"\r\n'], p),
        (
            "literal",
            [b"a LOGIN {%d}\r\n" % len(u), u + b" {%d}\r\n" % len(p), p + b"\r\n"],
            p,
        ),
        ("nonsync", [b"a LOGIN {%d+}\r\n%s {%d+}\r\n%s\r\n" % (len(u), u, len(p), p)], p),
        ("plain-ir", [b"a AUTHENTICATE PLAIN " + plain + b"\r\n"], plain),
        ("plain-continuation", [b"a AUTHENTICATE PLAIN\r\n", plain + b"\r\n"], plain),
        (
            "login-mech",
            [
                b"a AUTHENTICATE LOGIN\r\n",
                base64.b64encode(u) + b"\r\n",
                base64.b64encode(p) + b"\r\n",
            ],
            base64.b64encode(p),
        ),
    ]


async def test_transcript_and_log_never_show_secrets(
    caplog: pytest.LogCaptureFixture, dovecot: DovecotServer, new_user: NewUser, tmp_path
) -> None:
    """Every login form, and a refused login followed by the password as a line: neither
    the password nor its base64 forms are in the JSONL file or the log."""
    import base64

    caplog.set_level(logging.DEBUG, logger="imapproxy")
    path = tmp_path / "t.jsonl"
    sink = RecordSink(str(path), format_jsonl)
    factory = TranscriptFactory(sink, bodies=False)
    secrets: list[bytes] = []
    with trio.fail_after(30):
        async with running_proxy(
            config_for(dovecot.port), filters=FilterChain([ChainEntry("transcript", factory)])
        ) as (_, addrs):
            users = [new_user() for _ in range(7)]
            for i in range(7):
                user, password = users[i]
                form, chunks, secret = _login_forms(user, password)[i]
                secrets += [secret, password.encode(), base64.b64encode(password.encode())]
                client = await ImapClient.connect(*addrs[0])
                await client.read_response()
                for chunk in chunks[:-1]:
                    await client.send(chunk)
                    assert (await client.read_response()).startswith(b"+"), form
                await client.send(chunks[-1])
                reply = await client.read_until_tagged(b"a")
                assert status_of(reply[-1]) == b"OK", (form, reply)
                await client.command(b"z", b"LOGOUT")
                await client.read_until_eof()
            with trio.fail_after(5):
                while path.read_text().count('"session_end"') < 7:  # noqa: ASYNC110
                    await trio.sleep(0.02)
    text = path.read_bytes()
    records = _records(text.decode())
    assert sum(r["type"] == "session_start" for r in records) == 7
    assert {r["user"] for r in records if r["type"] == "session_end"} >= {u for u, _ in users[:7]}
    log = caplog.text.encode()
    for secret in secrets:
        assert secret not in text, "\n".join(
            json.dumps(r) for r in records if secret.decode() in json.dumps(r)
        )
        assert secret not in log, secret


# ----------------------------------------------------------------------------- sink


class BlockingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.entered = threading.Event()

    def write(self, s: str) -> int:
        self.entered.set()
        self.release.wait(30)
        return super().write(s)


async def _noops(addrs: list[tuple[str, int]], user: str, password: str, n: int) -> float:
    client = await ImapClient.connect(*addrs[0])
    await login(client, user, password)
    start = time.monotonic()
    for i in range(n):
        reply = await client.command(b"n%d" % i, b"NOOP")
        assert status_of(reply[-1]) == b"OK"
    took = time.monotonic() - start
    await client.command(b"z", b"LOGOUT")
    await client.read_until_eof()
    return took


async def test_a_blocked_transcript_sink_does_not_slow_sessions(
    dovecot: DovecotServer, new_user: NewUser
) -> None:
    user, password = new_user()
    with trio.fail_after(60):
        async with running_proxy(config_for(dovecot.port)) as (_, addrs):
            baseline = await _noops(addrs, user, password, 200)
        stream = BlockingStream()
        sink = RecordSink("-", format_jsonl, stream=stream, capacity=50)
        chain_ = FilterChain(
            [ChainEntry("transcript", TranscriptFactory(sink, bodies=False), OnError.OPEN)]
        )
        try:
            async with running_proxy(config_for(dovecot.port), filters=chain_) as (_, addrs):
                blocked = await _noops(addrs, user, password, 200)
                assert stream.entered.is_set()  # the writer is stuck in write()
                assert sink.lost_total > 0
                stream.release.set()
                await _noops(addrs, user, password, 1)
        finally:
            stream.release.set()
        with trio.fail_after(10):
            while '"lost"' not in stream.getvalue():  # noqa: ASYNC110
                await trio.sleep(0.02)
    # generous: 2-core CI; a sink that blocked the session would take the 30 s wait
    assert blocked < baseline * 3 + 2.0, (blocked, baseline)
    lost = [r["lost"] for r in _records(stream.getvalue()) if r.get("lost")]
    assert lost and sum(lost) == sink.lost_total, lost


@pytest.mark.parametrize(
    "jsonl",
    [
        pytest.param(True, id="jsonl"),
        pytest.param(False, id="text"),
    ],
)
async def test_password_line_after_a_refused_login_is_never_shown(
    caplog: pytest.LogCaptureFixture, dovecot: DovecotServer, new_user: NewUser, jsonl: bool
) -> None:
    caplog.set_level(logging.DEBUG, logger="imapproxy")
    user, password = new_user()
    out = io.StringIO()
    with trio.fail_after(20):
        async with running_proxy(
            config_for(dovecot.port), filters=transcript_chain(out, jsonl=jsonl)
        ) as (_, addrs):
            client = await ImapClient.connect(*addrs[0])
            await client.read_response()
            reply = await client.command(b"a", b"LOGIN " + user.encode() + b" wrong-password")
            assert status_of(reply[-1]) == b"NO", reply
            await client.send(password.encode() + b"\r\n")  # typed where the login was
            assert await client.read_response()  # refused, one way or another
            assert status_of((await client.command(b"n", b"NOOP"))[-1]) == b"OK"
            await client.command(b"z", b"LOGOUT")
            await client.read_until_eof()
            with trio.fail_after(5):
                while "logout" not in out.getvalue():  # noqa: ASYNC110
                    await trio.sleep(0.02)
    leaks = [line for line in out.getvalue().splitlines() if password in line]
    assert password not in caplog.text
    assert not leaks, leaks


async def test_transcript_response_literals_are_sized_and_elided(
    dovecot: DovecotServer, new_user: NewUser
) -> None:
    user, password = new_user()
    dovecot.seed_message(user, b"Subject: s\r\n\r\nprivate-body-text\r\n")
    out = io.StringIO()
    with trio.fail_after(20):
        async with running_proxy(
            config_for(dovecot.port), filters=transcript_chain(out, jsonl=True)
        ) as (_, addrs):
            client = await ImapClient.connect(*addrs[0])
            await login(client, user, password)
            await client.command(b"s", b"SELECT INBOX")
            reply = await client.command(b"f", b"FETCH 1 BODY.PEEK[]")
            assert b"private-body-text" in reply[0]
            await client.command(b"z", b"LOGOUT")
            await client.read_until_eof()
            with trio.fail_after(5):
                while '"session_end"' not in out.getvalue():  # noqa: ASYNC110
                    await trio.sleep(0.02)
    fetch = next(
        r for r in _records(out.getvalue()) if r["type"] == "response" and r["name"] == "FETCH"
    )
    assert "private-body-text" not in fetch["text"], fetch
    assert fetch["literals"] == [len(b"Subject: s\r\n\r\nprivate-body-text\r\n")], fetch
