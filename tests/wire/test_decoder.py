"""Example-based tests of the framing decoder (:class:`imapproxy.wire.Decoder`).

The decoder only frames: it decides where each message (and each part of a message) ends,
what kind it is, its tag and name, and where literals are.  Every test that produces frames
also checks byte-exactness: the frames' ``raw`` plus the literal chunks' ``data``, in order,
are exactly the bytes that went in.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from imapproxy.wire import (
    NEED_DATA,
    PAUSED,
    Decoder,
    EndOfStream,
    Frame,
    FrameKind,
    Hold,
    LimitExceeded,
    Limits,
    LiteralChunk,
    LiteralSpec,
    ProtocolError,
    Side,
)
from imapproxy.wire.events import Event
from tests.wire.helpers import bytewise, drain, feed, fixed, frames, reassemble

CLIENT = Side.CLIENT
SERVER = Side.SERVER
GREETING = b"* OK IMAP4rev1 ready\r\n"


def client(limits: Limits | None = None) -> Decoder:
    return Decoder(CLIENT, limits) if limits is not None else Decoder(CLIENT)


def server(limits: Limits | None = None, *, greeted: bool = True) -> Decoder:
    """A server-side decoder that (by default) has already seen the greeting."""
    d = Decoder(SERVER, limits) if limits is not None else Decoder(SERVER)
    if greeted:
        events, wait = feed(d, GREETING)
        assert wait is NEED_DATA
        assert [f.kind for f in frames(events)] == [FrameKind.GREETING]
    return d


def only_frame(decoder: Decoder, data: bytes) -> Frame:
    """Feed ``data`` (one complete message) and return the single final frame it makes."""
    events, wait = feed(decoder, data)
    assert wait is NEED_DATA
    assert len(events) == 1, events
    frame = events[0]
    assert isinstance(frame, Frame)
    assert frame.final and frame.first
    assert frame.raw == data
    return frame


# =================================================================== 1. basic framing

CLIENT_COMMANDS: list[tuple[bytes, bytes | None, str, bool]] = [
    # (line, tag, name, sensitive)
    (b"a NOOP\r\n", b"a", "NOOP", False),
    (b"a1 noop\r\n", b"a1", "NOOP", False),
    (b"A003 Capability\r\n", b"A003", "CAPABILITY", False),
    (b"x SELECT INBOX\r\n", b"x", "SELECT", False),
    (b'x select "INBOX" (CONDSTORE)\r\n', b"x", "SELECT", False),
    (b"a UID FETCH 1:* (FLAGS)\r\n", b"a", "UID FETCH", False),
    (b"a uid fetch 1:* (FLAGS)\r\n", b"a", "UID FETCH", False),
    (b"a UID store 1 +FLAGS (\\Seen)\r\n", b"a", "UID STORE", False),
    (b"a UID\r\n", b"a", "UID", False),
    (b"a LOGIN alice secret\r\n", b"a", "LOGIN", True),
    (b"a login alice secret\r\n", b"a", "LOGIN", True),
    # malformed heads have no name: a "]" in the tag (Dovecot refuses it), a name glued to
    # a special; the relay answers those itself
    (b"tag.with]bracket FETCH 1 BODY[]\r\n", b"tag.with]bracket", "", False),
    (b"a LOGOUT\n", b"a", "LOGOUT", False),  # bare LF
    (b"a APPEND{3+}\r\nabc\r\n", b"a", "", False),
    (b"lonely\r\n", b"lonely", "", False),  # no name: the parser will refuse it
    (b"\r\n", None, "", False),  # empty line
    (b"* OK nonsense from a client\r\n", b"*", "", False),
]


@pytest.mark.parametrize(("line", "tag", "name", "sensitive"), CLIENT_COMMANDS)
def test_client_command_is_framed_with_tag_and_upper_case_name(
    line: bytes, tag: bytes | None, name: str, sensitive: bool
) -> None:
    frame = only_frame(client(), line)
    assert frame.side is CLIENT
    assert frame.kind is FrameKind.COMMAND
    assert frame.tag == tag
    assert frame.name == name
    assert frame.sensitive is sensitive
    assert frame.number is None
    assert frame.literal is None
    assert not frame.streamed


GREETINGS: list[tuple[bytes, str]] = [
    (b"* OK IMAP4rev1 Service Ready\r\n", "OK"),
    (b"* OK [CAPABILITY IMAP4rev1 LITERAL+] hi\r\n", "OK"),
    (b"* PREAUTH IMAP4rev1 logged in as alice\r\n", "PREAUTH"),
    (b"* BYE too busy\r\n", "BYE"),
    (b"* ok lower case\r\n", "OK"),
]


@pytest.mark.parametrize(("line", "name"), GREETINGS)
def test_first_server_status_is_the_greeting(line: bytes, name: str) -> None:
    frame = only_frame(server(greeted=False), line)
    assert frame.kind is FrameKind.GREETING
    assert frame.tag is None
    assert frame.name == name


def test_only_the_first_server_response_is_a_greeting() -> None:
    d = server(greeted=False)
    events, _ = feed(d, b"* OK hi\r\n* OK [ALERT] again\r\n")
    assert [f.kind for f in frames(events)] == [FrameKind.GREETING, FrameKind.STATUS]


SERVER_RESPONSES: list[tuple[bytes, FrameKind, bytes | None, str, int | None]] = [
    # (line, kind, tag, name, number)
    (b"* 23 EXISTS\r\n", FrameKind.DATA, None, "EXISTS", 23),
    (b"* 0 RECENT\r\n", FrameKind.DATA, None, "RECENT", 0),
    (b"* 5 expunge\r\n", FrameKind.DATA, None, "EXPUNGE", 5),
    (b"* 12 FETCH (FLAGS (\\Seen))\r\n", FrameKind.DATA, None, "FETCH", 12),
    (b"* 4294967295 FETCH (UID 1)\r\n", FrameKind.DATA, None, "FETCH", 4294967295),
    (b"* FLAGS (\\Answered \\Seen)\r\n", FrameKind.DATA, None, "FLAGS", None),
    (b"* CAPABILITY IMAP4rev1 IDLE\r\n", FrameKind.DATA, None, "CAPABILITY", None),
    (b'* LIST (\\HasNoChildren) "/" INBOX\r\n', FrameKind.DATA, None, "LIST", None),
    (b"* SEARCH 2 3 6\r\n", FrameKind.DATA, None, "SEARCH", None),
    (b"* SEARCH\r\n", FrameKind.DATA, None, "SEARCH", None),
    (b"* ENABLED CONDSTORE\r\n", FrameKind.DATA, None, "ENABLED", None),
    (b"* OK [UIDVALIDITY 3857529045] UIDs valid\r\n", FrameKind.STATUS, None, "OK", None),
    (b"* NO [ALERT] disk full\r\n", FrameKind.STATUS, None, "NO", None),
    (b"* BAD internal\r\n", FrameKind.STATUS, None, "BAD", None),
    (b"* BYE logging out\r\n", FrameKind.STATUS, None, "BYE", None),
    (b"a001 OK LOGIN completed\r\n", FrameKind.STATUS, b"a001", "OK", None),
    (b"a002 NO [TRYCREATE] no such mailbox\r\n", FrameKind.STATUS, b"a002", "NO", None),
    (b"a003 BAD syntax\r\n", FrameKind.STATUS, b"a003", "BAD", None),
    (b"a003 ok\r\n", FrameKind.STATUS, b"a003", "OK", None),
    (b"+ Ready for literal data\r\n", FrameKind.CONTINUATION, None, "+", None),
    (b"+ \r\n", FrameKind.CONTINUATION, None, "+", None),
    (b"+\r\n", FrameKind.CONTINUATION, None, "+", None),
    (b"+ dGVzdA==\r\n", FrameKind.CONTINUATION, None, "+", None),
]


@pytest.mark.parametrize(("line", "kind", "tag", "name", "number"), SERVER_RESPONSES)
def test_server_response_is_framed_with_kind_tag_name_and_number(
    line: bytes, kind: FrameKind, tag: bytes | None, name: str, number: int | None
) -> None:
    frame = only_frame(server(), line)
    assert frame.side is SERVER
    assert frame.kind is kind
    assert frame.tag == tag
    assert frame.name == name
    assert frame.number == number
    assert not frame.sensitive


def test_several_messages_in_one_read_come_out_one_frame_each() -> None:
    data = b"a NOOP\r\nb CAPABILITY\r\nc UID FETCH 1 (UID)\r\nd LOGOUT\r\n"
    events, wait = feed(client(), data)
    assert wait is NEED_DATA
    assert [f.name for f in frames(events)] == ["NOOP", "CAPABILITY", "UID FETCH", "LOGOUT"]
    assert [f.tag for f in frames(events)] == [b"a", b"b", b"c", b"d"]
    assert reassemble(events) == data


def test_partial_line_waits_for_its_end() -> None:
    d = client()
    events, wait = feed(d, b"a NOO")
    assert (events, wait) == ([], NEED_DATA)
    assert d.buffered == 5
    events, wait = feed(d, b"P\r")
    assert (events, wait) == ([], NEED_DATA)
    events, wait = feed(d, b"\n")
    assert [f.raw for f in frames(events)] == [b"a NOOP\r\n"]
    assert d.buffered == 0


def test_frame_repr_never_contains_the_bytes() -> None:
    frame = only_frame(client(), b"a LOGIN alice hunter2\r\n")
    assert "hunter2" not in repr(frame)
    assert "alice" not in repr(frame)


# =================================================================== 2. literals

NONSYNC_CLIENT_MESSAGES: list[tuple[bytes, str]] = [
    (b"a LOGIN {5+}\r\nalice {7+}\r\nhunter2\r\n", "LOGIN"),
    (b"a APPEND INBOX {3+}\r\nabc {4+}\r\ndefg\r\n", "APPEND"),  # MULTIAPPEND
    (b"a APPEND INBOX (\\Seen) ~{4+}\r\n\x00\x01\r\n\r\n", "APPEND"),  # literal8
    (b"a APPEND INBOX {0+}\r\n\r\n", "APPEND"),
    (b"a SEARCH CHARSET UTF-8 (OR SUBJECT {3+}\r\nabc FROM {2+}\r\nxy)\r\n", "SEARCH"),
    (
        b'a APPEND Drafts CATENATE (URL "/INBOX;UID=20/;section=1" TEXT {7+}\r\n'
        b'\r\nhi\r\n. URL "/INBOX;UID=21" TEXT ~{3+}\r\n\x00\xff\x01)\r\n',
        "APPEND",
    ),
    # a literal whose contents look like commands and CRLFs: still one message
    (b"a APPEND INBOX {24+}\r\nb LOGOUT\r\nc NOOP\r\n{5}\r\n\r\n", "APPEND"),
    # a literal of "}" and "{1}": only the announcement at the line end counts
    (b"a APPEND INBOX {3+}\r\n{1}\r\n", "APPEND"),
]


@pytest.mark.parametrize(("data", "name"), NONSYNC_CLIENT_MESSAGES)
@pytest.mark.parametrize("chunking", ["whole", "bytewise"])
def test_client_nonsync_literals_stay_in_one_frame(data: bytes, name: str, chunking: str) -> None:
    events, wait = feed(client(), data, bytewise if chunking == "bytewise" else fixed(1 << 20))
    assert wait is NEED_DATA
    assert len(events) == 1
    frame = events[0]
    assert isinstance(frame, Frame)
    assert (frame.kind, frame.name, frame.first, frame.final) == (
        FrameKind.COMMAND,
        name,
        True,
        True,
    )
    assert frame.raw == data


SYNC_ANNOUNCEMENTS: list[tuple[bytes, LiteralSpec]] = [
    (b"{5}", LiteralSpec(5, sync=True)),
    (b"~{5}", LiteralSpec(5, sync=True, binary=True)),
    (b"{0}", LiteralSpec(0, sync=True)),
    (b"{00005}", LiteralSpec(5, sync=True)),
]


@pytest.mark.parametrize(("announcement", "spec"), SYNC_ANNOUNCEMENTS)
def test_client_sync_literal_ends_the_part_and_pauses_until_continuation(
    announcement: bytes, spec: LiteralSpec
) -> None:
    d = client()
    head = b"a APPEND INBOX " + announcement + b"\r\n"
    events, wait = feed(d, head)
    assert wait is PAUSED
    assert len(events) == 1
    part = events[0]
    assert isinstance(part, Frame)
    assert part.raw == head
    assert (part.first, part.final, part.streamed) == (True, False, False)
    assert part.literal == spec
    assert part.waits_for_continuation
    assert d.waiting_for is Hold.LITERAL
    assert d.waiting_tag == b"a"
    assert d.in_message
    # still paused however often asked
    assert d.next_event() is PAUSED

    assert d.continuation() is True
    assert d.waiting_for is None
    body = b"x" * spec.size
    events2, wait2 = feed(d, body + b" extra\r\n")
    assert wait2 is NEED_DATA
    assert len(events2) == 1
    rest = events2[0]
    assert isinstance(rest, Frame)
    assert rest.raw == body + b" extra\r\n"
    assert (rest.first, rest.final, rest.literal) == (False, True, None)
    assert (rest.tag, rest.name, rest.kind) == (b"a", "APPEND", FrameKind.COMMAND)
    assert reassemble(events + events2) == head + body + b" extra\r\n"
    assert not d.in_message


def test_client_sync_literal_announcement_also_counts_with_a_bare_lf() -> None:
    d = client()
    events, wait = feed(d, b"a APPEND INBOX {2}\n")
    assert wait is PAUSED
    assert frames(events)[0].literal == LiteralSpec(2, sync=True)


def test_client_two_sync_literals_in_one_command_pause_twice() -> None:
    d = client()
    all_events: list[Event] = []
    ev, wait = feed(d, b"a LOGIN {5}\r\n")
    all_events += ev
    assert wait is PAUSED
    assert d.continuation()
    ev, wait = feed(d, b"alice {7}\r\n")
    all_events += ev
    assert wait is PAUSED
    assert d.continuation()
    ev, wait = feed(d, b"hunter2\r\n")
    all_events += ev
    assert wait is NEED_DATA
    parts = frames(all_events)
    assert [(p.first, p.final) for p in parts] == [(True, False), (False, False), (False, True)]
    assert all(p.name == "LOGIN" and p.tag == b"a" and p.sensitive for p in parts)
    assert reassemble(all_events) == b"a LOGIN {5}\r\nalice {7}\r\nhunter2\r\n"


def test_client_sync_literal_inside_a_parenthesised_list() -> None:
    d = client()
    ev, wait = feed(d, b"a SEARCH (OR SUBJECT {3}\r\n")
    assert wait is PAUSED
    assert d.continuation()
    ev2, wait = feed(d, b"abc FROM x)\r\n")
    assert wait is NEED_DATA
    assert [f.raw for f in frames(ev + ev2)] == [
        b"a SEARCH (OR SUBJECT {3}\r\n",
        b"abc FROM x)\r\n",
    ]


def test_client_sync_and_nonsync_literals_mixed_in_one_command() -> None:
    d = client()
    ev, wait = feed(d, b"a APPEND INBOX {3+}\r\nabc {4}\r\n")
    assert wait is PAUSED
    assert [f.literal for f in frames(ev)] == [LiteralSpec(4, sync=True)]
    assert d.continuation()
    ev2, wait = feed(d, b"defg ~{2+}\r\n\x00\x00\r\n")
    assert wait is NEED_DATA
    assert [f.raw for f in frames(ev + ev2)] == [
        b"a APPEND INBOX {3+}\r\nabc {4}\r\n",
        b"defg ~{2+}\r\n\x00\x00\r\n",
    ]


SERVER_LITERAL_RESPONSES: list[tuple[bytes, str, int | None]] = [
    (b"* 1 FETCH (BODY[] {5}\r\nhello)\r\n", "FETCH", 1),
    (b"* 1 FETCH (UID 7 BODY[] {0}\r\n)\r\n", "FETCH", 1),
    (b"* 2 FETCH (BINARY[] ~{4}\r\n\x00\r\n\xff)\r\n", "FETCH", 2),
    (b"* 3 FETCH (BINARY[1] ~{3}\r\n\x00\x00\x00 UID 9)\r\n", "FETCH", 3),
    (b'* LIST () "/" {5}\r\nfo\r\no\r\n', "LIST", None),
    (b'* LSUB (\\Noselect) "." {3}\r\na b\r\n', "LSUB", None),
    (b"* STATUS {5}\r\nblurb (MESSAGES 3)\r\n", "STATUS", None),
    (
        b"* 4 FETCH (ENVELOPE (NIL {12}\r\nHello\r\nWorld (({4}\r\nJohn NIL "
        b'"j" "x.org")) NIL NIL NIL NIL NIL NIL NIL))\r\n',
        "FETCH",
        4,
    ),
    (
        b"* 5 FETCH (BODY[HEADER] {4}\r\nab\r\n BODY[TEXT] {2}\r\nxy BODY[1] {3}\r\n)\r\n)\r\n",
        "FETCH",
        5,
    ),
    # the literal's bytes look like server responses and announcements
    (b"* 6 FETCH (BODY[] {28}\r\na OK done\r\n* BYE\r\n+ go {3}\r\n)\r\n", "FETCH", 6),
]


@pytest.mark.parametrize(("data", "name", "number"), SERVER_LITERAL_RESPONSES)
@pytest.mark.parametrize("chunking", ["whole", "bytewise"])
def test_server_literals_stay_inside_one_data_frame(
    data: bytes, name: str, number: int | None, chunking: str
) -> None:
    d = server()
    events, wait = feed(d, data, bytewise if chunking == "bytewise" else fixed(1 << 20))
    assert wait is NEED_DATA
    assert len(events) == 1
    frame = events[0]
    assert isinstance(frame, Frame)
    assert frame.kind is FrameKind.DATA
    assert (frame.name, frame.number, frame.final, frame.first) == (name, number, True, True)
    assert frame.raw == data


def test_server_literals_never_pause_the_server_decoder() -> None:
    d = server()
    events, wait = feed(d, b"* 1 FETCH (BODY[] {5}\r\n")
    assert (events, wait) == ([], NEED_DATA)
    assert d.waiting_for is None


# ============================================================ 3. lines that are not literals

NOT_LITERAL_SERVER_LINES: list[tuple[bytes, FrameKind]] = [
    (b"* OK [ALERT] {5}\r\n", FrameKind.STATUS),
    (b"* OK {5}\r\n", FrameKind.STATUS),
    (b"* NO {5}\r\n", FrameKind.STATUS),
    (b"* BAD ~{5}\r\n", FrameKind.STATUS),
    (b"* BYE {5}\r\n", FrameKind.STATUS),
    (b"a OK done {5}\r\n", FrameKind.STATUS),
    (b"a NO {5+}\r\n", FrameKind.STATUS),
    (b"a BAD {0}\r\n", FrameKind.STATUS),
    (b"+ {5}\r\n", FrameKind.CONTINUATION),
    (b"+ Ready for {5}\r\n", FrameKind.CONTINUATION),
    (b"+{5}\r\n", FrameKind.CONTINUATION),
]


@pytest.mark.parametrize(("line", "kind"), NOT_LITERAL_SERVER_LINES)
def test_server_status_and_continuation_text_ending_in_braces_is_not_a_literal(
    line: bytes, kind: FrameKind
) -> None:
    d = server()
    events, wait = feed(d, line + b"* 1 EXISTS\r\n")
    assert wait is NEED_DATA
    assert [(f.kind, f.raw) for f in frames(events)] == [
        (kind, line),
        (FrameKind.DATA, b"* 1 EXISTS\r\n"),
    ]


@pytest.mark.parametrize("line", [b"* OK hello {5}\r\n", b"* PREAUTH {5}\r\n", b"* BYE {3}\r\n"])
def test_greeting_ending_in_braces_is_not_a_literal(line: bytes) -> None:
    d = server(greeted=False)
    events, _ = feed(d, line + b"* 1 EXISTS\r\n")
    assert [f.raw for f in frames(events)] == [line, b"* 1 EXISTS\r\n"]


@pytest.mark.parametrize("line", [b"dGVzdA=={5}\r\n", b"{5}\r\n", b"~{3+}\r\n", b"*{0}\r\n"])
def test_authenticate_data_line_ending_in_braces_is_not_a_literal(line: bytes) -> None:
    d = client()
    feed(d, b"a AUTHENTICATE PLAIN\r\n")
    assert d.continuation()
    events, wait = feed(d, line)
    assert wait is PAUSED  # the next SASL line waits for the next "+"
    assert [(f.kind, f.raw, f.final) for f in frames(events)] == [(FrameKind.AUTH_DATA, line, True)]


@pytest.mark.parametrize("line", [b"DONE {5}\r\n", b"{5}\r\n", b"DONE ~{5+}\r\n"])
def test_idle_done_line_ending_in_braces_is_not_a_literal(line: bytes) -> None:
    d = client()
    feed(d, b"a IDLE\r\n")
    assert d.continuation()
    events, wait = feed(d, line + b"b NOOP\r\n")
    assert wait is NEED_DATA
    assert [(f.kind, f.raw) for f in frames(events)] == [
        (FrameKind.IDLE_DONE, line),
        (FrameKind.COMMAND, b"b NOOP\r\n"),
    ]


# =================================================================== 4. streaming

SMALL_INLINE = Limits(inline_literal_bytes=16)


def _check_streamed(events: list[Event], side: Side, spec: LiteralSpec, head: bytes) -> None:
    first = events[0]
    assert isinstance(first, Frame)
    assert first.raw == head
    assert (first.first, first.final, first.streamed, first.literal) == (True, False, True, spec)
    chunks = [e for e in events if isinstance(e, LiteralChunk)]
    assert chunks, "a streamed literal comes as LiteralChunk events"
    assert all(c.side is side for c in chunks)
    assert sum(len(c.data) for c in chunks) == spec.size
    assert chunks[-1].remaining == 0
    assert all(c.remaining > 0 for c in chunks[:-1])
    remaining = spec.size
    for c in chunks:
        remaining -= len(c.data)
        assert c.remaining == remaining
    last = events[-1]
    assert isinstance(last, Frame)
    assert (last.first, last.final) == (False, True)
    assert (last.tag, last.name) == (first.tag, first.name)


@pytest.mark.parametrize("chunk", [1, 7, 1 << 20])
def test_server_literal_larger_than_inline_limit_is_streamed(chunk: int) -> None:
    d = server(SMALL_INLINE)
    head = b"* 1 FETCH (BODY[] {40}\r\n"
    data = head + bytes(range(40)) + b" UID 3)\r\n"
    events, wait = feed(d, data, fixed(chunk))
    assert wait is NEED_DATA
    _check_streamed(events, SERVER, LiteralSpec(40, sync=False), head)
    assert events[-1].raw == b" UID 3)\r\n"  # type: ignore[union-attr]
    assert reassemble(events) == data


@pytest.mark.parametrize("chunk", [1, 5, 1 << 20])
def test_client_nonsync_literal_larger_than_inline_limit_is_streamed(chunk: int) -> None:
    d = client(SMALL_INLINE)
    head = b"a APPEND INBOX ~{17+}\r\n"
    data = head + b"\x00" * 17 + b"\r\n"
    events, wait = feed(d, data, fixed(chunk))
    assert wait is NEED_DATA
    _check_streamed(
        events, CLIENT, LiteralSpec(17, sync=False, binary=True, nonsync_marker=True), head
    )
    assert reassemble(events) == data


def test_client_sync_literal_larger_than_inline_limit_is_streamed_after_continuation() -> None:
    d = client(SMALL_INLINE)
    head = b"a APPEND INBOX {20}\r\n"
    events, wait = feed(d, head)
    assert wait is PAUSED
    assert frames(events)[0].streamed
    assert d.continuation()
    more, wait = feed(d, b"0123456789abcdefghij)\r\n", bytewise)
    assert wait is NEED_DATA
    _check_streamed(events + more, CLIENT, LiteralSpec(20, sync=True), head)
    assert reassemble(events + more) == head + b"0123456789abcdefghij)\r\n"


INLINE_64 = Limits(max_line_bytes=256, inline_literal_bytes=64)


@pytest.mark.parametrize(
    ("sizes", "streamed"),
    [
        # Only cases that do not depend on whether the part's line bytes count towards the
        # inline limit as well as its literal bytes (see limits.py / decoder.py).
        ((3,), [False]),  # small: kept inside the frame
        ((0,), [False]),
        ((65,), [True]),  # larger than the inline limit: always streamed
        ((1000,), [True]),
        ((3, 3, 3), [False, False, False]),
        ((40, 40), [False, True]),  # the second would push the part past the limit
        ((3, 65, 3), [False, True, False]),
    ],
)
def test_literals_are_inline_or_streamed_by_the_inline_limit(
    sizes: tuple[int, ...], streamed: list[bool]
) -> None:
    d = server(INLINE_64)
    d.authenticated = True
    data = (
        b"* 1 FETCH ("
        + b"".join(b"B[%d] {%d}\r\n" % (i, n) + b"z" * n + b" " for i, n in enumerate(sizes))
        + b"UID 1)\r\n"
    )
    events, wait = feed(d, data)
    assert wait is NEED_DATA
    assert reassemble(events) == data
    got = [f.streamed for f in frames(events) if not f.final]
    assert got == [s for s in streamed if s]
    if not any(streamed):
        assert len(events) == 1
    for part in frames(events):
        assert len(part.raw) <= INLINE_64.inline_literal_bytes + INLINE_64.max_line_bytes


def test_streamed_literal_followed_by_another_message_in_the_same_read() -> None:
    d = server(SMALL_INLINE)
    data = b"* 1 FETCH (BODY[] {20}\r\n" + b"a" * 20 + b")\r\n* 2 EXISTS\r\na OK done\r\n"
    events, wait = feed(d, data)
    assert wait is NEED_DATA
    fr = frames(events)
    assert [f.name for f in fr] == ["FETCH", "FETCH", "EXISTS", "OK"]
    assert [f.first for f in fr] == [True, False, True, True]
    assert reassemble(events) == data


def test_streamed_literal_with_several_reads_before_draining() -> None:
    d = server(SMALL_INLINE)
    head = b"* 1 FETCH (BODY[] {40}\r\n"
    feed(d, head)
    d.receive_data(b"a" * 20)
    d.receive_data(b"b" * 20 + b")\r\n* 2 EXISTS\r\n")
    assert d.buffered == 40 + len(b")\r\n* 2 EXISTS\r\n")
    events, wait = drain(d)
    assert wait is NEED_DATA
    chunks = [e for e in events if isinstance(e, LiteralChunk)]
    assert sum(len(c.data) for c in chunks) == 40
    assert chunks[-1].remaining == 0
    assert events[: len(chunks)] == chunks  # the chunks come first, then the frames
    assert [f.name for f in frames(events)] == ["FETCH", "EXISTS"]
    assert reassemble(events) == b"a" * 20 + b"b" * 20 + b")\r\n* 2 EXISTS\r\n"
    assert d.buffered == 0


def test_read_spanning_the_end_of_a_streamed_literal_and_the_next_message() -> None:
    data = b"* 1 FETCH (BODY[] {20}\r\n" + b"c" * 20 + b")\r\n* 2 FETCH (BODY[] {17}\r\n"
    data += b"d" * 17 + b")\r\na OK\r\n"
    for cut in range(1, len(data)):
        fresh = server(SMALL_INLINE)
        events, wait = feed(fresh, data[:cut])
        more, wait = feed(fresh, data[cut:])
        assert wait is NEED_DATA
        assert reassemble(events + more) == data, cut
        assert [f.name for f in frames(events + more)] == ["FETCH"] * 4 + ["OK"], cut
        assert fresh.buffered == 0


def test_end_of_stream_counts_streamed_bytes_not_yet_given_out() -> None:
    d = server(SMALL_INLINE)
    feed(d, b"* 1 FETCH (BODY[] {40}\r\n")
    d.receive_data(b"x" * 30)
    d.receive_data(b"")
    events, wait = drain(d)
    assert wait is None
    chunk, eos = events
    assert isinstance(chunk, LiteralChunk) and chunk.remaining == 10
    assert eos == EndOfStream(SERVER, clean=False, pending=0)


def test_part_cap_streams_an_empty_literal_without_chunks() -> None:
    # Once a part would grow past one line + the inline limit, even a {0} literal ends the
    # part as "streamed".  Documented here: such a part is followed directly by the next
    # part (first=False) -- there is no LiteralChunk at all for a zero-length literal.
    limits = Limits(max_line_bytes=64, inline_literal_bytes=16)
    d = server(limits)
    data = b"* 1 FETCH (X" + b" " * 40 + b"{0}\r\n" + b"y" * 40 + b"{0}\r\n)\r\n"
    events, wait = feed(d, data)
    assert wait is NEED_DATA
    assert reassemble(events) == data
    parts = frames(events)
    assert len(parts) == len(events)  # no chunks
    assert [p.first for p in parts] == [True] + [False] * (len(parts) - 1)
    assert parts[-1].final
    assert any(p.streamed and p.literal == LiteralSpec(0, sync=False) for p in parts)


def _fetch_stream(size: int, chunk: int) -> Iterator[bytes]:
    """A server FETCH of ``size`` literal bytes in ``chunk``-sized reads, generated lazily."""
    head = b"* 1 FETCH (UID 42 BODY[] {%d}\r\n" % size
    block = (b"0123456789abcde\n" * (chunk // 16 + 1))[:chunk]
    tail = b" FLAGS (\\Seen))\r\na1 OK FETCH done\r\n"
    pending = head
    left = size
    while left:
        take = min(chunk - len(pending), left)
        yield pending + block[:take]
        pending = b""
        left -= take
    yield tail


def test_huge_server_fetch_body_streams_with_bounded_buffer() -> None:
    size = 200 * 1024 * 1024
    chunk = 64 * 1024
    limits = Limits()
    d = server(limits)
    d.authenticated = True
    bound = limits.max_line_bytes + limits.inline_literal_bytes + chunk
    literal_bytes = 0
    chunk_events = 0
    parts: list[Frame] = []
    last_remaining = -1
    fed = 0
    out = 0
    for piece in _fetch_stream(size, chunk):
        d.receive_data(piece)
        fed += len(piece)
        assert len(d._buf) <= bound
        assert d.buffered <= bound
        while True:
            event = d.next_event()
            assert len(d._buf) <= bound
            assert d.buffered <= bound
            if event is NEED_DATA:
                break
            if isinstance(event, LiteralChunk):
                literal_bytes += len(event.data)
                chunk_events += 1
                last_remaining = event.remaining
                out += len(event.data)
            else:
                assert isinstance(event, Frame)
                parts.append(event)
                out += len(event.raw)
    assert literal_bytes == size
    assert last_remaining == 0
    assert chunk_events >= size // chunk
    assert [(p.name, p.first, p.final, p.streamed) for p in parts] == [
        ("FETCH", True, False, True),
        ("FETCH", False, True, False),
        ("OK", True, True, False),
    ]
    assert parts[0].literal == LiteralSpec(size, sync=False)
    assert out == fed  # every byte came out exactly once


# ======================================================= 5. the synchronising-literal dance


def test_client_bytes_sent_early_are_held_until_the_server_answers() -> None:
    d = client()
    events, wait = feed(d, b"a APPEND INBOX {5}\r\nhello\r\nb NOOP\r\n")
    assert wait is PAUSED
    assert [f.raw for f in frames(events)] == [b"a APPEND INBOX {5}\r\n"]
    assert d.buffered == len(b"hello\r\nb NOOP\r\n")
    assert d.next_event() is PAUSED  # asking again does not frame the held bytes


def test_continuation_makes_held_bytes_the_literal() -> None:
    d = client()
    head, _ = feed(d, b"a APPEND INBOX {5}\r\nhello\r\nb NOOP\r\n")
    assert d.continuation() is True
    events, wait = drain(d)
    assert wait is NEED_DATA
    assert [(f.tag, f.name, f.first, f.raw) for f in frames(events)] == [
        (b"a", "APPEND", False, b"hello\r\n"),
        (b"b", "NOOP", True, b"b NOOP\r\n"),
    ]
    assert reassemble(head + events) == b"a APPEND INBOX {5}\r\nhello\r\nb NOOP\r\n"


@pytest.mark.parametrize("status", ["NO", "BAD"])
def test_tagged_refusal_makes_held_bytes_a_new_command(status: str) -> None:
    d = client()
    feed(d, b"a APPEND INBOX {5}\r\nb NOOP\r\n")
    assert d.completed(b"a", status) is True
    assert d.waiting_for is None
    assert not d.in_message
    events, wait = drain(d)
    assert wait is NEED_DATA
    assert [(f.kind, f.tag, f.name, f.first) for f in frames(events)] == [
        (FrameKind.COMMAND, b"b", "NOOP", True)
    ]


def test_refused_literal_bytes_that_look_like_a_command_become_that_command() -> None:
    # The client (non-compliantly) sent its literal early; the server refused it, so the
    # server reads those bytes as a command: so must the proxy.
    d = client()
    feed(d, b"a APPEND INBOX {13}\r\nb DELETE x\r\n")
    d.completed(b"a", "NO")
    events, _ = drain(d)
    assert [(f.tag, f.name) for f in frames(events)] == [(b"b", "DELETE")]


def test_completion_of_another_tag_does_not_release_a_literal_hold() -> None:
    d = client()
    events, wait = feed(d, b"a NOOP\r\nb APPEND x {5}\r\nhello\r\n")
    assert [f.tag for f in frames(events)] == [b"a", b"b"]
    assert wait is PAUSED
    assert d.completed(b"a", "OK") is False
    assert d.next_event() is PAUSED
    assert d.waiting_tag == b"b"
    assert d.continuation() is True
    events, wait = drain(d)
    assert [(f.tag, f.first, f.raw) for f in frames(events)] == [(b"b", False, b"hello\r\n")]


def test_stray_continuation_changes_nothing() -> None:
    d = client()
    assert d.continuation() is False
    events, _wait = feed(d, b"a NOOP\r\n")
    assert [f.name for f in frames(events)] == ["NOOP"]
    assert d.continuation() is False
    assert d.completed(b"a", "OK") is False


def test_literal_bytes_arriving_after_the_continuation_in_pieces() -> None:
    d = client()
    feed(d, b"a APPEND INBOX {10}\r\n")
    d.continuation()
    events, wait = feed(d, b"0123456789\r\n", bytewise)
    assert wait is NEED_DATA
    assert [f.raw for f in frames(events)] == [b"0123456789\r\n"]


# ================================================================= 6. AUTHENTICATE


def test_authenticate_without_initial_response() -> None:
    d = client()
    events, wait = feed(d, b"a AUTHENTICATE PLAIN\r\n")
    assert wait is PAUSED
    assert d.waiting_for is Hold.AUTHENTICATE
    assert d.waiting_tag == b"a"
    (cmd,) = frames(events)
    assert (cmd.name, cmd.sensitive, cmd.final) == ("AUTHENTICATE", True, True)

    assert d.continuation() is True  # server: "+ "
    events, wait = feed(d, b"AGFsaWNlAGh1bnRlcjI=\r\n")
    assert wait is PAUSED  # waits for the server again
    (data,) = frames(events)
    assert (data.kind, data.tag, data.sensitive, data.final) == (
        FrameKind.AUTH_DATA,
        b"a",
        True,
        True,
    )
    assert data.raw == b"AGFsaWNlAGh1bnRlcjI=\r\n"
    assert d.waiting_for is Hold.AUTHENTICATE

    assert d.completed(b"a", "OK") is True
    events, wait = feed(d, b"b SELECT INBOX\r\n")
    assert [(f.kind, f.name) for f in frames(events)] == [(FrameKind.COMMAND, "SELECT")]


def test_authenticate_multi_step_exchange() -> None:
    d = client()
    feed(d, b"a AUTHENTICATE SCRAM-SHA-256\r\n")
    kinds: list[FrameKind] = []
    for line in (b"biwsbj11c2VyLHI9cm9uY2U=\r\n", b"Yz1iaXdzLHI9cm9uY2U=\r\n", b"\r\n"):
        assert d.continuation()
        events, wait = feed(d, line)
        assert wait is PAUSED
        kinds += [f.kind for f in frames(events)]
    assert kinds == [FrameKind.AUTH_DATA] * 3
    assert d.completed(b"a", "OK")
    events, _ = feed(d, b"b NOOP\r\n")
    assert [f.kind for f in frames(events)] == [FrameKind.COMMAND]


def test_authenticate_cancelled_by_client_star_line() -> None:
    d = client()
    feed(d, b"a AUTHENTICATE PLAIN\r\n")
    d.continuation()
    events, wait = feed(d, b"*\r\n")
    assert wait is PAUSED
    assert [(f.kind, f.raw) for f in frames(events)] == [(FrameKind.AUTH_DATA, b"*\r\n")]
    assert d.completed(b"a", "BAD") is True
    events, _ = feed(d, b"b LOGOUT\r\n")
    assert [(f.kind, f.name) for f in frames(events)] == [(FrameKind.COMMAND, "LOGOUT")]


def test_authenticate_with_initial_response_completes_directly() -> None:
    d = client()
    events, wait = feed(d, b"a AUTHENTICATE PLAIN AGFsaWNlAGh1bnRlcjI=\r\n")
    assert wait is PAUSED
    assert frames(events)[0].sensitive
    assert d.completed(b"a", "OK") is True
    events, wait = feed(d, b"b NOOP\r\n")
    assert [(f.kind, f.name) for f in frames(events)] == [(FrameKind.COMMAND, "NOOP")]


def test_authenticate_refused_outright_returns_to_commands() -> None:
    d = client()
    feed(d, b"a AUTHENTICATE GSSAPI\r\n")
    assert d.completed(b"a", "NO") is True
    events, _ = feed(d, b"b LOGIN x y\r\n")
    assert [(f.kind, f.name) for f in frames(events)] == [(FrameKind.COMMAND, "LOGIN")]


def test_server_aborting_authenticate_after_continuation_returns_to_commands() -> None:
    # "+" was sent, but the server then ended the exchange before any client line came.
    d = client()
    feed(d, b"a AUTHENTICATE PLAIN\r\n")
    d.continuation()
    assert d.completed(b"a", "NO") is True
    events, _ = feed(d, b"b NOOP\r\n")
    assert [(f.kind, f.name) for f in frames(events)] == [(FrameKind.COMMAND, "NOOP")]


def test_command_pipelined_after_authenticate_is_held_then_read_as_auth_data() -> None:
    d = client()
    events, wait = feed(d, b"a AUTHENTICATE PLAIN\r\nb NOOP\r\n")
    assert wait is PAUSED
    assert [f.name for f in frames(events)] == ["AUTHENTICATE"]
    assert d.buffered == len(b"b NOOP\r\n")
    assert d.continuation()
    events, wait = drain(d)
    assert [(f.kind, f.raw, f.sensitive) for f in frames(events)] == [
        (FrameKind.AUTH_DATA, b"b NOOP\r\n", True)
    ]
    assert wait is PAUSED


def test_command_pipelined_after_authenticate_is_a_command_if_the_server_refuses() -> None:
    d = client()
    feed(d, b"a AUTHENTICATE PLAIN\r\nb NOOP\r\n")
    d.completed(b"a", "NO")
    events, _ = drain(d)
    assert [(f.kind, f.name) for f in frames(events)] == [(FrameKind.COMMAND, "NOOP")]


# ========================================================================= 7. IDLE


def test_idle_then_done_then_commands() -> None:
    d = client()
    events, wait = feed(d, b"a IDLE\r\n")
    assert wait is PAUSED
    assert d.waiting_for is Hold.IDLE
    assert d.continuation() is True  # "+ idling"
    events, wait = feed(d, b"DONE\r\n")
    assert [(f.kind, f.tag, f.raw) for f in frames(events)] == [
        (FrameKind.IDLE_DONE, b"a", b"DONE\r\n")
    ]
    assert wait is NEED_DATA
    assert d.completed(b"a", "OK") is False  # nothing left to settle
    events, _ = feed(d, b"b NOOP\r\n")
    assert [(f.kind, f.name) for f in frames(events)] == [(FrameKind.COMMAND, "NOOP")]


def test_done_sent_before_the_idle_continuation_is_held() -> None:
    d = client()
    events, wait = feed(d, b"a IDLE\r\nDONE\r\n")
    assert wait is PAUSED
    assert [f.name for f in frames(events)] == ["IDLE"]
    d.continuation()
    events, _ = drain(d)
    assert [f.kind for f in frames(events)] == [FrameKind.IDLE_DONE]


@pytest.mark.parametrize("status", ["BAD", "NO"])
def test_refused_idle_makes_the_next_line_a_command(status: str) -> None:
    d = client()
    feed(d, b"a IDLE\r\nb NOOP\r\n")
    assert d.completed(b"a", status) is True
    events, _ = drain(d)
    assert [(f.kind, f.name) for f in frames(events)] == [(FrameKind.COMMAND, "NOOP")]


def test_idle_done_in_any_case_and_with_bare_lf() -> None:
    d = client()
    feed(d, b"a IDLE\r\n")
    d.continuation()
    events, _ = feed(d, b"done\n")
    assert [(f.kind, f.raw) for f in frames(events)] == [(FrameKind.IDLE_DONE, b"done\n")]


# ===================================================================== 8. STARTTLS


def test_starttls_holds_everything_until_the_server_answers() -> None:
    d = client()
    events, wait = feed(d, b"a STARTTLS\r\nb NOOP\r\n")
    assert wait is PAUSED
    assert [f.name for f in frames(events)] == ["STARTTLS"]
    assert d.waiting_for is Hold.STARTTLS
    assert d.continuation() is False  # "+" means nothing here
    assert d.next_event() is PAUSED


def test_starttls_ok_returns_injected_plaintext_and_then_frames_fresh_input() -> None:
    # CVE-2011-0411: "b NOOP" was sent in plaintext after STARTTLS; it must never be
    # executed as if it had come over TLS.
    d = client()
    feed(d, b"a STARTTLS\r\nb NOOP\r\n")
    assert d.completed(b"a", "OK") is True
    assert d.next_event() is PAUSED  # waiting for the driver to switch to TLS
    assert d.continuation() is False
    assert d.completed(b"a", "OK") is False
    assert d.start_tls() == b"b NOOP\r\n"
    assert d.buffered == 0
    events, wait = feed(d, b"c CAPABILITY\r\n")
    assert wait is NEED_DATA
    assert [(f.tag, f.name) for f in frames(events)] == [(b"c", "CAPABILITY")]


def test_starttls_ok_with_nothing_injected() -> None:
    d = client()
    feed(d, b"a STARTTLS\r\n")
    d.completed(b"a", "OK")
    assert d.start_tls() == b""
    events, _ = feed(d, b"b LOGIN u p\r\n")
    assert [f.name for f in frames(events)] == ["LOGIN"]


def test_starttls_refused_makes_held_bytes_commands() -> None:
    d = client()
    feed(d, b"a STARTTLS\r\nb NOOP\r\n")
    assert d.completed(b"a", "NO") is True
    events, _ = drain(d)
    assert [(f.tag, f.name) for f in frames(events)] == [(b"b", "NOOP")]


def test_expect_tls_when_the_driver_answers_starttls_itself() -> None:
    d = client()
    feed(d, b"a STARTTLS\r\n\x16\x03\x01")
    d.expect_tls()
    assert d.next_event() is PAUSED
    assert d.start_tls() == b"\x16\x03\x01"


@pytest.mark.parametrize(
    ("hold", "released_kind"),
    [(Hold.IDLE, FrameKind.IDLE_DONE), (Hold.AUTHENTICATE, FrameKind.AUTH_DATA)],
)
def test_driver_initiated_hold(hold: Hold, released_kind: FrameKind) -> None:
    d = client()
    d.hold_for(hold, b"x")
    events, wait = feed(d, b"line\r\n")
    assert (events, wait) == ([], PAUSED)
    assert (d.waiting_for, d.waiting_tag) == (hold, b"x")
    assert d.continuation()
    events, _ = drain(d)
    assert [(f.kind, f.tag) for f in frames(events)] == [(released_kind, b"x")]


def test_server_side_start_tls_returns_bytes_sent_after_the_ok() -> None:
    d = server()
    events, _ = feed(d, b"a OK Begin TLS now\r\n")
    assert [(f.tag, f.name) for f in frames(events)] == [(b"a", "OK")]
    d.receive_data(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] injected\r\n")
    assert d.start_tls() == b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] injected\r\n"
    events, _wait = feed(d, b"* CAPABILITY IMAP4rev1\r\n")
    assert [(f.kind, f.name) for f in frames(events)] == [(FrameKind.DATA, "CAPABILITY")]


def test_server_bytes_in_the_same_read_as_the_starttls_ok_are_returned_by_start_tls() -> None:
    d = server()
    d.receive_data(b"a OK Begin TLS now\r\n* 1 EXISTS\r\n")
    first = d.next_event()
    assert isinstance(first, Frame) and first.name == "OK"
    assert d.start_tls() == b"* 1 EXISTS\r\n"


# ===================================================================== 9. COMPRESS


def test_compress_accepted_is_fatal_with_bye() -> None:
    d = client()
    _events, wait = feed(d, b"a COMPRESS DEFLATE\r\n")
    assert wait is PAUSED
    assert d.waiting_for is Hold.COMPRESS
    with pytest.raises(ProtocolError) as info:
        d.completed(b"a", "OK")
    err = info.value
    assert err.fatal
    assert err.reply.startswith(b"* BYE ")
    assert err.reply.endswith(b"\r\n")
    with pytest.raises(ProtocolError) as again:
        d.next_event()
    assert again.value is err


def test_compress_refused_returns_to_commands() -> None:
    d = client()
    feed(d, b"a COMPRESS DEFLATE\r\nb NOOP\r\n")
    assert d.completed(b"a", "NO") is True
    events, _ = drain(d)
    assert [f.name for f in frames(events)] == ["NOOP"]


# ======================================================================= 11. limits

LINE_LIMITS = Limits(max_line_bytes=64)


def _line(length: int, *, ending: bytes = b"\r\n", prefix: bytes = b"a NOOP ") -> bytes:
    body = length - len(ending) - len(prefix)
    assert body >= 0
    return prefix + b"x" * body + ending


@pytest.mark.parametrize("side", [CLIENT, SERVER])
@pytest.mark.parametrize("ending", [b"\r\n", b"\n"])
def test_line_of_exactly_max_line_bytes_passes(side: Side, ending: bytes) -> None:
    d = client(LINE_LIMITS) if side is CLIENT else server(LINE_LIMITS)
    prefix = b"a NOOP " if side is CLIENT else b"* OK "
    line = _line(64, ending=ending, prefix=prefix)
    assert len(line) == 64
    events, _wait = feed(d, line)
    assert [f.raw for f in frames(events)] == [line]


@pytest.mark.parametrize("chunking", ["whole", "bytewise"])
def test_client_line_one_over_max_line_bytes_is_fatal(chunking: str) -> None:
    d = client(LINE_LIMITS)
    line = _line(65, prefix=b"a NOOP ")
    with pytest.raises(LimitExceeded) as info:
        feed(d, line, bytewise if chunking == "bytewise" else fixed(1 << 20))
    err = info.value
    assert err.limit == "max_line_bytes"
    assert err.fatal
    assert err.side is CLIENT
    assert err.reply.startswith(b"* BYE ")


@pytest.mark.parametrize("chunking", ["whole", "bytewise"])
def test_server_line_one_over_max_line_bytes_goes_out_in_oversize_parts(chunking: str) -> None:
    d = server(LINE_LIMITS)
    line = _line(65, prefix=b"* OK ")
    events, wait = feed(d, line, bytewise if chunking == "bytewise" else fixed(1 << 20))
    assert wait is NEED_DATA
    parts = frames(events)
    assert len(parts) >= 2 and reassemble(events) == line
    assert all(p.oversize and p.name == "OK" for p in parts)
    assert [p.final for p in parts] == [False] * (len(parts) - 1) + [True]


def test_line_without_lf_may_reach_max_line_bytes_but_not_exceed_it() -> None:
    d = client(LINE_LIMITS)
    events, wait = feed(d, b"a NOOP " + b"x" * 57)  # 64 bytes, no LF yet
    assert (events, wait) == ([], NEED_DATA)
    d.receive_data(b"x")  # 65 bytes and still no LF: it cannot fit any more
    with pytest.raises(LimitExceeded) as info:
        d.next_event()
    assert info.value.limit == "max_line_bytes"
    assert info.value.fatal


def test_line_limit_applies_to_each_line_of_a_message_separately() -> None:
    d = client(LINE_LIMITS)
    first = b"a APPEND INBOX " + b"x" * 42 + b" {8+}\r\n"
    assert len(first) == 64
    second = b"literal!" + b" " + b"y" * 61 + b"\r\n"  # 64 bytes after the literal
    events, wait = feed(d, first + second)
    assert wait is NEED_DATA
    assert reassemble(events) == first + second
    with pytest.raises(LimitExceeded):
        feed(client(LINE_LIMITS), first + b"literal!" + b" " + b"y" * 62 + b"\r\n")


def test_literal_bytes_do_not_count_towards_the_line_limit() -> None:
    d = client(Limits(max_line_bytes=64, inline_literal_bytes=1000))
    data = b"a APPEND INBOX {500+}\r\n" + b"\n" * 200 + b"z" * 300 + b"\r\n"
    events, wait = feed(d, data, fixed(7))
    assert wait is NEED_DATA
    assert reassemble(events) == data


LITERAL_LIMITS = Limits(max_literal_bytes_unauthenticated=100, max_literal_bytes=1000)


@pytest.mark.parametrize(
    ("authenticated", "limit", "name"),
    [
        (False, 100, "max_literal_bytes_unauthenticated"),
        (True, 1000, "max_literal_bytes"),
    ],
)
def test_client_sync_literal_at_limit_passes(authenticated: bool, limit: int, name: str) -> None:
    d = client(LITERAL_LIMITS)
    d.authenticated = authenticated
    events, wait = feed(d, b"a APPEND INBOX {%d}\r\n" % limit)
    assert wait is PAUSED
    assert frames(events)[0].literal == LiteralSpec(limit, sync=True)


@pytest.mark.parametrize(
    ("authenticated", "limit", "name"),
    [
        (False, 100, "max_literal_bytes_unauthenticated"),
        (True, 1000, "max_literal_bytes"),
    ],
)
def test_client_sync_literal_over_limit_is_refused_and_the_stream_goes_on(
    authenticated: bool, limit: int, name: str
) -> None:
    d = client(LITERAL_LIMITS)
    d.authenticated = authenticated
    d.receive_data(b"a APPEND INBOX {%d}\r\nb NOOP\r\n" % (limit + 1))
    with pytest.raises(LimitExceeded) as info:
        d.next_event()
    err = info.value
    assert err.limit == name
    assert not err.fatal
    assert err.tag == b"a"
    assert err.reply.startswith(b"a NO [TOOBIG]")
    assert err.reply.endswith(b"\r\n")
    events, wait = drain(d)
    assert wait is NEED_DATA
    assert [(f.tag, f.name, f.first) for f in frames(events)] == [(b"b", "NOOP", True)]


def test_refused_sync_literal_skips_the_whole_unsent_message() -> None:
    d = client(LITERAL_LIMITS)
    d.receive_data(b"a APPEND INBOX {3+}\r\nabc {101}\r\nb NOOP\r\n")
    with pytest.raises(LimitExceeded) as info:
        d.next_event()
    assert not info.value.fatal
    events, _ = drain(d)
    assert [f.raw for f in frames(events)] == [b"b NOOP\r\n"]


def test_sync_literal_over_limit_after_part_of_the_message_was_passed_on_is_fatal() -> None:
    d = client(LITERAL_LIMITS)
    feed(d, b"a APPEND INBOX {3}\r\n")
    d.continuation()
    d.receive_data(b"abc {101}\r\n")
    with pytest.raises(LimitExceeded) as info:
        d.next_event()
    assert info.value.fatal
    assert info.value.reply.startswith(b"* BYE [TOOBIG]")


@pytest.mark.parametrize("announcement", [b"{101+}", b"~{101+}"])
def test_client_nonsync_literal_over_limit_is_fatal(announcement: bytes) -> None:
    d = client(LITERAL_LIMITS)
    with pytest.raises(LimitExceeded) as info:
        feed(d, b"a APPEND INBOX " + announcement + b"\r\n")
    err = info.value
    assert err.fatal
    assert err.limit == "max_literal_bytes_unauthenticated"
    assert err.reply.startswith(b"* BYE [TOOBIG]")


@pytest.mark.parametrize(
    ("authenticated", "limit", "name"),
    [
        (False, 100, "max_literal_bytes_unauthenticated"),
        (True, 1000, "max_literal_bytes"),
    ],
)
def test_server_literal_limit(authenticated: bool, limit: int, name: str) -> None:
    ok = server(LITERAL_LIMITS)
    ok.authenticated = authenticated
    data = b"* 1 FETCH (BODY[] {%d}\r\n" % limit + b"q" * limit + b")\r\n"
    events, _ = feed(ok, data)
    assert reassemble(events) == data
    bad = server(LITERAL_LIMITS)
    bad.authenticated = authenticated
    with pytest.raises(LimitExceeded) as info:
        feed(bad, b"* 1 FETCH (BODY[] {%d}\r\n" % (limit + 1))
    err = info.value
    assert (err.fatal, err.limit, err.side) == (True, name, SERVER)
    assert err.reply.startswith(b"* BYE [TOOBIG]")


def test_twenty_digit_client_sync_literal_is_refused_recoverably() -> None:
    d = client()
    d.receive_data(b"a APPEND INBOX {99999999999999999999}\r\nb NOOP\r\n")
    with pytest.raises(LimitExceeded) as info:
        d.next_event()
    assert not info.value.fatal
    assert info.value.reply.startswith(b"a NO [TOOBIG]")
    events, _ = drain(d)
    assert [f.name for f in frames(events)] == ["NOOP"]


@pytest.mark.parametrize("announcement", [b"{99999999999999999999+}", b"~{99999999999999999999}"])
def test_twenty_digit_server_or_nonsync_literal_is_fatal(announcement: bytes) -> None:
    d = server()
    with pytest.raises(LimitExceeded) as info:
        feed(d, b"* 1 FETCH (BODY[] " + announcement + b"\r\n")
    assert info.value.fatal
    assert info.value.reply.startswith(b"* BYE [TOOBIG]")


@pytest.mark.parametrize("digits", [2, 4, 21, 22, 40, 1000])
@pytest.mark.parametrize("side", [CLIENT, SERVER])
def test_literal_length_with_leading_zeros_is_its_value(digits: int, side: Side) -> None:
    # number = 1*DIGIT (RFC 9051 §9): {000...0005} is a literal of 5 bytes, as a server
    # reads it; a proxy that refused it (or read it as text) would disagree with the server.
    announcement = b"{" + b"0" * (digits - 1) + b"5}"
    d = client() if side is CLIENT else server()
    if side is CLIENT:
        d.authenticated = True
    head = b"a APPEND INBOX " if side is CLIENT else b"* 1 FETCH (BODY[] "
    data = head + announcement + b"\r\nab\r\nc)\r\n"  # the literal holds a line end
    events, wait = feed(d, data)
    if side is CLIENT:  # a synchronising literal: the client waits for "+"
        assert wait is PAUSED
        [part] = frames(events)
        assert part.literal is not None and part.literal.size == 5
        d.continuation()
        events += drain(d)[0]
    assert reassemble(events) == data
    assert frames(events)[-1].final  # one message: the literal's CRLF ended nothing
    assert sum(f.final for f in frames(events)) == 1


@pytest.mark.parametrize("zeros", [0, 1, 30])
@pytest.mark.parametrize("side", [CLIENT, SERVER])
def test_literal_length_over_twenty_significant_digits_is_fatal(zeros: int, side: Side) -> None:
    announcement = b"{" + b"0" * zeros + b"1" + b"0" * 20 + b"+}"  # 10**20: 21 digits
    d = client() if side is CLIENT else server()
    head = b"a APPEND INBOX " if side is CLIENT else b"* 1 FETCH (BODY[] "
    with pytest.raises(ProtocolError) as info:
        feed(d, head + announcement + b"\r\n")
    assert info.value.fatal
    assert info.value.reply.startswith(b"* BYE ")
    assert info.value.limit == "max_literal_bytes"


@pytest.mark.parametrize(
    "hold_setup",
    [
        b"a APPEND INBOX {5}\r\n",
        b"a AUTHENTICATE PLAIN\r\n",
        b"a IDLE\r\n",
        b"a STARTTLS\r\n",
        b"a COMPRESS DEFLATE\r\n",
    ],
)
def test_held_bytes_up_to_max_held_bytes_pass_and_one_more_is_fatal(hold_setup: bytes) -> None:
    d = client(Limits(max_held_bytes=100))
    feed(d, hold_setup)
    events, wait = feed(d, b"h" * 100)
    assert (events, wait) == ([], PAUSED)
    d.receive_data(b"h")
    with pytest.raises(LimitExceeded) as info:
        d.next_event()
    err = info.value
    assert (err.limit, err.fatal, err.side) == ("max_held_bytes", True, CLIENT)
    assert err.reply.startswith(b"* BYE ")


def test_held_bytes_limit_applies_while_waiting_for_start_tls() -> None:
    d = client(Limits(max_held_bytes=100))
    feed(d, b"a STARTTLS\r\n")
    d.completed(b"a", "OK")
    assert feed(d, b"t" * 100) == ([], PAUSED)
    d.receive_data(b"t")
    with pytest.raises(LimitExceeded) as info:
        d.next_event()
    assert info.value.limit == "max_held_bytes"


def test_nonsync_literal_limit_for_literal_minus() -> None:
    ok = client()
    ok.max_nonsync_literal = 4096
    data = b"a APPEND INBOX {4096+}\r\n" + b"m" * 4096 + b"\r\n"
    events, _ = feed(ok, data)
    assert reassemble(events) == data
    bad = client()
    bad.max_nonsync_literal = 4096
    with pytest.raises(LimitExceeded) as info:
        feed(bad, b"a APPEND INBOX {4097+}\r\n")
    err = info.value
    assert (err.fatal, err.limit) == (True, "max_nonsync_literal_minus")
    assert err.reply.startswith(b"* BYE [TOOBIG]")


def test_nonsync_literal_limit_does_not_apply_to_sync_literals() -> None:
    d = client()
    d.max_nonsync_literal = 0
    events, wait = feed(d, b"a APPEND INBOX {5000}\r\n")
    assert wait is PAUSED
    assert frames(events)[0].literal == LiteralSpec(5000, sync=True)


def test_fatal_errors_are_sticky() -> None:
    d = client(LINE_LIMITS)
    d.receive_data(b"a " + b"x" * 100 + b"\r\n")
    with pytest.raises(LimitExceeded) as info:
        d.next_event()
    for _ in range(3):
        with pytest.raises(LimitExceeded) as again:
            d.next_event()
        assert again.value is info.value
    d.receive_data(b"b NOOP\r\n")
    with pytest.raises(LimitExceeded):
        d.next_event()


def test_recoverable_errors_are_not_sticky() -> None:
    d = client(LITERAL_LIMITS)
    d.receive_data(b"a APPEND INBOX {1000}\r\n")
    with pytest.raises(LimitExceeded):
        d.next_event()
    assert d.next_event() is NEED_DATA


def test_limits_reject_nonsense_values() -> None:
    with pytest.raises(ValueError):
        Limits(max_line_bytes=63)
    with pytest.raises(ValueError):
        Limits(max_held_bytes=-1)


# ================================================================== 12. adversarial

NOT_LITERALS: list[bytes] = [
    b"{-1}",
    b"{1a}",
    b"{ 5}",
    b"{5 }",
    b"{+5}",
    b"{5++}",
    b"{}",
    b"{0x5}",
    b"{5}}",
    b"{\xd9\xa5}",  # ARABIC-INDIC DIGIT FIVE in UTF-8
    b"{5}x",
    b"{5} ",
    b"{5}\r",  # CR CR LF: the line text ends in CR
    b'"{5}"',
]


@pytest.mark.parametrize("tail", NOT_LITERALS)
@pytest.mark.parametrize("side", [CLIENT, SERVER])
def test_malformed_literal_announcements_are_plain_text(tail: bytes, side: Side) -> None:
    d = client() if side is CLIENT else server()
    line = (b"a APPEND INBOX " if side is CLIENT else b"* 1 FETCH (BODY[] ") + tail + b"\r\n"
    events, wait = feed(d, line + b"hello\r\n")
    assert wait is NEED_DATA
    assert [f.raw for f in frames(events)] == [line, b"hello\r\n"]


def test_crlf_inside_a_quoted_string_splits_the_frame() -> None:
    # Framing does not look inside quoted strings: a quoted string cannot contain CR or LF
    # (RFC 9051 quoted-specials), so the line ends at the CRLF and the rest is a new
    # message.  The parser rejects both halves; the framing stays in step with a server,
    # which also ends the command at the CRLF.
    d = client()
    data = b'a LOGIN "ali\r\nce" secret\r\n'
    events, wait = feed(d, data)
    assert wait is NEED_DATA
    assert [f.raw for f in frames(events)] == [b'a LOGIN "ali\r\n', b'ce" secret\r\n']
    assert reassemble(events) == data


def test_literal_announcement_inside_a_quoted_string_still_counts_at_the_line_end() -> None:
    # "{5}" right before CRLF is an announcement wherever it appears: the framing does not
    # track quotes, and a server cannot have a quoted string ending in CRLF either.
    d = client()
    _events, wait = feed(d, b'a SEARCH SUBJECT "x{5}\r\n')
    assert wait is PAUSED


@pytest.mark.parametrize("side", [CLIENT, SERVER])
def test_nul_and_eight_bit_bytes_pass_through_framing(side: Side) -> None:
    d = client() if side is CLIENT else server()
    line = (b"a NOOP " if side is CLIENT else b"* OK ") + b"\x00\xff\x80\x7f\x1b\r\n"
    events, _ = feed(d, line)
    assert [f.raw for f in frames(events)] == [line]


def test_bare_lf_line_endings_frame_like_crlf() -> None:
    d = client()
    data = b"a NOOP\nb APPEND INBOX {3+}\nabc\nc LOGOUT\n"
    events, _wait = feed(d, data)
    assert [f.raw for f in frames(events)] == [
        b"a NOOP\n",
        b"b APPEND INBOX {3+}\nabc\n",
        b"c LOGOUT\n",
    ]


def test_lone_cr_does_not_end_a_line() -> None:
    d = client()
    events, _wait = feed(d, b"a NOOP\rb NOOP\r\n")
    assert [f.raw for f in frames(events)] == [b"a NOOP\rb NOOP\r\n"]


def test_clean_end_of_stream() -> None:
    d = client()
    events, wait = feed(d, b"a LOGOUT\r\n", eof=True)
    assert wait is None
    assert events[-1] == EndOfStream(CLIENT, clean=True, pending=0)
    assert d.next_event() == EndOfStream(CLIENT, clean=True, pending=0)


def test_end_of_stream_on_an_empty_connection_is_clean() -> None:
    d = server(greeted=False)
    d.receive_data(b"")
    assert d.next_event() == EndOfStream(SERVER, clean=True, pending=0)


def test_end_of_stream_inside_a_line() -> None:
    d = client()
    events, _ = feed(d, b"a NOOP\r\nb NOO", eof=True)
    assert events[-1] == EndOfStream(CLIENT, clean=False, pending=5)


def test_end_of_stream_after_a_literal_announcement() -> None:
    d = server()
    head = b"* 1 FETCH (BODY[] {10}\r\n"
    events, _ = feed(d, head + b"abc", eof=True)
    assert events == [EndOfStream(SERVER, clean=False, pending=len(head) + 3)]


def test_end_of_stream_inside_a_streamed_literal() -> None:
    d = server(SMALL_INLINE)
    events, _ = feed(d, b"* 1 FETCH (BODY[] {100}\r\n" + b"x" * 30, eof=True)
    eos = events[-1]
    assert isinstance(eos, EndOfStream)
    assert not eos.clean


def test_end_of_stream_while_the_client_waits_for_a_continuation() -> None:
    d = client()
    events, _ = feed(d, b"a APPEND INBOX {5}\r\n", eof=True)
    eos = events[-1]
    assert isinstance(eos, EndOfStream)
    assert not eos.clean


def test_end_of_stream_with_held_bytes_counts_them() -> None:
    d = client()
    events, _ = feed(d, b"a IDLE\r\nDONE\r\n", eof=True)
    assert events[-1] == EndOfStream(CLIENT, clean=False, pending=6)


def test_receive_after_end_of_stream_is_a_programming_error() -> None:
    d = client()
    d.receive_data(b"")
    with pytest.raises(RuntimeError):
        d.receive_data(b"x")


def test_many_zero_length_literals_do_not_grow_one_part_without_bound() -> None:
    # Documented bound: one line + inline literals + held bytes.  Every line of this
    # never-ending message is short and announces an empty non-synchronising literal, so
    # neither the line limit nor the inline-literal limit ever triggers.
    limits = Limits(max_line_bytes=256, inline_literal_bytes=128, max_held_bytes=256)
    d = client(limits)
    bound = limits.max_line_bytes + limits.inline_literal_bytes + limits.max_held_bytes
    d.receive_data(b"a APPEND INBOX {0+}\r\n")
    try:
        for _ in range(2000):
            d.receive_data(b"x" * 200 + b" {0+}\r\n")
            drain(d)
            assert d.buffered <= bound + 207
    except ProtocolError:
        pass  # refusing the message is fine; buffering it all is not


@pytest.mark.parametrize("side", [CLIENT, SERVER])
def test_buffered_bytes_stay_within_the_documented_bound_with_small_max_held(
    side: Side,
) -> None:
    # "the decoder holds at most one line + the literals it keeps inline + held bytes":
    # with max_held_bytes=0 that is max_line_bytes + inline_literal_bytes (+ the last read).
    limits = Limits(max_line_bytes=256, inline_literal_bytes=128, max_held_bytes=0)
    d = client(limits) if side is CLIENT else server(limits)
    bound = limits.max_line_bytes + limits.inline_literal_bytes + limits.max_held_bytes + 1
    head = b"a APPEND INBOX {0+}\r\n" if side is CLIENT else b"* 1 FETCH (X {0}\r\n"
    ann = b" {0+}\r\n" if side is CLIENT else b" {0}\r\n"
    data = head + (b"y" * 100 + ann) * 3 + b"z" * 250
    worst = 0
    for i in range(len(data)):
        d.receive_data(data[i : i + 1])
        drain(d)
        worst = max(worst, d.buffered)
    assert worst <= bound


def test_many_small_server_literals_do_not_grow_one_part_without_bound() -> None:
    limits = Limits(max_line_bytes=256, inline_literal_bytes=128, max_held_bytes=256)
    d = server(limits)
    bound = limits.max_line_bytes + limits.inline_literal_bytes + limits.max_held_bytes
    d.receive_data(b"* 1 FETCH (X {0}\r\n")
    try:
        for _ in range(2000):
            d.receive_data(b"y" * 240 + b" {0}\r\n")
            drain(d)
            assert d.buffered <= bound + 246
    except ProtocolError:
        pass
