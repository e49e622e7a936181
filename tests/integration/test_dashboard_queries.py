"""Every query of every shipped dashboard, and the alert rules, run by a real Prometheus
scraping the real proxy while real sessions go through it to Dovecot.

Prometheus (the Debian binary) starts on 127.0.0.1 with a generated config in a temp dir: it
scrapes ``imapproxy run --metrics`` every second as job ``imapproxy`` and evaluates
dashboards/alerts.yml.  After a scrape of the idle proxy, imaplib and a raw client do what
the panels show (logins that succeed and fail, commands with every result, an APPEND
literal, a SUBSCRIBE a policy filter blocks, IDLE, a failed TLS handshake); after two more
scrapes each panel, variable and annotation query is sent to ``/api/v1/query`` with the
template variables substituted as Grafana would ($job and $instance the scraped target,
$listener All, $__rate_interval 1 m).  A panel or variable query that errors or returns no
series fails; an annotation (restart markers) must only not error.
"""

from __future__ import annotations

import contextlib
import imaplib
import re
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.dashboards import grafana
from tests.integration.conftest import HOST, TIMEOUT, TLS_NAME, RawClient
from tests.support.certs import TlsCerts
from tests.support.dovecot import DovecotServer
from tests.support.prometheus import PrometheusServer, QueryResult, ToolMissingError
from tests.support.proxy import ProxyProcess, free_port

JOB = "imapproxy"
ALERTS = grafana.DASHBOARD_DIR / "alerts.yml"
BUILTINS = {**grafana.BUILTINS, "__rate_interval": "1m"}  # generous: a loaded machine
MESSAGE = b"From: a@example.org\r\nSubject: dashboards\r\n\r\n" + b"x" * 3000 + b"\r\n"


@dataclass
class Stack:
    proxy: ProxyProcess
    prometheus: PrometheusServer
    target: str  # the proxy's metrics address, Prometheus's "instance"

    def values(self, selection: str) -> dict[str, str]:
        """The template variables as Grafana fills them in: ``one`` (this job and instance
        picked) or ``all`` ("All" in every selector: the variables' allValue)."""
        if selection == "all":
            return {"job": ".*", "instance": ".*", "listener": ".*", **BUILTINS}
        return {"job": JOB, "instance": self.target, "listener": ".*", **BUILTINS}


def _start_proxy(
    workdir: Path, certs: TlsCerts, dovecot: DovecotServer
) -> tuple[ProxyProcess, int, int, int]:
    plain, tls, metrics = free_port(), free_port(), free_port()
    config = workdir / "proxy.toml"
    # a policy-style filter (tests/support/blocker.py): SUBSCRIBE is blocked by a named rule
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
        "--upstream", f"{dovecot.host}:{dovecot.port}", "--config", str(config),
    ]  # fmt: skip
    # wait for the metrics port and the log lines of both listeners: a probe of the IMAP
    # ports would be a session on the dashboards
    proxy = ProxyProcess(args, workdir=workdir, wait_ports=[(HOST, metrics)])
    proxy.__enter__()
    deadline = time.monotonic() + 15
    while proxy.log().count("listening on") < 2:
        if time.monotonic() > deadline:
            proxy.stop()
            raise AssertionError(f"the proxy's listeners did not come up:\n{proxy.log()}")
        time.sleep(0.05)
    return proxy, plain, tls, metrics


