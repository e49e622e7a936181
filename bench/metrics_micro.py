"""What the metrics cost per command, without sockets (run by hand):
``python bench/metrics_micro.py [--commands 20000] [--reps 7]``.

Each figure is the fastest of ``--reps`` runs, in microseconds per command (one command,
its untagged response if any, its tagged completion):

* ``off`` / ``on``: what the relay does per command besides moving bytes, as it does it:
  each client command frame through ``CommandGate.command_part``, each server frame
  offered to the chain when ``wants_response`` says so, and (``on``) the relay's two
  per-command events, ``command_started`` and ``command_completed``, with the metrics
  observer in the chain (``off``: the capability stage only, no events).
* ``added``: on - off, what turning metrics on costs per command.
* ``events``: the two event calls alone.

Per session or per connection events, and the byte counts (an addition per write), are
not measured here.  Workloads: ``UID FETCH n (FLAGS)`` (one ``* n FETCH`` answer each)
and ``NOOP``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1])]

from prometheus_client import CollectorRegistry  # noqa: E402

from imapproxy.config import Endpoint, ListenerConfig, ProxyConfig, UpstreamConfig  # noqa: E402
from imapproxy.filters import FilterChain, SessionInfo, SessionView  # noqa: E402
from imapproxy.metrics import ProxyMetrics  # noqa: E402
from imapproxy.relay.gate import CommandGate  # noqa: E402
from imapproxy.relay.server import Proxy  # noqa: E402
from imapproxy.relay.session import SessionStats  # noqa: E402
from imapproxy.wire import NEED_DATA, Decoder, Frame, Limits, Side  # noqa: E402

LIMITS = Limits()
BATCH = 100
INFO = SessionInfo("s-1", "127.0.0.1", 1, "imap@127.0.0.1:1143")
CONFIG = ProxyConfig(
    listeners=(ListenerConfig(Endpoint("127.0.0.1", 1143), implicit_tls=False),),
    upstream=UpstreamConfig(Endpoint("127.0.0.1", 143)),
)


def frames(side: Side, data: bytes) -> list[Frame]:
    dec = Decoder(side, LIMITS)
    dec.authenticated = True
    dec.receive_data(data)
    out: list[Frame] = []
    while (ev := dec.next_event()) is not NEED_DATA:
        assert isinstance(ev, Frame), ev
        out.append(ev)
    return out


def workload(kind: str, n: int) -> tuple[list[Frame], list[Frame]]:
    if kind == "fetch-flags":
        cmds = b"".join(b"a%d UID FETCH %d (FLAGS)\r\n" % (i, i + 1) for i in range(n))
        resp = b"".join(
            b"* %d FETCH (UID %d FLAGS (\\Seen))\r\na%d OK Fetch completed.\r\n" % (i + 1, i + 1, i)
            for i in range(n)
        )
    else:
        cmds = b"".join(b"a%d NOOP\r\n" % i for i in range(n))
        resp = b"".join(b"a%d OK NOOP completed.\r\n" % i for i in range(n))
    return frames(Side.CLIENT, cmds), frames(Side.SERVER, resp)


def proxy_chain(metrics: bool) -> Proxy:
    if not metrics:
        return Proxy(CONFIG)
    m = ProxyMetrics(CollectorRegistry(), process=False)
    return Proxy(CONFIG, filters=m.observe(FilterChain()), events=m)


def relay_path(proxy: Proxy, cmds: list[Frame], resps: list[Frame]) -> float:
    events = proxy.events
    events.session_opened(INFO.id, CONFIG.listeners[0], SessionStats())
    filters = proxy.filters.open(INFO, lambda *a: None)
    gate = CommandGate(filters, SessionView(INFO), LIMITS, clock=time.monotonic)
    wants = filters.wants_response
    sid = INFO.id
    batches = _batches(cmds, resps)
    started = time.perf_counter()
    for batch_cmds, batch_resps in batches:
        for frame in batch_cmds:  # (as relay.pumps.pump_client)
            if frame.first:
                events.command_started(sid, frame.tag, frame.name)
            gate.command_part(frame)
        for frame in batch_resps:  # (as relay.pumps.pump_upstream and .completed)
            if frame.tag is not None and frame.first:
                events.command_completed(sid, frame.tag, frame.name)
            if wants(frame.kind, frame.name, frame.raw):
                gate.response(frame)
    took = time.perf_counter() - started
    events.session_closed(sid, "logout", 1.0)
    return took


def events_only(cmds: list[Frame], resps: list[Frame]) -> float:
    m = ProxyMetrics(CollectorRegistry(), process=False)
    Proxy(CONFIG, filters=m.observe(FilterChain()), events=m)
    m.session_opened(INFO.id, CONFIG.listeners[0], SessionStats())
    sid = INFO.id
    batches = [
        ([(c.tag, c.name) for c in bc if c.first],
         [(r.tag, r.name) for r in br if r.tag is not None and r.first])
        for bc, br in _batches(cmds, resps)
    ]  # fmt: skip
    started = time.perf_counter()
    for starts, ends in batches:
        for tag, name in starts:
            m.command_started(sid, tag, name)
        for tag, status in ends:
            m.command_completed(sid, tag, status)
    return time.perf_counter() - started


def _batches(
    cmds: list[Frame], resps: list[Frame], size: int = BATCH
) -> list[tuple[list[Frame], list[Frame]]]:
    """Commands and their responses in batches of ``size`` commands, as relay_bench's
    pipelined measurement sends them (all of a batch, then all the answers)."""
    out = []
    r = 0
    for i in range(0, len(cmds), size):
        batch = cmds[i : i + size]
        last = batch[-1].tag
        j = r
        while resps[j].tag != last:
            j += 1
        out.append((batch, resps[r : j + 1]))
        r = j + 1
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--commands", type=int, default=20000)
    parser.add_argument("--reps", type=int, default=15)
    args = parser.parse_args()
    n = args.commands
    print(f"{'workload':<12} {'off us/cmd':>10} {'on us/cmd':>10} {'added':>8} {'events':>8}")
    for kind in ("fetch-flags", "noop"):
        cmds, resps = workload(kind, n)
        off, on, hooks = [], [], []
        for _ in range(args.reps):
            off.append(relay_path(proxy_chain(False), cmds, resps) / n * 1e6)
            on.append(relay_path(proxy_chain(True), cmds, resps) / n * 1e6)
            hooks.append(events_only(cmds, resps) / n * 1e6)
        # the minimum: the machine is shared, and noise only ever adds
        a, b, h = min(off), min(on), min(hooks)
        print(f"{kind:<12} {a:>10.2f} {b:>10.2f} {b - a:>8.2f} {h:>8.2f}")


if __name__ == "__main__":
    main()
