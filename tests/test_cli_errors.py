"""Operator mistakes at start-up, each by its message: one line that names what failed (the
address, the file, the flag) and what to do, exit status 2, no traceback unless --debug.

(Upstream trouble, which shows only once a session connects or with ``imapproxy check``, is
in tests/integration/test_upstream_errors.py.)"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from imapproxy.certs import init_dev_certs
from imapproxy.config import Endpoint, ListenerConfig, ProxyConfig, UpstreamConfig
from imapproxy.relay.server import ListenError, Proxy
from tests.support.certs import TlsCerts
from tests.test_cli import run_cli

UP = ["--upstream", "127.0.0.1:143"]


def one_error_line(result: subprocess.CompletedProcess[str], prog: str = "imapproxy run") -> str:
    """The single stderr line of a refused start (status 2, nothing else printed)."""
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{prog}: error: "), lines[0]
    return lines[0].removeprefix(f"{prog}: error: ")


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port something else listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- listening


@pytest.mark.parametrize("flag", ["--listen", "--listen-tls"])
def test_a_port_in_use_is_named_and_nothing_was_listening(
    busy_port: int, flag: str, tls_certs: TlsCerts
) -> None:
    """Two listeners, the second's port taken: the error names that address and flag, and
    the first is never logged as listening."""
    first = _free_port()
    cert = ["--cert", str(tls_certs.cert_path), "--key", str(tls_certs.key_path)]
    result = run_cli(
        "run", "--listen", f"127.0.0.1:{first}", flag, f"127.0.0.1:{busy_port}", *UP, *cert
    )
    assert one_error_line(result) == (
        f"cannot listen on 127.0.0.1:{busy_port} ({flag}): address already in use: stop "
        f"what listens there (ss -ltnp 'sport = :{busy_port}' shows it) or choose another port"
    )
    assert "listening" not in result.stderr


async def test_bind_closes_the_listeners_it_opened_when_one_fails(busy_port: int) -> None:
    first = _free_port()
    config = ProxyConfig(
        listeners=(
            ListenerConfig(Endpoint("127.0.0.1", first), implicit_tls=False),
            ListenerConfig(Endpoint("127.0.0.1", busy_port), implicit_tls=False),
        ),
        upstream=UpstreamConfig(Endpoint("127.0.0.1", 143)),
    )
    proxy = Proxy(config)
    with pytest.raises(ListenError) as info:
        await proxy.bind()
    assert str(info.value).startswith(f"cannot listen on 127.0.0.1:{busy_port} (--listen)")
    assert proxy.bound == []
    with socket.socket() as s:  # the first port is free again (closed, not leaked)
        s.bind(("127.0.0.1", first))
    await trio.lowlevel.checkpoint()


def test_an_address_not_on_this_machine() -> None:
    # 192.0.2.0/24 is TEST-NET-1: never a local address
    result = run_cli("run", "--listen", "192.0.2.1:1143", *UP)
    assert one_error_line(result).startswith(
        "cannot listen on 192.0.2.1:1143 (--listen): no such address on this machine: use "
        "127.0.0.1"
    )


# --------------------------------------------------------------------------- files


def test_missing_certificate_and_key_name_the_flag_and_path(
    tmp_path: Path, tls_certs: TlsCerts
) -> None:
    missing = tmp_path / "nope.pem"
    cert, key = str(tls_certs.cert_path), str(tls_certs.key_path)
    line = one_error_line(run_cli("run", *UP, "--cert", str(missing), "--key", key))
    assert line == (
        f"--cert {missing}: No such file or directory; give the path of the server "
        "certificate (PEM; for a development one run: imapproxy certs init)"
    )
    line = one_error_line(run_cli("run", *UP, "--cert", cert, "--key", str(missing)))
    assert line.startswith(f"--key {missing}: No such file or directory; give the path of")


def test_missing_upstream_ca_names_the_flag_and_path(tmp_path: Path) -> None:
    missing = tmp_path / "ca.pem"
    line = one_error_line(
        run_cli("run", *UP, "--upstream-tls", "implicit", "--upstream-ca", str(missing))
    )
    assert line == (
        f"--upstream-ca {missing}: No such file or directory; give the path of the CA "
        "certificate (PEM) that signed the upstream's"
    )


def test_an_upstream_ca_that_is_not_pem(tmp_path: Path) -> None:
    junk = tmp_path / "ca.pem"
    junk.write_text("hello\n")
    line = one_error_line(
        run_cli("run", *UP, "--upstream-tls", "starttls", "--upstream-ca", str(junk))
    )
    assert line.startswith(f"--upstream-ca {junk}: no PEM CA certificate in it ("), line


def test_certificate_and_key_mistakes(tmp_path: Path, tls_certs: TlsCerts) -> None:
    """Each mistake is told apart: not PEM, swapped, encrypted, not the certificate's key."""
    cert, key = str(tls_certs.cert_path), str(tls_certs.key_path)
    junk = tmp_path / "junk.pem"
    junk.write_bytes(b"\x30\x82\x01\x00")

    def error(c: str, k: str) -> str:
        return one_error_line(run_cli("run", *UP, "--cert", c, "--key", k))

    assert error(str(junk), key).startswith(
        f"--cert {junk}: not a PEM certificate (-----BEGIN CERTIFICATE-----); convert"
    )
    assert error(key, cert) == (
        f"--cert {key}: not a PEM certificate but a private key: --cert takes the "
        "certificate, --key its key"
    )
    assert error(cert, cert) == (
        f"--key {cert}: not a PEM private key but a certificate: --key takes the private "
        "key, --cert the certificate"
    )
    encrypted = tmp_path / "encrypted.pem"
    subprocess.run(
        ["openssl", "pkey", "-in", key, "-out", str(encrypted), "-aes256", "-passout", "pass:x"],
        check=True,
    )
    assert error(cert, str(encrypted)).startswith(
        f"--key {encrypted}: the key is encrypted with a passphrase; the proxy needs it "
        "unencrypted: openssl pkey"
    )
    other = init_dev_certs(tmp_path / "other")
    assert error(cert, str(other.key_path)).startswith(
        f"--cert {cert} / --key {other.key_path}: the key does not belong to the certificate"
    )


