"""Parsing framed messages into commands and responses.

The parser only ever sees whole frames (or the head of a message whose next literal is
streamed), so it never has to wait for bytes and can never disturb framing: a parse error is a
value to answer with ``BAD``, not a reason to lose the stream.
"""

from __future__ import annotations

import re

from .errors import LimitExceeded, ParseError, Side
from .events import Frame, FrameKind, LiteralSpec
from .limits import DEFAULT_LIMITS, Limits
from .secret import Secret
from .tokens import (
    NIL,
    Atom,
    AuthData,
    Command,
    ContinuationRequest,
    DataResponse,
    IdleDone,
    Literal,
    LiteralRef,
    Message,
    Number,
    ParenList,
    Quoted,
    Response,
    ResponseCode,
    SequenceSet,
    StatusResponse,
    Token,
)

# Generic atom: anything but SP, CTL, ( ) " { and [ (a "[" opens a section that may hold
# spaces and parentheses, e.g. BODY[HEADER.FIELDS (FROM TO)]).
_ATOM = re.compile(rb"[^\x00-\x20\x7f()\"{\[]+")
_SECTION = re.compile(rb"\[[^\x00-\x1f\x7f\[\]\"{]*\]")
_LITERAL = re.compile(rb"(~?)\{0*(\d{1,20})(\+?)\}\r?\n")  # leading zeros are legal
_DIGITS = re.compile(r"[0-9]{1,20}\Z")
_SEQSET = re.compile(r"[0-9*$][0-9*:,$]*\Z")
_TAG = re.compile(rb"[^\x00-\x20\x7f(){%*\"\\+]+")
_QUOTED_BODY = re.compile(rb'(?:[^"\\\r\n\x00]|\\["\\])*')
_UNESCAPE = re.compile(rb'\\(["\\])')
_NUMBER_MAX = 2**63
_SECRET_SECOND_ARG = frozenset({"LOGIN", "AUTHENTICATE"})
_STATUS = frozenset({"OK", "NO", "BAD"})
_UNTAGGED_ONLY_STATUS = frozenset({"BYE", "PREAUTH"})


class _Lexer:
    """Lexes the arguments of one message from ``data[pos:]``."""

    __slots__ = ("count", "data", "limits", "pos", "side", "tag", "truncated")

    def __init__(self, data: bytes, pos: int, limits: Limits, side: Side, tag: bytes | None):
        self.data = data
        self.pos = pos
        self.limits = limits
        self.side = side
        self.tag = tag
        self.count = 0
        self.truncated = False

    def error(self, message: str, limit: str | None = None) -> ParseError:
        return ParseError(message, side=self.side, tag=self.tag, offset=self.pos, limit=limit)

    def at_end(self) -> bool:
        """True at CRLF (or end of data); consumes the line end."""
        data = self.data
        pos = self.pos
        if pos >= len(data):
            return True
        return data.startswith(b"\r\n", pos) or data.startswith(b"\n", pos)

    def tokens(self, depth: int = 0, closing: bool = False) -> tuple[Token, ...]:
        """Space-separated tokens up to the line end (or ``)`` when ``closing``)."""
        data = self.data
        out: list[Token] = []
        first = True
        while True:
            if self.truncated:
                return tuple(out)
            pos = self.pos
            if pos >= len(data):
                if closing:
                    raise self.error("unterminated list")
                return tuple(out)
            c = data[pos]
            if closing and c == 0x29:  # ")"
                self.pos = pos + 1
                return tuple(out)
            if c in (0x0D, 0x0A):
                if closing:
                    raise self.error("unterminated list")
                return tuple(out)
            if not first:
                if c == 0x20:
                    pos += 1
                    self.pos = pos
                    if pos >= len(data):
                        raise self.error("trailing space")
                elif not (c == 0x28 and type(out[-1]) is ParenList):
                    # Lists may follow lists directly: address lists in ENVELOPE,
                    # body parts in BODYSTRUCTURE, NAMESPACE descriptors (RFC 9051 §9).
                    raise self.error("expected space between arguments")
            first = False
            out.append(self.token(depth))

    def token(self, depth: int) -> Token:
        self.count += 1
        if self.count > self.limits.max_tokens:
            raise self.error("too many tokens", limit="max_tokens")
        data = self.data
        pos = self.pos
        if pos >= len(data):
            raise self.error("missing argument")
        c = data[pos]
        if c == 0x28:  # "("
            if depth + 1 > self.limits.max_list_depth:
                raise self.error("lists nested too deeply", limit="max_list_depth")
            self.pos = pos + 1
            return ParenList(self.tokens(depth + 1, closing=True))
        if c == 0x22:  # '"'
            m = _QUOTED_BODY.match(data, pos + 1)
            assert m is not None
            end = m.end()
            if end >= len(data) or data[end] != 0x22:
                raise self.error("bad quoted string")
            self.pos = end + 1
            body = m.group()
            return Quoted(_UNESCAPE.sub(rb"\1", body) if b"\\" in body else body)
        if c == 0x7B or (c == 0x7E and data.startswith(b"{", pos + 1)):  # "{" or "~{"
            return self.literal()
        return self.atom()

    def literal(self) -> Token:
        data = self.data
        m = _LITERAL.match(data, self.pos)
        if m is None:
            raise self.error("bad literal announcement")
        size = int(m.group(2))
        spec = LiteralSpec(
            size,
            sync=self.side is Side.CLIENT and not m.group(3),
            binary=bool(m.group(1)),
            nonsync_marker=bool(m.group(3)),
        )
        start = m.end()
        if start == len(data) and size:
            # The literal's bytes were streamed; what we have is the message head.
            self.pos = start
            self.truncated = True
            return LiteralRef(spec)
        end = start + size
        if end > len(data):
            raise self.error("literal shorter than announced")
        value = data[start:end]
        if not spec.binary and b"\x00" in value:
            raise self.error("NUL in a literal (only literal8 may carry NUL)")
        self.pos = end
        return Literal(value, spec)

    def atom(self) -> Token:
        data = self.data
        pos = self.pos
        end = pos
        while True:
            m = _ATOM.match(data, end)
            if m is not None:
                end = m.end()
            if end < len(data) and data[end] == 0x5B:  # "[" section
                ms = _SECTION.match(data, end)
                if ms is None:
                    raise self.error("bad [section]")
                end = ms.end()
                continue
            break
        if end == pos:
            raise self.error("unexpected character")
        self.pos = end
        text = data[pos:end].decode("utf-8", "surrogateescape")
        if _DIGITS.match(text):
            value = int(text)
            if value >= _NUMBER_MAX:
                raise self.error("number too large")
            return Number(value)
        if text.upper() == "NIL":
            return NIL
        if _SEQSET.match(text):
            return SequenceSet(text)
        return Atom(text)


