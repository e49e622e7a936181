"""Fixtures for the tests where real clients talk to the real Dovecot *through* the proxy.

* ``proxy_pool`` (session): at most one proxy subprocess per upstream mode (``none``,
  ``implicit``, ``starttls``), each with a plain/STARTTLS listener and an implicit-TLS
  listener, started on first use and shared by every test.
* ``route`` (parametrised): one client leg (``starttls`` on the plain listener, or
  ``implicit`` TLS) times one upstream leg - six routes.  A route opens ``imaplib``,
  ``imapclient`` and raw-socket connections that trust only the test CA and verify the
  name ``localhost``.
* ``new_user``: a fresh Dovecot user (empty INBOX) for every call, from a pool created in
  batches so that only one passwd reload wait (~1 s) is paid per batch.
* ``RawClient``: a minimal socket (+ssl) IMAP client for what the libraries cannot send
  (SASL-IR, MULTIAPPEND, pipelining, streaming huge literals, non-synchronising literals
  ``{n+}``, which the proxy sends upstream as ``{n}``).
"""

from __future__ import annotations

import contextlib
import imaplib
import re
import socket
import ssl
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from imapclient import IMAPClient

from tests.support.certs import TlsCerts
from tests.support.dovecot import DovecotServer
from tests.support.proxy import ProxyProcess, free_port

HOST = "127.0.0.1"
TLS_NAME = "localhost"  # what clients connect to and verify the certificate against
TIMEOUT = 15.0

CLIENT_LEGS = ("starttls", "implicit")
UPSTREAM_LEGS = ("none", "implicit", "starttls")

_LITERAL_AT_END = re.compile(rb"~?\{(\d+)\+?\}\r\n\Z")


# ----------------------------------------------------------------------------- raw client