def _traffic(certs: TlsCerts, plain: int, tls: int, user: str, password: str) -> RawClient:
    """Sessions that move every panel; returns a client left inside IDLE (closed by the
    caller) so the session gauges are non-zero while Prometheus scrapes."""
    ctx = certs.client_context()
    with imaplib.IMAP4(TLS_NAME, plain, timeout=TIMEOUT) as m:
        assert m.starttls(ssl_context=ctx)[0] == "OK"
        assert m.login(user, password)[0] == "OK"
        assert m.append("INBOX", None, None, MESSAGE)[0] == "OK"  # a client literal
        assert m.select("INBOX")[0] == "OK"
        assert m.search(None, "ALL")[0] == "OK"
        assert m.uid("FETCH", "1:*", "(FLAGS BODY.PEEK[])")[0] == "OK"
        assert m.store("1", "+FLAGS", "\\Seen")[0] == "OK"
        assert m.select("No-Such-Mailbox")[0] == "NO"  # the server's NO
        assert m.subscribe("INBOX")[0] == "NO"  # blocked by the policy filter's rule
        with pytest.raises(imaplib.IMAP4.error, match="BAD"):
            m.xatom("XBOGUS")  # the server's BAD, counted as command "other"
        assert m.noop()[0] == "OK"
        m.logout()
    with imaplib.IMAP4_SSL(TLS_NAME, tls, ssl_context=ctx, timeout=TIMEOUT) as m:
        with pytest.raises(imaplib.IMAP4.error):
            m.login(user, "not-" + password)  # a failed login
        m.logout()
    with socket.create_connection((HOST, tls), timeout=TIMEOUT) as raw:
        raw.sendall(b"a LOGIN plaintext on the TLS port\r\n")  # a failed TLS handshake
        with contextlib.suppress(OSError):
            while raw.recv(4096):  # until the proxy closes it
                pass
    idler = RawClient.connect(tls, ctx)
    login = idler.command(b"L", b'LOGIN "%s" "%s"' % (user.encode(), password.encode()))
    assert login[-1].startswith(b"L OK"), login
    assert idler.command(b"S", b"SELECT INBOX")[-1].startswith(b"S OK")
    for tag in (b"I1", b"I2"):  # one IDLE that ends (its duration), one left running
        idler.send(tag + b" IDLE\r\n")
        idler.expect_continuation()
        if tag == b"I1":
            idler.send(b"DONE\r\n")
            assert idler.read_until_tagged(tag)[-1].startswith(b"I1 OK")
    return idler