def _line_end(data: bytes, pos: int) -> int:
    nl = data.find(b"\n", pos)
    return len(data) if nl < 0 else nl + 1


def _strip_eol(line: bytes) -> bytes:
    if line.endswith(b"\r\n"):
        return line[:-2]
    if line.endswith(b"\n"):
        return line[:-1]
    return line


def parse_command(
    data: bytes, limits: Limits = DEFAULT_LIMITS, *, side: Side = Side.CLIENT
) -> Command:
    """Parse a complete command (all its parts concatenated), or a head whose next
    literal was streamed (then ``truncated``)."""
    m = _TAG.match(data)
    if m is None or not data.startswith(b" ", m.end()):
        raise ParseError("missing tag", side=side)
    tag = m.group()
    lx = _Lexer(data, m.end() + 1, limits, side, tag)
    mname = _ATOM.match(data, lx.pos)
    if mname is None:
        raise ParseError("missing command name", side=side, tag=tag, offset=lx.pos)
    name = mname.group().decode("ascii", "replace").upper()
    lx.pos = mname.end()
    if name == "UID":
        if not data.startswith(b" ", lx.pos):
            raise ParseError("UID without a command", side=side, tag=tag, offset=lx.pos)
        m2 = _ATOM.match(data, lx.pos + 1)
        if m2 is None:
            raise ParseError("UID without a command", side=side, tag=tag, offset=lx.pos)
        name = "UID " + m2.group().decode("ascii", "replace").upper()
        lx.pos = m2.end()
    args: tuple[Token, ...] = ()
    if lx.pos < len(data) and data[lx.pos] == 0x20:
        lx.pos += 1
        args = lx.tokens()
    _expect_eol(lx)
    if name in _SECRET_SECOND_ARG and len(args) >= 2:
        # LOGIN's password; AUTHENTICATE's SASL-IR initial response (RFC 4959).  Anything
        # after them is malformed, and may be the rest of a password with a space in it.
        args = (args[0], *(Secret(a) for a in args[1:]))
    return Command(tag, name, args, lx.truncated)


def _expect_eol(lx: _Lexer) -> None:
    if lx.truncated:
        return
    data = lx.data
    pos = lx.pos
    if data.startswith(b"\r\n", pos):
        pos += 2
    elif data.startswith(b"\n", pos):
        pos += 1
    else:
        raise lx.error("junk after arguments" if pos < len(data) else "missing CRLF")
    if pos != len(data):
        raise lx.error("data after the end of the message")


