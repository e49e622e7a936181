"""Server lines longer than 64 KiB through the proxy, against the real Dovecot (issue 8 §1),
plus literal lengths with leading zeros and the literals-before-login bound (§6).

Before the fix every one of these responses ended the session with
``* BYE [UNAVAILABLE] upstream protocol error`` ("line too long").  Each answer through the
proxy is compared with Dovecot's own answer to the same command, byte for byte.
"""

from __future__ import annotations

import imaplib
import re
from collections.abc import Callable

import pytest

from tests.support.dovecot import DovecotServer

from .conftest import ProxyPool, RawClient, RunningProxy

pytestmark = pytest.mark.dovecot

KIB = 1024
MESSAGES = 20_000
ADDRESSES = 4_000

NewUser = Callable[[], tuple[str, str]]


def fold_addresses(count: int) -> bytes:
    """A To: header with ``count`` addresses, folded: every line under 78 bytes."""
    lines = [b"To: a00000@example.org,"]
    lines += [b" a%05d@example.org," % i for i in range(1, count - 1)]
    lines.append(b" a%05d@example.org" % (count - 1))
    return b"\r\n".join(lines) + b"\r\n"


BIG_HEADER = (
    b"From: sender@example.org\r\n"
    + fold_addresses(ADDRESSES)
    + b"Subject: many recipients\r\nMessage-ID: <many@example.org>\r\n"
    + b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\n"
)
BIG_HEADER_MESSAGE = BIG_HEADER + b"Hello, everyone.\r\n"
LONG_SUBJECT_MESSAGE = (
    b"From: sender@example.org\r\nTo: u@example.org\r\nSubject: "
    + b"".join(b"word%05d " % i for i in range(70 * KIB // 10))
    + b"\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\nbody\r\n"
)
assert len(BIG_HEADER) > 48 * KIB
assert all(len(line) < 78 for line in BIG_HEADER.split(b"\r\n"))
assert len(LONG_SUBJECT_MESSAGE) > 70 * KIB


def proxy(pool: ProxyPool) -> RunningProxy:
    return pool.get("none")


def raw_login(port: int, user: str, password: str) -> RawClient:
    """Plain connection (no STARTTLS: the shared proxy does not require it), logged in."""
    client = RawClient.connect(port)
    reply = client.command(b"L", b'LOGIN "%s" "%s"' % (user.encode(), password.encode()))
    assert reply[-1].startswith(b"L OK"), reply
    return client


def both(pool: ProxyPool, dovecot: DovecotServer, user: str, password: str) -> list[RawClient]:
    """A session through the proxy and one straight to Dovecot, same user."""
    return [
        raw_login(proxy(pool).plain_port, user, password),
        raw_login(dovecot.port, user, password),
    ]


def same_answer(clients: list[RawClient], tag: bytes, command: bytes) -> list[bytes]:
    """The command's untagged responses, equal through the proxy and direct."""
    via, direct = (c.command(tag, command) for c in clients)
    assert via[-1].startswith(tag + b" OK"), via[-1][:200]
    assert direct[-1].startswith(tag + b" OK"), direct[-1][:200]
    # the tagged lines carry Dovecot's timings; everything before them must be identical
    assert len(via) == len(direct)
    for a, b in zip(via[:-1], direct[:-1], strict=True):
        assert a == b, (len(a), len(b), a[:120], b[:120])
    assert re.sub(rb"\(.*\)", b"", via[-1]) == re.sub(rb"\(.*\)", b"", direct[-1])
    return direct[:-1]


def selected_pair(
    pool: ProxyPool, dovecot: DovecotServer, user: str, password: str
) -> list[RawClient]:
    # A first session takes the \Recent flags, so that both compared sessions see the same.
    warm = raw_login(dovecot.port, user, password)
    warm.command(b"w", b"SELECT INBOX")
    warm.command(b"z", b"LOGOUT")
    warm.close()
    clients = both(pool, dovecot, user, password)
    for c in clients:
        assert c.command(b"s", b"EXAMINE INBOX")[-1].startswith(b"s OK")
    return clients


def longest_line(messages: list[bytes]) -> int:
    return max(len(line) for m in messages for line in m.split(b"\n"))


def test_search_all_over_20000_messages(
    proxy_pool: ProxyPool, dovecot: DovecotServer, new_user: NewUser
) -> None:
    user, password = new_user()
    dovecot.seed_messages(
        user, (b"Subject: m%d\r\n\r\nbody %d\r\n" % (i, i) for i in range(MESSAGES))
    )
    clients = selected_pair(proxy_pool, dovecot, user, password)
    try:
        found = same_answer(clients, b"a", b"SEARCH ALL")
        assert found == [
            b"* SEARCH " + b" ".join(b"%d" % i for i in range(1, MESSAGES + 1)) + b"\r\n"
        ]
        assert len(found[0]) > 100 * KIB
        uids = same_answer(clients, b"b", b"UID SEARCH ALL")
        assert len(uids[0]) > 100 * KIB
        # the session goes on normally after the long lines
        same_answer(clients, b"c", b"FETCH 19999:* (FLAGS UID)")
    finally:
        for c in clients:
            c.close()
    # with imaplib as a client: the same result as Dovecot's own
    results = []
    for port in (proxy(proxy_pool).plain_port, dovecot.port):
        conn = imaplib.IMAP4("127.0.0.1", port, timeout=30)
        try:
            conn.login(user, password)
            conn.select("INBOX", readonly=True)
            results.append((conn.search(None, "ALL"), conn.uid("SEARCH", "ALL")))
        finally:
            conn.logout()
    assert results[0] == results[1]
    assert len(results[0][0][1][0].split()) == MESSAGES
    shown = [line for line in proxy(proxy_pool).transcript().splitlines() if "long line" in line]
    assert any("S: * SEARCH 1 2 3" in line for line in shown), shown[-5:]
    assert max(len(line) for line in proxy(proxy_pool).transcript().splitlines()) < 2 * KIB


@pytest.fixture
def big_header_user(dovecot: DovecotServer, new_user: NewUser) -> tuple[str, str]:
    user, password = new_user()
    dovecot.seed_messages(user, [BIG_HEADER_MESSAGE, LONG_SUBJECT_MESSAGE], flags="S")
    return user, password


def test_envelope_of_4000_addresses_and_of_a_70_kb_subject(
    proxy_pool: ProxyPool, dovecot: DovecotServer, big_header_user: tuple[str, str]
) -> None:
    clients = selected_pair(proxy_pool, dovecot, *big_header_user)
    try:
        fetched = same_answer(clients, b"f", b"FETCH 1:* (FLAGS ENVELOPE)")
        assert len(fetched) == 2
        assert longest_line(fetched[:1]) > 90 * KIB  # the 4,000 addresses
        assert longest_line(fetched[1:]) > 70 * KIB  # the subject
        assert fetched[0].count(b"example.org") >= ADDRESSES
    finally:
        for c in clients:
            c.close()
    # imaplib agrees too
    results = []
    for port in (proxy(proxy_pool).plain_port, dovecot.port):
        conn = imaplib.IMAP4("127.0.0.1", port, timeout=30)
        try:
            conn.login(*big_header_user)
            conn.select("INBOX", readonly=True)
            results.append(conn.fetch("1:*", "(FLAGS ENVELOPE)"))
        finally:
            conn.logout()
    assert results[0] == results[1] and results[0][0] == "OK"


def test_long_envelope_followed_by_a_body_literal_is_byte_exact(
    proxy_pool: ProxyPool, dovecot: DovecotServer, big_header_user: tuple[str, str]
) -> None:
    clients = selected_pair(proxy_pool, dovecot, *big_header_user)
    try:
        fetched = same_answer(clients, b"f", b"FETCH 1 (ENVELOPE BODY.PEEK[])")
        [message] = fetched
        # the long ENVELOPE line ends with the literal announcement of the whole message
        assert message.endswith(BIG_HEADER_MESSAGE + b")\r\n")
        first_line = message.split(b"\n", 1)[0]
        assert len(first_line) > 90 * KIB and first_line.endswith(
            b"{%d}\r" % len(BIG_HEADER_MESSAGE)
        )
        same_answer(clients, b"g", b"FETCH 2 (BODY.PEEK[HEADER] ENVELOPE)")
        same_answer(clients, b"h", b"NOOP")
    finally:
        for c in clients:
            c.close()


# ---------------------------------------------------------------- literal lengths (§6)


@pytest.mark.parametrize("zeros", [3, 23])
def test_login_with_leading_zeros_in_literal_lengths(
    proxy_pool: ProxyPool, new_user: NewUser, zeros: int
) -> None:
    user, password = new_user()
    client = RawClient.connect(proxy(proxy_pool).plain_port)
    try:
        pad = b"0" * zeros
        client.send(b"a LOGIN {%s%d}\r\n" % (pad, len(user)))
        client.expect_continuation()
        client.send(
            user.encode() + b" {%s%d+}\r\n" % (pad, len(password)) + password.encode() + b"\r\n"
        )
        reply = client.read_until_tagged(b"a")
        assert reply[-1].startswith(b"a OK"), reply
        appended = client.command(b"b", b"APPEND INBOX {%s5+}\r\nhello" % pad)
        assert appended[-1].startswith(b"b OK"), appended
        assert client.command(b"c", b"SELECT INBOX")[-1].startswith(b"c OK")
        body = client.command(b"d", b"FETCH 1 BODY[]")
        assert body[0].endswith(b"{5}\r\nhello)\r\n"), body
    finally:
        client.close()


def test_too_many_literals_before_login(proxy_pool: ProxyPool) -> None:
    running = proxy(proxy_pool)
    port = running.plain_port
    # 16 literals (the default bound) in one ID command: fine, answered by Dovecot
    ok = RawClient.connect(port)
    try:
        pairs = b" ".join(b'"k%d" {1+}\r\nv' % i for i in range(16))
        reply = ok.command(b"i", b"ID (" + pairs + b")")
        assert reply[-1].startswith(b"i OK"), reply
    finally:
        ok.close()
    # 30,000 would cost as many round trips to the server before anybody is known: the
    # proxy ends the session at the 17th, with a BYE and a log line (40 are sent here: all
    # are read at once, so closing leaves nothing unread that would reset the connection)
    bad = RawClient.connect(port)
    try:
        pairs = b" ".join(b'"k%d" {1+}\r\nv' % i for i in range(40))
        bad.send(b"j ID (" + pairs + b")\r\n")
        rest = bytearray()
        with pytest.raises(EOFError):
            while True:
                rest += bad.readline()
    finally:
        bad.close()
    assert re.search(rb"\* BYE [^\r\n]*too many literals[^\r\n]*\r\n\Z", bytes(rest)), bytes(rest)
    assert "too many literals in one command before login" in running.log()
