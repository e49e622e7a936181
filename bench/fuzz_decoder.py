"""Long-running fuzzer for the IMAP framing decoder (run by hand).

    python bench/fuzz_decoder.py --seconds 60
    python bench/fuzz_decoder.py --iterations 5000 --seed 3
    python bench/fuzz_decoder.py --replay 12884901893 -v      # one failing case again

Each iteration builds a random stream (client commands or server responses, IMAP-like with
literals of every form, sometimes mutated, sometimes plain noise) from its own seed, feeds it
to a :class:`~imapproxy.wire.Decoder` in random pieces and answers the decoder's pauses the
way a server would (``+``, tagged OK/NO/BAD, STARTTLS).  It checks:

* ``next_event`` only returns events / NEED_DATA / PAUSED or raises ``ProtocolError``, and a
  fatal error is raised again on the next call;
* memory stays bounded: the unframed bytes never exceed max_line_bytes +
  inline_literal_bytes + max_held_bytes + the last piece fed (and, with ``--tracemalloc``,
  the traced peak while decoding stays within a few times that bound);
* the events follow the message grammar (literal chunks only inside a streamed literal,
  continuation parts marked ``first=False`` with the same tag / name, parts without a
  literal that are not final only as oversize pieces of a long server line);
* byte-exactness: for a run without errors, the frames' raw bytes and the chunks' data are
  exactly the input (minus what is still buffered and what ``start_tls`` handed back);
* chunk-boundary independence: the same stream fed whole gives the same events (literal
  chunks and the oversize pieces of one line merged), when the server's answers only
  come once all input is in.

Failures are printed with the iteration seed; ``--replay SEED`` runs that one case.
Exit status: 0 when nothing failed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sys
import time
import tracemalloc
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

try:
    import imapproxy  # noqa: F401
except ImportError:  # run from a checkout without installing: use the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imapproxy.wire import (
    Decoder,
    EndOfStream,
    Frame,
    Hold,
    Limits,
    LiteralChunk,
    ProtocolError,
    Side,
    Wait,
)

LIMIT_SETS = [
    Limits(
        max_line_bytes=256,
        inline_literal_bytes=128,
        max_literal_bytes_unauthenticated=512,
        max_literal_bytes=4096,
        max_held_bytes=256,
        max_nonsync_literal_minus=64,
    ),
    Limits(
        max_line_bytes=64,
        inline_literal_bytes=0,
        max_literal_bytes_unauthenticated=100,
        max_literal_bytes=100_000,
        max_held_bytes=64,
        max_nonsync_literal_minus=16,
    ),
    Limits(max_line_bytes=1024, inline_literal_bytes=16, max_held_bytes=2048),
]
# Consumed bytes are compacted away lazily (intake.COMPACT_AT); the bytearray may hold
# that much on top of the live bytes.
COMPACTION_SLACK = 256 * 1024

ANSWERS = ["continuation"] * 6 + ["OK", "NO", "BAD", "start_tls"]


# ======================================================================= generation


def _atom(rng: random.Random) -> bytes:
    return rng.choice([b"INBOX", b"Sent", b"x", b"\\Seen", b"1:*", b"NIL", b"BODY[]", b"42"])


def _literal(
    rng: random.Random, side: Side, limits: Limits, tiny: bool = False
) -> tuple[bytes, bytes]:
    """An announcement and its bytes."""
    r = rng.random()
    if tiny:
        size = rng.randint(0, 3)
    elif r < 0.55:
        size = rng.randint(0, 12)
    elif r < 0.8:
        size = rng.randint(0, limits.inline_literal_bytes + 20)
    elif r < 0.95:
        size = rng.randint(0, 2 * limits.max_literal_bytes_unauthenticated)
    else:
        size = rng.randint(0, min(limits.max_literal_bytes + 10, 120_000))
    binary = rng.random() < 0.2
    plus = side is Side.CLIENT and rng.random() < (0.95 if tiny else 0.5)
    digits = b"%d" % size
    if rng.random() < 0.03:
        digits = b"0" * rng.randint(1, 25) + digits  # leading zeros, maybe overlong
    ann = (b"~" if binary else b"") + b"{%s%s}" % (digits, b"+" if plus else b"")
    body = bytes(rng.getrandbits(8) for _ in range(min(size, 64))) + b"L" * max(0, size - 64)
    return ann, body


def _text(rng: random.Random, limits: Limits) -> bytes:
    n = rng.choice([0, 1, 5, 20, 60, limits.max_line_bytes - 10, limits.max_line_bytes + 2])
    return b" ".join(_atom(rng) for _ in range(max(1, n // 6)))[: max(n, 0)]


def _eol(rng: random.Random) -> bytes:
    return b"\r\n" if rng.random() < 0.9 else rng.choice([b"\n", b"\r\r\n", b"\r"])


def _with_literals(rng: random.Random, head: bytes, side: Side, limits: Limits) -> bytes:
    out = bytearray(head)
    # sometimes many tiny literals (a SEARCH with many OR terms, an ENVELOPE of literals)
    tiny = rng.random() < 0.15
    count = rng.randint(10, 80) if tiny else rng.choice([0, 1, 1, 2, 3, rng.randint(4, 40)])
    for _ in range(count):
        ann, body = _literal(rng, side, limits, tiny)
        out += b" " + _text(rng, limits)[:40] + b" " + ann + _eol(rng) + body
    out += b" " + _text(rng, limits)[:30] + _eol(rng)
    return bytes(out)


def client_message(rng: random.Random, limits: Limits, n: int) -> bytes:
    tag = b"a%d" % n if rng.random() < 0.95 else rng.choice([b"", b"*", b"+", b"a(b"])
    r = rng.random()
    if r < 0.25:
        name = rng.choice([b"NOOP", b"CAPABILITY", b"LOGOUT", b"CHECK", b"uid fetch"])
        return tag + b" " + name + b" " + _text(rng, limits) + _eol(rng)
    if r < 0.55:
        name = rng.choice([b"APPEND", b"LOGIN", b"SEARCH", b"SELECT", b"ID"])
        return _with_literals(rng, tag + b" " + name, Side.CLIENT, limits)
    if r < 0.65:
        ir = b" AGFsaWNlAHNlY3JldA==" if rng.random() < 0.3 else b""
        lines = b"".join(
            rng.choice([b"dGVzdA==", b"*", b"", b"abc{5}", b"a NOOP"]) + _eol(rng)
            for _ in range(rng.randint(0, 3))
        )
        return tag + b" AUTHENTICATE PLAIN" + ir + b"\r\n" + lines
    if r < 0.75:
        return tag + b" IDLE\r\n" + rng.choice([b"DONE\r\n", b"DONE {5}\r\n", b"", b"b NOOP\r\n"])
    if r < 0.82:
        junk = rng.choice([b"", b"b NOOP\r\n", b"\x16\x03\x01\x02\x00" + b"\x00" * 40])
        return tag + rng.choice([b" STARTTLS\r\n", b" COMPRESS DEFLATE\r\n"]) + junk
    if r < 0.92:
        return _text(rng, limits) + _eol(rng)
    return bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 80)))


def server_message(rng: random.Random, limits: Limits, n: int) -> bytes:
    r = rng.random()
    if r < 0.3:
        return _with_literals(rng, b"* %d FETCH (UID %d BODY[]" % (n, n), Side.SERVER, limits)
    if r < 0.4:
        return _with_literals(rng, b'* LIST () "/"', Side.SERVER, limits)
    if r < 0.6:
        status = rng.choice([b"OK", b"NO", b"BAD", b"BYE", b"PREAUTH"])
        tail = rng.choice([b"", b" {5}", b" [ALERT] {3+}", b" ~{2}"])
        tag = b"*" if rng.random() < 0.5 else b"a%d" % n
        return tag + b" " + status + b" " + _text(rng, limits)[:50] + tail + _eol(rng)
    if r < 0.7:
        return b"+ " + rng.choice([b"", b"idling", b"{5}", b"dGVzdA=="]) + _eol(rng)
    if r < 0.85:
        return b"* %d " % n + rng.choice([b"EXISTS", b"EXPUNGE", b"RECENT"]) + _eol(rng)
    if r < 0.93:
        return _text(rng, limits) + _eol(rng)
    return bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 80)))


def mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 5)):
        at = rng.randint(0, len(buf))
        op = rng.randrange(6)
        if op == 0:
            buf[at:at] = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 8)))
        elif op == 1:
            del buf[at : at + rng.randint(1, 30)]
        elif op == 2 and at < len(buf):
            buf[at] = rng.getrandbits(8)
        elif op == 3:
            buf[at:at] = buf[at : at + rng.randint(1, 300)] * rng.randint(1, 4)
        elif op == 4:
            buf[at:at] = rng.choice([b"{5}\r\n", b"{0+}\r\n", b"\r\n", b"~{3}\n", b"\x00"])
        else:
            del buf[at:]
    return bytes(buf)


@dataclass
class Case:
    seed: int
    side: Side
    limits: Limits
    authenticated: bool
    nonsync_limit: int | None
    data: bytes
    cuts: list[int]
    answers: list[str]
    eof: bool
    interactive: bool  # answer pauses as they happen (else only once all input is in)
    convert: bool = False  # client side: nonsync_as_sync, as the relay runs it

    def pieces(self) -> list[bytes]:
        cuts = sorted({c for c in self.cuts if 0 < c < len(self.data)} | {0, len(self.data)})
        return [self.data[a:b] for a, b in pairwise(cuts) if b > a]

    def describe(self) -> str:
        return (
            f"seed={self.seed} side={self.side.value} len={len(self.data)} "
            f"pieces={len(self.pieces())} interactive={self.interactive} eof={self.eof}"
        )


def make_case(seed: int) -> Case:
    rng = random.Random(seed)
    side = rng.choice([Side.CLIENT, Side.SERVER])
    limits = rng.choice(LIMIT_SETS)
    make = client_message if side is Side.CLIENT else server_message
    parts = [b"* OK hi\r\n"] if side is Side.SERVER and rng.random() < 0.8 else []
    parts += [make(rng, limits, n) for n in range(rng.randint(1, 12))]
    data = b"".join(parts)
    if rng.random() < 0.3:
        data = mutate(rng, data)
    if rng.random() < 0.05:
        data = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 600)))
    style = rng.randrange(5)
    if style == 0:
        cuts: list[int] = []
    elif style == 1 and len(data) <= 4000:
        cuts = list(range(len(data)))  # byte by byte
    elif style == 2:
        step = rng.choice([2, 3, 7, 64, 1000, 4096])
        cuts = list(range(0, len(data), step))
    else:
        cuts = [rng.randint(0, len(data)) for _ in range(rng.randint(1, 30))]
    interactive = rng.random() < 0.5
    convert = side is Side.CLIENT and rng.random() < 0.5
    return Case(
        seed=seed,
        side=side,
        limits=limits,
        authenticated=rng.random() < 0.5,
        nonsync_limit=rng.choice([None, None, limits.max_nonsync_literal_minus, 0]),
        data=data,
        cuts=cuts,
        answers=[rng.choice(ANSWERS) for _ in range(40)],
        eof=rng.random() < 0.7,
        interactive=interactive,
        convert=convert,
    )


# ======================================================================= checking


class Problem(Exception):
    """An invariant does not hold."""


@dataclass
class Outcome:
    events: list[object] = field(default_factory=list)  # merged chunks; errors as tuples
    out: bytearray = field(default_factory=bytearray)
    fed: int = 0
    errors: int = 0


def _require(cond: bool, what: str) -> None:
    if not cond:
        raise Problem(what)


def joined(piece: Frame, rest: Frame) -> Frame:
    """A long line's piece and the part after it, as one part."""
    return Frame(
        rest.side, rest.kind, piece.raw + rest.raw, rest.tag, rest.name, rest.number,
        piece.first, rest.final, rest.literal, rest.streamed, rest.sensitive,
        piece.nonsync or rest.nonsync, True,
    )  # fmt: skip


