"""Token buckets for the policy filter's ``rate`` rules: process-wide, bounded, clock injected.

A rate ``"20/s"`` is a bucket of 20 tokens refilled at 20 per second: a burst of 20, then
20 a second on average.  One bucket per key (a rule and a user, or a rule and a client
address).  The store is shared by every session (the policy's factory holds it and hands
it to each session's filter), so it is what limits a user across connections.

Memory is bounded: a bucket that has refilled completely is the same as no bucket, so such
buckets are dropped as they are met (the oldest first, a little on every call); when the
store is full anyway, the least recently used bucket goes (that key starts afresh, full).
Sessions run on one Trio thread: no locks.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

_RATE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*/\s*(\d*)\s*(s|sec|second|m|min|minute|h|hour)\s*\Z")
_UNIT_SECONDS = {"s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0,
                 "h": 3600.0, "hour": 3600.0}  # fmt: skip
# Buckets looked at for a full refill on each call (amortised clean-up; a small constant).
_SWEEP = 2


@dataclass(frozen=True, slots=True)
class Rate:
    """``count`` events per ``seconds``: the bucket holds ``count`` tokens."""

    count: float
    seconds: float

    @property
    def per_second(self) -> float:
        return self.count / self.seconds

    def __str__(self) -> str:
        return f"{self.count:g}/{self.seconds:g}s"


def parse_rate(text: str) -> Rate:
    """``"20/s"``, ``"10/min"``, ``"100/h"``, ``"5/10s"`` -> Rate; ValueError otherwise."""
    m = _RATE.match(text)
    if m is None:
        raise ValueError('expected "N/s", "N/min" or "N/h" (e.g. "20/s", "10/min")')
    count = float(m.group(1))
    seconds = _UNIT_SECONDS[m.group(3)] * (int(m.group(2)) if m.group(2) else 1)
    if count < 1 or seconds <= 0:
        raise ValueError("a rate needs at least 1 per period")
    return Rate(count, seconds)


class _Bucket:
    __slots__ = ("stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp


class BucketStore:
    """Buckets by key, at most ``max_buckets`` of them (see the module docstring)."""

    def __init__(
        self, max_buckets: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if max_buckets < 1:
            raise ValueError("max_buckets must be at least 1")
        self.max_buckets = max_buckets
        self.clock = clock
        # insertion order == least recently used first (a used bucket is moved to the end)
        self._buckets: dict[tuple[Hashable, ...], tuple[_Bucket, Rate]] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: tuple[Hashable, ...], rate: Rate) -> float:
        """Take one token from ``key``'s bucket.  Returns 0.0 when there was one, else the
        seconds until there will be one (the caller refuses; nothing is taken)."""
        now = self.clock()
        buckets = self._buckets
        entry = buckets.pop(key, None)
        if entry is None:
            self._sweep(now)
            if len(buckets) >= self.max_buckets:
                del buckets[next(iter(buckets))]  # the least recently used
            bucket = _Bucket(rate.count, now)
        else:
            bucket = entry[0]
            elapsed = now - bucket.stamp
            if elapsed > 0:
                bucket.tokens = min(rate.count, bucket.tokens + elapsed * rate.per_second)
                bucket.stamp = now
        buckets[key] = (bucket, rate)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / rate.per_second

    def _sweep(self, now: float) -> None:
        """Drop the oldest buckets that have refilled completely (they are the same as
        none); looks at a few only."""
        buckets = self._buckets
        for _ in range(_SWEEP):
            if not buckets:
                return
            key = next(iter(buckets))
            bucket, rate = buckets[key]
            if bucket.tokens + (now - bucket.stamp) * rate.per_second < rate.count:
                return  # the oldest is not full yet: younger ones are not either, mostly
            del buckets[key]


__all__ = ["BucketStore", "Rate", "parse_rate"]
