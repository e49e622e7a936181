"""The chain swap of a reload, without sockets (:mod:`imapproxy.relay.reload`), and
``Proxy.reload`` refusing what it cannot apply (in-process, no upstream needed)."""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Callable

import pytest
import trio

from imapproxy.config import Endpoint, ListenerConfig, ProxyConfig, UpstreamConfig
from imapproxy.filters import ChainEntry, FilterChain, OnError
from imapproxy.filters.api import Filter, SessionEndInfo, SessionInfo, SessionView
from imapproxy.relay.reload import (
    ChainSource,
    Reloaded,
    merge_entries,
    open_chain,
    restart_keys,
    swap_filters,
)
from imapproxy.relay.server import Proxy

INFO = SessionInfo("s1", "127.0.0.1", 5000, "imap@test")
Calls = list[tuple[str, str]]


class Recording(Filter):
    def __init__(self, name: str, calls: Calls, *, refuse: bool = False) -> None:
        self.label = name
        self.calls = calls
        self.refuse = refuse

    def session_started(self, session: SessionView) -> None:
        self.calls.append((self.label, "started"))
        if self.refuse:  # a closed filter failing: the session ends
            raise RuntimeError("cannot start")

    def authenticated(self, session: SessionView) -> None:
        self.calls.append((self.label, "authenticated"))

    def session_ended(self, session: SessionView, end: SessionEndInfo) -> None:
        self.calls.append((self.label, f"ended:{end.reason}"))


def entry(name: str, calls: Calls, *, refuse: bool = False) -> ChainEntry:
    def factory(info: SessionInfo) -> Filter:
        calls.append((name, "made"))
        return Recording(name, calls, refuse=refuse)

    return ChainEntry(name, factory, OnError.CLOSED)


def errors() -> Callable[[str, str, BaseException], None]:
    def report(name: str, hook: str, exc: BaseException) -> None:
        raise AssertionError(f"{name}.{hook}: {exc!r}")

    return report


def test_merge_keeps_unchanged_entries() -> None:
    calls: Calls = []
    a, b, c = entry("a", calls), entry("b", calls), entry("c", calls)
    a2, b2, d = entry("a", calls), entry("b", calls), entry("d", calls)
    merged, added, removed = merge_entries((a, b, c), ("ka", "kb", "kc"), (a2, b2, d),
                                           ("ka", "kb-changed", "kd"))  # fmt: skip
    assert merged == (a, b2, d)  # a kept (same key): the old object, its factory
    assert added == [b2, d]
    assert removed == [b, c]


def test_swap_keeps_instances_and_starts_and_ends_the_others() -> None:
    calls: Calls = []
    a, b, c = entry("a", calls), entry("b", calls), entry("c", calls)
    view = SessionView(INFO, user="alice")
    current = open_chain(FilterChain((a, b)), INFO, errors())
    kept = current.instances[a]
    current.filters.session_started(view)
    calls.clear()
    source = ChainSource(FilterChain((a, c)), generation=3)
    swapped, failed = swap_filters(current, source, INFO, view, errors(), authenticated=True)
    assert not failed
    assert swapped.generation == 3
    assert swapped.instances[a] is kept  # its state (and a transcript's sink) stays
    assert swapped.filters.names == ("a", "c")
    # b ended (the session goes on); c made, started and told of the login
    assert calls == [("c", "made"), ("b", "ended:reload"), ("c", "started"),
                     ("c", "authenticated")]  # fmt: skip


def test_swap_before_login_does_not_call_authenticated() -> None:
    calls: Calls = []
    a, c = entry("a", calls), entry("c", calls)
    current = open_chain(FilterChain((a,)), INFO, errors())
    view = SessionView(INFO)
    swap_filters(current, ChainSource(FilterChain((a, c)), 1), INFO, view, errors(),
                 authenticated=False)  # fmt: skip
    assert ("c", "authenticated") not in calls and ("c", "started") in calls