class Runner:
    def __init__(self, case: Case, pieces: Sequence[bytes], interactive: bool) -> None:
        self.case = case
        self.pieces = pieces
        self.interactive = interactive
        d = Decoder(case.side, case.limits)
        d.authenticated = case.authenticated
        if case.side is Side.CLIENT:
            d.max_nonsync_literal = case.nonsync_limit
            d.nonsync_as_sync = case.convert
        self.d = d
        self.o = Outcome()
        self.answers = list(case.answers)
        self.dead = False
        self.last_piece = 0
        self.open_part: Frame | None = None
        self.stream_left = 0
        self.tls_pending = False
        self.peak_buffer = 0

    def bound(self) -> int:
        lim = self.case.limits
        held = lim.max_held_bytes
        if self.d.waiting_for is Hold.NONSYNC_LITERAL:
            held += self.d._held_before  # a held {n+}: what came with it is the read's
        return lim.max_line_bytes + lim.inline_literal_bytes + held + self.last_piece

    def run(self) -> Outcome:
        for piece in self.pieces:
            if self.dead:
                break
            self.d.receive_data(piece)
            self.o.fed += len(piece)
            self.last_piece = len(piece)
            wait = self.drain()
            if self.interactive:
                self.answer_while_paused(wait)
        if not self.dead:
            self.answer_while_paused(self.drain())
        if not self.dead and self.case.eof:
            self.d.receive_data(b"")
            self.answer_while_paused(self.drain())
        if not self.o.errors and not self.dead:
            d = self.d
            rest = bytes(d._buf[d._pos :])
            if d.discarded_bytes:  # a refused {n+} message was consumed, not given out
                _require(
                    len(self.o.out) + d.discarded_bytes + len(rest) == self.o.fed,
                    "discarded bytes do not add up",
                )
            else:
                _require(
                    bytes(self.o.out) + rest == self.case.data[: self.o.fed],
                    "events are not byte-exact",
                )
        return self.o

    def answer_while_paused(self, wait: Wait | None) -> None:
        while wait is Wait.PAUSED and self.answers and not self.dead:
            answer = self.answers.pop(0)
            if answer == "continuation":
                self.continuation()
            elif answer == "start_tls":
                self.start_tls()
            else:
                self.completed(answer)
            wait = self.drain() if not self.dead else None

    def drain(self) -> Wait | None:
        d = self.d
        for _ in range(1_000_000):
            if self.dead:
                return None
            try:
                event = d.next_event()
            except ProtocolError as exc:
                self.failed(exc)
                continue
            except Exception as exc:  # any other exception is the finding
                raise Problem(f"next_event raised {type(exc).__name__}: {exc}") from exc
            if isinstance(event, Wait):
                _require(event in (Wait.NEED_DATA, Wait.PAUSED), f"bad wait {event!r}")
                _require(
                    d.buffered <= self.bound(),
                    f"buffered {d.buffered} bytes > bound {self.bound()}",
                )
                _require(
                    len(d._buf) <= self.bound() + COMPACTION_SLACK,
                    f"buffer of {len(d._buf)} bytes > bound {self.bound()} + compaction slack",
                )
                self.peak_buffer = max(self.peak_buffer, len(d._buf))
                return event
            self.event(event)
            if isinstance(event, EndOfStream):
                self.dead = True
                return None
        raise Problem("next_event made no progress")

    def failed(self, exc: ProtocolError) -> None:
        _require(isinstance(exc.reply, bytes) and exc.reply.endswith(b"\r\n"), "bad reply")
        self.o.errors += 1
        self.o.events.append(("error", exc.fatal, exc.limit, exc.reply))
        if exc.fatal:
            _require(exc.reply.startswith(b"* BYE "), f"fatal reply {exc.reply!r}")
            try:
                self.d.next_event()
            except ProtocolError as again:
                _require(again is exc, "a different error after a fatal one")
            else:
                raise Problem("fatal error not raised again")
            self.dead = True
        else:
            _require(b" NO " in exc.reply or b" BAD " in exc.reply, f"reply {exc.reply!r}")
            self.open_part = None
            self.stream_left = 0

    def event(self, event: object) -> None:
        events = self.o.events
        if isinstance(event, LiteralChunk):
            _require(self.stream_left > 0, "chunk outside a streamed literal")
            _require(event.remaining == self.stream_left - len(event.data), "bad remaining")
            _require(bool(event.data), "empty chunk")
            self.stream_left = event.remaining
            self.o.out += event.data
            # adjacent chunks are merged: their cut points depend on how the bytes arrived
            last = events[-1] if events else None
            if isinstance(last, list) and last[0] == "chunks":
                last[1] += event.data
                last[2] = event.remaining
            else:
                events.append(["chunks", bytearray(event.data), event.remaining])
            return
        events.append(event)
        if isinstance(event, EndOfStream):
            _require(event.pending == self.d.buffered, "EndOfStream.pending is wrong")
            return
        _require(isinstance(event, Frame), f"unexpected event type {type(event).__name__}")
        assert isinstance(event, Frame)
        _require(self.stream_left == 0, "frame inside a streamed literal")
        if self.open_part is not None:
            _require(not event.first, "continued part marked first")
            _require(
                (event.tag, event.name, event.kind)
                == (self.open_part.tag, self.open_part.name, self.open_part.kind),
                "continued part changed tag/name/kind",
            )
        else:
            _require(event.first, "new message not marked first")
        _require(not event.oversize or self.d.side is Side.SERVER, "oversize client part")
        if event.final:
            _require(event.literal is None and not event.streamed, "final part with literal")
            self.open_part = None
        elif event.literal is None:
            # a piece of a long server line: the line goes on in the next part
            _require(event.oversize, "non-final part without literal")
            _require(
                len(event.raw)
                <= self.case.limits.max_line_bytes + self.case.limits.inline_literal_bytes,
                "oversize piece larger than a line",
            )
            self.open_part = event
        else:
            self.open_part = event
            if (
                event.streamed
                and not event.literal.sync
                and self.d.waiting_for is not Hold.NONSYNC_LITERAL
            ):
                self.stream_left = event.literal.size
        self.o.out += event.raw
        # the pieces of a long line are merged: where it is cut depends on how bytes arrived
        last = events[-2] if len(events) >= 2 else None
        if isinstance(last, Frame) and last.oversize and not last.final and last.literal is None:
            events[-2:] = [joined(last, event)]

    def continuation(self) -> None:
        hold = self.d.waiting_for
        if self.d.continuation() and hold in (Hold.LITERAL, Hold.NONSYNC_LITERAL):
            part = self.open_part
            _require(part is not None and part.literal is not None, "hold without a part")
            assert part is not None and part.literal is not None
            if part.streamed:
                self.stream_left = part.literal.size

    def completed(self, status: str) -> None:
        d = self.d
        hold = d.waiting_for
        try:
            settled = d.completed(d._hold_tag or b"a1", status)
        except ProtocolError as exc:
            _require(hold is Hold.COMPRESS and status == "OK", "completed() raised")
            self.failed(exc)
            return
        if settled and hold in (Hold.LITERAL, Hold.NONSYNC_LITERAL):
            self.open_part = None  # the literal is not coming, or is discarded
        if settled and hold is Hold.STARTTLS and status == "OK":
            self.tls_pending = True

    def start_tls(self) -> None:
        if self.tls_pending:
            self.tls_pending = False
            self.o.out += self.d.start_tls()
            self.open_part = None


