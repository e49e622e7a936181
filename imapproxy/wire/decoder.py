"""Framing: one direction's byte stream in, frames out.  No I/O, no parsing of arguments.

Theory of operation
-------------------
IMAP is line-based except for literals: a line that ends in ``{n}`` (or ``{n+}``, ``~{n}``,
``~{n+}``) is followed by exactly *n* raw bytes, after which the same message goes on with
another line.  The decoder splits the stream into messages by that rule alone, *before* any
argument parsing, so a malformed or rejected message can never desynchronise the stream and
literal bytes are never read as commands (the imap-codec "fragmentizer" idea).

Which lines may announce literals depends on what is being read:

* client commands may (``APPEND``, ``LOGIN``, ``SEARCH`` ...);
* a client's AUTHENTICATE data lines and IDLE's ``DONE`` never do;
* server data responses may (``* 1 FETCH (BODY[] {n}``, ``* LIST () "/" {n}``);
* server status responses (``OK``/``NO``/``BAD``/``BYE``/``PREAUTH``) and continuation
  requests (``+ ...``) never do: their text is ``resp-text``, which has no literals
  (RFC 9051 §9), so a trailing ``{5}`` there is only text.

Some client input cannot be read until the server has answered:

* after a synchronising literal announcement the client waits for ``+``; if the server
  answers with a tagged ``NO``/``BAD`` instead, the literal never comes and the next bytes
  are a new command;
* after ``AUTHENTICATE`` each line is SASL data only if the server asked for it with ``+``;
* after ``IDLE`` the next line is ``DONE`` only once the server has said ``+``;
* after ``STARTTLS`` (and ``COMPRESS``) the next bytes are TLS (or compressed) once the
  server has said ``OK``.

In those states the decoder *holds* whatever the client sends (``next_event`` returns
``PAUSED``) until it is told the server's answer (:meth:`Decoder.continuation`,
:meth:`Decoder.completed`).  A client that sends early therefore cannot get bytes
interpreted differently by the proxy and by the server: nothing is interpreted until the
server's answer fixes the meaning.

A non-synchronising literal (``{n+}``) has no such answer: the decoder frames it as a
literal, but a server reads it as one only if its parser gets that far (a server that
rejects the line early skips it and runs the literal's bytes as commands).  With
``nonsync_as_sync`` set, the decoder closes that gap for a relay that sends every such
literal on as a synchronising one (``{n}``): it pauses after the announcement exactly as
for ``{n}`` (``Hold.NONSYNC_LITERAL``), although the client sends the literal at once; the
server's ``+`` lets it through, and a tagged answer instead means the server refused the
command, so the literal and the rest of the message, already sent by the client, are
consumed here and never given out.

Before login, at most ``max_literals_unauthenticated`` literals are accepted in one command
(each costs the relay a round trip to the server); past that the session must end, since
the earlier literals have been passed on.

Long lines: a client line longer than ``max_line_bytes`` is refused (fatal).  A server line
has no length limit (a ``* SEARCH`` over 20,000 messages, an ENVELOPE with thousands of
addresses): once it grows past ``max_line_bytes`` it is given out in pieces, parts marked
``oversize`` (see :class:`~imapproxy.wire.events.Frame`), cut where the limit falls.  The
last ``TAIL_KEEP`` bytes are never given out before the line ends (more if they could be
part of a literal announcement, see :mod:`.longlines`), so a ``{n}`` at the end of a long line
is still found and framing stays exact.  Tag, name and number come from the line's start.

Memory: a message part kept whole (its lines and inline literals) never exceeds
``inline_literal_bytes``, except a single line, which may reach ``max_line_bytes``; so the
decoder holds at most ``inline_literal_bytes`` + one line being read (``max_line_bytes``) +
held bytes (``max_held_bytes``), plus the bytes of the last ``receive_data`` not yet looked
at.  Larger literals are passed on as ``LiteralChunk`` events as the bytes arrive, longer
server lines as oversize parts.

Where the pieces are: this module is the framer; the buffer is :mod:`.intake`, the holds
and the answers that release them :mod:`.holds` (both base classes of :class:`Decoder`),
and the pure functions it calls are :mod:`.heads` (a message's tag, name, number),
:mod:`.literals` (literal announcements) and :mod:`.longlines` (cutting long lines).
"""

