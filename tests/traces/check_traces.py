#!/usr/bin/env python3
"""Standalone checker for the IMAP trace files in this directory.

Usage:  python3 tests/traces/check_traces.py [FILE.imap ...]

With no arguments every ``*.imap`` file next to this script is checked.
The format is described in README.md (same directory).  This script has no
dependencies outside the Python standard library and does not import the
project.

For every file it verifies that:

* every line is a comment, blank, or one of ``C:``/``S:`` (protocol line),
  ``C|``/``S|`` (literal content line, CRLF appended) or ``C+``/``S+``
  (literal content, no CRLF appended);
* every literal announced at the end of a protocol line with ``{n}``,
  ``{n+}``, ``{n-}`` or ``~{n}`` is followed by a literal block whose byte
  length is exactly ``n``, and then by a protocol line of the same side that
  continues the message;
* a client synchronising literal (``{n}`` / ``~{n}``) is preceded on the
  wire by a server ``+`` continuation request -- or is refused by a tagged
  server response, in which case no literal block follows;
* no literal block appears where none was announced, the server never
  sends a non-synchronising literal, and ``+`` continuation lines have the
  SP that the ABNF requires (``+ `` rather than a bare ``+``).

It prints per-file counts and exits non-zero if any file has an error.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

LITERAL_RE = re.compile(r"(~?)\{(\d+)([+-]?)\}$")
CRLF = b"\r\n"


@dataclass
class Literal:
    side: str  # "C" or "S"
    size: int
    marker: str  # the literal marker as written, e.g. "{5}", "{5+}", "~{5}"
    lineno: int
    sync: bool  # client must wait for "+" before sending the octets
    acknowledged: bool = False  # server sent "+" for it
    data: bytearray = field(default_factory=bytearray)
    started: bool = False  # at least one content line seen


@dataclass
class Stats:
    client_lines: int = 0
    server_lines: int = 0
    client_literals: int = 0
    server_literals: int = 0
    literal_bytes: int = 0
    refused_literals: int = 0
    client_bytes: int = 0
    server_bytes: int = 0


def _fmt_marker(m: re.Match) -> str:
    return f"{m.group(1)}{{{m.group(2)}{m.group(3)}}}"


def check_file(path: Path) -> tuple[Stats, list[str]]:
    stats = Stats()
    errors: list[str] = []

    def err(lineno: int, msg: str) -> None:
        errors.append(f"{path.name}:{lineno}: {msg}")

    raw = path.read_bytes()
    if b"\r" in raw:
        err(0, "file contains CR characters; use plain LF line endings")
    if b"\t" in raw:
        err(0, "file contains TAB characters")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        err(0, f"file is not valid UTF-8: {exc}")
        return stats, errors

    # pending[side]: literal announced by `side` whose block is not finished.
    pending: dict[str, Literal | None] = {"C": None, "S": None}
    # expect_cont[side]: lineno of the finished literal whose message must be
    # continued by the next protocol line of that side.
    expect_cont: dict[str, int | None] = {"C": None, "S": None}

    def finish_literal(lit: Literal, lineno: int) -> None:
        if len(lit.data) != lit.size:
            err(
                lit.lineno,
                f"literal {lit.marker} announced but block is {len(lit.data)} bytes "
                f"(block ends before line {lineno})",
            )
        stats.literal_bytes += len(lit.data)
        pending[lit.side] = None
        expect_cont[lit.side] = lit.lineno

    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()

    for idx, line in enumerate(lines, start=1):
        if line.strip() == "" or line.startswith("#"):
            continue
        kind = line[:2]
        if kind not in ("C:", "S:", "C|", "S|", "C+", "S+"):
            err(idx, f"unrecognised line prefix: {line[:20]!r}")
            continue
        if len(line) > 2 and line[2] != " ":
            err(idx, f"prefix {kind!r} must be followed by a single space or end of line")
            continue
        side, sep = kind[0], kind[1]
        body = line[3:]
        other = "S" if side == "C" else "C"

        # ---- literal content lines -------------------------------------
        if sep in "|+":
            lit = pending[side]
            if lit is None:
                err(idx, f"literal content line {kind!r} but no literal was announced")
                continue
            if lit.sync and not lit.acknowledged:
                err(
                    idx,
                    f"client synchronising literal {lit.marker} (line {lit.lineno}) "
                    "sent before the server's '+' continuation request",
                )
                lit.acknowledged = True  # report once
            if sep == "+" and body == "":
                err(idx, f"{kind!r} with no text is meaningless (use {side}| for an empty line)")
            chunk = body.encode("utf-8") + (CRLF if sep == "|" else b"")
            lit.data += chunk
            lit.started = True
            if side == "C":
                stats.client_bytes += len(chunk)
            else:
                stats.server_bytes += len(chunk)
            continue

        # ---- protocol lines (C: / S:) -----------------------------------
        lit = pending[side]
        if lit is not None:
            if lit.started or lit.size == 0:
                finish_literal(lit, idx)
            else:
                err(lit.lineno, f"literal {lit.marker} announced but no literal block follows")
                pending[side] = None
                expect_cont[side] = lit.lineno
        # This line is either a new message or the continuation of the
        # message whose literal just ended; both are fine syntactically.
        expect_cont[side] = None

        olit = pending[other]
        if olit is not None:
            # The other side has an announced literal that has not been sent.
            if side == "S" and olit.side == "C" and olit.sync and not olit.acknowledged:
                if body.startswith("+"):
                    olit.acknowledged = True
                elif body.startswith("* "):
                    pass  # untagged data may arrive while the client waits
                else:
                    # tagged response: the server refused the literal
                    stats.refused_literals += 1
                    pending["C"] = None
            elif olit.started or olit.size == 0:
                # a block was in progress and the other side spoke: the
                # block ended; it must now be continued by that side.
                finish_literal(olit, idx)
            elif side == "C" and olit.side == "S":
                err(
                    idx,
                    f"client line while server literal {olit.marker} "
                    f"(line {olit.lineno}) has no content yet",
                )
            elif side == "S" and olit.side == "C" and not olit.sync:
                err(
                    idx,
                    f"server line between client non-synchronising literal "
                    f"{olit.marker} (line {olit.lineno}) and its content",
                )

        if side == "C":
            stats.client_lines += 1
            stats.client_bytes += len(body.encode("utf-8")) + 2
        else:
            stats.server_lines += 1
            stats.server_bytes += len(body.encode("utf-8")) + 2
            if body == "+":
                err(idx, "bare '+' continuation: the ABNF requires '+ ' (plus SP)")

        m = LITERAL_RE.search(body)
        if m:
            num, plusminus = int(m.group(2)), m.group(3)
            if side == "S" and plusminus:
                err(idx, f"server must not send non-synchronising literal {_fmt_marker(m)}")
            sync = side == "C" and plusminus == ""
            pending[side] = Literal(side, num, _fmt_marker(m), idx, sync)
            if side == "C":
                stats.client_literals += 1
            else:
                stats.server_literals += 1

    for side in ("C", "S"):
        lit = pending[side]
        if lit is not None:
            if lit.started:
                err(
                    lit.lineno,
                    f"literal {lit.marker} is the last thing in the file; "
                    "its message must be continued by a protocol line",
                )
                if len(lit.data) != lit.size:
                    err(lit.lineno, f"literal {lit.marker} block is {len(lit.data)} bytes")
            else:
                err(lit.lineno, f"literal {lit.marker} announced but no literal block follows")
    return stats, errors


def wire_chunks(path: str | Path) -> list[tuple[str, bytes]]:
    """Return a trace as ``(side, data)`` chunks in file (= wire) order.

    ``side`` is ``"C"`` (client to server) or ``"S"`` (server to client).
    ``C:``/``S:`` and ``C|``/``S|`` lines get CRLF appended, ``C+``/``S+``
    lines do not; comments and blank lines are skipped.  No validation is
    done here (run :func:`check_file` for that).  Concatenating the chunks
    of one side gives that side's complete byte stream.
    """
    chunks: list[tuple[str, bytes]] = []
    for line in Path(path).read_text(encoding="utf-8").split("\n"):
        if line.strip() == "" or line.startswith("#"):
            continue
        kind, body = line[:2], line[3:]
        data = body.encode("utf-8")
        if kind[1] in ":|":
            data += CRLF
        chunks.append((kind[0], data))
    return chunks


def streams(path: str | Path) -> tuple[bytes, bytes]:
    """Return ``(client_bytes, server_bytes)`` for a trace file."""
    chunks = wire_chunks(path)
    client = b"".join(d for side, d in chunks if side == "C")
    server = b"".join(d for side, d in chunks if side == "S")
    return client, server


def main(argv: list[str]) -> int:
    here = Path(__file__).resolve().parent
    files = [Path(a) for a in argv] if argv else sorted(here.glob("*.imap"))
    if not files:
        print("no .imap files found")
        return 1
    all_errors: list[str] = []
    totals = Stats()
    header = (
        f"{'file':<28} {'C lines':>8} {'S lines':>8} {'C lits':>7} {'S lits':>7} "
        f"{'refused':>8} {'lit bytes':>10}"
    )
    print(header)
    print("-" * len(header))
    for f in files:
        stats, errors = check_file(f)
        all_errors.extend(errors)
        print(
            f"{f.name:<28} {stats.client_lines:>8} {stats.server_lines:>8} "
            f"{stats.client_literals:>7} {stats.server_literals:>7} "
            f"{stats.refused_literals:>8} {stats.literal_bytes:>10}"
            + ("   ERRORS" if errors else "")
        )
        for attr in vars(totals):
            setattr(totals, attr, getattr(totals, attr) + getattr(stats, attr))
    print("-" * len(header))
    print(
        f"{'total':<28} {totals.client_lines:>8} {totals.server_lines:>8} "
        f"{totals.client_literals:>7} {totals.server_literals:>7} "
        f"{totals.refused_literals:>8} {totals.literal_bytes:>10}"
    )
    if all_errors:
        print()
        for e in all_errors:
            print(e)
        print(f"\n{len(all_errors)} error(s)")
        return 1
    print("\nall traces OK")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
