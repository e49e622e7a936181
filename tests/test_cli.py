"""The command line (imapproxy/cli.py): flags into ProxyConfig, each error message, and
``python -m imapproxy run`` failing with a usage error (status 2), never a traceback.

(``--login-timeout`` is tested in tests/test_cli_timeouts.py.)"""

from __future__ import annotations

import logging
import os
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from imapproxy.cli import build_parser, config_from_args
from imapproxy.config import (
    Endpoint,
    ListenerConfig,
    ProxyConfig,
    SessionLimits,
    Timeouts,
    UpstreamConfig,
    UpstreamTls,
)
from imapproxy.relay.server import Proxy
from tests.support.certs import TlsCerts
from tests.support.dovecot import DovecotServer
from tests.support.fakeserver import ImapClient, status_of
from tests.support.proxy import ROOT, ProxyProcess, free_port, running_proxy

UP = ["--upstream", "127.0.0.1:143"]
LISTEN = ["--listen", "127.0.0.1:1143"]


def parse(*argv: str) -> ProxyConfig:
    return config_from_args(build_parser().parse_args(["run", *argv]))


# --------------------------------------------------------------------------- flags


def test_minimal_flags_give_the_defaults() -> None:
    config = parse(*LISTEN, *UP)
    assert config == ProxyConfig(
        listeners=(ListenerConfig(Endpoint("127.0.0.1", 1143), implicit_tls=False),),
        upstream=UpstreamConfig(Endpoint("127.0.0.1", 143), tls=UpstreamTls.NONE),
    )
    assert config.timeouts == Timeouts()
    assert config.session_limits == SessionLimits()


def test_every_flag_reaches_the_config(tls_certs: TlsCerts) -> None:
    cert, key, ca = str(tls_certs.cert_path), str(tls_certs.key_path), str(tls_certs.ca_path)
    config = parse(
        "--listen", "127.0.0.1:1143",
        "--listen", "[::1]:2143",
        "--listen-tls", "0.0.0.0:1993",
        "--cert", cert,
        "--key", key,
        "--upstream", "imap.example.org:993",
        "--upstream-tls", "implicit",
        "--upstream-ca", ca,
        "--upstream-name", "mail.example.org",
        "--require-tls-for-login",
        "--max-sessions", "7",
        "--max-sessions-per-address", "3",
        "--busy-poll-us", "50",
        "--idle-timeout", "2000",
        "--answer-timeout", "99",
        "--shutdown-drain", "4.5",
    )  # fmt: skip
    assert config.listeners == (
        ListenerConfig(Endpoint("127.0.0.1", 1143), implicit_tls=False),
        ListenerConfig(Endpoint("::1", 2143), implicit_tls=False),
        ListenerConfig(Endpoint("0.0.0.0", 1993), implicit_tls=True),
    )
    assert config.upstream == UpstreamConfig(
        Endpoint("imap.example.org", 993),
        tls=UpstreamTls.IMPLICIT,
        ca_file=ca,
        insecure=False,
        server_hostname="mail.example.org",
    )
    assert (config.cert_file, config.key_file) == (cert, key)
    assert config.require_tls_for_login is True
    assert config.session_limits.max_sessions == 7
    assert config.session_limits.max_sessions_per_address == 3
    assert config.session_limits.busy_poll == pytest.approx(50e-6)
    assert config.timeouts.idle_authenticated == 2000
    assert config.timeouts.answer_timeout == 99
    assert config.timeouts.shutdown_drain == 4.5


@pytest.mark.parametrize("mode", ["implicit", "starttls", "none"])
def test_upstream_tls_modes(mode: str) -> None:
    assert parse(*LISTEN, *UP, "--upstream-tls", mode).upstream.tls is UpstreamTls(mode)