from __future__ import annotations

from .commands import CREDENTIAL_COMMANDS
from .errors import LimitExceeded, ProtocolError, Side, bye, tagged
from .events import (
    NEED_DATA,
    EndOfStream,
    Event,
    Frame,
    FrameKind,
    LiteralChunk,
    LiteralSpec,
    Wait,
)
from .heads import command_head, names_credentials, response_head
from .holds import Hold, Holds, Mode
from .intake import COMPACT_AT, Intake
from .limits import DEFAULT_LIMITS, Limits
from .literals import LITERAL_KINDS, SIZE_OVERFLOW, announced_literal
from .longlines import CUT_OVERFLOW, TAIL_KEEP, safe_cut

__all__ = ["Decoder", "Hold"]

# Enum members the per-frame path tests, as module constants: on CPython 3.11 looking a
# member up on its class (Side.CLIENT) costs several times a global lookup.
_CLIENT = Side.CLIENT
_LINE = Mode.LINE
_STREAM = Mode.STREAM
_COMMAND = FrameKind.COMMAND
_AUTH_DATA = FrameKind.AUTH_DATA
_CONTINUATION = FrameKind.CONTINUATION


class Decoder(Holds, Intake):
    """Frames one direction of an IMAP connection.

    ``receive_data(b"")`` signals end of stream.  ``next_event()`` returns a Frame,
    LiteralChunk or EndOfStream, or ``NEED_DATA`` / ``PAUSED``; it raises
    :class:`ProtocolError` for input it cannot accept (``fatal`` ones again on every later
    call).
    """

    def __init__(self, side: Side, limits: Limits = DEFAULT_LIMITS) -> None:
        self.side = side
        self.limits = limits
        # Set by whoever tracks the session state: literal limits differ before login.
        self.authenticated = False
        # Largest non-synchronising literal the client may send: None when the server has
        # LITERAL+, limits.max_nonsync_literal_minus for LITERAL-.  Checked on client input.
        self.max_nonsync_literal: int | None = None
        self._init_holds()  # nonsync_as_sync, discarded_bytes and what a hold waits for
        self._init_intake()  # the buffer, and the offsets of the current part and line
        self._mode = Mode.LINE
        self._error: ProtocolError | None = None
        # current message
        self._in_message = False
        self._first_part = True
        self._kind = FrameKind.COMMAND
        self._tag: bytes | None = None
        self._name = ""
        self._number: int | None = None
        self._sensitive = False
        # Client side: a LOGIN/AUTHENTICATE began and no well-formed command has begun
        # since; until one does, every line is treated as a credential (see
        # _begin_message), so a password sent after a refusal is never shown.
        self._after_credentials = False
        self._stream_remaining = 0
        self._part_nonsync = False  # the current part holds a {n+} literal
        self._long_line = False  # server: the current line was cut (oversize pieces)
        self._literals = 0  # literals announced in the current message
        self._greeting_pending = side is Side.SERVER

    @property
    def in_message(self) -> bool:
        return self._in_message

    # ------------------------------------------------------------------ STARTTLS

    def start_tls(self) -> bytes:
        """Switch to reading a fresh stream after STARTTLS: returns (and drops) bytes that
        were received after the STARTTLS command but before TLS: never to be interpreted."""
        leftover = self._take_all()
        self._mode = Mode.LINE
        self._hold = None
        self._hold_tag = None
        self._next_line_kind = FrameKind.COMMAND
        self._greeting_pending = False
        self._in_message = False
        self._discarding = False
        self._long_line = False
        self._continue_after_literal(0)
        return leftover

    # ------------------------------------------------------------------ output

    def next_event(self) -> Event | Wait:
        if self._mode is _LINE and not self._discarding:
            return self._next_line()  # the common case, one call deep
        if not self._discarding:
            return self._next_event()
        return self._next_event_discarding()

    def _next_event(self) -> Event | Wait:
        if self._error is not None:
            raise self._error
        mode = self._mode
        if mode is _LINE:
            return self._next_line()
        if mode is _STREAM:
            return self._next_chunk()
        if mode is Mode.HOLD or mode is Mode.TLS:
            return self._paused()
        raise AssertionError(mode)

    # ------------------------------------------------------------------ internals

    def _next_line(self) -> Event | Wait:
        buf = self._buf
        limits = self.limits
        while True:
            if self._lit_end > len(buf):
                # waiting for the bytes of an inline literal
                if self._eof:
                    return self._end_of_stream()
                return NEED_DATA
            nl = buf.find(b"\n", self._scan)
            if nl < 0:
                if len(buf) - self._line_start > limits.max_line_bytes:
                    if self.side is Side.SERVER:
                        return self._long_line_piece()
                    self._fail("line too long", limit="max_line_bytes")
                self._scan = len(buf)
                if self._eof:
                    return self._end_of_stream()
                if not self._in_message and self._pos == len(buf):
                    self._compact()
                return NEED_DATA
            line_start = self._line_start
            end = nl + 1
            if end - line_start > limits.max_line_bytes:
                if self.side is Side.SERVER:
                    return self._long_line_piece()
                self._fail("line too long", limit="max_line_bytes")
            if not self._in_message:
                self._begin_message(line_start, end)
            # Where does this line's text end (without CRLF)?
            text_end = nl - 1 if nl > line_start and buf[nl - 1] == 13 else nl
            spec = None
            if (
                text_end > line_start
                and buf[text_end - 1] == 125  # "}"
                and self._kind in LITERAL_KINDS
            ):
                spec = self._literal_at(line_start, text_end)
            if spec is None:
                return self._emit_part(end, final=True)
            # A literal follows this line.
            size = spec.size
            if spec.sync and self._discarding:
                # The client waits for a "+" that will not come (the server refused the
                # command): the message ends here.
                return self._emit_part(end, final=True)
            if spec.sync or (spec.nonsync_marker and self.nonsync_as_sync and not self._discarding):
                streamed = size > limits.inline_literal_bytes
                frame = self._emit_part(end, final=False, literal=spec, streamed=streamed)
                self._hold_streamed = streamed
                self._hold_size = size
                if spec.sync:
                    self._enter_hold(Hold.LITERAL, self._tag)
                else:
                    self._enter_hold(Hold.NONSYNC_LITERAL, self._tag)
                    self._held_before = self.buffered
                return frame
            if end - self._part_start + size > limits.inline_literal_bytes:
                # Too big to keep: the part so far goes out now and the literal streams.
                # (Counting the part's lines too keeps many short lines with small or
                # empty literals from growing one part without bound.)
                frame = self._emit_part(end, final=False, literal=spec, streamed=True)
                self._stream_remaining = size
                if size:
                    self._mode = _STREAM
                else:
                    self._continue_after_literal(self._pos)
                return frame
            # Small literal: keep it inside this frame and go on with the next line.
            if spec.nonsync_marker:
                self._part_nonsync = True
            self._lit_end = end + size
            self._line_start = self._lit_end
            self._scan = self._lit_end

    def _long_line_piece(self) -> Frame:
        """Server: more than max_line_bytes of the current line are here (with or without
        its end).  Give out a piece of it: the part so far and the line's next bytes."""
        line_start = self._line_start
        limit = self.limits.max_line_bytes
        if not self._in_message:
            # (from the first max_line_bytes only, however many bytes arrived at once, so
            # that the tag does not depend on how the stream was cut)
            self._begin_message(line_start, line_start + limit)
        # Pieces of a fixed size, so that where a line is cut does not depend on how its
        # bytes arrived; what stays behind (at least TAIL_KEEP bytes) may hold the line's
        # literal announcement.
        cut = line_start + limit - TAIL_KEEP
        if self._kind in LITERAL_KINDS:
            cut = safe_cut(self._buf, cut, line_start, self._part_start)
            if cut == CUT_OVERFLOW:
                # "{" and more digits than max_line_bytes: no literal length looks like that
                self._fail("literal length overflow", limit="max_literal_bytes")
        scan = self._scan
        frame = self._emit_part(cut, final=False, oversize=True)
        self._long_line = True
        self._scan = max(scan, cut)  # the LF search resumes where it was
        return frame

    def _begin_message(self, start: int, end: int) -> None:
        """Classify a new message from its first line (bytes start..end)."""
        self._in_message = True
        self._first_part = True
        self._sensitive = False
        self._literals = 0
        if self.side is _CLIENT:
            self._number = None
            kind = self._next_line_kind
            self._kind = kind
            if kind is not _COMMAND:
                self._tag = self._hold_tag
                self._name = kind.name
                self._sensitive = kind is _AUTH_DATA
                return
            self._tag, name, known = command_head(self._buf, start, end)
            self._name = name
            if name in CREDENTIAL_COMMANDS:
                self._sensitive = self._after_credentials = True
            elif known:
                self._after_credentials = False  # the client sends commands again
            elif self._after_credentials or names_credentials(self._buf, start, end):
                # No well-formed command (no tag and known name): a credential if a
                # LOGIN/AUTHENTICATE came before it with no well-formed command since,
                # whatever happened to that exchange (refused by the relay or the server,
                # the password sent anyway), or if it names LOGIN/AUTHENTICATE at all.
                self._sensitive = self._after_credentials = True
            return
        kind, self._tag, self._name, self._number = response_head(
            self._buf, start, end, self._greeting_pending
        )
        self._kind = kind
        if kind is not _CONTINUATION:
            self._greeting_pending = False

    def _literal_at(self, line_start: int, text_end: int) -> LiteralSpec | None:
        """The literal the line announces, if any, within the limits (else refused)."""
        found = announced_literal(self._buf, line_start, text_end)
        if found is None:
            return None
        size, binary, nonsync_marker = found
        if size == SIZE_OVERFLOW:
            self._fail("literal length overflow", limit="max_literal_bytes")
        client = self.side is _CLIENT
        sync = client and not nonsync_marker
        if not self.authenticated and client:
            self._literals += 1
            if self._literals > self.limits.max_literals_unauthenticated:
                text = "too many literals in one command before login"
                if sync and self._kind is FrameKind.COMMAND and self._first_part:
                    self._refuse_line(text_end, f"[LIMIT] {text}", "max_literals_unauthenticated")
                # Earlier literals of this command have gone upstream: the server is
                # inside the command and cannot be brought back in step.
                self._fail(text, limit="max_literals_unauthenticated")
        limit = self.limits.max_literal(self.authenticated)
        limit_name = (
            "max_literal_bytes" if self.authenticated else "max_literal_bytes_unauthenticated"
        )
        if size > limit:
            if sync and self._kind is FrameKind.COMMAND and self._first_part:
                # Nothing of this message has been passed on yet and the client waits for
                # "+": refuse it, skip the line, and the stream stays in step.
                self._refuse_line(text_end, "[TOOBIG] literal too large", limit_name)
            self._fail("literal too large", limit=limit_name, toobig=True)
        if (
            client
            and nonsync_marker
            and self.max_nonsync_literal is not None
            and size > self.max_nonsync_literal
        ):
            # RFC 7888 §4: with only LITERAL- a larger non-synchronising literal is an
            # error, and its bytes are already on their way: the stream cannot be trusted.
            self._fail(
                "non-synchronising literal larger than LITERAL- allows",
                limit="max_nonsync_literal_minus",
                toobig=True,
            )
        return LiteralSpec(size, sync, binary, nonsync_marker)

    def _emit_part(
        self,
        end: int,
        *,
        final: bool,
        literal: LiteralSpec | None = None,
        streamed: bool = False,
        oversize: bool = False,
    ) -> Frame:
        first = self._first_part
        self._first_part = final
        raw = self._buf[self._part_start : end]
        if type(raw) is not bytes:
            raw = bytes(raw)
        frame = Frame(
            self.side,
            self._kind,
            raw,
            self._tag,
            self._name,
            self._number,
            first,
            final,
            literal,
            streamed,
            self._sensitive,
            self._part_nonsync or (literal is not None and literal.nonsync_marker),
            oversize or self._long_line,
        )
        self._part_nonsync = False
        self._long_line = False
        self._pos = self._part_start = self._line_start = self._scan = self._lit_end = end
        if final:
            self._in_message = False
            if self.side is _CLIENT:
                self._after_message()
            if end >= COMPACT_AT or end == len(self._buf):
                self._compact()
        return frame

    def _resume_literal(self) -> None:
        """The server said "+": the client now sends the literal."""
        self._mode = Mode.LINE
        self._hold = None
        self._hold_tag = None
        start = self._pos
        if self._hold_streamed:
            self._stream_remaining = self._hold_size
            self._mode = Mode.STREAM
            return
        self._part_start = start
        self._lit_end = start + self._hold_size
        self._line_start = self._lit_end
        self._scan = self._lit_end

    def _continue_after_literal(self, at: int) -> None:
        self._mode = _LINE
        self._part_nonsync = False
        self._part_start = at
        self._line_start = at
        self._scan = at
        self._lit_end = at

    def _end_message_abandoned(self) -> None:
        """A synchronising literal was refused: the message ends without its literal."""
        self._in_message = False
        self._first_part = True
        self._continue_after_literal(self._pos)

    def _next_chunk(self) -> Event | Wait:
        direct = self._direct
        if direct is not None:
            self._direct = None
            self._stream_remaining -= len(direct)
            remaining = self._stream_remaining
            if remaining == 0:
                self._continue_after_literal(self._pos)
            return LiteralChunk(self.side, direct, remaining)
        avail = len(self._buf) - self._pos
        if avail == 0:
            if self._eof:
                return self._end_of_stream()
            self._compact()
            return NEED_DATA
        n = min(avail, self._stream_remaining)
        start = self._pos
        data = self._buf[start : start + n]
        if type(data) is not bytes:
            data = bytes(data)
        self._pos = start + n
        self._stream_remaining -= n
        remaining = self._stream_remaining
        if remaining == 0:
            self._continue_after_literal(self._pos)
        return LiteralChunk(self.side, data, remaining)

    def _refuse_line(self, text_end: int, text: str, limit: str) -> None:
        """Skip the rest of the current line and raise a recoverable error."""
        tag = self._tag
        nl = self._buf.find(b"\n", text_end)
        self._pos = nl + 1
        self._in_message = False
        self._first_part = True
        self._continue_after_literal(self._pos)
        raise LimitExceeded(
            text,
            side=self.side,
            fatal=False,
            reply=tagged(tag, "NO", text),
            limit=limit,
            tag=tag,
        )

    def _fail(
        self,
        message: str,
        *,
        limit: str | None = None,
        toobig: bool = False,
        fatal_reply: bytes | None = None,
    ) -> None:
        code = "[TOOBIG] " if toobig else ""
        if fatal_reply is None:
            fatal_reply = bye(f"{code}{message}")
        cls = LimitExceeded if limit is not None else ProtocolError
        self._error = cls(
            message, side=self.side, fatal=True, reply=fatal_reply, limit=limit, tag=self._tag
        )
        self._mode = Mode.FAILED
        raise self._error

    def _end_of_stream(self) -> EndOfStream:
        pending = self.buffered
        clean = pending == 0 and not self._in_message and self._mode is not Mode.STREAM
        return EndOfStream(self.side, clean, pending)
