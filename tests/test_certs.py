"""``imapproxy certs init`` / ``certs show`` (imapproxy/certs.py, imapproxy/cli_certs.py):
the files it makes serve the proxy's ``--listen-tls`` and verify in a client that trusts only
the new CA (host name checked); keys are 0600; existing files are not replaced without
``--force``; ``show`` prints each field and whether the certificate has expired."""

from __future__ import annotations

import datetime
import os
import socket
import ssl
import stat
import subprocess
from pathlib import Path

import pytest
import trio
from cryptography import x509

from imapproxy.certs import DEFAULT_NAMES, SERVER_DAYS, init_dev_certs
from imapproxy.cli import build_parser, config_from_args
from tests.support.certs import client_ssl_context, make_tls_certs
from tests.support.fakeserver import Send, WaitEof, fake_server
from tests.support.proxy import ROOT, ProxyProcess, free_port, running_proxy
from tests.test_cli import run_cli


def init(directory: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_cli("certs", "init", "--dir", str(directory), *extra)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_makes_a_ca_and_a_server_certificate(tmp_path: Path) -> None:
    out = tmp_path / "certs"
    result = init(out)
    assert result.returncode == 0, result
    assert sorted(p.name for p in out.iterdir()) == ["ca.pem", "cert.pem", "key.pem"]
    assert mode(out / "key.pem") == 0o600
    assert not mode(out / "cert.pem") & 0o022 and not mode(out / "ca.pem") & 0o022
    # what it made, and the flags to use it
    assert f"{out}/ca.pem" in result.stdout
    assert f"{out}/key.pem " in result.stdout and "(mode 0600)" in result.stdout
    assert f"--cert {out}/cert.pem --key {out}/key.pem" in result.stdout
    assert f"-CAfile {out}/ca.pem" in result.stdout
    leaf = x509.load_pem_x509_certificate((out / "cert.pem").read_bytes())
    ca = x509.load_pem_x509_certificate((out / "ca.pem").read_bytes())
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(n.value) for n in san] == list(DEFAULT_NAMES)
    assert leaf.issuer == ca.subject
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert lifetime <= datetime.timedelta(days=SERVER_DAYS)  # what Apple's clients accept


def test_the_key_is_private_even_under_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        made = init_dev_certs(tmp_path)
    finally:
        os.umask(old)
    assert mode(made.key_path) == 0o600


def test_init_refuses_to_replace_unless_forced(tmp_path: Path) -> None:
    assert init(tmp_path).returncode == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    refused = init(tmp_path)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.splitlines() == [
        f"imapproxy certs init: error: {tmp_path}/key.pem exists: not replaced; add --force "
        "to make a new CA and certificate (clients that trust the old ca.pem must then "
        "trust the new one)"
    ]
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    (tmp_path / "key.pem").chmod(0o644)
    forced = init(tmp_path, "--force")
    assert forced.returncode == 0, forced
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert after.keys() == before.keys()
    assert all(after[name] != before[name] for name in before)
    assert mode(tmp_path / "key.pem") == 0o600


def test_names_given(tmp_path: Path) -> None:
    result = init(tmp_path, "--name", "mail.example.test", "--name", "192.0.2.7")
    assert result.returncode == 0, result
    leaf = x509.load_pem_x509_certificate((tmp_path / "cert.pem").read_bytes())
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(n.value) for n in san] == ["mail.example.test", "192.0.2.7"]
    assert leaf.subject.rfc4514_string() == "CN=mail.example.test"


@pytest.mark.parametrize("name", ["two words", "bad/name", "a..b", ""])
def test_a_bad_name_is_refused(tmp_path: Path, name: str) -> None:
    result = init(tmp_path, "--name", name)
    assert result.returncode == 2, result
    assert result.stderr.splitlines() == [
        f"imapproxy certs init: error: --name {name!r}: not a host name or an IP address"
    ]
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- served


@pytest.mark.parametrize("hostname", ["localhost", "127.0.0.1"])
async def test_the_proxy_serves_it_and_a_client_trusting_only_the_ca_verifies_it(
    tmp_path: Path, hostname: str
) -> None:
    out = tmp_path / "certs"
    assert (await trio.to_thread.run_sync(init, out)).returncode == 0
    other = make_tls_certs(tmp_path / "other")  # another CA: must not be accepted
    with trio.fail_after(20):
        async with fake_server(lambda _: [Send(b"* OK fake ready\r\n"), WaitEof()]) as fake:
            args = build_parser().parse_args([
                "run", "--listen-tls", "127.0.0.1:0", "--upstream", f"127.0.0.1:{fake.port}",
                "--cert", str(out / "cert.pem"), "--key", str(out / "key.pem"),
            ])  # fmt: skip
            async with running_proxy(config_from_args(args)) as (_, addrs):
                ctx = client_ssl_context(out / "ca.pem")  # only the new CA; names checked
                assert ctx.check_hostname and ctx.verify_mode is ssl.CERT_REQUIRED
                stream = trio.SSLStream(
                    await trio.open_tcp_stream(*addrs[0]), ctx, server_hostname=hostname
                )  # the name is sent (SNI) and checked against the certificate
                assert await stream.receive_some(100) == b"* OK fake ready\r\n"
                await stream.aclose()
                unnamed = trio.SSLStream(
                    await trio.open_tcp_stream(*addrs[0]), ctx, server_hostname="mail.example.test"
                )
                with pytest.raises(trio.BrokenResourceError) as info:
                    await unnamed.do_handshake()
                assert "Hostname mismatch" in str(info.value.__cause__)
                await trio.aclose_forcefully(unnamed)
                wrong = await trio.open_ssl_over_tcp_stream(
                    *addrs[0], ssl_context=other.client_context()
                )
                with pytest.raises(trio.BrokenResourceError) as info:
                    await wrong.do_handshake()
                assert isinstance(info.value.__cause__, ssl.SSLCertVerificationError)
                await trio.aclose_forcefully(wrong)


