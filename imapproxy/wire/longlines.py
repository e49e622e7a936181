"""Cutting a long server line into pieces without splitting its literal announcement.

A server line has no length limit; past ``max_line_bytes`` the decoder gives it out in
pieces of a fixed size (parts marked ``oversize``).  Framing stays exact only if the line's
end is still read whole: a ``{n}`` there announces a literal.  So the last
:data:`TAIL_KEEP` bytes are never given out before the line ends, and a cut that would
split an announcement is moved back before it (:func:`safe_cut`).
"""

from __future__ import annotations

import re

# Bytes at the end of a long server line not given out until more arrives: a literal
# announcement "~{<20 digits>+}" and CRLF fit (leading zeros beyond that: see safe_cut).
TAIL_KEEP = 32
# What safe_cut() gives for a "{" with more digits after it than a piece holds.
CUT_OVERFLOW = -1
# What may follow a cut if a literal announcement straddles it: the rest of "{digits+}",
# then the line end.
_ANNOUNCEMENT_REST = re.compile(rb"\{?[0-9]*\+?\}?\r?\n?")


def safe_cut(buf: bytes | bytearray, cut: int, line_start: int, part_start: int) -> int:
    """Move a cut in a long line (of a kind that may announce literals) back before a
    literal announcement it would split: the "{" must stay in the line's kept tail to be
    found at the line end.  (A cut can split one only where the bytes after it could
    continue "{digits+}" up to the line end; in practice never.  The TAIL_KEEP + 1 bytes
    after it must have arrived.)  Returns where to cut, or :data:`CUT_OVERFLOW` if the "{"
    lies at or before ``part_start``: more digits than a whole piece, no literal length
    looks like that."""
    if not _ANNOUNCEMENT_REST.fullmatch(buf, cut, cut + TAIL_KEEP + 1):
        return cut
    brace = cut
    if buf[cut] != 0x7B:  # "{": walk back over the digits to the "{" they follow
        while brace > line_start and 0x30 <= buf[brace - 1] <= 0x39:
            brace -= 1
        if brace == line_start or buf[brace - 1] != 0x7B:
            return cut  # digits, but after no "{": not an announcement
        brace -= 1
    if brace > line_start and buf[brace - 1] == 0x7E:  # "~{"
        brace -= 1
    if brace <= part_start:
        return CUT_OVERFLOW
    return brace
