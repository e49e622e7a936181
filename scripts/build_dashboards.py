"""Write dashboards/imapproxy.json, the Grafana dashboard, from the panel list below.

The JSON is the shipped artefact (import it, provision it); this script is how it is kept
consistent (one datasource reference, one selector, ids and grid positions computed), and
tests/dashboards/test_dashboard_static.py fails when the file and this script disagree.
Edit here, then run ``.venv/bin/python scripts/build_dashboards.py``.

One dashboard with a row per subject, not several dashboards: one import and one provisioned
file, the job/instance/listener selection shared by every row, the overview always on top, and
Grafana only runs the queries of panels in view (collapse a row to skip its queries).

Grafana model: the classic JSON, ``schemaVersion`` 39 (Grafana 10.4; 11 and 12 migrate it on
load, none migrates backwards).  The datasource is the template variable ``datasource``; the
import wizard's ``DS_PROMETHEUS`` input only preselects it, so file provisioning (which
ignores ``__inputs``) works as well.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "dashboards" / "imapproxy.json"

DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'job=~"$job", instance=~"$instance"'
LSEL = SEL + ', listener=~"$listener"'
RI = "[$__rate_interval]"


def sel(extra: str = "", *, listener: bool = False) -> str:
    base = LSEL if listener else SEL
    return "{" + base + (", " + extra if extra else "") + "}"


# ----------------------------------------------------------------------------- panels


@dataclass
class Target:
    expr: str
    legend: str = ""
    instant: bool = False
    fmt: str = "time_series"


@dataclass
class Panel:
    title: str
    kind: str  # timeseries, stat, gauge, heatmap, table, bargauge
    targets: list[Target]
    unit: str
    description: str
    w: int = 8
    h: int = 8
    stack: bool = False
    thresholds: list[tuple[float | None, str]] = field(default_factory=list)
    mappings: list[dict[str, Any]] = field(default_factory=list)
    y_unit: str = ""  # heatmap: the unit of the buckets (le)
    # many series (every label combination exists, most at zero): a legend table on the
    # right, busiest first, instead of a long list under the graph
    many: bool = False
    min: float | None = None
    max: float | None = None


def ts(title: str, desc: str, unit: str, *targets: Target, **kw: Any) -> Panel:
    return Panel(title, "timeseries", list(targets), unit, desc, **kw)


def stat(title: str, desc: str, unit: str, expr: str, **kw: Any) -> Panel:
    kw.setdefault("w", 3)
    kw.setdefault("h", 4)
    return Panel(title, "stat", [Target(expr, instant=True)], unit, desc, **kw)


def heatmap(title: str, desc: str, y_unit: str, metric: str, extra: str = "", **kw: Any) -> Panel:
    expr = f"sum by (le) (increase({metric}_bucket{sel(extra)}{RI}))"
    target = Target(expr, "{{le}}", fmt="heatmap")
    return Panel(title, "heatmap", [target], "short", desc, y_unit=y_unit, **kw)


def quantiles(metric: str, extra: str = "", by: str = "") -> list[Target]:
    group = f"le, {by}" if by else "le"
    out = []
    for q in ("0.5", "0.95", "0.99"):
        expr = f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket{sel(extra)}{RI})))"
        legend = f"p{q[2:].ljust(2, '0')}" + (f" {{{{{by}}}}}" if by else "")
        out.append(Target(expr, legend))
    return out


def rate(metric: str, by: str, extra: str = "", *, listener: bool = False) -> str:
    return f"sum by ({by}) (rate({metric}{sel(extra, listener=listener)}{RI}))"


FAILED = 'result="failure"'
NOT_OK = 'result!="OK"'


def rows() -> list[tuple[str, list[Panel]]]:
    auth = "imapproxy_auth_attempts_total"
    cmds = "imapproxy_commands_total"
    return [
        (
            "Overview",
            [
                stat(
                    "Proxies up",
                    "Scrape targets of the selected job/instance that answered the last scrape.",
                    "none",
                    f"sum(up{sel()})",
                    thresholds=[(None, "red"), (1, "green")],
                ),
                stat(
                    "Client connections",
                    "Client sessions open now, every selected instance and listener.",
                    "short",
                    f"sum(imapproxy_client_connections_active{sel(listener=True)})",
                ),
                stat(
                    "Connection usage",
                    "Open sessions over the configured max_sessions (per instance, the "
                    "fullest one).",
                    "percentunit",
                    "max(sum by (job, instance) (imapproxy_client_connections_active"
                    f"{sel()}) / on (job, instance) "
                    f"(imapproxy_client_connections_limit{sel()} > 0))",
                    thresholds=[(None, "green"), (0.75, "orange"), (0.9, "red")],
                    min=0,
                    max=1,
                ),
                stat(
                    "Authenticated sessions",
                    "Sessions past a successful LOGIN/AUTHENTICATE (or PREAUTH).",
                    "short",
                    f"sum(imapproxy_sessions_authenticated{sel(listener=True)})",
                ),
                stat(
                    "IDLE sessions",
                    "Sessions inside IDLE now.",
                    "short",
                    f"sum(imapproxy_sessions_idling{sel(listener=True)})",
                ),
                stat(
                    "Commands/s",
                    "Client commands per second, all results.",
                    "reqps",
                    f"sum(rate({cmds}{sel()}{RI}))",
                ),
                stat(
                    "Auth failure ratio",
                    "Failed LOGIN/AUTHENTICATE over all attempts in the rate window (no "
                    "data when nobody tried).",
                    "percentunit",
                    f"sum(rate({auth}{sel(FAILED, listener=True)}{RI})) / "
                    f"(sum(rate({auth}{sel(listener=True)}{RI})) > 0)",
                    thresholds=[(None, "green"), (0.2, "orange"), (0.5, "red")],
                ),
                stat(
                    "Certificate expires in",
                    "Time left on the served certificate (--cert), the soonest of the "
                    "selected instances and listeners.",
                    "dtdurations",
                    "min(imapproxy_tls_certificate_expiry_timestamp_seconds"
                    f"{sel(listener=True)}) - time()",
                    thresholds=[(None, "red"), (3 * 86400, "orange"), (14 * 86400, "green")],
                ),
            ],
        ),
        (
            "Connections and TLS",
            [
                ts(
                    "Active client connections",
                    "Open sessions by listener and TLS mode (a STARTTLS upgrade moves a "
                    "session from none to starttls); the dashed line is max_sessions.",
                    "short",
                    Target(
                        "sum by (listener, tls) (imapproxy_client_connections_active"
                        f"{sel(listener=True)})",
                        "{{listener}} {{tls}}",
                    ),
                    Target(
                        f"sum by (instance) (imapproxy_client_connections_limit{sel()} > 0)",
                        "limit {{instance}}",
                    ),
                ),
                ts(
                    "Connections accepted and rejected",
                    "New client connections per second; rejected ones (a session limit "
                    "was reached) by reason.",
                    "cps",
                    Target(
                        rate(
                            "imapproxy_client_connections_accepted_total", "listener", listener=True
                        ),
                        "accepted {{listener}}",
                    ),
                    Target(
                        rate(
                            "imapproxy_client_connections_rejected_total",
                            "listener, reason",
                            listener=True,
                        ),
                        "rejected {{listener}} {{reason}}",
                    ),
                ),
                ts(
                    "Sessions closed by reason",
                    "Sessions ended per second, by why they ended.",
                    "cps",
                    Target(
                        rate("imapproxy_client_connections_closed_total", "reason", listener=True),
                        "{{reason}}",
                    ),
                    stack=True,
                    many=True,
                ),
                ts(
                    "TLS handshakes",
                    "Completed TLS handshakes per second by side (client: implicit TLS and "
                    "STARTTLS) and protocol version.",
                    "cps",
                    Target(
                        rate("imapproxy_tls_handshakes_total", "side, version"),
                        "{{side}} {{version}}",
                    ),
                ),
                ts(
                    "TLS handshake failures",
                    "Failed TLS handshakes per second by side and reason.",
                    "cps",
                    Target(
                        rate("imapproxy_tls_handshake_failures_total", "side, reason"),
                        "{{side}} {{reason}}",
                    ),
                    many=True,
                ),
                heatmap(
                    "Session duration",
                    "How long sessions lasted (connect to close), sessions ended per bucket.",
                    "s",
                    "imapproxy_client_session_duration_seconds",
                    'listener=~"$listener"',
                ),
            ],
        ),
        (
            "Commands",
            [
                ts(
                    "Commands by command",
                    "Client commands per second by command name (UID forms apart; names "
                    "outside the allow-list are 'other').",
                    "reqps",
                    Target(rate(cmds, "command"), "{{command}}"),
                    stack=True,
                    w=12,
                    many=True,
                ),
                ts(
                    "Commands by result",
                    "OK/NO/BAD from the server (or the proxy), BYE before the answer, blocked "
                    "by a filter or the relay, aborted by the connection ending first.",
                    "reqps",
                    Target(rate(cmds, "result"), "{{result}}"),
                    stack=True,
                    w=12,
                ),
                ts(
                    "Command latency",
                    "Command sent upstream to its tagged completion, all commands but IDLE.",
                    "s",
                    *quantiles("imapproxy_command_duration_seconds"),
                ),
                ts(
                    "p95 latency by command",
                    "95th percentile of the command latency per command.",
                    "s",
                    *quantiles("imapproxy_command_duration_seconds", by="command")[1:2],
                    many=True,
                ),
                heatmap(
                    "Command latency distribution",
                    "Commands answered per latency bucket (IDLE apart).",
                    "s",
                    "imapproxy_command_duration_seconds",
                ),
                ts(
                    "Command error ratio",
                    "Commands that did not end OK (NO, BAD, BYE, blocked, aborted) over all.",
                    "percentunit",
                    Target(
                        f"sum(rate({cmds}{sel(NOT_OK)}{RI})) / (sum(rate({cmds}{sel()}{RI})) > 0)",
                        "not OK",
                    ),
                    min=0,
                ),
                ts(
                    "IDLE duration",
                    "How long IDLE commands last, start to the server's completion.",
                    "s",
                    *quantiles("imapproxy_idle_duration_seconds")[:2],
                ),
                Panel(
                    "Top commands",
                    "table",
                    [
                        Target(
                            f"topk(10, sum by (command) (increase({cmds}{sel()}[$__range])))",
                            instant=True,
                            fmt="table",
                        )
                    ],
                    "short",
                    "The ten most used commands over the dashboard's time range.",
                ),
            ],
        ),
        (
            "Traffic",
            [
                ts(
                    "Client traffic",
                    "Bytes per second on the client leg (TLS payload) by listener and "
                    "direction (received from clients, sent to clients).",
                    "Bps",
                    Target(
                        rate("imapproxy_client_bytes_total", "listener, direction", listener=True),
                        "{{listener}} {{direction}}",
                    ),
                ),
                ts(
                    "Upstream traffic",
                    "Bytes per second on the upstream leg by upstream and direction; differs "
                    "from the client leg when filters rewrite or answer.",
                    "Bps",
                    Target(
                        rate("imapproxy_upstream_bytes_total", "upstream, direction"),
                        "{{upstream}} {{direction}}",
                    ),
                ),
                ts(
                    "Client literal sizes",
                    "Sizes of literals in client commands (APPEND bodies mostly).",
                    "bytes",
                    *quantiles("imapproxy_client_literal_size_bytes"),
                ),
            ],
        ),
        (
            "Upstream",
            [
                ts(
                    "Upstream connect latency",
                    "TCP connect + TLS/STARTTLS + greeting, successful set-ups.",
                    "s",
                    *quantiles("imapproxy_upstream_connect_duration_seconds"),
                ),
                ts(
                    "Upstream connect attempts and errors",
                    "Upstream set-ups started per second, and the failed ones by reason.",
                    "cps",
                    Target(
                        rate("imapproxy_upstream_connect_attempts_total", "upstream"),
                        "attempts {{upstream}}",
                    ),
                    Target(
                        rate("imapproxy_upstream_connect_errors_total", "upstream, reason"),
                        "error {{upstream}} {{reason}}",
                    ),
                    many=True,
                ),
                ts(
                    "Upstream connections",
                    "Upstream connections open now.",
                    "short",
                    Target(
                        f"sum by (upstream) (imapproxy_upstream_connections_active{sel()})",
                        "{{upstream}}",
                    ),
                ),
            ],
        ),
        (
            "Authentication",
            [
                ts(
                    "Authentication attempts",
                    "LOGIN and AUTHENTICATE per second by mechanism and result (success, "
                    "failure, blocked by the proxy, aborted).",
                    "reqps",
                    Target(
                        rate(auth, "mechanism, result", listener=True), "{{mechanism}} {{result}}"
                    ),
                    w=12,
                    many=True,
                ),
                ts(
                    "Authentication failure ratio",
                    "Failures over all attempts (no data when nobody tried).",
                    "percentunit",
                    Target(
                        f"sum by (listener) (rate({auth}{sel(FAILED, listener=True)}"
                        f"{RI})) / (sum by (listener) (rate({auth}{sel(listener=True)}{RI})) > 0)",
                        "{{listener}}",
                    ),
                    w=12,
                    min=0,
                    max=1,
                ),
            ],
        ),
        (
            "Filters and policy",
            [
                ts(
                    "Filter rejections",
                    "The proxy's own NO/BAD replies to commands per second, by the filter "
                    "that made them ('relay': the relay itself - malformed command, tag in "
                    "use, too long to inspect).",
                    "reqps",
                    Target(rate("imapproxy_filter_rejections_total", "filter"), "{{filter}}"),
                ),
                ts(
                    "Filter verdicts",
                    "Verdicts other than pass per second, by filter and verdict: replace "
                    "(a rewrite), reject, answer, drop (an untagged response), disconnect.",
                    "reqps",
                    Target(
                        rate("imapproxy_filter_verdicts_total", "filter, verdict"),
                        "{{filter}} {{verdict}}",
                    ),
                ),
                ts(
                    "Policy blocks by rule",
                    "Commands blocked per second by policy filters, by the configured rule "
                    "that blocked them.",
                    "reqps",
                    Target(
                        rate("imapproxy_policy_blocks_total", "filter, rule"), "{{filter}} {{rule}}"
                    ),
                ),
                ts(
                    "Filter errors",
                    "Filter hooks that raised, per second, by filter.",
                    "ops",
                    Target(rate("imapproxy_filter_errors_total", "filter"), "{{filter}}"),
                ),
                ts(
                    "Protocol errors",
                    "Protocol violations the relay caught, by side and the limit or rule.",
                    "ops",
                    Target(
                        rate("imapproxy_protocol_errors_total", "side, reason"),
                        "{{side}} {{reason}}",
                    ),
                    many=True,
                ),
                ts(
                    "STARTTLS injections discarded",
                    "Sessions where bytes sent after the STARTTLS OK but before TLS were "
                    "discarded (an injection attempt).",
                    "ops",
                    Target(rate("imapproxy_starttls_injections_total", "side"), "{{side}}"),
                ),
                ts(
                    "Configuration reloads",
                    "Configuration reloads in each rate interval, by result.",
                    "short",
                    Target(
                        f"sum by (result) (increase(imapproxy_config_reloads_total{sel()}{RI}))",
                        "{{result}}",
                    ),
                ),
            ],
        ),
        (
            "Process",
            [
                ts(
                    "CPU",
                    "CPU time per second of each proxy process (1 = one core).",
                    "percentunit",
                    Target(f"rate(process_cpu_seconds_total{sel()}{RI})", "{{instance}}"),
                ),
                ts(
                    "Resident memory",
                    "Resident set size of each proxy process.",
                    "bytes",
                    Target(f"process_resident_memory_bytes{sel()}", "{{instance}}"),
                ),
                ts(
                    "Open file descriptors",
                    "Open file descriptors (sockets included) against the process limit.",
                    "short",
                    Target(f"process_open_fds{sel()}", "open {{instance}}"),
                    Target(f"process_max_fds{sel()}", "max {{instance}}"),
                ),
                stat(
                    "Uptime",
                    "Time since the oldest selected process started.",
                    "dtdurations",
                    f"time() - max(process_start_time_seconds{sel()})",
                    w=6,
                ),
                stat(
                    "Last reload",
                    "Whether the last configuration reload (or the start-up) succeeded, "
                    "per instance; a failed one leaves the previous configuration running.",
                    "none",
                    f"min(imapproxy_config_last_reload_successful{sel()})",
                    w=6,
                    thresholds=[(None, "red"), (1, "green")],
                    mappings=[
                        {
                            "type": "value",
                            "options": {
                                "0": {"index": 0, "text": "failed", "color": "red"},
                                "1": {"index": 1, "text": "OK", "color": "green"},
                            },
                        }
                    ],
                ),
                Panel(
                    "Versions",
                    "table",
                    [
                        Target(
                            f"count by (version, python) (imapproxy_build_info{sel()})",
                            instant=True,
                            fmt="table",
                        )
                    ],
                    "short",
                    "imapproxy and Python versions running, with how many instances run each.",
                    w=12,
                    h=4,
                ),
            ],
        ),
    ]


# ----------------------------------------------------------------------------- JSON


def target_json(t: Target, ref: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "datasource": DS,
        "editorMode": "code",
        "expr": t.expr,
        "format": t.fmt,
        "instant": t.instant,
        "legendFormat": t.legend or "__auto",
        "range": not t.instant,
        "refId": ref,
    }
    return out


def thresholds_json(steps: list[tuple[float | None, str]]) -> dict[str, Any]:
    steps = steps or [(None, "green")]
    return {
        "mode": "absolute",
        "steps": [{"color": color, "value": value} for value, color in steps],
    }


def panel_json(p: Panel, pid: int, x: int, y: int) -> dict[str, Any]:
    defaults: dict[str, Any] = {
        "unit": p.unit,
        "thresholds": thresholds_json(p.thresholds),
        "mappings": p.mappings,
    }
    if p.min is not None:
        defaults["min"] = p.min
    if p.max is not None:
        defaults["max"] = p.max
    options: dict[str, Any]
    if p.kind == "timeseries":
        defaults["color"] = {"mode": "palette-classic"}
        defaults["custom"] = {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 10 if p.stack else 0,
            "showPoints": "never",
            "spanNulls": False,
            "stacking": {"group": "A", "mode": "normal" if p.stack else "none"},
            "axisSoftMin": 0,
        }
        legend: dict[str, Any] = {
            "calcs": [],
            "displayMode": "list",
            "placement": "bottom",
            "showLegend": True,
        }
        if p.many:
            legend.update(
                calcs=["mean", "max"], displayMode="table", placement="right",
                sortBy="Mean", sortDesc=True,
            )  # fmt: skip
        options = {"legend": legend, "tooltip": {"mode": "multi", "sort": "desc"}}
    elif p.kind == "stat":
        defaults["color"] = {"mode": "thresholds"}
        options = {
            "colorMode": "value",
            "graphMode": "none",
            "justifyMode": "auto",
            "orientation": "auto",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "textMode": "auto",
        }
    elif p.kind == "heatmap":
        options = {
            "calculate": False,
            "cellGap": 1,
            "color": {
                "mode": "scheme",
                "scheme": "Oranges",
                "exponent": 0.5,
                "fill": "dark-orange",
                "reverse": False,
                "scale": "exponential",
                "steps": 64,
            },
            "filterValues": {"le": 1e-9},
            "legend": {"show": True},
            "rowsFrame": {"layout": "auto"},
            # "show" for Grafana 10.4 without the new tooltips, "mode" for 11 and later
            "tooltip": {
                "mode": "single",
                "show": True,
                "showColorScale": False,
                "yHistogram": False,
            },
            "yAxis": {"axisPlacement": "left", "reverse": False, "unit": p.y_unit},
        }
    elif p.kind == "table":
        options = {"cellHeight": "sm", "footer": {"show": False}, "showHeader": True}
    else:
        raise ValueError(p.kind)
    out: dict[str, Any] = {
        "datasource": DS,
        "description": p.description,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "gridPos": {"h": p.h, "w": p.w, "x": x, "y": y},
        "id": pid,
        "options": options,
        "targets": [target_json(t, chr(ord("A") + i)) for i, t in enumerate(p.targets)],
        "title": p.title,
        "type": p.kind,
    }
    if p.kind == "table":
        out["transformations"] = [{"id": "organize", "options": {"excludeByName": {"Time": True}}}]
    return out


def layout() -> list[dict[str, Any]]:
    panels: list[dict[str, Any]] = []
    pid = 1
    y = 0
    for title, members in rows():
        panels.append(
            {
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "id": pid,
                "panels": [],
                "title": title,
                "type": "row",
            }
        )
        pid += 1
        y += 1
        x = 0
        line_h = 0
        for p in members:
            if x + p.w > 24:
                x, y, line_h = 0, y + line_h, 0
            panels.append(panel_json(p, pid, x, y))
            pid += 1
            x += p.w
            line_h = max(line_h, p.h)
        y += line_h
    return panels


def var_query(name: str, label: str, query: str) -> dict[str, Any]:
    return {
        "allValue": ".*",
        # every proxy at first; pick one to drill down
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "datasource": DS,
        "definition": query,
        "hide": 0,
        "includeAll": True,
        "label": label,
        "multi": True,
        "name": name,
        "options": [],
        "query": {
            "qryType": 1,
            "query": query,
            "refId": "PrometheusVariableQueryEditor-VariableQuery",
        },
        "refresh": 2,
        "regex": "",
        "skipUrlSync": False,
        "sort": 1,
        "type": "query",
    }


def dashboard() -> dict[str, Any]:
    panels = layout()
    kinds = sorted({p["type"] for p in panels if p["type"] != "row"})
    names = {"timeseries": "Time series", "stat": "Stat", "heatmap": "Heatmap", "table": "Table"}
    return {
        "__inputs": [
            {
                "name": "DS_PROMETHEUS",
                "label": "Prometheus",
                "description": "The Prometheus that scrapes imapproxy's /metrics",
                "type": "datasource",
                "pluginId": "prometheus",
                "pluginName": "Prometheus",
            }
        ],
        "__elements": {},
        "__requires": [
            {"type": "grafana", "id": "grafana", "name": "Grafana", "version": "10.4.0"},
            {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"},
            *({"type": "panel", "id": k, "name": names[k], "version": ""} for k in kinds),
        ],
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                },
                {
                    "datasource": DS,
                    "enable": True,
                    "expr": f"changes(process_start_time_seconds{sel()}[$__rate_interval]) > 0",
                    "iconColor": "orange",
                    "name": "Restarts",
                    "step": "$__rate_interval",
                    "titleFormat": "restart {{instance}}",
                },
            ]
        },
        "description": "imapproxy: sessions, TLS, IMAP commands, traffic, upstream, "
        "authentication, filters and policy, the process. Metrics: README 'Metrics'.",
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "id": None,
        "links": [],
        "panels": panels,
        "refresh": "30s",
        "schemaVersion": 39,
        "tags": ["imap", "imapproxy"],
        "templating": {
            "list": [
                {
                    "current": {
                        "selected": False,
                        "text": "Prometheus",
                        "value": "${DS_PROMETHEUS}",
                    },
                    "hide": 0,
                    "includeAll": False,
                    "label": "Data source",
                    "multi": False,
                    "name": "datasource",
                    "options": [],
                    "query": "prometheus",
                    "refresh": 1,
                    "regex": "",
                    "skipUrlSync": False,
                    "type": "datasource",
                },
                var_query("job", "Job", "label_values(imapproxy_build_info, job)"),
                var_query(
                    "instance",
                    "Instance",
                    'label_values(imapproxy_build_info{job=~"$job"}, instance)',
                ),
                var_query(
                    "listener",
                    "Listener",
                    "label_values(imapproxy_client_connections_active"
                    '{job=~"$job", instance=~"$instance"}, listener)',
                ),
            ]
        },
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "title": "imapproxy",
        "uid": "imapproxy",
        "version": 1,
        "weekStart": "",
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n"


def main() -> int:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(render())
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
