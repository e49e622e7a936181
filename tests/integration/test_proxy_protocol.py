"""PROXY protocol in and out, and ID forwarding, with real HAProxy in front and real Dovecot
behind (issue 13).

Clients connect to HAProxy (127.0.0.1) from 127.0.0.2 and 127.0.0.3; HAProxy sends PROXY v2
to the proxy, which trusts only 127.0.0.1.  Proxy A sends PROXY v2 on to Dovecot's
``haproxy = yes`` listener; proxy B sends ``ID (x-originating-ip ...)`` to Dovecot's plain
listener (``login_trusted_networks``); proxy B also has a v1 listener behind HAProxy's
``send-proxy``.  Dovecot's own log must name the real client.
"""

from __future__ import annotations

import contextlib
import imaplib
import json
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.certs import TlsCerts, client_ssl_context, make_tls_certs
from tests.support.dovecot import DovecotServer
from tests.support.proxy import ProxyProcess, free_port

HOST = "127.0.0.1"  # HAProxy, the proxy and Dovecot
CLIENT = "127.0.0.2"  # a client
DENIED = "127.0.0.3"  # a client the policy refuses
HAPROXY_NOT_FOUND = "haproxy not found: apt-get install -y haproxy"


class FromAddress(imaplib.IMAP4):
    """imaplib, connecting from a chosen loopback address."""

    source = CLIENT

    def _create_socket(self, timeout: float | None) -> socket.socket:
        return socket.create_connection(
            (self.host, self.port), timeout or 20, source_address=(self.source, 0)
        )


class TlsFromAddress(imaplib.IMAP4_SSL):
    source = CLIENT

    def _create_socket(self, timeout: float | None) -> socket.socket:
        # (IMAP4_SSL calls IMAP4._create_socket by name: a mixin would not be used)
        sock = FromAddress._create_socket(self, timeout)  # type: ignore[arg-type]
        return self.ssl_context.wrap_socket(sock, server_hostname=self.host)


def client(port: int, source: str, tls: ssl.SSLContext | None = None) -> imaplib.IMAP4:
    if tls is not None:
        conn: imaplib.IMAP4 = type("C", (TlsFromAddress,), {"source": source})(
            HOST, port, ssl_context=tls, timeout=20
        )
    else:
        conn = type("C", (FromAddress,), {"source": source})(HOST, port, timeout=20)
    return conn


def wait_for(what: str, check: Any, text: Any, timeout: float = 15.0) -> None:
    """Wait until ``check()`` is true (files written by other processes)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not seen within {timeout:g} s:\n{text()[-3000:]}")
        time.sleep(0.05)


class HaProxy:
    """``haproxy -f CFG -db`` in the foreground, one TCP frontend per (port, backend port),
    each sending PROXY v2; stopped by PID."""

    def __init__(self, workdir: Path, routes: dict[int, tuple[int, str]]) -> None:
        """``routes``: frontend port -> (backend port, send-proxy | send-proxy-v2)."""
        binary = shutil.which("haproxy") or (
            "/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None
        )
        if binary is None:
            pytest.fail(HAPROXY_NOT_FOUND)
        lines = [
            "global", "  maxconn 200",
            "defaults", "  mode tcp", "  timeout connect 5s", "  timeout client 60s",
            "  timeout server 60s",
        ]  # fmt: skip
        for i, (front, (back, send)) in enumerate(routes.items()):
            lines += [
                f"frontend f{i}", f"  bind {HOST}:{front}", f"  default_backend b{i}",
                f"backend b{i}", f"  server s{i} {HOST}:{back} {send}",
            ]  # fmt: skip
        self.config = workdir / "haproxy.cfg"
        self.config.write_text("\n".join(lines) + "\n")
        self.log = workdir / "haproxy.log"
        self.routes = routes
        self.proc = subprocess.Popen(
            [binary, "-f", str(self.config), "-db"],
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 15
        for front in routes:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"haproxy exited: {self.log.read_text()}")
                with contextlib.suppress(OSError), socket.socket() as probe:
                    # a listening socket accepts; the connection is dropped before HAProxy
                    # even connects on (no data sent), so the proxy sees nothing of it
                    probe.settimeout(1)
                    probe.connect((HOST, front))
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"haproxy did not listen on {front}")
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class Setup:
    def __init__(self, dovecot: DovecotServer, certs: TlsCerts, workdir: Path) -> None:
        self.dovecot = dovecot
        self.certs = certs
        self.workdir = workdir
        self.ports = {name: free_port() for name in ("a_plain", "a_tls", "b_plain", "b_v1")}
        self.front = {name: free_port() for name in self.ports}
        self.transcript_a = workdir / "a.jsonl"
        self.proxies: list[ProxyProcess] = []

    def proxy_config(self, name: str, listeners: str, upstream: str, filters: str) -> Path:
        path = self.workdir / f"{name}.toml"
        path.write_text(f"""
[logging]
level = "INFO"