def test_upstream_insecure_flag() -> None:
    assert parse(*LISTEN, *UP, "--upstream-tls", "implicit").upstream.insecure is False
    config = parse(*LISTEN, *UP, "--upstream-tls", "implicit", "--upstream-insecure")
    assert config.upstream.insecure is True


def test_upstream_insecure_turns_verification_off_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="imapproxy")
    checked = Proxy(parse(*LISTEN, *UP, "--upstream-tls", "implicit"))
    assert checked.upstream_ssl is not None
    assert checked.upstream_ssl.verify_mode is ssl.CERT_REQUIRED
    assert checked.upstream_ssl.check_hostname
    assert "verification is OFF" not in caplog.text
    insecure = Proxy(parse(*LISTEN, *UP, "--upstream-tls", "implicit", "--upstream-insecure"))
    assert insecure.upstream_ssl is not None
    assert insecure.upstream_ssl.verify_mode is ssl.CERT_NONE
    assert not insecure.upstream_ssl.check_hostname
    assert "upstream TLS verification is OFF (--upstream-insecure)" in caplog.text


@pytest.mark.dovecot
@pytest.mark.parametrize("insecure", [False, True], ids=["verified", "insecure"])
async def test_upstream_insecure_against_an_untrusted_certificate(
    dovecot: DovecotServer, insecure: bool
) -> None:
    """Dovecot's certificate comes from the tests' own CA, which the system does not trust:
    refused unless --upstream-insecure."""
    flags = ["--listen", "127.0.0.1:0", "--upstream", f"127.0.0.1:{dovecot.tls_port}"]
    flags += ["--upstream-tls", "implicit"] + (["--upstream-insecure"] if insecure else [])
    with trio.fail_after(10):
        async with running_proxy(parse(*flags)) as (_, addrs):
            client = await ImapClient.connect(*addrs[0])
            greeting = await client.read_response()
            if insecure:
                assert greeting.startswith(b"* OK "), greeting
                assert status_of((await client.command(b"n", b"NOOP"))[-1]) == b"OK"
            else:
                assert greeting.startswith(b"* BYE [UNAVAILABLE] upstream TLS failed"), greeting
                assert b"certificate" in greeting, greeting
            await client.aclose()


@pytest.mark.parametrize(
    ("flag", "expected"),
    [("300", 300e-6), ("0", 0.0), ("-5", 0.0), ("0.5", 0.5e-6)],
    ids=["default_value", "off", "negative_clamps_to_off", "fraction"],
)
def test_busy_poll_us(flag: str, expected: float) -> None:
    config = parse(*LISTEN, *UP, "--busy-poll-us", flag)
    assert config.session_limits.busy_poll == pytest.approx(expected, abs=1e-12)
    assert config.session_limits.busy_poll >= 0


def test_busy_poll_default_is_the_session_limits_default() -> None:
    assert parse(*LISTEN, *UP).session_limits.busy_poll == pytest.approx(SessionLimits().busy_poll)


@pytest.mark.parametrize("level", ["DEBUG", "INFO", "WARNING", "ERROR"])
def test_log_level_choices(level: str) -> None:
    assert build_parser().parse_args(["run", *LISTEN, *UP, "--log-level", level]).log_level == (
        level
    )
    assert build_parser().parse_args(["run", *LISTEN, *UP]).log_level == "INFO"


def test_idle_timeout_below_30_minutes_warns(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="imapproxy")
    config = parse(*LISTEN, *UP, "--idle-timeout", "60")
    assert config.timeouts.idle_authenticated == 60
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warnings] == [
        "--idle-timeout 60 is below the 30 minutes RFC 9051 §5.4 requires"
    ]


