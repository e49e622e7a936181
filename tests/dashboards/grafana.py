"""Reading the shipped Grafana dashboards the way Grafana does: panels (rows and collapsed
rows' children), their queries, the template variables, and the substitution of variables
into a PromQL expression (what Grafana sends to Prometheus)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD_DIR = ROOT / "dashboards"

# What Grafana would put in for its built-in variables, for a dashboard showing the last
# minutes of a Prometheus scraping every second (``$__rate_interval`` is at least four
# scrape intervals; ``$__range`` the dashboard's time range).
BUILTINS: Mapping[str, str] = {
    "__rate_interval": "15s",
    "__interval": "5s",
    "__interval_ms": "5000",
    "__range": "5m",
    "__range_s": "300",
    "__range_ms": "300000",
}

_VAR = re.compile(r"\$\{(\w+)(?::(\w+))?\}|\$(\w+)|\[\[(\w+)(?::(\w+))?\]\]")


def dashboard_files() -> list[Path]:
    return sorted(DASHBOARD_DIR.glob("*.json"))


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def panels(dash: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows included, and the panels inside collapsed rows."""
    for panel in dash.get("panels", []):
        yield panel
        yield from panel.get("panels", []) if panel.get("type") == "row" else ()


def query_panels(dash: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """The panels that are not rows (and not text panels, which query nothing)."""
    for panel in panels(dash):
        if panel.get("type") not in ("row", "text"):
            yield panel


@dataclass(frozen=True)
class Query:
    dashboard: str
    where: str  # "panel 12 'Commands by result' A", "variable instance", "annotation Restarts"
    expr: str
    must_return: bool  # a panel or a variable: no series is a failure; an annotation: events


def variables(dash: Mapping[str, Any]) -> list[dict[str, Any]]:
    return list(dash.get("templating", {}).get("list", []))


def variable_query(var: Mapping[str, Any]) -> str:
    q = var.get("query")
    if isinstance(q, Mapping):
        return str(q.get("query", ""))
    return str(q or "")


_LABEL_VALUES = re.compile(r"^\s*label_values\((?:(?P<expr>.*),\s*)?(?P<label>\w+)\s*\)\s*$", re.S)


def label_values_as_promql(query: str) -> str:
    """``label_values(expr, label)`` as the PromQL that has one series per value."""
    m = _LABEL_VALUES.match(query)
    if m is None:
        raise ValueError(f"not a label_values() query: {query!r}")
    expr = m.group("expr") or '{__name__=~".+"}'
    return f"group by ({m.group('label')}) ({expr})"


def queries(path: Path) -> list[Query]:
    dash = load(path)
    name = path.name
    out: list[Query] = []
    for var in variables(dash):
        if var.get("type") == "query":
            out.append(
                Query(
                    name,
                    f"variable {var['name']}",
                    label_values_as_promql(variable_query(var)),
                    True,
                )
            )
    for panel in query_panels(dash):
        for target in panel.get("targets", []):
            where = f"panel {panel.get('id')} {panel.get('title')!r} {target.get('refId')}"
            out.append(Query(name, where, str(target.get("expr", "")), True))
    for ann in dash.get("annotations", {}).get("list", []):
        if ann.get("expr"):
            out.append(Query(name, f"annotation {ann.get('name')}", ann["expr"], False))
    return out


def substitute(expr: str, values: Mapping[str, str]) -> str:
    """``expr`` with every ``$var``, ``${var}``, ``${var:fmt}`` and ``[[var]]`` replaced by
    ``values[var]`` or the built-in's value; an unknown variable is a KeyError."""

    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(3) or m.group(4)
        if name in values:
            return values[name]
        if name in BUILTINS:
            return BUILTINS[name]
        raise KeyError(f"unknown template variable ${name} in {expr!r}")

    return _VAR.sub(repl, expr)
