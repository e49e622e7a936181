"""Holds: client input that cannot be read until the server has answered.

After a synchronising literal announcement, ``AUTHENTICATE``, ``IDLE``, ``STARTTLS`` or
``COMPRESS`` the meaning of the client's next bytes depends on the server's answer (see the
:mod:`~imapproxy.wire.decoder` docstring).  Until it is known the decoder *holds* them
(``next_event`` returns ``PAUSED``); :meth:`Holds.continuation` and :meth:`Holds.completed`
tell it the answer, and :meth:`Holds.hold_for` lets a driver hold for an answer of its own
making.  :class:`Holds` is that state machine, a part of
:class:`~imapproxy.wire.decoder.Decoder` (a base class rather than an object it owns: the
framer reads the mode and the discarding flag on every line, and those stay plain
attributes of the decoder).
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

from .errors import Side, bye
from .events import PAUSED, Event, Frame, FrameKind, LiteralChunk, Wait

if TYPE_CHECKING:
    from .events import EndOfStream
    from .limits import Limits


class Hold(enum.Enum):
    """What a paused client decoder is waiting for."""

    LITERAL = "literal"  # "+" lets the literal come; a tagged reply cancels it
    # a {n+} literal sent on as {n} (nonsync_as_sync): "+" lets it through; a tagged reply
    # means the rest of the message (already sent by the client) is discarded
    NONSYNC_LITERAL = "nonsync_literal"
    AUTHENTICATE = "authenticate"  # "+" asks for one SASL line; a tagged reply ends it
    IDLE = "idle"  # "+" starts idling; a tagged reply refused IDLE
    STARTTLS = "starttls"  # tagged OK: TLS follows (the driver must call start_tls)
    COMPRESS = "compress"  # tagged OK: compressed bytes follow (unsupported: fatal)
    # Not a decoder state: Conversation.continued says a "+" answered a literal the relay
    # sent on its own (a command it assembled and now sends in segments; see
    # Conversation.expect_relay_continuation)
    RELAY_LITERAL = "relay_literal"


class Mode(enum.Enum):
    """What a decoder does with its next bytes (internal to the decoder)."""

    LINE = 1
    STREAM = 2
    HOLD = 3
    FAILED = 4
    TLS = 5  # after STARTTLS OK: waiting for the driver to switch to TLS


# Enum members tested once per client message, as module constants (on CPython 3.11 a
# member looked up on its class costs several times a global lookup).
_CLIENT = Side.CLIENT
_COMMAND = FrameKind.COMMAND
_AUTH_DATA = FrameKind.AUTH_DATA
_IDLE_DONE = FrameKind.IDLE_DONE


class Holds:
    """The client decoder's holds and how the server's answers release them."""

    # The framer's state this reads and sets (Decoder.__init__ makes it).
    side: Side
    limits: Limits
    _mode: Mode
    _eof: bool
    _in_message: bool
    _kind: FrameKind
    _name: str
    _tag: bytes | None

    if TYPE_CHECKING:  # provided by the Decoder

        @property
        def buffered(self) -> int: ...
        def _next_event(self) -> Event | Wait: ...
        def _end_of_stream(self) -> EndOfStream: ...
        def _resume_literal(self) -> None: ...
        def _end_message_abandoned(self) -> None: ...
        def _fail(
            self,
            message: str,
            *,
            limit: str | None = None,
            toobig: bool = False,
            fatal_reply: bytes | None = None,
        ) -> None: ...

    def _init_holds(self) -> None:
        # Client side: pause after every {n+} as after {n} (see the decoder module).  The
        # driver then sends the announcement on as {n}, absorbs the server's "+" and stops
        # reading while paused: the client does not wait, so the literal and whatever it
        # pipelined behind it may already be buffered.  Those bytes count against the
        # driver's read size, not max_held_bytes, which bounds only what arrives later.
        self.nonsync_as_sync = False
        self._held_before = 0  # bytes already buffered when that pause began
        self._discarding = False  # consuming the rest of a message the server refused
        self.discarded_bytes = 0  # bytes consumed that way, in total
        # client input expectations
        self._next_line_kind = FrameKind.COMMAND
        self._hold: Hold | None = None
        self._hold_tag: bytes | None = None
        self._hold_streamed = False  # the held literal streams (too large to keep inline)
        self._hold_size = 0  # the held literal's size

    # ------------------------------------------------------------------ state

    @property
    def waiting_for(self) -> Hold | None:
        """What the decoder is paused for, if anything (also after a STARTTLS/COMPRESS OK,
        until the driver switches streams)."""
        return self._hold if self._mode is Mode.HOLD or self._mode is Mode.TLS else None

    @property
    def exchange(self) -> Hold | None:
        """The exchange in progress (a literal, AUTHENTICATE, IDLE ...), also while not
        paused: e.g. reading a SASL line the server asked for, or IDLE's DONE."""
        return self._hold

    @property
    def idling(self) -> bool:
        """Inside IDLE: waiting for the server's "+" or for the client's DONE."""
        return self._hold is Hold.IDLE

    @property
    def waiting_tag(self) -> bytes | None:
        return self._hold_tag if self._mode is Mode.HOLD else None

    # ------------------------------------------------- answers from the other side

    def continuation(self) -> bool:
        """The server sent a continuation request (``+``).  Returns whether it was
        expected (a stray ``+`` changes nothing)."""
        if self._mode is not Mode.HOLD:
            return False
        hold = self._hold
        if hold is Hold.LITERAL or hold is Hold.NONSYNC_LITERAL:
            self._resume_literal()
        elif hold is Hold.AUTHENTICATE:
            self._release(FrameKind.AUTH_DATA)
        elif hold is Hold.IDLE:
            self._release(FrameKind.IDLE_DONE)
        else:
            return False
        return True

    def completed(self, tag: bytes, status: str) -> bool:
        """The server completed the command ``tag`` with ``status`` (OK/NO/BAD).

        Returns whether it settled what the decoder was waiting for.
        """
        if (
            self._mode is Mode.LINE
            and self._hold in (Hold.AUTHENTICATE, Hold.IDLE)
            and tag == self._hold_tag
            and not self._in_message
        ):
            # The server ended the exchange although it had asked for another line
            # (e.g. it aborted AUTHENTICATE): no such line is expected any longer.
            self._release(FrameKind.COMMAND)
            return True
        if self._mode is not Mode.HOLD or tag != self._hold_tag:
            return False
        hold = self._hold
        if hold in (Hold.STARTTLS, Hold.COMPRESS) and status == "OK":
            if hold is Hold.COMPRESS:
                self._fail(
                    "COMPRESS was accepted: compressed traffic cannot be inspected",
                    fatal_reply=bye("[UNAVAILABLE] compression is not supported by this proxy"),
                )
            self._mode = Mode.TLS
            return True
        if hold is Hold.LITERAL:
            # The literal will not come: the message ended here, unsent.
            self._end_message_abandoned()
        elif hold is Hold.NONSYNC_LITERAL:
            # The literal comes anyway (the client did not wait), and so does the rest of
            # the message: read it as the client wrote it, but give none of it out.
            self._discarding = True
            self._resume_literal()
            return True
        self._release(FrameKind.COMMAND)
        return True

    def refused(self) -> None:
        """The message just taken was refused by the relay itself (never sent upstream):
        as after a tagged BAD from the server, no "+" or exchange follows it."""
        if self._hold is not None:
            self.completed(self._hold_tag, "BAD")  # type: ignore[arg-type]

    def expect_tls(self) -> None:
        """The driver itself answered STARTTLS with OK: behave as after a server OK."""
        self._mode = Mode.TLS

    def hold_for(self, hold: Hold, tag: bytes) -> None:
        """Pause before the next bytes until the other side answers (driver-initiated)."""
        self._enter_hold(hold, tag)

    # ------------------------------------------------------------------ internals

    def _after_message(self) -> None:
        """Decide how the client's next bytes are to be read, once a message is complete."""
        if self.side is not _CLIENT or self._discarding:
            return
        kind = self._kind
        if kind is _COMMAND:
            name = self._name
            if name == "AUTHENTICATE":
                self._enter_hold(Hold.AUTHENTICATE, self._tag)
            elif name == "IDLE":
                self._enter_hold(Hold.IDLE, self._tag)
            elif name == "STARTTLS":
                self._enter_hold(Hold.STARTTLS, self._tag)
            elif name == "COMPRESS":
                self._enter_hold(Hold.COMPRESS, self._tag)
        elif kind is _AUTH_DATA:
            self._enter_hold(Hold.AUTHENTICATE, self._tag)
        elif kind is _IDLE_DONE:
            self._next_line_kind = _COMMAND
            self._hold = None
            self._hold_tag = None

    def _enter_hold(self, hold: Hold, tag: bytes | None) -> None:
        self._mode = Mode.HOLD
        self._hold = hold
        self._hold_tag = tag

    def _release(self, next_kind: FrameKind) -> None:
        self._mode = Mode.LINE
        self._next_line_kind = next_kind
        if next_kind is FrameKind.COMMAND:
            self._hold = None
            self._hold_tag = None
        elif next_kind is FrameKind.AUTH_DATA:
            # stays "in AUTHENTICATE" so completed() can end it without another "+"
            self._hold = Hold.AUTHENTICATE

    def _paused(self) -> Event | Wait:
        """next_event while held: PAUSED, unless the peer sent too much meanwhile."""
        held_limit = self.limits.max_held_bytes
        if self._hold is Hold.NONSYNC_LITERAL:
            held_limit += self._held_before  # received before the pause, legitimately
        if self.buffered > held_limit:
            self._fail(
                "peer sent too much while it should have been waiting for the other side",
                limit="max_held_bytes",
            )
        if self._eof:
            return self._end_of_stream()
        return PAUSED

    def _next_event_discarding(self) -> Event | Wait:
        """next_event while the rest of a message the server refused is read (after a held
        {n+}): consumed, not given out."""
        event = self._next_event()
        while self._discarding and (type(event) is Frame or type(event) is LiteralChunk):
            if type(event) is Frame:
                self.discarded_bytes += len(event.raw)
                if event.final:
                    self._discarding = False
            else:
                self.discarded_bytes += len(event.data)  # type: ignore[union-attr]
            event = self._next_event()
        return event
