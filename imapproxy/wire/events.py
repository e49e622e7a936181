"""What the decoders emit.

A *message* is one complete IMAP command or response including its literals.  Most messages
arrive as one :class:`Frame`.  A message is split into several frames ("parts") only where it
must be: before a literal the sender will not send until it gets a continuation request
(a client's synchronising ``{n}``), and around a literal too large to hold (streamed as
:class:`LiteralChunk` events).  The parts of one message, concatenated with the chunks between
them, are exactly the bytes that were received.

A server line longer than ``Limits.max_line_bytes`` is not held whole either: it is passed on
in pieces (parts with ``oversize=True``), cut wherever the limit falls, while its end is still
read for a literal announcement.  Such a message is "too long to parse": its tag, name and
number are known (from the start of its first line), its bytes are relayed as they are.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import NamedTuple

from .errors import Side


class FrameKind(enum.Enum):
    COMMAND = "command"  # client: tag SP name ...
    AUTH_DATA = "auth_data"  # client: one line of an AUTHENTICATE exchange (base64 or "*")
    IDLE_DONE = "idle_done"  # client: the line that ends IDLE (normally "DONE")
    GREETING = "greeting"  # server: the first response (* OK / * PREAUTH / * BYE)
    STATUS = "status"  # server: tagged or untagged OK/NO/BAD/BYE/PREAUTH
    DATA = "data"  # server: untagged data (* 3 EXISTS, * LIST ..., * 1 FETCH ...)
    CONTINUATION = "continuation"  # server: "+ ..." continuation request


class Wait(enum.Enum):
    """Returned by ``next_event`` when no event is ready."""

    NEED_DATA = "need_data"  # feed more bytes
    PAUSED = "paused"  # the other side must answer first (see Decoder.waiting_for)


NEED_DATA = Wait.NEED_DATA
PAUSED = Wait.PAUSED


class LiteralSpec(NamedTuple):
    """A literal announcement: ``{n}``, ``{n+}``, ``~{n}`` or ``~{n+}``.

    (A NamedTuple rather than a frozen dataclass: one is made per literal on the hot path.)
    """

    size: int
    sync: bool  # the sender waits for a continuation request before sending the bytes
    binary: bool = False  # literal8 (RFC 3516)
    nonsync_marker: bool = False  # written with "+" (LITERAL+/LITERAL-)

    def announcement(self) -> bytes:
        plus = b"+" if self.nonsync_marker else b""
        return (b"~" if self.binary else b"") + b"{%d%s}" % (self.size, plus)


class Frame:
    """One message, or one part of a message, with its exact bytes.

    ``raw`` is exactly what was received; forwarding ``raw`` unchanged is byte-transparent.
    ``final`` is False when the message goes on after ``literal``: then, if ``streamed``, the
    literal's bytes follow as LiteralChunk events, else the next Frame (``first=False``) starts
    with them.  ``tag``/``name`` describe the whole message and are repeated on every part.
    ``nonsync`` is True when this part announces a non-synchronising literal (``{n+}``,
    ``~{n+}``), held inside it or at its end.  ``sensitive`` marks messages carrying
    credentials (LOGIN, AUTHENTICATE and its data lines): their bytes must never be logged
    as they are.

    ``oversize`` (server side only) marks a part holding a piece of a line longer than
    ``Limits.max_line_bytes``: every piece of such a line but the last is a part of its own
    (``final=False`` and ``literal=None``: the line goes on in the next part); the last
    piece, which ends the line, is marked too (it may announce a literal or end the
    message).  A message with an oversize part cannot be parsed from its parts; relay it
    verbatim.
    """

    __slots__ = (
        "final",
        "first",
        "kind",
        "literal",
        "name",
        "nonsync",
        "number",
        "oversize",
        "raw",
        "sensitive",
        "side",
        "streamed",
        "tag",
    )

    def __init__(
        self,
        side: Side,
        kind: FrameKind,
        raw: bytes,
        tag: bytes | None,
        name: str,
        # (not keyword-only: the decoder passes them by position, which is faster)
        number: int | None = None,
        first: bool = True,
        final: bool = True,
        literal: LiteralSpec | None = None,
        streamed: bool = False,
        sensitive: bool = False,
        nonsync: bool = False,
        oversize: bool = False,
    ) -> None:
        self.side = side
        self.kind = kind
        self.raw = raw
        self.tag = tag
        self.name = name
        self.number = number
        self.first = first
        self.final = final
        self.literal = literal
        self.streamed = streamed
        self.sensitive = sensitive
        self.nonsync = nonsync
        self.oversize = oversize

    def with_raw(self, raw: bytes) -> Frame:
        """The same part with other bytes (as the relay sent it: capabilities mediated,
        ``{n+}`` written ``{n}``, a filter's replacement)."""
        if raw is self.raw:
            return self
        return Frame(
            self.side, self.kind, raw, self.tag, self.name, self.number, self.first,
            self.final, self.literal, self.streamed, self.sensitive, self.nonsync,
            self.oversize,
        )  # fmt: skip

    @property
    def waits_for_continuation(self) -> bool:
        """The sender will send nothing more of this message until it gets a ``+``."""
        return self.literal is not None and self.literal.sync

    def __repr__(self) -> str:
        # Never the bytes: they may hold credentials or private mail.
        tag = self.tag.decode("ascii", "replace") if self.tag is not None else None
        parts = [f"{self.side.value} {self.kind.value}", f"tag={tag!r}", f"name={self.name!r}"]
        if self.number is not None:
            parts.append(f"number={self.number}")
        parts.append(f"len={len(self.raw)}")
        if not self.first:
            parts.append("continued")
        if self.oversize:
            parts.append("oversize")
        if not self.final and self.literal is not None:
            parts.append(f"then={self.literal}{' streamed' if self.streamed else ''}")
        return f"Frame({', '.join(parts)})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Frame):
            return NotImplemented
        return all(getattr(self, s) == getattr(other, s) for s in Frame.__slots__)

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True, slots=True, repr=False)
class LiteralChunk:
    """Bytes of a streamed literal; ``remaining`` more bytes of it follow."""

    side: Side
    data: bytes
    remaining: int

    def __repr__(self) -> str:
        return f"LiteralChunk({self.side.value}, len={len(self.data)}, remaining={self.remaining})"


@dataclass(frozen=True, slots=True)
class EndOfStream:
    """The sender closed its side.  ``clean`` is False when it stopped inside a message
    (for example after announcing a literal); ``pending`` counts the bytes left unframed."""

    side: Side
    clean: bool
    pending: int = 0


Event = Frame | LiteralChunk | EndOfStream
