"""Tests of :class:`imapproxy.wire.Conversation`: both directions of one connection.

The conversation wires the server's answers into the client decoder (``+`` releases a held
literal / SASL line / DONE, tagged replies settle holds), follows the session phase, tracks
pending commands by tag and learns the server's capabilities.
"""

from __future__ import annotations

import pytest

from imapproxy.wire import (
    NEED_DATA,
    PAUSED,
    Conversation,
    Frame,
    FrameKind,
    Hold,
    LimitExceeded,
    Limits,
    Phase,
    ProtocolError,
    Side,
    Wait,
)
from imapproxy.wire.events import Event
from tests.wire.helpers import Failure, frames, reassemble, replay

GREETING = b"* OK [CAPABILITY IMAP4rev1 LITERAL+ IDLE] ready\r\n"


def client_says(conv: Conversation, data: bytes) -> tuple[list[Event], Wait]:
    conv.receive_client(data)
    return _drain(conv.next_client_event)


def server_says(conv: Conversation, data: bytes) -> tuple[list[Event], Wait]:
    conv.receive_server(data)
    return _drain(conv.next_server_event)


def client_pending(conv: Conversation) -> tuple[list[Event], Wait]:
    return _drain(conv.next_client_event)


def _drain(next_event: object) -> tuple[list[Event], Wait]:
    assert callable(next_event)
    events: list[Event] = []
    while True:
        e = next_event()
        if isinstance(e, Wait):
            return events, e
        events.append(e)


def greeted(greeting: bytes = GREETING, limits: Limits | None = None) -> Conversation:
    conv = Conversation(limits) if limits is not None else Conversation()
    server_says(conv, greeting)
    return conv


def logged_in(greeting: bytes = GREETING, limits: Limits | None = None) -> Conversation:
    conv = greeted(greeting, limits)
    client_says(conv, b"L1 LOGIN alice secret\r\n")
    server_says(conv, b"L1 OK LOGIN completed\r\n")
    assert conv.phase is Phase.AUTHENTICATED
    return conv


def selected(mailbox: bytes = b"INBOX") -> Conversation:
    conv = logged_in()
    client_says(conv, b"S1 SELECT " + mailbox + b"\r\n")
    server_says(conv, b"* 3 EXISTS\r\nS1 OK [READ-WRITE] done\r\n")
    assert conv.phase is Phase.SELECTED
    return conv


# ===================================================================== phases


def test_new_conversation_is_not_authenticated() -> None:
    conv = Conversation()
    assert conv.phase is Phase.NOT_AUTHENTICATED
    assert conv.selected is None
    assert conv.pending == {}
    assert conv.capabilities is None
    assert not conv.greeted
    assert not conv.client.authenticated and not conv.server.authenticated


@pytest.mark.parametrize(
    ("greeting", "phase"),
    [
        (b"* OK ready\r\n", Phase.NOT_AUTHENTICATED),
        (b"* PREAUTH logged in as alice\r\n", Phase.AUTHENTICATED),
        (b"* BYE go away\r\n", Phase.LOGOUT),
    ],
)
def test_greeting_sets_the_phase(greeting: bytes, phase: Phase) -> None:
    conv = greeted(greeting)
    assert conv.greeted
    assert conv.phase is phase
    expect_auth = phase is Phase.AUTHENTICATED
    assert conv.client.authenticated is expect_auth
    assert conv.server.authenticated is expect_auth


