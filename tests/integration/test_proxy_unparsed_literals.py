"""Literals the server might not read as literals.

A server reads a literal only if its parser gets that far; otherwise it skips the line and
runs the literal's bytes as commands (checked here against Dovecot directly).  So the proxy
does not advertise LITERAL+/LITERAL-, refuses ``{n+}`` and malformed command heads itself,
and lets synchronising literals through, where the server visibly decides.
"""

from __future__ import annotations

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


@pytest.mark.parametrize(
    "head",
    [b"x XFOO", b"x NOOP", b"x CREATE foo", b"x LOGIN", b"x STATUS INBOX", b"x CREATE]junk",
     b"x] NOOP", b"x APPEND INBOX"],
)  # fmt: skip
def test_proxy_refuses_nonsync_literals_and_nothing_is_smuggled(
    proxy_port: int, user: str, head: bytes
) -> None:
    sock = _session(proxy_port, user, "pw")
    sock.sendall(head + b" {%d+}\r\n" % len(SMUGGLED) + SMUGGLED + b"\r\n")
    answer = _read(sock, b"BAD [CLIENTBUG]")
    assert b"BAD [CLIENTBUG]" in answer
    sock.sendall(b"n NOOP\r\n")
    after = _read(sock, b"n OK")
    assert b"n OK" in after
    assert b"b OK" not in answer + after
    assert b"smuggled" not in _mailboxes(proxy_port, user, "pw")


@pytest.mark.parametrize("line", [b"x] NOOP\r\n", b"x CREATE]junk\r\n", b"x\xff NOOP\r\n"])
def test_proxy_refuses_malformed_heads(proxy_port: int, user: str, line: bytes) -> None:
    sock = _session(proxy_port, user, "pw")
    sock.sendall(line + b"n NOOP\r\n")
    answer = _read(sock, b"n OK")
    assert b"BAD [CLIENTBUG] malformed command" in answer
    assert b"n OK" in answer


def test_nonsync_literal_after_a_sync_one_ends_the_session(proxy_port: int, user: str) -> None:
    sock = _session(proxy_port, user, "pw")
    sock.sendall(b"x CREATE {3}\r\n")
    assert b"+" in _read(sock, b"\r\n")
    sock.sendall(b"foo {%d+}\r\n" % len(SMUGGLED) + SMUGGLED + b"\r\n")
    answer = _read(sock, b"BYE")
    assert b"* BYE [CLIENTBUG]" in answer
    assert b"smuggled" not in _mailboxes(proxy_port, user, "pw")


def test_sync_literals_are_relayed(proxy_port: int, user: str) -> None:
    sock = _session(proxy_port, user, "pw")
    name = b"viaLiteral"
    sock.sendall(b"c CREATE {%d}\r\n" % len(name))
    assert _read(sock, b"\r\n").startswith(b"+")
    sock.sendall(name + b"\r\n")
    assert b"c OK" in _read(sock, b"c OK")
    assert name in _mailboxes(proxy_port, user, "pw")


def test_literal_plus_is_not_advertised(proxy_port: int, user: str) -> None:
    sock = _session(proxy_port, user, "pw")
    sock.sendall(b"c CAPABILITY\r\n")
    caps = _read(sock, b"c OK")
    assert b"IMAP4rev1" in caps
    assert b"LITERAL+" not in caps
    assert b"LITERAL-" not in caps


def test_starttls_with_a_literal_is_refused(proxy_port: int) -> None:
    sock = socket.create_connection(("127.0.0.1", proxy_port))
    _read(sock, b"\r\n")
    sock.sendall(b"s STARTTLS {5}\r\n")
    assert b"s BAD [CLIENTBUG]" in _read(sock, b"s BAD")
    sock.sendall(b"n NOOP\r\n")
    assert b"n OK" in _read(sock, b"n OK")
