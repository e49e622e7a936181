"""glibc malloc settings for a relay that moves data in ~1 MiB pieces.

Why: a bulk transfer allocates a new ~1 MiB ``bytes`` per socket read, per TLS write piece
and per join, and frees it shortly after.  With glibc's defaults such blocks sit near the
``mmap`` threshold (128 KiB, raised dynamically only up to the last freed block's size)
and near the heap trim threshold, so they keep being handed back to the kernel and
fetched again: every 4 KiB page is then faulted in and zero-filled anew.  Profiled, page
faults, zeroing and ``munmap`` were ~10% of the proxy's CPU during 1 MiB FETCHes.

Fixed thresholds keep those blocks in the heap (reused, no page faults).  Settings from
the environment (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``) win; on a C
library without ``mallopt`` this does nothing.

Giving memory back: ``free`` only returns the *top* of the heap to the kernel (once more
than ``trim`` bytes sit free there).  After a burst of sessions the freed 1 MiB blocks lie
in the middle of the heap, below small objects that live on (measured, rounds of 100
stalled TLS sessions: +35-160 MiB stayed resident for good with no session left).
``malloc_trim(0)`` also hands back every free page inside the heap
(``madvise(MADV_DONTNEED)``), so :class:`HeapTrimmer` calls it once sessions have ended:
at most once per :data:`TRIM_DELAY` seconds, after the burst is over rather than per
session.  It runs in
the event loop (glibc holds the arena lock throughout, so a thread would not help): it
costs ~0.1 ms per MiB returned (24 ms for 300 MiB) and ~1 ms when there is nothing to
return in a heap of 100,000 free small blocks.
"""

from __future__ import annotations

import ctypes
import logging
import os
import time
from collections.abc import Callable

import trio

log = logging.getLogger("imapproxy.malloc")

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 4 * 1024 * 1024
TRIM_THRESHOLD = 32 * 1024 * 1024

TRIM_DELAY = 1.0
"""Seconds from a session's end to the trim: the sessions of a burst that end within it
share one trim, and RSS is back well within the 10 s the issue asks for."""


def tune_malloc(mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD) -> bool:
    """Apply the thresholds (once, at start-up); True when glibc took them."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    ok = True
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        ok = bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and ok
    if "MALLOC_TRIM_THRESHOLD_" not in os.environ:
        ok = bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold)) and ok
    return ok


def malloc_trim() -> Callable[[], object] | None:
    """glibc's ``malloc_trim(0)`` as a callable, or None on another C library."""
    try:
        fn = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_size_t,)
    fn.restype = ctypes.c_int
    return lambda: fn(0)


class HeapTrimmer:
    """Returns freed heap memory to the kernel after sessions end (see the module doc).

    The server calls :meth:`session_ended` whenever a session ends and runs :meth:`run` in
    a background task.  ``trim``: True for :func:`malloc_trim` (nothing happens where it
    does not exist), a callable (tests), or False for no trimming."""

    def __init__(
        self,
        *,
        delay: float = TRIM_DELAY,
        trim: Callable[[], object] | bool | None = True,
    ) -> None:
        self.delay = delay
        self._trim = malloc_trim() if trim is True else trim or None
        self._ended = trio.Event()
        self.trims = 0

    def session_ended(self) -> None:
        self._ended.set()

    async def run(self) -> None:
        if self._trim is None:
            return
        while True:
            await self._ended.wait()
            await trio.sleep(self.delay)  # the rest of the burst ends meanwhile
            self._ended = trio.Event()  # ends from now on get the next trim
            start = time.perf_counter()
            self._trim()
            self.trims += 1
            log.debug("malloc_trim took %.1f ms", (time.perf_counter() - start) * 1e3)