@pytest.mark.parametrize(
    ("command", "reply", "phase"),
    [
        (b"a LOGIN alice secret\r\n", b"a OK done\r\n", Phase.AUTHENTICATED),
        (
            b"a LOGIN alice wrong\r\n",
            b"a NO [AUTHENTICATIONFAILED] no\r\n",
            Phase.NOT_AUTHENTICATED,
        ),
        (b"a LOGIN alice\r\n", b"a BAD syntax\r\n", Phase.NOT_AUTHENTICATED),
        (b"a AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldA==\r\n", b"a OK\r\n", Phase.AUTHENTICATED),
        (b"a LOGOUT\r\n", b"* BYE bye\r\na OK done\r\n", Phase.LOGOUT),
        (b"a NOOP\r\n", b"a OK done\r\n", Phase.NOT_AUTHENTICATED),
    ],
)
def test_phase_after_a_command_before_authentication(
    command: bytes, reply: bytes, phase: Phase
) -> None:
    conv = greeted()
    client_says(conv, command)
    server_says(conv, reply)
    assert conv.phase is phase
    assert conv.client.authenticated is (phase is Phase.AUTHENTICATED)


def test_phase_changes_only_when_the_server_completes_the_command() -> None:
    conv = greeted()
    client_says(conv, b"a LOGIN alice secret\r\n")
    assert conv.phase is Phase.NOT_AUTHENTICATED
    server_says(conv, b"* CAPABILITY IMAP4rev1\r\n")
    assert conv.phase is Phase.NOT_AUTHENTICATED
    server_says(conv, b"a OK\r\n")
    assert conv.phase is Phase.AUTHENTICATED


def test_completion_for_an_unknown_tag_changes_nothing() -> None:
    conv = greeted()
    client_says(conv, b"a LOGIN alice secret\r\n")
    server_says(conv, b"zz OK LOGIN completed\r\n")
    assert conv.phase is Phase.NOT_AUTHENTICATED
    assert set(conv.pending) == {b"a"}


@pytest.mark.parametrize(
    ("command", "mailbox"),
    [
        (b"s SELECT INBOX\r\n", b"INBOX"),
        (b"s select inbox\r\n", b"inbox"),
        (b"s EXAMINE Archive\r\n", b"Archive"),
        (b's SELECT "Sent Items"\r\n', b"Sent Items"),
        (b"s SELECT INBOX (CONDSTORE)\r\n", b"INBOX"),
        (b"s SELECT {6+}\r\nDrafts\r\n", b"Drafts"),
        (b"s SELECT &AOk-t&AOk-\r\n", b"&AOk-t&AOk-"),
    ],
)
def test_select_ok_enters_selected_with_the_mailbox(command: bytes, mailbox: bytes) -> None:
    conv = logged_in()
    client_says(conv, command)
    server_says(conv, b"* 1 EXISTS\r\ns OK [READ-WRITE] done\r\n")
    assert conv.phase is Phase.SELECTED
    assert conv.selected == mailbox
    assert conv.client.authenticated and conv.server.authenticated


def test_select_with_a_synchronising_literal_mailbox_name_records_the_mailbox() -> None:
    conv = logged_in()
    _, wait = client_says(conv, b"s SELECT {6}\r\n")
    assert wait is PAUSED
    server_says(conv, b"+ go ahead\r\n")
    events, _ = client_pending(conv)
    assert events == []
    events, _ = client_says(conv, b"Drafts\r\n")
    assert [f.raw for f in frames(events)] == [b"Drafts\r\n"]
    server_says(conv, b"s OK [READ-WRITE] done\r\n")
    assert conv.phase is Phase.SELECTED
    assert conv.selected == b"Drafts"


def test_second_select_replaces_the_mailbox() -> None:
    conv = selected(b"INBOX")
    client_says(conv, b"s2 EXAMINE Archive\r\n")
    server_says(conv, b"s2 OK [READ-ONLY] done\r\n")
    assert (conv.phase, conv.selected) == (Phase.SELECTED, b"Archive")


def test_failed_select_while_selected_leaves_no_mailbox_selected() -> None:
    conv = selected()
    client_says(conv, b"s2 SELECT nosuch\r\n")
    server_says(conv, b"s2 NO [NONEXISTENT] no such mailbox\r\n")
    assert conv.phase is Phase.AUTHENTICATED
    assert conv.selected is None


