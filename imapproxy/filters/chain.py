"""The filter chain: filters in their configured order, one set per session, errors contained.

:class:`FilterChain` is built once per process from the configuration (one
:class:`ChainEntry` per configured filter); :meth:`FilterChain.open` makes a
:class:`SessionFilters` for one session, calling each factory once.

Running a hook:

* commands go through the filters in order, responses in reverse order;
* a :class:`~.api.Replace` hands the new message to the next filter; the first terminal
  verdict (a reject, a local answer, a drop, a disconnect) stops the chain;
* a verdict that does not fit the message (``Drop`` of a command or of a tagged
  completion, ``Reject`` of a response, ``Replace`` of an oversize response) is the
  filter's bug, treated like an exception;
* an exception is reported through ``on_error`` (the relay logs it with the session id and
  counts it) and the filter's :class:`~.api.OnError` applies: ``open`` lets the message
  pass that filter unchanged, ``closed`` refuses the command (``NO [UNAVAILABLE]``) or
  ends the session for a response.  It never reaches another session or the proxy;
* a deciding filter's ``command`` hook may return an awaitable instead of a verdict (it
  must wait: a lookup, a delay): the chain stops there with a :class:`Suspended`, the
  relay awaits it under ``Timeouts.filter_hook`` (a timeout counts as the hook raising)
  and resumes the chain at the next filter.  Later commands of the session wait (order
  is kept); other sessions do not.  Other hooks are plain functions (an awaitable from
  one is the filter's bug).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, replace

from ..wire.events import FrameKind
from ..wire.secret import Secret
from .api import (
    PASS,
    Answer,
    ClientLineView,
    CommandView,
    Disconnect,
    Drop,
    Filter,
    FilterFactory,
    OnError,
    Pass,
    Reject,
    Replace,
    ResponseView,
    SessionEndInfo,
    SessionInfo,
    SessionView,
    Verdict,
)

# (filter name, hook name, the exception) -> None; must not raise.
ErrorReporter = Callable[[str, str, BaseException], None]
# (filter name, verdict name, the filter's rule or None) -> None, for every verdict that
# is not a pass (metrics); must not raise.  Verdict names: replace, reject, answer,
# disconnect (commands); replace, drop, disconnect (responses).
VerdictReporter = Callable[[str, str, "str | None"], None]

FAILED_CLOSED_COMMAND = Reject("filter failed", status="NO", code="UNAVAILABLE")
FAILED_CLOSED_RESPONSE = Disconnect("filter failed")
_VERDICT_NAMES: dict[type, str] = {
    Reject: "reject",
    Answer: "answer",
    Disconnect: "disconnect",
    Replace: "replace",
    Drop: "drop",
}


@dataclass(frozen=True, slots=True)
class ChainEntry:
    name: str
    factory: FilterFactory
    on_error: OnError = OnError.CLOSED


class FilterChain:
    """The configured filters (process-wide, immutable; a reload builds a new chain)."""

    def __init__(self, entries: Sequence[ChainEntry] = ()) -> None:
        self.entries = tuple(entries)

    def __bool__(self) -> bool:
        return bool(self.entries)

    def open(
        self,
        info: SessionInfo,
        on_error: ErrorReporter,
        on_verdict: VerdictReporter | None = None,
    ) -> SessionFilters:
        """The filters of one session.  A factory that raises is reported like a hook
        that raises: ``open`` leaves that filter out, ``closed`` fails the session (its
        ``failed`` is set; the relay says BYE)."""
        filters: list[tuple[Filter, OnError, str]] = []
        failed = False
        for entry in self.entries:
            try:
                filters.append((entry.factory(info), entry.on_error, entry.name))
            except Exception as exc:
                on_error(entry.name, "factory", exc)
                if entry.on_error is OnError.CLOSED:
                    failed = True
        return SessionFilters(filters, on_error, failed=failed, on_verdict=on_verdict)


class SessionFilters:
    """One session's filter instances and the hooks run over them in order."""

    __slots__ = (
        "_codes", "_command_names", "_decided_names", "_deciders", "_deciders_reversed",
        "_filters", "_observers", "_observers_reversed", "_response_names", "decides",
        "failed", "on_verdict", "report",
    )  # fmt: skip

    def __init__(
        self,
        filters: Sequence[tuple[Filter, OnError, str]],
        on_error: ErrorReporter,
        *,
        failed: bool = False,
        on_verdict: VerdictReporter | None = None,
    ) -> None:
        self._filters = tuple(filters)
        self._deciders = tuple(x for x in self._filters if not x[0].observes_only)
        self._observers = tuple(x for x in self._filters if x[0].observes_only)
        self._deciders_reversed = tuple(reversed(self._deciders))
        self._observers_reversed = tuple(reversed(self._observers))
        self.report = on_error
        self.on_verdict = on_verdict
        self.failed = failed  # a closed filter could not be made: end the session
        (self._command_names, self._decided_names, self._response_names, self._codes) = (
            _interests(tuple(f for f, _, _ in self._filters))
        )
        # Whether any filter decides about commands (else the relay need not assemble).
        self.decides = self._decided_names != frozenset()

    def wants_command(self, name: str) -> bool:
        """Whether any filter wants to see commands of this name (without UID)."""
        names = self._command_names
        return names is None or name in names

    def decides_command(self, name: str) -> bool:
        """Whether a filter that may decide wants commands of this name: only those are
        held back until whole."""
        names = self._decided_names
        return names is None or name in names

    def wants_response(self, kind: FrameKind, name: str, raw: bytes) -> bool:
        """Whether any filter wants this response (by name, or by a response code it
        carries).  Cheap: called for every response."""
        names = self._response_names
        if names is None or name in names:
            return True
        codes = self._codes
        if codes and (kind is FrameKind.STATUS or kind is FrameKind.GREETING) and b"[" in raw:
            return response_code(raw) in codes
        return False

    def __bool__(self) -> bool:
        return bool(self._filters)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for _, _, name in self._filters)

    # ------------------------------------------------------------------ events

    def session_started(self, session: SessionView) -> Verdict:
        return self._event("session_started", session)

    def authenticated(self, session: SessionView) -> Verdict:
        return self._event("authenticated", session)

    def session_ended(self, session: SessionView, end: SessionEndInfo) -> None:
        for f, _, name in self._filters:
            try:
                f.session_ended(session, end)
            except Exception as exc:
                self.report(name, "session_ended", exc)

    def _event(self, hook: str, session: SessionView) -> Verdict:
        """A notification hook; a closed filter failing ends the session."""
        for f, on_error, name in self._filters:
            try:
                if inspect.isawaitable(result := getattr(f, hook)(session)):
                    _discard(result)
                    raise TypeError(f"{hook} cannot wait (only the command hook may be async)")
            except Exception as exc:
                self.report(name, hook, exc)
                if on_error is OnError.CLOSED:
                    return FAILED_CLOSED_RESPONSE
        return PASS

    # ------------------------------------------------------------------ messages

    def command(
        self, cmd: CommandView, session: SessionView
    ) -> tuple[Verdict | Suspended, str | None]:
        """Run a command through the chain.  Returns the verdict (PASS, a Replace with the
        final bytes, or a terminal verdict) and the name of the filter that gave it (the
        last replacing one for a Replace; None for PASS).  Observers run last, on what
        was decided.

        A filter whose hook returned an awaitable suspends the chain: the result is then a
        :class:`Suspended` (and None); the relay awaits it and hands the outcome to
        :meth:`resume_command`, which goes on with the next filter."""
        return self._decided(*self._decide_command(cmd, session, 0, None, None), session)

    def resume_command(
        self, pending: Suspended, outcome: object, session: SessionView
    ) -> tuple[Verdict | Suspended, str | None]:
        """Go on after a suspended hook: ``outcome`` is what its awaitable returned, or
        the exception it raised (a timeout included).  May suspend again."""
        cmd = pending.cmd
        f, on_error, name = self._deciders[pending.index]
        if isinstance(outcome, BaseException):
            self.report(name, "command", outcome)
            if on_error is OnError.CLOSED:
                return self._decided(FAILED_CLOSED_COMMAND, name, cmd, session)
            step = None
        else:
            try:
                step = self._step(f, outcome, cmd)
            except Exception as exc:
                self.report(name, "command", exc)
                if on_error is OnError.CLOSED:
                    return self._decided(FAILED_CLOSED_COMMAND, name, cmd, session)
                step = None
        replaced, replaced_by = pending.replaced, pending.replaced_by
        if type(step) is Replace:
            replaced, replaced_by = step, name
            cmd = cmd.with_raw(step.raw)
        elif step is not None:
            return self._decided(step, name, cmd, session)
        return self._decided(
            *self._decide_command(cmd, session, pending.index + 1, replaced, replaced_by),
            session,
        )

    def _decided(
        self,
        verdict: Verdict | Suspended,
        by: str | None,
        cmd: CommandView,
        session: SessionView,
    ) -> tuple[Verdict | Suspended, str | None]:
        """The chain's verdict on ``cmd``, shown to the observers (unless suspended)."""
        if type(verdict) is Suspended:
            return verdict, None
        if type(verdict) is not Pass and self.on_verdict is not None:
            self.on_verdict(by or "?", _VERDICT_NAMES[type(verdict)],
                            getattr(verdict, "rule", None))  # fmt: skip
        if self._observers:
            if type(verdict) is Replace:
                cmd = cmd.with_raw(verdict.raw, verdict="replace", by=by, rule=verdict.rule)
            elif type(verdict) is not Pass:
                rule = getattr(verdict, "rule", None)
                cmd = replace(cmd, verdict=_VERDICT_NAMES[type(verdict)], by=by, rule=rule)
            failed = self._observe("command", cmd, session, self._observers)
            if failed is not None and type(verdict) in (Pass, Replace):
                return FAILED_CLOSED_COMMAND, failed
        return verdict, by  # type: ignore[return-value]

    def precheck(self, cmd: CommandView, session: SessionView) -> tuple[Verdict, str | None]:
        """The deciding filters on a command the relay is still assembling (``complete``
        False, ``raw`` up to a small literal it has not yet asked the client for): a
        refusal now saves the client sending the literal.  Only terminal verdicts count;
        observers are not shown partial commands, and a hook that would wait (returns an
        awaitable) is not waited for here: it decides on the whole command."""
        verdict, by, _ = self._decide_command(cmd, session, 0, None, None)
        if type(verdict) is Suspended:
            verdict.discard()
            return PASS, None
        if type(verdict) is Pass or type(verdict) is Replace:
            return PASS, None
        if self.on_verdict is not None:
            self.on_verdict(by or "?", _VERDICT_NAMES[type(verdict)],
                            getattr(verdict, "rule", None))  # fmt: skip
        return verdict, by  # type: ignore[return-value]

    def observe_command(self, cmd: CommandView, session: SessionView) -> None:
        """Show observers a command the relay itself refused (``cmd.verdict`` says so)."""
        self._observe("command", cmd, session, self._observers)

    def _decide_command(
        self,
        cmd: CommandView,
        session: SessionView,
        start: int,
        replaced: Replace | None,
        replaced_by: str | None,
    ) -> tuple[Verdict | Suspended, str | None, CommandView]:
        """The deciding filters from ``start`` on: (verdict, by, the command as the last
        filter saw it)."""
        deciders = self._deciders
        for index in range(start, len(deciders)):
            f, on_error, name = deciders[index]
            if f.wants_commands is not None and cmd.name not in f.wants_commands:
                continue
            try:
                verdict = f.command(cmd, session)
                if type(verdict) is Pass:
                    continue
                decided = f.decided_commands()
                if decided is not None and cmd.name not in decided:
                    _discard(verdict)
                    continue  # shown, not held back: not this filter's to decide
                if inspect.isawaitable(verdict):
                    return Suspended(verdict, index, cmd, replaced, replaced_by, name), None, cmd
                step = self._step(f, verdict, cmd)
            except Exception as exc:
                self.report(name, "command", exc)
                if on_error is OnError.CLOSED:
                    return FAILED_CLOSED_COMMAND, name, cmd
                continue
            if step is None:
                continue
            if type(step) is Replace:
                replaced, replaced_by = step, name
                cmd = cmd.with_raw(step.raw)
                continue
            return step, name, cmd
        if replaced is not None:
            return replaced, replaced_by, cmd
        return PASS, None, cmd

    @staticmethod
    def _step(f: Filter, verdict: object, cmd: CommandView) -> Verdict | None:
        """A decider's verdict on a command, checked: None to go on (a pass), the Replace,
        or the terminal verdict.  A verdict that does not fit raises (the filter's bug)."""
        if type(verdict) is Pass:
            return None
        if type(verdict) is Replace:
            return verdict  # (the relay checks it is one command it can send)
        if type(verdict) is Reject and verdict.status not in ("NO", "BAD"):
            raise ValueError(f"a rejection is NO or BAD, not {verdict.status!r}")
        if type(verdict) is Answer and verdict.status not in ("OK", "NO", "BAD"):
            raise ValueError(f"an answer is OK, NO or BAD, not {verdict.status!r}")
        if isinstance(verdict, (Reject, Answer, Disconnect)):
            return verdict
        _discard(verdict)
        raise TypeError(f"{verdict!r} is not a verdict for a command")

    def _observe(
        self,
        hook: str,
        message: object,
        session: SessionView,
        observers: tuple[tuple[Filter, OnError, str], ...],
    ) -> str | None:
        """Run observers; returns the name of a closed one that failed (else None)."""
        failed = None
        for f, on_error, name in observers:
            if hook == "command":
                names = f.wants_commands
                if names is not None and message.name not in names:  # type: ignore[attr-defined]
                    continue
            elif hook == "response" and not _wanted(f, message):  # type: ignore[arg-type]
                continue
            try:
                result = getattr(f, hook)(message, session)
                if result is not PASS and result is not None:
                    _discard(result)  # (an observer's awaitable is never waited for)
            except Exception as exc:
                self.report(name, hook, exc)
                if on_error is OnError.CLOSED and failed is None:
                    failed = name
        return failed

    def client_line(
        self, line: ClientLineView, session: SessionView
    ) -> tuple[Verdict, str | None]:
        """A SASL line or IDLE's DONE, in order: a Replace (a mapped SASL message) or a
        Disconnect; nothing else fits (the server is waiting for exactly one line)."""
        replaced: Replace | None = None
        for f, on_error, name in self._filters:
            try:
                verdict = f.client_line(line, session)
                if type(verdict) is Pass or f.observes_only:
                    continue
                if type(verdict) is Replace:
                    if not verdict.raw.endswith(b"\n") or verdict.raw.count(b"\n") != 1:
                        raise ValueError("a replaced client line is one line ending in CRLF")
                    replaced = verdict
                    line = replace(line, data=Secret(verdict.raw), size=len(verdict.raw))
                    continue
                if type(verdict) is Disconnect:
                    return verdict, name
                raise TypeError(f"{verdict!r} is not a verdict for a client line")
            except Exception as exc:
                self.report(name, "client_line", exc)
                if on_error is OnError.CLOSED:
                    return FAILED_CLOSED_RESPONSE, name
        return (replaced or PASS), None

    def response(self, resp: ResponseView, session: SessionView) -> tuple[Verdict, str | None]:
        """Run a response through the chain in reverse order (see :meth:`command`);
        observers last, on the response as it is sent (or with a Drop/Disconnect)."""
        replaced: Replace | None = None
        replaced_by: str | None = None
        result: tuple[Verdict, str | None] | None = None
        for f, on_error, name in self._deciders_reversed:
            if not _wanted(f, resp):
                continue
            try:
                verdict = f.response(resp, session)
                if type(verdict) is Pass:
                    continue
                if type(verdict) is Replace:
                    if resp.oversize:
                        raise ValueError("Replace of a response too long to parse")
                    replaced, replaced_by = verdict, name
                    resp = replace(resp, raw=verdict.raw)
                    continue
                if type(verdict) is Drop:
                    if resp.tag is not None or resp.kind is FrameKind.CONTINUATION:
                        raise ValueError("only untagged responses can be dropped")
                    result = (verdict, name)
                    break
                if type(verdict) is Disconnect:
                    result = (verdict, name)
                    break
                raise TypeError(f"{verdict!r} is not a verdict for a response")
            except Exception as exc:
                self.report(name, "response", exc)
                if on_error is OnError.CLOSED:
                    result = (FAILED_CLOSED_RESPONSE, name)
                    break
        if result is None:
            result = (replaced, replaced_by) if replaced is not None else (PASS, None)
        if type(result[0]) is not Pass and self.on_verdict is not None:
            self.on_verdict(result[1] or "?", _VERDICT_NAMES[type(result[0])],
                            getattr(result[0], "rule", None))  # fmt: skip
        if self._observers_reversed and type(result[0]) is not Drop:
            failed = self._observe("response", resp, session, self._observers_reversed)
            if failed is not None and type(result[0]) is not Disconnect:
                return FAILED_CLOSED_RESPONSE, failed
        return result


