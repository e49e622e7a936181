"""What the live feed (``imapproxy run --control-socket``) costs a session, run by hand:

    python bench/live_bench.py [--rounds 200000]

The hook side alone, as the relay drives it (``CommandGate`` from decoded frames, no
sockets): one ``a NOOP`` and its tagged ``a OK``, i.e. two messages, per round, through

* ``base``: the chain every proxy has (the capability stage);
* ``no-op observer``: plus an observer that wants every message and does nothing (what
  any such filter costs: the relay builds a view of every message for it);
* ``idle``: plus the live filter, nobody attached (the price of ``--control-socket``);
* ``1 tail``: one tail attached (its queue emptied every 256 rounds, as its writer would);
* ``1 tail, filtered``: one tail with a filter that matches nothing (``--user nobody``);
* ``jsonl file``: for comparison, the JSONL transcript filter instead (its writer thread
  is not started: only the hook side is measured).

Prints microseconds per message (the median of 7 runs, interleaved).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from imapproxy.filters import (
    ChainEntry,
    Filter,
    FilterChain,
    OnError,
    SessionInfo,
    SessionView,
)
from imapproxy.filters.capabilities import CapabilityFilter
from imapproxy.filters.live import LiveFactory, LiveHub, RecordFilter
from imapproxy.filters.sink import RecordSink
from imapproxy.filters.transcript import TranscriptFactory, format_jsonl
from imapproxy.relay.gate import CommandGate
from imapproxy.wire import Decoder, Frame, Limits, Side
from imapproxy.wire.conversation import Phase

INFO = SessionInfo("bench-1", "127.0.0.1", 40000, "imap@127.0.0.1:1143")


def _frame(side: Side, data: bytes) -> Frame:
    decoder = Decoder(side)
    decoder.receive_data(data)
    event = decoder.next_event()
    assert isinstance(event, Frame)
    return event


COMMAND = _frame(Side.CLIENT, b"a1 NOOP\r\n")
COMPLETION = _frame(Side.SERVER, b"a1 OK NOOP completed (0.001 + 0.000 secs).\r\n")


def _capabilities() -> ChainEntry:
    return ChainEntry(
        "capabilities", lambda info: CapabilityFilter(info, require_tls_for_login=False)
    )


class _Noop(Filter):
    name = "noop"
    observes_only = True


def measure(chain: FilterChain, rounds: int, every: Callable[[], None]) -> float:
    """Microseconds per message (two per round)."""
    filters = chain.open(INFO, lambda *a: None)
    view = SessionView(INFO, phase=Phase.AUTHENTICATED, user="alice")
    gate = CommandGate(filters, view, Limits(), clock=time.perf_counter)
    wants = filters.wants_response
    kind, name, raw = COMPLETION.kind, COMPLETION.name, COMPLETION.raw
    start = time.perf_counter()
    for i in range(rounds):
        gate.command_part(COMMAND)
        if wants(kind, name, raw):
            gate.response(COMPLETION)
        if not i & 255:
            every()
    return (time.perf_counter() - start) / rounds / 2 * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=200_000)
    args = parser.parse_args()

    hub = LiveHub(capacity=10_000)
    live = ChainEntry("live", LiveFactory(hub), OnError.OPEN)
    sink = RecordSink("-", format_jsonl, capacity=10**9)
    jsonl = ChainEntry("transcript", TranscriptFactory(sink, bodies=False), OnError.OPEN)
    noop = ChainEntry("noop", lambda info: _Noop(), OnError.OPEN)
    subs = []

    def attach(rf: RecordFilter | None) -> Callable[[], None]:
        def go() -> None:
            for sub in subs:
                hub.unsubscribe(sub)
            subs.clear()
            if rf is not False:  # type: ignore[comparison-overlap]
                sub = hub.subscribe(lambda: None)
                sub.filter = rf
                subs.append(sub)

        return go

    def drain() -> None:
        for sub in subs:
            sub.queue.clear()
        sink._queue.clear()

    cases: list[tuple[str, FilterChain, Callable[[], None]]] = [
        ("base (capability stage)", FilterChain([_capabilities()]), attach(False)),  # type: ignore[arg-type]
        ("+ no-op observer of everything", FilterChain([_capabilities(), noop]), attach(False)),  # type: ignore[arg-type]
        ("+ live, nobody attached", FilterChain([_capabilities(), live]), attach(False)),  # type: ignore[arg-type]
        ("+ live, 1 tail", FilterChain([_capabilities(), live]), attach(None)),
        (
            "+ live, 1 tail, filtered",
            FilterChain([_capabilities(), live]),
            attach(RecordFilter.build(user=["nobody"])),
        ),
        ("+ jsonl transcript (hook side)", FilterChain([_capabilities(), jsonl]), attach(False)),  # type: ignore[arg-type]
    ]
    runs: dict[str, list[float]] = {label: [] for label, _, _ in cases}
    for _ in range(7):  # interleaved: a busy machine's drift spreads over every case
        for label, chain, setup in cases:
            setup()
            runs[label].append(measure(chain, args.rounds, drain))
    print(f"{'chain':34} {'us/message':>10}")
    for label, values in runs.items():
        print(f"{label:34} {statistics.median(values):10.2f}")


if __name__ == "__main__":
    main()
