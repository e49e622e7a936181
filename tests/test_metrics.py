"""Metrics without sockets: the label mappings onto closed sets, the store's histogram, the
relay's events as ProxyMetrics counts them, the observer filter through the real gate and
chain, and the config file's ``metrics`` key.  (End to end against Dovecot:
tests/integration/test_metrics.py.)"""

from __future__ import annotations

import re
import socket
import ssl
import threading
from pathlib import Path

import pytest
import trio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from imapproxy import configfile
from imapproxy.config import Endpoint, ListenerConfig, ProxyConfig, UpstreamConfig
from imapproxy.filters import (
    ChainEntry,
    ConfigError,
    FilterChain,
    OnError,
    Reject,
    ResponseView,
    SessionEndInfo,
    SessionInfo,
    SessionView,
)
from imapproxy.metrics import ProxyMetrics
from imapproxy.metrics import labels as L
from imapproxy.metrics.store import HistogramVec
from imapproxy.relay.gate import CommandGate, Refuse
from imapproxy.relay.server import Proxy
from imapproxy.relay.session import SessionStats
from imapproxy.wire import NEED_DATA, PAUSED, Decoder, Frame, Limits, Side

PLAIN = ListenerConfig(Endpoint("127.0.0.1", 1143), implicit_tls=False)
CONFIG = ProxyConfig(listeners=(PLAIN,), upstream=UpstreamConfig(Endpoint("127.0.0.1", 143)))
UP = "127.0.0.1:143"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def made(
    chain: FilterChain | None = None,
) -> tuple[ProxyMetrics, Proxy, CollectorRegistry, Clock]:
    registry = CollectorRegistry()
    clock = Clock()
    m = ProxyMetrics(registry, process=False, monotonic=clock)
    proxy = Proxy(CONFIG, filters=m.observe(chain or FilterChain()), events=m)
    return m, proxy, registry, clock


