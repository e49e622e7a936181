"""Where each argument of a message stands in its bytes, and how a name is written back.

The rewrite filter changes one argument of a command or response (a mailbox name, a
login name) and keeps every other byte as it came, so it needs the byte span of each
argument, which the wire parser's tokens do not carry.  :func:`arguments` scans a whole
message (its small literals inline, as the relay hands them to filters) with the grammar
the parser uses, and :func:`splice` puts new bytes in place of some of them.

Errors are :class:`ValueError` with byte offsets, never the bytes (a LOGIN holds a
password).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..wire.encoder import encode_string
from ..wire.mutf7 import MUTF7Error, decode_mutf7, encode_mutf7

# The parser's atom (anything but SP, CTL, ( ) " { [) with [sections] that may hold spaces.
_ATOM = re.compile(rb'(?:[^\x00-\x20\x7f()"{\[]+|\[[^\x00-\x1f\x7f\[\]"{]*\])+')
_QUOTED = re.compile(rb'"((?:[^"\\\r\n]|\\["\\])*)"')
_LITERAL = re.compile(rb"~?\{0*(\d{1,20})\+?\}\r?\n")
_UNESCAPE = re.compile(rb'\\(["\\])')
_TAG = re.compile(rb"[^\x00-\x20\x7f(){%*\"\\+]+ ")
# An atom the proxy writes: plain characters only (no list wildcards, no "]", no "\").
_SAFE_ATOM = re.compile(rb"[A-Za-z0-9!#$&'+,\-./:;<=>?@^_`|~]+\Z")
_MAX_DEPTH = 64


@dataclass(frozen=True, slots=True)
class Item:
    """One argument: ``raw[start:end]``.  ``kind`` is ``atom``, ``quoted``, ``literal`` or
    ``list``; ``value`` is a string's bytes (quoted unescaped, literal body, atom text),
    ``items`` a list's members."""

    start: int
    end: int
    kind: str
    value: bytes = b""
    items: tuple[Item, ...] = ()

    @property
    def is_nil(self) -> bool:
        return self.kind == "atom" and self.value.upper() == b"NIL"

    @property
    def is_string(self) -> bool:
        return self.kind in ("atom", "quoted", "literal")


def arguments(raw: bytes, *, command: bool) -> tuple[Item, ...]:
    """The top-level arguments of a whole command (after its tag and name, ``UID x``
    counted as the name) or untagged response (after ``*``, a number and the name)."""
    pos = _head_end(raw, command=command)
    items, pos = _scan(raw, pos, 0)
    return tuple(items)


def _head_end(raw: bytes, *, command: bool) -> int:
    if command:
        m = _TAG.match(raw)
        if m is None:
            raise ValueError("no tag")
        pos = m.end()
    else:
        if not raw.startswith(b"* "):
            raise ValueError("not an untagged response")
        pos = 2
    words = 1
    while True:
        m = _ATOM.match(raw, pos)
        if m is None:
            raise ValueError(f"no name at offset {pos}")
        word = m.group().upper()
        pos = m.end()
        more = (command and word == b"UID") or (not command and word.isdigit())
        if not more or words > 1:
            break
        words += 1
        if not raw.startswith(b" ", pos):
            raise ValueError(f"name missing at offset {pos}")
        pos += 1
    return pos + 1 if raw.startswith(b" ", pos) else pos


def _scan(raw: bytes, pos: int, depth: int) -> tuple[list[Item], int]:
    """Items from ``pos`` up to the end of the line (depth 0) or the closing parenthesis."""
    if depth > _MAX_DEPTH:
        raise ValueError("lists nested too deep")
    items: list[Item] = []
    end = len(raw)
    while pos < end:
        c = raw[pos]
        if c == 0x20:
            pos += 1
            continue
        if c in (0x0D, 0x0A):
            if depth:
                raise ValueError(f"line ends inside a list at offset {pos}")
            return items, pos
        if c == 0x29:  # ")"
            if not depth:
                raise ValueError(f"unbalanced ')' at offset {pos}")
            return items, pos
        if c == 0x28:  # "("
            inner, close = _scan(raw, pos + 1, depth + 1)
            if close >= end or raw[close] != 0x29:
                raise ValueError(f"unclosed list at offset {pos}")
            items.append(Item(pos, close + 1, "list", items=tuple(inner)))
            pos = close + 1
            continue
        if c == 0x22:  # '"'
            m = _QUOTED.match(raw, pos)
            if m is None:
                raise ValueError(f"bad quoted string at offset {pos}")
            items.append(Item(pos, m.end(), "quoted", _UNESCAPE.sub(rb"\1", m.group(1))))
            pos = m.end()
            continue
        m = _LITERAL.match(raw, pos)
        if m is not None:
            size = int(m.group(1))
            stop = m.end() + size
            if stop > end:
                raise ValueError(f"literal at offset {pos} is not held whole")
            items.append(Item(pos, stop, "literal", raw[m.end() : stop]))
            pos = stop
            continue
        m = _ATOM.match(raw, pos)
        if m is None:
            raise ValueError(f"unexpected byte at offset {pos}")
        items.append(Item(pos, m.end(), "atom", m.group()))
        pos = m.end()
    if depth:
        raise ValueError("message ends inside a list")
    return items, pos


def splice(raw: bytes, changes: Iterable[tuple[Item, bytes]]) -> bytes:
    """``raw`` with each item's bytes replaced (items must not overlap)."""
    out: list[bytes] = []
    pos = 0
    for item, new in sorted(changes, key=lambda c: c[0].start):
        if item.start < pos:
            raise ValueError("overlapping changes")
        out.append(raw[pos : item.start])
        out.append(new)
        pos = item.end
    out.append(raw[pos:])
    return b"".join(out)


def astring(value: bytes, *, atom: bool = False) -> bytes:
    """``value`` as the proxy writes it: an atom where it was one and still can be, else a
    quoted string, else a synchronising literal (a replacement command is sent in
    segments, each literal after the server's ``+``)."""
    if atom and _SAFE_ATOM.match(value) and value.upper() != b"NIL":
        return value
    return encode_string(value, nonsync=False)


def rewrite_as(item: Item, value: bytes) -> bytes:
    """New bytes for ``item`` holding ``value``, in the form closest to the original."""
    return astring(value, atom=item.kind == "atom")


def decode_name(value: bytes, *, utf8: bool) -> str | None:
    """A mailbox name's text, or None when it is not valid in this session's encoding
    (then it is never rewritten: it passes as the client or server wrote it)."""
    if utf8:
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return None
    try:
        return decode_mutf7(value)
    except MUTF7Error:
        return None


def encode_name(name: str, *, utf8: bool) -> bytes:
    return name.encode("utf-8") if utf8 else encode_mutf7(name)


def strings(items: Sequence[Item]) -> list[Item]:
    """The string items among ``items`` (for lists of names or patterns)."""
    return [i for i in items if i.is_string]