def test_failed_select_while_authenticated_stays_authenticated() -> None:
    conv = logged_in()
    client_says(conv, b"s SELECT nosuch\r\n")
    server_says(conv, b"s NO no such mailbox\r\n")
    assert conv.phase is Phase.AUTHENTICATED


@pytest.mark.parametrize("command", [b"c CLOSE\r\n", b"c UNSELECT\r\n", b"c close\r\n"])
def test_close_and_unselect_return_to_authenticated(command: bytes) -> None:
    conv = selected()
    client_says(conv, command)
    server_says(conv, b"c OK done\r\n")
    assert conv.phase is Phase.AUTHENTICATED
    assert conv.selected is None
    assert conv.client.authenticated


@pytest.mark.parametrize(
    "reply",
    [b"* BYE logging out\r\nz OK done\r\n", b"z OK done\r\n", b"* BYE idle timeout\r\n"],
)
def test_logout_phase(reply: bytes) -> None:
    conv = selected()
    client_says(conv, b"z LOGOUT\r\n")
    server_says(conv, reply)
    assert conv.phase is Phase.LOGOUT
    assert conv.selected is None
    assert not conv.client.authenticated


def test_logout_phase_is_final() -> None:
    conv = greeted()
    server_says(conv, b"* BYE shutting down\r\n")
    client_says(conv, b"a LOGIN alice secret\r\n")
    server_says(conv, b"a OK\r\n")
    assert conv.phase is Phase.LOGOUT


def test_authenticate_exchange_through_the_conversation() -> None:
    conv = greeted()
    events, wait = client_says(conv, b"a AUTHENTICATE PLAIN\r\n")
    assert wait is PAUSED
    assert conv.waiting_for is Hold.AUTHENTICATE
    server_says(conv, b"+ \r\n")
    events, wait = client_says(conv, b"AGFsaWNlAHNlY3JldA==\r\n")
    assert [(f.kind, f.sensitive) for f in frames(events)] == [(FrameKind.AUTH_DATA, True)]
    assert wait is PAUSED
    server_says(conv, b"a OK [CAPABILITY IMAP4rev1 IDLE] welcome\r\n")
    assert conv.phase is Phase.AUTHENTICATED
    assert conv.waiting_for is None
    assert conv.capabilities == frozenset({"IMAP4REV1", "IDLE"})
    events, wait = client_says(conv, b"b SELECT INBOX\r\n")
    assert [(f.kind, f.name) for f in frames(events)] == [(FrameKind.COMMAND, "SELECT")]


def test_authenticate_cancelled_stays_not_authenticated() -> None:
    conv = greeted()
    client_says(conv, b"a AUTHENTICATE PLAIN\r\n")
    server_says(conv, b"+ \r\n")
    client_says(conv, b"*\r\n")
    server_says(conv, b"a BAD cancelled\r\n")
    assert conv.phase is Phase.NOT_AUTHENTICATED
    events, _ = client_says(conv, b"b LOGIN x y\r\n")
    assert [(f.kind, f.name) for f in frames(events)] == [(FrameKind.COMMAND, "LOGIN")]


# ===================================================================== pending commands


def test_pipelined_commands_are_pending_by_tag_and_complete_out_of_order() -> None:
    conv = logged_in()
    events, _ = client_says(conv, b"a NOOP\r\nb SELECT INBOX\r\nc UID FETCH 1:* (FLAGS)\r\n")
    assert [f.tag for f in frames(events)] == [b"a", b"b", b"c"]
    assert set(conv.pending) == {b"a", b"b", b"c"}
    b_cmd = conv.command_for(b"b")
    assert b_cmd is not None
    assert (b_cmd.name, b_cmd.mailbox) == ("SELECT", b"INBOX")
    c_cmd = conv.command_for(b"c")
    assert c_cmd is not None
    assert c_cmd.name == "UID FETCH"

    server_says(conv, b"* 1 FETCH (FLAGS ())\r\nc OK done\r\n")
    assert set(conv.pending) == {b"a", b"b"}
    assert conv.phase is Phase.AUTHENTICATED
    server_says(conv, b"a OK done\r\n")
    assert set(conv.pending) == {b"b"}
    server_says(conv, b"b OK [READ-WRITE] done\r\n")
    assert conv.pending == {}
    assert conv.command_for(b"b") is None
    assert (conv.phase, conv.selected) == (Phase.SELECTED, b"INBOX")