def test_debug_shows_the_traceback_too(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    result = run_cli("run", *UP, "--cert", str(missing), "--key", str(missing), "--debug")
    assert result.returncode == 2
    assert "Traceback (most recent call last)" in result.stderr
    assert result.stderr.splitlines()[-1].startswith(f"imapproxy run: error: --cert {missing}")


# --------------------------------------------------------------------------- addresses


@pytest.mark.parametrize("flag", ["--upstream", "--listen"])
@pytest.mark.parametrize(
    ("address", "example"),
    [("imaps://mail.example.net:993", "mail.example.net:993"),
     ("imap://[::1]:143/", "[::1]:143")],
)  # fmt: skip
def test_a_url_gets_the_syntax_hint_not_the_ipv6_one(flag: str, address: str, example: str) -> None:
    argv = ["run", "--listen", "127.0.0.1:1143", *UP]
    argv[argv.index(flag) + 1] = address
    line = one_error_line(run_cli(*argv))
    scheme = address.split("://")[0]
    assert line == (
        f"bad address {address!r}: write HOST:PORT without {scheme}:// (e.g. {example}); "
        "TLS is chosen by --upstream-tls implicit|starttls (or --listen-tls for a listener)"
    )
    assert "IPv6" not in line


# --------------------------------------------------------------------------- key logs


def test_key_logs_need_tls_on_their_leg(tmp_path: Path) -> None:
    log = str(tmp_path / "keys.log")
    assert one_error_line(run_cli("run", *UP, "--tls-keylog-client", log)) == (
        "--tls-keylog-client needs --cert and --key (without them no client connection "
        "uses TLS)"
    )
    assert one_error_line(run_cli("run", *UP, "--tls-keylog-upstream", log)) == (
        "--tls-keylog-upstream needs --upstream-tls implicit or starttls"
    )


def test_a_key_log_that_cannot_be_written(tmp_path: Path) -> None:
    where = tmp_path / "no" / "such" / "keys.log"
    line = one_error_line(
        run_cli("run", *UP, "--upstream-tls", "implicit", "--tls-keylog-upstream", str(where))
    )
    assert line == (
        f"--tls-keylog-upstream {where}: No such file or directory; give a file in a "
        "directory you can write"
    )
