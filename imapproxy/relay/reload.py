"""Reload without dropping sessions: the chain a session runs with, swapped between commands.

A reload builds a new configuration and chain exactly as start-up does
(:class:`Reloaded`); the proxy then publishes the new chain in its :class:`ChainSource`
with a new generation number.  Each session compares that number with its own at the head
of every command (one integer compare) and, when it is newer and nothing is held, swaps
its filters with :func:`swap_filters`:

* a chain entry that did not change (same key: its name, ``use`` and options) keeps its
  ``ChainEntry`` object across the reload (:func:`merge_entries`), so the session keeps its
  filter instance and whatever state it has (and a transcript keeps its one writer);
* a new or changed entry gets a new instance (``session_started``, and ``authenticated`` if
  the session is already authenticated);
* an instance whose entry went away gets ``session_ended``.

Sans-IO: no sockets, no Trio.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

from ..config import ListenerConfig, ProxyConfig
from ..filters.api import Disconnect, Filter, OnError, SessionEndInfo, SessionInfo, SessionView
from ..filters.chain import (
    ChainEntry,
    ErrorReporter,
    FilterChain,
    SessionFilters,
    VerdictReporter,
)

# The end a filter removed by a reload is told of (the session itself goes on).
RELOAD_END = SessionEndInfo("reload", "filter removed by a configuration reload", 0, 0, 0.0)


@dataclass(frozen=True, slots=True)
class Reloaded:
    """What a reload (or start-up) builds: the configuration, the configured chain and one
    key per chain entry (equal keys: the same filter, kept across a reload)."""

    config: ProxyConfig
    chain: FilterChain
    keys: tuple[Hashable, ...]
    # settings the proxy does not hold that changed and need a restart (their key paths)
    restart: tuple[str, ...] = ()


@dataclass(slots=True)
class ChainSource:
    """The chain new commands run with (the proxy's; sessions hold a reference)."""

    chain: FilterChain
    generation: int = 0


@dataclass(slots=True)
class SessionChain:
    """One session's filters and the chain entry each instance was made from."""

    filters: SessionFilters
    instances: dict[ChainEntry, Filter] = field(default_factory=dict)
    generation: int = 0


def merge_entries(
    old: Sequence[ChainEntry],
    old_keys: Sequence[Hashable],
    new: Sequence[ChainEntry],
    new_keys: Sequence[Hashable],
) -> tuple[tuple[ChainEntry, ...], list[ChainEntry], list[ChainEntry]]:
    """The new entries, with the old entry object kept where the key is unchanged; and the
    entries added (their factories must be started) and removed (closed)."""
    by_key = dict(zip(old_keys, old, strict=True))
    merged = tuple(by_key.get(k, e) for e, k in zip(new, new_keys, strict=True))
    kept = set(merged)
    added = [e for e in merged if e not in set(old)]
    removed = [e for e in old if e not in kept]
    return merged, added, removed


def open_chain(
    chain: FilterChain,
    info: SessionInfo,
    on_error: ErrorReporter,
    generation: int = 0,
    on_verdict: VerdictReporter | None = None,
) -> SessionChain:
    """A session's filters (like :meth:`FilterChain.open`), remembering each instance's
    entry."""
    return _open(chain, info, on_error, generation, {}, None, authenticated=False,
                 on_verdict=on_verdict)[0]  # fmt: skip


def swap_filters(
    current: SessionChain,
    source: ChainSource,
    info: SessionInfo,
    view: SessionView,
    on_error: ErrorReporter,
    *,
    authenticated: bool,
    on_verdict: VerdictReporter | None = None,
) -> tuple[SessionChain, bool]:
    """The session's filters for ``source``'s chain: unchanged entries keep their instance,
    new ones are made and started, removed ones are ended.  The bool: a closed filter
    failed (refused the session) - the caller ends the session."""
    return _open(
        source.chain, info, on_error, source.generation, current.instances, view,
        authenticated=authenticated, on_verdict=on_verdict,
    )  # fmt: skip


def _open(
    chain: FilterChain,
    info: SessionInfo,
    on_error: ErrorReporter,
    generation: int,
    old: dict[ChainEntry, Filter],
    view: SessionView | None,
    *,
    authenticated: bool,
    on_verdict: VerdictReporter | None = None,
) -> tuple[SessionChain, bool]:
    filters: list[tuple[Filter, OnError, str]] = []
    instances: dict[ChainEntry, Filter] = {}
    made: list[tuple[Filter, OnError, str]] = []
    failed = False
    for entry in chain.entries:
        instance = old.get(entry)
        if instance is None:
            try:
                instance = entry.factory(info)
            except Exception as exc:
                on_error(entry.name, "factory", exc)
                failed = failed or entry.on_error is OnError.CLOSED
                continue
            made.append((instance, entry.on_error, entry.name))
        instances[entry] = instance
        filters.append((instance, entry.on_error, entry.name))
    if view is not None:
        gone = [(f, OnError.OPEN, e.name) for e, f in old.items() if e not in instances]
        SessionFilters(gone, on_error).session_ended(view, RELOAD_END)
        fresh = SessionFilters(made, on_error)
        hooks = [fresh.session_started] + ([fresh.authenticated] if authenticated else [])
        for hook in hooks:
            if type(hook(view)) is Disconnect:
                failed = True
    result = SessionFilters(filters, on_error, failed=failed, on_verdict=on_verdict)
    return SessionChain(result, instances, generation), failed


def restart_keys(old: ProxyConfig, new: ProxyConfig) -> list[str]:
    """The settings that changed but only take effect after a restart (their key paths):
    a reload applies the filter chain, the listeners and the certificates only."""
    changed = []
    pairs = {
        "upstream": (old.upstream, new.upstream),
        "limits": (
            (old.limits, old.session_limits), (new.limits, new.session_limits)
        ),
        "timeouts": (old.timeouts, new.timeouts),
        "tls.require_tls_for_login": (old.require_tls_for_login, new.require_tls_for_login),
        "control_socket": (old.control_socket, new.control_socket),
        "--tls-keylog-client": (old.keylog_client, new.keylog_client),
    }
    for key, (a, b) in pairs.items():
        if a != b:
            changed.append(key)
    return changed


def listener_key(lc: ListenerConfig) -> Hashable:
    """Listeners are told apart by address: one whose address stays keeps its socket (its
    TLS mode, certificate and name may change).  Port 0 (any free port; tests) is no
    address: such a listener is told apart by all it is."""
    host, port = lc.endpoint.host, lc.endpoint.port
    return (host, port) if port else (host, port, lc)
