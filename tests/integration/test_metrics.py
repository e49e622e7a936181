"""Metrics end to end: ``imapproxy run --metrics`` in front of the real Dovecot, real clients
(imaplib, imapclient, raw sockets), and the real ``/metrics`` endpoint scraped over HTTP.

Counters are compared before and after what a test does (the proxy of this module is
shared by its tests, which run one after the other), so each assertion says by exactly
how much a metric moved.  Sessions end asynchronously in the proxy: a test waits (polls the
endpoint, generous bounds) for the end it caused before comparing.
"""

from __future__ import annotations

import imaplib
import platform
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from imapclient import IMAPClient
from prometheus_client.parser import text_string_to_metric_families

from imapproxy.metrics import labels as L
from tests.integration.conftest import HOST, TIMEOUT, TLS_NAME, RawClient
from tests.support.certs import TlsCerts
from tests.support.dovecot import DovecotServer
from tests.support.proxy import ProxyProcess, free_port

NewUser = Callable[[], tuple[str, str]]
Key = tuple[str, frozenset[tuple[str, str]]]


# ----------------------------------------------------------------------------- scraping


@dataclass
class Scrape:
    text: str
    samples: dict[Key, float]

    def get(self, name: str, **labels: str) -> float:
        key = (name, frozenset(labels.items()))
        assert key in self.samples, f"no series {name}{labels} in the scrape"
        return self.samples[key]

    def series(self, name: str) -> dict[frozenset[tuple[str, str]], float]:
        return {lab: v for (n, lab), v in self.samples.items() if n == name}


