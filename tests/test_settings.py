"""The whole configuration file (issue 12): every key read into its setting, every mistake
one ConfigError naming the key path."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from imapproxy import settings
from imapproxy.config import Endpoint, SessionLimits, Timeouts, UpstreamTls
from imapproxy.filters import ConfigError

FULL = """
metrics = "127.0.0.1:9143"
control_socket = "/run/imapproxy.sock"

[logging]
level = "debug"

[tls]
cert = "certs/server.pem"
key = "certs/server.key"
require_tls_for_login = true

[[listeners]]
address = "127.0.0.1:1143"

[[listeners]]
address = "[::1]:1993"
tls = "implicit"
name = "internal-tls"
cert = "other.pem"
key = "other.key"

[[listeners]]
address = "127.0.0.2:143"
tls = "none"

[upstream]
address = "imap.example.net:993"
tls = "implicit"
ca = "ca.pem"
name = "mail.example.net"

[limits]
max_sessions = 500
max_sessions_per_address = 5
busy_poll_us = 0
max_line_bytes = 131072

[timeouts]
login = 30
idle = 1900.5
filter_hook = 2

[[filters]]
use = "transcript"
path = "t.jsonl"
"""


def load(text: str) -> settings.FileSettings:
    return settings.from_mapping(tomllib.loads(text), path="x.toml")


def test_every_key_is_read() -> None:
    s = load(FULL)
    assert s.metrics == Endpoint("127.0.0.1", 9143)
    assert s.control_socket == "/run/imapproxy.sock" and s.log_level == "DEBUG"
    assert (s.cert_file, s.key_file, s.require_tls_for_login) == (
        "certs/server.pem", "certs/server.key", True)  # fmt: skip
    plain, tls, bare = s.listeners
    assert plain.endpoint == Endpoint("127.0.0.1", 1143) and not plain.implicit_tls
    assert plain.starttls and plain.name == "imap@127.0.0.1:1143"
    assert tls.implicit_tls and tls.name == "internal-tls" and tls.cert_file == "other.pem"
    assert tls.endpoint == Endpoint("::1", 1993)
    assert not bare.implicit_tls and not bare.starttls
    up = s.upstream
    assert up is not None and up.tls is UpstreamTls.IMPLICIT and up.ca_file == "ca.pem"
    assert up.server_hostname == "mail.example.net" and not up.insecure
    assert settings.session_limits_with(SessionLimits(), s.session_limits) == SessionLimits(
        max_sessions=500, max_sessions_per_address=5, busy_poll=0.0)
    assert s.limits is not None and s.limits.max_line_bytes == 131072
    t = settings.timeouts_with(Timeouts(), s.timeouts)
    assert (t.login_timeout, t.idle_authenticated, t.filter_hook) == (30.0, 1900.5, 2.0)
    assert t.answer_timeout == Timeouts().answer_timeout
    assert s.filters == ({"use": "transcript", "path": "t.jsonl"},)
    assert [k for k, _ in s.files()] == ["tls.cert", "tls.key", "listeners[1].cert",
                                         "listeners[1].key", "upstream.ca"]  # fmt: skip


def test_an_empty_file_says_nothing() -> None:
    s = load("")
    assert s.listeners == () and s.upstream is None and s.limits is None
    assert s.timeouts == {} and s.filters == () and s.metrics is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('metric = "x"', "metric: unknown key (known: control_socket, filters, limits,"),
        ("metrics = 9143", "metrics: expected a string \"HOST:PORT\"; got 9143"),
        ('metrics = "http://127.0.0.1:9143"', "metrics: expected HOST:PORT, not a URL"),
        ('metrics = "localhost"', "metrics: bad address 'localhost': expected HOST:PORT"),
        ('[logging]\nlevel = "loud"', "logging.level: expected one of DEBUG, INFO, WARNING, "
                                       "ERROR; got 'LOUD'"),
        ('[[listeners]]\naddress = "127.0.0.1:1143"\ntls = "tsl"',
         "listeners[0].tls: expected one of implicit, starttls, none; got 'tsl'"),
        ('[[listeners]]\ntls = "none"', "listeners[0].address: missing"),
        ('[[listeners]]\naddress = "127.0.0.1:1143"\nport = 1',
         "listeners[0].port: unknown key (known: address, cert, key, name, proxy_protocol, "
         "proxy_trusted, tls)"),
        ('[[listeners]]\naddress = "127.0.0.1:99999"', "listeners[0].address: port out of range"),
        ('[[listeners]]\naddress = "::1:143"',
         "listeners[0].address: bad address '::1:143': write IPv6 addresses as [ADDR]:PORT"),
        ('[[listeners]]\naddress = "127.0.0.1:993"\ntls = "implicit"',
         'listeners[0]: tls = "implicit" needs a certificate'),
        ('[[listeners]]\naddress = "127.0.0.1:993"\ncert = "c.pem"',
         "listeners[0]: cert and key go together"),
        ("listeners = [1]", "listeners[0]: expected a table ([[listeners]])"),
        ('[upstream]\nhost = "x"', "upstream.host: unknown key"),
        ('[upstream]\naddress = "imaps://imap.example.net:993"',
         "upstream.address: expected HOST:PORT, not a URL; got 'imaps://imap.example.net:993'"),
        ('[upstream]\naddress = "x:1"\ntls = "yes"',
         "upstream.tls: expected one of implicit, starttls, none; got 'yes'"),
        ('[upstream]\naddress = "x:1"\ninsecure = 1', "upstream.insecure: expected true or false"),
        ("[limits]\nmax_sessions = true", "limits.max_sessions: expected an integer; got True"),
        ('[limits]\nmax_sessions = "10"', "limits.max_sessions: expected an integer; got '10'"),
        ("[limits]\nmax_sessions = -1", "limits.max_sessions: expected a number >= 0; got -1"),
        ("[limits]\nmax_line_bytes = 10", "limits.max_line_bytes: must be at least 64"),
        ("[limits]\nmax_lines = 10", "limits.max_lines: unknown key"),
        ("[timeouts]\nlogin = 0", "timeouts.login: expected seconds > 0; got 0"),
        ("[timeouts]\nlogin = nan", "timeouts.login: expected seconds > 0; got nan"),
        ('[timeouts]\nlogin = "60s"', "timeouts.login: expected a number; got '60s'"),
        ("[timeouts]\nidle_timeout = 60", "timeouts.idle_timeout: unknown key (known: answer,"),
        ("filters = [1]", "filters[0]: expected a table ([[filters]])"),
        ("tls = 1", "tls: expected a table; got 1"),
    ],
)
def test_every_mistake_names_its_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(text)
    assert str(caught.value).startswith(message), str(caught.value)
    assert "\n" not in str(caught.value)


def test_reading_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config file .*nope.toml: not found"):
        settings.load(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[upstream\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        settings.load(bad)
    good = tmp_path / "good.toml"
    good.write_text(FULL)
    assert settings.load(good).path == str(good)


PP = '[[listeners]]\naddress = "127.0.0.1:1143"\n'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (PP + 'proxy_protocol = "v3"',
         "listeners[0].proxy_protocol: expected one of v1, v2, off; got 'v3'"),
        (PP + 'proxy_protocol = "v2"',
         'listeners[0].proxy_trusted: proxy_protocol = "v2" needs the networks allowed to '
         "send the header"),
        (PP + 'proxy_protocol = "v1"\nproxy_trusted = []',
         'listeners[0].proxy_trusted: proxy_protocol = "v1" needs the networks'),
        (PP + 'proxy_protocol = "v2"\nproxy_trusted = ["10.0.0.0/8", "10.0.0.300/32"]',
         "listeners[0].proxy_trusted[1]: expected a network such as \"10.0.0.0/8\""),
        (PP + 'proxy_protocol = "v2"\nproxy_trusted = [10]',
         "listeners[0].proxy_trusted[0]: expected a network such as \"10.0.0.0/8\"; got 10"),
        (PP + 'proxy_protocol = "v2"\nproxy_trusted = "10.0.0.0/8"',
         "listeners[0].proxy_trusted: expected an array of networks such as [\"10.0.0.0/8\"]; "
         "got '10.0.0.0/8'"),
        (PP + 'proxy_trusted = ["10.0.0.0/8"]',
         'listeners[0].proxy_trusted: only meaningful with proxy_protocol = "v1" or "v2"'),
        ('[upstream]\naddress = "x:1"\nproxy_protocol = "v1"',
         "upstream.proxy_protocol: expected one of v2, off; got 'v1'"),
        ('[upstream]\naddress = "x:1"\nid_forwarding = "yes"',
         "upstream.id_forwarding: expected true or false; got 'yes'"),
    ],
)  # fmt: skip
def test_proxy_protocol_mistakes_name_their_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(text)
    assert str(caught.value).startswith(message), str(caught.value)


def test_proxy_protocol_keys_are_read() -> None:
    import ipaddress

    got = load(
        PP + 'proxy_protocol = "v1"\nproxy_trusted = ["10.1.2.3/8", "fd00::/8"]\n'
        '[upstream]\naddress = "x:1"\nproxy_protocol = "v2"\nid_forwarding = true'
    )
    lc = got.listeners[0]
    assert lc.proxy_protocol == "v1"
    assert lc.proxy_trusted == (
        ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8")
    )
    assert got.upstream is not None
    assert got.upstream.proxy_protocol == "v2" and got.upstream.id_forwarding
    default = load(PP + '[upstream]\naddress = "x:1"')
    assert default.listeners[0].proxy_protocol == "off"
    assert default.upstream is not None and default.upstream.proxy_protocol == "off"
    assert not default.upstream.id_forwarding
