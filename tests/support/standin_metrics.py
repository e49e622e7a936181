"""A stand-in /metrics endpoint with the metric set of /work/wt/_notes/metrics-names.md.

Test-only: it lets the dashboard harness (Prometheus + every dashboard query) be exercised
without the proxy's exporter.  Each scrape moves every counter and histogram a little, so
rates are non-zero and quantiles defined, the way a proxy carrying sessions would look.
"""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.process_collector import ProcessCollector

LISTENERS = ("imap@127.0.0.1:10143", "imaps@127.0.0.1:10993")
UPSTREAMS = ("127.0.0.1:143",)
COMMANDS = ("CAPABILITY", "LOGIN", "SELECT", "UID FETCH", "APPEND", "IDLE", "LOGOUT", "other")
RESULTS = ("OK", "NO", "BAD", "BYE", "blocked", "aborted")


class StandinExporter:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=r)
        Gauge("imapproxy_build_info", "build", ["version", "python"], registry=r).labels(
            "0.1.0", "3.11.7"
        ).set(1)
        self.accepted = Counter(
            "imapproxy_client_connections_accepted_total", "a", ["listener"], registry=r
        )
        self.rejected = Counter(
            "imapproxy_client_connections_rejected_total", "r", ["listener", "reason"], registry=r
        )
        self.active = Gauge(
            "imapproxy_client_connections_active", "a", ["listener", "tls"], registry=r
        )
        Gauge("imapproxy_client_connections_limit", "l", registry=r).set(1000)
        Gauge("imapproxy_client_connections_per_address_limit", "l", registry=r).set(100)
        self.closed = Counter(
            "imapproxy_client_connections_closed_total", "c", ["listener", "reason"], registry=r
        )
        self.session = Histogram(
            "imapproxy_client_session_duration_seconds",
            "s",
            ["listener"],
            buckets=(1, 10, 60, 300, 900, 3600, 86400),
            registry=r,
        )
        self.authd = Gauge("imapproxy_sessions_authenticated", "a", ["listener"], registry=r)
        self.idling = Gauge("imapproxy_sessions_idling", "i", ["listener"], registry=r)
        self.hs = Counter("imapproxy_tls_handshakes_total", "h", ["side", "version"], registry=r)
        self.hsf = Counter(
            "imapproxy_tls_handshake_failures_total", "f", ["side", "reason"], registry=r
        )
        Gauge("imapproxy_tls_certificate_expiry_timestamp_seconds", "e", registry=r).set(
            time.time() + 90 * 86400
        )
        self.cmds = Counter("imapproxy_commands_total", "c", ["command", "result"], registry=r)
        self.cmd_dur = Histogram(
            "imapproxy_command_duration_seconds",
            "d",
            ["command"],
            buckets=(0.001, 0.01, 0.1, 1, 10, 60),
            registry=r,
        )
        self.idle_dur = Histogram(
            "imapproxy_idle_duration_seconds", "d", buckets=(1, 10, 60, 600, 1800), registry=r
        )
        self.lit = Histogram(
            "imapproxy_client_literal_size_bytes",
            "l",
            buckets=(1024, 65536, 1048576, 268435456),
            registry=r,
        )
        self.cbytes = Counter(
            "imapproxy_client_bytes_total", "b", ["listener", "direction"], registry=r
        )
        self.ubytes = Counter(
            "imapproxy_upstream_bytes_total", "b", ["upstream", "direction"], registry=r
        )
        self.verdicts = Counter(
            "imapproxy_filter_verdicts_total", "v", ["filter", "verdict"], registry=r
        )
        self.ferr = Counter("imapproxy_filter_errors_total", "e", ["filter"], registry=r)
        self.blocks = Counter("imapproxy_policy_blocks_total", "b", ["filter", "rule"], registry=r)
        self.attempts = Counter(
            "imapproxy_upstream_connect_attempts_total", "a", ["upstream"], registry=r
        )
        self.connect = Histogram(
            "imapproxy_upstream_connect_duration_seconds",
            "c",
            ["upstream"],
            buckets=(0.001, 0.01, 0.1, 1, 10),
            registry=r,
        )
        self.uerr = Counter(
            "imapproxy_upstream_connect_errors_total", "e", ["upstream", "reason"], registry=r
        )
        self.uactive = Gauge("imapproxy_upstream_connections_active", "a", ["upstream"], registry=r)
        self.auth = Counter(
            "imapproxy_auth_attempts_total", "a", ["listener", "mechanism", "result"], registry=r
        )
        self.proto = Counter("imapproxy_protocol_errors_total", "p", ["side", "reason"], registry=r)
        self.inject = Counter("imapproxy_starttls_injections_total", "i", ["side"], registry=r)
        self.reloads = Counter("imapproxy_config_reloads_total", "r", ["result"], registry=r)
        Gauge("imapproxy_config_last_reload_successful", "ok", registry=r).set(1)
        Gauge("imapproxy_config_last_reload_success_timestamp_seconds", "t", registry=r).set(
            time.time()
        )
        self.lock = threading.Lock()

    def tick(self) -> None:
        """What a second of a busy proxy does to the metrics."""
        for lst in LISTENERS:
            self.accepted.labels(lst).inc(3)
            self.rejected.labels(lst, "max_sessions").inc()
            self.active.labels(lst, "implicit" if lst.startswith("imaps") else "starttls").set(5)
            self.closed.labels(lst, "logout").inc(2)
            self.session.labels(lst).observe(42)
            self.authd.labels(lst).set(4)
            self.idling.labels(lst).set(2)
            self.cbytes.labels(lst, "received").inc(1000)
            self.cbytes.labels(lst, "sent").inc(50000)
            for result in ("success", "failure"):
                self.auth.labels(lst, "LOGIN", result).inc()
        for side in ("client", "upstream"):
            self.hs.labels(side, "TLSv1.3").inc(2)
            self.hsf.labels(side, "eof").inc()
            self.proto.labels(side, "max_line_bytes").inc()
            self.inject.labels(side).inc()
        for cmd in COMMANDS:
            for result in RESULTS:
                self.cmds.labels(cmd, result).inc()
            if cmd != "IDLE":
                self.cmd_dur.labels(cmd).observe(0.004)
        self.idle_dur.observe(120)
        self.lit.observe(5000)
        for up in UPSTREAMS:
            self.ubytes.labels(up, "received").inc(50000)
            self.ubytes.labels(up, "sent").inc(1000)
            self.attempts.labels(up).inc(3)
            self.connect.labels(up).observe(0.003)
            self.uerr.labels(up, "refused").inc()
            self.uactive.labels(up).set(10)
        self.verdicts.labels("relay", "answer").inc()
        self.ferr.labels("capabilities").inc()
        self.blocks.labels("policy", "no-delete").inc()
        self.reloads.labels("success").inc()

    def exposition(self) -> bytes:
        with self.lock:
            self.tick()
            return generate_latest(self.registry)


@contextmanager
def serving_standin(host: str = "127.0.0.1") -> Iterator[str]:
    """Serve a StandinExporter at ``http://HOST:PORT/metrics``; yields ``HOST:PORT``."""
    exporter = StandinExporter()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] != "/metrics":
                self.send_error(404)
                return
            body = exporter.exposition()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer((host, 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"{host}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
