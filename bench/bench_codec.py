"""Codec throughput benchmark (run by hand): ``python bench/bench_codec.py``.

Feeds recorded-style streams through the wire codec in 64 KiB reads, as a relay would, and
prints a table of MB/s and frames/s (median of several runs, one core).  Streams:

* ``fetch-1MB``   server: ``* n FETCH (UID n BODY[] {1048576}`` + body + ``)``: streamed literals
* ``fetch-4KB``   server: the same with 4 KiB bodies (held inline in the frame)
* ``small-cmds``  client: a run of small pipelined commands (UID FETCH / STORE / NOOP ...)
* ``small-resp``  server: small untagged and tagged responses (* n EXISTS, * n FETCH (FLAGS))
* ``parse-small`` frame + parse of the small commands into typed structures
* ``conv-noop``   both directions through a ``Conversation``, as the relay drives it:
                  batches of 100 pipelined NOOPs, then their 100 tagged OKs
* ``conv-flags``  the same with ``UID FETCH n (FLAGS)`` and ``* n FETCH`` + OK answers

Targets (issue #2): >= 1 GB/s of literal payload, >= 150,000 small frames/s per core.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable

from imapproxy.wire import (
    NEED_DATA,
    PAUSED,
    Conversation,
    Decoder,
    Frame,
    LiteralChunk,
    Side,
    parse_frame,
)

READ = 64 * 1024


def fetch_stream(count: int, size: int) -> bytes:
    body = (b"X" * 76 + b"\r\n") * (size // 78) + b"Y" * (size % 78)
    assert len(body) == size
    parts = [b"* OK [CAPABILITY IMAP4rev1 LITERAL+] ready\r\n"]
    for i in range(1, count + 1):
        parts.append(b"* %d FETCH (UID %d BODY[] {%d}\r\n" % (i, i + 1000, size))
        parts.append(body)
        parts.append(b")\r\n")
    parts.append(b"a1 OK FETCH completed\r\n")
    return b"".join(parts)


def small_commands(count: int) -> bytes:
    templates = [
        b"a%d UID FETCH 1:* (FLAGS UID)\r\n",
        b"a%d NOOP\r\n",
        b"a%d UID STORE 4827 +FLAGS (\\Seen)\r\n",
        b'a%d SELECT "INBOX"\r\n',
        b"a%d UID SEARCH UNSEEN SINCE 1-Feb-2024\r\n",
        b"a%d STATUS INBOX (MESSAGES UNSEEN UIDNEXT)\r\n",
    ]
    return b"".join(templates[i % len(templates)] % i for i in range(count))


def small_responses(count: int) -> bytes:
    templates = [
        b"* %d EXISTS\r\n",
        b"* %d FETCH (FLAGS (\\Seen \\Answered) UID 48213)\r\n",
        b"a%d OK UID STORE completed\r\n",
        b"* %d EXPUNGE\r\n",
        b'* LIST (\\HasNoChildren) "/" "Archive/%d"\r\n',
    ]
    return b"".join(templates[i % len(templates)] % i for i in range(count))


def long_lines(count: int, numbers: int) -> bytes:
    """``* SEARCH`` results of ``numbers`` message numbers each (20,000 give a 109 KB line,
    relayed in oversize pieces)."""
    line = b"* SEARCH " + b" ".join(b"%d" % i for i in range(1, numbers + 1)) + b"\r\n"
    return b"".join(line + b"a%d OK SEARCH completed\r\n" % i for i in range(count))


def run_decoder(side: Side, data: bytes, parse: bool = False) -> tuple[int, int]:
    """Feed data in READ-sized pieces; return (frames, literal bytes)."""
    dec = Decoder(side)
    dec.authenticated = True  # as after LOGIN: large literals allowed
    frames = 0
    literal = 0
    mv = memoryview(data)
    for start in range(0, len(data), READ):
        dec.receive_data(bytes(mv[start : start + READ]))
        while True:
            ev = dec.next_event()
            if ev is NEED_DATA:
                break
            if ev is PAUSED:
                raise RuntimeError("unexpected pause")
            if type(ev) is Frame:
                frames += 1
                if parse and ev.first:
                    parse_frame(ev)
            elif type(ev) is LiteralChunk:
                literal += len(ev.data)
    return frames, literal


def run_conversation(command: bytes, answer: bytes, batches: int) -> tuple[int, int]:
    """Both directions of pipelined batches of 100 through one Conversation (frame
    tracking, pending tags, completions); returns (commands, frames)."""
    conv = Conversation(nonsync_as_sync=True)  # as the relay sets it up
    conv.receive_server(b"* OK [CAPABILITY IMAP4rev1 LITERAL+] ready\r\n")
    while conv.next_server_event() is not NEED_DATA:
        pass
    commands = b"".join(b"Z%d %s\r\n" % (i, command) for i in range(100))
    answers = b"".join(answer.replace(b"{tag}", b"Z%d" % i).replace(b"{n}", b"%d" % (i + 1))
                       for i in range(100))  # fmt: skip
    frames = 0
    for _ in range(batches):
        conv.receive_client(commands)
        while conv.next_client_event() is not NEED_DATA:
            frames += 1
        conv.receive_server(answers)
        while conv.next_server_event() is not NEED_DATA:
            frames += 1
    return batches * 100, frames


def measure(fn: Callable[[], tuple[int, int]], repeat: int) -> tuple[float, int, int]:
    times = []
    result = (0, 0)
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result[0], result[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--scale", type=float, default=1.0, help="stream size multiplier")
    args = ap.parse_args()
    s = args.scale
    n1m, n4k = int(200 * s), int(20_000 * s)
    # (name, side, stream, parse, literal payload bytes in the stream)
    cases: list[tuple[str, Side, bytes, bool, int]] = [
        ("fetch-1MB", Side.SERVER, fetch_stream(n1m, 1024 * 1024), False, n1m * 1024 * 1024),
        ("fetch-4KB", Side.SERVER, fetch_stream(n4k, 4096), False, n4k * 4096),
        ("small-cmds", Side.CLIENT, small_commands(int(300_000 * s)), False, 0),
        ("small-resp", Side.SERVER, small_responses(int(300_000 * s)), False, 0),
        ("parse-small", Side.CLIENT, small_commands(int(100_000 * s)), True, 0),
        ("search-109K", Side.SERVER, long_lines(int(400 * s), 20_000), False, 0),
    ]
    print(
        f"{'stream':<12} {'bytes':>12} {'frames':>9} {'median s':>9} "
        f"{'MB/s':>9} {'frames/s':>11} {'literal MB/s':>13}"
    )
    for name, side, data, parse, payload in cases:
        secs, frames, _ = measure(functools.partial(run_decoder, side, data, parse), args.repeat)
        print(
            f"{name:<12} {len(data):>12,} {frames:>9,} {secs:>9.3f} "
            f"{len(data) / secs / 1e6:>9.0f} {frames / secs:>11,.0f} "
            f"{payload / secs / 1e6 if payload else float('nan'):>13.0f}"
        )
    print(f"\n{'conversation':<12} {'commands':>12} {'frames':>9} {'median s':>9} "
          f"{'cmds/s':>9} {'us/command':>11}")  # fmt: skip
    conv_cases = [
        ("conv-noop", b"NOOP", b"{tag} OK NOOP completed (0.001 + 0.000 secs).\r\n"),
        (
            "conv-flags",
            b"UID FETCH 1 (FLAGS)",
            b"* {n} FETCH (UID {n} FLAGS (\\Seen))\r\n{tag} OK Fetch completed (0.001 secs).\r\n",
        ),
    ]
    for name, command, answer in conv_cases:
        run = functools.partial(run_conversation, command, answer, int(3000 * s))
        secs, commands, frames = measure(run, args.repeat)
        print(
            f"{name:<12} {commands:>12,} {frames:>9,} {secs:>9.3f} "
            f"{commands / secs:>9,.0f} {secs / commands * 1e6:>11.2f}"
        )


if __name__ == "__main__":
    main()
