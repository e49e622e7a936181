"""The decoder's intake: bytes received and not yet given out, and every offset into them.

:class:`Intake` is the buffer under :class:`~imapproxy.wire.decoder.Decoder` (a base class,
so that the framer reads the buffer and its offsets as plain attributes on every line).  It
keeps appending linear however the stream is cut, drops consumed bytes (compaction) and
moves the framer's offsets with them, and hands a streaming literal's bytes straight
through when nothing else is waiting.
"""

from __future__ import annotations

from .holds import Mode

# Compaction threshold: consumed bytes are dropped from the buffer once this many pile up.
COMPACT_AT = 256 * 1024
_STREAM = Mode.STREAM  # (a module constant: cheaper than the lookup on the enum class)


class Intake:
    """Received bytes not yet framed (``_buf[_pos:]``, plus ``_direct``)."""

    # The framer's state this reads (Decoder.__init__ makes it).
    _mode: Mode
    _stream_remaining: int

    def _init_intake(self) -> None:
        # Usually a bytes object (what was received, or a partial line joined to it),
        # sliced into frames without an intermediate copy; a bytearray only while much
        # more is waiting than arrives (appending stays O(1), so a peer that drips one
        # byte at a time causes no quadratic copying).
        self._buf: bytes | bytearray = b""
        self._pos = 0  # start of unconsumed bytes
        self._eof = False
        self._direct: bytes | None = None  # literal bytes received while streaming
        # The framer's offsets into _buf (moved by _shift when bytes are dropped):
        self._part_start = 0  # where the current part starts
        self._line_start = 0  # start of the current line within the part
        self._scan = 0  # where the current line's LF search resumes
        self._lit_end = 0  # bytes before this offset are inline literal bytes

    def receive_data(self, data: bytes) -> None:
        if self._eof and data:
            raise RuntimeError("receive_data after end of stream")
        if not data:
            self._eof = True
            return
        if self._mode is _STREAM and self._direct is None and self._pos == len(self._buf):
            # Streaming a literal with nothing buffered: hand the received bytes on as
            # they are, without copying them through the buffer (literal payload moves
            # at memory speed; only a split at the literal's end costs a slice).
            take = self._stream_remaining
            if len(data) <= take:
                self._direct = bytes(data)
                return
            self._direct = bytes(data[:take])
            data = data[take:]
        buf = self._buf
        pos = self._pos
        rest = len(buf) - pos
        if rest == 0:
            self._shift(pos)
            self._buf = bytes(data)
        elif rest <= len(data):
            # A partial line waits: join it to the new bytes.  Copying costs no more than
            # the bytes received, so it stays linear however the stream is cut.
            self._shift(pos)
            self._buf = bytes(memoryview(buf)[pos:]) + data
        else:
            # More waiting than arriving (a peer dripping bytes): append, amortised O(1).
            if type(buf) is not bytearray:
                buf = bytearray(memoryview(buf)[pos:])
                self._shift(pos)
            elif pos >= COMPACT_AT:
                del buf[:pos]
                self._shift(pos)
            buf += data
            self._buf = buf

    @property
    def buffered(self) -> int:
        """Bytes received but not yet given out in events."""
        direct = self._direct
        return len(self._buf) - self._pos + (len(direct) if direct is not None else 0)

    def _take_all(self) -> bytes:
        """Everything received and not given out, now dropped (STARTTLS: never read)."""
        leftover = (self._direct or b"") + bytes(self._buf[self._pos :])
        self._direct = None
        self._buf = b""
        self._pos = 0
        return leftover

    def _compact(self) -> None:
        pos = self._pos
        if pos == 0:
            return
        buf = self._buf
        if pos == len(buf):
            self._buf = b""
        elif type(buf) is bytearray:
            del buf[:pos]
        else:
            self._buf = buf[pos:]
        self._shift(pos)

    def _shift(self, pos: int) -> None:
        """Offsets after the first ``pos`` bytes of the buffer were dropped."""
        if pos == 0:
            return
        self._pos -= pos
        self._part_start -= pos
        self._line_start -= pos
        self._scan -= pos
        self._lit_end -= pos