def test_a_multi_part_command_is_pending_from_its_first_part() -> None:
    conv = logged_in()
    client_says(conv, b"a APPEND INBOX {5}\r\n")
    assert set(conv.pending) == {b"a"}
    server_says(conv, b"+ OK\r\n")
    client_says(conv, b"hello\r\n")
    assert set(conv.pending) == {b"a"}  # still the same command, not re-added
    server_says(conv, b"a OK [APPENDUID 1 2] done\r\n")
    assert conv.pending == {}


def test_server_continuation_releases_a_held_literal() -> None:
    conv = logged_in()
    events, wait = client_says(conv, b"a APPEND INBOX {5}\r\nhello\r\n")
    assert wait is PAUSED
    assert conv.waiting_for is Hold.LITERAL
    server_events, _ = server_says(conv, b"+ Ready\r\n")
    assert [f.kind for f in frames(server_events)] == [FrameKind.CONTINUATION]
    assert conv.waiting_for is None
    events, wait = client_pending(conv)
    assert wait is NEED_DATA
    assert [(f.first, f.raw) for f in frames(events)] == [(False, b"hello\r\n")]


def test_server_refusal_turns_held_literal_bytes_into_a_command() -> None:
    conv = logged_in()
    client_says(conv, b"a APPEND nosuch {8}\r\nb NOOP\r\n")
    server_says(conv, b"a NO [TRYCREATE] no such mailbox\r\n")
    assert b"a" not in conv.pending
    events, _ = client_pending(conv)
    assert [(f.tag, f.name) for f in frames(events)] == [(b"b", "NOOP")]
    assert set(conv.pending) == {b"b"}


def test_completion_of_another_pipelined_command_does_not_release_the_literal() -> None:
    conv = logged_in()
    client_says(conv, b"a NOOP\r\nb APPEND INBOX {5}\r\nhello\r\n")
    server_says(conv, b"a OK done\r\n")
    assert client_pending(conv) == ([], PAUSED)
    server_says(conv, b"+ go\r\n")
    events, _ = client_pending(conv)
    assert [(f.tag, f.raw) for f in frames(events)] == [(b"b", b"hello\r\n")]


def test_idle_through_the_conversation() -> None:
    conv = selected()
    _, wait = client_says(conv, b"i IDLE\r\n")
    assert wait is PAUSED
    assert conv.waiting_for is Hold.IDLE
    server_says(conv, b"+ idling\r\n* 4 EXISTS\r\n")
    events, _ = client_says(conv, b"DONE\r\n")
    assert [f.kind for f in frames(events)] == [FrameKind.IDLE_DONE]
    server_says(conv, b"i OK IDLE terminated\r\n")
    assert conv.pending == {}
    events, _ = client_says(conv, b"n NOOP\r\n")
    assert [f.kind for f in frames(events)] == [FrameKind.COMMAND]
    assert conv.phase is Phase.SELECTED


def test_starttls_through_the_conversation_returns_injected_bytes() -> None:
    conv = greeted(b"* OK [CAPABILITY IMAP4rev1 STARTTLS] ready\r\n")
    client_says(conv, b"a STARTTLS\r\nb LOGIN alice secret\r\n")
    server_says(conv, b"a OK Begin TLS\r\n")
    assert client_pending(conv) == ([], PAUSED)
    assert conv.client.start_tls() == b"b LOGIN alice secret\r\n"
    assert conv.pending == {}
    assert conv.phase is Phase.NOT_AUTHENTICATED