@pytest.mark.parametrize("seconds", ["1800", "3600"])
def test_idle_timeout_of_30_minutes_or_more_does_not_warn(
    caplog: pytest.LogCaptureFixture, seconds: str
) -> None:
    caplog.set_level(logging.WARNING, logger="imapproxy")
    assert parse(*LISTEN, *UP, "--idle-timeout", seconds).timeouts.idle_authenticated == float(
        seconds
    )
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("nonsense", "bad address 'nonsense': expected HOST:PORT"),
        (":143", "bad address ':143': expected HOST:PORT"),
        ("[::1]143", "bad address '[::1]143': expected [IPv6]:PORT"),
        ("[::1", "bad address '[::1': expected [IPv6]:PORT"),
        ("::1:143", "bad address '::1:143': write IPv6 addresses as [ADDR]:PORT"),
        ("fe80::1:143", "bad address 'fe80::1:143': write IPv6 addresses as [ADDR]:PORT"),
        ("127.0.0.1:imap", "bad port in '127.0.0.1:imap'"),
        ("127.0.0.1:", "bad port in '127.0.0.1:'"),
        ("127.0.0.1:65536", "port out of range in '127.0.0.1:65536'"),
        ("127.0.0.1:-1", "port out of range in '127.0.0.1:-1'"),
        ("[::1]:70000", "port out of range in '[::1]:70000'"),
    ],
)
@pytest.mark.parametrize("flag", ["--listen", "--upstream"])
def test_bad_addresses(flag: str, address: str, message: str) -> None:
    argv = [*LISTEN, *UP]
    argv[argv.index(flag) + 1] = address
    with pytest.raises(ValueError) as info:
        parse(*argv)
    assert str(info.value) == message


def test_port_limits_are_accepted() -> None:
    config = parse("--listen", "127.0.0.1:0", "--upstream", "[::1]:65535")
    assert config.listeners[0].endpoint == Endpoint("127.0.0.1", 0)
    assert config.upstream.endpoint == Endpoint("::1", 65535)


def _error(*argv: str) -> str:
    with pytest.raises(ValueError) as info:
        parse(*argv)
    return str(info.value)


def test_listen_tls_needs_cert_and_key(tls_certs: TlsCerts) -> None:
    tls = ["--listen-tls", "127.0.0.1:1993", *UP]
    message = "--listen-tls needs --cert and --key"
    assert _error(*tls) == message
    assert _error(*tls, "--cert", str(tls_certs.cert_path)) == message
    assert _error(*tls, "--key", str(tls_certs.key_path)) == message


def test_cert_and_key_go_together(tls_certs: TlsCerts) -> None:
    assert _error(*LISTEN, *UP, "--cert", str(tls_certs.cert_path)) == (
        "--cert and --key go together"
    )
    assert _error(*LISTEN, *UP, "--key", str(tls_certs.key_path)) == (
        "--cert and --key go together"
    )


def test_require_tls_for_login_needs_a_certificate(tls_certs: TlsCerts) -> None:
    assert _error(*LISTEN, *UP, "--require-tls-for-login") == (
        "requiring TLS for login needs --cert and --key (for STARTTLS)"
    )
    cert = ["--cert", str(tls_certs.cert_path), "--key", str(tls_certs.key_path)]
    assert parse(*LISTEN, *UP, *cert, "--require-tls-for-login").require_tls_for_login


def test_no_listener_gives_a_plain_loopback_listener(tls_certs: TlsCerts) -> None:
    assert parse(*UP).listeners == (
        ListenerConfig(Endpoint("127.0.0.1", 1143), implicit_tls=False),
    )
    cert = ["--cert", str(tls_certs.cert_path), "--key", str(tls_certs.key_path)]
    assert parse("--listen-tls", "127.0.0.1:1993", *UP, *cert).listeners == (
        ListenerConfig(Endpoint("127.0.0.1", 1993), implicit_tls=True),
    )


