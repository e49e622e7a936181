"""The metrics' filter: an observer on the filter API, one per session.

What it counts, and from what:

* every command, when it has gone upstream (``verdict`` None or ``replace``) or was
  decided here (blocked: ``reject``/``refuse``/``disconnect``; answered locally:
  ``answer``, counted with the status of the reply);
* its result from the tagged completion (OK/NO/BAD) and its latency (``ResponseView.latency``,
  from the command going upstream to the completion coming back); commands still waiting
  when the session ends are ``BYE`` (the server had said BYE) or ``aborted``;
* logins (LOGIN, AUTHENTICATE) by mechanism and result, authenticated and IDLE sessions,
  client literal sizes, filter verdicts and policy blocks.

It wants every command (the relay then builds a view of each; nothing of its arguments is
read) and only status responses (OK/NO/BAD/BYE/PREAUTH): no view of untagged data, FETCH
responses included, is built for it.  Per session it keeps the tags of the commands in
progress (bounded by ``Limits.max_pending_commands``).
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
from .labels import OTHER, RELAY, command_label, mechanism_label, status_label

if TYPE_CHECKING:
    from .proxy import ProxyMetrics

_LOGINS = frozenset({"LOGIN", "AUTHENTICATE"})
_AUTH_RESULT = {"OK": "success", "NO": "failure", "BAD": "failure"}
_BLOCKED = frozenset({"reject", "refuse", "disconnect"})
_VERDICT_LABEL = {"reject": "reject", "refuse": "reject", "answer": "answer",
                  "replace": "replace", "disconnect": "disconnect"}  # fmt: skip


class MetricsFilter(Filter):
    __slots__ = ("_authed", "_bye", "_idle", "_listener", "_local", "_logins", "_m", "_pending")

    name = "metrics"
    observes_only = True
    wants_commands = None  # all: each is counted (views are cheap when args are not read)
    wants_responses = frozenset({"OK", "NO", "BAD", "BYE", "PREAUTH"})

    def __init__(self, metrics: ProxyMetrics, info: SessionInfo) -> None:
        self._m = metrics
        self._listener = (info.listener,)
        self._pending: dict[bytes, str] = {}  # tag -> command label, gone upstream
        self._local: dict[bytes, str] | None = None  # tag -> label, answered by the proxy
        self._logins: dict[bytes, str] | None = None  # tag -> mechanism label
        self._idle: bytes | None = None  # the tag of the IDLE in progress
        self._authed = False
        self._bye = False

    # ------------------------------------------------------------------ commands

    def command(self, cmd: CommandView, session: SessionView) -> Verdict:
        verdict = cmd.verdict
        label = command_label(cmd.name, cmd.uid)
        m = self._m
        if verdict is None:
            self._sent(cmd, label)
            return PASS
        if verdict == "abandoned":
            return PASS  # shown at its head already; the server's answer is coming
        by = cmd.by if cmd.by in m.filter_names else RELAY
        m.filter_verdicts.inc((by, _VERDICT_LABEL[verdict]))
        if verdict == "replace":
            self._sent(cmd, label)
        elif verdict == "answer":
            if self._local is None:
                self._local = {}
            self._local[cmd.tag] = label
        elif verdict in _BLOCKED:
            m.commands.inc((label, "blocked"))
            if label in _LOGINS:
                mech = mechanism_label(cmd.name, cmd.raw)
                m.auth.inc((self._listener[0], mech, "blocked"))
            rules = m.policy_rules.get(by)
            if rules is not None:
                rule = session.scratch.get(by + ".rule")
                m.policy_blocks.inc((by, rule if rule in rules else OTHER))
        return PASS

    def _sent(self, cmd: CommandView, label: str) -> None:
        tag = cmd.tag
        self._pending[tag] = label
        if cmd.literals:
            hist = self._m.client_literals
            for lit in cmd.literals:
                hist.observe((), lit.size)
        if label in _LOGINS:
            if self._logins is None:
                self._logins = {}
            self._logins[tag] = mechanism_label(cmd.name, cmd.raw)
        elif label == "IDLE":
            self._idle = tag
            self._m.idling.inc(self._listener)

    # ------------------------------------------------------------------ responses

    def response(self, resp: ResponseView, session: SessionView) -> Verdict:
        tag = resp.tag
        if tag is None:
            if resp.name == "BYE":
                self._bye = True
            elif resp.name == "PREAUTH" and resp.kind is FrameKind.GREETING:
                self.authenticated(session)
            return PASS
        if resp.kind is not FrameKind.STATUS:
            return PASS
        m = self._m
        status = status_label(resp.name)
        if resp.by is not None:  # a reply the proxy made itself
            local = self._local
            label = local.pop(tag, None) if local is not None else None
            if label is not None:
                m.commands.inc((label, status))
            return PASS
        label = self._pending.pop(tag, None)
        if label is None:
            return PASS
        m.commands.inc((label, status))
        latency = resp.latency
        if tag == self._idle:
            self._idle = None
            m.idling.inc(self._listener, -1)
            if latency is not None:
                m.idle_duration.observe((), latency)
        elif latency is not None:
            m.command_duration.observe((label,), latency)
        logins = self._logins
        if logins is not None:
            mech = logins.pop(tag, None)
            if mech is not None:
                m.auth.inc((self._listener[0], mech, _AUTH_RESULT[status]))
        return PASS

    # ------------------------------------------------------------------ session

    def authenticated(self, session: SessionView) -> None:
        if not self._authed:
            self._authed = True
            self._m.authenticated.inc(self._listener)

    def session_ended(self, session: SessionView, end: SessionEndInfo) -> None:
        m = self._m
        result = "BYE" if self._bye else "aborted"
        for label in self._pending.values():
            m.commands.inc((label, result))
        for label in (self._local or {}).values():
            m.commands.inc((label, "aborted"))
        for mech in (self._logins or {}).values():
            m.auth.inc((self._listener[0], mech, "aborted"))
        self._pending.clear()
        self._local = self._logins = None
        if self._idle is not None:
            self._idle = None
            m.idling.inc(self._listener, -1)
        if self._authed:
            self._authed = False
            m.authenticated.inc(self._listener, -1)


class MetricsFilterFactory:
    """Makes the per-session filter; shares the process's metrics with it."""

    __slots__ = ("metrics",)

    def __init__(self, metrics: ProxyMetrics) -> None:
        self.metrics = metrics

    def __call__(self, info: SessionInfo) -> MetricsFilter:
        return MetricsFilter(self.metrics, info)
