"""Flags over the config file over the defaults (``imapproxy run --config``), and
``imapproxy check --config`` (issue 12: one config file for everything)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from imapproxy import cli_config, settings
from imapproxy.cli import build_parser
from imapproxy.config import Endpoint, Timeouts, UpstreamTls

ROOT = Path(__file__).resolve().parents[1]

FILE = """
metrics = "127.0.0.1:9187"

[tls]
cert = "c.pem"
key = "k.pem"

[[listeners]]
address = "127.0.0.1:2143"
tls = "none"

[[listeners]]
address = "127.0.0.1:2993"
tls = "implicit"
name = "tls-in"

[upstream]
address = "imap.example.net:993"
tls = "implicit"
name = "mail.example.net"

[limits]
max_sessions = 500

[timeouts]
login = 30
idle = 2000
"""


def effective(argv: list[str], text: str = FILE, tmp: Path | None = None):  # type: ignore[no-untyped-def]
    data = settings.from_mapping(__import__("tomllib").loads(text))
    parser = build_parser()
    args = parser.parse_args(["run", *argv])
    given = cli_config.given_flags(args.subparser, argv)
    return cli_config.proxy_config(args, given, data)


def test_the_file_alone() -> None:
    config, default = effective([])
    assert not default
    plain, tls = config.listeners
    assert plain.endpoint == Endpoint("127.0.0.1", 2143) and not plain.starttls
    assert tls.implicit_tls and tls.name == "tls-in"
    assert config.certificate(plain) is None and config.certificate(tls) == ("c.pem", "k.pem")
    assert config.upstream.endpoint == Endpoint("imap.example.net", 993)
    assert config.upstream.tls is UpstreamTls.IMPLICIT
    assert config.upstream.server_hostname == "mail.example.net"
    assert config.session_limits.max_sessions == 500
    assert config.timeouts.login_timeout == 30 and config.timeouts.idle_authenticated == 2000
    assert config.timeouts.answer_timeout == Timeouts().answer_timeout


def test_flags_win_even_when_they_say_the_default() -> None:
    argv = ["--listen", "127.0.0.1:3143", "--max-sessions", "10000", "--login-timeout", "9",
            "--upstream-tls", "starttls", "--cert", "x.pem", "--key", "y.pem"]  # fmt: skip
    config, _ = effective(argv)
    assert [lc.endpoint for lc in config.listeners] == [Endpoint("127.0.0.1", 3143)]
    assert config.session_limits.max_sessions == 10000  # given, though it is the default
    assert config.timeouts.login_timeout == 9 and config.timeouts.idle_authenticated == 2000
    # the file's upstream, with the flag's TLS mode; the flags' certificate
    assert config.upstream.endpoint.host == "imap.example.net"
    assert config.upstream.tls is UpstreamTls.STARTTLS
    assert (config.cert_file, config.key_file) == ("x.pem", "y.pem")
    config, _ = effective(["--upstream", "other:143"])
    assert config.upstream.endpoint == Endpoint("other", 143)
    assert config.upstream.tls is UpstreamTls.NONE  # a new upstream: the flags' defaults


def test_no_upstream_anywhere_is_a_usage_error() -> None:
    with pytest.raises(cli_config.MissingUpstream, match="--upstream"):
        effective([], text="")
    config, default = effective(["--upstream", "h:143"], text="")
    assert default and config.listeners[0].endpoint == Endpoint("127.0.0.1", 1143)


def test_given_flags() -> None:
    parser = build_parser()
    args = parser.parse_args(["run", "--upstream", "h:1"])
    assert cli_config.given_flags(args.subparser, ["--upstream", "h:1", "--busy-poll-us",
                                                   "300", "--listen", "a:1"]) == {
        "upstream", "busy_poll_us", "listen"}  # fmt: skip
    # the parser's defaults are back afterwards
    again = parser.parse_args(["run"])
    assert again.max_sessions == 10000 and again.listen == []
    assert isinstance(again, argparse.Namespace)


# --------------------------------------------------------------------------- check


def run_cli(*argv: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "imapproxy", *argv], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=30, check=False)  # fmt: skip


def test_check_prints_the_effective_configuration_which_checks_again(tmp_path: Path) -> None:
    path = tmp_path / "proxy.toml"
    path.write_text(FILE + '\n[[filters]]\nuse = "transcript"\npath = "t.jsonl"\n'
                    'password = "hunter2"\n')  # fmt: skip
    result = run_cli("check", "--config", str(path))
    # an unknown option of the transcript filter is an error naming it
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "imapproxy check: error: filters[0].password: unknown key (known: bodies, capacity, "
        "format, path)"]  # fmt: skip
    path.write_text(FILE + '\n[[filters]]\nuse = "transcript"\npath = "t.jsonl"\n')
    result = run_cli("check", "--config", str(path))
    assert result.returncode == 0, result.stderr
    # the certificate files are not there yet: warnings that say how to make them
    warnings = result.stderr.strip().splitlines()
    assert warnings == [
        "imapproxy check: warning: tls.cert: c.pem: not found yet (make a development "
        "certificate with: imapproxy certs init --dir .)",
        "imapproxy check: warning: tls.key: k.pem: not found yet (make a development "
        "certificate with: imapproxy certs init --dir .)",
    ]
    assert 'address = "imap.example.net:993"' in result.stdout
    assert "max_sessions = 500" in result.stdout and "login = 30.0" in result.stdout
    again = tmp_path / "again.toml"
    again.write_text(result.stdout)
    second = run_cli("check", "--config", str(again))
    assert second.returncode == 0 and second.stdout == result.stdout
    strict = run_cli("check", "--config", str(path), "--strict")
    assert strict.returncode == 2 and "error: tls.cert" in strict.stderr


def test_check_masks_secrets_and_names_bad_keys(tmp_path: Path) -> None:
    path = tmp_path / "proxy.toml"
    path.write_text('[upstream]\naddress = "h:143"\n[[filters]]\nuse = "tests.support.'
                    'secretive:make"\napi_token = "s3cret"\n')  # fmt: skip
    result = run_cli("check", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert "s3cret" not in result.stdout and 'api_token = "***"' in result.stdout
    path.write_text('[[listeners]]\naddress = "127.0.0.1:1143"\ntls = "tsl"\n')
    result = run_cli("check", "--config", str(path))
    assert result.returncode == 2 and result.stdout == "" and "Traceback" not in result.stderr
    assert result.stderr.strip() == ("imapproxy check: error: listeners[0].tls: expected one "
                                     "of implicit, starttls, none; got 'tsl'")  # fmt: skip


EXAMPLES = sorted((ROOT / "examples").glob("*.toml"))


def test_there_are_examples() -> None:
    names = {p.stem for p in EXAMPLES}
    assert {"debugging", "read-only", "monitoring", "public-provider"} <= names, names


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_example_passes_check(example: Path, tmp_path: Path) -> None:
    """As on a fresh clone: certificates not made yet are warnings, nothing else."""
    result = run_cli("check", "--config", str(example), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for line in result.stderr.splitlines():
        assert "warning:" in line and "not found yet" in line, line


def test_check_prints_the_proxy_protocol_keys(tmp_path: Path) -> None:
    text = FILE.replace(
        'tls = "none"\n', 'tls = "none"\nproxy_protocol = "v2"\nproxy_trusted = ["10.0.0.0/8"]\n'
    ).replace('name = "mail.example.net"\n', 'name = "mail.example.net"\nid_forwarding = true\n')
    path = tmp_path / "proxy.toml"
    path.write_text(text)
    result = run_cli("check", "--config", str(path))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert 'proxy_protocol = "v2"\nproxy_trusted = ["10.0.0.0/8"]' in out
    assert 'proxy_protocol = "off"\nid_forwarding = true' in out  # [upstream]
    again = tmp_path / "again.toml"
    again.write_text(out)
    assert run_cli("check", "--config", str(again)).stdout == out