def test_compress_accepted_through_the_conversation_is_fatal() -> None:
    conv = logged_in()
    client_says(conv, b"z COMPRESS DEFLATE\r\n")
    with pytest.raises(ProtocolError) as info:
        server_says(conv, b"z OK DEFLATE active\r\n")
    err = info.value
    assert err.fatal
    assert err.reply.startswith(b"* BYE ")
    with pytest.raises(ProtocolError):
        conv.next_client_event()


# ===================================================================== capabilities


@pytest.mark.parametrize(
    ("script", "caps"),
    [
        (
            [b"* OK [CAPABILITY IMAP4rev1 LITERAL+ IDLE] hi\r\n"],
            {"IMAP4REV1", "LITERAL+", "IDLE"},
        ),
        (
            [b"* OK hi\r\n", b"* CAPABILITY IMAP4rev1 AUTH=PLAIN starttls\r\n"],
            {"IMAP4REV1", "AUTH=PLAIN", "STARTTLS"},
        ),
        (
            [b"* OK hi\r\n", b"* OK [CAPABILITY IMAP4rev1 ID] still here\r\n"],
            {"IMAP4REV1", "ID"},
        ),
        (
            [b"* PREAUTH [CAPABILITY IMAP4rev2 ENABLE] welcome\r\n"],
            {"IMAP4REV2", "ENABLE"},
        ),
        (
            [
                b"* OK [CAPABILITY IMAP4rev1 LOGINDISABLED] hi\r\n",
                b"* CAPABILITY IMAP4rev1 IDLE\r\n",
            ],
            {"IMAP4REV1", "IDLE"},
        ),
    ],
)
def test_capabilities_are_learnt_from_the_server(script: list[bytes], caps: set[str]) -> None:
    conv = Conversation()
    for line in script:
        server_says(conv, line)
    assert conv.capabilities == frozenset(caps)


def test_capabilities_from_a_tagged_ok() -> None:
    conv = greeted(b"* OK [CAPABILITY IMAP4rev1 LOGINDISABLED STARTTLS] hi\r\n")
    client_says(conv, b"a001 LOGIN alice secret\r\n")
    server_says(conv, b"a001 OK [CAPABILITY IMAP4rev1 LITERAL- IDLE] Logged in\r\n")
    assert conv.capabilities == frozenset({"IMAP4REV1", "LITERAL-", "IDLE"})
    assert conv.client.max_nonsync_literal == 4096


def test_capabilities_from_a_tagged_ok_with_a_long_tag() -> None:
    # Tags are arbitrary astring-chars: their length must not hide the response code.
    tag = b"client-tag-0000000000000000000001"
    conv = greeted(b"* OK hi\r\n")
    client_says(conv, tag + b" LOGIN alice secret\r\n")
    server_says(conv, tag + b" OK [CAPABILITY IMAP4rev1 LITERAL-] Logged in\r\n")
    assert conv.capabilities == frozenset({"IMAP4REV1", "LITERAL-"})


def test_capabilities_from_a_tagged_no_are_ignored() -> None:
    conv = greeted(b"* OK [CAPABILITY IMAP4rev1 LITERAL+] hi\r\n")
    client_says(conv, b"a LOGIN alice wrong\r\n")
    server_says(conv, b"a NO [CAPABILITY IMAP4rev1] nope\r\n")
    assert conv.capabilities == frozenset({"IMAP4REV1", "LITERAL+"})


def test_no_capabilities_known_means_no_nonsync_limit() -> None:
    conv = greeted(b"* OK hi\r\n")
    assert conv.capabilities is None
    assert conv.client.max_nonsync_literal is None


LIT_MINUS = b"* OK [CAPABILITY IMAP4rev1 LITERAL-] hi\r\n"
LIT_PLUS = b"* OK [CAPABILITY IMAP4rev1 LITERAL+] hi\r\n"
NO_LIT = b"* OK [CAPABILITY IMAP4rev1] hi\r\n"


