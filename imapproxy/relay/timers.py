"""A session's timers: the relay's idle/answer timer and the login deadline.

One timer runs at a time, and it belongs to the side that owes the next bytes:

* the **client** owes them when no command is in progress, or when it is in the middle of
  a message: inside a line, sending a literal the server let come (or a ``{n+}`` one), or
  a SASL line the server asked for.  Then the idle timeout runs (``idle_unauthenticated``
  or ``idle_authenticated``), and only the client's *progress* moves it: a frame or a
  literal chunk out of the client decoder, not the raw bytes of a line that never ends.
  (So an inline literal, up to ``inline_literal_bytes``, counts once it is complete.)
* the **server** owes them when a command is in progress, the client owes nothing (it
  waits for a ``+`` or a tagged answer) and it is not inside IDLE.  Then the answer
  timeout runs, and the server's data moves it.  (A client waiting for an answer is not
  idle: RFC 9051 section 5.4 is about a client that sends nothing; one that gives up
  closes its connection, which the client pump still sees.)
* The timer changes hands whenever that state changes, and the new one starts then: time
  spent waiting for the other side is never charged.
* Besides, the **login deadline** (``login_timeout``) runs from connect until the session
  is authenticated (a tagged OK to LOGIN/AUTHENTICATE, or a PREAUTH greeting), and no byte
  moves it.  It covers the client's TLS handshake, STARTTLS and the whole pre-login
  relay; the upstream's set-up does not count (it has its own timeouts).

Deadlines are moved coarsely (at most every tenth of the timeout): this runs once per read.

The timers are cancel scopes' deadlines: the relay's scope (cancelled, the session ends
with :meth:`SessionTimers.timer_end`) and the login scope around the whole session
(:meth:`SessionTimers.login_timeout_end`).  What is decided here only needs a clock and
objects with a ``deadline``, so it is tested with an injected clock and plain objects.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator
from typing import Protocol

import trio

from ..config import Timeouts
from ..wire import Conversation, Hold, Phase
from .ends import SessionEnd, unavailable

log = logging.getLogger("imapproxy.session")

AUTOLOGOUT = b"* BYE Autologout; idle for too long\r\n"  # RFC 9051 section 7.1.5's text
LOGIN_TIMEOUT_BYE = b"* BYE Autologout; login timeout\r\n"


class Deadline(Protocol):
    """What the timers need of a cancel scope."""

    deadline: float


class SessionTimers:
    """The relay's timer (idle or answer, whichever side owes) and the login deadline."""

    __slots__ = (
        "_clock",
        "_timeout",
        "_touched",
        "_touched_waiting",
        "client_partial",
        "conv",
        "login",
        "relay",
        "session_id",
        "timeouts",
    )

    def __init__(
        self,
        session_id: str,
        conv: Conversation,
        timeouts: Timeouts,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self.session_id = session_id
        self.conv = conv
        self.timeouts = timeouts
        self._clock = clock
        self.relay: Deadline | None = None  # the relay's scope, once the relay runs
        self.login: Deadline | None = None  # the login deadline's scope, until login
        self.client_partial = False  # the client decoder holds the start of a line
        self._touched = -math.inf  # when the running timer started (coarse)
        self._touched_waiting = False  # ... whether it is the server's (answer_timeout)
        self._timeout = 0.0  # ... and its length

    def login_deadline(self) -> trio.CancelScope:
        """The login deadline's scope, running from now (the session's start)."""
        scope = trio.CancelScope(deadline=self._clock() + self.timeouts.login_timeout)
        self.login = scope
        return scope

    @contextlib.contextmanager
    def login_paused(self) -> Iterator[None]:
        """The upstream's set-up is not the client's time: the login deadline stops
        meanwhile (the set-up has its own timeouts)."""
        login = self.login
        assert login is not None
        deadline, login.deadline = login.deadline, math.inf
        paused = self._clock()
        try:
            yield
        finally:
            login.deadline = deadline + (self._clock() - paused)

    def touch(self, *, client: bool = False, progress: bool = True) -> None:
        """Re-arm the relay's timer (see the module docstring).

        Called by the client pump once per read (``client``; ``progress`` says whether the
        decoder gave out a frame or a literal chunk since) and for the server's data while
        a command is in progress and its completions.  It runs per read, so it is coarse:
        trio's deadline setter is costly, and a running timer moves at most every tenth of
        its length.
        """
        scope = self.relay
        if scope is None:
            return
        conv = self.conv
        if self.login is not None and conv.phase is not Phase.NOT_AUTHENTICATED:
            self.login.deadline = math.inf  # authenticated: the login deadline is over
            self.login = None
        if not client and conv.pending:
            # The server's progress with commands still in progress.  Only the client
            # pump (whose touch follows each of its reads, and each wake-up after a "+"
            # or a tagged answer) changes who owes, so: move the answer timer if it runs;
            # if the client's runs, the server's bytes do not move it.
            if self._touched_waiting:
                now = self._clock()
                if now - self._touched >= self._timeout / 10:
                    self._touched = now
                    scope.deadline = now + self._timeout
            return
        t = self.timeouts
        # Whether the server owes the next bytes: a command in progress, outside IDLE,
        # and the client owes nothing (``client_owes``, inlined: this is the hot path).
        waiting = False
        if conv.pending:
            dec = conv.client
            held = dec.waiting_for
            if held is not None:
                waiting = held is not Hold.IDLE
            else:  # not paused: in IDLE, in AUTHENTICATE or mid-message, the client owes
                waiting = not (self.client_partial or dec.in_message or dec.exchange)
        if waiting:
            timeout = t.answer_timeout
        elif conv.phase is Phase.NOT_AUTHENTICATED:
            timeout = t.idle_unauthenticated
        else:
            timeout = t.idle_authenticated
        now = self._clock()
        if waiting is not self._touched_waiting:
            start = now  # the timer changes hands: the new one starts now
        elif progress and (client or waiting):
            # progress by the side that owes (or a new command while waiting)
            if timeout == self._timeout and now - self._touched < timeout / 10:
                return
            start = now
        elif timeout != self._timeout:
            start = self._touched  # e.g. logged in while the client is mid-line
        else:
            return  # no progress by the side that owes: the deadline stays
        self._touched = start
        self._touched_waiting = waiting
        self._timeout = timeout
        scope.deadline = start + timeout

    def client_owes(self) -> bool:
        """Whether the client is in the middle of sending something: inside a line, a
        literal the server let come (or a ``{n+}`` one), or a SASL line asked for."""
        dec = self.conv.client
        if dec.waiting_for is not None:
            return False  # paused: the server owes its "+" or tagged answer
        return self.client_partial or dec.in_message or dec.exchange is Hold.AUTHENTICATE

    def timer_end(self) -> SessionEnd:
        """Why the relay's timer ran out, naming the side that stalled."""
        if self._touched_waiting:
            log.warning(
                "session %s: upstream silent for %.0f s with a command in progress",
                self.session_id,
                self._timeout,
            )
            return unavailable("upstream_stalled", "upstream stopped answering")
        if self.client_owes():
            return SessionEnd(
                "client_stalled",
                f"client stopped in the middle of a message for {self._timeout:g} s",
                AUTOLOGOUT,
            )
        return SessionEnd("idle_timeout", f"idle for {self._timeout:g} s", AUTOLOGOUT)

    def login_timeout_end(self, *, in_handshake: bool) -> SessionEnd:
        """The login deadline passed; the detail says who owed the next bytes.
        ``in_handshake``: inside the client's TLS handshake, where nothing can be said."""
        if self.relay is None:
            state = "client TLS handshake"
        elif self.client_owes():
            state = "client stalled in the middle of a message"
        elif self.conv.pending and not self.conv.client.idling:
            state = "waiting for the server's answer"
        else:
            state = "client sent no login"
        timeout = self.timeouts.login_timeout
        log.info("session %s: not logged in after %g s (%s)", self.session_id, timeout, state)
        bye: bytes | None = None if in_handshake else LOGIN_TIMEOUT_BYE
        return SessionEnd("login_timeout", f"not logged in after {timeout:g} s ({state})", bye)
