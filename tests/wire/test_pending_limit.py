"""The table of pending commands is bounded (Limits.max_pending_commands)."""

from __future__ import annotations

import pytest

from imapproxy.wire import NEED_DATA, Conversation, LimitExceeded, Limits


def _drain_client(conv: Conversation) -> int:
    frames = 0
    while conv.next_client_event() is not NEED_DATA:
        frames += 1
    return frames


def test_pending_commands_at_the_limit_pass_and_one_more_is_fatal() -> None:
    conv = Conversation(Limits(max_pending_commands=3))
    conv.receive_client(b"a NOOP\r\nb NOOP\r\nc NOOP\r\n")
    assert _drain_client(conv) == 3
    assert len(conv.pending) == 3
    conv.receive_client(b"d NOOP\r\n")
    with pytest.raises(LimitExceeded) as info:
        conv.next_client_event()
    assert info.value.limit == "max_pending_commands"
    assert info.value.fatal
    assert info.value.reply.startswith(b"* BYE ")


def test_completed_commands_make_room_again() -> None:
    conv = Conversation(Limits(max_pending_commands=2))
    conv.receive_server(b"* OK ready\r\n")
    while conv.next_server_event() is not NEED_DATA:
        pass
    for n in range(10):
        conv.receive_client(b"t%d NOOP\r\n" % n)
        assert _drain_client(conv) == 1
        conv.receive_server(b"t%d OK done\r\n" % n)
        while conv.next_server_event() is not NEED_DATA:
            pass
    assert conv.pending == {}
