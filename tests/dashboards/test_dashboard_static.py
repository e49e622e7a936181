"""Static checks of every shipped Grafana dashboard (dashboards/*.json): what makes it import
into Grafana 10.4 to 12 by the wizard and by file provisioning, and the house conventions
(datasource variable, job/instance selection, units, $__rate_interval)."""

from __future__ import annotations

import re
import runpy
from pathlib import Path
from typing import Any

import pytest

from tests.dashboards import grafana

DASHBOARDS = grafana.dashboard_files()
IDS = [p.name for p in DASHBOARDS]

ALLOWED_PANELS = {"row", "timeseries", "stat", "gauge", "heatmap", "table", "bargauge", "text"}
DEPRECATED_PANELS = {"graph", "singlestat", "table-old", "grafana-piechart-panel",
                     "grafana-worldmap-panel"}  # fmt: skip
DS_VARIABLE = {"${datasource}", "$datasource"}
# Grafana's unit ids (a subset: the ones a proxy dashboard may need); a typo ("seconds",
# "Bytes") would show raw numbers
KNOWN_UNITS = {
    "none", "short", "string", "percent", "percentunit", "bool", "bool_yes_no", "bool_on_off",
    "ns", "µs", "ms", "s", "m", "h", "d", "dtdurationms", "dtdurations", "dateTimeAsIso",
    "dateTimeFromNow", "bytes", "decbytes", "kbytes", "mbytes", "bits", "Bps", "binBps", "bps",
    "pps", "reqps", "rps", "wps", "iops", "ops", "cps", "reqpm", "rpm", "wpm", "opm", "cpm",
    "hertz",
}  # fmt: skip
# Metrics the dashboards select by job and instance: everything the proxy exports, and
# Prometheus's own "up" for the targets.
SELECTED = re.compile(r"\b(imapproxy_\w+|process_\w+|python_\w+|up)\b(\{[^}]*\})?")
RANGE = re.compile(r"\[([^\]]+)\]")
RATE_FUNCS = re.compile(r"\b(rate|irate|increase|\w+_over_time|changes|resets|deriv)\s*\(")


def _ds_uid(ds: object) -> object:
    """The datasource a reference names: the object form's uid (the string form is legacy)."""
    return ds.get("uid") if isinstance(ds, dict) else ds


def test_there_are_dashboards() -> None:
    assert DASHBOARDS, "no dashboards/*.json"


