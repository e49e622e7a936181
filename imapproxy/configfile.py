"""The configuration file (TOML, ``imapproxy run --config FILE``).

Today it holds the filter chain; flags on the command line still configure the rest (and
win where both say something).  The shape is a contract: keys are added, never renamed::

    [[filters]]
    use = "transcript"
    path = "transcript.jsonl"        # "-" for stdout
    on_error = "open"

and, at the top level, ``metrics = "HOST:PORT"`` (serve Prometheus metrics there; the
``--metrics`` flag wins).

Every mistake is one :class:`~imapproxy.filters.ConfigError` naming the key path
(``filters[1].on_error: expected one of closed, open; got "opne"``).
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import Endpoint
from .filters.api import ConfigError, FilterMaker
from .filters.chain import FilterChain
from .filters.policy import make_policy
from .filters.registry import build_chain
from .filters.rewrite import make_rewrite
from .filters.transcript import make_transcript

BUILTIN_FILTERS: Mapping[str, FilterMaker] = {
    "transcript": make_transcript,
    "rewrite": make_rewrite,
    "policy": make_policy,
}

_TOP_LEVEL = frozenset({"filters", "metrics"})


@dataclass(frozen=True)
class FileConfig:
    filters: FilterChain = field(default_factory=FilterChain)
    metrics: Endpoint | None = None


def load(path: str | Path, builtins: Mapping[str, FilterMaker] = BUILTIN_FILTERS) -> FileConfig:
    return from_mapping(_read(path), builtins)


def load_tables(path: str | Path) -> list[dict[str, Any]]:
    """The ``[[filters]]`` tables of a config file (checked: known keys, a list)."""
    data = _read(path)
    _check_top(data)
    return list(data.get("filters", []))


def load_metrics(path: str | Path) -> Endpoint | None:
    """The top-level ``metrics = "HOST:PORT"`` of a config file, if any."""
    data = _read(path)
    _check_top(data)
    return _metrics(data)


def _metrics(data: Mapping[str, Any]) -> Endpoint | None:
    value = data.get("metrics")
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError("metrics", 'expected a string "HOST:PORT"')
    try:
        return Endpoint.parse(value)
    except ValueError as exc:
        raise ConfigError("metrics", str(exc)) from None


def chain_from_tables(
    tables: list[dict[str, Any]], builtins: Mapping[str, FilterMaker] = BUILTIN_FILTERS
) -> FilterChain:
    return build_chain(tables, builtins)


def _read(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("", f"config file {p}: not found (give a TOML file)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("", f"config file {p}: cannot read it: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("", f"config file {p}: not valid TOML: {exc}") from None
    return data


def from_mapping(
    data: Mapping[str, Any], builtins: Mapping[str, FilterMaker] = BUILTIN_FILTERS
) -> FileConfig:
    _check_top(data)
    return FileConfig(
        filters=build_chain(data.get("filters", []), builtins), metrics=_metrics(data)
    )


def _check_top(data: Mapping[str, Any]) -> None:
    for key in data:
        if key not in _TOP_LEVEL:
            raise ConfigError(key, f"unknown key (known: {', '.join(sorted(_TOP_LEVEL))})")
    if not isinstance(data.get("filters", []), list):
        raise ConfigError("filters", "expected an array of tables ([[filters]])")
