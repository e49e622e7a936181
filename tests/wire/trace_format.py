"""Loader for the IMAP trace files in ``tests/traces/*.imap``.

The format is described in ``tests/traces/README.md``.  In short, every line is one of

* ``# ...`` (comment) or blank: ignored;
* ``C: <text>`` / ``S: <text>``: one protocol line sent by the client / server; on the wire
  it is ``<text>`` followed by CRLF (``C:`` alone is an empty line, i.e. just CRLF);
* ``C| <text>`` / ``S| <text>``: one line of literal content, ``<text>`` CRLF on the wire;
* ``C+ <text>`` / ``S+ <text>``: literal content without a line end.

The prefix is followed by exactly one space (which is not part of the text) or by nothing.
Text is UTF-8.  This module only turns a file into the two byte streams and the ordered list
of wire chunks; it does not interpret IMAP (that is what the codec under test is for).
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from imapproxy.wire import Side

TRACES_DIR = Path(__file__).resolve().parent.parent / "traces"
CRLF = b"\r\n"


class LineKind(enum.Enum):
    PROTOCOL = ":"  # one protocol line, CRLF appended
    LITERAL_LINE = "|"  # one line of literal content, CRLF appended
    LITERAL_RAW = "+"  # literal content, no CRLF appended


_SIDES = {"C": Side.CLIENT, "S": Side.SERVER}
_KINDS = {kind.value: kind for kind in LineKind}


class TraceFormatError(ValueError):
    """A trace file does not follow the format."""


@dataclass(frozen=True, slots=True)
class TraceLine:
    """One non-comment line of a trace file."""

    lineno: int
    side: Side
    kind: LineKind
    text: str

    @property
    def wire_bytes(self) -> bytes:
        data = self.text.encode("utf-8")
        return data if self.kind is LineKind.LITERAL_RAW else data + CRLF


@dataclass(frozen=True, slots=True)
class WireChunk:
    """Bytes one side puts on the wire, in file order."""

    side: Side
    data: bytes
    lineno: int
    kind: LineKind


@dataclass(frozen=True, slots=True)
class Trace:
    name: str
    lines: tuple[TraceLine, ...]

    def chunks(self) -> list[WireChunk]:
        """Every line as a chunk of wire bytes, in the order of the file (= wire order)."""
        return [WireChunk(ln.side, ln.wire_bytes, ln.lineno, ln.kind) for ln in self.lines]

    def stream(self, side: Side) -> bytes:
        """Everything ``side`` sends, concatenated."""
        return b"".join(ln.wire_bytes for ln in self.lines if ln.side is side)

    def protocol_lines(self, side: Side) -> list[TraceLine]:
        return [ln for ln in self.lines if ln.side is side and ln.kind is LineKind.PROTOCOL]


def parse_trace(text: str, name: str = "<inline>") -> Trace:
    """Parse the text of a trace file."""
    if "\r" in text:
        raise TraceFormatError(f"{name}: trace files use LF line endings, not CRLF")
    raw_lines = text.split("\n")
    if raw_lines and raw_lines[-1] == "":
        raw_lines.pop()
    lines: list[TraceLine] = []
    for lineno, line in enumerate(raw_lines, start=1):
        if line.strip() == "" or line.startswith("#"):
            continue
        prefix = line[:2]
        side = _SIDES.get(prefix[:1])
        kind = _KINDS.get(prefix[1:2])
        if side is None or kind is None:
            raise TraceFormatError(f"{name}:{lineno}: unknown line prefix {prefix!r}")
        if len(line) > 2 and line[2] != " ":
            raise TraceFormatError(f"{name}:{lineno}: prefix must be followed by one space")
        lines.append(TraceLine(lineno, side, kind, line[3:]))
    return Trace(name, tuple(lines))


def load_trace(path: Path) -> Trace:
    return parse_trace(path.read_text(encoding="utf-8"), path.name)


def trace_paths(directory: Path = TRACES_DIR) -> list[Path]:
    return sorted(directory.glob("*.imap"))


def iter_traces(directory: Path = TRACES_DIR) -> Iterator[Trace]:
    for path in trace_paths(directory):
        yield load_trace(path)
