"""The command gate: where a command is decided, before any byte of it reaches the server.

Sans-IO (no Trio, no sockets): the relay feeds it the client's command frames and the
server's response frames, and acts on what it returns.

Commands
--------
A command the chain wants to see is held back until it is whole, or until a literal too
large to hold begins:

* a part that ends in a small synchronising literal (``{n}``, up to
  ``Limits.inline_literal_bytes``) is kept, and the relay itself sends the client ``+``
  (:class:`Collect` with ``ack``); a small ``{n+}`` literal is kept the same way without a
  ``+`` (the client did not wait);
* when the command is complete, the chain decides on the whole of it; when a streamed
  literal begins (a 50 MB APPEND), the chain decides on what precedes it (``complete`` is
  False) and the literal streams only after the command passed.

A command that passes goes upstream the safe way (:class:`Forward`): in segments, each but
the last ending in a ``{n}`` announcement (``{n+}`` sent on as ``{n}``), the next sent only
after the server's own ``+`` (which the relay absorbs: the client got its ``+`` from the
proxy).  A server that refuses in the middle (a tagged NO/BAD instead of ``+``) gets
nothing more of the command, so the two legs can never be read differently.

A refused command (:class:`Refuse`) never reaches the server: the relay sends the reply and
settles the client decoder (a streamed ``{n}`` is then never sent by the client; a streamed
``{n+}`` is read and discarded).  :class:`End` ends the session.  :class:`Wait`: a filter
must wait before it decides (its hook returned an awaitable); the relay awaits it and
:meth:`CommandGate.resume` gives the decision.

Responses
---------
Each response's first part is offered to the chain (in reverse order); a tagged completion
carries the command it completes and the command's latency.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from ..filters.api import (
    Answer,
    CommandView,
    Disconnect,
    LiteralInfo,
    Pass,
    Reject,
    Replace,
    SessionView,
    Verdict,
)
from ..filters.chain import SessionFilters, Suspended, bye_line, local_reply
from ..filters.views import command_view, inline_literals, literal_info, response_view
from ..wire import NEED_DATA, PAUSED, Decoder, Frame, FrameKind, Side
from ..wire.limits import Limits

# ------------------------------------------------------------------------ decisions


@dataclass(frozen=True, slots=True)
class Collect:
    """The part is kept until the command is whole.  The decoder waits for a ``+``: give
    it one (``conv.client.continuation()``); with ``ack`` also send the client ``+``."""

    ack: bool


@dataclass(frozen=True, slots=True)
class Forward:
    """Send ``segments`` upstream, waiting for the server's ``+`` after each but the last
    (each but the last ends in a ``{n}`` announcement).  ``streams`` is True when the last
    segment announces a streamed literal: the relay then goes on as for any such head
    (the server's ``+`` for it is passed to the client, which sends the literal).
    ``verdict`` and ``by`` say what the chain did, for the transcript."""

    segments: tuple[bytes, ...]
    streams: bool
    replaced: bool
    view: CommandView


@dataclass(frozen=True, slots=True)
class Refuse:
    """Send ``reply`` to the client; nothing of the command goes upstream."""

    tag: bytes
    reply: bytes
    status: str
    by: str | None
    view: CommandView


@dataclass(frozen=True, slots=True)
class End:
    bye: bytes
    by: str | None
    text: str


@dataclass(frozen=True, slots=True)
class Wait:
    """A filter must wait before it decides (its hook returned an awaitable): the relay
    awaits ``pending.awaitable`` (with a timeout) and calls :meth:`CommandGate.resume`
    with the outcome, which gives the next decision.  Nothing of the command has gone
    upstream; the client's next commands wait behind it."""

    pending: Suspended
    view: CommandView
    parts: list[Frame]
    streams: bool


Decision = Collect | Forward | Refuse | End | Wait
_HOLD, _OBSERVE, _SKIP = "hold", "observe", "skip"
_MAX_MODES = 64
# Commands that start an exchange once complete (SASL lines, IDLE, TLS, compression).
_NO_LITERALS = frozenset({"AUTHENTICATE", "IDLE", "STARTTLS", "COMPRESS"})


class CommandGate:
    __slots__ = (
        "_mode", "_modes", "_parts", "_sent", "_shown", "_size", "clock", "filters",
        "limits", "max_assembled", "session",
    )  # fmt: skip

    def __init__(
        self,
        filters: SessionFilters,
        session: SessionView,
        limits: Limits,
        *,
        clock: Callable[[], float],
        max_assembled: int | None = None,
    ) -> None:
        self.filters = filters
        # How the command in progress is handled: held back until whole (a filter may
        # decide about it), observed (filters see it once its last part has gone by), or
        # skipped (no filter wants it: no view is built).
        self._mode = _SKIP
        self._shown = False  # observers were shown the command in progress at its head
        # per command name as spelt (bounded: at most _MAX_MODES names are remembered)
        self._modes: dict[str, str] = {}
        self.session = session
        self.limits = limits
        self.clock = clock
        # A command held back is at most this big (its literals inline): beyond it the
        # command is refused rather than held.
        self.max_assembled = (
            max_assembled if max_assembled is not None else 4 * limits.inline_literal_bytes
        )
        self._parts: list[Frame] = []
        self._size = 0
        # commands sent and not completed: their views and when they went upstream
        self._sent: dict[bytes, tuple[CommandView, float]] = {}

    @property
    def holding(self) -> bool:
        return bool(self._parts)

    def use(self, filters: SessionFilters) -> None:
        """A reload's filters, from the next command on (the modes per name were the old
        chain's)."""
        self.filters = filters
        self._modes.clear()

    # ------------------------------------------------------------------ commands

    def command_part(self, frame: Frame) -> Decision | None:
        """A COMMAND frame from the client decoder (after the relay's own safety checks).
        Returns None when the gate has nothing to say (forward the frame as usual)."""
        if frame.first:
            if self._parts:  # the last message ended unfinished (its literal refused)
                self._abandoned()
            mode = self._modes.get(frame.name)
            if mode is None:
                mode = self._mode_for(frame.name)
                if len(self._modes) < _MAX_MODES:  # clients choose names: bounded
                    self._modes[frame.name] = mode
            self._mode = mode
        else:
            mode = self._mode
        if mode is _SKIP:
            return None
        if mode is _OBSERVE:
            self._observe(frame)
            return None
        if not frame.first and not self._parts:
            return None  # the rest of a command decided on its head
        literal = frame.literal
        if frame.first and literal is not None and frame.name in _NO_LITERALS:
            # these end in an exchange (a "+" the server sends for them would be read as
            # the exchange's): nothing legitimate gives them a literal
            self._parts = [frame]
            return self._too_big(frame, f"{frame.name} takes no literal", "CLIENTBUG")
        streams = literal is not None and frame.streamed
        if not frame.final and not streams:
            assert literal is not None
            self._parts.append(frame)
            self._size += len(frame.raw) + literal.size
            if self._size > self.max_assembled:
                return self._too_big(frame)
            # a filter that can refuse on what has come so far does so before the
            # client sends the literal
            partial = self._view(self._parts, frame, streams=True)
            verdict, by = self.filters.precheck(partial, self.session)
            if type(verdict) is not Pass:
                self._parts = []
                self._size = 0
                if type(verdict) is Disconnect:
                    return End(bye_line(verdict), by, verdict.text)
                return self._refused(partial, verdict, by)  # type: ignore[arg-type]
            return Collect(ack=literal.sync)
        parts = [*self._parts, frame]
        self._parts = []
        self._size = 0
        view = self._view(parts, frame, streams=streams)
        if view.parse_error is not None:
            # A filter decides about this command, and the proxy cannot read its
            # arguments; the server might (Dovecot reads "S\ecret" as "Secret"): a rule
            # must not be talked around by a spelling only the server understands.
            self.filters.observe_command(replace(view, verdict="refuse", by="relay"),
                                         self.session)  # fmt: skip
            reject = Reject(f"arguments not understood: {view.parse_error}", status="BAD",
                            code="CLIENTBUG")  # fmt: skip
            return self._refused(view, reject, None)
        verdict, by = self.filters.command(view, self.session)
        return self._decided(view, parts, streams, verdict, by)

    def resume(self, wait: Wait, outcome: object) -> Decision:
        """The relay awaited a suspended hook (:class:`Wait`): ``outcome`` is what it
        returned or the exception it raised.  The chain goes on from the next filter."""
        verdict, by = self.filters.resume_command(wait.pending, outcome, self.session)
        return self._decided(wait.view, wait.parts, wait.streams, verdict, by)

    def _decided(
        self,
        view: CommandView,
        parts: list[Frame],
        streams: bool,
        verdict: Verdict | Suspended,
        by: str | None,
    ) -> Decision:
        if type(verdict) is Pass:
            segments = tuple(as_sync(p) for p in parts)
            return self._forward(view, segments, streams, replaced=False)
        if type(verdict) is Suspended:
            return Wait(verdict, view, parts, streams)
        if type(verdict) is Replace:
            try:
                segments = segment_command(verdict.raw, view.tag, self.limits,
                                           streamed=view.literals[-1] if streams else None)
            except ValueError as exc:
                # a filter's bug, not the client's: fail closed
                self.filters.report(by or "?", "command", exc)
                return self._refused(view, Reject("filter failed", code="UNAVAILABLE"), by)
            return self._forward(view.with_raw(verdict.raw), segments, streams, replaced=True)
        if type(verdict) is Reject or type(verdict) is Answer:
            return self._refused(view, verdict, by)
        if type(verdict) is Disconnect:
            return End(bye_line(verdict), by, verdict.text)
        raise AssertionError(verdict)

    def _mode_for(self, full_name: str) -> str:
        name = full_name[4:] if full_name.startswith("UID ") else full_name
        if self.filters.decides_command(name):
            return _HOLD
        if self.filters.wants_command(name):
            return _OBSERVE
        return _SKIP

    def _observe(self, frame: Frame) -> None:
        """Observers only: keep the parts (bounded) and show the command once whole, or
        as far as it has come when it waits for the server's "+" (the "+" is relayed
        before the rest comes: shown in that order; a login is always shown whole)."""
        if frame.first:
            self._shown = False
        elif self._shown:
            return  # shown at its head already
        literal = frame.literal
        # (a LOGIN is shown whole: its user name, in a literal, is what is looked for)
        waits = literal is not None and literal.sync and not frame.final and not frame.sensitive
        if not frame.final and not waits and not (literal is not None and frame.streamed):
            if self._size <= self.max_assembled:
                self._parts.append(frame)
                self._size += len(frame.raw) + (literal.size if literal else 0)
            return
        parts = [*self._parts, frame] if self._size <= self.max_assembled else self._parts
        self._parts = []
        self._size = 0
        self._shown = not frame.final
        view = self._view(parts, frame, streams=not frame.final)
        verdict, _ = self.filters.command(view, self.session)
        if type(verdict) is Suspended:  # (no filter decides about it: not waited for)
            verdict.discard()
        self._sent[view.tag] = (view, self.clock())

    def _view(self, parts: list[Frame], last: Frame, *, streams: bool) -> CommandView:
        raw = b"".join(p.raw for p in parts)
        lits = [literal_info(p.literal, inline=not p.streamed) for p in parts if p.literal]
        view = command_view(raw, last, lits, complete=not streams, limits=self.limits)
        return replace(view, sensitive=parts[0].sensitive) if parts[0].sensitive else view

    def _forward(
        self, view: CommandView, segments: tuple[bytes, ...], streams: bool, *, replaced: bool
    ) -> Forward:
        self._sent[view.tag] = (view, self.clock())
        return Forward(segments, streams, replaced, view)

    def _refused(self, view: CommandView, verdict: Reject | Answer, by: str | None) -> Refuse:
        return Refuse(view.tag, local_reply(view.tag, verdict), verdict.status, by, view)

    def _too_big(
        self, frame: Frame, text: str = "command too long to inspect", code: str = "TOOBIG"
    ) -> Refuse:
        parts = self._parts
        self._parts = []
        self._size = 0
        view = self._view(parts, frame, streams=True)
        reject = Reject(text, status="BAD", code=code)
        return self._refused(view, reject, None)

    def _abandoned(self) -> None:
        """A message that ended before its last part: the server refused a literal of a
        command the gate let by in parts (observed), or the relay refused a part.
        Observers are shown what went by."""
        parts = self._parts
        self._parts = []
        self._size = 0
        if self._mode is _OBSERVE:
            view = replace(self._view(parts, parts[-1], streams=True), verdict="abandoned")
            self.filters.observe_command(view, self.session)

    # ------------------------------------------------------------------ responses

    def response(self, frame: Frame, *, oversize: bool = False) -> tuple[Verdict, str | None]:
        """Offer a response's first part to the chain: (verdict, filter name)."""
        command = None
        latency = None
        if frame.kind is FrameKind.STATUS and frame.tag is not None:
            sent = self._sent.pop(frame.tag, None)
            if sent is not None:
                command, began = sent
                latency = self.clock() - began
        lits: list[LiteralInfo] = inline_literals(frame.raw) if b"}" in frame.raw else []
        if frame.literal is not None:
            lits.append(literal_info(frame.literal, inline=not frame.streamed))
        view = response_view(
            frame, command=command, latency=latency, literals=lits, oversize=oversize
        )
        return self.filters.response(view, self.session)

    def completed_locally(self, tag: bytes) -> None:
        self._sent.pop(tag, None)


def as_sync(frame: Frame) -> bytes:
    """A part's bytes with a closing ``{n+}`` written ``{n}`` (it is sent as a
    synchronising literal: the relay waits for the server's ``+``)."""
    raw = frame.raw
    literal = frame.literal
    if literal is None or not literal.nonsync_marker or frame.final:
        return raw
    plus = raw.rindex(b"+}")
    return raw[:plus] + raw[plus + 1 :]


def segment_command(
    raw: bytes, tag: bytes, limits: Limits, *, streamed: LiteralInfo | None = None
) -> tuple[bytes, ...]:
    """Split a complete command (a filter's replacement) into the segments it is sent in:
    each but the last ends in a ``{n}`` announcement.  It must be exactly one command with
    the original tag, and hold no literal too large to keep; else ValueError.

    ``streamed``: the command replaced was decided on its head, its last literal (this
    one) streams after it: the replacement is a head too, ending in an announcement of
    the same size and kind (the client sends that literal as it announced it)."""
    dec = Decoder(Side.CLIENT, limits)
    dec.authenticated = True
    dec.nonsync_as_sync = True
    dec.receive_data(raw)
    segments: list[bytes] = []
    while True:
        ev = dec.next_event()
        if ev is PAUSED:
            dec.continuation()
            continue
        if ev is NEED_DATA or not isinstance(ev, Frame):
            if streamed is not None:
                raise ValueError("a replacement head must end in the literal it replaces")
            raise ValueError("a replacement command must be one complete command")
        if ev.first and (ev.tag != tag or not ev.name):
            raise ValueError("a replacement command must keep the command's tag")
        if ev.streamed:
            literal = ev.literal
            if streamed is None or literal is None:
                raise ValueError("a replacement command cannot hold a literal that large")
            if literal.size != streamed.size or literal.binary != streamed.binary:
                raise ValueError("a replacement head must announce the same literal")
            segments.append(as_sync(ev))
            if dec.next_event() not in (NEED_DATA, PAUSED) or dec.buffered:
                raise ValueError("a replacement head must end with its literal announcement")
            return tuple(segments)
        if streamed is not None and ev.final:
            raise ValueError("a replacement head must end in the literal it replaces")
        segments.append(as_sync(ev))
        if ev.final:
            break
    if dec.buffered:
        raise ValueError("a replacement command must be one command, not several")
    return tuple(segments)


__all__ = [
    "Collect",
    "CommandGate",
    "Decision",
    "End",
    "Forward",
    "Refuse",
    "Wait",
    "as_sync",
    "segment_command",
]
