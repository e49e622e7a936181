"""Serialising commands and responses that a filter built or changed.

Unchanged frames are forwarded as their original ``raw`` bytes and never pass through here.
Everything written here is checked so that no value can inject a CRLF, a NUL or an unbalanced
token into the stream: strings that cannot be quoted safely become literals, and atoms, tags
and response text are validated.
"""

from __future__ import annotations

import re

from .errors import EncodeError
from .events import LiteralSpec
from .secret import Secret
from .tokens import (
    Atom,
    Command,
    ContinuationRequest,
    DataResponse,
    Literal,
    LiteralRef,
    Nil,
    Number,
    ParenList,
    Quoted,
    Response,
    SequenceSet,
    StatusResponse,
    Token,
)

_TAG_OK = re.compile(rb"[^\x00-\x20\x7f-\xff(){%*\"\\+]+\Z")
_NAME_OK = re.compile(r"(?:UID )?[A-Za-z0-9][A-Za-z0-9._=\-]*\Z")
# An atom may hold brackets for sections (BODY[HEADER.FIELDS (A B)]<0.10>): validated as
# "no CTL, no quote, no brace, balanced section".
_ATOM_OK = re.compile(r"(?:[^\x00-\x20\x7f()\"{\[]+|\[[^\x00-\x1f\x7f\[\]\"{]*\])+\Z")
_SEQ_OK = re.compile(r"[0-9*$][0-9*:,$]*\Z")
_QUOTABLE = re.compile(rb"[^\x00\r\n\x80-\xff]*\Z")
_TEXT_OK = re.compile(rb"[^\x00\r\n]*\Z")
_MAX_QUOTED = 1024  # longer strings are sent as literals, which is cheaper to read back


def _literal_bytes(value: bytes, spec: LiteralSpec | None, *, nonsync: bool) -> bytes:
    binary = spec.binary if spec is not None else False
    if not binary and b"\x00" in value:
        raise EncodeError("NUL can only be sent in a literal8 (binary) literal")
    head = b"~{" if binary else b"{"
    return head + str(len(value)).encode() + (b"+}\r\n" if nonsync else b"}\r\n") + value


def encode_string(value: bytes, *, nonsync: bool, allow_literal: bool = True) -> bytes:
    """An astring/nstring value: quoted if safe and short, else a literal."""
    if len(value) <= _MAX_QUOTED and _QUOTABLE.match(value):
        return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    if not allow_literal:
        raise EncodeError("value cannot be sent without a literal here")
    return _literal_bytes(value, None, nonsync=nonsync)


def encode_token(token: Token, out: list[bytes], *, nonsync: bool) -> None:
    if isinstance(token, Secret):
        token = token.reveal()
    if isinstance(token, Atom):
        if not _ATOM_OK.match(token.value):
            raise EncodeError("not a valid atom")
        try:
            # surrogateescape gives back the exact 8-bit bytes the parser read
            out.append(token.value.encode("utf-8", "surrogateescape"))
        except UnicodeEncodeError:
            raise EncodeError("atom is not encodable") from None
    elif isinstance(token, Number):
        if not 0 <= token.value < 2**63:
            raise EncodeError("number out of range")
        out.append(str(token.value).encode())
    elif isinstance(token, SequenceSet):
        if not _SEQ_OK.match(token.value):
            raise EncodeError("not a valid sequence set")
        out.append(token.value.encode())
    elif isinstance(token, Quoted):
        out.append(encode_string(token.value, nonsync=nonsync))
    elif isinstance(token, Literal):
        out.append(_literal_bytes(token.value, token.spec, nonsync=nonsync))
    elif isinstance(token, Nil):
        out.append(b"NIL")
    elif isinstance(token, ParenList):
        out.append(b"(")
        for i, item in enumerate(token.items):
            if i:
                out.append(b" ")
            encode_token(item, out, nonsync=nonsync)
        out.append(b")")
    elif isinstance(token, LiteralRef):
        raise EncodeError("a streamed literal cannot be re-encoded")
    else:
        raise EncodeError(f"cannot encode {type(token).__name__}")


def encode_command(command: Command, *, literal_plus: bool = True) -> bytes:
    """Serialise a command.  Literals are written non-synchronising (``{n+}``), so the
    result can be sent in one go; with ``literal_plus=False`` (an upstream without
    LITERAL+), a command that needs a literal raises EncodeError instead."""
    if not _TAG_OK.match(command.tag):
        raise EncodeError("not a valid tag")
    if not _NAME_OK.match(command.name):
        raise EncodeError("not a valid command name")
    if command.truncated:
        raise EncodeError("a truncated command cannot be re-encoded")
    out = [command.tag, b" ", command.name.encode()]
    for arg in command.args:
        out.append(b" ")
        encode_token(arg, out, nonsync=True)
    data = b"".join(out)
    if not literal_plus and b"+}\r\n" in data:
        # only literals produce "+}\r\n": quoted strings cannot contain CR/LF
        raise EncodeError("command needs a literal but the server lacks LITERAL+")
    return data + b"\r\n"


def encode_response(response: Response) -> bytes:
    if isinstance(response, ContinuationRequest):
        _check_text(response.text)
        return b"+ " + response.text + b"\r\n"
    if isinstance(response, StatusResponse):
        if response.tag is not None and not _TAG_OK.match(response.tag):
            raise EncodeError("not a valid tag")
        if response.status not in ("OK", "NO", "BAD", "BYE", "PREAUTH"):
            raise EncodeError("not a status")
        if response.tag is not None and response.status not in ("OK", "NO", "BAD"):
            raise EncodeError("tagged status must be OK, NO or BAD")
        out = [response.tag or b"*", b" ", response.status.encode()]
        if response.code is not None:
            if not _NAME_OK.match(response.code.name) or " " in response.code.name:
                raise EncodeError("not a valid response code")
            _check_text(response.code.args)
            if b"]" in response.code.args:
                raise EncodeError("']' in response code arguments")
            out += [b" [", response.code.name.encode()]
            if response.code.args:
                out += [b" ", response.code.args]
            out.append(b"]")
        _check_text(response.text)
        if response.code is None and response.text.startswith(b"["):
            # it would be read back as a response code (e.g. a forged [CAPABILITY ...])
            raise EncodeError("response text may not start with '[' without a code")
        if response.text or response.code is None:
            out += [b" ", response.text]
        return b"".join(out) + b"\r\n"
    if isinstance(response, DataResponse):
        if not _NAME_OK.match(response.name) or " " in response.name:
            raise EncodeError("not a valid response name")
        if response.truncated:
            raise EncodeError("a truncated response cannot be re-encoded")
        out = [b"* "]
        if response.number is not None:
            out.append(str(response.number).encode() + b" ")
        out.append(response.name.encode())
        for arg in response.args:
            out.append(b" ")
            encode_token(arg, out, nonsync=False)
        return b"".join(out) + b"\r\n"
    raise EncodeError(f"cannot encode {type(response).__name__}")


def _check_text(text: bytes) -> None:
    if not _TEXT_OK.match(text):
        raise EncodeError("CR, LF or NUL in response text")