def test_literal_minus_allows_a_4096_byte_nonsync_literal() -> None:
    conv = logged_in(LIT_MINUS)
    data = b"a APPEND INBOX {4096+}\r\n" + b"m" * 4096 + b"\r\n"
    events, wait = client_says(conv, data)
    assert wait is NEED_DATA
    assert reassemble(events) == data


@pytest.mark.parametrize("announcement", [b"{4097+}", b"~{4097+}"])
def test_literal_minus_refuses_a_4097_byte_nonsync_literal_fatally(announcement: bytes) -> None:
    conv = logged_in(LIT_MINUS)
    with pytest.raises(LimitExceeded) as info:
        client_says(conv, b"a APPEND INBOX " + announcement + b"\r\n")
    err = info.value
    assert (err.fatal, err.limit, err.side) == (True, "max_nonsync_literal_minus", Side.CLIENT)
    assert err.reply.startswith(b"* BYE [TOOBIG]")
    with pytest.raises(LimitExceeded):
        conv.next_client_event()


def test_literal_minus_does_not_limit_sync_literals() -> None:
    conv = logged_in(LIT_MINUS)
    _, wait = client_says(conv, b"a APPEND INBOX {100000}\r\n")
    assert wait is PAUSED


def test_literal_plus_allows_large_nonsync_literals() -> None:
    conv = logged_in(LIT_PLUS)
    assert conv.client.max_nonsync_literal is None
    data = b"a APPEND INBOX {100000+}\r\n" + b"p" * 100000 + b"\r\n"
    events, wait = client_says(conv, data)
    assert wait is NEED_DATA
    assert reassemble(events) == data


def test_without_literal_plus_or_minus_nonsync_literals_are_refused() -> None:
    conv = logged_in(NO_LIT)
    assert conv.client.max_nonsync_literal == 0
    events, _ = client_says(conv, b"a APPEND INBOX {0+}\r\n\r\n")
    assert len(frames(events)) == 1
    with pytest.raises(LimitExceeded) as info:
        client_says(conv, b"b APPEND INBOX {1+}\r\nx\r\n")
    assert info.value.limit == "max_nonsync_literal_minus"


def test_later_capabilities_replace_earlier_ones() -> None:
    conv = greeted(LIT_MINUS)
    assert conv.client.max_nonsync_literal == 4096
    server_says(conv, b"* CAPABILITY IMAP4rev1 LITERAL+\r\n")
    assert conv.client.max_nonsync_literal is None


# ============================================================ literal limits and the phase

AUTH_LIMITS = Limits(max_literal_bytes_unauthenticated=100, max_literal_bytes=1000)


def test_client_literal_limit_before_authentication() -> None:
    conv = greeted(LIT_PLUS, AUTH_LIMITS)
    _, wait = client_says(conv, b"a LOGIN {100}\r\n")
    assert wait is PAUSED
    server_says(conv, b"a NO not now\r\n")
    conv.receive_client(b"b LOGIN {101}\r\nc NOOP\r\n")
    with pytest.raises(LimitExceeded) as info:
        conv.next_client_event()
    err = info.value
    assert (err.fatal, err.limit) == (False, "max_literal_bytes_unauthenticated")
    assert err.reply.startswith(b"b NO [TOOBIG]")
    events, _ = client_pending(conv)
    assert [f.tag for f in frames(events)] == [b"c"]


def test_client_literal_limit_after_authentication() -> None:
    conv = logged_in(LIT_PLUS, AUTH_LIMITS)
    _, wait = client_says(conv, b"a APPEND INBOX {1000}\r\n")
    assert wait is PAUSED
    server_says(conv, b"a NO not now\r\n")
    conv.receive_client(b"b APPEND INBOX {1001}\r\n")
    with pytest.raises(LimitExceeded) as info:
        conv.next_client_event()
    assert (info.value.fatal, info.value.limit) == (False, "max_literal_bytes")