@dataclass(slots=True)
class Suspended:
    """A deciding filter's ``command`` hook returned an awaitable (it must wait, e.g. for
    a lookup): the relay awaits ``awaitable`` (with a timeout) and resumes the chain with
    :meth:`SessionFilters.resume_command`."""

    awaitable: Awaitable[object]
    index: int  # the filter's place among the session's deciders
    cmd: CommandView  # as that filter saw it
    replaced: Replace | None
    replaced_by: str | None
    by: str  # the filter's name

    def discard(self) -> None:
        _discard(self.awaitable)


def _discard(value: object) -> None:
    """Close a coroutine nobody will await (no "never awaited" warning, no work done)."""
    if inspect.iscoroutine(value):
        value.close()


def _wanted(f: Filter, resp: ResponseView) -> bool:
    names = f.wants_responses
    if names is None or resp.name in names:
        return True
    return bool(f.wants_codes) and response_code(resp.raw) in f.wants_codes


_CODE = re.compile(rb"[^ ]+ [A-Za-z]+ \[([A-Za-z0-9.-]+)")  # tag, status, [CODE


def response_code(raw: bytes) -> str | None:
    """The response code of a status response (upper-case), or None."""
    m = _CODE.match(raw)
    return m.group(1).decode("ascii").upper() if m else None


