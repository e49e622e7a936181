"""One proxied IMAP session on Trio: client leg, upstream leg, two pumps in one nursery.

Theory of operation
-------------------
* Set-up, in order: TLS handshake with the client (implicit-TLS listeners), connect to the
  upstream (TLS or STARTTLS as configured), read its greeting, send the greeting on to the
  client with its capabilities mediated.  Any failure before the greeting gives the client
  ``* BYE [UNAVAILABLE] <reason>`` and closes.
* Then two pumps run in one nursery: client→upstream and upstream→client.  Each feeds the
  bytes it reads into the shared sans-IO :class:`~imapproxy.wire.Conversation` and forwards
  the frames that come out: their original bytes, unchanged, except the capability lists
  (see :mod:`imapproxy.capabilities`), the commands the proxy answers itself (STARTTLS,
  COMPRESS, and LOGIN/AUTHENTICATE while TLS is required first), and non-synchronising
  literals (below).
* A non-synchronising literal ``{n+}`` goes upstream as ``{n}``: a server reads a ``{n+}``
  literal only if its parser gets that far, and otherwise runs the literal's bytes as
  commands (verified with Dovecot), so the proxy could not know how the server reads it.
  With ``{n}`` the server decides visibly: its ``+`` (absorbed here; the client never asked
  for one) lets the literal through, and a tagged NO/BAD instead means the decoder consumes
  the literal and the rest of the message, which the client has sent regardless.  LITERAL+
  and LITERAL- are therefore offered to clients exactly as the server offers them.  The
  cost is one upstream round trip per such literal, which the client does not wait for.
* When the client decoder pauses (it waits for the server's ``+`` or tagged answer), the
  client pump goes on reading - the decoder holds what arrives, up to ``max_held_bytes``,
  and a client that vanishes is noticed - until the server pump, which processes the answer
  *before* forwarding it, cancels that read.  So the client's next bytes are always read
  the way the server will read them.  (After a ``{n+}`` sent on as ``{n}`` the pump does
  not read: the client is sending the literal itself, which may be large.)
* The upstream pump holds the client's write lock from the first to the last part of a
  message, so nothing the proxy says itself (a local reply, a BYE) can land inside a
  relayed response or its literal; a BYE is only sent at a message boundary.
* Output is batched: frames are collected while the decoder has complete frames buffered
  and written in one ``send_all`` when it needs more input, so pipelined commands cost one
  write per read, not one per frame.
* Either pump ending (EOF, error, LOGOUT) cancels the nursery; ``finally`` closes both
  streams.  Nothing that happens here can reach another session or the listener.

Timers
------
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

End reasons
-----------
Every session ends with one reason from ``END_REASONS`` (a closed set, fit for metric
labels; the end line's ``detail`` says more).  Timeouts name the side that stalled:
``idle_timeout`` / ``client_stalled`` / ``login_timeout`` are the client's,
``upstream_stalled`` the server's.
"""

from __future__ import annotations

import collections
import logging
import math
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

import trio

from ..config import ListenerConfig, ProxyConfig
from ..filters.api import SessionEndInfo, SessionInfo, SessionView, TlsInfo
from ..filters.chain import FilterChain
from ..filters.views import command_view, decode_mailbox
from ..logsafe import MAX_DETAIL, safe
from ..net.busypoll import BusyPoll
from ..net.transport import TlsStream
from ..wire import (
    NEED_DATA,
    PAUSED,
    Conversation,
    EndOfStream,
    Frame,
    FrameKind,
    Hold,
    LiteralChunk,
    Phase,
    ProtocolError,
)
from ..wire.conversation import AUTHENTICATING_COMMANDS
from .ends import END_REASONS, SessionEnd, unavailable
from .events import NO_EVENTS, ProxyEvents
from .filtering import Filtering
from .gate import Forward, as_sync
from .login import LoginTracker
from .upstream import UpstreamSetup

log = logging.getLogger("imapproxy.session")

__all__ = ["END_REASONS", "Session", "SessionEnd", "SessionStats", "unavailable"]



_AUTOLOGOUT = b"* BYE Autologout; idle for too long\r\n"  # RFC 9051 section 7.1.5's text
_LOGIN_TIMEOUT_BYE = b"* BYE Autologout; login timeout\r\n"
_SHOWN_BYE = 120  # characters of a server's BYE text shown in the end line


@dataclass(slots=True)
class SessionStats:
    bytes_from_client: int = 0
    bytes_from_upstream: int = 0
    starttls_injected: int = 0
    bytes_to_client: int = 0
    bytes_to_upstream: int = 0


