"""The metrics' filter: an observer on the filter API, one per session.

It counts what needs a view, and only that, so that no view is built for the common
commands and responses (a view costs several microseconds; the relay's own work per
pipelined command is about nine):

* logins (LOGIN, AUTHENTICATE) by mechanism and result: the command's view gives the
  mechanism, the ``authenticated`` hook a success, a tagged NO/BAD a failure, a reply the
  proxy made itself (``ResponseView.by``) a block;
* authenticated sessions (that hook, or a PREAUTH greeting);
* APPEND's literal sizes (the messages clients upload);
* the proxy's own NO/BAD replies, by the filter (or ``relay``) that made them, and a
  policy filter's blocks by rule;
* an untagged BYE (commands still waiting when the session ends are then "BYE").

Commands by name and result and their latency are the relay's events (see
:meth:`.proxy.ProxyMetrics.command_started`): a dict update per command, no view.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..filters.api import (
    PASS,
    CommandView,
    Filter,
    ResponseView,
    SessionEndInfo,
    SessionInfo,
    SessionView,
    Verdict,
)
from ..wire.events import FrameKind
from .labels import RELAY, mechanism_label

if TYPE_CHECKING:
    from .proxy import Live, ProxyMetrics

_LOGINS = frozenset({"LOGIN", "AUTHENTICATE"})
_BLOCKED = frozenset({"reject", "refuse", "disconnect", "answer"})


class MetricsFilter(Filter):
    __slots__ = ("_authed", "_listener", "_live", "_logins", "_m")

    name = "metrics"
    observes_only = True
    wants_commands = frozenset({"LOGIN", "AUTHENTICATE", "APPEND"})
    wants_responses = frozenset({"NO", "BAD", "BYE", "PREAUTH"})

    def __init__(self, metrics: ProxyMetrics, live: Live, info: SessionInfo) -> None:
        self._m = metrics
        self._live = live
        self._listener = info.listener
        self._logins: dict[bytes, str] | None = None  # tag -> mechanism label, in progress
        self._authed = False

    def command(self, cmd: CommandView, session: SessionView) -> Verdict:
        verdict = cmd.verdict
        if verdict == "abandoned":
            return PASS  # shown at its head already
        if cmd.name == "APPEND":
            if verdict is None or verdict == "replace":
                hist = self._m.client_literals
                for lit in cmd.literals:
                    hist.observe((), lit.size)
            return PASS
        if cmd.uid:
            return PASS
        mech = mechanism_label(cmd.name, cmd.raw)
        if verdict in _BLOCKED:
            self._m.auth.inc((self._listener, mech, "blocked"))
        else:
            if self._logins is None:
                self._logins = {}
            self._logins[cmd.tag] = mech
        return PASS

    def response(self, resp: ResponseView, session: SessionView) -> Verdict:
        tag = resp.tag
        if tag is None:
            if resp.name == "BYE":
                self._live.bye = True
            elif resp.name == "PREAUTH" and resp.kind is FrameKind.GREETING:
                self.authenticated(session)
            return PASS
        if resp.kind is not FrameKind.STATUS:
            return PASS
        m = self._m
        by = resp.by
        if by is not None:  # the proxy's own NO/BAD: a refusal
            who = by if by in m.filter_names else RELAY
            m.filter_rejections.inc((who,))
        logins = self._logins
        if logins is not None:
            mech = logins.pop(tag, None)
            if mech is not None:
                result = "failure" if by is None else "blocked"
                m.auth.inc((self._listener, mech, result))
        return PASS

    def authenticated(self, session: SessionView) -> None:
        logins = self._logins
        if logins:  # the login that succeeded (one at a time in practice)
            tag = next(iter(logins))
            self._m.auth.inc((self._listener, logins.pop(tag), "success"))
        if not self._authed:
            self._authed = True
            self._m.authenticated.inc((self._listener,))

    def session_ended(self, session: SessionView, end: SessionEndInfo) -> None:
        m = self._m
        for mech in (self._logins or {}).values():
            m.auth.inc((self._listener, mech, "aborted"))
        self._logins = None
        if self._authed:
            self._authed = False
            m.authenticated.inc((self._listener,), -1)


class MetricsFilterFactory:
    """Makes the per-session filter; shares the process's metrics with it."""

    __slots__ = ("metrics",)

    def __init__(self, metrics: ProxyMetrics) -> None:
        self.metrics = metrics

    def __call__(self, info: SessionInfo) -> MetricsFilter:
        return MetricsFilter(self.metrics, self.metrics.live(info.id, info.listener), info)
