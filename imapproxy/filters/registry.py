"""Finding filters by name and building the chain from configuration.

A ``[[filters]]`` table names its filter with ``use``:

* a built-in name (``"transcript"``, later ``"policy"``, ``"rewrite"`` ...);
* the name of an entry point in the group ``imapproxy.filters`` (a third-party package
  declares ``[project.entry-points."imapproxy.filters"] name = "pkg.module:make"``);
* ``"package.module:attribute"`` for code that is importable but not installed as a
  package.

The object found is a :data:`~.api.FilterMaker`: called with the table's other keys (its
options) and the table's key path, it validates them (raising
:class:`~.api.ConfigError` naming the key) and returns the per-session factory.  ``use``
and ``on_error`` belong to the chain and are not passed on.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Mapping, Sequence
from typing import Any

from .api import ConfigError, FilterMaker, OnError
from .chain import ChainEntry, FilterChain

ENTRY_POINT_GROUP = "imapproxy.filters"
_CHAIN_KEYS = frozenset({"use", "on_error", "name"})


def find_maker(use: str, path: str, builtins: Mapping[str, FilterMaker]) -> FilterMaker:
    """The maker ``use`` names (see the module docstring), or a ConfigError."""
    if use in builtins:
        return builtins[use]
    if ":" in use:
        module_name, _, attr = use.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigError(path, f"cannot import {module_name!r}: {exc}") from None
        maker = module
        for part in attr.split("."):
            maker = getattr(maker, part, None)
            if maker is None:
                raise ConfigError(path, f"{module_name!r} has no {attr!r}")
        return _callable(maker, use, path)
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == use:
            try:
                return _callable(ep.load(), use, path)
            except ConfigError:
                raise
            except Exception as exc:
                raise ConfigError(path, f"cannot load filter {use!r}: {exc}") from None
    known = sorted(builtins) + sorted(
        ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    )
    raise ConfigError(
        path,
        f"unknown filter {use!r} (known: {', '.join(known) or 'none'}; "
        'or "package.module:Factory")',
    )


def _callable(obj: object, use: str, path: str) -> FilterMaker:
    if not callable(obj):
        raise ConfigError(path, f"{use!r} is not callable")
    return obj  # type: ignore[return-value]


def build_chain(
    tables: Sequence[Mapping[str, Any]],
    builtins: Mapping[str, FilterMaker],
    *,
    path: str = "filters",
) -> FilterChain:
    """A chain from the ``[[filters]]`` tables, in order; every mistake is a ConfigError
    naming its key path (``filters[1].on_error: ...``)."""
    entries: list[ChainEntry] = []
    names: set[str] = set()
    for i, table in enumerate(tables):
        where = f"{path}[{i}]"
        if not isinstance(table, Mapping):
            raise ConfigError(where, f"expected a table, got {type(table).__name__}")
        use = table.get("use")
        if not isinstance(use, str) or not use:
            raise ConfigError(f"{where}.use", "required: the filter's name")
        on_error_text = table.get("on_error", OnError.CLOSED.value)
        choices = [m.value for m in OnError]
        if on_error_text not in choices:
            raise ConfigError(
                f"{where}.on_error", f"expected one of {', '.join(choices)}; got {on_error_text!r}"
            )
        name = table.get("name", use)
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where}.name", "expected a non-empty string")
        if name in names:
            raise ConfigError(f"{where}.name", f"{name!r} is used twice: give one a name")
        names.add(name)
        maker = find_maker(use, f"{where}.use", builtins)
        options = {k: v for k, v in table.items() if k not in _CHAIN_KEYS}
        try:
            factory = maker(options, where)
        except ConfigError:
            raise
        except Exception as exc:  # a third party's bug: still one line, still the path
            raise ConfigError(where, f"filter {use!r} rejected its options: {exc}") from None
        entries.append(ChainEntry(name, factory, OnError(on_error_text)))
    return FilterChain(entries)


def check_options(
    options: Mapping[str, Any],
    path: str,
    allowed: Mapping[str, type | tuple[type, ...]],
) -> None:
    """Helper for filter makers: every key known, every value of the right type."""
    for key, value in options.items():
        if key not in allowed:
            raise ConfigError(
                f"{path}.{key}", f"unknown key (known: {', '.join(sorted(allowed)) or 'none'})"
            )
        want = allowed[key]
        # bool is an int in Python; a TOML true where a number is expected is a mistake
        if isinstance(value, bool) and want in (int, float, (int, float)):
            ok = False
        else:
            ok = isinstance(value, want)
        if not ok:
            names = (
                " or ".join(t.__name__ for t in want) if isinstance(want, tuple) else want.__name__
            )
            raise ConfigError(f"{path}.{key}", f"expected {names}; got {value!r}")

