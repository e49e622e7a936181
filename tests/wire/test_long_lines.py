"""Server lines longer than max_line_bytes (issue 8 §1), literal lengths with leading
zeros and the number of literals in one command before login (issue 8 §6).

A long server line is given out in oversize pieces; the pieces and parts of a message,
with the chunks between them, are exactly the bytes received, a literal announced at the
end of the long line is still found, and the decoder never holds much more than one line.
"""

from __future__ import annotations

import random

import pytest

from imapproxy.wire import (
    NEED_DATA,
    PAUSED,
    Conversation,
    Decoder,
    Frame,
    FrameKind,
    LimitExceeded,
    Limits,
    LiteralChunk,
    Phase,
    ProtocolError,
    Side,
)
from tests.wire.helpers import (
    bytewise,
    drain,
    feed,
    fixed,
    frames,
    merge_chunks,
    merge_pieces,
    message_bytes,
    reassemble,
    replay,
    split_at,
    whole,
)

C = Side.CLIENT
S = Side.SERVER
SMALL = Limits(max_line_bytes=256, inline_literal_bytes=128)
KIB = 1024


def server(limits: Limits = SMALL) -> Decoder:
    d = Decoder(S, limits)
    d.receive_data(b"* OK ready\r\n")
    assert [f.name for f in frames(drain(d)[0])] == ["OK"]
    return d


def search_line(count: int) -> bytes:
    return b"* SEARCH " + b" ".join(b"%d" % i for i in range(1, count + 1)) + b"\r\n"


def envelope(addresses: int) -> bytes:
    to = b"".join(b'(NIL NIL "user%05d" "example.org")' % i for i in range(addresses))
    return b'ENVELOPE ("Mon, 1 Jan 2024 00:00:00 +0000" "hi" NIL NIL NIL (' + to + b") NIL NIL)"


CHUNKINGS = {
    "whole": whole,
    "bytewise": bytewise,
    "7": fixed(7),
    "100": fixed(100),
    "random": lambda b: split_at(b, random.Random(len(b)).sample(range(len(b) + 1), 40)),
}


def check_message(events: list, data: bytes, limits: Limits = SMALL) -> list[Frame]:
    """The events are exactly ``data``, one message, pieces no larger than a line."""
    assert reassemble(events) == data
    assert message_bytes(events) == [data]
    parts = frames(events)
    assert parts[0].first and all(not p.first for p in parts[1:])
    assert parts[-1].final and all(not p.final for p in parts[:-1])
    for p in parts:
        assert len(p.raw) <= limits.max_line_bytes + limits.inline_literal_bytes
        assert (p.tag, p.name, p.number, p.kind) == (
            parts[0].tag,
            parts[0].name,
            parts[0].number,
            parts[0].kind,
        )
    return parts


# ---------------------------------------------------------------- one long line


@pytest.mark.parametrize("chunking", sorted(CHUNKINGS))
def test_long_search_line_goes_out_in_oversize_pieces(chunking: str) -> None:
    line = search_line(400)
    assert len(line) > 4 * SMALL.max_line_bytes
    d = server()
    events, wait = feed(d, line, CHUNKINGS[chunking])
    assert wait is NEED_DATA and d.buffered == 0
    parts = check_message(events, line)
    assert len(parts) > 4
    assert all(p.oversize and p.name == "SEARCH" and p.kind is FrameKind.DATA for p in parts)
    assert all(p.literal is None for p in parts)


def test_pieces_do_not_depend_on_how_the_line_arrived() -> None:
    line = b"* 1 FETCH (" + envelope(40) + b")\r\n"
    reference = merge_pieces(feed(server(), line)[0])
    assert len(reference) == 1 and reference[0].raw == line  # type: ignore[union-attr]
    pieces = [p.raw for p in frames(feed(server(), line)[0])]
    for chunker in CHUNKINGS.values():
        events = feed(server(), line, chunker)[0]
        assert [p.raw for p in frames(events)] == pieces
        assert merge_pieces(events) == reference


