"""Human-readable, redacted rendering of frames for logs and live transcripts.

Credentials never appear: what the decoder marks ``sensitive`` (every form of LOGIN and
AUTHENTICATE, SASL data lines, and whatever a client sends after a login attempt until its
next well-formed command) is replaced by ``***``; see :func:`redacted`.  Literal payloads
are summarised, long lines are cut; a server line longer than ``max_line_bytes`` (relayed in
oversize pieces) is shown once, its beginning and its total size.
"""

from __future__ import annotations

import re
import time
from typing import TextIO

from .logsafe import printable, safe
from .wire.commands import SASL_MECHANISMS
from .wire.events import Frame, FrameKind, LiteralChunk
from .wire.parser import parse_command
from .wire.tokens import string_value

MAX_SHOWN = 300  # characters of one frame shown in a transcript line
# tag SP AUTHENTICATE SP mechanism, then the line end or whitespace (an initial response)
_AUTH_HEAD = re.compile(rb"([!-~]+) (AUTHENTICATE) ([!-~]{1,20})(?=[\s]|\Z)", re.IGNORECASE)


def redacted(frame: Frame) -> str:
    """The frame's text with secrets replaced and literals summarised (no CRLF).

    A frame the decoder marked ``sensitive`` is never shown as it is: only the tag and the
    command name of a well-formed LOGIN or AUTHENTICATE, the user of a well-formed LOGIN
    with two arguments, the name of a known SASL mechanism.  Anything else sensitive (a
    SASL line, a malformed LOGIN, whatever the client sent after a refused login) is
    ``***`` wholesale.
    """
    raw = frame.raw
    if frame.sensitive:
        text = _redacted_sensitive(frame)
        return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN] + "..."
    text = printable(raw.rstrip(b"\r\n"))
    if len(text) > MAX_SHOWN:
        text = text[:MAX_SHOWN] + f"...(+{len(raw) - MAX_SHOWN} bytes)"
    return text


def _redacted_sensitive(frame: Frame) -> str:
    if frame.kind is FrameKind.AUTH_DATA:
        return "***"
    if frame.kind is not FrameKind.COMMAND or frame.name not in ("LOGIN", "AUTHENTICATE"):
        return "*** (not shown: may hold credentials)"
    tag = printable(frame.tag or b"?")
    if not frame.first:
        return f"{tag} {frame.name} *** (part)"
    raw = frame.raw
    if frame.name == "AUTHENTICATE":
        m = _AUTH_HEAD.match(raw)
        if m is None or m.group(3).upper().decode("ascii") not in SASL_MECHANISMS:
            return f"{tag} AUTHENTICATE ***"
        head = b" ".join(m.groups()).decode("ascii")
        more = bool(raw[m.end() :].strip()) or not frame.final
        return head + (" ***" if more else "")
    # LOGIN
    if not frame.final:
        return f"{tag} LOGIN *** (part)"
    try:
        cmd = parse_command(raw)
    except Exception:
        return f"{tag} LOGIN ***"
    if len(cmd.args) != 2 or cmd.name != "LOGIN":
        return f"{tag} LOGIN ***"
    user = string_value(cmd.args[0])
    if user is None:
        return f"{tag} LOGIN ***"
    return f"{tag} LOGIN {printable(user)} ***"


class TranscriptWriter:
    """Writes one line per frame: time, session, direction, redacted text."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        # when each pending command was sent, to show its latency on completion
        self._started: dict[tuple[str, bytes], float] = {}
        # a long server line being relayed in pieces: (its first piece, bytes so far)
        self._long: dict[str, tuple[Frame, int]] = {}

    def frame(self, session_id: str, frame: Frame, *, to_upstream: bool) -> None:
        if frame.oversize and not to_upstream:
            self._long_piece(session_id, frame)
            return
        arrow = "C:" if to_upstream else "S:"
        suffix = ""
        if frame.tag is not None and frame.first:
            key = (session_id, frame.tag)
            if to_upstream and frame.kind is FrameKind.COMMAND:
                self._started[key] = time.monotonic()
            elif not to_upstream and frame.kind is FrameKind.STATUS:
                began = self._started.pop(key, None)
                if began is not None:
                    suffix = f"  ({(time.monotonic() - began) * 1000:.1f} ms)"
        self._line(session_id, f"{arrow} {redacted(frame)}{suffix}")

    def _long_piece(self, session_id: str, frame: Frame) -> None:
        """Collect the pieces of a long server line; at its last piece, show it once: its
        beginning and its size (what ends the line's part, inline literals included)."""
        head, size = self._long.pop(session_id, (frame, 0))
        size += len(frame.raw)
        if not frame.final and frame.literal is None:
            self._long[session_id] = (head, size)  # the line goes on
            return
        text = printable(head.raw[:MAX_SHOWN])
        then = f", then {frame.literal.announcement().decode()}" if frame.literal else ""
        suffix = ""
        if head.tag is not None and head.first and head.kind is FrameKind.STATUS:
            began = self._started.pop((session_id, head.tag), None)
            if began is not None:
                suffix = f"  ({(time.monotonic() - began) * 1000:.1f} ms)"
        self._line(session_id, f"S: {text}... (long line, {size} bytes{then}){suffix}")

    def chunk(self, session_id: str, chunk: LiteralChunk, *, to_upstream: bool) -> None:
        if chunk.remaining == 0:
            arrow = "C:" if to_upstream else "S:"
            self._line(session_id, f"{arrow} <end of streamed literal>")

    def note(self, session_id: str, text: str) -> None:
        self._line(session_id, f"-- {safe(text, MAX_SHOWN)}")

    def session_closed(self, session_id: str) -> None:
        for key in [k for k in self._started if k[0] == session_id]:
            del self._started[key]
        self._long.pop(session_id, None)

    def _line(self, session_id: str, text: str) -> None:
        t = time.time()
        stamp = time.strftime("%H:%M:%S", time.localtime(t)) + f".{int(t * 1000) % 1000:03d}"
        self.out.write(f"{stamp} {session_id} {text}\n")
        self.out.flush()
