"""HeapTrimmer: one trim per burst of session ends, after the delay; none without ends."""

from __future__ import annotations

import ctypes
import itertools
import platform

import pytest
import trio
import trio.testing

from imapproxy.net.malloc import TRIM_DELAY, HeapTrimmer, malloc_trim


async def test_a_burst_of_ends_gets_one_trim_after_the_delay(
    autojump_clock: trio.testing.MockClock,
) -> None:
    times: list[float] = []
    trimmer = HeapTrimmer(delay=1.0, trim=lambda: times.append(trio.current_time()))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trimmer.run)
        await trio.sleep(5)
        assert times == []  # no session ended: no trim

        start = trio.current_time()
        for _ in range(50):  # a burst: sessions end over 0.5 s
            trimmer.session_ended()
            await trio.sleep(0.01)
        await trio.sleep(5)
        assert times == [pytest.approx(start + 1.0)]

        trimmer.session_ended()  # a later end gets its own trim
        later = trio.current_time()
        await trio.sleep(5)
        assert times[1:] == [pytest.approx(later + 1.0)]
        assert trimmer.trims == 2
        nursery.cancel_scope.cancel()


async def test_ends_keep_coming_at_most_one_trim_per_delay(
    autojump_clock: trio.testing.MockClock,
) -> None:
    times: list[float] = []
    trimmer = HeapTrimmer(delay=1.0, trim=lambda: times.append(trio.current_time()))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trimmer.run)
        for _ in range(1000):  # one end every 10 ms for 10 s
            trimmer.session_ended()
            await trio.sleep(0.01)
        await trio.sleep(5)
        nursery.cancel_scope.cancel()
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert 8 <= len(times) <= 11
    assert min(gaps) >= 1.0


async def test_without_malloc_trim_the_trimmer_does_nothing() -> None:
    with trio.fail_after(5):
        await HeapTrimmer(trim=False).run()  # returns at once


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_malloc_trim_gives_free_heap_pages_back() -> None:
    trim = malloc_trim()
    assert trim is not None
    assert TRIM_DELAY <= 10.0  # the target: back within 10 s
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = (ctypes.c_size_t,)
    libc.free.argtypes = (ctypes.c_void_p,)
    # 200 blocks of 100 KiB (under glibc's default mmap threshold: heap memory); every
    # other one is freed, leaving holes between live blocks, which free() keeps.
    size = 100 * 1024
    blocks = []
    for _ in range(200):
        p = libc.malloc(size)
        ctypes.memset(p, 1, size)  # make the pages resident
        blocks.append(p)
    for p in blocks[::2]:
        libc.free(p)
    before = _rss_kib()
    try:
        assert trim() == 1  # some memory was released
        assert _rss_kib() < before - 8 * 1024
    finally:
        for p in blocks[1::2]:
            libc.free(p)


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")
