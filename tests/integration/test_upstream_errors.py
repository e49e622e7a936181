"""Upstream trouble, by its message: a WARNING that says what failed and which flag fixes
it (the client's BYE says what failed, never the operator's flags nor the upstream's
bytes), fast for an upstream that is not IMAP; and ``imapproxy check --upstream`` /
``imapproxy run --check-upstream``, which connect once and report greeting, TLS and
capabilities (exit 0/1).

Real Dovecot for what it can do (a certificate the proxy does not trust, a plain port
spoken to with TLS); the fake server for what it cannot (an SSH or silent server)."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

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
from tests.support.certs import TlsCerts
from tests.support.dovecot import DovecotServer
from tests.support.fakeserver import ImapClient, Send, Stall, WaitEof, fake_server
from tests.support.proxy import ProxyProcess, free_port, running_proxy
from tests.test_cli import run_cli

LIMIT = 20.0


def config(
    port: int,
    tls: UpstreamTls = UpstreamTls.NONE,
    *,
    ca: object = None,
    name: str | None = None,
    timeouts: Timeouts | None = None,
) -> ProxyConfig:
    return ProxyConfig(
        listeners=(ListenerConfig(Endpoint("127.0.0.1", 0), implicit_tls=False),),
        upstream=UpstreamConfig(
            Endpoint("127.0.0.1", port),
            tls=tls,
            ca_file=None if ca is None else str(ca),
            server_hostname=name,
        ),
        timeouts=timeouts or Timeouts(),
    )


async def refused(
    caplog: pytest.LogCaptureFixture, cfg: ProxyConfig
) -> tuple[bytes, logging.LogRecord]:
    """A client's whole answer through a proxy whose upstream fails, and the WARNING
    that says why."""
    caplog.set_level(logging.INFO, logger="imapproxy")
    async with running_proxy(cfg) as (_, addrs):
        client = await ImapClient.connect(*addrs[0])
        rest = await client.read_until_eof()  # the warning is logged before the BYE
    (record,) = [r for r in caplog.records if ": upstream " in r.getMessage()]
    assert record.levelno == logging.WARNING, record
    assert record.name == "imapproxy.session"
    return rest, record


@pytest.mark.dovecot
async def test_an_untrusted_certificate_names_upstream_ca(
    caplog: pytest.LogCaptureFixture, dovecot: DovecotServer
) -> None:
    with trio.fail_after(LIMIT):
        rest, record = await refused(caplog, config(dovecot.tls_port, UpstreamTls.IMPLICIT))
    assert rest.startswith(b"* BYE [UNAVAILABLE] upstream TLS failed: certificate not verified")
    assert b"--upstream" not in rest
    message = record.getMessage()
    assert f"upstream 127.0.0.1:{dovecot.tls_port}: upstream TLS failed: certificate not " in (
        message
    )
    assert message.endswith(
        "give the CA that signed it with --upstream-ca FILE (or, for a test only, "
        "--upstream-insecure)"
    ), message


@pytest.mark.dovecot
async def test_a_certificate_for_another_name_names_upstream_name(
    caplog: pytest.LogCaptureFixture, dovecot: DovecotServer, tls_certs: TlsCerts
) -> None:
    cfg = config(
        dovecot.tls_port, UpstreamTls.IMPLICIT, ca=tls_certs.ca_path, name="mail.example.org"
    )
    with trio.fail_after(LIMIT):
        _, record = await refused(caplog, cfg)
    message = record.getMessage()
    assert "Hostname mismatch" in message, message
    assert message.endswith("give the name it is issued for with --upstream-name NAME"), message


@pytest.mark.dovecot
async def test_implicit_tls_to_a_plain_port_says_so(
    caplog: pytest.LogCaptureFixture, dovecot: DovecotServer, tls_certs: TlsCerts
) -> None:
    cfg = config(dovecot.port, UpstreamTls.IMPLICIT, ca=tls_certs.ca_path)
    with trio.fail_after(LIMIT):
        rest, record = await refused(caplog, cfg)
    assert rest.startswith(b"* BYE [UNAVAILABLE] upstream TLS failed: not TLS"), rest
    assert record.getMessage().endswith(
        "the upstream does not speak TLS on this port: use --upstream-tls starttls (port "
        "143) or --upstream-tls none"
    ), record.getMessage()


async def test_a_server_that_is_not_imap_fails_at_once(caplog: pytest.LogCaptureFixture) -> None:
    """An SSH server's greeting ends the session when it arrives, not at a timeout (the
    greeting timeout here is 60 s; the test's limit is 20 s)."""
    slow = Timeouts(upstream_greeting=60.0)
    with trio.fail_after(LIMIT):
        async with fake_server([Send(b"SSH-2.0-OpenSSH_9.2p1 Debian\r\n"), WaitEof()]) as fake:
            rest, record = await refused(caplog, config(fake.port, timeouts=slow))
    assert rest == b"* BYE [UNAVAILABLE] upstream sent no IMAP greeting\r\n"
    assert record.getMessage().endswith(
        "upstream sent no IMAP greeting: it sent 'SSH-2.0-OpenSSH_9.2p1 Debian\\\\r\\\\n' "
        "instead of '* OK ...': is it an IMAP server?"
    ), record.getMessage()