@pytest.fixture(scope="module")
def stack(
    dovecot: DovecotServer, tls_certs: TlsCerts, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("dashboards")
    proxy, plain, tls, metrics = _start_proxy(workdir, tls_certs, dovecot)
    target = f"{HOST}:{metrics}"
    prometheus = PrometheusServer(
        [target], workdir=workdir / "prometheus", job=JOB, rule_files=[ALERTS]
    )
    idler: RawClient | None = None
    try:
        try:
            prometheus.spawn()
        except ToolMissingError as exc:
            pytest.fail(str(exc), pytrace=False)
        user, password = "dash-user", "dash-password"
        dovecot.add_user(user, password)  # ~1 s, while Prometheus starts
        prometheus.wait_ready()
        prometheus.wait_scrapes(1)  # the proxy before the traffic
        idler = _traffic(tls_certs, plain, tls, user, password)
        prometheus.wait_scrapes(2)  # and after it
        yield Stack(proxy, prometheus, target)
    finally:
        if idler is not None:
            idler.close()
        prometheus.stop()
        proxy.stop()


def _first_value(res: QueryResult, **labels: str) -> float | None:
    for series in res.result:
        metric = series.get("metric", {}) if isinstance(series, dict) else {}
        if all(metric.get(k) == v for k, v in labels.items()):
            return float(series["value"][1])
    return None


# What some panels must show after _traffic, by panel title: (labels of the series, check)
SHOWN: dict[str, tuple[dict[str, str], Callable[[float], bool]]] = {
    "Commands/s": ({}, lambda v: v > 0),
    "Commands by result": ({"result": "blocked"}, lambda v: v > 0),
    "Authenticated sessions": ({}, lambda v: v >= 1),  # the others may still be closing
    "IDLE sessions": ({}, lambda v: v == 1),
    "Auth failure ratio": ({}, lambda v: 0 < v < 1),
    "Filter rejections": ({"filter": "blocker"}, lambda v: v > 0),
    "Policy blocks by rule": ({"filter": "blocker", "rule": "no-subscribe"}, lambda v: v > 0),
    "TLS handshake failures": ({"side": "client", "reason": "protocol"}, lambda v: v > 0),
    "Client literal sizes": ({}, lambda v: 1024 <= v <= 4096),
    "Certificate expires in": ({}, lambda v: v > 86400),
    "Proxies up": ({}, lambda v: v == 1),
    "Last reload": ({}, lambda v: v == 1),
}


@pytest.mark.parametrize("selection", ["one", "all"])
@pytest.mark.parametrize("path", grafana.dashboard_files(), ids=lambda p: p.name)
def test_every_dashboard_query_returns_series(path: Path, selection: str, stack: Stack) -> None:
    failures: list[str] = []
    shown: dict[str, Any] = {}
    queries = grafana.queries(path)
    for query in queries:
        expr = grafana.substitute(query.expr, stack.values(selection))
        res = stack.prometheus.query(expr)
        if res.error is not None:
            failures.append(f"{query.where}: ERROR {res.error}\n    {expr}")
        elif query.must_return and res.series == 0:
            failures.append(f"{query.where}: no series\n    {expr}")
        title = re.sub(r"^panel \d+ '(.*)' [A-Z]$", r"\1", query.where)
        if title in SHOWN and title not in shown and query.where.endswith(" A"):
            shown[title] = _first_value(res, **SHOWN[title][0])
    assert not failures, f"{len(failures)} of {len(queries)} queries of {path.name} failed:\n" + (
        "\n".join(failures)
    )
    if path.name == "imapproxy.json":
        wrong = {
            title: shown.get(title) for title, (_, ok) in SHOWN.items()
            if shown.get(title) is None or not ok(shown[title])
        }  # fmt: skip
        assert not wrong, f"panels that do not show the traffic: {wrong}"


def test_alert_rules_evaluate_on_the_real_metrics(stack: Stack) -> None:
    """Prometheus loaded dashboards/alerts.yml and evaluates every rule without error, and
    every metric a rule names is one the proxy exports (a misspelt name is no error to
    Prometheus: the rule would simply never fire)."""
    rules = stack.prometheus.rules()
    names = set(re.findall(r"^\s+- alert: (\w+)$", ALERTS.read_text(), re.M))
    assert {r["name"] for r in rules} == names
    for rule in rules:
        assert rule["health"] == "ok", (rule["name"], rule.get("lastError"))
    for metric in sorted(set(re.findall(r"\b(imapproxy_\w+)", ALERTS.read_text()))):
        res = stack.prometheus.query(f'count({{__name__="{metric}", job="{JOB}"}})')
        assert res.error is None and res.series == 1, f"alerts.yml names {metric}: not exported"


# Exported metrics no panel shows, and why
NOT_SHOWN = {
    "imapproxy_client_connections_per_address_limit": "no per-address gauge to set it against",
    "imapproxy_config_last_reload_success_timestamp_seconds": "'Last reload' shows the outcome",
}


def test_the_dashboards_cover_every_exported_metric(stack: Stack) -> None:
    """Every imapproxy_* family the proxy exports is on a dashboard (or in NOT_SHOWN with
    its reason), so a metric added to the exporter is not forgotten here."""
    exported = {
        re.sub(r"_(bucket|sum|count)$", "", name)
        for name in stack.prometheus.metric_names(f'{{job="{JOB}", __name__=~"imapproxy_.+"}}')
    }
    assert len(exported) > 20, exported
    text = "\n".join(path.read_text() for path in grafana.dashboard_files())
    used = {re.sub(r"_(bucket|sum|count)$", "", n) for n in re.findall(r"imapproxy_\w+", text)}
    missing = sorted(exported - used - NOT_SHOWN.keys())
    assert not missing, f"exported but on no dashboard: {missing}"
    stale = sorted(NOT_SHOWN.keys() - exported)
    assert not stale, f"NOT_SHOWN names metrics the proxy does not export: {stale}"
