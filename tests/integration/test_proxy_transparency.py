"""Byte transparency, recorded: client -> proxy -> recording relay -> Dovecot.

The test client records every byte it sends and receives; a TCP relay between the proxy and
Dovecot records every byte both ways.  After a long scripted session (literals of every
kind, pipelining, IDLE with a second session appending, errors ...) the two recordings must
be identical, except for the two documented rewrites, re-implemented here on purpose so
that any other change fails:

* capability lists (``* CAPABILITY`` data and ``[CAPABILITY ...]`` codes,
  imapproxy/capabilities.py): ``STARTTLS`` (this listener has no certificate, so none is
  offered), ``COMPRESS=...`` and ``AUTH=...-PLUS`` are removed;
* non-synchronising literals (imapproxy/session.py): a client's ``{n+}`` reaches Dovecot
  as ``{n}``, and Dovecot's ``+`` for it is not passed back.  (The literals' content here
  never looks like an announcement or a continuation line, so the model can be a pattern.)
"""

from __future__ import annotations

import re
import uuid

import pytest
import trio

from imapproxy.config import (
    Endpoint,
    ListenerConfig,
    ProxyConfig,
    Timeouts,
    UpstreamConfig,
    UpstreamTls,
)
from tests.support.dovecot import DovecotServer
from tests.support.fakeserver import FakeConnection, ImapClient, recording_relay, status_of
from tests.support.proxy import running_proxy

pytestmark = pytest.mark.dovecot

LIMIT = 20.0

_DATA_CAPS = re.compile(rb"(?m)^(\* CAPABILITY)((?: [^\r\n]*)?)(?=\r\n)")
_CODE_CAPS = re.compile(rb"\[CAPABILITY((?: [^\]\r\n]*)?)\]")


def _dropped(cap: bytes) -> bool:
    upper = cap.upper()
    return (
        upper == b"STARTTLS"
        or upper.startswith(b"COMPRESS=")
        or (upper.startswith(b"AUTH=") and upper.endswith(b"-PLUS"))
    )


def _kept(listed: bytes) -> bytes:
    return b"".join(b" " + c for c in listed.split() if not _dropped(c))


def documented_rewrite(from_server: bytes) -> bytes:
    """What the client must receive for these server bytes (plain listener, no cert)."""
    out = _DATA_CAPS.sub(lambda m: m.group(1) + _kept(m.group(2)), from_server)
    return _CODE_CAPS.sub(lambda m: b"[CAPABILITY" + _kept(m.group(1)) + b"]", out)


def assert_same(expected: bytes, actual: bytes, what: str) -> None:
    if expected == actual:
        return
    at = next(
        (i for i, (a, b) in enumerate(zip(expected, actual, strict=False)) if a != b),
        min(len(expected), len(actual)),
    )
    lo = max(0, at - 120)
    raise AssertionError(
        f"{what}: first difference at byte {at} (lengths {len(expected)} vs {len(actual)})\n"
        f"expected: {expected[lo : at + 120]!r}\n"
        f"actual:   {actual[lo : at + 120]!r}"
    )


