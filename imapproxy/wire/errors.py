"""Errors of the wire codec.

Every error the codec raises is a :class:`ProtocolError`.  It says which side broke the
protocol, which limit (if any) was hit, and carries the reply to send: a tagged ``BAD``/``NO``
when the stream can go on, or an untagged ``BYE`` when framing cannot be trusted any more and
the connection must close.  Messages never contain payload bytes, so they are safe to log.
"""

from __future__ import annotations

import enum


class Side(enum.Enum):
    """Who sent the bytes."""

    CLIENT = "client"
    SERVER = "server"


class ProtocolError(Exception):
    """The peer on ``side`` sent something the codec cannot accept.

    ``fatal`` errors leave the stream unframeable: send ``reply`` (a ``* BYE``) and close.
    Non-fatal errors were recovered from: send ``reply`` (a tagged ``BAD``/``NO``) and go on
    reading; the decoder has already skipped the offending message.
    """

    def __init__(
        self,
        message: str,
        *,
        side: Side,
        fatal: bool,
        reply: bytes,
        limit: str | None = None,
        tag: bytes | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.side = side
        self.fatal = fatal
        self.reply = reply
        self.limit = limit
        self.tag = tag

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.message!r}, side={self.side.value}, "
            f"fatal={self.fatal}, limit={self.limit!r})"
        )


class LimitExceeded(ProtocolError):
    """A configured limit (see :class:`imapproxy.wire.limits.Limits`) was exceeded."""


class ParseError(ProtocolError):
    """A framed message's bytes do not follow the IMAP grammar (or exceed a parse limit).

    Framing is unaffected (never fatal): the message can still be forwarded, or answered with
    ``reply`` (a tagged ``BAD``).  ``offset`` is where in the message parsing stopped.
    """

    def __init__(
        self,
        message: str,
        *,
        side: Side,
        tag: bytes | None = None,
        offset: int = 0,
        limit: str | None = None,
    ) -> None:
        super().__init__(
            message,
            side=side,
            fatal=False,
            reply=tagged(tag, "BAD", message),
            limit=limit,
            tag=tag,
        )
        self.offset = offset


class EncodeError(ValueError):
    """A value cannot be put on the wire safely (e.g. CR/LF in an atom, NUL in a string)."""


def bye(text: str) -> bytes:
    return b"* BYE " + text.encode("ascii", "replace") + b"\r\n"


def tagged(tag: bytes | None, status: str, text: str) -> bytes:
    return (tag or b"*") + b" " + status.encode() + b" " + text.encode("ascii", "replace") + b"\r\n"
