"""``imapproxy run --config FILE`` with nothing else: listeners with their own TLS mode and
certificate, the upstream, limits and timeouts all from the file, in front of the real
Dovecot (issue 12: one config file for everything)."""

from __future__ import annotations

import contextlib
import imaplib
import socket
import ssl
from pathlib import Path

import pytest
import trustme

from tests.support.certs import make_tls_certs
from tests.support.dovecot import DovecotServer
from tests.support.proxy import ProxyProcess, free_port

HOST = "127.0.0.1"


def test_everything_from_the_file(dovecot: DovecotServer, tmp_path: Path) -> None:
    ca = trustme.CA(organization_name="config file test")
    default = make_tls_certs(tmp_path / "default", ca=ca, identities=("imap.default.test",))
    own = make_tls_certs(tmp_path / "own", ca=ca, identities=("imap.own.test",))
    plain, starttls, implicit = free_port(), free_port(), free_port()
    config = tmp_path / "proxy.toml"
    config.write_text(f"""
[logging]
level = "WARNING"

[tls]
cert = "{default.cert_path}"
key = "{default.key_path}"

[[listeners]]
address = "{HOST}:{plain}"
tls = "none"
name = "plain-only"

[[listeners]]
address = "{HOST}:{starttls}"
tls = "starttls"

[[listeners]]
address = "{HOST}:{implicit}"
tls = "implicit"
cert = "{own.cert_path}"
key = "{own.key_path}"

[upstream]
address = "{dovecot.host}:{dovecot.port}"

[limits]
max_sessions_per_address = 8

[timeouts]
login = 20
""")
    ports = [(HOST, plain), (HOST, starttls), (HOST, implicit)]
    with ProxyProcess(["--config", str(config)], workdir=tmp_path, wait_ports=ports) as proxy:
        # tls = "none": no STARTTLS offered, though the proxy has a certificate
        with imaplib.IMAP4(HOST, plain, timeout=15) as m:
            assert "STARTTLS" not in m.capabilities
            assert m.login("alice", dovecot.users["alice"])[0] == "OK"
        # starttls: the [tls] certificate (not the implicit listener's)
        m = imaplib.IMAP4(HOST, starttls, timeout=15)
        assert "STARTTLS" in m.capabilities
        with pytest.raises(ssl.SSLCertVerificationError):
            m.starttls(_trusting(default.ca_path, "imap.own.test"))
        with contextlib.suppress(OSError):
            m.shutdown()
        with imaplib.IMAP4(HOST, starttls, timeout=15) as m:
            m.starttls(_trusting(default.ca_path, "imap.default.test"))
            assert m.login("alice", dovecot.users["alice"])[0] == "OK"
        # implicit: the listener's own certificate
        with imaplib.IMAP4_SSL(HOST, implicit, ssl_context=_trusting(own.ca_path,
                               "imap.own.test"), timeout=15) as m:  # fmt: skip
            assert m.login("alice", dovecot.users["alice"])[0] == "OK"
        # the limit from the file: from another address (the start-up probes came from
        # 127.0.0.1), eight sessions at once, the ninth refused
        held = []
        try:
            for n in range(9):
                sock = socket.create_connection((HOST, plain), timeout=15,
                                                source_address=("127.0.0.2", 0))  # fmt: skip
                held.append(sock)
                greeting = sock.makefile("rb").readline()
                assert greeting.startswith(b"* BYE [UNAVAILABLE]" if n == 8 else b"* OK"), n
        finally:
            for sock in held:
                sock.close()
        log = proxy.log()
    # [logging] level = WARNING: no INFO session lines
    assert " INFO " not in log, log
    assert "Traceback" not in log


class _Named(ssl.SSLContext):
    """Checks the server's certificate against ``name`` (imaplib passes the address it
    connected to)."""

    name = ""

    def wrap_socket(self, sock, *args, server_hostname=None, **kwargs):  # type: ignore[no-untyped-def,override]
        return super().wrap_socket(sock, *args, server_hostname=self.name, **kwargs)


def _trusting(ca: Path, name: str) -> ssl.SSLContext:
    context = _Named(ssl.PROTOCOL_TLS_CLIENT)
    context.name = name
    context.load_verify_locations(cafile=str(ca))
    return context