def check(case: Case, *, use_tracemalloc: bool = False) -> bytes:
    """Run one case; raise Problem on a broken invariant.  Returns a digest of the events."""
    pieces = case.pieces()
    if use_tracemalloc:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
    runner = Runner(case, pieces, case.interactive)
    outcome = runner.run()
    if use_tracemalloc:
        peak = tracemalloc.get_traced_memory()[1] - base
        # The outcome keeps every byte it was given (to check exactness); the decoder may
        # keep one bounded window plus the compaction slack on top of that.
        allowed = 4 * (len(case.data) + runner.bound() + COMPACTION_SLACK) + 256 * 1024
        _require(peak <= allowed, f"traced peak {peak} > {allowed}")
    # (Not with nonsync_as_sync: there what arrives with the {n+} announcement is exempt
    # from max_held_bytes and what arrives later is not, so a stream fed on while paused
    # fails at a point that depends on the cuts; the relay stops reading then.)
    if not case.interactive and len(pieces) > 1 and not case.convert:
        whole = Runner(case, [case.data], interactive=False).run()
        _require(whole.events == outcome.events, "events depend on how the input was split")
    digest = hashlib.sha256()
    for e in outcome.events:
        if isinstance(e, Frame):
            digest.update(repr(e).encode() + e.raw)
        elif isinstance(e, list):
            digest.update(b"chunks%d:%d:" % (len(e[1]), e[2]) + e[1])
        else:
            digest.update(repr(e).encode())
    return digest.digest()