@pytest.mark.parametrize("chunking", sorted(CHUNKINGS))
@pytest.mark.parametrize("announcement", [b"{5}", b"~{5}", b"{0005}", b"{" + b"0" * 40 + b"5}"])
def test_literal_announced_at_the_end_of_a_long_line_is_found(
    chunking: str, announcement: bytes
) -> None:
    data = (
        b"* 7 FETCH (" + envelope(30) + b" BODY[] " + announcement + b"\r\n"
        b"a\r\n)\r" + b")\r\n"  # the literal holds a line end and a stray ")"
    )
    d = server()
    events, wait = feed(d, data + b"* 8 EXISTS\r\n", CHUNKINGS[chunking])
    assert wait is NEED_DATA
    fetch = [e for e in events if not (isinstance(e, Frame) and e.name == "EXISTS")]
    parts = check_message(fetch, data)
    # (one message: the literal's CRLF and ")" did not end it; inline or streamed,
    # depending on how large the part had grown)
    ends = [p for p in parts if p.oversize and (p.final or p.literal is not None)]
    assert len(ends) == 1  # the part that ends the long line is marked too
    assert parts[0].number == 7
    assert [f.name for f in frames(events)][-1] == "EXISTS"


@pytest.mark.parametrize("chunking", ["whole", "bytewise", "100"])
def test_streamed_literal_after_a_long_line(chunking: str) -> None:
    body = bytes(range(256)) * 4  # larger than inline_literal_bytes: streamed
    data = b"* 3 FETCH (" + envelope(30) + b" BODY[] {%d}\r\n" % len(body) + body + b")\r\n"
    d = server()
    events, _ = feed(d, data, CHUNKINGS[chunking])
    assert reassemble(events) == data
    parts = frames(events)
    announcing = [p for p in parts if p.literal is not None]
    assert len(announcing) == 1 and announcing[0].streamed and announcing[0].oversize
    assert announcing[0].literal.size == len(body)  # type: ignore[union-attr]
    chunks = [e for e in merge_chunks(events) if isinstance(e, LiteralChunk)]
    assert [c.data for c in chunks] == [body]
    assert parts[-1].raw == b")\r\n" and not parts[-1].oversize  # a short line again


def test_line_cut_at_every_position_with_a_literal_at_its_end() -> None:
    # The announcement ends where the line ends; whatever two pieces the bytes come in,
    # the same frames come out and the literal is found.
    limits = Limits(max_line_bytes=64, inline_literal_bytes=32)
    data = b"* 2 FETCH (BODY[1] " + b"x" * 150 + b" BODY[2] {0000000000012}\r\nhello\r\nworld)\r\n"
    reference = merge_pieces(merge_chunks(feed(server(limits), data)[0]))
    # the part with the long line, the literal (streamed: the part is already large), ")"
    assert [type(e) for e in reference] == [Frame, LiteralChunk, Frame]
    assert reference[1].data == b"hello\r\nworld"[:12]  # type: ignore[union-attr]
    for cut in range(len(data) + 1):
        events = feed(server(limits), data, lambda b, c=cut: split_at(b, [c]))[0]
        check_message(events, data, limits)
        assert merge_pieces(merge_chunks(events)) == reference, cut


def test_a_cut_never_splits_a_literal_announcement() -> None:
    # Leading zeros put the "{" far before the line end: where the next cut would fall in
    # the middle of the digits, the piece ends before the "{" instead.
    limits = Limits(max_line_bytes=64, inline_literal_bytes=32)
    for pad in range(0, 140, 3):
        for zeros in (0, 10, 40):
            ann = b"{" + b"0" * zeros + b"3}"
            data = b"* 1 FETCH (X " + b"y" * pad + b" BODY[] " + ann + b"\r\nabc)\r\n"
            for chunker in (whole, bytewise):
                events = feed(server(limits), data, chunker)[0]
                check_message(events, data, limits)


