"""Counters, gauges and histograms kept as plain numbers, exported through prometheus-client.

Why not prometheus-client's own ``Counter``/``Histogram``: each ``inc`` takes a lock and
each ``observe`` walks the buckets one by one, and looking a child up by its labels costs
more than the update itself; the metrics are updated on the relay's hot path (every command
and completion).  Here an update is a dict update (a histogram: a bisection too), done on
the event loop thread only; the registry's scrape runs on the HTTP server's thread and
reads a snapshot (copies of lists and dicts are atomic in CPython).  A histogram's buckets
and count come from one snapshot, so they always agree.

The series exist from the moment their label values are declared (:meth:`declare`), at
zero: the label sets are closed, so every combination is declared at start-up.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable, Iterator, Sequence

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

Key = tuple[str, ...]


class _Vec:
    __slots__ = ("help", "labels", "name", "values")

    def __init__(self, name: str, help: str, labels: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help
        self.labels = tuple(labels)
        self.values: dict[Key, float] = {}

    def declare(self, *label_values: Iterable[str]) -> None:
        """Create every combination of these label values (the product), at zero."""
        for key in itertools.product(*label_values):
            self.values.setdefault(key, 0)

    def inc(self, key: Key, amount: float = 1) -> None:
        values = self.values
        values[key] = values.get(key, 0) + amount

    def snapshot(self) -> list[tuple[Key, float]]:
        return list(self.values.items())


class CounterVec(_Vec):
    __slots__ = ()

    def family(self) -> Metric:
        fam = CounterMetricFamily(self.name, self.help, labels=self.labels)
        for key, value in self.snapshot():
            fam.add_metric(list(key), value)
        return fam


class GaugeVec(_Vec):
    __slots__ = ()

    def set(self, key: Key, value: float) -> None:
        self.values[key] = value

    def family(self) -> Metric:
        fam = GaugeMetricFamily(self.name, self.help, labels=self.labels)
        for key, value in self.snapshot():
            fam.add_metric(list(key), value)
        return fam


class HistogramVec:
    """Per label combination: a count per bucket (the last one past the largest bound)
    and the sum of the observed values."""

    __slots__ = ("_le", "bounds", "counts", "help", "labels", "name", "sums")

    def __init__(
        self, name: str, help: str, labels: Sequence[str], bounds: Sequence[float]
    ) -> None:
        if list(bounds) != sorted(set(bounds)):
            raise ValueError(f"{name}: bucket bounds must increase")
        self.name = name
        self.help = help
        self.labels = tuple(labels)
        self.bounds = tuple(float(b) for b in bounds)
        self._le = [floatToGoString(b) for b in self.bounds] + ["+Inf"]
        self.counts: dict[Key, list[int]] = {}
        self.sums: dict[Key, float] = {}

    def declare(self, *label_values: Iterable[str]) -> None:
        for key in itertools.product(*label_values):
            if key not in self.counts:
                self.sums[key] = 0.0
                self.counts[key] = [0] * (len(self.bounds) + 1)

    def observe(self, key: Key, value: float) -> None:
        counts = self.counts.get(key)
        if counts is None:
            self.declare(*([v] for v in key))
            counts = self.counts[key]
        # a value equal to a bound belongs to that bound's bucket ("le")
        counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sums[key] += value

    def family(self) -> Metric:
        fam = HistogramMetricFamily(self.name, self.help, labels=self.labels)
        for key, counts in list(self.counts.items()):
            snap = counts[:]
            total = self.sums.get(key, 0.0)
            cumulative = list(itertools.accumulate(snap))
            fam.add_metric(list(key), list(zip(self._le, cumulative, strict=True)), total)
        return fam


Family = CounterVec | GaugeVec | HistogramVec


def families(items: Iterable[Family]) -> Iterator[Metric]:
    for item in items:
        yield item.family()
