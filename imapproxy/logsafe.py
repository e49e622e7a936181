"""Escaping for text that came from a peer and is about to be logged or shown.

A user name, a server's BYE text, an exception message that quotes peer data: any of them may
hold CR, LF, ESC or other control characters.  Written raw, they forge whole log lines or
send terminal escapes to whoever reads the log.  Every such string goes through
:func:`safe` (log arguments) or :func:`printable` (transcript text): what comes out is one
line of printable characters, and the escaping is the same in the log and the transcript
(``\\r``, ``\\n``, ``\\xNN``).
"""

from __future__ import annotations

import re

# Characters of one peer-supplied value shown in a log line: a user name or a server's
# text is far shorter; a 1 MB user name must not make a 1 MB log line.
MAX_LOGGED = 200
# ... and of a longer free text (an end reason's detail, which may quote an exception).
MAX_DETAIL = 500

_UNPRINTABLE = re.compile(rb"[^\x20-\x7e]")


def _escape_byte(m: re.Match[bytes]) -> bytes:
    c = m.group()
    if c == b"\r":
        return b"\\r"
    if c == b"\n":
        return b"\\n"
    return b"\\x%02x" % c[0]


def printable(data: bytes) -> str:
    """``data`` as printable ASCII: CR and LF as ``\\r``/``\\n``, every other byte outside
    0x20-0x7e as ``\\xNN``.  (Not shortened: callers cut what they show.)"""
    return _UNPRINTABLE.sub(_escape_byte, data).decode("ascii")


def _escape_char(ch: str) -> str:
    if ch == "\r":
        return "\\r"
    if ch == "\n":
        return "\\n"
    code = ord(ch)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def safe(value: object, limit: int = MAX_LOGGED, *, spaces: bool = True) -> str:
    """A peer-supplied value (``str``, ``bytes`` or anything with a ``str()``) for a log
    line: one line, no control or formatting characters (C0/C1 controls, DEL, line and
    paragraph separators, bidi overrides), at most ``limit`` characters, then a marker that
    says how many were left out (``...(+N)``).  Printable non-ASCII text (a user name like
    ``jörg``) is kept as it is; bytes are shown as :func:`printable` shows them.  With
    ``spaces=False`` a space is escaped too (``\\x20``), for a value in a ``key=value``
    list that must stay one field (``user=bob reason=logout`` as a name)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value[: limit + 1])  # escape only what can be shown
        total = len(value)
        chars = [chr(b) if 0x20 <= b <= 0x7E else printable(bytes((b,))) for b in data]
    else:
        text = value if isinstance(value, str) else str(value)
        if len(text) <= limit and text.isprintable() and (spaces or " " not in text):
            return text  # the common case: nothing to escape
        total = len(text)
        chars = [ch if ch.isprintable() else _escape_char(ch) for ch in text[: limit + 1]]
    if not spaces:
        chars = ["\\x20" if ch == " " else ch for ch in chars]
    out: list[str] = []
    size = 0
    for shown, piece in enumerate(chars):
        size += len(piece)
        if size > limit:
            return "".join(out) + f"...(+{total - shown})"
        out.append(piece)
    return "".join(out)
