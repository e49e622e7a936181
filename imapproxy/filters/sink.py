"""A bounded, never-blocking record sink: sessions hand records over, a thread writes them.

Why a thread: a session must never wait for a disk (or a terminal, or a pipe nobody reads).
``put`` only appends to a bounded deque; a writer thread serialises and writes.  When the
deque is full the record is lost, counted, and the count is reported in the next record
written (``"lost": N``), so a reader knows exactly how much is missing.

``reopen()`` (wired to SIGUSR1) makes the writer close and reopen the file before its next
write, so logrotate's rename-then-signal works.
"""

from __future__ import annotations

import collections
import contextlib
import os
import sys
import threading
from collections.abc import Callable
from typing import Any, TextIO

Record = dict[str, Any]
Formatter = Callable[[Record], str]  # one record -> one line, without the newline
# A record is a dict for the formatter, or a line made already (a JSON object: the
# transcript's hot path makes command and response lines itself).

DEFAULT_CAPACITY = 10_000  # records; at ~300 bytes each about 3 MB
# Seconds between the writer's rounds: records reach the file (or a `tail`) this late at
# most; a burst that fills a quarter of the buffer wakes it at once.
WRITE_INTERVAL = 0.05


class RecordSink:
    def __init__(
        self,
        path: str,
        formatter: Formatter,
        *,
        capacity: int = DEFAULT_CAPACITY,
        stream: TextIO | None = None,
    ) -> None:
        """``path`` "-" writes to ``stream`` (default: stdout); anything else is a file
        opened for appending (created 0600: transcripts hold private mail metadata)."""
        self.path = path
        self.formatter = formatter
        self.capacity = capacity
        self._stream = stream
        self._queue: collections.deque[Record | str] = collections.deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        # The writer drains the queue every WRITE_INTERVAL seconds, or as soon as it is a
        # quarter full: waking a thread for every record cost more than writing it.
        self._wake_at = max(1, capacity // 4)
        self._lost = 0  # lost since the last record written
        self.lost_total = 0
        self.written = 0
        self._reopen = False
        self._closing = False
        self._out: TextIO | None = None
        self._thread: threading.Thread | None = None
        self.error: str | None = None  # the last write error, for the log

    # ------------------------------------------------------------------ producer side

    def start(self) -> None:
        """Open the output (errors here are the operator's: raised, with the path) and
        start the writer."""
        self._out = self._open()
        self._thread = threading.Thread(target=self._run, name="imapproxy-sink", daemon=True)
        self._thread.start()

    def put(self, record: Record | str) -> None:
        """Queue a record; never blocks.  Full: the record is lost and counted."""
        queue = self._queue
        if len(queue) >= self.capacity:
            with self._lock:
                self._lost += 1
                self.lost_total += 1
            return
        queue.append(record)
        if len(queue) == self._wake_at:  # (once per filling: not a wake-up per record)
            self._wake.set()

    def reopen(self) -> None:
        self._reopen = True
        self._wake.set()

    def close(self, timeout: float = 2.0) -> None:
        """Write what is queued (for at most ``timeout`` seconds), then close."""
        self._closing = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    # ------------------------------------------------------------------ writer thread

    def _open(self) -> TextIO:
        if self.path == "-":
            return self._stream or sys.stdout


        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        return open(fd, "a", encoding="utf-8", buffering=1 << 16)

    def _run(self) -> None:
        queue = self._queue
        while True:
            if not queue and self._closing:
                break
            if not self._closing:
                self._wake.wait(WRITE_INTERVAL)
                self._wake.clear()
            if self._reopen:
                self._reopen = False
                self._swap()
            wrote = False
            formatter = self.formatter
            while queue:
                lines: list[str] = []
                # a batch at a time: one write call per batch, not per record
                for _ in range(min(len(queue), 512)):
                    record = queue.popleft()
                    lost = 0
                    if self._lost:  # (read without the lock: it is only ever set with it)
                        with self._lock:
                            lost, self._lost = self._lost, 0
                    if type(record) is str:
                        lines.append(f'{{"lost":{lost},{record[1:]}' if lost else record)
                        continue
                    if lost:
                        record["lost"] = lost  # type: ignore[index]
                    lines.append(formatter(record))  # type: ignore[arg-type]
                lines.append("")
                self._write("\n".join(lines), len(lines) - 1)
                wrote = True
            if wrote:
                self._flush()
        self._flush()
        if self._out is not None and self.path != "-":
            self._out.close()

    def _write(self, lines: str, count: int) -> None:
        out = self._out
        if out is None:
            return
        try:
            out.write(lines)
            self.written += count
        except (OSError, ValueError) as exc:
            self.error = f"cannot write {self.path}: {exc}"
            with self._lock:
                self._lost += count
                self.lost_total += count

    def _flush(self) -> None:
        try:
            if self._out is not None:
                self._out.flush()
        except (OSError, ValueError) as exc:
            self.error = f"cannot write {self.path}: {exc}"

    def _swap(self) -> None:
        if self.path == "-":
            return
        try:
            new = self._open()
        except OSError as exc:
            self.error = f"cannot reopen {self.path}: {exc}"
            return
        old, self._out = self._out, new
        if old is not None:
            with contextlib.suppress(OSError):
                old.close()
