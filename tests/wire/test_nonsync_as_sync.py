"""``nonsync_as_sync``: the client decoder pauses after every ``{n+}`` as after ``{n}``.

The relay sends such a literal on as ``{n}`` so that the server decides visibly whether it
reads it.  The client does not wait, so the literal (and the rest of the message) is
already arriving while the decoder waits: a ``+`` lets it through, a tagged answer means
it is consumed and never given out, and the next command is read from the right place.
"""

from __future__ import annotations

import pytest

from imapproxy.wire import (
    NEED_DATA,
    PAUSED,
    Conversation,
    Decoder,
    EndOfStream,
    Frame,
    FrameKind,
    Hold,
    LimitExceeded,
    Limits,
    LiteralChunk,
    Side,
)
from imapproxy.wire.events import Event
from tests.wire.helpers import bytewise, fixed, whole


def converting(limits: Limits | None = None) -> Decoder:
    d = Decoder(Side.CLIENT, limits or Limits())
    d.authenticated = True
    d.nonsync_as_sync = True
    return d


def take(d: Decoder) -> tuple[list[Event], object]:
    events: list[Event] = []
    while True:
        ev = d.next_event()
        if ev is NEED_DATA or ev is PAUSED:
            return events, ev
        events.append(ev)  # type: ignore[arg-type]
        if type(ev) is EndOfStream:
            return events, None


def raws(events: list[Event]) -> list[bytes]:
    return [e.raw if type(e) is Frame else e.data for e in events]  # type: ignore[union-attr]


def test_nonsync_literal_ends_the_part_and_pauses_like_a_sync_one() -> None:
    d = converting()
    d.receive_data(b"a APPEND INBOX {5+}\r\nhello\r\nb NOOP\r\n")
    events, wait = take(d)
    assert wait is PAUSED and d.waiting_for is Hold.NONSYNC_LITERAL
    (head,) = events
    assert head.raw == b"a APPEND INBOX {5+}\r\n"
    assert not head.final and head.nonsync and head.literal is not None
    assert head.literal.nonsync_marker and not head.literal.sync
    assert not head.waits_for_continuation  # the client does not wait for "+"
    assert d.continuation()
    events, wait = take(d)
    assert wait is NEED_DATA and d.waiting_for is None
    assert raws(events) == [b"hello\r\n", b"b NOOP\r\n"]
    assert [e.first for e in events] == [False, True]  # type: ignore[union-attr]


@pytest.mark.parametrize("status", ["NO", "BAD"])
@pytest.mark.parametrize("chunker", [whole, bytewise, fixed(7)], ids=["whole", "bytes", "7"])
def test_a_refused_command_is_consumed_to_its_end_and_never_given_out(
    status: str, chunker: object
) -> None:
    """Refused at the first of two literals: the literal, the second {n+} (no pause for it)
    and its literal are read as the client wrote them, and dropped."""
    d = converting()
    first = b"a APPEND INBOX (\\Seen) {3+}\r\n"
    rest = b"xyz {4+}\r\nc NO CATENATE {3+}\r\nabc\r\nd NOOP\r\n"
    d.receive_data(first)
    events, wait = take(d)
    assert raws(events) == [first] and wait is PAUSED
    assert d.completed(b"a", status)
    given: list[Event] = []
    for piece in chunker(rest):  # type: ignore[operator]
        d.receive_data(piece)
        events, wait = take(d)
        given += events
        assert wait is NEED_DATA  # never paused for the later {n+}
    # "xyz", then " {4+}" and its literal "c NO", then " CATENATE {3+}" and "abc": none
    # of it is a command; "d NOOP" is the next one.
    assert raws(given) == [b"d NOOP\r\n"]
    assert given[0].kind is FrameKind.COMMAND and given[0].name == "NOOP"  # type: ignore[union-attr]


def test_a_refused_command_with_a_later_sync_literal_ends_at_its_announcement() -> None:
    """The client waits for a "+" for the {n} that will not come (it has the tagged NO):
    the message ends there and its next bytes are a new command."""
    d = converting()
    d.receive_data(b"a X-CMD {2+}\r\n")
    take(d)
    d.completed(b"a", "BAD")
    d.receive_data(b"ab {4}\r\nb NOOP\r\n")
    events, wait = take(d)
    assert raws(events) == [b"b NOOP\r\n"] and wait is NEED_DATA


def test_relay_refusal_discards_like_a_server_refusal() -> None:
    d = converting()
    d.receive_data(b"a]x APPEND INBOX {3+}\r\nabc\r\nb NOOP\r\n")
    (head,), wait = take(d)
    assert wait is PAUSED and head.name == ""  # a malformed head: the relay refuses it
    d.refused()
    events, _ = take(d)
    assert raws(events) == [b"b NOOP\r\n"]


def test_two_nonsync_literals_pause_twice_when_accepted() -> None:
    d = converting()
    d.receive_data(b"a APPEND INBOX {3+}\r\nabc (\\Seen) ~{4+}\r\nd\x00ef\r\nb NOOP\r\n")
    events, wait = take(d)
    assert raws(events) == [b"a APPEND INBOX {3+}\r\n"] and wait is PAUSED
    d.continuation()
    events, wait = take(d)
    assert raws(events) == [b"abc (\\Seen) ~{4+}\r\n"] and wait is PAUSED
    assert events[0].literal.binary  # type: ignore[union-attr]
    d.continuation()
    events, wait = take(d)
    assert raws(events) == [b"d\x00ef\r\n", b"b NOOP\r\n"]