class RawClient:
    """Bytes in, bytes out; buffered reads that understand literals in server responses."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.greeting = b""

    @classmethod
    def connect(
        cls, port: int, ctx: ssl.SSLContext | None = None, *, timeout: float = TIMEOUT
    ) -> RawClient:
        sock = socket.create_connection((TLS_NAME, port), timeout=timeout)
        if ctx is not None:
            sock = ctx.wrap_socket(sock, server_hostname=TLS_NAME)
        client = cls(sock)
        client.greeting = client.readline()
        return client

    def starttls(self, ctx: ssl.SSLContext, tag: bytes = b"S1") -> bytes:
        """STARTTLS, then the handshake; returns the tagged reply."""
        self.send(tag + b" STARTTLS\r\n")
        reply = self.read_until_tagged(tag)
        assert reply[-1].startswith(tag + b" OK"), reply
        assert not self.buf, f"bytes after STARTTLS OK before TLS: {bytes(self.buf)!r}"
        self.sock = ctx.wrap_socket(self.sock, server_hostname=TLS_NAME)
        return reply[-1]

    # -- output

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    # -- input

    def _fill(self) -> None:
        try:
            data = self.sock.recv(256 * 1024)
        except ConnectionResetError:
            data = b""
        if not data:
            raise EOFError(f"connection closed; unread: {bytes(self.buf)[:200]!r}")
        self.buf += data

    def readline(self) -> bytes:
        while True:
            nl = self.buf.find(b"\n")
            if nl >= 0:
                line = bytes(self.buf[: nl + 1])
                del self.buf[: nl + 1]
                return line
            self._fill()

    def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def read_into(self, n: int, sink: Callable[[bytes], object], chunk: int = 1 << 20) -> None:
        """Pass the next ``n`` bytes to ``sink`` in chunks, never holding them all."""
        if self.buf:
            take = min(n, len(self.buf))
            sink(bytes(self.buf[:take]))
            del self.buf[:take]
            n -= take
        while n:
            data = self.sock.recv(min(chunk, n))
            if not data:
                raise EOFError(f"connection closed with {n} bytes of a literal missing")
            sink(data)
            n -= len(data)

    def read_message(self) -> bytes:
        """One whole server response, literals included."""
        parts = [self.readline()]
        while (m := _LITERAL_AT_END.search(parts[-1])) is not None and not parts[-1].startswith(
            b"+"
        ):
            parts.append(self.read_exact(int(m.group(1))))
            parts.append(self.readline())
        return b"".join(parts)

    def read_until_tagged(self, tag: bytes) -> list[bytes]:
        """Responses up to and including the tagged completion of ``tag``."""
        out: list[bytes] = []
        while True:
            msg = self.read_message()
            out.append(msg)
            if msg.startswith(tag + b" "):
                return out

    def command(self, tag: bytes, text: bytes) -> list[bytes]:
        self.send(tag + b" " + text + b"\r\n")
        return self.read_until_tagged(tag)

    def expect_continuation(self) -> bytes:
        line = self.read_message()
        assert line.startswith(b"+"), f"expected a continuation request, got {line!r}"
        return line

    def send_literals(self, tag: bytes, *parts: bytes) -> list[bytes]:
        """A command with synchronising literals, the way a client without LITERAL+ sends
        it: ``parts`` are the pieces around the literals (each but the last ends with
        ``{n}`` and each but the first starts with that literal's bytes); the server's
        ``+`` is awaited before each literal.  Returns the replies up to the tagged one."""
        *heads, last = parts
        for i, part in enumerate(heads):
            assert re.search(rb"~?\{\d+\}\Z", part), f"no {{n}} at the end of {part[-40:]!r}"
            self.send((tag + b" " if i == 0 else b"") + part + b"\r\n")
            self.expect_continuation()
        self.send((tag + b" " if not heads else b"") + last + b"\r\n")
        return self.read_until_tagged(tag)

    def nothing_pending(self, wait: float = 0.2) -> bool:
        """True when the server sent nothing more within ``wait`` seconds."""
        if self.buf:
            return False
        old = self.sock.gettimeout()
        self.sock.settimeout(wait)
        try:
            data = self.sock.recv(4096)
        except (TimeoutError, ssl.SSLWantReadError):
            return True
        finally:
            self.sock.settimeout(old)
        self.buf += data
        return False

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ----------------------------------------------------------------------------- proxies


def proxy_args(
    dovecot: DovecotServer,
    certs: TlsCerts,
    upstream_tls: str,
    *,
    plain_port: int,
    tls_port: int,
    transcript: bool = True,
) -> list[str]:
    """``imapproxy run`` arguments for both listeners in front of ``dovecot``."""
    upstream_port = dovecot.tls_port if upstream_tls == "implicit" else dovecot.port
    args = [
        "--listen", f"{HOST}:{plain_port}",
        "--listen-tls", f"{HOST}:{tls_port}",
        "--cert", str(certs.cert_path),
        "--key", str(certs.key_path),
        "--upstream", f"{dovecot.host}:{upstream_port}",
        "--upstream-tls", upstream_tls,
    ]  # fmt: skip
    if upstream_tls != "none":
        args += ["--upstream-ca", str(certs.ca_path), "--upstream-name", TLS_NAME]
    if transcript:
        args.append("--transcript")
    return args


@dataclass
class RunningProxy:
    upstream_tls: str
    process: ProxyProcess
    plain_port: int
    tls_port: int

    def log(self) -> str:
        return self.process.log()

    def transcript(self) -> str:
        return self.process.transcript()


def start_proxy(
    dovecot: DovecotServer,
    certs: TlsCerts,
    upstream_tls: str,
    workdir: Path,
    *,
    transcript: bool = True,
) -> RunningProxy:
    """Start (``__enter__``) a proxy subprocess; the caller stops it (``process.stop()``)."""
    plain_port, tls_port = free_port(), free_port()
    while tls_port == plain_port:
        tls_port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    process = ProxyProcess(
        proxy_args(
            dovecot,
            certs,
            upstream_tls,
            plain_port=plain_port,
            tls_port=tls_port,
            transcript=transcript,
        ),
        workdir=workdir,
        wait_ports=[(HOST, plain_port), (HOST, tls_port)],
    )
    process.__enter__()
    return RunningProxy(upstream_tls, process, plain_port, tls_port)


class ProxyPool:
    """One proxy per upstream mode, started lazily, stopped at the end of the session."""

    def __init__(self, dovecot: DovecotServer, certs: TlsCerts, base: Path) -> None:
        self.dovecot = dovecot
        self.certs = certs
        self.base = base
        self.proxies: dict[str, RunningProxy] = {}

    def get(self, upstream_tls: str) -> RunningProxy:
        proxy = self.proxies.get(upstream_tls)
        if proxy is None or proxy.process.proc is None or proxy.process.proc.poll() is not None:
            if proxy is not None:
                raise RuntimeError(
                    f"the shared proxy (upstream {upstream_tls}) died:\n{proxy.log()[-3000:]}"
                )
            proxy = start_proxy(
                self.dovecot, self.certs, upstream_tls, self.base / f"upstream-{upstream_tls}"
            )
            self.proxies[upstream_tls] = proxy
        return proxy

    def stop(self) -> None:
        for proxy in self.proxies.values():
            proxy.process.stop()


@pytest.fixture(scope="session")
def proxy_pool(
    dovecot: DovecotServer, tls_certs: TlsCerts, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxyPool]:
    pool = ProxyPool(dovecot, tls_certs, tmp_path_factory.mktemp("proxies"))
    try:
        yield pool
    finally:
        pool.stop()


# ----------------------------------------------------------------------------- routes


@dataclass
class Route:
    """One client leg through one proxy (one upstream leg)."""

    client_leg: str  # "starttls" (plain listener, client upgrades) or "implicit"
    proxy: RunningProxy
    certs: TlsCerts

    @property
    def upstream_leg(self) -> str:
        return self.proxy.upstream_tls

    @property
    def port(self) -> int:
        return self.proxy.tls_port if self.client_leg == "implicit" else self.proxy.plain_port

    def ctx(self) -> ssl.SSLContext:
        """Trusts only the test CA; verifies the name ``localhost``."""
        return self.certs.client_context()

    def imaplib(self) -> imaplib.IMAP4:
        if self.client_leg == "implicit":
            return imaplib.IMAP4_SSL(TLS_NAME, self.port, ssl_context=self.ctx(), timeout=TIMEOUT)
        conn = imaplib.IMAP4(TLS_NAME, self.port, timeout=TIMEOUT)
        assert "STARTTLS" in conn.capabilities
        typ, _ = conn.starttls(ssl_context=self.ctx())
        assert typ == "OK"
        assert isinstance(conn.sock, ssl.SSLSocket)
        return conn

    def imapclient(self) -> IMAPClient:
        if self.client_leg == "implicit":
            return IMAPClient(
                TLS_NAME, port=self.port, ssl=True, ssl_context=self.ctx(), timeout=TIMEOUT
            )
        client = IMAPClient(TLS_NAME, port=self.port, ssl=False, timeout=TIMEOUT)
        client.starttls(self.ctx())
        return client

    def raw(self, *, starttls: bool = True) -> RawClient:
        """Connected, greeting read and (on the STARTTLS leg, unless told not to) upgraded."""
        if self.client_leg == "implicit":
            return RawClient.connect(self.port, self.ctx())
        client = RawClient.connect(self.port)
        if starttls:
            client.starttls(self.ctx())
        return client

    def raw_login(self, user: str, password: str) -> RawClient:
        client = self.raw()
        reply = client.command(b"L1", b'LOGIN "%s" "%s"' % (user.encode(), password.encode()))
        assert reply[-1].startswith(b"L1 OK"), reply
        return client


ROUTE_PARAMS = [(c, u) for u in UPSTREAM_LEGS for c in CLIENT_LEGS]


@pytest.fixture(params=ROUTE_PARAMS, ids=[f"client_{c}-upstream_{u}" for c, u in ROUTE_PARAMS])
def route(request: pytest.FixtureRequest, proxy_pool: ProxyPool, tls_certs: TlsCerts) -> Route:
    client_leg, upstream_leg = request.param
    return Route(client_leg, proxy_pool.get(upstream_leg), tls_certs)


# ----------------------------------------------------------------------------- users


class UserPool:
    """Fresh users with empty INBOXes, created in batches.

    ``DovecotServer.add_user`` waits for Dovecot's next passwd-file check (up to 1 s) on
    every call; here a whole batch goes into ``dovecot.users`` first (``seed_message``
    creates each Maildir with the right owner; the seeded file is removed again) and one
    ``add_user`` writes the passwd file and pays the wait once.
    """

    batch = 64

    def __init__(self, dovecot: DovecotServer) -> None:
        self.dovecot = dovecot
        self.free: list[tuple[str, str]] = []
        self.issued: list[tuple[str, str]] = []

    def take(self) -> tuple[str, str]:
        if not self.free:
            self._refill()
        user = self.free.pop()
        self.issued.append(user)
        return user

    def _refill(self) -> None:
        made = [(f"u{uuid.uuid4().hex[:11]}", f"pw-{uuid.uuid4().hex}") for _ in range(self.batch)]
        for user, password in made:
            self.dovecot.users[user] = password
            self.dovecot.seed_message(user, b"Subject: placeholder\r\n\r\n.\r\n").unlink()
        last_user, last_password = made[-1]
        self.dovecot.add_user(last_user, last_password)  # writes passwd, waits for reload
        self.free.extend(reversed(made))


@pytest.fixture(scope="session")
def user_pool(dovecot: DovecotServer) -> UserPool:
    return UserPool(dovecot)


@pytest.fixture
def new_user(user_pool: UserPool) -> Callable[[], tuple[str, str]]:
    """Call it for a fresh ``(user, password)``; every user has an empty INBOX."""
    return user_pool.take
