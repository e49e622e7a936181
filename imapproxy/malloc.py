"""glibc malloc settings for a relay that moves data in ~1 MiB pieces.

Why: a bulk transfer allocates a new ~1 MiB ``bytes`` per socket read, per TLS write piece
and per join, and frees it shortly after.  With glibc's defaults such blocks sit near the
``mmap`` threshold (128 KiB, raised dynamically only up to the last freed block's size)
and near the heap trim threshold, so they keep being handed back to the kernel and
fetched again: every 4 KiB page is then faulted in and zero-filled anew.  Profiled, page
faults, zeroing and ``munmap`` were ~10% of the proxy's CPU during 1 MiB FETCHes.

Fixed thresholds keep those blocks in the heap (reused, no page faults).  Memory the
sessions no longer use is still returned to the kernel once more than ``trim`` bytes sit
free at the top of the heap.  Settings from the environment (``MALLOC_MMAP_THRESHOLD_``,
``MALLOC_TRIM_THRESHOLD_``) win; on a C library without ``mallopt`` this does nothing.
"""

from __future__ import annotations

import ctypes
import os

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 4 * 1024 * 1024
TRIM_THRESHOLD = 32 * 1024 * 1024


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
