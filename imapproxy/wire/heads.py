"""Message heads: what a message's first line says it is, read before any argument parsing.

Pure functions over a slice of the decoder's buffer (``buf[start:end]``, the first line with
its CRLF, or the first ``max_line_bytes`` of a longer one), called once per message by
:class:`~imapproxy.wire.decoder.Decoder`: a client command's tag and name (``UID FETCH``
for UID commands), a server response's kind, tag, name and message number.  Names come out
upper-case; a line that is no well-formed head has the name ``""`` and its first word as
tag (the relay refuses such a command itself, the parser reports such a response).
"""

from __future__ import annotations

import re

from .commands import KNOWN_COMMANDS, UID_COMMANDS
from .events import FrameKind

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
_STATUS_NAMES = frozenset({"OK", "NO", "BAD", "BYE", "PREAUTH"})
_COMPLETION_NAMES = frozenset({"OK", "NO", "BAD"})
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
# A line that is no well-formed command but names one of these is redacted wholesale.
_CREDENTIAL_WORD = re.compile(rb"LOGIN|AUTHENTICATE", re.IGNORECASE)

_CONTINUATION = FrameKind.CONTINUATION
_DATA = FrameKind.DATA
_STATUS = FrameKind.STATUS
_GREETING = FrameKind.GREETING


def command_head(buf: bytes | bytearray, start: int, end: int) -> tuple[bytes | None, str, bool]:
    """A client command's tag, its name and whether it is a well-formed command this proxy
    knows (a tag and a name from :data:`~imapproxy.wire.commands.KNOWN_COMMANDS`, or ``UID``
    and one of :data:`~imapproxy.wire.commands.UID_COMMANDS`).

    ``UID`` and the word after it make one name (``"UID FETCH"``); ``UID`` with nothing a
    name could be after it stays ``"UID"``, not well-formed.  A line with no tag and name is
    ``(first word or None, "", False)``.
    """
    m = _COMMAND_HEAD.match(buf, start, end)
    if m is None:
        return first_word(buf, start, end), "", False
    tag, raw_name = m.groups()
    name = _KNOWN_NAMES.get(raw_name)
    if name is None:
        name = raw_name.decode("ascii", "replace").upper()
    if name == "UID":
        m2 = _UID_NEXT.match(buf, m.end(), end)
        if m2 is None:
            return tag, name, False
        sub = m2.group(1).decode("ascii", "replace").upper()
        return tag, "UID " + sub, sub in UID_COMMANDS
    return tag, name, name in KNOWN_COMMANDS


def response_head(
    buf: bytes | bytearray, start: int, end: int, greeting: bool
) -> tuple[FrameKind, bytes | None, str, int | None]:
    """A server response's kind, tag (None if untagged), name and message number (``* 3
    EXISTS``: 3; None when there is none, and for tagged lines).

    ``greeting``: no response has come yet, so an untagged status is the greeting.  A
    continuation request is ``(CONTINUATION, None, "+", None)``; a line with no recognisable
    head is untagged-looking ``DATA`` named ``""`` with its first word as tag (the parser
    reports it), and so is a tagged line that is no completion (``a1 FETCH``, ``a1 5 OK``).
    """
    if buf[start] == 43:  # "+"
        return _CONTINUATION, None, "+", None
    m = _RESPONSE_HEAD.match(buf, start, end)
    if m is None:
        return _DATA, first_word(buf, start, end), "", None
    tag, number, raw_name = m.groups()
    name = _KNOWN_NAMES.get(raw_name)
    if name is None:
        name = raw_name.decode("ascii", "replace").upper()
    if tag == b"*":
        if number is not None:
            return _DATA, None, name, int(number)
        if name in _STATUS_NAMES:
            return (_GREETING if greeting else _STATUS), None, name, None
        return _DATA, None, name, None
    if number is None and name in _COMPLETION_NAMES:
        return _STATUS, tag, name, None
    return _DATA, tag, name, None  # malformed; the parser will say so


def names_credentials(buf: bytes | bytearray, start: int, end: int) -> bool:
    """Whether the line names LOGIN or AUTHENTICATE anywhere, in any case (``UID LOGIN``, a
    glued or misspelt head): a line that is no well-formed command but does is taken for a
    credential and redacted wholesale."""
    return _CREDENTIAL_WORD.search(buf, start, end) is not None


def first_word(buf: bytes | bytearray, start: int, end: int) -> bytes | None:
    """The line's bytes up to its first space (without CRLF), or None if there are none."""
    sp = buf.find(b" ", start, end)
    word = bytes(buf[start : sp if sp >= 0 else end]).rstrip(b"\r\n")
    return word or None
