"""Literals the server might not read as literals.

A server reads a literal only if its parser gets that far; otherwise it skips the line and
runs the literal's bytes as commands (checked here against Dovecot directly).  So the proxy
sends every non-synchronising literal ``{n+}`` upstream as a synchronising ``{n}``, where
the server visibly decides: its ``+`` (never passed on: the client did not ask) lets the
literal through, and a tagged refusal makes the proxy consume the literal, which the client
sent regardless.  Malformed command heads are refused by the proxy itself.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.certs import TlsCerts
from tests.support.dovecot import DovecotServer
from tests.support.proxy import ProxyProcess, free_port

SMUGGLED = b"b CREATE smuggled\r\n"


def _read(sock: socket.socket, until: bytes, timeout: float = 5.0) -> bytes:
    sock.settimeout(0.2)
    deadline = time.monotonic() + timeout
    out = b""
    while until not in out and time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        if not chunk:
            break
        out += chunk
    return out


def _session(port: int, user: str, password: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    _read(sock, b"\r\n")
    sock.sendall(b"a LOGIN " + user.encode() + b" " + password.encode() + b"\r\n")
    assert b"a OK" in _read(sock, b"a OK")
    return sock


def _mailboxes(port: int, user: str, password: str) -> bytes:
    sock = _session(port, user, password)
    sock.sendall(b'l LIST "" *\r\n')
    return _read(sock, b"l OK")


_users = iter(range(10_000))


@pytest.fixture
def user(dovecot: DovecotServer) -> str:
    name = f"lit{next(_users)}"
    dovecot.add_user(name, "pw")
    return name


@pytest.fixture(scope="module")
def proxy_port(
    dovecot: DovecotServer, tls_certs: TlsCerts, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[int]:
    port = free_port()
    args = ["--listen", f"127.0.0.1:{port}", "--upstream", f"127.0.0.1:{dovecot.port}"]
    workdir = Path(tmp_path_factory.mktemp("literals"))
    with ProxyProcess(args, workdir=workdir, wait_ports=[("127.0.0.1", port)]):
        yield port


@pytest.mark.parametrize("command", [b"XFOO", b"NOOP", b"CREATE foo"])
def test_dovecot_runs_a_literal_it_does_not_read(
    dovecot: DovecotServer, user: str, command: bytes
) -> None:
    """The premise, directly against Dovecot (no proxy)."""
    sock = _session(dovecot.port, user, "pw")
    sock.sendall(b"x " + command + b" {%d+}\r\n" % len(SMUGGLED) + SMUGGLED + b"\r\n")
    assert b"b OK" in _read(sock, b"b OK")
    assert b"smuggled" in _mailboxes(dovecot.port, user, "pw")


def _lines(data: bytes) -> list[bytes]:
    return data.split(b"\r\n")


@pytest.mark.parametrize(
    "head", [b"x XFOO", b"x NOOP", b"x CREATE foo", b"x LOGIN", b"x STATUS INBOX"]
)
def test_nonsync_literals_go_upstream_as_sync_and_nothing_is_smuggled(
    proxy_port: int, user: str, head: bytes
) -> None:
    """Sent as {n+} directly, Dovecot runs these literals as commands.  Through the proxy
    it sees a {n}: it either refuses the command with a tagged BAD/NO, and the literal the
    client sent anyway is consumed, or it asks for the literal and reads it as an argument
    (NOOP does).  Either way the literal is never run, and the command pipelined behind it
    is read from the right place."""
    sock = _session(proxy_port, user, "pw")
    sock.sendall(head + b" {%d+}\r\n" % len(SMUGGLED) + SMUGGLED + b"\r\nn NOOP\r\n")
    answer = _read(sock, b"n OK")
    lines = _lines(answer)
    assert [ln for ln in lines if ln.startswith((b"x BAD", b"x NO", b"x OK"))], answer
    assert b"n OK" in answer
    assert not [ln for ln in lines if ln.startswith(b"+")], answer  # never a "+" to the client
    assert b"b OK" not in answer
    assert b"smuggled" not in _mailboxes(proxy_port, user, "pw")


@pytest.mark.parametrize("head", [b"x CREATE]junk", b"x] NOOP"])
def test_malformed_heads_with_nonsync_literals_are_refused_and_consumed(
    proxy_port: int, user: str, head: bytes
) -> None:
    sock = _session(proxy_port, user, "pw")
    sock.sendall(head + b" {%d+}\r\n" % len(SMUGGLED) + SMUGGLED + b"\r\nn NOOP\r\n")
    answer = _read(sock, b"n OK")
    assert b"BAD [CLIENTBUG] malformed command" in answer
    assert b"n OK" in answer and b"b OK" not in answer
    assert b"smuggled" not in _mailboxes(proxy_port, user, "pw")


@pytest.mark.parametrize("line", [b"x] NOOP\r\n", b"x CREATE]junk\r\n", b"x\xff NOOP\r\n"])
def test_proxy_refuses_malformed_heads(proxy_port: int, user: str, line: bytes) -> None:
    sock = _session(proxy_port, user, "pw")
    sock.sendall(line + b"n NOOP\r\n")
    answer = _read(sock, b"n OK")
    assert b"BAD [CLIENTBUG] malformed command" in answer
    assert b"n OK" in answer


def test_nonsync_literal_after_a_sync_one(proxy_port: int, user: str) -> None:
    """The second literal of a message goes upstream as {n} too; whatever Dovecot makes of
    it, the literal is never run as a command and the session stays usable."""
    sock = _session(proxy_port, user, "pw")
    sock.sendall(b"x CREATE {3}\r\n")
    assert _read(sock, b"\r\n").startswith(b"+")
    sock.sendall(b"foo {%d+}\r\n" % len(SMUGGLED) + SMUGGLED + b"\r\nn NOOP\r\n")
    answer = _read(sock, b"n OK")
    # Dovecot 2.3 reads the extra argument and creates "foo"
    assert [ln for ln in _lines(answer) if ln.startswith((b"x BAD", b"x NO", b"x OK"))], answer
    assert not [ln for ln in _lines(answer) if ln.startswith(b"+")], answer
    assert b"n OK" in answer and b"b OK" not in answer
    assert b"smuggled" not in _mailboxes(proxy_port, user, "pw")


def test_large_refused_nonsync_literal_is_consumed(proxy_port: int, user: str) -> None:
    """5 MB sent without waiting after a command Dovecot refuses: streamed into nothing."""
    sock = _session(proxy_port, user, "pw")
    size = 5 * 1024 * 1024
    sock.sendall(b"x XFOO {%d+}\r\n" % size)
    block = (SMUGGLED * 4096)[: 64 * 1024]
    sent = 0
    while sent < size:
        piece = block[: size - sent]
        sock.sendall(piece)
        sent += len(piece)
    sock.sendall(b"\r\nn NOOP\r\n")
    answer = _read(sock, b"n OK", timeout=30)
    assert b"x BAD" in answer and b"n OK" in answer and b"b OK" not in answer
    assert b"smuggled" not in _mailboxes(proxy_port, user, "pw")


def test_sync_literals_are_relayed(proxy_port: int, user: str) -> None:
    sock = _session(proxy_port, user, "pw")
    name = b"viaLiteral"
    sock.sendall(b"c CREATE {%d}\r\n" % len(name))
    assert _read(sock, b"\r\n").startswith(b"+")
    sock.sendall(name + b"\r\n")
    assert b"c OK" in _read(sock, b"c OK")
    assert name in _mailboxes(proxy_port, user, "pw")


def test_literal_plus_is_offered_as_the_server_offers_it(
    proxy_port: int, user: str, dovecot: DovecotServer
) -> None:
    direct = _session(dovecot.port, user, "pw")
    direct.sendall(b"c CAPABILITY\r\n")
    assert b" LITERAL+" in _read(direct, b"c OK")  # Dovecot 2.3 offers LITERAL+
    sock = _session(proxy_port, user, "pw")
    sock.sendall(b"c CAPABILITY\r\n")
    caps = _read(sock, b"c OK")
    assert b"IMAP4rev1" in caps
    assert b" LITERAL+" in caps


def test_starttls_with_a_literal_is_refused(proxy_port: int) -> None:
    sock = socket.create_connection(("127.0.0.1", proxy_port))
    _read(sock, b"\r\n")
    sock.sendall(b"s STARTTLS {5}\r\n")
    assert b"s BAD [CLIENTBUG]" in _read(sock, b"s BAD")
    sock.sendall(b"n NOOP\r\n")
    assert b"n OK" in _read(sock, b"n OK")


@pytest.mark.parametrize("plus", [b"+", b""], ids=["nonsync", "sync"])
def test_a_reused_tag_is_refused_so_answers_cannot_be_mismatched(
    dovecot: DovecotServer, user: str, tmp_path: Path, plus: bytes
) -> None:
    """Answers are matched to commands by tag.  A second command with the tag of one in
    progress (Dovecot accepts that) would let the first one's tagged answer settle the
    second one's literal: the proxy would discard or pass on bytes that Dovecot reads
    otherwise, and bytes the proxy took for a literal ran as a command (a review found
    ``b CREATE`` below run that way).  Now the proxy refuses the second command, and
    every command Dovecot runs is one the proxy read as a command (its transcript).  All
    in one write, so the first command is surely still in progress."""
    inner = b"\r\nb CREATE visible\r\n".ljust(40, b" ")
    second = b"b1 NOOP {40%s}\r\n" % plus
    port = free_port()
    args = ["--listen", f"127.0.0.1:{port}", "--upstream", f"127.0.0.1:{dovecot.port}"]
    with ProxyProcess(
        [*args, "--transcript"], workdir=tmp_path, wait_ports=[("127.0.0.1", port)]
    ) as proxy:
        sock = _session(port, user, "pw")
        sock.sendall(
            b"a1 NOOP\r\n"
            + b"a1 APPEND INBOX {%d%s}\r\n" % (len(second), plus)
            + second
            + inner
            + b"\r\nn NOOP\r\n"
        )
        answer = _read(sock, b"n OK")
        sock.sendall(b"z LOGOUT\r\n")
        _read(sock, b"z OK")
        sock.close()
    lines = _lines(answer)
    assert b"a1 BAD [CLIENTBUG] tag already in use by a command in progress" in lines, answer
    assert not [ln for ln in lines if ln.startswith(b"+")], answer  # sent early: no "+"
    assert b"n OK" in answer
    transcript = proxy.transcript_path.read_text()
    ran = [ln.split(b" ", 1)[0] for ln in lines if re.match(rb"[a-z0-9]+ (OK|NO|BAD) ", ln)]
    for tag in ran:  # each command Dovecot answered was one the proxy forwarded
        assert re.search(rf" C: {tag.decode()} ", transcript), (tag, transcript)
    if b"b" in ran:
        assert " C: b CREATE visible" in transcript


def test_a_reused_tag_cannot_fake_the_logged_in_user(
    dovecot: DovecotServer, tmp_path: Path
) -> None:
    """The second LOGIN with the same tag never reaches Dovecot, so the user the proxy
    records (its session log) is the one Dovecot logged in."""
    dovecot.add_user("tagreal", "pw")
    port = free_port()
    args = ["--listen", f"127.0.0.1:{port}", "--upstream", f"127.0.0.1:{dovecot.port}"]
    with ProxyProcess(args, workdir=tmp_path, wait_ports=[("127.0.0.1", port)]) as proxy:
        sock = socket.create_connection(("127.0.0.1", port))
        _read(sock, b"\r\n")
        sock.sendall(b"a1 LOGIN tagreal pw\r\na1 LOGIN someoneelse x\r\nn NOOP\r\n")
        answer = _read(sock, b"n OK")
        sock.sendall(b"z LOGOUT\r\n")
        _read(sock, b"z OK")
        sock.close()
    lines = _lines(answer)
    assert b"a1 BAD [CLIENTBUG] tag already in use by a command in progress" in lines, answer
    assert [ln for ln in lines if ln.startswith(b"a1 OK")], answer
    assert b"n OK" in answer
    log = proxy.log()  # complete: the proxy has been stopped
    logins = re.findall(r"session (\S+): authenticated as (\S+)", log)
    assert [user for _, user in logins] == ["tagreal"], log
    ends = dict(re.findall(r"session (\S+) end .* user=(\S+) ", log))
    assert ends[logins[0][0]] == "tagreal", log
    # (the other session is the start-up probe's, which never logged in)
    assert set(ends.values()) == {"-", "tagreal"}, log
    assert "someoneelse" not in log