async def test_a_silent_server_is_reported_with_the_tls_hint(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Silence (here: a TLS port spoken to in plain) is reported after the greeting timeout,
    which is short by default."""
    assert Timeouts().upstream_greeting <= 5.0
    fast = Timeouts(upstream_greeting=0.5)
    with trio.fail_after(LIMIT):
        async with fake_server([Stall(30)]) as fake:
            rest, record = await refused(caplog, config(fake.port, timeouts=fast))
    assert rest == b"* BYE [UNAVAILABLE] upstream sent no greeting in 0.5 s\r\n"
    assert record.getMessage().endswith(
        "upstream sent no greeting in 0.5 s: is it an IMAP server? a port that expects TLS "
        "first (993) needs --upstream-tls implicit"
    ), record.getMessage()


async def test_an_unreachable_upstream_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with trio.fail_after(LIMIT):
        _, record = await refused(caplog, config(free_port()))
    assert "cannot connect to upstream: Connection refused" in record.getMessage()


# --------------------------------------------------------------------------- check


def check(*argv: str) -> subprocess.CompletedProcess[str]:
    return run_cli("check", *argv)


def report(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """The report's labelled lines (continuations joined to their label)."""
    assert "Traceback" not in result.stderr + result.stdout, result
    fields: dict[str, str] = {}
    label = ""
    for line in result.stdout.splitlines():
        head, value = line[:14].strip(), line[14:]
        label = head.rstrip(":") or label
        fields[label] = (fields[label] + " | " + value) if head == "" else value
    return fields


@pytest.mark.dovecot
def test_check_implicit_tls(dovecot: DovecotServer, tls_certs: TlsCerts) -> None:
    result = check(
        "--upstream", f"127.0.0.1:{dovecot.tls_port}", "--upstream-tls", "implicit",
        "--upstream-ca", str(tls_certs.ca_path), "--upstream-name", "localhost",
    )  # fmt: skip
    assert result.returncode == 0, result
    fields = report(result)
    assert fields["upstream"] == f"127.0.0.1:{dovecot.tls_port} (implicit TLS)"
    assert fields["greeting"].startswith("* OK [CAPABILITY IMAP4rev1"), fields
    assert fields["TLS"].startswith("TLSv1.3, TLS_"), fields
    assert fields["TLS"].endswith("certificate verified"), fields
    assert fields["certificate"].startswith("subject CN=localhost,"), fields
    assert "; names DNS:localhost, IP:127.0.0.1, IP:::1 | " in fields["certificate"], fields
    assert " | issuer OU=Testing CA #" in fields["certificate"], fields
    assert "(valid, expires in " in fields["certificate"], fields
    caps = fields["capabilities"].split()
    assert "IMAP4rev1" in caps and "AUTH=PLAIN" in caps, fields
    assert fields["result"] == "OK: the upstream answers as an IMAP server"


@pytest.mark.dovecot
def test_check_starttls(dovecot: DovecotServer, tls_certs: TlsCerts) -> None:
    result = check(
        "--upstream", f"127.0.0.1:{dovecot.port}", "--upstream-tls", "starttls",
        "--upstream-ca", str(tls_certs.ca_path), "--upstream-name", "localhost",
    )  # fmt: skip
    assert result.returncode == 0, result
    fields = report(result)
    assert fields["TLS"].startswith("TLSv1.3"), fields
    assert "STARTTLS" not in fields["capabilities"].split(), fields  # asked after TLS


@pytest.mark.dovecot
def test_check_reports_an_untrusted_certificate(dovecot: DovecotServer) -> None:
    result = check("--upstream", f"127.0.0.1:{dovecot.tls_port}", "--upstream-tls", "implicit")
    assert result.returncode == 1, result
    assert report(result)["result"].startswith(
        "FAILED: upstream TLS failed: certificate not verified ("
    )
    assert "--upstream-ca FILE" in result.stdout, result


def test_check_reports_a_closed_port() -> None:
    result = check("--upstream", f"127.0.0.1:{free_port()}")
    assert result.returncode == 1, result
    fields = report(result)
    assert fields["result"] == "FAILED: cannot connect to upstream: Connection refused"
    assert "greeting" not in fields


def test_check_with_a_missing_ca_is_a_configuration_error() -> None:
    result = check("--upstream", "127.0.0.1:993", "--upstream-tls", "implicit",
                   "--upstream-ca", "/nonexistent/ca.pem")  # fmt: skip
    assert result.returncode == 2, result
    assert result.stderr.startswith("imapproxy check: error: --upstream-ca /nonexistent/ca.pem")


@pytest.mark.dovecot
def test_run_check_upstream(dovecot: DovecotServer, tmp_path: Path) -> None:
    """--check-upstream reports before serving, then serves; a failing check exits 1
    without listening."""
    work = tmp_path
    port = free_port()
    args = ["--listen", f"127.0.0.1:{port}", "--upstream", f"127.0.0.1:{dovecot.port}"]
    with ProxyProcess([*args, "--check-upstream"], workdir=work,
                      wait_ports=[("127.0.0.1", port)]) as proxy:  # fmt: skip
        pass
    log = proxy.log()
    assert "result:       OK: the upstream answers as an IMAP server" in log, log
    assert log.index("greeting:") < log.index(f"listening on 127.0.0.1:{port}"), log
    bad = ["--listen", f"127.0.0.1:{port}", "--upstream", f"127.0.0.1:{free_port()}"]
    result = run_cli("run", *bad, "--check-upstream")
    assert result.returncode == 1, result
    assert "FAILED: cannot connect to upstream" in result.stderr
    assert "listening" not in result.stderr


@pytest.mark.dovecot
def test_check_insecure_still_shows_the_certificate(dovecot: DovecotServer) -> None:
    result = check("--upstream", f"127.0.0.1:{dovecot.tls_port}", "--upstream-tls", "implicit",
                   "--upstream-insecure")  # fmt: skip
    assert result.returncode == 0, result
    fields = report(result)
    assert fields["TLS"].endswith("certificate NOT verified (--upstream-insecure)"), fields
    assert fields["certificate"].startswith("subject CN=localhost,"), fields
    assert "upstream TLS verification is OFF" in result.stderr  # the usual warning