[tls]
cert = "{self.certs.cert_path}"
key = "{self.certs.key_path}"
{listeners}
[upstream]
{upstream}
{filters}
""")
        return path

    def start(self) -> None:
        trusted = f'proxy_protocol = "v2"\nproxy_trusted = ["{HOST}/32"]'
        a = self.proxy_config(
            "a",
            f"""
[[listeners]]
address = "{HOST}:{self.ports["a_plain"]}"
tls = "none"
{trusted}

[[listeners]]
address = "{HOST}:{self.ports["a_tls"]}"
tls = "implicit"
{trusted}
""",
            f'address = "{HOST}:{self.dovecot.haproxy_port}"\nproxy_protocol = "v2"',
            f"""
[[filters]]
use = "policy"
default = "allow"

[[filters.rules]]
name = "not-from-there"
match = {{ command = "LOGIN", client = "{DENIED}/32" }}
action = "deny"
text = "not from there"

[[filters]]
use = "transcript"
path = "{self.transcript_a}"
format = "jsonl"
""",
        )
        b = self.proxy_config(
            "b",
            f"""
[[listeners]]
address = "{HOST}:{self.ports["b_plain"]}"
tls = "none"
{trusted}

[[listeners]]
address = "{HOST}:{self.ports["b_v1"]}"
tls = "none"
proxy_protocol = "v1"
proxy_trusted = ["{HOST}/32"]
""",
            f'address = "{HOST}:{self.dovecot.port}"\nid_forwarding = true',
            "",
        )
        routes = (("a", a, ("a_plain", "a_tls")), ("b", b, ("b_plain", "b_v1")))
        for name, path, ports in routes:
            workdir = self.workdir / name
            workdir.mkdir()
            proc = ProxyProcess(
                ["--config", str(path)], workdir=workdir,
                wait_ports=[(HOST, self.ports[p]) for p in ports],
            )  # fmt: skip
            self.proxies.append(proc.__enter__())
        self.haproxy = HaProxy(
            self.workdir,
            {
                self.front[name]: (port, "send-proxy" if name == "b_v1" else "send-proxy-v2")
                for name, port in self.ports.items()
            },
        )

    def stop(self) -> None:
        if hasattr(self, "haproxy"):
            self.haproxy.stop()
        for proc in self.proxies:
            proc.stop()

    @property
    def a(self) -> ProxyProcess:
        return self.proxies[0]

    @property
    def b(self) -> ProxyProcess:
        return self.proxies[1]

    def records(self) -> list[dict[str, Any]]:
        if not self.transcript_a.exists():
            return []
        lines = self.transcript_a.read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def dovecot_log(self) -> str:
        path = self.dovecot.log_path
        return path.read_text(errors="replace") if path.exists() else ""


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    workdir = tmp_path_factory.mktemp("proxyproto")
    certs = make_tls_certs(workdir / "tls")
    with DovecotServer(haproxy=True, login_trusted_networks=f"{HOST}/32") as dovecot:
        s = Setup(dovecot, certs, workdir)
        try:
            s.start()
            yield s
        finally:
            s.stop()


def login_lines(setup: Setup, user: str, rip: str) -> int:
    return sum(
        "Login: user=<" + user + ">" in line and f"rip={rip}," in line
        for line in setup.dovecot_log().splitlines()
    )


def login_line(setup: Setup, user: str, rip: str) -> bool:
    return login_lines(setup, user, rip) > 0


def test_client_address_reaches_transcript_and_dovecot_via_proxy_protocol_out(
    setup: Setup,
) -> None:
    user, password = "alice", setup.dovecot.users["alice"]
    conn = client(setup.front["a_plain"], CLIENT)
    local_port = conn.sock.getsockname()[1]
    conn.login(user, password)
    conn.select("INBOX")
    conn.logout()
    wait_for(
        "Dovecot's login line with rip=127.0.0.2",
        lambda: login_line(setup, user, CLIENT),
        setup.dovecot_log,
    )
    wait_for(  # (the transcript is written behind the session)
        "the transcript's session_start with client 127.0.0.2",
        lambda: any(
            r["type"] == "session_start" and r["client"] == f"{CLIENT}:{local_port}"
            for r in setup.records()
        ),
        lambda: setup.transcript_a.read_text(),
    )
    assert f"peer={CLIENT}:{local_port}" in setup.a.log()


def test_implicit_tls_after_the_header_loses_no_byte(setup: Setup) -> None:
    """Implicit TLS starts after the header (the TLS handshake reads what follows it; the
    header and a ClientHello in one packet: tests/test_proxied.py)."""
    user, password = "bob", setup.dovecot.users["bob"]
    conn = client(setup.front["a_tls"], CLIENT, tls=client_ssl_context(setup.certs.ca_path))
    local_port = conn.sock.getsockname()[1]
    conn.login(user, password)
    conn.logout()
    wait_for(
        "the TLS session's start",
        lambda: any(
            r["type"] == "session_start"
            and r["client"] == f"{CLIENT}:{local_port}"
            and r["tls"] is not None
            for r in setup.records()
        ),
        lambda: setup.transcript_a.read_text(),
    )
    wait_for(
        "Dovecot's login line for bob",
        lambda: login_line(setup, user, CLIENT),
        setup.dovecot_log,
    )


def test_policy_client_rule_applies_to_the_header_address(setup: Setup) -> None:
    denied = client(setup.front["a_plain"], DENIED)
    with pytest.raises(imaplib.IMAP4.error, match="not from there"):
        denied.login("alice", setup.dovecot.users["alice"])
    denied.logout()
    allowed = client(setup.front["a_plain"], CLIENT)
    allowed.login("alice", setup.dovecot.users["alice"])  # the same rule, another client
    allowed.logout()
    assert not login_line(setup, "alice", DENIED)


def test_id_forwarding_shows_the_client_in_dovecots_log(setup: Setup) -> None:
    """Proxy B sends ID with x-originating-ip; a client's own ID that claims another
    address afterwards is relayed but does not move it (Dovecot takes the first ID only)."""
    user, password = "bob", setup.dovecot.users["bob"]
    conn = client(setup.front["b_plain"], CLIENT)
    typ, data = conn.xatom("ID", '("name" "test" "x-originating-ip" "192.0.2.66")')
    assert typ == "OK", data
    conn.login(user, password)
    conn.logout()
    wait_for(
        "Dovecot's login line with rip=127.0.0.2 (via ID)",
        lambda: login_line(setup, user, CLIENT),
        setup.dovecot_log,
    )
    assert "192.0.2.66" not in setup.dovecot_log()


def recv_all(sock: socket.socket) -> bytes:
    """Everything until the proxy closes (a close with our bytes unread is a reset)."""
    out = b""
    while True:
        try:
            data = sock.recv(4096)
        except ConnectionResetError:
            return out
        if not data:
            return out
        out += data


def test_header_from_an_untrusted_address_is_refused(setup: Setup) -> None:
    """A direct connection from 127.0.0.2 (not HAProxy's 127.0.0.1), even with a well-formed
    header claiming any address, is closed unread, with a log line."""
    from imapproxy.wire.proxyproto import build_v2

    with socket.create_connection(
        (HOST, setup.ports["a_plain"]), timeout=20, source_address=(CLIENT, 0)
    ) as sock:
        sock.sendall(build_v2(("198.51.100.1", 1000), (HOST, 143)))
        assert recv_all(sock) == b""  # closed, no greeting
    wait_for(
        "the refusal line",
        lambda: f"proxy protocol header from untrusted {CLIENT} refused" in setup.a.log(),
        setup.a.log,
    )
    assert "198.51.100.1" not in setup.a.log()


def test_missing_header_from_a_trusted_address_is_refused(setup: Setup) -> None:
    with socket.create_connection((HOST, setup.ports["a_plain"]), timeout=20) as sock:
        sock.sendall(b"a1 CAPABILITY\r\n")
        assert recv_all(sock) == b""
    wait_for(
        "the refusal line",
        lambda: "no PROXY v2 header (the connection starts with" in setup.a.log(),
        setup.a.log,
    )


def test_check_connects_to_a_proxy_protocol_upstream_with_a_local_header(setup: Setup) -> None:
    """`imapproxy check --connect` talks to Dovecot's haproxy listener (a LOCAL header);
    without the header that listener refuses it."""
    import trio

    from imapproxy.config import Endpoint, ListenerConfig, ProxyConfig, UpstreamConfig
    from imapproxy.upstream_check import check_upstream

    def config(proxy_protocol: str) -> ProxyConfig:
        up = UpstreamConfig(
            Endpoint(HOST, setup.dovecot.haproxy_port), proxy_protocol=proxy_protocol
        )
        return ProxyConfig((ListenerConfig(Endpoint(HOST, 1), implicit_tls=False),), up)

    with_header = trio.run(check_upstream, config("v2"))
    assert with_header.ok, with_header.lines
    without = trio.run(check_upstream, config("off"))
    assert not without.ok


def test_proxy_protocol_v1_in_then_id_forwarding_out(setup: Setup) -> None:
    """HAProxy's send-proxy (v1) to proxy B's v1 listener: its log's peer= and Dovecot's
    rip= (by ID) name the client."""
    before = login_lines(setup, "alice", CLIENT)
    conn = client(setup.front["b_v1"], CLIENT)
    local_port = conn.sock.getsockname()[1]
    conn.login("alice", setup.dovecot.users["alice"])
    conn.logout()
    wait_for(
        "another Dovecot login line for alice with rip=127.0.0.2",
        lambda: login_lines(setup, "alice", CLIENT) > before,
        setup.dovecot_log,
    )
    wait_for("the session's peer", lambda: f"peer={CLIENT}:{local_port}" in setup.b.log(),
             setup.b.log)  # fmt: skip