def test_brace_followed_by_more_digits_than_a_line_is_fatal() -> None:
    limits = Limits(max_line_bytes=64)
    d = server(limits)
    with pytest.raises(LimitExceeded) as info:
        feed(d, b"* 1 FETCH (X {" + b"0" * 200)
    assert info.value.fatal and info.value.limit == "max_literal_bytes"


def test_long_tagged_status_and_greeting() -> None:
    d = Decoder(S, SMALL)
    greeting = b"* OK [ALERT] " + b"w" * 1000 + b"\r\n"
    status = b"a1 OK " + b"v" * 1000 + b" {5}\r\n"  # resp-text: no literal
    events, wait = feed(d, greeting + status + b"* 1 EXISTS\r\n", fixed(64))
    assert wait is NEED_DATA
    messages = message_bytes(events)
    assert messages == [greeting, status, b"* 1 EXISTS\r\n"]
    kinds = [(f.kind, f.tag, f.name, f.oversize) for f in frames(events) if f.first]
    assert kinds == [
        (FrameKind.GREETING, None, "OK", True),
        (FrameKind.STATUS, b"a1", "OK", True),
        (FrameKind.DATA, None, "EXISTS", False),
    ]


def test_long_continuation_request() -> None:
    d = server()
    data = b"+ " + b"c" * 1000 + b"\r\n"
    events, _ = feed(d, data)
    parts = check_message(events, data)
    assert all(p.kind is FrameKind.CONTINUATION and p.oversize for p in parts)


@pytest.mark.parametrize("eol", [b"\r\n", b""])
def test_memory_stays_bounded_for_a_10_mb_line(eol: bytes) -> None:
    limits = Limits()  # 64 KiB lines
    d = server(limits)
    piece = (b"1234567 " * 8 * KIB)[: 64 * KIB]
    d.receive_data(b"* SEARCH")
    total = len(b"* SEARCH")
    largest = 0
    for _ in range(160):  # 10 MiB
        d.receive_data(piece)
        total += len(piece)
        events, wait = drain(d)
        assert wait is NEED_DATA
        assert d.buffered <= limits.max_line_bytes, d.buffered
        assert len(d._buf) <= 2 * limits.max_line_bytes + 256 * KIB  # compaction slack
        largest = max([largest, *(len(f.raw) for f in frames(events))])
    assert largest <= limits.max_line_bytes
    d.receive_data(eol)
    events, _ = drain(d)
    if eol:
        assert frames(events)[-1].final and d.buffered == 0
    else:
        assert d.in_message and d.buffered <= limits.max_line_bytes


def test_client_lines_keep_their_limit() -> None:
    d = Decoder(C, SMALL)
    with pytest.raises(LimitExceeded) as info:
        feed(d, b"a SEARCH " + b"1 " * 200 + b"\r\n")
    assert info.value.fatal and info.value.limit == "max_line_bytes"


# ------------------------------------------------------------ the conversation


def test_conversation_tracks_completions_with_long_text_and_skips_long_capabilities() -> None:
    caps = b"* CAPABILITY IMAP4rev1 LITERAL+ " + b" ".join(b"X-%d" % i for i in range(100))
    long_ok = b"a OK [CAPABILITY IMAP4rev1 IDLE] " + b"t" * 600 + b"\r\n"
    script = [
        (S, b"* OK [CAPABILITY IMAP4rev1 LITERAL+] ready\r\n"),
        (C, b"c CAPABILITY\r\n"),
        (S, caps + b"\r\nc OK done\r\n"),
        (C, b"a LOGIN alice secret\r\n"),
        (S, long_ok),
        (C, b"s SELECT INBOX\r\n"),
        (S, search_line(300) + b"s OK [READ-WRITE] " + b"u" * 700 + b"\r\n"),
    ]
    for chunker in (whole, bytewise, fixed(50)):
        result = replay(script, limits=SMALL, chunker=chunker, eof=False)
        conv = result.conversation
        assert conv.pending == {}
        assert conv.phase is Phase.SELECTED and conv.selected == b"INBOX"
        # the oversize * CAPABILITY and OK [CAPABILITY] were not parsed: the greeting's
        # list stands
        assert conv.capabilities == frozenset({"IMAP4REV1", "LITERAL+"})
        assert any(isinstance(e, Frame) and e.oversize for e in result.server)


