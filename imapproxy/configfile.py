"""The filter chain of the configuration file (TOML, ``imapproxy run --config FILE``):
the built-in filters and the chain built from the ``[[filters]]`` tables.  The file as a
whole (listeners, upstream, limits, timeouts, metrics, ...) is read and checked by
:mod:`imapproxy.settings`; flags on the command line win over it.  The shape is a
contract: keys are added, never renamed::

    [[filters]]
    use = "transcript"
    path = "transcript.jsonl"        # "-" for stdout
    on_error = "open"

Every mistake is one :class:`~imapproxy.filters.ConfigError` naming the key path
(``filters[1].on_error: expected one of closed, open; got "opne"``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import settings
from .config import Endpoint
from .filters.api import FilterMaker
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

@dataclass(frozen=True)
class FileConfig:
    filters: FilterChain = field(default_factory=FilterChain)
    metrics: Endpoint | None = None


def load(path: str | Path, builtins: Mapping[str, FilterMaker] = BUILTIN_FILTERS) -> FileConfig:
    return from_mapping(settings.read(path), builtins)


def load_tables(path: str | Path) -> list[dict[str, Any]]:
    """The ``[[filters]]`` tables of a config file (the whole file checked)."""
    return [dict(t) for t in settings.load(path).filters]


def load_metrics(path: str | Path) -> Endpoint | None:
    """The top-level ``metrics = "HOST:PORT"`` of a config file, if any."""
    return settings.load(path).metrics


def chain_from_tables(
    tables: list[dict[str, Any]], builtins: Mapping[str, FilterMaker] = BUILTIN_FILTERS
) -> FilterChain:
    return build_chain(tables, builtins)


def from_mapping(
    data: Mapping[str, Any], builtins: Mapping[str, FilterMaker] = BUILTIN_FILTERS
) -> FileConfig:
    """The filter chain and metrics address of a parsed file (every key checked:
    :mod:`imapproxy.settings` reads the rest)."""
    file = settings.from_mapping(data)
    return FileConfig(
        filters=build_chain([dict(t) for t in file.filters], builtins), metrics=file.metrics
    )
