"""The process's metrics: the relay's events, the filter's counts, one collector.

:class:`ProxyMetrics` is made by the caller with the registry to export to (never the
global one)::

    registry = CollectorRegistry()
    metrics = ProxyMetrics(registry)
    proxy = Proxy(config, filters=metrics.observe(chain), events=metrics)

It is the relay's :class:`~imapproxy.relay.events.ProxyEvents` (connections, TLS, the
upstream's set-up, protocol errors, how sessions end) and, through :meth:`observe`, adds
its observer filter to the chain (commands, logins, IDLE).  The configured label values
(listeners, the upstream, filter and rule names) are declared when the proxy is built
(:meth:`configured`), so every series exists at zero from start-up.

Bytes are not counted per message: each live session's byte counts are read when the
registry is scraped (and once more when the session ends), so a session that IDLEs for
hours shows its traffic as it happens, at the scrape interval's resolution, for the price
of four additions per write on the relay.
"""

from __future__ import annotations

import bisect
import collections
import logging
import platform
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .. import __version__
from ..config import ListenerConfig, ProxyConfig
from ..filters.api import OnError
from ..filters.chain import ChainEntry, FilterChain
from ..relay.events import ByteCounts, ProxyEvents
from . import labels as L
from .certs import not_after
from .observer import MetricsFilterFactory
from .store import CounterVec, Family, GaugeVec, HistogramVec

log = logging.getLogger("imapproxy.metrics")

_COMMANDS = L.COMMAND_SET
_STATUSES = L.STATUSES
_OTHER = L.OTHER
_COMMAND_BOUNDS = L.COMMAND_BUCKETS

FILTER_NAME = "metrics"


@dataclass(slots=True)
class Live:
    """A session the metrics follow from its start to its end (the relay's events and the
    session's observer filter share it)."""

    listener: str
    tls: str  # implicit, starttls or none: the active gauge's label
    stats: ByteCounts
    upstream: bool = False  # an upstream connection is open
    # commands relayed and not completed: tag -> (label, when it went upstream)
    pending: dict[bytes, tuple[str, float]] = field(default_factory=dict)
    idle: bytes | None = None  # the tag of the IDLE in progress
    bye: bool = False  # the server said BYE: what is still pending ends as "BYE"


class _NoBytes:
    bytes_from_client = bytes_to_client = bytes_from_upstream = bytes_to_upstream = 0