def _problems(dash: dict[str, Any]) -> list[str]:
    """Every convention ``dash`` breaks, one line each."""
    bad: list[str] = []
    if dash.get("schemaVersion") != 39:
        bad.append(f"schemaVersion {dash.get('schemaVersion')} (39 imports into 10.4 to 12)")
    if dash.get("id") is not None:
        bad.append("id must be null (Grafana assigns it)")
    uid = dash.get("uid")
    if not isinstance(uid, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,40}", uid):
        bad.append(f"uid {uid!r}: 1-40 characters of [A-Za-z0-9_-]")
    if not dash.get("title"):
        bad.append("no title")
    inputs = dash.get("__inputs", [])
    if not any(i.get("type") == "datasource" and i.get("pluginId") == "prometheus"
               for i in inputs):  # fmt: skip
        bad.append("__inputs has no Prometheus datasource input (the import wizard's prompt)")
    requires = {r.get("id"): r for r in dash.get("__requires", [])}
    if "grafana" not in requires or "prometheus" not in requires:
        bad.append("__requires must name grafana and the prometheus datasource")

    # variables
    variables = {v.get("name"): v for v in grafana.variables(dash)}
    ds = variables.get("datasource")
    if ds is None or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        bad.append("no datasource variable 'datasource' of type datasource/prometheus")
    for name in ("job", "instance"):
        var = variables.get(name)
        if var is None:
            bad.append(f"no {name!r} variable")
            continue
        query = grafana.variable_query(var)
        if var.get("type") != "query" or not query.startswith("label_values("):
            bad.append(f"variable {name}: a label_values() query variable, got {query!r}")
        if _ds_uid(var.get("datasource")) not in DS_VARIABLE:
            bad.append(f"variable {name}: datasource must be the datasource variable")
    for name, var in variables.items():
        if var.get("type") == "query" and var.get("includeAll") and var.get("allValue") != ".*":
            bad.append(f"variable {name}: allValue must be '.*' (selectors use =~)")

    # panels
    seen_ids: dict[int, str] = {}
    requires_panels = {r.get("id") for r in dash.get("__requires", []) if r.get("type") == "panel"}
    for panel in grafana.panels(dash):
        title = f"panel {panel.get('id')} {panel.get('title')!r}"
        kind = panel.get("type")
        pid = panel.get("id")
        if not isinstance(pid, int):
            bad.append(f"{title}: no integer id")
        elif pid in seen_ids:
            bad.append(f"{title}: id also used by {seen_ids[pid]}")
        else:
            seen_ids[pid] = title
        if not panel.get("title"):
            bad.append(f"{title}: no title")
        if kind in DEPRECATED_PANELS or kind not in ALLOWED_PANELS:
            bad.append(f"{title}: panel type {kind!r} (deprecated or not allowed)")
        if kind not in ("row", None) and kind not in requires_panels:
            bad.append(f"{title}: panel type {kind!r} missing from __requires")
        grid = panel.get("gridPos") or {}
        if not all(isinstance(grid.get(k), int) for k in "xywh") or grid["x"] + grid["w"] > 24:
            bad.append(f"{title}: gridPos {grid} not on the 24-column grid")
        if kind in ("row", "text"):
            continue
        if _ds_uid(panel.get("datasource")) not in DS_VARIABLE:
            bad.append(f"{title}: datasource {panel.get('datasource')} is not $datasource")
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit")
        if not unit:
            bad.append(f"{title}: no unit (fieldConfig.defaults.unit)")
        elif unit not in KNOWN_UNITS:
            bad.append(f"{title}: unit {unit!r} is not a Grafana unit id")
        if not panel.get("description"):
            bad.append(f"{title}: no description (what it shows, for the panel's (i))")
        targets = panel.get("targets") or []
        if not targets:
            bad.append(f"{title}: no targets")
        refs = [t.get("refId") for t in targets]
        if len(set(refs)) != len(refs):
            bad.append(f"{title}: refIds not unique: {refs}")
        for target in targets:
            where = f"{title} {target.get('refId')}"
            if _ds_uid(target.get("datasource")) not in DS_VARIABLE:
                bad.append(f"{where}: target datasource is not $datasource")
            bad.extend(f"{where}: {p}" for p in _expr_problems(str(target.get("expr") or "")))
        if kind == "heatmap":
            options = panel.get("options", {})
            if options.get("calculate") is not False:
                bad.append(f"{title}: heatmap of Prometheus buckets needs calculate: false")
            if options.get("yAxis", {}).get("unit") not in KNOWN_UNITS:
                bad.append(f"{title}: heatmap needs options.yAxis.unit (the buckets' unit)")
            if any(t.get("format") != "heatmap" for t in targets):
                bad.append(f"{title}: heatmap targets need format: heatmap")
            if any("_bucket" not in str(t.get("expr")) for t in targets):
                bad.append(f"{title}: heatmap of a non-histogram")
    return bad


def _expr_problems(expr: str) -> list[str]:
    bad: list[str] = []
    if not expr.strip():
        return ["empty expr"]
    for m in RANGE.finditer(expr):
        if m.group(1) not in ("$__rate_interval", "$__range"):
            bad.append(f"range [{m.group(1)}] (use [$__rate_interval], or [$__range] for a "
                       f"total over the time range): {expr}")  # fmt: skip
    for m in RATE_FUNCS.finditer(expr):
        if m.group(1) in ("rate", "irate") and "[$__rate_interval]" not in expr[m.end() :]:
            bad.append(f"{m.group(1)}() without [$__rate_interval]: {expr}")
    for m in SELECTED.finditer(expr):
        name, selector = m.group(1), m.group(2) or ""
        if expr[m.end() : m.end() + 1] == "(" or name in ("rate", "irate"):
            continue  # a function, not a metric
        if 'job=~"$job"' not in selector or 'instance=~"$instance"' not in selector:
            bad.append(f'{name} not selected by job=~"$job" and instance=~"$instance": {expr}')
    if "histogram_quantile" in expr and not re.search(r"by \((le\b|[^)]*\ble\b)", expr):
        bad.append(f"histogram_quantile() must aggregate keeping le: {expr}")
    return bad