def test_conversation_long_line_then_literal_keeps_both_sides_in_step() -> None:
    fetch = b"* 1 FETCH (" + envelope(20) + b" BODY[] {12}\r\nhello world!)\r\n"
    script = [
        (S, b"* PREAUTH ready\r\n"),
        (C, b"f FETCH 1 (ENVELOPE BODY[])\r\n"),
        (S, fetch + b"f OK done\r\n"),
        (C, b"g NOOP\r\n"),
        (S, b"g OK\r\n"),
    ]
    result = replay(script, limits=SMALL, chunker=fixed(9))
    assert message_bytes(result.server[:-1]) == [  # type: ignore[arg-type]
        b"* PREAUTH ready\r\n",
        fetch,
        b"f OK done\r\n",
        b"g OK\r\n",
    ]
    assert result.conversation.pending == {}


# ---------------------------------------------------- literals before login


def literal_login(count: int) -> bytes:
    # LOGIN's arguments as {1+} literals, as many as asked for (a server would refuse the
    # extra ones; the point is the proxy's round trips before that)
    return b"a LOGIN" + b" {1+}\r\nx" * count + b"\r\n"


@pytest.mark.parametrize("converting", [False, True])
def test_literals_before_login_are_bounded(converting: bool) -> None:
    limits = Limits(max_literals_unauthenticated=4)
    ok = Decoder(C, limits)
    ok.nonsync_as_sync = converting

    def run(d: Decoder, data: bytes) -> list:
        d.receive_data(data)
        events = []
        while True:
            got, wait = drain(d)
            events += got
            if wait is not PAUSED:
                return events
            d.continuation()

    assert reassemble(run(ok, literal_login(4))) == literal_login(4)
    bad = Decoder(C, limits)
    bad.nonsync_as_sync = converting
    with pytest.raises(LimitExceeded) as info:
        run(bad, literal_login(5))
    err = info.value
    assert err.fatal and err.limit == "max_literals_unauthenticated"
    assert err.reply.startswith(b"* BYE ") and b"literals" in err.reply


def test_literals_once_authenticated_are_not_counted() -> None:
    d = Decoder(C, Limits(max_literals_unauthenticated=4))
    d.authenticated = True
    data = b"a SEARCH" + b" OR {1+}\r\nx" * 50 + b" ALL\r\n"
    events, _ = feed(d, data)
    assert reassemble(events) == data


def test_no_literals_before_login_refuses_a_sync_literal_in_step() -> None:
    d = Decoder(C, Limits(max_literals_unauthenticated=0))
    d.receive_data(b"a LOGIN {5}\r\nb NOOP\r\n")
    with pytest.raises(ProtocolError) as info:
        d.next_event()
    assert not info.value.fatal
    assert info.value.reply.startswith(b"a NO [LIMIT]")
    assert [f.name for f in frames(drain(d)[0])] == ["NOOP"]


def test_conversation_counts_literals_per_command_and_stops_at_login() -> None:
    conv = Conversation(Limits(max_literals_unauthenticated=3))
    conv.receive_server(b"* OK [CAPABILITY IMAP4rev1 LITERAL+] hi\r\n")
    assert frames([conv.next_server_event()])
    # three literals in each of two commands: fine (the count is per command)
    conv.receive_client(b'i ID ({1+}\r\na {1+}\r\nb "c" {1+}\r\nd)\r\n' * 2)
    got = []
    while (e := conv.next_client_event()) is not NEED_DATA:
        got.append(e)
    assert [f.name for f in frames(got) if f.first] == ["ID", "ID"]
