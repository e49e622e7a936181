"""Shared helpers for the framing tests (Decoder + Conversation).

Everything here is deliberately small and deterministic: feed bytes in given chunks, drain
events until the decoder needs data or is paused, replay scripted two-sided conversations,
and normalise event lists so that runs with different chunkings can be compared.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise

from imapproxy.wire import (
    Conversation,
    Decoder,
    EndOfStream,
    Frame,
    Limits,
    LiteralChunk,
    ProtocolError,
    Side,
    Wait,
)
from imapproxy.wire.events import Event

Chunker = Callable[[bytes], list[bytes]]
"""Splits one burst of bytes into the pieces that are fed to a decoder one at a time."""


@dataclass(frozen=True, slots=True)
class Failure:
    """A ProtocolError seen while draining, recorded in the event stream for comparison."""

    side: Side
    fatal: bool
    limit: str | None
    reply: bytes
    error_type: str

    @classmethod
    def of(cls, exc: ProtocolError) -> Failure:
        return cls(exc.side, exc.fatal, exc.limit, exc.reply, type(exc).__name__)


Item = Event | Failure


# ------------------------------------------------------------------ chunkers


def whole(data: bytes) -> list[bytes]:
    return [data] if data else []


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def fixed(size: int) -> Chunker:
    def chunker(data: bytes) -> list[bytes]:
        return [data[i : i + size] for i in range(0, len(data), size)]

    return chunker


def split_at(data: bytes, points: Iterable[int]) -> list[bytes]:
    """Split ``data`` at the given offsets (taken modulo len+1, duplicates ignored)."""
    cuts = sorted({p % (len(data) + 1) for p in points} | {0, len(data)})
    return [data[a:b] for a, b in pairwise(cuts) if b > a]


# ------------------------------------------------------------------ draining


def drain(decoder: Decoder) -> tuple[list[Event], Wait | None]:
    """Collect events until NEED_DATA / PAUSED (returned) or EndOfStream (then None)."""
    events: list[Event] = []
    while True:
        event = decoder.next_event()
        if isinstance(event, Wait):
            return events, event
        events.append(event)
        if isinstance(event, EndOfStream):
            return events, None


def feed(
    decoder: Decoder, data: bytes, chunker: Chunker = whole, *, eof: bool = False
) -> tuple[list[Event], Wait | None]:
    """Feed ``data`` in the chunks ``chunker`` makes, draining after each chunk.

    Returns all events and the last wait state (None once EndOfStream was seen).
    """
    events: list[Event] = []
    wait: Wait | None = None
    for piece in chunker(data):
        decoder.receive_data(piece)
        got, wait = drain(decoder)
        events += got
    if eof:
        decoder.receive_data(b"")
        got, wait = drain(decoder)
        events += got
    elif not data:
        got, wait = drain(decoder)
        events += got
    return events, wait


def frames(events: Iterable[object]) -> list[Frame]:
    return [e for e in events if isinstance(e, Frame)]


def reassemble(events: Iterable[object]) -> bytes:
    """The bytes the events carry, in order: every Frame's raw and every chunk's data."""
    out = bytearray()
    for e in events:
        if isinstance(e, Frame):
            out += e.raw
        elif isinstance(e, LiteralChunk):
            out += e.data
    return bytes(out)


def merge_chunks(events: Sequence[Item]) -> list[Item]:
    """Merge runs of adjacent LiteralChunks into one.

    How a streamed literal is cut into LiteralChunk events depends on how the bytes arrived
    (each receive_data may end a chunk), so runs with different chunkings are only comparable
    after merging: the merged chunk keeps the concatenated data and the last ``remaining``.
    """
    out: list[Item] = []
    run: list[LiteralChunk] = []

    def flush() -> None:
        if run:
            data = b"".join(c.data for c in run)
            out.append(LiteralChunk(run[0].side, data, run[-1].remaining))
            run.clear()

    for e in events:
        if isinstance(e, LiteralChunk):
            run.append(e)
        else:
            flush()
            out.append(e)
    flush()
    return out


def merge_pieces(events: Sequence[Item]) -> list[Item]:
    """Merge the oversize pieces of a long server line into the part that ends the line.

    Where a long line is cut depends on how its bytes arrived, so (as with merge_chunks)
    runs with different chunkings are only comparable after merging.
    """
    out: list[Item] = []
    for e in events:
        last = out[-1] if out else None
        if (
            isinstance(e, Frame)
            and isinstance(last, Frame)
            and last.oversize
            and not last.final
            and last.literal is None
        ):
            out[-1] = Frame(
                e.side, e.kind, last.raw + e.raw, e.tag, e.name, e.number, last.first,
                e.final, e.literal, e.streamed, e.sensitive, last.nonsync or e.nonsync, True,
            )  # fmt: skip
        else:
            out.append(e)
    return out


def message_bytes(events: Sequence[Event]) -> list[bytes]:
    """Group parts and chunks into whole messages (a message ends with a final Frame)."""
    messages: list[bytes] = []
    current = bytearray()
    for e in events:
        if isinstance(e, Frame):
            current += e.raw
            if e.final:
                messages.append(bytes(current))
                current = bytearray()
        elif isinstance(e, LiteralChunk):
            current += e.data
    if current:
        messages.append(bytes(current))
    return messages


# ------------------------------------------------------------------ conversations

Script = Sequence[tuple[Side, bytes]]


@dataclass(slots=True)
class Replay:
    """The outcome of replaying a script through a Conversation."""

    conversation: Conversation
    client: list[Item] = field(default_factory=list)
    server: list[Item] = field(default_factory=list)
    client_input: bytearray = field(default_factory=bytearray)
    server_input: bytearray = field(default_factory=bytearray)

    def events(self, side: Side) -> list[Item]:
        return self.client if side is Side.CLIENT else self.server

    def normalised(self, side: Side) -> list[Item]:
        return merge_pieces(merge_chunks(self.events(side)))


class _Pump:
    def __init__(self, replay: Replay) -> None:
        self.replay = replay
        self.conv = replay.conversation
        self.dead: set[Side] = set()

    def _step(self, side: Side) -> Event | Wait | None:
        """One event from ``side``: None when that side is finished or failed."""
        if side in self.dead:
            return None
        conv = self.conv
        sink = self.replay.events(side)
        try:
            event = conv.next_client_event() if side is Side.CLIENT else conv.next_server_event()
        except ProtocolError as exc:
            sink.append(Failure.of(exc))
            if exc.fatal:
                self.dead.add(side)
                if exc.side is not side:
                    # e.g. COMPRESS accepted: the server's OK raised the client's error
                    self.dead.add(exc.side)
            return None
        if isinstance(event, Wait):
            return event
        sink.append(event)
        if isinstance(event, EndOfStream):
            self.dead.add(side)
            return None
        return event

    def drain_client(self) -> None:
        while True:
            got = self._step(Side.CLIENT)
            if got is None:
                if Side.CLIENT in self.dead:
                    return
                continue  # a recoverable error: keep reading
            if isinstance(got, Wait):
                return

    def drain_server(self) -> None:
        """Server events one at a time; after each one the client gets its turn, since a
        server answer (``+``, a tagged reply) may release held client bytes."""
        while True:
            got = self._step(Side.SERVER)
            self.drain_client()
            if got is None:
                if Side.SERVER in self.dead:
                    return
                continue
            if isinstance(got, Wait):
                return


def replay(
    script: Script,
    *,
    limits: Limits | None = None,
    chunker: Chunker | Sequence[Chunker] = whole,
    eof: bool = True,
) -> Replay:
    """Replay ``[(side, bytes), ...]`` through a fresh Conversation.

    Each step's bytes go to that side's decoder in the pieces ``chunker`` makes (a sequence
    of chunkers gives one per step); after every piece the events are drained, the server's
    first, then the client's.  With ``eof`` both sides are closed at the end, so each event
    list ends in an EndOfStream (unless that side failed).
    """
    conv = Conversation(limits) if limits is not None else Conversation()
    result = Replay(conv)
    pump = _Pump(result)
    for index, (side, data) in enumerate(script):
        split = chunker if callable(chunker) else chunker[index]
        (result.client_input if side is Side.CLIENT else result.server_input).extend(data)
        for piece in split(data):
            if side in pump.dead:
                break
            if side is Side.CLIENT:
                conv.receive_client(piece)
                pump.drain_client()
            else:
                conv.receive_server(piece)
                pump.drain_server()
    if eof:
        for side in (Side.SERVER, Side.CLIENT):
            if side in pump.dead:
                continue
            if side is Side.CLIENT:
                conv.receive_client(b"")
            else:
                conv.receive_server(b"")
        pump.drain_server()
        pump.drain_client()
    return result


def script_bytes(script: Script, side: Side) -> bytes:
    return b"".join(data for s, data in script if s is side)
