"""Literal announcements: the ``{n}``, ``{n+}``, ``~{n}`` or ``~{n+}`` that ends a line and
says *n* raw bytes follow (RFC 9051 §4.3, RFC 3516 literal8, RFC 7888 LITERAL+/LITERAL-).

Found at the end of a line's text, with no argument parsing (see
:mod:`~imapproxy.wire.decoder`).  Only some lines may announce one: a command's, a server
data response's; a status response or continuation request ends in ``resp-text``, where a
``{5}`` is only text.  The limits on what is announced are the decoder's business.
"""

from __future__ import annotations

import re

from .events import FrameKind

# The kinds of frame whose lines may announce literals.
LITERAL_KINDS = frozenset({FrameKind.COMMAND, FrameKind.DATA})
# What announced_literal() gives as size for a number no literal can have.
SIZE_OVERFLOW = -1
# A literal announcement at the end of a line (the line without its CRLF), matched from
# the line's last "{" (or the "~" before it).  number = 1*DIGIT (RFC 9051 §9): leading
# zeros are legal; more than 20 significant digits is an overflow, rejected before int()
# sees it.
_LITERAL_TAIL = re.compile(rb"(~?)\{(\d+)(\+?)\}\Z")
_MAX_LITERAL_DIGITS = 20


def announced_literal(
    buf: bytes | bytearray, line_start: int, text_end: int
) -> tuple[int, bool, bool] | None:
    """The literal the line ``buf[line_start:text_end]`` (without its CRLF) announces at its
    end, as ``(size, binary, nonsync_marker)``; None if it announces none.  ``size`` is
    :data:`SIZE_OVERFLOW` for a number of more than 20 significant digits."""
    brace = buf.rfind(b"{", line_start, text_end)
    if brace < 0:
        return None
    start = brace - 1 if brace > line_start and buf[brace - 1] == 0x7E else brace  # "~{"
    m = _LITERAL_TAIL.match(buf, start, text_end)
    if m is None:
        return None
    digits = m.group(2).lstrip(b"0") or b"0"
    if len(digits) > _MAX_LITERAL_DIGITS:
        return SIZE_OVERFLOW, False, False
    return int(digits), bool(m.group(1)), bool(m.group(3))