def scrape(port: int) -> Scrape:
    with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=TIMEOUT) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    samples: dict[Key, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return Scrape(text, samples)


def wait_for(port: int, check: Callable[[Scrape], bool], what: str, timeout: float = 15) -> Scrape:
    deadline = time.monotonic() + timeout
    while True:
        s = scrape(port)
        if check(s):
            return s
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def delta(before: Scrape, after: Scrape, name: str, **labels: str) -> float:
    return after.get(name, **labels) - before.get(name, **labels)


def promtool_check(text: str) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found: apt-get install prometheus", pytrace=False)
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"promtool check metrics:\n{result.stdout}{result.stderr}"


# ----------------------------------------------------------------------------- the proxy


@dataclass
class MetricsProxy:
    process: ProxyProcess
    plain_port: int
    tls_port: int
    metrics_port: int
    upstream: str

    @property
    def plain(self) -> str:
        return f"imap@{HOST}:{self.plain_port}"

    @property
    def tls(self) -> str:
        return f"imaps@{HOST}:{self.tls_port}"

    def scrape(self) -> Scrape:
        return scrape(self.metrics_port)


def run_proxy(
    workdir: Path, certs: TlsCerts, upstream_port: int, *, probe: bool = True
) -> MetricsProxy:
    """Start a proxy with metrics.  ``probe``: wait for its listeners by connecting to them
    (those connections become sessions; they are waited for to end); else wait for the
    metrics port and the log lines saying the listeners are up, connecting to nothing."""
    workdir.mkdir(parents=True, exist_ok=True)
    plain, tls, metrics = free_port(), free_port(), free_port()
    config = workdir / "proxy.toml"
    config.write_text(
        f'metrics = "{HOST}:{metrics}"\n'
        "[[filters]]\n"
        'use = "tests.support.blocker:make"\n'
        'name = "blocker"\n'
        'filter_name = "blocker"\n'
    )
    args = [
        "--listen", f"{HOST}:{plain}", "--listen-tls", f"{HOST}:{tls}",
        "--cert", str(certs.cert_path), "--key", str(certs.key_path),
        "--upstream", f"{HOST}:{upstream_port}", "--config", str(config),
    ]  # fmt: skip
    ports = [(HOST, plain), (HOST, tls)] if probe else []
    process = ProxyProcess(args, workdir=workdir, wait_ports=[*ports, (HOST, metrics)])
    process.__enter__()
    running = MetricsProxy(process, plain, tls, metrics, f"{HOST}:{upstream_port}")
    if probe:
        wait_for(metrics, _quiet, "the start-up probes' sessions to end")
    else:
        deadline = time.monotonic() + 15
        while process.log().count("listening on") < 2:
            assert time.monotonic() < deadline, f"listeners not up:\n{process.log()}"
            time.sleep(0.05)
    return running


def _quiet(s: Scrape) -> bool:
    active = sum(s.series("imapproxy_client_connections_active").values())
    return active == 0 and sum(s.series("imapproxy_upstream_connections_active").values()) == 0


@pytest.fixture(scope="module")
def proxy(
    dovecot: DovecotServer, tls_certs: TlsCerts, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MetricsProxy]:
    running = run_proxy(tmp_path_factory.mktemp("metrics"), tls_certs, dovecot.port)
    try:
        yield running
    finally:
        running.process.stop()


def closed(p: MetricsProxy, listener: str, reason: str, before: Scrape, n: int = 1) -> Scrape:
    """Wait until ``n`` more sessions of that listener ended for that reason."""
    name = "imapproxy_client_connections_closed_total"
    return wait_for(
        p.metrics_port,
        lambda s: delta(before, s, name, listener=listener, reason=reason) >= n,
        f"{n} session(s) on {listener} to end with {reason}",
    )


# ----------------------------------------------------------------------------- tests


def test_fresh_proxy_every_series_at_zero_promtool_and_cert_expiry(
    tls_certs: TlsCerts, tmp_path: Path
) -> None:
    """A proxy that has served nothing: every bounded label combination is there at 0,
    the output passes promtool, and the expiry gauge is the served certificate's
    notAfter.  Then one session against an upstream port nobody listens on: an upstream
    connect error (refused), and the session closed as upstream_unavailable."""
    p = run_proxy(tmp_path, tls_certs, free_port(), probe=False)
    try:
        s = p.scrape()
        promtool_check(s.text)
        listeners = (p.plain, p.tls)
        expected: dict[str, int] = {
            "imapproxy_commands_total": len(L.COMMANDS) * len(L.COMMAND_RESULTS),
            "imapproxy_command_duration_seconds_count": len(L.COMMANDS) - 1,
            "imapproxy_auth_attempts_total": 2 * len(L.MECHANISMS) * len(L.AUTH_RESULTS),
            "imapproxy_client_connections_closed_total": 2 * len(L.CLOSE_REASONS),
            "imapproxy_client_connections_active": 2 * len(L.TLS_MODES),
            "imapproxy_client_connections_rejected_total": 2 * len(L.REJECTIONS),
            "imapproxy_tls_handshake_failures_total": 2 * len(L.TLS_FAILURES),
            "imapproxy_tls_handshakes_total": 2 * len(L.TLS_VERSIONS),
            "imapproxy_upstream_connect_errors_total": len(L.UPSTREAM_ERRORS),
            "imapproxy_protocol_errors_total": 2 * len(L.PROTOCOL_ERRORS),
            # capabilities, blocker, metrics, and the relay itself
            "imapproxy_filter_rejections_total": 4,
            "imapproxy_policy_blocks_total": 3,  # its two rules and "other"
            "imapproxy_client_bytes_total": 2 * 2,
            "imapproxy_sessions_authenticated": 2,
            "imapproxy_sessions_idling": 2,
        }
        for name, count in expected.items():
            series = s.series(name)
            assert len(series) == count, (name, len(series))
            assert set(series.values()) == {0}, name
        for listener in listeners:
            for reason in L.CLOSE_REASONS:
                assert s.get("imapproxy_client_connections_closed_total",
                             listener=listener, reason=reason) == 0  # fmt: skip
        assert s.get("imapproxy_command_duration_seconds_bucket", command="UID FETCH",
                     le="+Inf") == 0  # fmt: skip
        assert s.get("imapproxy_client_connections_limit") == 10_000
        assert s.get("imapproxy_config_last_reload_successful") == 1
        assert s.get("imapproxy_build_info", version="0.1.0", python=_python()) == 1
        assert "process_resident_memory_bytes" in s.text
        cert = x509.load_pem_x509_certificate(tls_certs.cert_path.read_bytes())
        for listener in listeners:
            assert s.get("imapproxy_tls_certificate_expiry_timestamp_seconds",
                         listener=listener) == cert.not_valid_after_utc.timestamp()  # fmt: skip

        client = RawClient.connect(p.plain_port)
        assert client.greeting.startswith(b"* BYE [UNAVAILABLE]"), client.greeting
        client.close()
        after = closed(p, p.plain, "upstream_unavailable", s)
        assert delta(s, after, "imapproxy_upstream_connect_errors_total", upstream=p.upstream,
                     reason="refused") == 1  # fmt: skip
        assert delta(s, after, "imapproxy_upstream_connect_attempts_total",
                     upstream=p.upstream) == 1  # fmt: skip
        assert after.get("imapproxy_upstream_connect_duration_seconds_count",
                         upstream=p.upstream) == 0  # fmt: skip
        assert after.get("imapproxy_upstream_connections_active", upstream=p.upstream) == 0
        assert after.get("imapproxy_client_connections_active", listener=p.plain,
                         tls="none") == 0  # fmt: skip
        promtool_check(after.text)
    finally:
        p.process.stop()


def _python() -> str:
    return platform.python_version()


def test_commands_by_result_latency_auth_and_sessions(
    proxy: MetricsProxy, dovecot: DovecotServer, new_user: NewUser, tls_certs: TlsCerts
) -> None:
    """imaplib over STARTTLS: a login, SELECT OK and NO (Dovecot's), an unknown command
    (Dovecot's BAD, counted as ``other``), a SUBSCRIBE the blocker filter refuses, and a
    failed login on a second connection."""
    user, password = new_user()
    before = proxy.scrape()
    conn = imaplib.IMAP4(TLS_NAME, proxy.plain_port, timeout=TIMEOUT)
    conn.starttls(ssl_context=tls_certs.client_context())
    conn.login(user, password)
    mid = proxy.scrape()  # while logged in
    assert delta(before, mid, "imapproxy_sessions_authenticated", listener=proxy.plain) == 1
    assert delta(before, mid, "imapproxy_client_connections_active", listener=proxy.plain,
                 tls="starttls") == 1  # fmt: skip
    assert conn.select("INBOX")[0] == "OK"
    assert conn.select("NoSuchMailbox")[0] == "NO"
    with pytest.raises(imaplib.IMAP4.error, match="BAD"):
        conn.xatom("XBOGUS")
    assert conn.subscribe("INBOX")[0] == "NO"
    conn.logout()
    sent = conn.tagnum  # every command imaplib sent (one tag each)

    bad = imaplib.IMAP4(TLS_NAME, proxy.plain_port, timeout=TIMEOUT)
    with pytest.raises(imaplib.IMAP4.error):
        bad.login(user, "not-the-password")
    bad.logout()
    sent += bad.tagnum

    after = closed(proxy, proxy.plain, "logout", before, n=2)

    def commands(command: str, result: str) -> float:
        return delta(before, after, "imapproxy_commands_total", command=command, result=result)

    assert commands("LOGIN", "OK") == 1
    assert commands("LOGIN", "NO") == 1
    assert commands("SELECT", "OK") == 1
    assert commands("SELECT", "NO") == 1
    assert commands("other", "BAD") == 1
    assert commands("SUBSCRIBE", "blocked") == 1
    assert commands("SUBSCRIBE", "NO") == 0  # the proxy's NO is "blocked", not Dovecot's
    assert commands("STARTTLS", "OK") == 1  # answered by the proxy itself
    assert commands("LOGOUT", "OK") == 2
    total = sum(after.series("imapproxy_commands_total").values()) - sum(
        before.series("imapproxy_commands_total").values()
    )
    assert total == sent  # nothing counted twice, nothing missed

    def latency_count(command: str) -> float:
        return delta(before, after, "imapproxy_command_duration_seconds_count", command=command)

    # every command the server answered has a latency; blocked and local ones have none
    assert latency_count("SELECT") == 2
    assert latency_count("LOGIN") == 2
    assert latency_count("other") == 1
    assert latency_count("SUBSCRIBE") == 0
    assert latency_count("STARTTLS") == 0
    assert delta(before, after, "imapproxy_command_duration_seconds_bucket", command="SELECT",
                 le="+Inf") == 2  # fmt: skip
    assert 0 < delta(before, after, "imapproxy_command_duration_seconds_sum",
                     command="SELECT") < 2 * TIMEOUT  # fmt: skip

    def auth(result: str) -> float:
        return delta(before, after, "imapproxy_auth_attempts_total", listener=proxy.plain,
                     mechanism="LOGIN", result=result)  # fmt: skip

    assert (auth("success"), auth("failure"), auth("blocked"), auth("aborted")) == (1, 1, 0, 0)
    assert delta(before, after, "imapproxy_filter_rejections_total", filter="blocker") == 1
    assert delta(before, after, "imapproxy_filter_rejections_total", filter="relay") == 0
    assert delta(before, after, "imapproxy_policy_blocks_total", filter="blocker",
                 rule="no-subscribe") == 1  # fmt: skip
    assert delta(before, after, "imapproxy_tls_handshakes_total", side="client",
                 version="TLSv1.3") == 1  # fmt: skip
    assert after.get("imapproxy_sessions_authenticated", listener=proxy.plain) == 0
    assert after.get("imapproxy_client_connections_active", listener=proxy.plain,
                     tls="starttls") == 0  # fmt: skip
    assert after.get("imapproxy_client_connections_active", listener=proxy.plain,
                     tls="none") == 0  # fmt: skip
    assert delta(before, after, "imapproxy_client_session_duration_seconds_count",
                 listener=proxy.plain) == 2  # fmt: skip
    assert delta(before, after, "imapproxy_upstream_connect_duration_seconds_count",
                 upstream=proxy.upstream) == 2  # fmt: skip
    assert after.get("imapproxy_upstream_connections_active", upstream=proxy.upstream) == 0
    promtool_check(after.text)


def test_imapclient_implicit_tls_and_aborted_command(
    proxy: MetricsProxy, new_user: NewUser, tls_certs: TlsCerts
) -> None:
    """imapclient over implicit TLS (AUTHENTICATE PLAIN, APPEND), then a raw client that
    drops the connection in IDLE: that IDLE is counted ``aborted``."""
    user, password = new_user()
    before = proxy.scrape()
    with IMAPClient(TLS_NAME, port=proxy.tls_port, ssl=True, timeout=TIMEOUT,
                    ssl_context=tls_certs.client_context()) as client:  # fmt: skip
        client.plain_login(user, password)  # AUTHENTICATE PLAIN
        client.select_folder("INBOX")
        client.append("INBOX", b"Subject: hi\r\n\r\n" + b"x" * 5000 + b"\r\n")
        client.logout()
    after = closed(proxy, proxy.tls, "logout", before)
    assert delta(before, after, "imapproxy_commands_total", command="APPEND", result="OK") == 1
    # the message's literal (imapclient sends it as one)
    assert delta(before, after, "imapproxy_client_literal_size_bytes_count") == 1
    assert delta(before, after, "imapproxy_client_literal_size_bytes_bucket", le="4096.0") == 0
    assert delta(before, after, "imapproxy_client_literal_size_bytes_bucket", le="16384.0") == 1
    assert delta(before, after, "imapproxy_client_connections_closed_total",
                 listener=proxy.tls, reason="logout") == 1  # fmt: skip
    assert delta(before, after, "imapproxy_auth_attempts_total", listener=proxy.tls,
                 mechanism="PLAIN", result="success") == 1  # fmt: skip
    assert delta(before, after, "imapproxy_commands_total", command="AUTHENTICATE",
                 result="OK") == 1  # fmt: skip

    # An IDLE the client drops the connection in: counted aborted.
    raw = RawClient.connect(proxy.tls_port, tls_certs.client_context())
    assert raw.command(b"a1", b'LOGIN "%s" "%s"' % (user.encode(), password.encode()))[-1] \
        .startswith(b"a1 OK")  # fmt: skip
    raw.command(b"a2", b"SELECT INBOX")
    raw.send(b"a3 IDLE\r\n")
    assert raw.readline().startswith(b"+")
    idle = wait_for(proxy.metrics_port,
                    lambda s: s.get("imapproxy_sessions_idling", listener=proxy.tls) == 1,
                    "the session to be in IDLE")  # fmt: skip
    raw.close()
    end = closed(proxy, proxy.tls, "client_closed", after)
    assert delta(idle, end, "imapproxy_commands_total", command="IDLE", result="aborted") == 1
    assert end.get("imapproxy_sessions_idling", listener=proxy.tls) == 0
    assert end.get("imapproxy_sessions_authenticated", listener=proxy.tls) == 0


def test_bytes_move_while_a_session_idles(proxy: MetricsProxy, new_user: NewUser) -> None:
    """A plaintext raw session: the client leg's byte counters equal what the client
    sent and received, and they move while the session is still open (in IDLE), not only
    when it ends."""
    user, password = new_user()
    before = proxy.scrape()
    client = RawClient.connect(proxy.plain_port)
    sent = received = 0

    def command(tag: bytes, text: bytes) -> list[bytes]:
        nonlocal sent, received
        sent += len(tag) + 1 + len(text) + 2
        reply = client.command(tag, text)
        received += sum(len(r) for r in reply)
        return reply

    received += len(client.greeting)
    command(b"b1", b'LOGIN "%s" "%s"' % (user.encode(), password.encode()))
    command(b"b2", b"SELECT INBOX")
    client.send(b"b3 IDLE\r\n")
    sent += 9
    cont = client.readline()
    received += len(cont)
    mid = wait_for(
        proxy.metrics_port,
        lambda s: delta(before, s, "imapproxy_client_bytes_total", listener=proxy.plain,
                        direction="received") == sent,
        "the bytes of a session in IDLE",
    )
    assert delta(before, mid, "imapproxy_client_bytes_total", listener=proxy.plain,
                 direction="sent") == received  # fmt: skip
    assert delta(before, mid, "imapproxy_upstream_bytes_total", upstream=proxy.upstream,
                 direction="sent") == sent  # fmt: skip
    assert mid.get("imapproxy_sessions_idling", listener=proxy.plain) == 1
    client.send(b"DONE\r\n")
    sent += 6
    for line in client.read_until_tagged(b"b3"):
        received += len(line)
    command(b"b4", b"LOGOUT")
    client.close()
    after = closed(proxy, proxy.plain, "logout", before)
    assert delta(before, after, "imapproxy_client_bytes_total", listener=proxy.plain,
                 direction="received") == sent  # fmt: skip
    assert delta(before, after, "imapproxy_client_bytes_total", listener=proxy.plain,
                 direction="sent") == received  # fmt: skip
    assert delta(before, after, "imapproxy_upstream_bytes_total", upstream=proxy.upstream,
                 direction="sent") == sent  # fmt: skip
    assert delta(before, after, "imapproxy_upstream_bytes_total", upstream=proxy.upstream,
                 direction="received") > 0  # fmt: skip
    assert delta(before, after, "imapproxy_idle_duration_seconds_count") == 1
    assert delta(before, after, "imapproxy_commands_total", command="IDLE", result="OK") == 1
    assert after.get("imapproxy_sessions_idling", listener=proxy.plain) == 0


def test_tls_failure_of_a_client_that_does_not_trust_the_certificate(
    proxy: MetricsProxy,
) -> None:
    before = proxy.scrape()
    stranger = trustme.CA(organization_name="not the proxy's CA")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    stranger.configure_trust(ctx)
    with (
        socket.create_connection((TLS_NAME, proxy.tls_port), timeout=TIMEOUT) as sock,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        ctx.wrap_socket(sock, server_hostname=TLS_NAME)
    after = closed(proxy, proxy.tls, "tls_failed", before)
    assert delta(before, after, "imapproxy_tls_handshake_failures_total", side="client",
                 reason="certificate") == 1  # fmt: skip
    assert sum(after.series("imapproxy_tls_handshake_failures_total").values()) - sum(
        before.series("imapproxy_tls_handshake_failures_total").values()
    ) == 1
    assert delta(before, after, "imapproxy_upstream_connect_attempts_total",
                 upstream=proxy.upstream) == 0  # fmt: skip
    assert after.get("imapproxy_client_connections_active", listener=proxy.tls,
                     tls="implicit") == 0  # fmt: skip


def test_protocol_error_line_too_long(proxy: MetricsProxy) -> None:
    before = proxy.scrape()
    client = RawClient.connect(proxy.plain_port)
    client.send(b"x1 NOOP " + b"a" * (70 * 1024))
    reply = client.readline()
    assert reply.startswith(b"* BYE"), reply
    client.close()
    after = closed(proxy, proxy.plain, "client_protocol_error", before)
    assert delta(before, after, "imapproxy_protocol_errors_total", side="client",
                 reason="max_line_bytes") == 1  # fmt: skip


def test_starttls_injection_discarded(proxy: MetricsProxy, tls_certs: TlsCerts) -> None:
    """A command pipelined behind STARTTLS in the same write is discarded, and counted."""
    before = proxy.scrape()
    client = RawClient.connect(proxy.plain_port)
    client.send(b"S1 STARTTLS\r\nX1 NOOP\r\n")
    assert client.readline().startswith(b"S1 OK")
    client.sock = tls_certs.client_context().wrap_socket(client.sock, server_hostname=TLS_NAME)
    assert client.command(b"n1", b"NOOP")[-1].startswith(b"n1 OK")
    client.command(b"n2", b"LOGOUT")
    client.close()
    after = closed(proxy, proxy.plain, "logout", before)
    assert delta(before, after, "imapproxy_starttls_injections_total", side="client") == 1
    assert delta(before, after, "imapproxy_commands_total", command="NOOP", result="OK") == 1
    assert delta(before, after, "imapproxy_commands_total", command="STARTTLS", result="OK") == 1


def test_no_user_mailbox_or_address_in_the_output(
    proxy: MetricsProxy, new_user: NewUser, dovecot: DovecotServer
) -> None:
    user, password = new_user()
    mailbox = "Secret-Projects-7f3a"
    before = proxy.scrape()
    conn = imaplib.IMAP4(TLS_NAME, proxy.plain_port, timeout=TIMEOUT)
    own_port = conn.sock.getsockname()[1]
    conn.login(user, password)
    assert conn.create(mailbox)[0] == "OK"
    assert conn.select(mailbox)[0] == "OK"
    assert conn.subscribe(mailbox)[0] == "NO"  # blocked: the blocker saw the mailbox
    conn.logout()
    after = closed(proxy, proxy.plain, "logout", before)
    text = after.text
    for needle in (user, password, mailbox, mailbox.upper(), f"{HOST}:{own_port}",
                   f":{own_port}\""):  # fmt: skip
        assert needle not in text, f"{needle!r} found in the metrics output"
    assert delta(before, after, "imapproxy_commands_total", command="CREATE", result="OK") == 1


def test_metrics_port_in_use_is_one_line_exit_2(tls_certs: TlsCerts, tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind((HOST, 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "imapproxy", "run",
             "--listen", f"{HOST}:{free_port()}", "--upstream", f"{HOST}:{free_port()}",
             "--metrics", f"{HOST}:{port}"],
            capture_output=True, text=True, timeout=30, cwd=Path(__file__).parents[2],
        )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"--metrics {HOST}:{port}" in lines[0] and "in use" in lines[0], lines[0]

