"""The session's timers (imapproxy.relay.timers) with an injected clock: which side's
timer runs, how long, when a touch moves it (coarsely), the login deadline and the end
each timer gives.  A real sans-IO Conversation supplies the protocol state; a plain
object stands in for the cancel scope (only its ``deadline`` is used)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from imapproxy.config import Timeouts
from imapproxy.relay.timers import AUTOLOGOUT, LOGIN_TIMEOUT_BYE, SessionTimers
from imapproxy.wire import Conversation, Frame
from imapproxy.wire.limits import Limits

T = Timeouts(
    idle_unauthenticated=100.0, idle_authenticated=1000.0, answer_timeout=50.0,
    login_timeout=60.0,
)  # fmt: skip


@dataclass
class Scope:
    deadline: float = math.inf


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make(greeting: bytes = b"* OK hi\r\n") -> tuple[SessionTimers, Conversation, Clock, Scope]:
    conv = Conversation(Limits(), nonsync_as_sync=True)
    conv.receive_server(greeting)
    assert isinstance(conv.next_server_event(), Frame)
    clock = Clock()
    timers = SessionTimers("s1", conv, T, clock)
    scope = Scope()
    timers.relay = scope
    return timers, conv, clock, scope


def client_sends(conv: Conversation, data: bytes) -> None:
    conv.receive_client(data)
    while isinstance(conv.next_client_event(), Frame):
        pass


def test_no_timer_before_the_relay_runs() -> None:
    timers, _, _, _ = make()
    timers.relay = None
    timers.touch(client=True)  # nothing to arm: no error, nothing kept
    assert timers.login_timeout_end(in_handshake=True).bye is None


def test_the_idle_timer_starts_at_the_first_touch_and_moves_coarsely() -> None:
    timers, _, clock, scope = make()
    timers.touch(client=True)
    assert scope.deadline == 1000 + 100
    clock.now = 1009  # less than a tenth of the timeout later: not moved
    timers.touch(client=True)
    assert scope.deadline == 1100
    clock.now = 1011
    timers.touch(client=True)
    assert scope.deadline == 1111
    clock.now = 1050
    timers.touch(client=True, progress=False)  # bytes, but no frame: no progress
    assert scope.deadline == 1111
    end = timers.timer_end()
    assert (end.reason, end.detail, end.bye) == ("idle_timeout", "idle for 100 s", AUTOLOGOUT)


def test_a_command_in_progress_hands_the_timer_to_the_server() -> None:
    timers, conv, clock, scope = make()
    timers.touch(client=True)
    clock.now = 1001
    client_sends(conv, b"a NOOP\r\n")
    timers.touch(client=True)
    assert scope.deadline == 1001 + 50  # the answer timeout, from now
    clock.now = 1005
    timers.touch()  # the server's data: moved only after a tenth (5 s)
    assert scope.deadline == 1051
    clock.now = 1007
    timers.touch()
    assert scope.deadline == 1057
    end = timers.timer_end()
    assert end.reason == "upstream_stalled"
    assert end.bye == b"* BYE [UNAVAILABLE] upstream stopped answering\r\n"


def test_a_client_stopped_mid_line_owes_and_the_servers_bytes_do_not_help() -> None:
    timers, conv, clock, scope = make()
    client_sends(conv, b"a NOOP\r\n")
    timers.client_partial = True  # the decoder holds the start of the next line
    timers.touch(client=True)
    assert scope.deadline == 1000 + 100  # the client's idle timer, not the answer's
    assert timers.client_owes()
    clock.now = 1090
    timers.touch()  # the server answers something: the client still owes
    assert scope.deadline == 1100
    end = timers.timer_end()
    assert (end.reason, end.bye) == ("client_stalled", AUTOLOGOUT)
    assert end.detail == "client stopped in the middle of a message for 100 s"


def test_a_client_waiting_for_a_continuation_owes_nothing() -> None:
    timers, conv, _, scope = make()
    client_sends(conv, b"a APPEND x {5}\r\n")  # paused until the server's "+"
    timers.client_partial = True
    assert not timers.client_owes()
    timers.touch(client=True)
    assert scope.deadline == 1000 + 50


def test_the_login_deadline_pauses_for_the_upstream_set_up_and_ends_at_login() -> None:
    timers, conv, clock, scope = make(b"* PREAUTH hi\r\n")
    timers.relay = None
    login = timers.login_deadline()
    assert login.deadline == 1000 + 60
    with timers.login_paused():
        assert login.deadline == math.inf
        clock.now = 1030
    assert login.deadline == 1060 + 30  # the set-up's 30 s are not the client's
    timers.relay = scope
    timers.touch(client=True)  # authenticated (PREAUTH): the deadline is over
    assert login.deadline == math.inf and timers.login is None
    assert scope.deadline == 1030 + 1000  # and the authenticated idle timeout runs
    assert conv.phase.name == "AUTHENTICATED"


def test_the_login_timeout_says_who_owed_the_next_bytes() -> None:
    timers, conv, _, _ = make()
    timers.relay = None
    end = timers.login_timeout_end(in_handshake=True)
    assert end.reason == "login_timeout" and end.bye is None  # nothing can be said in TLS
    assert end.detail == "not logged in after 60 s (client TLS handshake)"
    timers.relay = Scope()
    end = timers.login_timeout_end(in_handshake=False)
    assert end.detail == "not logged in after 60 s (client sent no login)"
    assert end.bye == LOGIN_TIMEOUT_BYE
    client_sends(conv, b"a NOOP\r\n")
    assert "(waiting for the server's answer)" in timers.login_timeout_end(
        in_handshake=False
    ).detail
    timers.client_partial = True
    assert "(client stalled in the middle of a message)" in timers.login_timeout_end(
        in_handshake=False
    ).detail