@pytest.mark.parametrize("path", DASHBOARDS, ids=IDS)
def test_dashboard_follows_the_conventions(path: Path) -> None:
    dash = grafana.load(path)  # valid JSON, or this raises with the position
    problems = _problems(dash)
    assert not problems, f"{path.name}:\n" + "\n".join(problems)


@pytest.mark.parametrize("path", DASHBOARDS, ids=IDS)
def test_every_query_substitutes(path: Path) -> None:
    """Every variable a query uses is defined (or a Grafana built-in)."""
    dash = grafana.load(path)
    names = {v["name"]: "x" for v in grafana.variables(dash)}
    for query in grafana.queries(path):
        grafana.substitute(query.expr, names)  # KeyError names the unknown variable


def test_the_checks_catch_what_they_are_for() -> None:
    """A dashboard with one of each mistake: every check reports its own line."""
    bad = {
        "schemaVersion": 16,
        "id": 3,
        "uid": "no spaces allowed",
        "panels": [
            {"id": 1, "type": "graph", "title": "old", "gridPos": {"x": 0, "y": 0, "w": 8, "h": 8},
             "datasource": "Prometheus",
             "targets": [{"refId": "A", "expr": "rate(imapproxy_commands_total[5m])"}]},
            {"id": 1, "type": "timeseries", "title": "dup",
             "gridPos": {"x": 20, "y": 0, "w": 8, "h": 8},
             "fieldConfig": {"defaults": {"unit": "seconds"}},
             "datasource": {"uid": "${datasource}"}, "targets": []},
            {"id": 3, "type": "heatmap", "title": "hm", "gridPos": {"x": 0, "y": 9, "w": 8, "h": 8},
             "datasource": {"uid": "$datasource"}, "fieldConfig": {"defaults": {"unit": "s"}},
             "description": "d",
             "targets": [{"refId": "A", "datasource": {"uid": "$datasource"},
                          "expr": 'histogram_quantile(0.9, sum(rate(x_seconds_sum{job=~"$job", '
                                  'instance=~"$instance"}[$__rate_interval])))'}]},
        ],
    }  # fmt: skip
    text = "\n".join(_problems(bad))
    for needle in (
        "schemaVersion 16",
        "id must be null",
        "uid 'no spaces allowed'",
        "__inputs",
        "__requires",
        "no datasource variable",
        "no 'job' variable",
        "no 'instance' variable",
        "panel type 'graph'",
        "id also used by",
        "not on the 24-column grid",
        "is not $datasource",
        "no unit",
        "unit 'seconds' is not a Grafana unit id",
        "no targets",
        "range [5m]",
        "rate() without [$__rate_interval]",
        "imapproxy_commands_total not selected by",
        "calculate: false",
        "yAxis.unit",
        "format: heatmap",
        "heatmap of a non-histogram",
        "keeping le",
    ):
        assert needle in text, f"the check for {needle!r} did not fire:\n{text}"


def test_dashboard_json_is_what_the_builder_writes() -> None:
    """dashboards/imapproxy.json is scripts/build_dashboards.py's output (edit the script,
    run it, commit both)."""
    builder = runpy.run_path(
        str(grafana.ROOT / "scripts" / "build_dashboards.py"), run_name="build_dashboards"
    )
    assert builder["OUT"].read_text() == builder["render"](), (
        "dashboards/imapproxy.json differs from scripts/build_dashboards.py: run "
        ".venv/bin/python scripts/build_dashboards.py"
    )


def test_provisioning_examples_point_at_the_dashboards() -> None:
    prov = grafana.DASHBOARD_DIR / "provisioning"
    dashboards = (prov / "dashboards.yaml").read_text()
    datasources = (prov / "datasources.yaml").read_text()
    assert re.search(r"^apiVersion: 1$", dashboards, re.M)
    assert re.search(r"^\s+type: file$", dashboards, re.M)
    assert re.search(r"^\s+path: \S+", dashboards, re.M)
    assert re.search(r"^\s+type: prometheus$", datasources, re.M)
    assert re.search(r"^\s+uid: \S+", datasources, re.M)
