"""A server skips the line of a command it does not know without honouring its literals, so
the literal's bytes run as commands (checked here against Dovecot directly).  Through the
proxy such a command is refused, and the smuggled command never runs."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from imapproxy.wire.commands import reads_literals
from imapproxy.wire.conversation import Phase
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


def _mailboxes(sock: socket.socket) -> bytes:
    sock.sendall(b'l LIST "" *\r\n')
    return _read(sock, b"l OK")


@pytest.fixture(scope="module")
def proxy_port(
    dovecot: DovecotServer, tls_certs: TlsCerts, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[int]:
    port = free_port()
    args = ["--listen", f"127.0.0.1:{port}", "--upstream", f"127.0.0.1:{dovecot.port}"]
    workdir = Path(tmp_path_factory.mktemp("unparsed"))
    with ProxyProcess(args, workdir=workdir, wait_ports=[("127.0.0.1", port)]):
        yield port


def test_dovecot_runs_the_literal_of_an_unknown_command(dovecot: DovecotServer) -> None:
    """The premise, directly against Dovecot (no proxy)."""
    dovecot.add_user("unparsed1", "pw1")
    sock = _session(dovecot.port, "unparsed1", "pw1")
    sock.sendall(b"x XFOO {%d+}\r\n" % len(SMUGGLED) + SMUGGLED + b"\r\n")
    answer = _read(sock, b"b OK")
    assert b"b OK" in answer
    assert b"smuggled" in _mailboxes(sock)


@pytest.mark.parametrize("command", [b"XFOO", b"LOGIN", b"STARTTLS"])
def test_proxy_refuses_unknown_command_with_nonsync_literal(
    dovecot: DovecotServer, proxy_port: int, command: bytes
) -> None:
    user = f"unparsed-{command.decode().lower()}"
    dovecot.add_user(user, "pw")
    sock = _session(proxy_port, user, "pw")
    sock.sendall(b"x " + command + b" {%d+}\r\n" % len(SMUGGLED) + SMUGGLED + b"\r\n")
    answer = _read(sock, b"x BAD")
    assert b"x BAD [CLIENTBUG]" in answer
    sock.sendall(b"n NOOP\r\n")
    after = _read(sock, b"n OK")
    assert b"n OK" in after
    assert b"b OK" not in answer + after
    assert b"smuggled" not in _mailboxes(sock)


def test_known_command_with_nonsync_literal_is_relayed(
    dovecot: DovecotServer, proxy_port: int
) -> None:
    dovecot.add_user("unparsed-known", "pw")
    sock = _session(proxy_port, "unparsed-known", "pw")
    name = b"viaLiteral"
    sock.sendall(b"c CREATE {%d+}\r\n" % len(name) + name + b"\r\n")
    assert b"c OK" in _read(sock, b"c OK")
    assert name in _mailboxes(sock)


@pytest.mark.parametrize(
    ("name", "phase", "expected"),
    [
        ("LOGIN", Phase.NOT_AUTHENTICATED, True),
        ("LOGIN", Phase.AUTHENTICATED, False),
        ("SELECT", Phase.NOT_AUTHENTICATED, False),
        ("UID FETCH", Phase.SELECTED, True),
        ("XFOO", Phase.SELECTED, False),
    ],
)
def test_reads_literals_by_phase(name: str, phase: Phase, expected: bool) -> None:
    assert reads_literals(name, phase) is expected