def test_large_nonsync_literal_streams_after_the_continuation() -> None:
    limits = Limits(inline_literal_bytes=64)
    d = converting(limits)
    payload = bytes(range(256)) * 4
    d.receive_data(b"a APPEND INBOX {1024+}\r\n" + payload[:100])
    (head,), wait = take(d)
    assert head.streamed and wait is PAUSED
    d.continuation()
    d.receive_data(payload[100:] + b"\r\n")
    events, _ = take(d)
    chunks = [e for e in events if type(e) is LiteralChunk]
    assert b"".join(c.data for c in chunks) == payload
    assert raws(events)[-1] == b"\r\n"


def test_large_refused_literal_is_consumed_across_reads_without_events() -> None:
    limits = Limits(inline_literal_bytes=64)
    d = converting(limits)
    d.receive_data(b"a APPEND INBOX {1000+}\r\n")
    take(d)
    d.completed(b"a", "NO")
    for _ in range(10):
        d.receive_data(b"z" * 100)
        assert take(d) == ([], NEED_DATA)
    d.receive_data(b"\r\nb NOOP\r\n")
    events, _ = take(d)
    assert raws(events) == [b"b NOOP\r\n"]


def test_a_discarded_message_does_not_start_an_exchange() -> None:
    """A refused "IDLE"/"AUTHENTICATE" with a literal starts no IDLE/SASL exchange."""
    d = converting()
    d.receive_data(b"a IDLE {1+}\r\n")
    take(d)
    d.completed(b"a", "BAD")
    d.receive_data(b"x\r\nDONE\r\n")
    events, _ = take(d)
    assert raws(events) == [b"DONE\r\n"]
    assert events[0].kind is FrameKind.COMMAND  # not IDLE_DONE  # type: ignore[union-attr]
    assert not d.idling


def test_only_bytes_arriving_during_the_pause_count_against_max_held_bytes() -> None:
    """What was received with the announcement (the literal, pipelined commands) is the
    driver's read, already bounded; max_held_bytes bounds what arrives while paused (the
    relay does not read then)."""
    limits = Limits(inline_literal_bytes=64, max_held_bytes=100)
    d = converting(limits)
    d.receive_data(b"a APPEND INBOX {500+}\r\n" + b"y" * 600)  # 600 arrived at once
    assert take(d)[1] is PAUSED
    d.receive_data(b"z" * 100)
    assert take(d)[1] is PAUSED  # 100 more: at the limit
    d.receive_data(b"z")
    with pytest.raises(LimitExceeded) as info:
        take(d)
    assert info.value.limit == "max_held_bytes" and info.value.fatal


def test_without_the_flag_nonsync_literals_stay_inline() -> None:
    d = Decoder(Side.CLIENT)
    d.authenticated = True
    d.receive_data(b"a APPEND INBOX {5+}\r\nhello\r\n")
    (frame,), wait = take(d)
    assert frame.final and frame.nonsync and wait is NEED_DATA


def test_start_tls_ends_discarding() -> None:
    d = converting()
    d.receive_data(b"a X {3+}\r\n")
    take(d)
    d.completed(b"a", "NO")
    assert d.start_tls() == b""
    d.receive_data(b"b NOOP\r\n")
    events, _ = take(d)
    assert raws(events) == [b"b NOOP\r\n"]


def test_conversation_says_which_hold_a_continuation_released() -> None:
    conv = Conversation(Limits(), nonsync_as_sync=True)
    conv.receive_server(b"* OK [CAPABILITY IMAP4rev1 LITERAL+] hi\r\n")
    assert conv.next_server_event()
    conv.client.authenticated = True
    conv.receive_client(b"a APPEND INBOX {3+}\r\nabc\r\n")
    assert type(conv.next_client_event()) is Frame
    assert conv.next_client_event() is PAUSED
    conv.receive_server(b"+ go ahead\r\n")
    assert type(conv.next_server_event()) is Frame
    assert conv.continued is Hold.NONSYNC_LITERAL
    assert raws([conv.next_client_event()]) == [b"abc\r\n"]  # type: ignore[list-item]
    conv.receive_client(b"b APPEND INBOX {2}\r\n")
    conv.next_client_event()
    conv.receive_server(b"+ ok\r\n")
    conv.next_server_event()
    assert conv.continued is Hold.LITERAL
    conv.receive_server(b"+ stray\r\n")
    conv.next_server_event()
    assert conv.continued is None


def test_a_reused_tag_is_flagged_and_the_first_command_keeps_it() -> None:
    """A command reusing the tag of one in progress is not tracked (the relay refuses
    it): the first command's answer must not settle, or be taken for, the second."""
    conv = Conversation(Limits(), nonsync_as_sync=True)
    conv.receive_server(b"* OK hi\r\n")
    conv.next_server_event()
    conv.receive_client(b"a1 NOOP\r\na1 LOGIN user {2+}\r\npw\r\nb1 NOOP\r\n")
    first = conv.next_client_event()
    assert type(first) is Frame and first.name == "NOOP" and not conv.tag_in_use
    second = conv.next_client_event()
    assert type(second) is Frame and second.name == "LOGIN" and conv.tag_in_use
    assert conv.pending[b"a1"].name == "NOOP"  # not overwritten
    assert conv.next_client_event() is PAUSED
    conv.client.refused()  # what the relay does with it
    third = conv.next_client_event()
    assert type(third) is Frame and third.name == "NOOP" and third.tag == b"b1"
    assert not conv.tag_in_use
    conv.receive_server(b"a1 NO [AUTHENTICATIONFAILED] whatever\r\n")
    conv.next_server_event()
    assert conv.phase.name == "NOT_AUTHENTICATED"  # the NOOP's answer, not a login