def values(registry: CollectorRegistry) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for fam in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def get(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return values(registry)[(name, frozenset(labels.items()))]


# ----------------------------------------------------------------------------- labels


def test_command_and_mechanism_labels_are_closed() -> None:
    assert L.command_label("FETCH", uid=True) == "UID FETCH"
    assert L.command_label("XYZZY", uid=False) == "other"
    assert L.command_label("FROB", uid=True) == "other"
    assert L.mechanism_label("LOGIN", b'a LOGIN "bob" "secret"\r\n') == "LOGIN"
    assert L.mechanism_label("AUTHENTICATE", b"a AUTHENTICATE plain AGJvYgBwdw==\r\n") == "PLAIN"
    assert L.mechanism_label("AUTHENTICATE", b"a AUTHENTICATE X-SECRET-bob\r\n") == "other"
    assert L.mechanism_label("AUTHENTICATE", b"a AUTHENTICATE\r\n") == "other"
    assert L.status_label("PREAUTH") == "BAD"


def test_tls_failure_reasons() -> None:
    err = ssl.SSLError(1, "alert")
    err.reason = "TLSV1_ALERT_UNKNOWN_CA"  # type: ignore[misc]
    assert L.tls_failure_label(err) == "certificate"
    err.reason = "WRONG_VERSION_NUMBER"  # type: ignore[misc]
    assert L.tls_failure_label(err) == "protocol"
    err.reason = "NO_SHARED_CIPHER"  # type: ignore[misc]
    assert L.tls_failure_label(err) == "cipher"
    err.reason = "SOMETHING_NEW"  # type: ignore[misc]
    assert L.tls_failure_label(err) == "other"
    assert L.tls_failure_label(None) == "timeout"
    assert L.tls_failure_label(ssl.SSLEOFError()) == "eof"
    assert L.tls_failure_label(ConnectionResetError()) == "eof"
    assert L.tls_failure_label(ValueError("x")) == "other"


def test_upstream_error_reasons() -> None:
    refused = OSError("all attempts to connect to 127.0.0.1:1 failed")
    refused.__cause__ = ExceptionGroup("x", [ConnectionRefusedError(111, "refused")])
    assert L.upstream_error_label("upstream_unavailable", refused) == "refused"
    assert L.upstream_error_label("upstream_unavailable", socket.gaierror(-2, "x")) == "dns"
    assert L.upstream_error_label("upstream_unavailable", trio.TooSlowError()) == "timeout"
    assert L.upstream_error_label("upstream_unavailable", None) == "closed"
    assert L.upstream_error_label("upstream_tls_failed", None) == "tls"
    assert L.upstream_error_label("upstream_refused", None) == "bye"
    assert L.upstream_error_label("upstream_protocol", None) == "protocol"
    assert L.upstream_error_label("something_else", None) == "other"
    assert L.protocol_error_label("max_line_bytes") == "max_line_bytes"
    assert L.protocol_error_label("a user's text") == "other"


def test_histogram_buckets_are_le() -> None:
    h = HistogramVec("x_seconds", "x", (), (0.1, 1.0))
    h.declare()
    for v in (0.1, 0.5, 1.0, 7.0):
        h.observe((), v)
    fam = h.family()
    got = {(s.name, s.labels.get("le")): s.value for s in fam.samples}
    assert got[("x_seconds_bucket", "0.1")] == 1  # a value equal to a bound is in it
    assert got[("x_seconds_bucket", "1.0")] == 3
    assert got[("x_seconds_bucket", "+Inf")] == 4
    assert got[("x_seconds_count", None)] == 4
    assert got[("x_seconds_sum", None)] == pytest.approx(8.6)
    with pytest.raises(ValueError):
        HistogramVec("y", "y", (), (1.0, 0.5))


# ----------------------------------------------------------------------------- events


def test_commands_by_result_latency_and_session_end() -> None:
    m, _proxy, reg, clock = made()
    stats = SessionStats()
    m.session_opened("s1", PLAIN, stats)
    m.command_started("s1", b"a1", "SELECT")
    m.command_started("s1", b"a2", "UID FETCH")
    m.command_started("s1", b"a3", "XYZZY")
    m.command_started("s1", b"a4", "IDLE")
    m.command_started("s1", b"a5", "NOOP")
    m.command_started("s1", b"a6", "DELETE")
    m.command_started("s1", b"a6", "DELETE")  # tag in use: ignored (the relay refuses it)
    assert get(reg, "imapproxy_sessions_idling", listener=PLAIN.name) == 1
    clock.now += 0.003
    m.command_completed("s1", b"a1", "OK")
    m.command_completed("s1", b"a2", "NO")
    m.command_completed("s1", b"a3", "BAD")
    m.command_completed("s1", b"zz", "OK")  # nothing pending with that tag: ignored
    m.command_blocked("s1", b"a6")
    m.command_answered("s1", "STARTTLS", "OK")
    clock.now += 60
    m.command_completed("s1", b"a4", "OK")
    stats.bytes_from_client, stats.bytes_to_client = 100, 2000
    stats.bytes_from_upstream, stats.bytes_to_upstream = 1900, 90
    assert get(reg, "imapproxy_client_bytes_total", listener=PLAIN.name, direction="sent") == 2000
    m.session_closed("s1", "client_closed", 61.0)  # NOOP still pending: aborted
    v = values(reg)

    def c(command: str, result: str) -> float:
        return v[("imapproxy_commands_total",
                  frozenset({("command", command), ("result", result)}))]  # fmt: skip

    assert (c("SELECT", "OK"), c("UID FETCH", "NO"), c("other", "BAD")) == (1, 1, 1)
    assert (c("IDLE", "OK"), c("NOOP", "aborted"), c("DELETE", "blocked")) == (1, 1, 1)
    assert c("STARTTLS", "OK") == 1
    assert sum(val for (n, _), val in v.items() if n == "imapproxy_commands_total") == 7
    sel = frozenset({("command", "SELECT"), ("le", "0.005")})
    assert v[("imapproxy_command_duration_seconds_bucket", sel)] == 1
    sel = frozenset({("command", "SELECT"), ("le", "0.0025")})
    assert v[("imapproxy_command_duration_seconds_bucket", sel)] == 0
    assert v[("imapproxy_idle_duration_seconds_count", frozenset())] == 1
    assert v[("imapproxy_idle_duration_seconds_bucket", frozenset({("le", "300.0")}))] == 1
    assert get(reg, "imapproxy_sessions_idling", listener=PLAIN.name) == 0
    # the bytes stay counted after the session ended (moved to the totals)
    assert get(reg, "imapproxy_client_bytes_total", listener=PLAIN.name, direction="sent") == 2000
    assert get(reg, "imapproxy_client_bytes_total", listener=PLAIN.name,
               direction="received") == 100  # fmt: skip
    assert get(reg, "imapproxy_upstream_bytes_total", upstream=UP, direction="received") == 1900
    assert get(reg, "imapproxy_upstream_bytes_total", upstream=UP, direction="sent") == 90
    assert get(reg, "imapproxy_client_connections_closed_total", listener=PLAIN.name,
               reason="client_closed") == 1  # fmt: skip


def test_pending_commands_end_as_bye_after_the_servers_bye() -> None:
    m, _proxy, reg, _clock = made()
    m.session_opened("s1", PLAIN, SessionStats())
    m.command_started("s1", b"a1", "FETCH")
    m.live("s1", PLAIN.name).bye = True  # what the observer sets on "* BYE"
    m.session_closed("s1", "upstream_bye", 1.0)
    assert get(reg, "imapproxy_commands_total", command="FETCH", result="BYE") == 1
    assert get(reg, "imapproxy_commands_total", command="FETCH", result="aborted") == 0


def test_connections_tls_and_upstream_events() -> None:
    m, _proxy, reg, _clock = made()
    m.connection_accepted(PLAIN.name)
    m.connection_rejected(PLAIN.name, "max_sessions_per_address")
    m.session_opened("s1", PLAIN, SessionStats())
    assert get(reg, "imapproxy_client_connections_active", listener=PLAIN.name, tls="none") == 1
    m.tls_handshake("s1", "client", "TLSv1.3")  # STARTTLS: the session moves
    assert get(reg, "imapproxy_client_connections_active", listener=PLAIN.name, tls="none") == 0
    assert get(reg, "imapproxy_client_connections_active", listener=PLAIN.name,
               tls="starttls") == 1  # fmt: skip
    m.upstream_connecting("s1")
    m.upstream_connected("s1", 0.002)
    assert get(reg, "imapproxy_upstream_connections_active", upstream=UP) == 1
    m.starttls_injection("s1", "client")
    m.protocol_error("s1", "upstream", "stray_continuation")
    m.tls_failed("s2", "upstream", None)
    m.upstream_failed("s2", "upstream_tls_failed", None)
    m.session_closed("s1", "logout", 2.0)
    v = values(reg)
    assert get(reg, "imapproxy_client_connections_active", listener=PLAIN.name,
               tls="starttls") == 0  # fmt: skip
    assert get(reg, "imapproxy_upstream_connections_active", upstream=UP) == 0
    assert get(reg, "imapproxy_client_connections_rejected_total", listener=PLAIN.name,
               reason="max_sessions_per_address") == 1  # fmt: skip
    assert get(reg, "imapproxy_tls_handshakes_total", side="client", version="TLSv1.3") == 1
    assert get(reg, "imapproxy_tls_handshake_failures_total", side="upstream",
               reason="timeout") == 1  # fmt: skip
    assert get(reg, "imapproxy_upstream_connect_errors_total", upstream=UP, reason="tls") == 1
    assert get(reg, "imapproxy_upstream_connect_duration_seconds_bucket", upstream=UP,
               le="0.0025") == 1  # fmt: skip
    assert get(reg, "imapproxy_starttls_injections_total", side="client") == 1
    assert get(reg, "imapproxy_protocol_errors_total", side="upstream",
               reason="stray_continuation") == 1  # fmt: skip
    assert v[("imapproxy_client_session_duration_seconds_count",
              frozenset({("listener", PLAIN.name)}))] == 1  # fmt: skip


def test_filter_errors_are_read_from_the_proxys_counter_and_reloads() -> None:
    m, proxy, reg, _clock = made()
    assert get(reg, "imapproxy_filter_errors_total", filter="capabilities") == 0
    proxy.filter_errors["capabilities"] += 2
    assert get(reg, "imapproxy_filter_errors_total", filter="capabilities") == 2
    m.clock = lambda: 1234.0
    m.config_reloaded(False)
    assert get(reg, "imapproxy_config_last_reload_successful") == 0
    m.config_reloaded(True)
    assert get(reg, "imapproxy_config_last_reload_successful") == 1
    assert get(reg, "imapproxy_config_last_reload_success_timestamp_seconds") == 1234.0
    assert get(reg, "imapproxy_config_reloads_total", result="failure") == 1


def test_a_scrape_during_session_ends_never_sees_a_counter_go_back() -> None:
    """Session ends (the event loop) move bytes to the totals while scrapes (another
    thread) add the live sessions: a counter never goes backwards."""
    m, _proxy, reg, _clock = made()
    stop = threading.Event()
    seen: list[float] = []

    def scrape() -> None:
        while not stop.is_set():
            seen.append(get(reg, "imapproxy_client_bytes_total", listener=PLAIN.name,
                            direction="received"))  # fmt: skip

    t = threading.Thread(target=scrape)
    t.start()
    try:
        for i in range(3000):
            stats = SessionStats(bytes_from_client=10)
            m.session_opened(f"s{i}", PLAIN, stats)
            m.session_closed(f"s{i}", "logout", 0.1)
    finally:
        stop.set()
        t.join()
    assert seen == sorted(seen)
    assert get(reg, "imapproxy_client_bytes_total", listener=PLAIN.name,
               direction="received") == 30000  # fmt: skip


# ----------------------------------------------------------------------------- observer


class Blocker:
    """A deciding filter refusing SUBSCRIBE and LOGIN "mallory", naming its rule."""

    rule_names = ("no-subscribe", "deny-listed-user")

    def __call__(self, info: SessionInfo) -> object:
        from imapproxy.filters import PASS, Filter

        class F(Filter):
            name = "blocker"
            wants_commands = frozenset({"SUBSCRIBE", "LOGIN"})

            def command(self, cmd, session):  # type: ignore[no-untyped-def]
                if cmd.name == "SUBSCRIBE":
                    return Reject(rule="no-subscribe")
                if b"mallory" in cmd.raw:
                    return Reject(rule="deny-listed-user")
                return PASS

        return F()


def client_frames(data: bytes) -> list[Frame]:
    dec = Decoder(Side.CLIENT, Limits())
    dec.authenticated = True
    dec.nonsync_as_sync = True
    dec.receive_data(data)
    out: list[Frame] = []
    while (ev := dec.next_event()) not in (NEED_DATA, PAUSED):
        assert isinstance(ev, Frame)
        out.append(ev)
    return out


def server_frame(data: bytes) -> Frame:
    dec = Decoder(Side.SERVER, Limits())
    dec.receive_data(data)
    ev = dec.next_event()
    assert isinstance(ev, Frame)
    return ev


def test_observer_counts_logins_appends_and_blocks_by_rule() -> None:
    chain = FilterChain([ChainEntry("blocker", Blocker(), OnError.CLOSED)])
    m, proxy, reg, clock = made(chain)
    info = SessionInfo("s1", "192.0.2.7", 5555, PLAIN.name)
    m.session_opened("s1", PLAIN, SessionStats())
    filters = proxy.filters.open(info, lambda *a: None, m.filter_verdict)
    view = SessionView(info)
    gate = CommandGate(filters, view, Limits(), clock=clock)

    def command(data: bytes) -> object:
        *_, last = [gate.command_part(f) for f in client_frames(data)]
        return last

    def server(data: bytes) -> None:
        frame = server_frame(data)
        if filters.wants_response(frame.kind, frame.name, frame.raw):
            gate.response(frame)

    # a failed login, a blocked one, a successful one (the relay calls authenticated)
    command(b'l1 LOGIN "bob" "wrong"\r\n')
    server(b"l1 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n")
    decision = command(b'l2 LOGIN "mallory" "pw"\r\n')
    assert isinstance(decision, Refuse)
    gate.completed_locally(b"l2")
    m.command_blocked("s1", b"l2")
    filters.response(  # the proxy's reply, as Filtering.local_reply shows it
        ResponseView(
            server_frame(b"l2 NO x\r\n").kind, b"l2", "NO", decision.reply, by="blocker"
        ),
        view,
    )
    command(b'l3 AUTHENTICATE PLAIN\r\n')
    assert filters.authenticated(view) is not None
    command(b"a1 APPEND INBOX {5000}\r\n")
    server(b"+ go\r\n")
    decision = command(b"s1 SUBSCRIBE INBOX\r\n")
    assert isinstance(decision, Refuse)
    filters.response(
        ResponseView(
            server_frame(b"s1 NO x\r\n").kind, b"s1", "NO", decision.reply, by="blocker"
        ),
        view,
    )
    command(b'l4 LOGIN "carol" "pw"\r\n')  # still in progress at the end: aborted
    filters.session_ended(view, SessionEndInfo("client_closed", "", 0, 0, 1.0))
    m.session_closed("s1", "client_closed", 1.0)

    def auth(mech: str, result: str) -> float:
        return get(reg, "imapproxy_auth_attempts_total", listener=PLAIN.name, mechanism=mech,
                   result=result)  # fmt: skip

    assert auth("LOGIN", "failure") == 1
    assert auth("LOGIN", "blocked") == 1
    assert auth("PLAIN", "success") == 1
    assert auth("LOGIN", "aborted") == 1
    assert auth("LOGIN", "success") == 0
    assert get(reg, "imapproxy_client_literal_size_bytes_bucket", le="4096.0") == 0
    assert get(reg, "imapproxy_client_literal_size_bytes_bucket", le="16384.0") == 1
    assert get(reg, "imapproxy_policy_blocks_total", filter="blocker", rule="no-subscribe") == 1
    assert get(reg, "imapproxy_policy_blocks_total", filter="blocker", rule="deny-listed-user") == 1
    assert get(reg, "imapproxy_filter_rejections_total", filter="blocker") == 2
    assert get(reg, "imapproxy_filter_verdicts_total", filter="blocker", verdict="reject") == 2
    assert get(reg, "imapproxy_filter_verdicts_total", filter="blocker", verdict="replace") == 0
    assert get(reg, "imapproxy_sessions_authenticated", listener=PLAIN.name) == 0
    text = generate_latest(reg).decode()
    for secret in ("bob", "mallory", "carol", "wrong", "192.0.2.7", "5555", "INBOX"):
        assert secret not in text


# ----------------------------------------------------------------------------- config file


def test_config_file_metrics_key(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('metrics = "127.0.0.1:9187"\n')
    assert configfile.load_metrics(path) == Endpoint("127.0.0.1", 9187)
    assert configfile.load(path).metrics == Endpoint("127.0.0.1", 9187)
    path.write_text("[[filters]]\nuse = \"transcript\"\npath = \"-\"\n")
    assert configfile.load_metrics(path) is None
    for bad, message in (("metrics = 9187", 'metrics: expected a string "HOST:PORT"'),
                         ('metrics = "nohost"', "metrics: bad address 'nohost': expected "
                          "HOST:PORT")):  # fmt: skip
        path.write_text(bad + "\n")
        with pytest.raises(ConfigError, match=re.escape(message)):
            configfile.load_metrics(path)
