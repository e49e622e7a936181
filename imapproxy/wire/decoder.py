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
last ``_TAIL_KEEP`` bytes are never given out before the line ends (more if they could be
part of a literal announcement, see ``_safe_cut``), so a ``{n}`` at the end of a long line
is still found and framing stays exact.  Tag, name and number come from the line's start.

Memory: a message part kept whole (its lines and inline literals) never exceeds
``inline_literal_bytes``, except a single line, which may reach ``max_line_bytes``; so the
decoder holds at most ``inline_literal_bytes`` + one line being read (``max_line_bytes``) +
held bytes (``max_held_bytes``), plus the bytes of the last ``receive_data`` not yet looked
at.  Larger literals are passed on as ``LiteralChunk`` events as the bytes arrive, longer
server lines as oversize parts.
"""

from __future__ import annotations

import enum
import re

from .commands import CREDENTIAL_COMMANDS, KNOWN_COMMANDS, UID_COMMANDS
from .errors import LimitExceeded, ProtocolError, Side, bye, tagged
from .events import (
    NEED_DATA,
    PAUSED,
    EndOfStream,
    Event,
    Frame,
    FrameKind,
    LiteralChunk,
    LiteralSpec,
    Wait,
)
from .limits import DEFAULT_LIMITS, Limits

# tag = 1*<any ASTRING-CHAR except "+">, less "]" and 8-bit bytes, which Dovecot refuses;
# the name is an atom that ends at SP or the line end ("CREATE]x" is no CREATE to a
# server).  A line that does not match has no name (""): the relay refuses it itself.
_COMMAND_HEAD = re.compile(
    rb"([^\x00-\x20\x7f-\xff(){%*\"\\+\]]+) ([^\x00-\x20\x7f-\xff(){%*\"\\\]\[]+)(?=[ \r\n]|\Z)"
)
_UID_NEXT = re.compile(rb" ([^\x00-\x20\x7f-\xff(){%*\"\\\]\[]+)(?=[ \r\n]|\Z)")
_RESPONSE_HEAD = re.compile(
    rb"(\*|[^\x00-\x20\x7f(){%*\"\\+]+) (?:(\d{1,10}) )?([^\x00-\x20\x7f(){%*\"\\\]\[]+)"
)
# A literal announcement at the end of a line (the line without its CRLF), matched from
# the line's last "{" (or the "~" before it).  number = 1*DIGIT (RFC 9051 §9): leading
# zeros are legal; more than 20 significant digits is an overflow, rejected before int()
# sees it.
_LITERAL_TAIL = re.compile(rb"(~?)\{(\d+)(\+?)\}\Z")
_MAX_LITERAL_DIGITS = 20
# Bytes at the end of a long server line not given out until more arrives: a literal
# announcement "~{<20 digits>+}" and CRLF fit (leading zeros beyond that: see _safe_cut).
_TAIL_KEEP = 32
# What may follow a cut if a literal announcement straddles it: the rest of "{digits+}",
# then the line end.
_ANNOUNCEMENT_REST = re.compile(rb"\{?[0-9]*\+?\}?\r?\n?")
_STATUS_NAMES = frozenset({"OK", "NO", "BAD", "BYE", "PREAUTH"})
# The upper-case form of the names a session uses over and over, as commonly spelt (a
# fixed table: the per-frame decode + upper() was a measurable part of pipelined relaying,
# and a per-connection cache would cost memory in every idle session).  Other names and
# spellings are converted when seen.
_COMMON_NAMES = (
    "APPEND", "AUTHENTICATE", "CAPABILITY", "CHECK", "CLOSE", "COMPRESS", "COPY", "CREATE",
    "DELETE", "ENABLE", "EXAMINE", "EXPUNGE", "FETCH", "GETQUOTA", "GETQUOTAROOT", "ID", "IDLE",
    "LIST", "LOGIN", "LOGOUT", "LSUB", "MOVE", "NAMESPACE", "NOOP", "RENAME", "SEARCH",
    "SELECT", "SETQUOTA", "STARTTLS", "STATUS", "STORE", "SUBSCRIBE", "UID", "UNSELECT",
    "UNSUBSCRIBE", "XLIST", "OK", "NO", "BAD", "BYE", "PREAUTH", "ENABLED", "ESEARCH", "EXISTS",
    "FLAGS", "RECENT", "VANISHED", "QUOTA", "QUOTAROOT",
)  # fmt: skip
_KNOWN_NAMES = {
    spelt.encode(): name
    for name in _COMMON_NAMES
    for spelt in (name, name.lower(), name.capitalize())
}
_COMPLETION_NAMES = frozenset({"OK", "NO", "BAD"})
# A line that is no well-formed command but names one of these is redacted wholesale.
_CREDENTIAL_WORD = re.compile(rb"LOGIN|AUTHENTICATE", re.IGNORECASE)
# Compaction threshold: consumed bytes are dropped from the buffer once this many pile up.
_COMPACT_AT = 256 * 1024


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


class _Mode(enum.Enum):
    LINE = 1
    STREAM = 2
    HOLD = 3
    FAILED = 4
    TLS = 5  # after STARTTLS OK: waiting for the driver to switch to TLS


class Decoder:
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
        # Client side: pause after every {n+} as after {n} (see the module docstring).  The
        # driver then sends the announcement on as {n}, absorbs the server's "+" and stops
        # reading while paused: the client does not wait, so the literal and whatever it
        # pipelined behind it may already be buffered.  Those bytes count against the
        # driver's read size, not max_held_bytes, which bounds only what arrives later.
        self.nonsync_as_sync = False
        self._held_before = 0  # bytes already buffered when that pause began
        self._discarding = False  # consuming the rest of a message the server refused
        self.discarded_bytes = 0  # bytes consumed that way, in total
        # Usually a bytes object (what was received, or a partial line joined to it),
        # sliced into frames without an intermediate copy; a bytearray only while much
        # more is waiting than arrives (appending stays O(1), so a peer that drips one
        # byte at a time causes no quadratic copying).
        self._buf: bytes | bytearray = b""
        self._pos = 0  # start of unconsumed bytes
        self._eof = False
        self._mode = _Mode.LINE
        self._error: ProtocolError | None = None
        # current message
        self._part_start = 0  # offset in _buf where the current part starts
        self._line_start = 0  # start of the current line within the part
        self._scan = 0  # where the current line's LF search resumes
        self._lit_end = 0  # bytes before this offset are inline literal bytes
        self._in_message = False
        self._first_part = True
        self._kind = FrameKind.COMMAND
        self._tag: bytes | None = None
        self._name = ""
        self._number: int | None = None
        self._sensitive = False
        # Client side: a LOGIN/AUTHENTICATE began and no well-formed command has begun
        # since; until one does, every line is treated as a credential (see
        # _not_a_command), so a password sent after a refusal is never shown.
        self._after_credentials = False
        self._stream_remaining = 0
        self._part_nonsync = False  # the current part holds a {n+} literal
        self._long_line = False  # server: the current line was cut (oversize pieces)
        self._literals = 0  # literals announced in the current message
        self._direct: bytes | None = None  # literal bytes received while streaming
        # client input expectations
        self._next_line_kind = FrameKind.COMMAND
        self._hold: Hold | None = None
        self._hold_tag: bytes | None = None
        self._hold_streamed = False
        self._hold_size = 0
        self._greeting_pending = side is Side.SERVER

    # ------------------------------------------------------------------ input

    def receive_data(self, data: bytes) -> None:
        if self._eof and data:
            raise RuntimeError("receive_data after end of stream")
        if not data:
            self._eof = True
            return
        if self._mode is _Mode.STREAM and self._direct is None and self._pos == len(self._buf):
            # Streaming a literal with nothing buffered: hand the received bytes on as
            # they are, without copying them through the buffer (literal payload moves
            # at memory speed; only a split at the literal's end costs a slice).
            take = self._stream_remaining
            if len(data) <= take:
                self._direct = bytes(data)
                return
            self._direct = bytes(data[:take])
            data = data[take:]
        buf = self._buf
        pos = self._pos
        rest = len(buf) - pos
        if rest == 0:
            self._shift(pos)
            self._buf = bytes(data)
        elif rest <= len(data):
            # A partial line waits: join it to the new bytes.  Copying costs no more than
            # the bytes received, so it stays linear however the stream is cut.
            self._shift(pos)
            self._buf = bytes(memoryview(buf)[pos:]) + data
        else:
            # More waiting than arriving (a peer dripping bytes): append, amortised O(1).
            if type(buf) is not bytearray:
                buf = bytearray(memoryview(buf)[pos:])
                self._shift(pos)
            elif pos >= _COMPACT_AT:
                del buf[:pos]
                self._shift(pos)
            buf += data
            self._buf = buf

    @property
    def buffered(self) -> int:
        """Bytes received but not yet given out in events."""
        direct = self._direct
        return len(self._buf) - self._pos + (len(direct) if direct is not None else 0)

    @property
    def waiting_for(self) -> Hold | None:
        """What the decoder is paused for, if anything (also after a STARTTLS/COMPRESS OK,
        until the driver switches streams)."""
        return self._hold if self._mode is _Mode.HOLD or self._mode is _Mode.TLS else None

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
        return self._hold_tag if self._mode is _Mode.HOLD else None

    @property
    def in_message(self) -> bool:
        return self._in_message

    # ------------------------------------------------- answers from the other side

    def continuation(self) -> bool:
        """The server sent a continuation request (``+``).  Returns whether it was
        expected (a stray ``+`` changes nothing)."""
        if self._mode is not _Mode.HOLD:
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
            self._mode is _Mode.LINE
            and self._hold in (Hold.AUTHENTICATE, Hold.IDLE)
            and tag == self._hold_tag
            and not self._in_message
        ):
            # The server ended the exchange although it had asked for another line
            # (e.g. it aborted AUTHENTICATE): no such line is expected any longer.
            self._release(FrameKind.COMMAND)
            return True
        if self._mode is not _Mode.HOLD or tag != self._hold_tag:
            return False
        hold = self._hold
        if hold in (Hold.STARTTLS, Hold.COMPRESS) and status == "OK":
            if hold is Hold.COMPRESS:
                self._fail(
                    "COMPRESS was accepted: compressed traffic cannot be inspected",
                    fatal_reply=bye("[UNAVAILABLE] compression is not supported by this proxy"),
                )
            self._mode = _Mode.TLS
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

    def start_tls(self) -> bytes:
        """Switch to reading a fresh stream after STARTTLS: returns (and drops) bytes that
        were received after the STARTTLS command but before TLS: never to be interpreted."""
        leftover = (self._direct or b"") + bytes(self._buf[self._pos :])
        self._direct = None
        self._buf = b""
        self._pos = 0
        self._mode = _Mode.LINE
        self._hold = None
        self._hold_tag = None
        self._next_line_kind = FrameKind.COMMAND
        self._greeting_pending = False
        self._in_message = False
        self._discarding = False
        self._long_line = False
        self._continue_after_literal(0)
        return leftover

    def expect_tls(self) -> None:
        """The driver itself answered STARTTLS with OK: behave as after a server OK."""
        self._mode = _Mode.TLS

    def hold_for(self, hold: Hold, tag: bytes) -> None:
        """Pause before the next bytes until the other side answers (driver-initiated)."""
        self._enter_hold(hold, tag)

    # ------------------------------------------------------------------ output

    def next_event(self) -> Event | Wait:
        if self._mode is _Mode.LINE and not self._discarding:
            return self._next_line()  # the common case, one call deep
        if not self._discarding:
            return self._next_event()
        event = self._next_event()
        while self._discarding and (type(event) is Frame or type(event) is LiteralChunk):
            # the rest of a refused message: consumed, not given out
            if type(event) is Frame:
                self.discarded_bytes += len(event.raw)
                if event.final:
                    self._discarding = False
            else:
                self.discarded_bytes += len(event.data)  # type: ignore[union-attr]
            event = self._next_event()
        return event

    def _next_event(self) -> Event | Wait:
        if self._error is not None:
            raise self._error
        mode = self._mode
        if mode is _Mode.LINE:
            return self._next_line()
        if mode is _Mode.STREAM:
            return self._next_chunk()
        if mode is _Mode.HOLD or mode is _Mode.TLS:
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
                and self._kind in _LITERAL_KINDS
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
                    self._mode = _Mode.STREAM
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
        # bytes arrived; what stays behind (at least _TAIL_KEEP bytes) may hold the line's
        # literal announcement.
        cut = self._safe_cut(line_start + limit - _TAIL_KEEP)
        scan = self._scan
        frame = self._emit_part(cut, final=False, oversize=True)
        self._long_line = True
        self._scan = max(scan, cut)  # the LF search resumes where it was
        return frame

    def _safe_cut(self, cut: int) -> int:
        """Move a cut in a long line back before a literal announcement it would split: the
        "{" must stay in the line's kept tail to be found at the line end.  (A cut can
        split one only where the bytes after it could continue "{digits+}" up to the line
        end; in practice never.  The _TAIL_KEEP + 1 bytes after it have always arrived.)"""
        buf = self._buf
        if self._kind not in _LITERAL_KINDS or not _ANNOUNCEMENT_REST.fullmatch(
            buf, cut, cut + _TAIL_KEEP + 1
        ):
            return cut
        line_start = self._line_start
        brace = cut
        if buf[cut] != 0x7B:  # "{": walk back over the digits to the "{" they follow
            while brace > line_start and 0x30 <= buf[brace - 1] <= 0x39:
                brace -= 1
            if brace == line_start or buf[brace - 1] != 0x7B:
                return cut  # digits, but after no "{": not an announcement
            brace -= 1
        if brace > line_start and buf[brace - 1] == 0x7E:  # "~{"
            brace -= 1
        if brace <= self._part_start:
            # "{" and more digits than max_line_bytes: no literal length looks like that
            self._fail("literal length overflow", limit="max_literal_bytes")
        return brace

    def _begin_message(self, start: int, end: int) -> None:
        """Classify a new message from its first line (bytes start..end)."""
        self._in_message = True
        self._first_part = True
        self._number = None
        self._sensitive = False
        self._literals = 0
        buf = self._buf
        if self.side is Side.CLIENT:
            kind = self._next_line_kind
            self._kind = kind
            if kind is not FrameKind.COMMAND:
                self._tag = self._hold_tag
                self._name = kind.name
                self._sensitive = kind is FrameKind.AUTH_DATA
                return
            m = _COMMAND_HEAD.match(buf, start, end)
            if m is None:
                self._tag = _first_word(buf, start, end)
                self._name = ""
                self._not_a_command(start, end)
                return
            tag, raw_name = m.groups()
            self._tag = tag
            name = _KNOWN_NAMES.get(raw_name)
            if name is None:
                name = raw_name.decode("ascii", "replace").upper()
            known = name in KNOWN_COMMANDS
            if name == "UID":
                m2 = _UID_NEXT.match(buf, m.end(), end)
                known = False
                if m2 is not None:
                    sub = m2.group(1).decode("ascii", "replace").upper()
                    name = "UID " + sub
                    known = sub in UID_COMMANDS
            self._name = name
            if name in CREDENTIAL_COMMANDS:
                self._sensitive = self._after_credentials = True
            elif known:
                self._after_credentials = False  # the client sends commands again
            else:
                self._not_a_command(start, end)
            return
        # server side
        if buf[start] == 43:  # "+"
            self._kind = FrameKind.CONTINUATION
            self._tag = None
            self._name = "+"
            return
        m = _RESPONSE_HEAD.match(buf, start, end)
        if m is None:
            self._kind = FrameKind.DATA
            self._tag = _first_word(buf, start, end)
            self._name = ""
            self._greeting_pending = False
            return
        tag, number, raw_name = m.groups()
        name = _KNOWN_NAMES.get(raw_name)
        if name is None:
            name = raw_name.decode("ascii", "replace").upper()
        self._name = name
        if tag == b"*":
            self._tag = None
            if number is not None:
                self._number = int(number)
                self._kind = FrameKind.DATA
            elif name in _STATUS_NAMES:
                self._kind = FrameKind.GREETING if self._greeting_pending else FrameKind.STATUS
            else:
                self._kind = FrameKind.DATA
        else:
            self._tag = tag
            if number is None and name in _COMPLETION_NAMES:
                self._kind = FrameKind.STATUS
            else:
                self._kind = FrameKind.DATA  # malformed; the parser will say so
        self._greeting_pending = False

    def _not_a_command(self, start: int, end: int) -> None:
        """The client's line (start..end) is no well-formed command (no tag and known name):
        it is a credential if a LOGIN/AUTHENTICATE came before it with no well-formed
        command since, whatever happened to that exchange (refused by the relay or the
        server, the password sent anyway), or if it names LOGIN/AUTHENTICATE at all
        (``UID LOGIN``, a glued or misspelt head)."""
        if self._after_credentials or _CREDENTIAL_WORD.search(self._buf, start, end):
            self._sensitive = self._after_credentials = True

    def _literal_at(self, line_start: int, text_end: int) -> LiteralSpec | None:
        buf = self._buf
        brace = buf.rfind(b"{", line_start, text_end)
        if brace < 0:
            return None
        start = brace - 1 if brace > line_start and buf[brace - 1] == 0x7E else brace  # "~{"
        m = _LITERAL_TAIL.match(buf, start, text_end)
        if m is None:
            return None
        digits = m.group(2).lstrip(b"0") or b"0"
        if len(digits) > _MAX_LITERAL_DIGITS:
            self._fail("literal length overflow", limit="max_literal_bytes")
        size = int(digits)
        binary = bool(m.group(1))
        nonsync_marker = bool(m.group(3))
        sync = self.side is Side.CLIENT and not nonsync_marker
        if not self.authenticated and self.side is Side.CLIENT:
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
            self.side is Side.CLIENT
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
            if self.side is Side.CLIENT:
                self._after_message()
            if end >= _COMPACT_AT or end == len(self._buf):
                self._compact()
        return frame

    def _after_message(self) -> None:
        """Decide how the client's next bytes are to be read, once a message is complete."""
        if self.side is not Side.CLIENT or self._discarding:
            return
        kind = self._kind
        if kind is FrameKind.COMMAND:
            name = self._name
            if name == "AUTHENTICATE":
                self._enter_hold(Hold.AUTHENTICATE, self._tag)
            elif name == "IDLE":
                self._enter_hold(Hold.IDLE, self._tag)
            elif name == "STARTTLS":
                self._enter_hold(Hold.STARTTLS, self._tag)
            elif name == "COMPRESS":
                self._enter_hold(Hold.COMPRESS, self._tag)
        elif kind is FrameKind.AUTH_DATA:
            self._enter_hold(Hold.AUTHENTICATE, self._tag)
        elif kind is FrameKind.IDLE_DONE:
            self._next_line_kind = FrameKind.COMMAND
            self._hold = None
            self._hold_tag = None

    def _enter_hold(self, hold: Hold, tag: bytes | None) -> None:
        self._mode = _Mode.HOLD
        self._hold = hold
        self._hold_tag = tag

    def _release(self, next_kind: FrameKind) -> None:
        self._mode = _Mode.LINE
        self._next_line_kind = next_kind
        if next_kind is FrameKind.COMMAND:
            self._hold = None
            self._hold_tag = None
        elif next_kind is FrameKind.AUTH_DATA:
            # stays "in AUTHENTICATE" so completed() can end it without another "+"
            self._hold = Hold.AUTHENTICATE

    def _resume_literal(self) -> None:
        """The server said "+": the client now sends the literal."""
        self._mode = _Mode.LINE
        self._hold = None
        self._hold_tag = None
        start = self._pos
        if self._hold_streamed:
            self._stream_remaining = self._hold_size
            self._mode = _Mode.STREAM
            return
        self._part_start = start
        self._lit_end = start + self._hold_size
        self._line_start = self._lit_end
        self._scan = self._lit_end

    def _continue_after_literal(self, at: int) -> None:
        self._mode = _Mode.LINE
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
        self._mode = _Mode.FAILED
        raise self._error

    def _end_of_stream(self) -> EndOfStream:
        pending = self.buffered
        clean = pending == 0 and not self._in_message and self._mode is not _Mode.STREAM
        return EndOfStream(self.side, clean, pending)

    def _compact(self) -> None:
        pos = self._pos
        if pos == 0:
            return
        buf = self._buf
        if pos == len(buf):
            self._buf = b""
        elif type(buf) is bytearray:
            del buf[:pos]
        else:
            self._buf = buf[pos:]
        self._shift(pos)

    def _shift(self, pos: int) -> None:
        """Offsets after the first ``pos`` bytes of the buffer were dropped."""
        if pos == 0:
            return
        self._pos -= pos
        self._part_start -= pos
        self._line_start -= pos
        self._scan -= pos
        self._lit_end -= pos


_LITERAL_KINDS = frozenset({FrameKind.COMMAND, FrameKind.DATA})


def _first_word(buf: bytes | bytearray, start: int, end: int) -> bytes | None:
    sp = buf.find(b" ", start, end)
    word = bytes(buf[start : sp if sp >= 0 else end]).rstrip(b"\r\n")
    return word or None