def message(subject: str, body: bytes, size: int = 0) -> bytes:
    head = (
        f"From: Alice <alice@example.org>\r\nTo: bob@example.org\r\n"
        f"Subject: {subject}\r\nMessage-ID: <{uuid.uuid4().hex}@example.org>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    ).encode()
    text = body
    while len(head) + len(text) < size:
        text += b"line of filler text for a large message body 0123456789\r\n"
    return head + text


class Session:
    """A recording client that numbers its commands."""

    def __init__(self, client: ImapClient, prefix: bytes) -> None:
        self.client = client
        self.prefix = prefix
        self.count = 0

    def tag(self) -> bytes:
        self.count += 1
        return self.prefix + b"%03d" % self.count

    async def ok(self, text: bytes) -> list[bytes]:
        responses = await self.client.command(self.tag(), text)
        assert status_of(responses[-1]) == b"OK", responses
        return responses

    async def expect(self, text: bytes, status: bytes) -> list[bytes]:
        responses = await self.client.command(self.tag(), text)
        assert status_of(responses[-1]) == status, responses
        return responses

    async def sync(self, *parts: bytes) -> list[bytes]:
        """A command with synchronising literals: ``parts`` are the pieces between them
        (each but the last ends with ``{n}``); waits for ``+`` before each literal."""
        tag = self.tag()
        *heads, last = parts
        for i, part in enumerate(heads):
            await self.client.send((tag + b" " if i == 0 else b"") + part + b"\r\n")
            await self.client.read_until(b"+")
        await self.client.send(last + b"\r\n")
        responses = await self.client.read_until_tagged(tag)
        assert status_of(responses[-1]) == b"OK", responses
        return responses

    async def pipeline(self, *commands: bytes | tuple[bytes, ...]) -> dict[bytes, bytes]:
        """Several commands, pipelined: each write carries everything up to the next
        synchronising literal (a command given as parts, as for ``sync``), so without
        literals they all go in ONE write; returns each tag's completion (the server may
        complete them in any order, also while a "+" is awaited)."""
        tags = [self.tag() for _ in commands]
        done: dict[bytes, bytes] = {}
        pending = b""
        for tag, command in zip(tags, commands, strict=True):
            *heads, last = (command,) if isinstance(command, bytes) else command
            pending += tag + b" "
            for part in heads:
                await self.client.send(pending + part + b"\r\n")
                pending = b""
                while not (await self._completion(tags, done)).startswith(b"+"):
                    pass
            pending += last + b"\r\n"
        await self.client.send(pending)
        while len(done) < len(tags):
            await self._completion(tags, done)
        return done

    async def _completion(self, tags: list[bytes], done: dict[bytes, bytes]) -> bytes:
        """The next response, recorded in ``done`` if it completes one of ``tags``."""
        response = await self.client.read_response()
        assert response, f"EOF with {sorted(set(tags) - set(done))} pending"
        tag = response.split(b" ", 1)[0]
        if tag in tags:
            done[tag] = response
        return response


def config(port: int) -> ProxyConfig:
    return ProxyConfig(
        listeners=(ListenerConfig(Endpoint("127.0.0.1", 0), implicit_tls=False),),
        upstream=UpstreamConfig(Endpoint("127.0.0.1", port), tls=UpstreamTls.NONE),
        timeouts=Timeouts(shutdown_drain=0.2),
    )


async def test_recorded_session_is_byte_transparent(dovecot: DovecotServer) -> None:
    box = f"T{uuid.uuid4().hex[:8]}".encode()
    box2 = box + b"-two"
    utf7 = box + b"-&AOk-t&AOk-"  # "-été" in modified UTF-7
    idlebox = box + b"-idle"
    small = message("first", "Grüße, plain text\r\n".encode())
    second = message("second", b"second body\r\n")
    large = message("large", b"start\r\n", size=200_000)  # streamed by the proxy
    with trio.fail_after(LIMIT):
        async with (
            recording_relay(dovecot.host, dovecot.port) as relay,
            running_proxy(config(relay.port)) as (_, addrs),
        ):
            a = Session(await ImapClient.connect(*addrs[0]), b"a")
            greeting = await a.client.read_response()
            assert greeting.startswith(b"* OK [CAPABILITY ")
            up_a = await relay.connection(0)

            await a.ok(b"CAPABILITY")
            await a.ok(b"NOOP")
            await a.ok(b'ID ("name" "imapproxy-tests" "version" "1")')
            await a.sync(b"LOGIN {5}", b"alice {7}", b"alicepw")
            await a.ok(b"CAPABILITY")
            await a.ok(b"ENABLE CONDSTORE")
            await a.ok(b"NAMESPACE")
            await a.ok(b'LIST "" "*"')
            for name in (box, box2, utf7, idlebox):
                await a.ok(b"CREATE " + name)
            await a.ok(b"SUBSCRIBE " + box)
            await a.ok(b'LSUB "" "' + box + b'*"')
            await a.ok(b'LIST "" "' + box + b'*"')
            await a.ok(b"STATUS " + box + b" (MESSAGES UIDNEXT UNSEEN)")
            # APPEND: with flags, without, large (streamed) and with a date
            await a.sync(b"APPEND " + box + b" (\\Seen) {%d}" % len(small), small)
            await a.sync(b"APPEND " + box + b" {%d}" % len(second), second)
            await a.sync(
                b'APPEND %s (\\Flagged) "05-Mar-2024 10:00:00 +0100" {%d}' % (box, len(large)),
                large,
            )
            # pipelined APPENDs: each literal goes in one write with the next command
            batch = await a.pipeline(
                (b"APPEND %s {%d}" % (box, len(small)), small),
                (b"APPEND %s (\\Draft) {%d}" % (box2, len(second)), second),
                b"NOOP",
            )
            assert all(status_of(r) == b"OK" for r in batch.values()), batch
            # LITERAL+: small, large (streamed), MULTIAPPEND and binary, in one write with
            # a NOOP; the client sees no "+" for them
            plus = await a.pipeline(
                b"APPEND %s {%d+}\r\n%s" % (box2, len(second), second),
                b"APPEND %s (\\Seen) {%d+}\r\n%s" % (box2, len(large), large),
                b"APPEND %s {%d+}\r\n%s {%d+}\r\n%s"
                % (box2, len(small), small, len(second), second),
                b"APPEND %s ~{%d+}\r\n%s" % (box2, 7, b"bin\x00ary"),
                b"NOOP",
            )
            assert all(status_of(r) == b"OK" for r in plus.values()), plus
            await a.ok(b"SELECT " + box)
            await a.ok(b"FETCH 1:* (FLAGS UID RFC822.SIZE INTERNALDATE)")
            body = await a.ok(b"FETCH 1 BODY[]")
            assert small in body[0]
            big = await a.ok(b"FETCH 3 BODY.PEEK[]")
            assert large in big[0]
            await a.ok(b"FETCH 2 (BODY.PEEK[HEADER.FIELDS (SUBJECT FROM)] BODY.PEEK[TEXT]<0.6>)")
            await a.ok(b"FETCH 1:* (ENVELOPE BODYSTRUCTURE)")
            await a.ok(b"UID FETCH 1:* (FLAGS MODSEQ) (CHANGEDSINCE 1)")
            batch = await a.pipeline(
                b"NOOP",
                b"STORE 1 +FLAGS (\\Answered)",
                b"SEARCH UNSEEN",
                b"UID SEARCH ALL",
                b"FETCH 1:2 (FLAGS)",
                (b"SEARCH SUBJECT {6}", b"second"),  # "+" while the others run
            )
            assert all(status_of(r) == b"OK" for r in batch.values()), batch
            await a.ok(b"STORE 2 FLAGS.SILENT (\\Seen \\Draft)")
            await a.ok(b"UID STORE 1:* +FLAGS (\\Flagged)")
            await a.sync(b"SEARCH SUBJECT {5}", b"first")
            await a.sync(
                b"SEARCH CHARSET UTF-8 BODY {%d}" % len("Grüße".encode()), "Grüße".encode()
            )
            await a.ok(b"SEARCH OR FLAGGED ANSWERED NOT DELETED")
            await a.ok(b"COPY 1:2 " + box2)
            await a.ok(b"UID COPY 1:* " + utf7)
            await a.ok(b"MOVE 4 " + box2)
            await a.ok(b"STORE 1 +FLAGS (\\Deleted)")
            await a.ok(b"EXPUNGE")
            await a.ok(b"CHECK")
            await a.ok(b"EXAMINE " + box2)
            await a.ok(b"FETCH 1:* (FLAGS BODY.PEEK[HEADER])")
            await a.ok(b"CLOSE")
            await a.ok(b"STATUS " + utf7 + b" (MESSAGES)")
            await a.expect(b"SELECT " + box + b"-missing", b"NO")
            await a.expect(b"BOGUS command", b"BAD")
            await a.expect(b"FETCH", b"BAD")
            await a.ok(b"SELECT " + box)
            await a.ok(b"UNSELECT")

            # IDLE, with a second session (through the proxy too) appending meanwhile.
            await a.ok(b"SELECT " + idlebox)
            b = Session(await ImapClient.connect(*addrs[0]), b"b")
            await b.client.read_response()
            up_b = await relay.connection(1)
            await b.ok(b"LOGIN alice alicepw")
            for round_ in range(2):
                idle_tag = a.tag()
                await a.client.send(idle_tag + b" IDLE\r\n")
                await a.client.read_until(b"+")
                if round_ == 0:
                    await b.sync(b"APPEND %s {%d}" % (idlebox, len(small)), small)
                    await a.client.read_until(b"* 1 EXISTS")
                else:
                    await b.ok(b"SELECT " + idlebox)
                    await b.ok(b"STORE 1 +FLAGS (\\Seen)")
                    await a.client.read_until(b"* 1 FETCH")
                await a.client.send(b"DONE\r\n")
                idle_done = await a.client.read_until_tagged(idle_tag)
                assert status_of(idle_done[-1]) == b"OK"
            await b.ok(b"LOGOUT")
            assert await b.client.read_until_eof() == b""

            await a.ok(b"FETCH 1 (FLAGS)")
            await a.ok(b"CLOSE")
            await a.ok(b"RENAME " + box2 + b" " + box2 + b"-renamed")
            await a.ok(b"UNSUBSCRIBE " + box)
            for name in (box, box2 + b"-renamed", utf7, idlebox):
                await a.ok(b"DELETE " + name)
            await a.ok(b'LIST "" "' + box + b'*"')
            await a.ok(b"NOOP")
            await a.ok(b"LOGOUT")
            assert await a.client.read_until_eof() == b""
            for conn in (up_a, up_b):
                await conn.done.wait()

    commands = a.count + b.count
    assert commands >= 60, commands
    check_transparent(a.client, up_a, "session A")
    check_transparent(b.client, up_b, "session B")
    # The rewrite really was exercised (else this would prove less than it claims).
    assert b"STARTTLS" in up_a.sent and b"COMPRESS=DEFLATE" in up_a.sent
    assert b"STARTTLS" not in a.client.received and b"COMPRESS" not in a.client.received
    assert b" LITERAL+" in a.client.received and b" LITERAL+" in b.client.received
    # and so was the {n+} rewrite: five literals, none of them seen by Dovecot as {n+}
    assert len(_NONSYNC.findall(bytes(a.client.sent))) == 5
    assert b"+}" not in up_a.received


_NONSYNC = re.compile(rb"\{(\d+)\+\}\r\n")
_CONTINUATION = re.compile(rb"(?m)^\+ [^\r\n]*\r\n")


def check_transparent(client: ImapClient, upstream: FakeConnection, what: str) -> None:
    sent = bytes(client.sent)
    assert_same(
        _NONSYNC.sub(rb"{\1}\r\n", sent),
        bytes(upstream.received),
        f"{what}: client -> Dovecot (after {{n+}} -> {{n}})",
    )
    # Dovecot's "+" lines: those for the client's own {n} relayed, those for the proxy's
    # {n} (one per {n+} the client sent) absorbed.  Compared apart from the rest.
    from_server = documented_rewrite(bytes(upstream.sent))
    received = bytes(client.received)
    nonsync = len(_NONSYNC.findall(sent))
    assert len(_CONTINUATION.findall(from_server)) == (
        len(_CONTINUATION.findall(received)) + nonsync
    ), what
    assert_same(
        _CONTINUATION.sub(b"", from_server),
        _CONTINUATION.sub(b"", received),
        f"{what}: Dovecot -> client (after the capability rewrite)",
    )