@pytest.mark.parametrize(
    "argv",
    [
        [*LISTEN],  # no --upstream
        [*LISTEN, *UP, "--upstream-tls", "maybe"],
        [*LISTEN, *UP, "--log-level", "TRACE"],
        [*LISTEN, *UP, "--max-sessions", "many"],
        [*LISTEN, *UP, "--busy-poll-us", "fast"],
        [*LISTEN, *UP, "--idle-timeout"],
        [*LISTEN, *UP, "--no-such-flag"],
    ],
    ids=["no_upstream", "upstream_tls", "log_level", "max_sessions", "busy_poll", "no_value",
         "unknown"],
)  # fmt: skip
def test_parser_refuses(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["run", *argv])
    assert info.value.code == 2
    assert "error:" in capsys.readouterr().err


# --------------------------------------------------------------------------- the process


def run_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "imapproxy", *argv],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["run", "--listen", "nonsense", *UP], "bad address 'nonsense': expected HOST:PORT"),
        (["run", "--listen", "::1:143", *UP], "write IPv6 addresses as [ADDR]:PORT"),
        (["run", "--listen", "127.0.0.1:99999", *UP], "port out of range"),
        (["run", "--listen-tls", "127.0.0.1:1993", *UP], "--listen-tls needs --cert and --key"),
        (["run", *LISTEN, *UP, "--require-tls-for-login"], "requiring TLS for login needs"),
        (["run", *LISTEN], "the following arguments are required: --upstream"),
        (["run", *LISTEN, *UP, "--log-level", "TRACE"], "argument --log-level: invalid choice"),
        ([], "the following arguments are required: COMMAND"),
    ],
    ids=["bad_address", "ipv6", "port", "tls_no_cert", "require_tls",
         "no_upstream", "log_level", "no_command"],
)  # fmt: skip
def test_bad_flags_exit_2_with_one_error_line(argv: list[str], error: str) -> None:
    result = run_cli(*argv)
    assert result.returncode == 2, result
    assert result.stdout == ""
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    # argparse's own errors come with the usage; a bad value is one line that names it
    if "required" in error or "invalid choice" in error:
        assert lines[0].startswith("usage: imapproxy"), result.stderr
    else:
        assert len(lines) == 1, result.stderr
    errors = [ln for ln in lines if "error:" in ln]
    assert errors == [lines[-1]], result.stderr  # one error line, the last
    assert lines[-1].startswith(("imapproxy: error: ", "imapproxy run: error: "))
    assert error in lines[-1], result.stderr


def test_a_missing_certificate_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    result = run_cli("run", *LISTEN, *UP, "--cert", str(missing), "--key", str(missing))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert str(missing) in result.stderr.splitlines()[-1], result.stderr


@pytest.mark.parametrize(
    ("level", "info_logged"), [("INFO", True), ("WARNING", False)], ids=["info", "warning"]
)
def test_log_level_sets_what_the_process_logs(
    tmp_path: Path, level: str, info_logged: bool
) -> None:
    port = free_port()
    args = ["--listen", f"127.0.0.1:{port}", "--upstream", f"127.0.0.1:{free_port()}"]
    args += ["--log-level", level, "--upstream-insecure", "--upstream-tls", "implicit"]
    with ProxyProcess(args, workdir=tmp_path, wait_ports=[("127.0.0.1", port)]) as proxy:
        pass
    log = proxy.log()
    assert "Traceback" not in log, log
    # a WARNING is logged either way (--upstream-insecure), INFO lines only at INFO
    assert " WARNING imapproxy.tls: upstream TLS verification is OFF" in log, log
    assert (f"listening on 127.0.0.1:{port}" in log) is info_logged, log
    assert (" INFO " in log) is info_logged, log


def test_a_key_that_is_not_pem_says_so(tmp_path: Path, tls_certs: TlsCerts) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a key\n")
    result = run_cli(
        "run", *LISTEN, *UP, "--cert", str(tls_certs.cert_path), "--key", str(junk)
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.splitlines() == [
        f"imapproxy run: error: --key {junk}: not a PEM private key (-----BEGIN PRIVATE "
        "KEY-----); give the key the certificate was made for"
    ]