class Session:
    def __init__(
        self,
        *,
        session_id: str,
        stream: trio.abc.Stream,
        peer: str,
        listener: ListenerConfig,
        config: ProxyConfig,
        server_ssl: ssl.SSLContext | None,
        upstream_ssl: ssl.SSLContext | None,
        filters: FilterChain,
        filter_errors: collections.Counter[str] | None = None,
        busy_poll: BusyPoll | None = None,
        events: ProxyEvents = NO_EVENTS,
    ) -> None:
        self.id = session_id
        self.events = events
        self.client: trio.abc.Stream = stream
        self.upstream: trio.abc.Stream | None = None
        self.peer = peer
        self.listener = listener
        self.config = config
        self.server_ssl = server_ssl
        self.upstream_ssl = upstream_ssl
        self.busy_poll = busy_poll
        self.chain = filters
        self.filter_errors = filter_errors if filter_errors is not None else collections.Counter()
        self.filtering: Filtering | None = None  # once set up (see _open_filters)
        self.conv = Conversation(config.limits, nonsync_as_sync=True)
        self.stats = SessionStats()
        self.client_tls: str | None = None
        self.user: str | None = None
        self.logins = LoginTracker(config.limits)
        self._selected: bytes | None = None  # the selected mailbox, as last shown to filters
        self._segment_scope: trio.CancelScope | None = None  # a client read meanwhile
        self._client_lock = trio.Lock()
        self._relay_scope: trio.CancelScope | None = None
        self._setup_scope = trio.CancelScope()
        self._touched = -math.inf  # when the running timer started (coarse)
        self._touched_waiting = False  # ... whether it is the server's (answer_timeout)
        self._timeout = 0.0  # ... and its length
        self._login_scope: trio.CancelScope | None = None  # the login deadline, until login
        self._client_partial = False  # the client decoder holds the start of a line
        self._paused_scope: trio.CancelScope | None = None  # a read while the client waits
        self._no_pending: trio.Event | None = None  # set on each tagged completion
        self._client_boundary = True  # the client's stream is between two messages
        self._holding_client = False  # the upstream pump holds the client lock mid-message
        self._end: SessionEnd | None = None
        self._drop_tag: bytes | None = None  # rest of a refused message is not forwarded

    # ------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        started = time.monotonic()
        self.events.session_opened(self.id, self.listener, self.stats)
        end = SessionEnd("cancelled", "the proxy stopped")
        try:
            end = self._named_bye(await self._run())
        except Exception as exc:  # one session's bug must never reach the listener
            log.exception("session %s: internal error", self.id)
            end = SessionEnd("error", f"internal error: {type(exc).__name__}")
            await self._farewell(b"* BYE [UNAVAILABLE] internal proxy error\r\n")
        finally:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(self.client)
                if self.upstream is not None:
                    await trio.aclose_forcefully(self.upstream)
            log.info(
                "session %s end peer=%s listener=%s tls=%s user=%s in=%d out=%d "
                "starttls_discarded=%d duration=%.3fs reason=%s detail=%s",
                self.id,
                safe(self.peer, spaces=False),
                safe(self.listener.name, spaces=False),
                self.client_tls or "none",
                safe(self.user or "-", spaces=False),
                self.stats.bytes_from_client,
                self.stats.bytes_from_upstream,
                self.stats.starttls_injected,
                time.monotonic() - started,
                end.reason,
                safe(end.detail, MAX_DETAIL),
            )
            self.events.session_closed(self.id, end.reason, time.monotonic() - started)
            if self.filtering is not None:
                self.filtering.ended(
                    SessionEndInfo(
                        end.reason,
                        safe(end.detail, MAX_DETAIL),
                        self.stats.bytes_from_client,
                        self.stats.bytes_from_upstream,
                        time.monotonic() - started,
                    )
                )
            # The end is an exception whose traceback holds this session's frames, and the
            # filters hold the session's methods: cycles that would keep the whole
            # session (TLS objects, buffers) until the next full garbage collection.
            self._end = None
            self.filtering = None

    def shutdown(self, text: str = "shutting down") -> None:
        """Ask the session to say BYE and close (graceful shutdown, past the drain)."""
        if self._end is None:
            self._end = unavailable("shutdown", text)
        if self._relay_scope is not None:
            self._relay_scope.cancel()
        else:
            self._setup_scope.cancel()

    async def _run(self) -> SessionEnd:
        log.info("session %s start peer=%s listener=%s", self.id, self.peer, self.listener.name)
        timeout = self.config.timeouts.login_timeout
        with trio.CancelScope(deadline=trio.current_time() + timeout) as login:
            self._login_scope = login
            return await self._session(login)
        # the login deadline passed
        end = self._end or self._login_timeout_end()
        await self._farewell(end.bye)
        return end

    async def _session(self, login: trio.CancelScope) -> SessionEnd:
        greeting = None
        with self._setup_scope:
            try:
                if self.listener.implicit_tls:
                    await self._start_client_tls()
                # The upstream's set-up is not the client's time: the login deadline
                # stops meanwhile (the set-up has its own timeouts).
                deadline, login.deadline = login.deadline, math.inf
                paused = trio.current_time()
                try:
                    greeting = await self._set_up()
                finally:
                    login.deadline = deadline + (trio.current_time() - paused)
            except SessionEnd as end:
                await self._farewell(end.bye)
                return end
        if greeting is None:  # shutdown during set-up
            assert self._end is not None
            await self._farewell(self._end.bye)
            return self._end
        with trio.CancelScope() as scope:
            self._relay_scope = scope
            if self._end is not None:  # shutdown requested during set-up
                scope.cancel()
            self._touch(client=True)  # the client's idle clock starts with the greeting
            try:
                filtering = self._open_filters()
                sent = filtering.response(greeting, greeting.raw)
                await self._send_client(greeting.raw if sent is None else sent)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._guard, self._pump_client, nursery.cancel_scope)
                    nursery.start_soon(self._guard, self._pump_upstream, nursery.cancel_scope)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self._end = self._end or SessionEnd("connection_lost", f"connection lost: {exc}")
            except SessionEnd as end:  # a filter ended it before the relay began
                self._end = self._end or end
        if self._end is None:
            if scope.cancelled_caught:
                self._end = self._timer_end()
            else:
                self._end = SessionEnd("closed", "closed")
        await self._farewell(self._end.bye)
        return self._end

    def _timer_end(self) -> SessionEnd:
        """Why the relay's timer ran out, naming the side that stalled."""
        if self._touched_waiting:
            log.warning(
                "session %s: upstream silent for %.0f s with a command in progress",
                self.id,
                self._timeout,
            )
            return unavailable("upstream_stalled", "upstream stopped answering")
        if self._client_owes():
            return SessionEnd(
                "client_stalled",
                f"client stopped in the middle of a message for {self._timeout:g} s",
                _AUTOLOGOUT,
            )
        return SessionEnd("idle_timeout", f"idle for {self._timeout:g} s", _AUTOLOGOUT)

    def _login_timeout_end(self) -> SessionEnd:
        """The login deadline passed; the detail says who owed the next bytes."""
        if self._relay_scope is None:
            state = "client TLS handshake"
        elif self._client_owes():
            state = "client stalled in the middle of a message"
        elif self.conv.pending and not self.conv.client.idling:
            state = "waiting for the server's answer"
        else:
            state = "client sent no login"
        timeout = self.config.timeouts.login_timeout
        log.info("session %s: not logged in after %g s (%s)", self.id, timeout, state)
        bye: bytes | None = _LOGIN_TIMEOUT_BYE
        if isinstance(self.client, TlsStream) and self.client_tls is None:
            bye = None  # inside a TLS handshake: nothing can be said
        return SessionEnd("login_timeout", f"not logged in after {timeout:g} s ({state})", bye)

    def _named_bye(self, end: SessionEnd) -> SessionEnd:
        """A session that ended after the server's own BYE (it shut down, or timed the
        session out) is the server's doing, not a LOGOUT."""
        conv = self.conv
        if end.reason != "logout" or conv.bye is None or conv.bye_requested:
            return end
        text = safe(conv.bye.split(b" ", 2)[-1].rstrip(b"\r\n"), _SHOWN_BYE)
        return SessionEnd("upstream_bye", f"upstream said BYE: {text}")

    # ------------------------------------------------------------ filters

    def _open_filters(self) -> Filtering:
        """The session's filters, once the upstream greeted (raises SessionEnd when a
        filter refuses the session)."""
        host, _, port = self.peer.rpartition(":")
        info = SessionInfo(
            self.id,
            host.strip("[]"),
            int(port) if port.isdigit() else 0,
            self.listener.name,
            starttls=not self.listener.implicit_tls and self.server_ssl is not None,
        )
        view = SessionView(info, tls=self._tls_info(), capabilities=self.conv.capabilities)
        view.phase = self.conv.phase
        filters = self.chain.open(info, self._filter_error)
        self.filtering = Filtering(
            filters,
            view,
            self.conv,
            self.config.limits,
            send_client=self._send_client,
            send_upstream=self._send_upstream,
            refused=self._refused_by_filter,
            wait_segment=self._await_segment,
            segment_answered=self._wake_segment_wait,
        )
        self.filtering.started()
        return self.filtering

    async def _await_segment(self, done: trio.Event) -> None:
        """Wait for the server's answer to a segment of a command the relay sends in
        pieces.  The server owes it (its timer runs: a silent one is upstream_stalled);
        the client is still read, so one that vanishes is noticed at once, and what it
        pipelines meanwhile waits in the decoder (at most max_held_bytes, then no more is
        read until the answer comes)."""
        self._client_partial = False
        self._touch(client=True)
        held = 0
        limit = self.config.limits.max_held_bytes
        read_size = self.config.session_limits.guarded_read_size
        while not done.is_set():
            if held >= limit:
                await done.wait()
                return
            with trio.CancelScope() as scope:
                self._segment_scope = scope
                data = await self._receive(self.client, read_size, "client")
                if not data:
                    raise SessionEnd(
                        "client_closed", "client closed the connection during its command"
                    )
                self.stats.bytes_from_client += len(data)
                held += len(data)
                self.conv.receive_client(data)
            self._segment_scope = None

    def _wake_segment_wait(self) -> None:
        scope = self._segment_scope
        if scope is not None:
            self._segment_scope = None
            scope.cancel()

    def _refused_by_filter(self, tag: bytes) -> None:
        self.logins.forget(tag)
        self.events.command_blocked(self.id, tag)

    def _filter_error(self, name: str, hook: str, exc: BaseException) -> None:
        self.filter_errors[name] += 1
        # the exception's text may quote what the filter was looking at: escaped, cut
        log.error(
            "session %s: filter %s failed in %s: %s: %s",
            self.id,
            safe(name),
            hook,
            type(exc).__name__,
            safe(str(exc), MAX_DETAIL),
        )

    def _tls_info(self) -> TlsInfo | None:
        client = self.client
        if self.client_tls is None or not isinstance(client, TlsStream):
            return None
        cipher = client.cipher()
        return TlsInfo(self.client_tls, cipher[0] if cipher else None, None)

    # ------------------------------------------------------------ TLS, upstream

    async def _start_client_tls(self) -> None:
        assert self.server_ssl is not None
        tls = TlsStream(self.client, self.server_ssl, server_side=True)
        self.client = tls
        try:
            with trio.fail_after(self.config.timeouts.tls_handshake):
                await tls.do_handshake()
        except trio.TooSlowError:
            self.events.tls_failed(self.id, "client", None)
            raise SessionEnd("tls_failed", "client TLS handshake timed out") from None
        except trio.BrokenResourceError as exc:
            cause = exc.__cause__ or exc
            self.events.tls_failed(self.id, "client", cause)
            raise SessionEnd("tls_failed", f"client TLS handshake failed: {cause}") from None
        self.client_tls = tls.version() or "TLS"
        self.events.tls_handshake(self.id, "client", self.client_tls)
        if self.filtering is not None:
            self.filtering.view.tls = self._tls_info()

    async def _set_up(self) -> Frame:
        """The upstream, up to its greeting (see :mod:`.upstream`)."""
        setup = UpstreamSetup(
            self.config, self.conv, self.stats, self.upstream_ssl, self.busy_poll, self.id,
            self.events,
        )
        try:
            return await setup.open()
        finally:
            self.upstream = setup.stream  # closed by run() whatever happened

    # ------------------------------------------------------------ pumps

    def _touch(self, *, client: bool = False, progress: bool = True) -> None:
        """Re-arm the relay's timer (see "Timers" in the module docstring).

        Called by the client pump once per read (``client``; ``progress`` says whether the
        decoder gave out a frame or a literal chunk since) and for the server's data while
        a command is in progress and its completions.  It runs per read, so it is coarse:
        trio's deadline setter is costly, and a running timer moves at most every tenth of
        its length.
        """
        scope = self._relay_scope
        if scope is None:
            return
        conv = self.conv
        if self._login_scope is not None and conv.phase is not Phase.NOT_AUTHENTICATED:
            self._login_scope.deadline = math.inf  # authenticated: the login deadline is over
            self._login_scope = None
        if not client and conv.pending:
            # The server's progress with commands still in progress.  Only the client
            # pump (whose touch follows each of its reads, and each wake-up after a "+"
            # or a tagged answer) changes who owes, so: move the answer timer if it runs;
            # if the client's runs, the server's bytes do not move it.
            if self._touched_waiting:
                now = trio.current_time()
                if now - self._touched >= self._timeout / 10:
                    self._touched = now
                    scope.deadline = now + self._timeout
            return
        t = self.config.timeouts
        # Whether the server owes the next bytes: a command in progress, outside IDLE,
        # and the client owes nothing (``_client_owes``, inlined: this is the hot path).
        waiting = False
        if conv.pending:
            dec = conv.client
            held = dec.waiting_for
            if held is not None:
                waiting = held is not Hold.IDLE
            else:  # not paused: in IDLE, in AUTHENTICATE or mid-message, the client owes
                waiting = not (self._client_partial or dec.in_message or dec.exchange)
        if waiting:
            timeout = t.answer_timeout
        elif conv.phase is Phase.NOT_AUTHENTICATED:
            timeout = t.idle_unauthenticated
        else:
            timeout = t.idle_authenticated
        now = trio.current_time()
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

    def _client_owes(self) -> bool:
        """Whether the client is in the middle of sending something: inside a line, a
        literal the server let come (or a ``{n+}`` one), or a SASL line asked for."""
        dec = self.conv.client
        if dec.waiting_for is not None:
            return False  # paused: the server owes its "+" or tagged answer
        return self._client_partial or dec.in_message or dec.exchange is Hold.AUTHENTICATE

    async def _guard(
        self, pump: Callable[[], Awaitable[None]], nursery_scope: trio.CancelScope
    ) -> None:
        """Run one pump; whichever ends first ends the session (and the other pump)."""
        try:
            await pump()
        except SessionEnd as end:
            self._end = self._end or end
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._end = self._end or SessionEnd("connection_lost", f"connection lost: {exc}")
        finally:
            nursery_scope.cancel()

    async def _pump_client(self) -> None:
        conv = self.conv
        filtering = self.filtering
        assert filtering is not None
        gate = filtering.gate
        out: list[bytes] = []  # frames collected for one write upstream
        size = 0
        read_size = self.config.session_limits.read_size
        progressed = False  # a frame or literal chunk since the timer was last told

        async def flush() -> None:
            nonlocal size
            if out:
                await self._send_upstream(out)
                out.clear()
                size = 0

        while True:
            try:
                ev = conv.next_client_event()
            except ProtocolError as exc:
                await flush()
                self.events.protocol_error(self.id, "client", exc.limit or "framing")
                if exc.fatal:
                    log.warning("session %s: client protocol error: %s", self.id, exc.message)
                    raise SessionEnd("client_protocol_error", exc.message, exc.reply) from None
                log.info("session %s: refused client command: %s", self.id, exc.message)
                progressed = True  # a whole line, refused
                if exc.tag is not None:
                    conv.pending.pop(exc.tag, None)
                await self._send_client(exc.reply)
                continue
            if ev is NEED_DATA:
                # The decoder took all it could: what it still holds is a partial line
                # (or literal), which the client owes.
                self._client_partial = conv.client.buffered > 0
                self._touch(client=True, progress=progressed)
                progressed = False
                await flush()
                await self._read_client(read_size)
                continue
            if ev is PAUSED:
                await flush()
                if conv.client.waiting_for is None:
                    continue  # released while we were writing
                self._client_partial = False
                self._touch(client=True, progress=progressed)
                progressed = False
                # Keep reading while the client waits for the server, so that a client
                # that vanishes is noticed; the decoder holds what arrives (bounded by
                # max_held_bytes).  The server pump cancels this read when its answer
                # releases the decoder.
                with trio.CancelScope() as paused:
                    self._paused_scope = paused
                    if conv.client.waiting_for is Hold.NONSYNC_LITERAL:
                        await trio.sleep_forever()  # the literal is coming: no more now
                    else:
                        await self._read_client(read_size)
                self._paused_scope = None
                continue
            if type(ev) is Frame:
                progressed = True
                if self._drop_tag is not None:
                    if ev.tag == self._drop_tag and not ev.first:
                        if ev.final:
                            self._drop_tag = None
                        continue
                    self._drop_tag = None
                if ev.kind is FrameKind.COMMAND:
                    refusal = self._unsafe_command(ev)
                    if refusal is not None:
                        await self._refuse(ev, refusal)
                        continue
                if ev.kind is FrameKind.COMMAND:
                    if ev.first and ev.name == "STARTTLS":
                        # what came before goes upstream first: the answer must not
                        # overtake the commands ahead of it
                        await flush()
                        self._touch(client=True)  # the answer may take a while
                        progressed = False
                        await self._starttls(ev)
                        continue
                    if ev.first:
                        self.events.command_started(self.id, ev.tag, ev.name)
                    if ev.sensitive:
                        self.logins.note(ev)
                    decision = gate.command_part(ev)  # (sync: the common case costs no await)
                    if decision is None:
                        raw = as_sync(ev) if ev.nonsync else ev.raw
                    elif type(decision) is Forward and len(decision.segments) == 1:
                        raw = decision.segments[0]
                    else:
                        await filtering.act(decision, flush)
                        continue
                else:  # a SASL line or IDLE's DONE
                    if ev.sensitive:
                        self.logins.note(ev)
                    raw = filtering.client_line(ev)
                out.append(raw)
                size += len(raw)
            elif type(ev) is LiteralChunk:
                progressed = True
                if self._drop_tag is not None:
                    continue
                out.append(ev.data)
                size += len(ev.data)
            else:  # EndOfStream
                await flush()
                if conv.phase is Phase.LOGOUT:
                    raise SessionEnd("logout", "client logged out")
                raise SessionEnd(
                    "client_closed",
                    "client closed the connection" + ("" if ev.clean else " mid-message"),
                )
            if size >= read_size:
                await flush()

    async def _read_client(self, read_size: int) -> None:
        """Bytes from the client into the decoder.  They do not move the idle timer by
        themselves: only what the decoder makes of them does (``_pump_client``)."""
        conv = self.conv
        if conv.phase is Phase.NOT_AUTHENTICATED or conv.client.waiting_for is not None:
            # Nothing large is legitimate now; what a stalled session holds stays small.
            read_size = min(read_size, self.config.session_limits.guarded_read_size)
        data = await self._receive(self.client, read_size, "client")
        self.stats.bytes_from_client += len(data)
        self._client_partial = False  # known again at the next NEED_DATA
        self.conv.receive_client(data)

    async def _pump_upstream(self) -> None:
        conv = self.conv
        filtering = self.filtering
        assert filtering is not None
        wants = filtering.filters.wants_response  # (per response: one call)
        assert self.upstream is not None
        out: list[bytes] = []  # bytes collected for one write to the client
        size = 0
        boundary = True  # whether `out` ends at the end of a message
        read_size = self.config.session_limits.read_size

        async def flush() -> None:
            nonlocal size
            if out:
                await self._flush_to_client(out, boundary)
                out.clear()
                size = 0

        try:
            while True:
                try:
                    ev = conv.next_server_event()
                except ProtocolError as exc:
                    await flush()
                    self.events.protocol_error(self.id, "upstream", exc.limit or "framing")
                    log.warning("session %s: upstream protocol error: %s", self.id, exc.message)
                    raise SessionEnd(
                        "upstream_protocol_error",
                        exc.message,
                        b"* BYE [UNAVAILABLE] upstream protocol error\r\n",
                    ) from None
                if ev is NEED_DATA:
                    await flush()
                    data = await self._receive(self.upstream, read_size, "upstream")
                    self.stats.bytes_from_upstream += len(data)
                    if conv.pending and not conv.client.idling:
                        self._touch()  # data for a command in progress
                    conv.receive_server(data)
                    continue
                if type(ev) is Frame:
                    kind = ev.kind
                    if kind is FrameKind.STATUS:
                        if ev.tag is not None and ev.first:
                            end = self._completed(ev)
                            if end is not None:
                                await flush()
                                raise end
                    elif kind is FrameKind.CONTINUATION:
                        if ev.first:
                            self._wake_client()
                        if conv.continued is Hold.NONSYNC_LITERAL:
                            continue  # answers the {n} we sent for the client's {n+}
                        if conv.continued is Hold.RELAY_LITERAL:
                            filtering.relay_continuation()  # answers the relay's segment
                            continue
                        if conv.stray_continuation:
                            # A "+" nothing asked for: the server reads the client's
                            # bytes differently from the proxy.  Relaying on could let
                            # them run as commands the proxy never saw.
                            await flush()
                            self.events.protocol_error(self.id, "upstream", "stray_continuation")
                            log.warning(
                                "session %s: upstream sent a continuation request that "
                                "no command asked for",
                                self.id,
                            )
                            raise SessionEnd(
                                "upstream_desync",
                                "unexpected continuation request from upstream",
                                b"* BYE [UNAVAILABLE] proxy and server out of step\r\n",
                            )
                    raw = ev.raw
                    if ev.first:
                        if wants(ev.kind, ev.name, raw):
                            try:
                                raw = filtering.response(ev, raw)
                            except SessionEnd:
                                await flush()
                                raise
                            if raw is None:  # dropped by a filter
                                continue
                    elif filtering.dropping:  # the rest of a response a filter dropped
                        filtering.dropping = not ev.final
                        continue
                    out.append(raw)
                    size += len(raw)
                    boundary = ev.final
                elif type(ev) is LiteralChunk:
                    if filtering.dropping:
                        continue
                    out.append(ev.data)
                    size += len(ev.data)
                    boundary = False
                elif type(ev) is EndOfStream:
                    await flush()
                    if conv.phase is Phase.LOGOUT:
                        raise SessionEnd("logout", "logged out")
                    raise unavailable("upstream_closed", "upstream closed the connection")
                if size >= read_size:
                    await flush()
        finally:
            if self._holding_client:
                self._holding_client = False
                self._client_lock.release()

    async def _flush_to_client(self, parts: list[bytes], boundary: bool) -> None:
        """Write relayed bytes to the client.  Mid-message, the client lock stays held until
        the message is complete, so nothing the proxy says itself (a local reply, a BYE)
        can land inside a server response or its literal."""
        if not self._holding_client:
            await _acquire(self._client_lock)
            self._holding_client = True
        self._client_boundary = False
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        self.stats.bytes_to_client += len(data)
        await self.client.send_all(data)
        if boundary:
            self._client_boundary = True
            self._holding_client = False
            self._client_lock.release()

    async def _receive(self, stream: trio.abc.Stream, n: int, who: str) -> bytes:
        try:
            return bytes(await stream.receive_some(n))
        except trio.BrokenResourceError as exc:
            if self.conv.phase is Phase.LOGOUT:
                raise SessionEnd("logout", "logged out") from None
            if who == "client":
                raise SessionEnd("client_closed", f"client connection broken: {exc}") from None
            raise unavailable("upstream_closed", "upstream connection broken") from None

    def _wake_client(self) -> None:
        paused = self._paused_scope
        if paused is not None and self.conv.client.waiting_for is None:
            self._paused_scope = None
            paused.cancel()

    def _completed(self, frame: Frame) -> SessionEnd | None:
        """A tagged completion from upstream (after Conversation processed it).  Returns
        an end when a filter ends the session on login."""
        self._wake_client()
        if self._no_pending is not None:
            self._no_pending.set()
        tag = frame.tag
        assert tag is not None
        filtering = self.filtering
        assert filtering is not None
        filtering.completed(frame)
        view = filtering.view
        conv = self.conv
        view.phase = conv.phase
        view.utf8 = conv.utf8_accept
        if conv.selected is not self._selected:  # (decoded only when it changes)
            self._selected = conv.selected
            view.selected = _mailbox_name(conv.selected, view.utf8)
        self.events.command_completed(self.id, tag, frame.name)
        pending = self.logins.completed(tag, frame.name)
        end = None
        if pending is not None:
            self.user, mechanism = pending
            log.info("session %s: authenticated as %s", self.id, safe(self.user))
            view.user = self.user
            view.mechanism = mechanism
            view.capabilities = self.conv.capabilities
            end = filtering.authenticated()
        self._touch()
        return end

    # ------------------------------------------------------------ local answers

    async def _starttls(self, frame: Frame) -> None:
        """STARTTLS is the relay's own: it answers it and switches the client's stream
        (RFC 9051 section 6.2.1).  Never forwarded."""
        tag = frame.tag or b"*"
        conv = self.conv
        filtering = self.filtering
        assert filtering is not None
        if not frame.final:  # "STARTTLS {5}": never forwarded, never a TLS switch
            await self._refuse(frame, "STARTTLS takes no literal")
            return
        if frame.raw.partition(b" ")[2][8:] not in (b"\r\n", b"\n"):
            # STARTTLS takes no arguments: "a STARTTLS x", even a trailing space, is
            # refused, never a TLS switch
            await self._refuse(frame, "STARTTLS takes no arguments")
            return
        conv.pending.pop(tag, None)
        # Commands the client sent before STARTTLS are answered first, in plaintext, as
        # the server would; only then is it decided whether STARTTLS is still possible
        # (e.g. not after a pipelined LOGIN succeeded).
        while conv.pending:
            self._no_pending = trio.Event()
            await self._no_pending.wait()
        self._no_pending = None
        view = replace(command_view(frame.raw, frame), verdict="answer", by="relay")
        filtering.filters.observe_command(view, filtering.view)
        if self._offers_starttls():
            self.events.command_answered(self.id, "STARTTLS", "OK")
            ok = filtering.local_reply(tag, "OK", tag + b" OK Begin TLS negotiation now\r\n",
                                       "relay")  # fmt: skip
            await self._client_starttls(ok)
        else:
            conv.client.completed(tag, "BAD")
            self.events.command_answered(self.id, "STARTTLS", "BAD")
            bad = tag + b" BAD STARTTLS is not available here\r\n"
            await self._send_client(filtering.local_reply(tag, "BAD", bad, "relay"))

    def _unsafe_command(self, frame: Frame) -> str | None:
        """Why the proxy must not forward this command, if it must not.

        A malformed head (tag with "]" or 8-bit bytes, name glued to a special) would let
        the server read bytes differently from the proxy: the server rejects the tag or
        does not know the name and skips the line.  (Literals are safe: a synchronising one
        lets the server decide, and the decoder waits for that answer; a non-synchronising
        one is sent on as synchronising, see :func:`.gate.as_sync`.)
        """
        if frame.first and not frame.name:
            return "malformed command"
        if frame.first and self.conv.tag_in_use:
            # Answers are matched to commands by tag: a second command with the tag of
            # one in progress would let the first one's answer settle the second one's
            # literal, and the proxy and the server would read the stream differently.
            return "tag already in use by a command in progress"
        return None

    async def _refuse(self, frame: Frame, why: str) -> None:
        """Answer a command with BAD without forwarding any of it; its literal (which the
        client sends anyway) is consumed here, as the client meant it."""
        tag = frame.tag if frame.tag is not None and frame.name else b"*"
        if frame.tag is not None and not self.conv.tag_in_use:
            self.conv.pending.pop(frame.tag, None)  # (else it is the earlier command's)
            self.logins.forget(frame.tag)
        waits = frame.waits_for_continuation
        self.conv.client.refused()
        if not frame.final and not waits:
            self._drop_tag = frame.tag
        log.warning("session %s: refused a client command: %s", self.id, why)
        self.events.command_answered(self.id, frame.name, "blocked")
        reply = tag + b" BAD [CLIENTBUG] " + why.encode() + b"\r\n"
        filtering = self.filtering
        if filtering is not None:
            filtering.refused_by_relay(frame, why)
            reply = filtering.local_reply(tag, "BAD", reply, "relay")
        await self._send_client(reply)

    async def _client_starttls(self, ok: bytes) -> None:
        async with self._client_lock:
            self.stats.bytes_to_client += len(ok)
            await self.client.send_all(ok)
            injected = self.conv.client.start_tls()
            if injected:
                self.stats.starttls_injected += len(injected)
                self.events.starttls_injection(self.id, "client")
                log.warning(
                    "session %s: discarded %d bytes the client sent after STARTTLS before "
                    "TLS (command injection attempt)",
                    self.id,
                    len(injected),
                )
            await self._start_client_tls()

    def _offers_starttls(self) -> bool:
        return (
            not self.listener.implicit_tls
            and self.server_ssl is not None
            and self.client_tls is None
            and self.conv.phase is Phase.NOT_AUTHENTICATED
            # a LOGIN in progress: the capabilities the server sends now are the
            # post-login ones (STARTTLS will not be possible any more)
            and not any(p.name in AUTHENTICATING_COMMANDS for p in self.conv.pending.values())
        )

    # ------------------------------------------------------------ output

    async def _send_client(self, data: bytes) -> None:
        await _acquire(self._client_lock)
        self.stats.bytes_to_client += len(data)
        try:
            await self.client.send_all(data)
        finally:
            self._client_lock.release()

    async def _send_upstream(self, parts: list[bytes]) -> None:
        assert self.upstream is not None
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        self.stats.bytes_to_upstream += len(data)
        try:
            await self.upstream.send_all(data)
        except trio.BrokenResourceError:
            raise unavailable("upstream_closed", "upstream connection broken") from None

    async def _farewell(self, bye: bytes | None) -> None:
        """Best effort: tell the client why it is being disconnected."""
        if bye is None:
            return
        if not self._client_boundary or self._holding_client:
            # The client is inside a server response (perhaps a literal): a BYE now would
            # become part of it.  Closing is the only clean signal left.
            log.info("session %s: no BYE sent: the client is mid-response", self.id)
            return
        with trio.CancelScope(shield=True), trio.move_on_after(self.config.timeouts.farewell):
            try:
                async with self._client_lock:
                    self.stats.bytes_to_client += len(bye)
                    await self.client.send_all(bye)
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
                pass



async def _acquire(lock: trio.Lock) -> None:
    """Take the lock; when it is free, without the two scheduler round trips of
    ``acquire()`` (a relay writes once per read: the round trips show in latency)."""
    try:
        lock.acquire_nowait()
    except trio.WouldBlock:
        await lock.acquire()


def _mailbox_name(raw: bytes | None, utf8: bool) -> str | None:
    return None if raw is None else decode_mailbox(raw, utf8=utf8)