def test_server_literal_limit_follows_the_phase() -> None:
    conv = greeted(LIT_PLUS, AUTH_LIMITS)
    with pytest.raises(LimitExceeded) as info:
        server_says(conv, b'* LIST () "/" {101}\r\n')
    assert info.value.limit == "max_literal_bytes_unauthenticated"
    conv = logged_in(LIT_PLUS, AUTH_LIMITS)
    data = b"* 1 FETCH (BODY[] {1000}\r\n" + b"b" * 1000 + b")\r\n"
    events, _ = server_says(conv, data)
    assert reassemble(events) == data


def test_limit_switches_when_login_completes_not_when_it_is_sent() -> None:
    conv = greeted(LIT_PLUS, AUTH_LIMITS)
    client_says(conv, b"a LOGIN alice secret\r\n")
    with pytest.raises(LimitExceeded):
        client_says(conv, b"b APPEND INBOX {500+}\r\n")


def test_logout_returns_to_unauthenticated_literal_limits() -> None:
    conv = logged_in(LIT_PLUS, AUTH_LIMITS)
    client_says(conv, b"z LOGOUT\r\n")
    server_says(conv, b"* BYE\r\nz OK\r\n")
    assert not conv.client.authenticated


# ===================================================================== replay helper


def test_replay_helper_collects_both_sides_and_ends_cleanly() -> None:
    result = replay(
        [
            (Side.SERVER, GREETING),
            (Side.CLIENT, b"a APPEND INBOX {5}\r\n"),
            (Side.SERVER, b"+ go\r\n"),
            (Side.CLIENT, b"hello\r\n"),
            (Side.SERVER, b"a OK done\r\n"),
        ]
    )
    assert reassemble(result.client) == bytes(result.client_input)
    assert reassemble(result.server) == bytes(result.server_input)
    assert [f.first for f in frames(result.client)] == [True, False]
    assert not any(isinstance(e, Failure) for e in result.client + result.server)
    assert result.conversation.pending == {}


def test_frames_compare_by_value() -> None:
    a = replay([(Side.CLIENT, b"a NOOP\r\n")]).client[0]
    b = replay([(Side.CLIENT, b"a NOOP\r\n")]).client[0]
    assert isinstance(a, Frame) and isinstance(b, Frame)
    assert a == b
    assert a != replay([(Side.CLIENT, b"b NOOP\r\n")]).client[0]


def test_relay_literal_continuations() -> None:
    """A "+" answering a segment the relay sent itself is the relay's, not stray, and a
    completion of that command (instead of "+") means no "+" is owed any more; another
    command's completion changes nothing."""
    from imapproxy.wire import Conversation, Hold

    conv = Conversation(nonsync_as_sync=True)
    conv.receive_server(b"* OK hi\r\n")
    conv.next_server_event()
    conv.receive_client(b"a1 NOOP\r\na2 RENAME {3}\r\nOld New\r\n")
    conv.expect_relay_continuation(b"a2")
    conv.receive_server(b"a1 OK done\r\n+ go\r\n")
    conv.next_server_event()
    conv.next_server_event()
    assert conv.continued is Hold.RELAY_LITERAL and not conv.stray_continuation
    conv.expect_relay_continuation(b"a2")
    conv.receive_server(b"a2 NO [TRYCREATE] no\r\n+ stray\r\n")
    conv.next_server_event()
    conv.next_server_event()
    assert conv.continued is None and conv.stray_continuation


def test_utf8_accept_is_followed() -> None:
    from imapproxy.wire import Conversation

    conv = Conversation()
    conv.receive_server(b"* OK hi\r\n* ENABLED CONDSTORE\r\n")
    conv.next_server_event()
    conv.next_server_event()
    assert not conv.utf8_accept
    conv.receive_server(b"* ENABLED utf8=accept\r\n")
    conv.next_server_event()
    assert conv.utf8_accept