def parse_response(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Response:
    """Parse one complete server response (or a head whose next literal was streamed)."""
    side = Side.SERVER
    if data.startswith(b"+"):
        text = _strip_eol(data[1:])
        if text.startswith(b" "):
            text = text[1:]
        return ContinuationRequest(text)
    m = _TAG.match(data)
    if data.startswith(b"* "):
        tag = None
        pos = 2
    elif m is not None and data.startswith(b" ", m.end()):
        tag = m.group()
        pos = m.end() + 1
    else:
        raise ParseError("missing tag", side=side)
    mw = _ATOM.match(data, pos)
    if mw is None:
        raise ParseError("missing response name", side=side, tag=tag, offset=pos)
    word = mw.group().decode("ascii", "replace")
    pos = mw.end()
    number: int | None = None
    if tag is None and word.isascii() and word.isdigit():
        number = int(word)
        if not data.startswith(b" ", pos):
            raise ParseError("missing name after number", side=side, offset=pos)
        mw = _ATOM.match(data, pos + 1)
        if mw is None:
            raise ParseError("missing response name", side=side, offset=pos)
        word = mw.group().decode("ascii", "replace")
        pos = mw.end()
    name = word.upper()
    if number is None and (name in _STATUS or (tag is None and name in _UNTAGGED_ONLY_STATUS)):
        return _parse_status(data, pos, tag, name)
    if tag is not None:
        raise ParseError("tagged response that is not OK/NO/BAD", side=side, tag=tag, offset=pos)
    lx = _Lexer(data, pos, limits, side, None)
    args: tuple[Token, ...] = ()
    if data.startswith(b" ", pos):
        lx.pos = pos + 1
        if not lx.at_end():
            args = lx.tokens()
    _expect_eol(lx)
    return DataResponse(name, number, args, lx.truncated)


def _parse_status(data: bytes, pos: int, tag: bytes | None, name: str) -> StatusResponse:
    end = _line_end(data, pos)
    if end != len(data):
        raise ParseError("status response spans lines", side=Side.SERVER, tag=tag, offset=end)
    rest = _strip_eol(data[pos:end])
    if b"\r" in rest or b"\x00" in rest:
        raise ParseError("control character in response text", side=Side.SERVER, tag=tag)
    if rest.startswith(b" "):
        rest = rest[1:]
    elif rest:
        raise ParseError("expected space after status", side=Side.SERVER, tag=tag, offset=pos)
    code = None
    if rest.startswith(b"["):
        close = rest.find(b"]")
        if close < 0:
            raise ParseError("unterminated response code", side=Side.SERVER, tag=tag)
        inner = rest[1:close]
        sp = inner.find(b" ")
        cname = (inner if sp < 0 else inner[:sp]).decode("ascii", "replace").upper()
        cargs = b"" if sp < 0 else inner[sp + 1 :]
        code = ResponseCode(cname, cargs)
        rest = rest[close + 1 :]
        if rest.startswith(b" "):
            rest = rest[1:]
    return StatusResponse(tag, name, code, rest)


def parse_frame(frame: Frame, limits: Limits = DEFAULT_LIMITS) -> Message:
    """Parse the first part of a message (a complete single-frame message, or a head).

    For a message in several parts whose literals were held (a synchronising literal that
    was small), join the parts' ``raw`` and use :func:`parse_command` instead.
    """
    if not frame.first:
        # A later part starts inside the message (often with literal bytes, perhaps a
        # password): parsed on its own it would be nonsense, or worse, shown as a command.
        raise ParseError(
            "not the first part of a message: join the parts and parse them together",
            side=frame.side,
            tag=frame.tag,
        )
    kind = frame.kind
    if kind is FrameKind.COMMAND:
        return parse_command(frame.raw, limits)
    if kind is FrameKind.AUTH_DATA:
        return AuthData(Secret(_strip_eol(frame.raw)))
    if kind is FrameKind.IDLE_DONE:
        return IdleDone(_strip_eol(frame.raw).upper() == b"DONE")
    return parse_response(frame.raw, limits)


def capabilities_of(message: Message) -> tuple[str, ...] | None:
    """The capability list a response carries (``* CAPABILITY`` data or a ``[CAPABILITY]``
    response code), upper-cased; None if it carries none."""
    if isinstance(message, DataResponse) and message.name == "CAPABILITY":
        return tuple(t.value.upper() for t in message.args if isinstance(t, Atom | SequenceSet))
    code = message.code if isinstance(message, StatusResponse) else None
    if code is not None and code.name == "CAPABILITY":
        return tuple(c.upper() for c in code.capabilities())
    return None


__all__ = [
    "LimitExceeded",
    "capabilities_of",
    "parse_command",
    "parse_frame",
    "parse_response",
]