def test_the_proxy_process_uses_it(tmp_path: Path) -> None:
    """The same through ``python -m imapproxy`` and Python's blocking ssl client, with the
    host name checked ("localhost")."""
    out = tmp_path / "certs"
    assert init(out).returncode == 0
    port = free_port()

    async def serve_one() -> bytes:
        async with fake_server([Send(b"* OK fake ready\r\n"), WaitEof()]) as fake:
            args = ["--listen-tls", f"127.0.0.1:{port}", "--upstream", f"127.0.0.1:{fake.port}",
                    "--cert", str(out / "cert.pem"), "--key", str(out / "key.pem")]  # fmt: skip
            with ProxyProcess(args, workdir=tmp_path, wait_ports=[("127.0.0.1", port)]):

                def handshake() -> bytes:
                    # with cafile, the system's CAs are not loaded: only the new CA
                    ctx = ssl.create_default_context(cafile=str(out / "ca.pem"))
                    with (
                        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
                        ctx.wrap_socket(raw, server_hostname="localhost") as tls,
                    ):
                        assert tls.getpeercert()["subject"] == ((("commonName", "localhost"),),)
                        return tls.recv(100)

                return await trio.to_thread.run_sync(handshake)

    assert trio.run(serve_one) == b"* OK fake ready\r\n"


# --------------------------------------------------------------------------- show


def show(path: Path) -> subprocess.CompletedProcess[str]:
    return run_cli("certs", "show", str(path))


def fields(text: str) -> dict[str, str]:
    return {
        key.strip(): value.strip()
        for key, _, value in (ln.partition(": ") for ln in text.splitlines()[1:])
    }


def test_show_prints_every_field(tmp_path: Path) -> None:
    made = init_dev_certs(tmp_path, ["mail.example.test", "::1"])
    result = show(made.cert_path)
    assert result.returncode == 0, result
    assert result.stdout.splitlines()[0] == f"{made.cert_path}:"
    got = fields(result.stdout)
    leaf = x509.load_pem_x509_certificate(made.cert_path.read_bytes())
    assert got["subject"] == "CN=mail.example.test"
    assert got["names"] == "DNS:mail.example.test, IP:::1"
    assert got["issuer"].startswith("CN=imapproxy development CA ")
    assert got["not before"] == f"{leaf.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC"
    assert got["not after"] == f"{leaf.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC"
    assert got["status"].startswith("valid, expires in 82"), got  # 825 days, less a day
    assert got["CA"] == "no"
    assert len(got["SHA-256"].split(":")) == 32
    ca = fields(show(made.ca_path).stdout)
    assert ca["CA"] == "yes" and ca["issuer"].endswith("(self-signed)")


def test_show_says_expired_and_exits_1(tmp_path: Path) -> None:
    long_ago = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    made = init_dev_certs(tmp_path, now=long_ago)
    result = show(made.cert_path)
    assert result.returncode == 1, result
    status = fields(result.stdout)["status"]
    assert status.startswith("EXPIRED ") and status.endswith(" days ago"), status


def test_show_refuses_what_is_not_a_certificate(tmp_path: Path) -> None:
    made = init_dev_certs(tmp_path)
    result = show(made.key_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"imapproxy certs show: error: {made.key_path}: a private key, not a certificate; "
        "show the certificate"
    ]
    missing = tmp_path / "nope.pem"
    assert show(missing).stderr.splitlines() == [
        f"imapproxy certs show: error: {missing}: No such file or directory"
    ]


# --------------------------------------------------------------------------- the repo


def test_the_repos_certs_directory_holds_no_keys() -> None:
    tracked = subprocess.run(
        ["git", "ls-files", "certs"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert sorted(tracked) == ["certs/.gitignore", "certs/README.md"]
    for made in ("certs/key.pem", "certs/cert.pem", "certs/ca.pem", "certs/sub/x.pem"):
        ignored = subprocess.run(["git", "check-ignore", "-q", made], cwd=ROOT, check=False)
        assert ignored.returncode == 0, f"{made} is not ignored by git"
    assert "certs init" in (ROOT / "certs" / "README.md").read_text()
