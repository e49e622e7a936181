"""Typed argument tokens and parsed messages.

Arguments are lexed generically (the shape of IMAP arguments is uniform): atoms, numbers,
sequence sets, quoted strings, literals, NIL and parenthesised lists.  A filter that needs a
typed view of one command reads it from these tokens; unknown commands and extensions parse
the same way and are never rejected for being unknown.

Values that carry credentials are wrapped in :class:`~imapproxy.wire.secret.Secret`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .events import LiteralSpec
from .secret import Secret


@dataclass(frozen=True, slots=True)
class Atom:
    """A bare word: ``INBOX``, ``\\Seen``, ``BODY[HEADER.FIELDS (FROM)]<0.100>``."""

    value: str


@dataclass(frozen=True, slots=True)
class Number:
    value: int


_SEQ_RANGE = re.compile(r"([0-9]+|\*)(?::([0-9]+|\*))?\Z")


@dataclass(frozen=True, slots=True)
class SequenceSet:
    """``1:5,7,9:*`` or ``$`` (RFC 5182).  ``*`` is kept as ``None`` in :meth:`ranges`."""

    value: str

    def ranges(self) -> list[tuple[int | None, int | None]]:
        if self.value == "$":
            return []
        out: list[tuple[int | None, int | None]] = []
        for part in self.value.split(","):
            m = _SEQ_RANGE.match(part)
            if m is None:
                raise ValueError(f"bad sequence set element at {len(out)}")
            lo = None if m.group(1) == "*" else int(m.group(1))
            hi_s = m.group(2)
            hi = lo if hi_s is None else (None if hi_s == "*" else int(hi_s))
            out.append((lo, hi))
        return out


@dataclass(frozen=True, slots=True)
class Quoted:
    """A quoted string, unescaped."""

    value: bytes


@dataclass(frozen=True, slots=True)
class Literal:
    """A literal held in the frame.  ``spec`` keeps how it was announced."""

    value: bytes
    spec: LiteralSpec

    def __repr__(self) -> str:
        return f"Literal(len={len(self.value)}, spec={self.spec})"


@dataclass(frozen=True, slots=True)
class LiteralRef:
    """A literal too large to hold: its bytes were streamed as LiteralChunk events."""

    spec: LiteralSpec


@dataclass(frozen=True, slots=True)
class Nil:
    pass


NIL = Nil()


@dataclass(frozen=True, slots=True)
class ParenList:
    items: tuple[Token, ...]


Token = Atom | Number | SequenceSet | Quoted | Literal | LiteralRef | Nil | ParenList | Secret


def string_value(token: Token) -> bytes | None:
    """The bytes of a string-like token (astring / nstring), or None for NIL / non-strings."""
    if isinstance(token, Secret):
        token = token.reveal()
    if isinstance(token, (Quoted, Literal)):
        return token.value
    if isinstance(token, Atom):
        return token.value.encode()
    if isinstance(token, Number):
        return str(token.value).encode()
    if isinstance(token, SequenceSet):
        return token.value.encode()
    return None


# ---------------------------------------------------------------- parsed messages


@dataclass(frozen=True, slots=True)
class Command:
    """A client command.  ``name`` is upper-case and includes a ``UID`` prefix
    (``"UID FETCH"``).  ``truncated`` is True when only the head was parsed (the message goes
    on after a streamed literal)."""

    tag: bytes
    name: str
    args: tuple[Token, ...] = ()
    truncated: bool = False


@dataclass(frozen=True, slots=True)
class ResponseCode:
    """``[NAME args]`` of a status response; ``args`` is the raw text after the name."""

    name: str
    args: bytes = b""

    def capabilities(self) -> tuple[str, ...]:
        return tuple(a.decode("ascii", "replace") for a in self.args.split())


@dataclass(frozen=True, slots=True)
class StatusResponse:
    """``tag OK|NO|BAD text`` or ``* OK|NO|BAD|BYE|PREAUTH text`` (``tag`` None)."""

    tag: bytes | None
    status: str
    code: ResponseCode | None = None
    text: bytes = b""


@dataclass(frozen=True, slots=True)
class DataResponse:
    """Untagged data: ``* 3 EXISTS`` (``number`` 3), ``* LIST (...) "/" INBOX``."""

    name: str
    number: int | None = None
    args: tuple[Token, ...] = ()
    truncated: bool = False


@dataclass(frozen=True, slots=True)
class ContinuationRequest:
    text: bytes = b""


@dataclass(frozen=True, slots=True)
class AuthData:
    """One client line of an AUTHENTICATE exchange (without CRLF)."""

    data: Secret[bytes] = field(default_factory=lambda: Secret(b""))

    @property
    def cancelled(self) -> bool:
        return self.data.reveal() == b"*"


@dataclass(frozen=True, slots=True)
class IdleDone:
    valid: bool = True


Response = StatusResponse | DataResponse | ContinuationRequest
Message = Command | Response | AuthData | IdleDone