class ProxyMetrics(ProxyEvents, Collector):
    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        process: bool = True,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """Registers itself (and, with ``process``, prometheus-client's process, platform
        and GC collectors) with ``registry``.  ``clock`` gives Unix time (reload stamps),
        ``monotonic`` the time for command latencies."""
        self.clock = clock
        self.monotonic = monotonic
        self.filter_names: frozenset[str] = frozenset()
        self.policy_rules: dict[str, frozenset[str]] = {}  # filter name -> its rule names
        self._live: dict[str, Live] = {}
        self._lock = threading.Lock()  # the byte totals against a scrape in another thread
        self._closed_bytes: dict[str, list[int]] = {}  # listener -> 4 totals (see _bytes)
        self._filter_errors: collections.Counter[str] = collections.Counter()
        self._config: ProxyConfig | None = None
        self._upstream = ("",)
        self._cert_expiry: dict[str, float] = {}  # listener -> its certificate's notAfter
        self._families: list[Family] = []
        self._define()
        registry.register(self)
        if process:
            from prometheus_client import GCCollector, PlatformCollector, ProcessCollector

            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
            GCCollector(registry=registry)

    # ------------------------------------------------------------------ definitions

    def live(self, session_id: str, listener: str) -> Live:
        """The session's shared state, for its observer filter (a session the relay did
        not announce, e.g. a filter chain driven by a test, gets one of its own)."""
        live = self._live.get(session_id)
        if live is None:
            live = Live(listener, "none", _NoBytes())
        return live

    def _counter(self, name: str, help: str, *labels: str) -> CounterVec:
        vec = CounterVec("imapproxy_" + name, help, labels)
        self._families.append(vec)
        return vec

    def _gauge(self, name: str, help: str, *labels: str) -> GaugeVec:
        vec = GaugeVec("imapproxy_" + name, help, labels)
        self._families.append(vec)
        return vec

    def _histogram(
        self, name: str, help: str, labels: tuple[str, ...], bounds: tuple[float, ...]
    ) -> HistogramVec:
        vec = HistogramVec("imapproxy_" + name, help, labels, bounds)
        self._families.append(vec)
        return vec

    def _define(self) -> None:
        c, g, h = self._counter, self._gauge, self._histogram
        self.build_info = g("build_info", "Build information (always 1)", "version", "python")
        self.build_info.set((__version__, platform.python_version()), 1)
        # client connections and sessions
        self.accepted = c("client_connections_accepted_total",
                          "TCP connections accepted", "listener")  # fmt: skip
        self.rejected = c("client_connections_rejected_total",
                          "Connections refused at once (a limit was reached)",
                          "listener", "reason")  # fmt: skip
        self.active = g("client_connections_active",
                        "Client sessions open now, by listener and client TLS mode",
                        "listener", "tls")  # fmt: skip
        self.limit = g("client_connections_limit",
                       "Configured maximum of client sessions (max_sessions)")  # fmt: skip
        self.per_address_limit = g(
            "client_connections_per_address_limit",
            "Configured maximum of client sessions from one address",
        )
        self.closed = c("client_connections_closed_total",
                        "Client sessions ended, by end reason", "listener", "reason")  # fmt: skip
        self.session_duration = h("client_session_duration_seconds",
                                  "Client session duration, connect to close",
                                  ("listener",), L.SESSION_BUCKETS)  # fmt: skip
        self.authenticated = g("sessions_authenticated",
                               "Sessions past a successful login now", "listener")  # fmt: skip
        self.idling = g("sessions_idling", "Sessions inside IDLE now", "listener")
        # TLS
        self.handshakes = c("tls_handshakes_total", "Completed TLS handshakes",
                            "side", "version")  # fmt: skip
        self.tls_failures = c("tls_handshake_failures_total", "Failed TLS handshakes",
                              "side", "reason")  # fmt: skip
        # commands
        self.commands = c("commands_total", "Client commands by how they ended",
                          "command", "result")  # fmt: skip
        self.command_duration = h(
            "command_duration_seconds",
            "Command latency: from going upstream to the tagged completion (IDLE apart)",
            ("command",), L.COMMAND_BUCKETS,
        )  # fmt: skip
        self.idle_duration = h("idle_duration_seconds",
                               "IDLE commands, start to the tagged completion", (),
                               L.IDLE_BUCKETS)  # fmt: skip
        self.client_literals = h("client_literal_size_bytes",
                                 "Size of each literal in a client command", (),
                                 L.LITERAL_BUCKETS)  # fmt: skip
        # filters and policy
        self.filter_rejections = c("filter_rejections_total",
                                   "The proxy's own NO/BAD replies to commands, by the "
                                   "filter (or relay) that made them", "filter")  # fmt: skip
        self.policy_blocks = c("policy_blocks_total", "Commands blocked, by rule",
                               "filter", "rule")  # fmt: skip
        self.filter_verdicts = c("filter_verdicts_total",
                                 "Filter verdicts other than pass, by filter and verdict",
                                 "filter", "verdict")  # fmt: skip
        # upstream
        self.upstream_attempts = c("upstream_connect_attempts_total",
                                   "Upstream set-ups started", "upstream")  # fmt: skip
        self.upstream_connect = h(
            "upstream_connect_duration_seconds",
            "Upstream set-up time: TCP connect, TLS or STARTTLS, greeting",
            ("upstream",), L.CONNECT_BUCKETS,
        )  # fmt: skip
        self.upstream_errors = c("upstream_connect_errors_total", "Failed upstream set-ups",
                                 "upstream", "reason")  # fmt: skip
        self.upstream_active = g("upstream_connections_active",
                                 "Upstream connections open now", "upstream")  # fmt: skip
        # authentication, protocol, STARTTLS, configuration
        self.auth = c("auth_attempts_total", "Logins (LOGIN, AUTHENTICATE) by mechanism "
                      "and result", "listener", "mechanism", "result")  # fmt: skip
        self.protocol_errors = c("protocol_errors_total", "Protocol violations caught",
                                 "side", "reason")  # fmt: skip
        self.injections = c("starttls_injections_total",
                            "Sessions where bytes sent between STARTTLS OK and TLS were "
                            "discarded", "side")  # fmt: skip
        self.reloads = c("config_reloads_total", "Configuration reloads", "result")
        self.reload_ok = g("config_last_reload_successful",
                           "Whether the last configuration reload succeeded")  # fmt: skip
        self.reload_time = g("config_last_reload_success_timestamp_seconds",
                             "Unix time of the last successful configuration load")  # fmt: skip
        # what needs no configuration exists at once
        self.commands.declare(L.COMMANDS, L.COMMAND_RESULTS)
        self.command_duration.declare(L.TIMED_COMMANDS)
        # for command_completed: the vectors' own dicts, by label
        self._command_counts = self.commands.values
        self._durations = {key[0]: v for key, v in self.command_duration.counts.items()}
        self._duration_sums = self.command_duration.sums
        self.idle_duration.declare()
        self.client_literals.declare()
        self.handshakes.declare(L.SIDES, L.TLS_VERSIONS)
        self.tls_failures.declare(L.SIDES, L.TLS_FAILURES)
        self.protocol_errors.declare(L.SIDES, L.PROTOCOL_ERRORS)
        self.injections.declare(L.SIDES)
        self.reloads.declare(L.RELOAD_RESULTS)

    # ------------------------------------------------------------------ set-up

    def observe(self, chain: FilterChain) -> FilterChain:
        """``chain`` with the metrics' observer added (last; observers run after the
        filters that decide anyway).  A filter whose factory has ``rule_names`` (a policy)
        gets its blocks counted by rule: the rule its verdict names (``Reject(rule=...)``,
        reported by the chain)."""
        for entry in chain.entries:
            rules = getattr(entry.factory, "rule_names", None)
            if rules is not None:
                self.policy_rules[entry.name] = frozenset(str(r) for r in rules)
        entry = ChainEntry(FILTER_NAME, MetricsFilterFactory(self), OnError.OPEN)
        return FilterChain((*chain.entries, entry))

    def configured(
        self,
        config: ProxyConfig,
        filter_names: tuple[str, ...],
        filter_errors: collections.Counter[str],
    ) -> None:
        self._config = config
        self._filter_errors = filter_errors
        self.filter_names = frozenset(filter_names)
        listeners = [lc.name for lc in config.listeners]
        self._upstream = (str(config.upstream.endpoint),)
        self.accepted.declare(listeners)
        self.rejected.declare(listeners, L.REJECTIONS)
        self.active.declare(listeners, L.TLS_MODES)
        self.limit.set((), config.session_limits.max_sessions)
        self.per_address_limit.set((), config.session_limits.max_sessions_per_address)
        self.closed.declare(listeners, L.CLOSE_REASONS)
        self.session_duration.declare(listeners)
        self.authenticated.declare(listeners)
        self.idling.declare(listeners)
        self.auth.declare(listeners, L.MECHANISMS, L.AUTH_RESULTS)
        self.filter_rejections.declare([*filter_names, L.RELAY])
        self.filter_verdicts.declare(list(filter_names), L.VERDICTS)
        for name, rules in self.policy_rules.items():
            self.policy_blocks.declare([name], [*sorted(rules), L.OTHER])
        self.upstream_attempts.declare(self._upstream)
        self.upstream_connect.declare(self._upstream)
        self.upstream_errors.declare(self._upstream, L.UPSTREAM_ERRORS)
        self.upstream_active.declare(self._upstream)
        for name in listeners:
            self._closed_bytes.setdefault(name, [0, 0, 0, 0])
        self._cert_expiry = {}
        for lc in config.listeners:
            cert = lc.cert_file or config.cert_file
            if cert and (lc.implicit_tls or lc.starttls):
                expiry = not_after(cert)
                if expiry is not None:
                    self._cert_expiry[lc.name] = expiry
        self.reload_ok.set((), 1)
        self.reload_time.set((), self.clock())

    # ------------------------------------------------------------------ ProxyEvents

    def config_reloaded(self, ok: bool) -> None:
        self.reloads.inc(("success" if ok else "failure",))
        self.reload_ok.set((), 1 if ok else 0)
        if ok:
            self.reload_time.set((), self.clock())

    def connection_accepted(self, listener: str) -> None:
        self.accepted.inc((listener,))

    def connection_rejected(self, listener: str, reason: str) -> None:
        self.rejected.inc((listener, reason if reason in L.REJECTIONS else L.OTHER))

    def session_opened(self, session_id: str, listener: ListenerConfig, stats: ByteCounts) -> None:
        live = Live(listener.name, "implicit" if listener.implicit_tls else "none", stats)
        self._live[session_id] = live
        self.active.inc((live.listener, live.tls))

    def session_closed(self, session_id: str, reason: str, duration: float) -> None:
        live = self._live.get(session_id)
        if live is None:
            return
        name = live.listener
        result = "BYE" if live.bye else "aborted"
        for label, _ in live.pending.values():
            self.commands.inc((label, result))
        live.pending.clear()
        if live.idle is not None:
            live.idle = None
            self.idling.inc((name,), -1)
        self.active.inc((name, live.tls), -1)
        self.closed.inc((name, reason if reason in L.CLOSE_REASONS else "error"))
        self.session_duration.observe((name,), duration)
        if live.upstream:
            self.upstream_active.inc(self._upstream, -1)
        s = live.stats
        with self._lock:  # moved to the totals at once, so a scrape never sees it twice
            del self._live[session_id]
            totals = self._closed_bytes.setdefault(name, [0, 0, 0, 0])
            totals[0] += s.bytes_from_client
            totals[1] += s.bytes_to_client
            totals[2] += s.bytes_from_upstream
            totals[3] += s.bytes_to_upstream

    def tls_handshake(self, session_id: str, side: str, version: str | None) -> None:
        self.handshakes.inc((side, L.tls_version_label(version)))
        if side == "client":
            live = self._live.get(session_id)
            if live is not None and live.tls == "none":  # STARTTLS: the session moves
                self.active.inc((live.listener, "none"), -1)
                live.tls = "starttls"
                self.active.inc((live.listener, "starttls"))

    def tls_failed(self, session_id: str, side: str, error: BaseException | None) -> None:
        self.tls_failures.inc((side, L.tls_failure_label(error)))

    def starttls_injection(self, session_id: str, side: str) -> None:
        self.injections.inc((side,))

    def protocol_error(self, session_id: str, side: str, reason: str) -> None:
        self.protocol_errors.inc((side, L.protocol_error_label(reason)))

    # per command: a dict update and a clock read at each end, nothing else

    def command_started(self, session_id: str, tag: bytes, name: str) -> None:
        live = self._live.get(session_id)
        if live is None:
            return
        pending = live.pending
        if tag in pending:
            return  # a tag in use: the relay refuses this one
        if name == "IDLE":
            live.idle = tag
            self.idling.inc((live.listener,))
        pending[tag] = (name if name in _COMMANDS else _OTHER, self.monotonic())

    def command_completed(self, session_id: str, tag: bytes, status: str) -> None:
        # (the hot path: inlined updates of self.commands and self.command_duration)
        live = self._live.get(session_id)
        started = live.pending.pop(tag, None) if live is not None else None
        if started is None:
            return
        label, when = started
        latency = self.monotonic() - when
        key = (label, status if status in _STATUSES else "BAD")
        counts = self._command_counts
        counts[key] = counts.get(key, 0) + 1
        if tag == live.idle:  # type: ignore[union-attr]
            live.idle = None  # type: ignore[union-attr]
            self.idling.inc((live.listener,), -1)  # type: ignore[union-attr]
            self.idle_duration.observe((), latency)
            return
        hist = self._durations.get(label)
        if hist is None:
            return
        hist[bisect.bisect_left(_COMMAND_BOUNDS, latency)] += 1
        self._duration_sums[(label,)] += latency

    def filter_verdict(self, filter: str, verdict: str, rule: str | None) -> None:
        if filter not in self.filter_names or verdict not in L.VERDICTS:
            return  # (closed label sets: a name the configuration does not know)
        self.filter_verdicts.inc((filter, verdict))
        rules = self.policy_rules.get(filter)
        if rules is not None and verdict in ("reject", "answer", "disconnect"):
            self.policy_blocks.inc((filter, rule if rule in rules else L.OTHER))

    def command_blocked(self, session_id: str, tag: bytes) -> None:
        live = self._live.get(session_id)
        started = live.pending.pop(tag, None) if live is not None else None
        if started is not None:
            self.commands.inc((started[0], "blocked"))
            if tag == live.idle:  # type: ignore[union-attr]
                live.idle = None  # type: ignore[union-attr]
                self.idling.inc((live.listener,), -1)  # type: ignore[union-attr]

    def command_answered(self, session_id: str, name: str, result: str) -> None:
        label = name if name in L.COMMAND_SET else L.OTHER
        self.commands.inc((label, result if result in L.COMMAND_RESULTS else "blocked"))

    def upstream_connecting(self, session_id: str) -> None:
        self.upstream_attempts.inc(self._upstream)

    def upstream_connected(self, session_id: str, seconds: float) -> None:
        self.upstream_connect.observe(self._upstream, seconds)
        live = self._live.get(session_id)
        if live is not None:
            live.upstream = True
            self.upstream_active.inc(self._upstream)

    def upstream_failed(self, session_id: str, reason: str, error: BaseException | None) -> None:
        self.upstream_errors.inc((self._upstream[0], L.upstream_error_label(reason, error)))

    # ------------------------------------------------------------------ scrape

    def collect(self) -> Iterator[Metric]:
        """Called by the registry on a scrape (the HTTP server's thread)."""
        for fam in self._families:
            yield fam.family()
        yield from self._bytes()
        errors = dict(self._filter_errors)
        fam = CounterMetricFamily("imapproxy_filter_errors_total",
                                  "Filter hooks that raised", labels=("filter",))  # fmt: skip
        for name in sorted(self.filter_names):
            fam.add_metric([name], errors.get(name, 0))
        yield fam
        expiry = GaugeMetricFamily(
            "imapproxy_tls_certificate_expiry_timestamp_seconds",
            "notAfter of the certificate a listener serves (Unix time)",
            labels=("listener",),
        )
        for name, value in sorted(self._cert_expiry.items()):
            expiry.add_metric([name], value)
        yield expiry

    def _bytes(self) -> Iterator[Metric]:
        with self._lock:
            totals = {name: t[:] for name, t in self._closed_bytes.items()}
            for live in list(self._live.values()):
                t = totals.setdefault(live.listener, [0, 0, 0, 0])
                s = live.stats
                t[0] += s.bytes_from_client
                t[1] += s.bytes_to_client
                t[2] += s.bytes_from_upstream
                t[3] += s.bytes_to_upstream
        client = CounterMetricFamily("imapproxy_client_bytes_total",
                                     "Bytes on the client leg (TLS payload)",
                                     labels=("listener", "direction"))  # fmt: skip
        upstream = CounterMetricFamily("imapproxy_upstream_bytes_total",
                                       "Bytes on the upstream leg (TLS payload)",
                                       labels=("upstream", "direction"))  # fmt: skip
        received = sent = 0
        for name, t in sorted(totals.items()):
            client.add_metric([name, "received"], t[0])
            client.add_metric([name, "sent"], t[1])
            received += t[2]
            sent += t[3]
        if self._config is not None:
            upstream.add_metric([self._upstream[0], "received"], received)
            upstream.add_metric([self._upstream[0], "sent"], sent)
        yield client
        yield upstream
