"""Modified UTF-7: the IMAP4rev1 mailbox-name encoding (RFC 3501 section 5.1.3).

IMAP4rev1 mailbox names travel as 7-bit ASCII.  Names with other characters are written in
a variant of UTF-7 (RFC 2152) that is friendlier to hierarchy delimiters and has exactly one
spelling for every name:

* Printable US-ASCII characters except ``&`` (octets 0x20-0x25 and 0x27-0x7e) represent
  themselves.  ``&`` (0x26) is written as the two octets ``&-``.
* Every other character (controls 0x00-0x1f and 0x7f, and everything above 0x7f) is converted
  to UTF-16BE -- characters outside the BMP as a surrogate pair -- and written in *modified
  base64* between a shift ``&`` and an unshift ``-``.  Modified base64 is RFC 2045 base64 with
  ``,`` instead of ``/`` and without ``=`` padding; unused bits of the last character are 0.
* The shifted (base64) form MUST NOT be used for a printable US-ASCII character, and a run of
  consecutive non-ASCII characters is encoded as *one* shifted sequence: ``&AOkA6Q-`` and never
  ``&AOk-&AOk-``.  (The ``-`` is always written, even at the end of the name.)

Example from the RFC: ``~peter/mail/&U,BTFw-/&ZeVnLIqe-`` is ``~peter/mail/台北/日本語``.

:func:`encode_mutf7` produces that canonical form.  :func:`decode_mutf7` is strict: it accepts
exactly the byte strings :func:`encode_mutf7` can produce, so ``encode_mutf7(decode_mutf7(b))
== b`` whenever decoding succeeds, and raises :class:`MUTF7Error` (a :exc:`ValueError`)
otherwise.  Error messages give byte offsets, never the input bytes, so they are safe to log.
"""

from __future__ import annotations

import binascii
import re

__all__ = ["MUTF7Error", "decode_mutf7", "encode_mutf7", "is_valid_mutf7"]