# ======================================================================= driver


@dataclass
class FailureReport:
    seed: int
    problem: str
    case: str


@dataclass
class Result:
    iterations: int = 0
    elapsed: float = 0.0
    failures: list[FailureReport] = field(default_factory=list)
    digest: str = ""


def run(
    *,
    iterations: int | None = None,
    seconds: float | None = None,
    seed: int = 0,
    max_failures: int = 20,
    use_tracemalloc: bool = False,
    verbose: bool = False,
) -> Result:
    """Fuzz until ``iterations`` cases or ``seconds`` have run (whichever is given)."""
    if iterations is None and seconds is None:
        iterations = 1000
    result = Result()
    total = hashlib.sha256()
    start = time.perf_counter()
    deadline = start + seconds if seconds is not None else None
    if use_tracemalloc:
        tracemalloc.start()
    try:
        i = 0
        while True:
            if iterations is not None and i >= iterations:
                break
            if deadline is not None and time.perf_counter() >= deadline:
                break
            case_seed = (seed << 32) | i
            case = make_case(case_seed)
            try:
                total.update(check(case, use_tracemalloc=use_tracemalloc))
            except Problem as exc:
                result.failures.append(FailureReport(case_seed, str(exc), case.describe()))
                if verbose:
                    print(f"FAIL {case.describe()}: {exc}")
                if len(result.failures) >= max_failures:
                    i += 1
                    break
            i += 1
        result.iterations = i
    finally:
        if use_tracemalloc:
            tracemalloc.stop()
    result.elapsed = time.perf_counter() - start
    result.digest = total.hexdigest()
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--seconds", type=float, help="run for this long")
    group.add_argument("--iterations", type=int, help="run this many cases")
    group.add_argument("--replay", type=int, metavar="SEED", help="run one case by its seed")
    parser.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    parser.add_argument("--max-failures", type=int, default=20)
    parser.add_argument("--tracemalloc", action="store_true", help="also check traced peaks")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)

    if args.replay is not None:
        case = make_case(args.replay)
        print(case.describe())
        if args.verbose:
            print(f"data={case.data!r}")
            print(f"pieces={[len(p) for p in case.pieces()]} answers={case.answers[:10]}")
        try:
            check(case, use_tracemalloc=args.tracemalloc)
        except Problem as exc:
            print(f"FAIL: {exc}")
            return 1
        print("ok")
        return 0

    seconds = args.seconds
    if seconds is None and args.iterations is None:
        seconds = 10.0
    result = run(
        iterations=args.iterations,
        seconds=seconds,
        seed=args.seed,
        max_failures=args.max_failures,
        use_tracemalloc=args.tracemalloc,
        verbose=args.verbose,
    )
    rate = result.iterations / result.elapsed if result.elapsed else 0.0
    print(
        f"{result.iterations} iterations in {result.elapsed:.1f}s ({rate:.0f} iterations/s), "
        f"{len(result.failures)} failures, digest {result.digest[:16]}"
    )
    for f in result.failures:
        print(f"  FAIL {f.case}: {f.problem}")
        print(f"       reproduce: python bench/fuzz_decoder.py --replay {f.seed} -v")
    return 1 if result.failures else 0


if __name__ == "__main__":
    sys.exit(main())