def test_swap_with_a_new_filter_refusing_the_session_fails() -> None:
    calls: Calls = []
    a, bad = entry("a", calls), entry("bad", calls, refuse=True)
    current = open_chain(FilterChain((a,)), INFO, errors())
    reported: list[tuple[str, str]] = []
    _, failed = swap_filters(current, ChainSource(FilterChain((a, bad)), 1), INFO,
                             SessionView(INFO), lambda n, h, e: reported.append((n, h)),
                             authenticated=False)  # fmt: skip
    assert failed and reported == [("bad", "session_started")]


def _config(*ports: int) -> ProxyConfig:
    listeners = tuple(ListenerConfig(Endpoint("127.0.0.1", p), implicit_tls=False) for p in ports)
    return ProxyConfig(listeners=listeners, upstream=UpstreamConfig(Endpoint("127.0.0.1", 1)))


class Lifecycle:
    """A factory with a process-wide part (like a transcript's sink)."""

    def __init__(self, log: list[str], name: str) -> None:
        self.log, self.name = log, name

    def __call__(self, info: SessionInfo) -> Filter:
        return Filter()

    def start(self) -> None:
        self.log.append(f"start {self.name}")

    def close(self) -> None:
        self.log.append(f"close {self.name}")


def test_proxy_reload_applies_or_refuses(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        life: list[str] = []
        keep = ChainEntry("keep", Lifecycle(life, "keep"))
        gone = ChainEntry("gone", Lifecycle(life, "gone"))
        proxy = Proxy(_config(0), filters=FilterChain((keep, gone)), keys=("k", "g"))
        async with trio.open_nursery() as nursery:
            await nursery.start(proxy.serve)
            assert life == ["start keep", "start gone"]
            # a port in use: refused, nothing changed (no factory started or closed)
            busy = socket.socket()
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            new_keep = ChainEntry("keep", Lifecycle(life, "keep-again"))
            fresh = ChainEntry("fresh", Lifecycle(life, "fresh"))
            bad = Reloaded(_config(0, port), FilterChain((new_keep, fresh)), ("k", "f"))
            assert not await proxy.reload(lambda: bad)
            busy.close()
            assert proxy.source.generation == 0 and life == ["start keep", "start gone"]
            assert proxy.filters.entries[1:] == (keep, gone)

            def broken() -> Reloaded:
                raise ValueError("filters[1].use: no filter named 'nope'")

            assert not await proxy.reload(broken)
            no_cert = dataclasses.replace(_config(0), cert_file="/nonexistent/cert.pem",
                                          key_file="/nonexistent/key.pem")  # fmt: skip
            assert not await proxy.reload(lambda: Reloaded(no_cert, FilterChain(), ()))
            assert proxy.source.generation == 0 and len(life) == 2
            # applied: the unchanged entry keeps its factory (not started again)
            good = Reloaded(_config(0), FilterChain((new_keep, fresh)), ("k", "f"))
            assert await proxy.reload(lambda: good)
            assert proxy.source.generation == 1
            assert proxy.filters.entries[1:] == (keep, fresh)
            assert life == ["start keep", "start gone", "start fresh", "close gone"]
            proxy.shutdown()
        assert life[-2:] == ["close keep", "close fresh"]

    with caplog.at_level("INFO", logger="imapproxy"):
        trio.run(main)
    refused = [r.getMessage() for r in caplog.records if "reload refused" in r.getMessage()]
    assert len(refused) == 3, refused
    assert "cannot listen on" in refused[0] and "address already in use" in refused[0]
    assert "filters[1].use" in refused[1]
    assert "/nonexistent/cert.pem" in refused[2], refused[2]
    assert all(r.levelname == "ERROR" for r in caplog.records if "reload refused" in r.message)


def test_restart_keys_are_named() -> None:
    old = _config(1143)
    new = ProxyConfig(listeners=old.listeners, upstream=UpstreamConfig(Endpoint("::1", 2)),
                      control_socket="/tmp/x.sock")  # fmt: skip
    assert restart_keys(old, new) == ["upstream", "control_socket"]
    assert restart_keys(old, _config(1144)) == []  # listeners reload
