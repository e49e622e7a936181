"""TLS key logs (``--tls-keylog-client`` / ``--tls-keylog-upstream``): off by default; when
on, a WARNING at start-up says the file decrypts traffic, the file is private (0600), and
after a session it holds that session's secrets in SSLKEYLOGFILE format - the client leg's
are exactly the ones the client itself logs."""

from __future__ import annotations

import imaplib
import logging
import stat
from pathlib import Path

import pytest
import trio

from imapproxy.cli import build_parser, config_from_args
from imapproxy.relay.server import Proxy
from tests.support.certs import TlsCerts
from tests.support.dovecot import DovecotServer
from tests.support.proxy import running_proxy

TLS13_LABELS = {
    "CLIENT_HANDSHAKE_TRAFFIC_SECRET",
    "SERVER_HANDSHAKE_TRAFFIC_SECRET",
    "CLIENT_TRAFFIC_SECRET_0",
    "SERVER_TRAFFIC_SECRET_0",
}


def keylog_lines(path: Path) -> set[str]:
    lines = {ln for ln in path.read_text().splitlines() if not ln.startswith("#")}
    assert lines, f"{path} holds no secrets"
    for line in lines:
        label, client_random, secret = line.split(" ")
        assert label == "CLIENT_RANDOM" or label in TLS13_LABELS | {"EXPORTER_SECRET"}, line
        assert len(client_random) == 64 and int(client_random, 16) >= 0, line
        int(secret, 16)
    return lines


def run_args(dovecot: DovecotServer, certs: TlsCerts, *extra: str) -> list[str]:
    return [
        "run", "--listen-tls", "127.0.0.1:0",
        "--cert", str(certs.cert_path), "--key", str(certs.key_path),
        "--upstream", f"127.0.0.1:{dovecot.tls_port}", "--upstream-tls", "implicit",
        "--upstream-ca", str(certs.ca_path), "--upstream-name", "localhost", *extra,
    ]  # fmt: skip


@pytest.mark.dovecot
def test_off_by_default(dovecot: DovecotServer, tls_certs: TlsCerts) -> None:
    proxy = Proxy(config_from_args(build_parser().parse_args(run_args(dovecot, tls_certs))))
    assert proxy.server_ssl is not None and proxy.server_ssl.keylog_filename is None
    assert proxy.upstream_ssl is not None and proxy.upstream_ssl.keylog_filename is None


@pytest.mark.dovecot
@pytest.mark.parametrize("tls13", [True, False], ids=["tls1.3", "tls1.2"])
async def test_a_session_leaves_its_secrets_in_the_key_logs(
    dovecot: DovecotServer,
    tls_certs: TlsCerts,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    tls13: bool,
) -> None:
    caplog.set_level(logging.WARNING, logger="imapproxy")
    client_log, upstream_log = tmp_path / "client.keys", tmp_path / "upstream.keys"
    theirs = tmp_path / "the-client-itself.keys"
    argv = run_args(
        dovecot, tls_certs,
        "--tls-keylog-client", str(client_log), "--tls-keylog-upstream", str(upstream_log),
    )  # fmt: skip
    config = config_from_args(build_parser().parse_args(argv))

    def session(port: int) -> None:
        ctx = tls_certs.client_context()
        if not tls13:
            ctx.maximum_version = ctx.minimum_version  # TLS 1.2: CLIENT_RANDOM lines
        ctx.keylog_filename = str(theirs)
        with imaplib.IMAP4_SSL("localhost", port, ssl_context=ctx) as imap:
            imap.login("alice", "alicepw")
            imap.noop()
            imap.logout()

    with trio.fail_after(20):
        async with running_proxy(config) as (_, addrs):
            warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
            await trio.to_thread.run_sync(session, addrs[0][1])
    for flag, path, what in (
        ("--tls-keylog-client", client_log, "client connections"),
        ("--tls-keylog-upstream", upstream_log, "connections to the upstream"),
    ):
        assert (
            f"{flag} {path}: the TLS secrets of {what} are written to this file; anyone who "
            "has it can decrypt captured traffic (passwords included): for debugging only, "
            "delete it after"
        ) in warnings, warnings
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    client_side = keylog_lines(client_log)
    labels = {line.split()[0] for line in client_side}
    assert labels == ({"CLIENT_RANDOM"} if not tls13 else TLS13_LABELS | {"EXPORTER_SECRET"})
    # the proxy logged exactly the secrets of the client's session
    assert client_side == keylog_lines(theirs)
    upstream_labels = {line.split()[0] for line in keylog_lines(upstream_log)}
    assert upstream_labels >= TLS13_LABELS  # Dovecot and the proxy agree on TLS 1.3
    assert not keylog_lines(theirs) & keylog_lines(upstream_log)  # two legs, two sessions
