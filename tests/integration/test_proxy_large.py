"""50 MB messages through the proxy: FETCH and APPEND stream, they are never held.

Each test runs its own proxy subprocess, warms it up with one ordinary session, takes its
peak RSS (``VmHWM``) as the baseline, moves 50 MiB through it and checks that the peak grew
by far less than the message: the proxy relays literals as chunks and holds at most a few
read buffers.  The clients here stream too (hashing as they read or generate), and the
50 MiB message is built once, in place, only to seed Dovecot.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.certs import TlsCerts
from tests.support.dovecot import DovecotServer
from tests.support.proxy import vm_hwm_kib, vm_rss_kib

from .conftest import Route, RunningProxy, UserPool, start_proxy

pytestmark = [pytest.mark.dovecot, pytest.mark.slow]

MIB = 1024 * 1024
SIZE = 50 * MIB
RSS_GROWTH_LIMIT_KIB = 25 * 1024  # half the message
LINE = 1000  # bytes per body line, CRLF included


def message_blocks(size: int, tag: str, lines_per_block: int = 1024) -> Iterator[bytes]:
    """A ``size``-byte RFC 5322 message, in blocks of about 1 MB; every line numbered, so
    lost, duplicated or reordered chunks change the hash."""
    header = (
        f"From: big@example.org\r\nTo: u@example.org\r\nSubject: big {tag}\r\n"
        f"Message-ID: <{tag}@example.org>\r\n"
    ).encode()
    pad = (size - len(header) - 2) % LINE  # the last body line must be >= 2 bytes (CRLF)
    if pad == 1:
        pad += LINE  # a pad header line needs at least "X:\r\n"
    if pad:
        header += b"X-Pad: " + b"p" * (pad - 9) + b"\r\n"
    header += b"\r\n"
    body = size - len(header)
    assert body % LINE == 0 or body % LINE >= 2
    yield header
    full, rest = divmod(body, LINE)
    filler = b"0123456789abcdef" * (LINE // 16 + 1)
    block: list[bytes] = []
    for i in range(full):
        prefix = b"%09d " % i
        block.append(prefix + filler[: LINE - len(prefix) - 2] + b"\r\n")
        if len(block) == lines_per_block:
            yield b"".join(block)
            block = []
    if rest:
        block.append(b"z" * (rest - 2) + b"\r\n")
    if block:
        yield b"".join(block)


@dataclass(frozen=True)
class BigMessage:
    size: int
    sha256: str
    tail: bytes  # last 64 bytes
    sha256_lf: str = ""  # of the message with LF line ends instead of CRLF


def describe(blocks: Iterator[bytes]) -> BigMessage:
    h, h_lf = hashlib.sha256(), hashlib.sha256()
    size, tail = 0, b""
    for block in blocks:
        h.update(block)
        h_lf.update(block.replace(b"\r\n", b"\n"))  # blocks never split a CRLF
        size += len(block)
        tail = (tail + block)[-64:]
    return BigMessage(size, h.hexdigest(), tail, h_lf.hexdigest())


@pytest.fixture(scope="module")
def big_mailbox(dovecot: DovecotServer, user_pool: UserPool) -> tuple[str, str, BigMessage]:
    """A user whose INBOX holds one 50 MiB message (built in place, one buffer)."""
    user, password = user_pool.take()
    buf = bytearray(SIZE)
    pos = 0
    for block in message_blocks(SIZE, "seeded"):
        buf[pos : pos + len(block)] = block
        pos += len(block)
    assert pos == SIZE
    sha256 = hashlib.sha256(buf).hexdigest()
    # bytes-like is enough (it is written to a file); bytes(buf) would be a second copy
    dovecot.seed_message(user, buf)  # type: ignore[arg-type]
    del buf
    big = describe(message_blocks(SIZE, "seeded"))
    assert big.sha256 == sha256
    return user, password, big


@pytest.fixture
def own_proxy(
    request: pytest.FixtureRequest,
    dovecot: DovecotServer,
    tls_certs: TlsCerts,
    tmp_path: Path,
) -> Iterator[RunningProxy]:
    """A fresh proxy (upstream mode from the test's ``upstream_leg`` parameter)."""
    proxy = start_proxy(
        dovecot, tls_certs, request.getfixturevalue("upstream_leg"), tmp_path, transcript=False
    )
    try:
        yield proxy
    finally:
        proxy.process.stop()


def warm_up(route: Route, user: str, password: str) -> None:
    """One ordinary session, so the baseline includes TLS and session set-up."""
    with route.raw_login(user, password) as c:
        assert c.command(b"W1", b"EXAMINE INBOX")[-1].startswith(b"W1 OK")
        reply = c.command(b"W2", b"FETCH 1 (BODY.PEEK[HEADER])")
        assert reply[-1].startswith(b"W2 OK")
        c.command(b"W3", b"LOGOUT")


@dataclass
class Memory:
    pid: int
    baseline_hwm: int = 0

    def start(self) -> None:
        self.baseline_hwm = vm_hwm_kib(self.pid)

    def report(self, what: str) -> int:
        hwm = vm_hwm_kib(self.pid)
        growth = hwm - self.baseline_hwm
        print(
            f"\n[{what}] proxy pid {self.pid}: VmHWM baseline {self.baseline_hwm} KiB, "
            f"after {hwm} KiB, growth {growth} KiB ({growth / 1024:.1f} MiB) for a "
            f"{SIZE // MIB} MiB message; VmRSS now {vm_rss_kib(self.pid)} KiB"
        )
        return growth


LEGS = [("implicit", "none"), ("starttls", "implicit")]
LEG_IDS = [f"client_{c}-upstream_{u}" for c, u in LEGS]


@pytest.mark.parametrize(("client_leg", "upstream_leg"), LEGS, ids=LEG_IDS)
def test_fetch_50mb_streams_through(
    client_leg: str,
    upstream_leg: str,
    own_proxy: RunningProxy,
    tls_certs: TlsCerts,
    big_mailbox: tuple[str, str, BigMessage],
) -> None:
    user, password, big = big_mailbox
    route = Route(client_leg, own_proxy, tls_certs)
    warm_up(route, user, password)
    memory = Memory(own_proxy.process.pid)
    memory.start()

    with route.raw_login(user, password) as c:
        assert c.command(b"F1", b"EXAMINE INBOX")[-1].startswith(b"F1 OK")
        c.send(b"F2 FETCH 1 (RFC822.SIZE BODY.PEEK[])\r\n")
        head = c.readline()
        m = re.fullmatch(rb"\* 1 FETCH \(RFC822\.SIZE (\d+) BODY\[\] \{(\d+)\}\r\n", head)
        assert m is not None, head
        assert int(m.group(1)) == int(m.group(2)) == big.size
        digest = hashlib.sha256()
        tail = bytearray()

        def sink(chunk: bytes) -> None:
            digest.update(chunk)
            tail[:] = (bytes(tail) + chunk[-64:])[-64:]

        c.read_into(big.size, sink)  # read and discarded chunk by chunk
        assert c.readline() == b")\r\n"
        assert c.readline().startswith(b"F2 OK Fetch completed")
        assert bytes(tail) == big.tail
        assert digest.hexdigest() == big.sha256
        assert c.command(b"F3", b"LOGOUT")[-1].startswith(b"F3 OK")

    growth = memory.report(f"FETCH {client_leg}/{upstream_leg}")
    assert growth < RSS_GROWTH_LIMIT_KIB, (
        f"proxy peak RSS grew by {growth} KiB while relaying a {SIZE // 1024} KiB literal"
    )
    assert "reason=logout" in own_proxy.log()


@pytest.mark.parametrize(("client_leg", "upstream_leg"), LEGS, ids=LEG_IDS)
def test_append_50mb_sync_literal(
    client_leg: str,
    upstream_leg: str,
    own_proxy: RunningProxy,
    tls_certs: TlsCerts,
    dovecot: DovecotServer,
    user_pool: UserPool,
) -> None:
    user, password = user_pool.take()
    dovecot.seed_message(user, b"Subject: small\r\n\r\nwarm-up\r\n")
    route = Route(client_leg, own_proxy, tls_certs)
    warm_up(route, user, password)
    memory = Memory(own_proxy.process.pid)
    memory.start()

    tag = f"appended-{client_leg}-{upstream_leg}"
    expected = describe(message_blocks(SIZE, tag))
    with route.raw_login(user, password) as c:
        c.send(b"A1 APPEND INBOX (\\Seen) {%d}\r\n" % SIZE)
        # Dovecot's "+" must be relayed: the client sends nothing before it.
        assert c.expect_continuation().startswith(b"+ ")
        digest = hashlib.sha256()
        for block in message_blocks(SIZE, tag):
            digest.update(block)
            c.send(block)
        c.send(b"\r\n")
        assert digest.hexdigest() == expected.sha256
        reply = c.read_until_tagged(b"A1")
        m = re.match(rb"A1 OK \[APPENDUID \d+ (\d+)\]", reply[-1])
        assert m is not None, reply
        uid = m.group(1)
        # Dovecot stored all of it: its size and its last bytes
        c.command(b"A2", b"EXAMINE INBOX")
        reply = c.command(b"A3", b"UID FETCH %s (RFC822.SIZE BODY.PEEK[]<%d>)" % (uid, SIZE - 64))
        assert reply[-1].startswith(b"A3 OK"), reply
        fetched = reply[0]
        assert b"RFC822.SIZE %d " % SIZE in fetched or b"RFC822.SIZE %d)" % SIZE in fetched
        assert fetched.endswith(b"{64}\r\n" + expected.tail + b")\r\n"), fetched[-200:]
        c.command(b"A4", b"LOGOUT")

    growth = memory.report(f"APPEND {client_leg}/{upstream_leg}")
    assert growth < RSS_GROWTH_LIMIT_KIB, (
        f"proxy peak RSS grew by {growth} KiB while relaying a {SIZE // 1024} KiB literal"
    )
    # ... and byte for byte: the Maildir file Dovecot wrote (with LF line ends: Dovecot's
    # default mail_save_crlf=no; its name records the CRLF size as W=)
    stored = [
        f
        for sub in ("new", "cur")
        for f in (dovecot.maildir(user) / sub).iterdir()
        if f",W={SIZE}" in f.name
    ]
    assert len(stored) == 1, stored
    h = hashlib.sha256()
    with stored[0].open("rb") as fh:
        while chunk := fh.read(MIB):
            h.update(chunk)
    assert h.hexdigest() == expected.sha256_lf