_Names = frozenset[str] | None
_INTERESTS: dict[tuple[object, ...], tuple[_Names, _Names, _Names, frozenset[str]]] = {}


def _interests(
    filters: tuple[Filter, ...],
) -> tuple[_Names, _Names, _Names, frozenset[str]]:
    """What a session's filters want, as name sets (None: all).  The same for every
    session of a chain in practice: kept once per distinct answer (bounded), not per
    session."""
    key = tuple(
        (f.wants_commands, f.decided_commands(), f.wants_responses, f.wants_codes,
         f.observes_only)
        for f in filters
    )  # fmt: skip
    try:
        cached = _INTERESTS.get(key)
    except TypeError:  # a filter's name sets are not hashable (a list): not kept
        key, cached = (), None
    if cached is not None:
        return cached
    value = (
        _union(f.wants_commands for f in filters),
        _union(f.decided_commands() for f in filters if not f.observes_only),
        _union(f.wants_responses for f in filters),
        frozenset().union(*(f.wants_codes for f in filters)),
    )
    if key and len(_INTERESTS) < 256:
        _INTERESTS[key] = value
    return value


def _union(sets: Iterable[frozenset[str] | None]) -> frozenset[str] | None:
    """The union of name sets, where None means "all"."""
    out: set[str] = set()
    for names in sets:
        if names is None:
            return None
        out |= names
    return frozenset(out)


def status_line(tag: bytes, status: str, code: str | None, text: str) -> bytes:
    """``tag STATUS [CODE] text CRLF`` with the text made safe for one line."""
    safe = " ".join(text.replace("\r", " ").replace("\n", " ").split()) or status.lower()
    body = (f"[{code}] " if code else "") + safe
    return tag + b" " + status.encode("ascii") + b" " + body.encode("utf-8", "replace") + b"\r\n"


def local_reply(tag: bytes, verdict: Reject | Answer) -> bytes:
    """The bytes the proxy sends for a rejected or locally answered command."""
    head = b"".join(verdict.untagged) if isinstance(verdict, Answer) else b""
    return head + status_line(tag, verdict.status, verdict.code, verdict.text)


def bye_line(verdict: Disconnect) -> bytes:
    return status_line(b"*", "BYE", verdict.code, verdict.text)


__all__ = [
    "ChainEntry",
    "ErrorReporter",
    "FilterChain",
    "SessionFilters",
    "Suspended",
    "bye_line",
    "local_reply",
    "status_line",
]