class MUTF7Error(ValueError):
    """Bytes that are not canonical modified UTF-7, or text that cannot be encoded.

    ``offset`` is the byte offset in the input where the problem was found (for decoding), or
    the character index (for encoding); ``None`` when it does not apply.
    """

    def __init__(self, message: str, offset: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset


# Runs of characters that must be shifted: everything but printable US-ASCII.
_SHIFTED_RUN = re.compile(r"[^\x20-\x7e]+")
# Any byte that may not appear in modified UTF-7 at all (controls, DEL, 8-bit).
_BAD_BYTE = re.compile(rb"[^\x20-\x7e]")
# The modified base64 alphabet.
_B64_RUN = re.compile(rb"[A-Za-z0-9+,]*")
# Printable US-ASCII, which must never appear in shifted form.
_PRINTABLE = re.compile(r"[\x20-\x7e]")

_TO_MODIFIED = bytes.maketrans(b"/", b",")
_FROM_MODIFIED = bytes.maketrans(b",", b"/")
_B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,"
_B64_VALUES = {c: i for i, c in enumerate(_B64_ALPHABET)}
# Bits of the last base64 character that carry no data, by (run length % 4).
_UNUSED_BITS_MASK = {2: 0x0F, 3: 0x03}
_PADDING = {0: b"", 2: b"==", 3: b"="}


def encode_mutf7(name: str) -> bytes:
    """Encode a mailbox name as canonical modified UTF-7.

    Raises :class:`MUTF7Error` if ``name`` contains a lone surrogate code point (U+D800 to
    U+DFFF), which has no UTF-16 representation.
    """
    if name.isascii() and _SHIFTED_RUN.search(name) is None:
        return name.replace("&", "&-").encode("ascii")
    parts: list[bytes] = []
    last = 0
    for match in _SHIFTED_RUN.finditer(name):
        start = match.start()
        if start > last:
            parts.append(name[last:start].replace("&", "&-").encode("ascii"))
        try:
            utf16 = match.group().encode("utf-16-be")
        except UnicodeEncodeError as exc:
            raise MUTF7Error(
                f"cannot encode mailbox name: lone surrogate at index {start + exc.start}",
                start + exc.start,
            ) from None
        b64 = binascii.b2a_base64(utf16, newline=False).rstrip(b"=").translate(_TO_MODIFIED)
        parts.append(b"&" + b64 + b"-")
        last = match.end()
    if last < len(name):
        parts.append(name[last:].replace("&", "&-").encode("ascii"))
    return b"".join(parts)


def _decode_shifted(run: bytes, start: int) -> str:
    """Decode the modified base64 ``run`` of a shifted sequence that begins at ``start``."""
    length = len(run)
    rem = length % 4
    if rem == 1:
        if length == 1:
            raise MUTF7Error(
                f"shifted sequence at offset {start} encodes no data (only '&-' may be empty)",
                start,
            )
        raise MUTF7Error(
            f"shifted sequence at offset {start} has an impossible base64 length"
            f" ({length} characters)",
            start,
        )
    if rem and _B64_VALUES[run[-1]] & _UNUSED_BITS_MASK[rem]:
        raise MUTF7Error(
            f"shifted sequence at offset {start} has non-zero leftover bits"
            " in its last base64 character",
            start,
        )
    nbytes = length * 6 // 8
    if nbytes % 2:
        raise MUTF7Error(
            f"shifted sequence at offset {start} decodes to an odd number of bytes"
            f" ({nbytes}), not whole UTF-16 code units",
            start,
        )
    raw = binascii.a2b_base64(run.translate(_FROM_MODIFIED) + _PADDING[rem])
    try:
        text = raw.decode("utf-16-be")
    except UnicodeDecodeError as exc:
        raise MUTF7Error(
            f"shifted sequence at offset {start} contains an unpaired UTF-16 surrogate"
            f" (code unit {exc.start // 2} of the sequence)",
            start,
        ) from None
    printable = _PRINTABLE.search(text)
    if printable is not None:
        what = (
            "'&' (must be written '&-')"
            if printable.group() == "&"
            else "printable US-ASCII (must be written directly)"
        )
        raise MUTF7Error(
            f"shifted sequence at offset {start} encodes {what}",
            start,
        )
    return text


def decode_mutf7(data: bytes) -> str:
    """Decode canonical modified UTF-7 bytes to a mailbox name.

    Raises :class:`MUTF7Error` if ``data`` is not exactly what :func:`encode_mutf7` would have
    produced for some name.
    """
    if not isinstance(data, bytes):
        data = bytes(data)
    bad = _BAD_BYTE.search(data)
    if bad is not None:
        pos = bad.start()
        kind = "8-bit byte" if data[pos] >= 0x80 else "control character"
        raise MUTF7Error(f"{kind} at offset {pos} in modified UTF-7 mailbox name", pos)
    amp = data.find(b"&")
    if amp < 0:
        return data.decode("ascii")
    parts: list[str] = []
    pos = 0
    end_of_last_shift = -1  # offset just after the '-' of the previous shifted sequence
    size = len(data)
    while amp >= 0:
        if amp > pos:
            parts.append(data[pos:amp].decode("ascii"))
        run_end = _B64_RUN.match(data, amp + 1).end()  # type: ignore[union-attr]
        if run_end >= size:
            raise MUTF7Error(f"unterminated shifted sequence starting at offset {amp}", amp)
        if data[run_end] != 0x2D:  # '-'
            raise MUTF7Error(
                f"illegal character in shifted sequence at offset {run_end}"
                " (modified base64 uses A-Z a-z 0-9 + , and ends with '-')",
                run_end,
            )
        if run_end == amp + 1:
            parts.append("&")
        else:
            if amp == end_of_last_shift:
                raise MUTF7Error(
                    f"shifted sequence at offset {amp} directly follows another;"
                    " adjacent sequences must be written as one",
                    amp,
                )
            parts.append(_decode_shifted(data[amp + 1 : run_end], amp))
            end_of_last_shift = run_end + 1
        pos = run_end + 1
        amp = data.find(b"&", pos)
    if pos < size:
        parts.append(data[pos:].decode("ascii"))
    return "".join(parts)


def is_valid_mutf7(data: bytes) -> bool:
    """Return whether :func:`decode_mutf7` accepts ``data`` (canonical modified UTF-7)."""
    try:
        decode_mutf7(data)
    except MUTF7Error:
        return False
    return True
