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

Where things are
----------------
* this module: set-up, the session's lifecycle and its end, the filters' set-up, output;
* :mod:`.pumps`: the two pumps (a command is decided in :func:`.pumps.pump_client`, by the
  gate of :mod:`.filtering`);
* :mod:`.starttls`: the client leg's TLS and the STARTTLS command;
* :mod:`.timers`: the idle/answer timer and the login deadline (its docstring says which
  side's timer runs when);
* :mod:`.upstream`: the upstream's set-up; :mod:`.login`: following who logs in;
  :mod:`.ends`: the end reasons.

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
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from ..config import ListenerConfig, ProxyConfig
from ..filters.api import SessionEndInfo, SessionInfo, SessionView
from ..filters.chain import FilterChain
from ..logsafe import MAX_DETAIL, safe
from ..net.busypoll import BusyPoll
from ..net.transport import TlsStream
from ..wire import Conversation, Frame, Phase
from .ends import END_REASONS, SessionEnd, named_bye, unavailable
from .events import NO_EVENTS, ProxyEvents
from .filtering import Filtering
from .login import LoginTracker
from .proxied import ClientAddresses
from .pumps import acquire, pump_client, pump_upstream
from .reload import ChainSource, SessionChain, open_chain, swap_filters
from .starttls import start_client_tls, tls_info
from .timers import SessionTimers
from .upstream import UpstreamSetup

log = logging.getLogger("imapproxy.session")

__all__ = ["END_REASONS", "Session", "SessionEnd", "SessionStats", "unavailable"]


@dataclass(slots=True)
class SessionStats:
    bytes_from_client: int = 0
    bytes_from_upstream: int = 0
    starttls_injected: int = 0
    bytes_to_client: int = 0
    bytes_to_upstream: int = 0


class Session:
    """One session.  Its attributes without a leading underscore are shared with the
    pumps (:mod:`.pumps`) and the STARTTLS answer (:mod:`.starttls`)."""

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
        source: ChainSource | None = None,
        addresses: ClientAddresses | None = None,
    ) -> None:
        """``source``: where a reload publishes a new chain (default: ``filters``, never
        reloaded).  ``peer``: the client's address as logs and filters show it (from a
        PROXY header, if the listener takes one); ``addresses``: the same, and the address
        it connected to, for the upstream (``upstream.proxy_protocol``, ``id_forwarding``)."""
        self.id = session_id
        self.addresses = addresses
        self.events = events
        self.client: trio.abc.Stream = stream
        self.upstream: trio.abc.Stream | None = None
        self.peer = peer
        self.listener = listener
        self.config = config
        self.server_ssl = server_ssl
        self.upstream_ssl = upstream_ssl
        self.busy_poll = busy_poll
        self.source = source if source is not None else ChainSource(filters)
        self.chain_generation = self.source.generation  # the generation of our filters
        self._chain: SessionChain | None = None
        self.filter_errors = filter_errors if filter_errors is not None else collections.Counter()
        self.filtering: Filtering | None = None  # once set up (see _open_filters)
        self.conv = Conversation(config.limits, nonsync_as_sync=True)
        self.stats = SessionStats()
        self.timers = SessionTimers(session_id, self.conv, config.timeouts)
        self.client_tls: str | None = None  # the client leg's TLS version, once up
        self.user: str | None = None
        self.logins = LoginTracker(config.limits)
        self.selected: bytes | None = None  # the selected mailbox, as last shown to filters
        self.client_lock = trio.Lock()  # one writer to the client at a time
        self.paused_scope: trio.CancelScope | None = None  # a read while the client waits
        self.no_pending: trio.Event | None = None  # set on each tagged completion
        self.client_boundary = True  # the client's stream is between two messages
        self.holding_client = False  # the upstream pump holds the client lock mid-message
        self.drop_tag: bytes | None = None  # rest of a refused message is not forwarded
        self._segment_scope: trio.CancelScope | None = None  # a client read meanwhile
        self._relay_scope: trio.CancelScope | None = None
        self._setup_scope = trio.CancelScope()
        self._end: SessionEnd | None = None

    # ------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        started = time.monotonic()
        self.events.session_opened(self.id, self.listener, self.stats)
        end = SessionEnd("cancelled", "the proxy stopped")
        try:
            end = named_bye(await self._run(), self.conv)
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
            self._chain = None

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
        with self.timers.login_deadline():
            return await self._session()
        # the login deadline passed
        in_handshake = isinstance(self.client, TlsStream) and self.client_tls is None
        end = self._end or self.timers.login_timeout_end(in_handshake=in_handshake)
        await self._farewell(end.bye)
        return end

    async def _session(self) -> SessionEnd:
        greeting = None
        with self._setup_scope:
            try:
                if self.listener.implicit_tls:
                    await start_client_tls(self)
                with self.timers.login_paused():  # the upstream's set-up is not the client's
                    greeting = await self._set_up()
            except SessionEnd as end:
                await self._farewell(end.bye)
                return end
        if greeting is None:  # shutdown during set-up
            assert self._end is not None
            await self._farewell(self._end.bye)
            return self._end
        with trio.CancelScope() as scope:
            self._relay_scope = self.timers.relay = scope
            if self._end is not None:  # shutdown requested during set-up
                scope.cancel()
            self.timers.touch(client=True)  # the client's idle clock starts with the greeting
            try:
                filtering = self._open_filters()
                sent = filtering.response(greeting, greeting.raw)
                await self.send_client(greeting.raw if sent is None else sent)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._guard, pump_client, nursery.cancel_scope)
                    nursery.start_soon(self._guard, pump_upstream, nursery.cancel_scope)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self._end = self._end or SessionEnd("connection_lost", f"connection lost: {exc}")
            except SessionEnd as end:  # a filter ended it before the relay began
                self._end = self._end or end
        if self._end is None:
            if scope.cancelled_caught:
                self._end = self.timers.timer_end()
            else:
                self._end = SessionEnd("closed", "closed")
        await self._farewell(self._end.bye)
        return self._end

    async def _set_up(self) -> Frame:
        """The upstream, up to its greeting (see :mod:`.upstream`)."""
        setup = UpstreamSetup(
            self.config, self.conv, self.stats, self.upstream_ssl, self.busy_poll, self.id,
            self.events, self.addresses,
        )
        try:
            return await setup.open()
        finally:
            self.upstream = setup.stream  # closed by run() whatever happened

    async def _guard(
        self, pump: Callable[[Session], Awaitable[None]], nursery_scope: trio.CancelScope
    ) -> None:
        """Run one pump; whichever ends first ends the session (and the other pump)."""
        try:
            await pump(self)
        except SessionEnd as end:
            self._end = self._end or end
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._end = self._end or SessionEnd("connection_lost", f"connection lost: {exc}")
        finally:
            nursery_scope.cancel()

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
        view = SessionView(info, tls=tls_info(self), capabilities=self.conv.capabilities)
        view.phase = self.conv.phase
        source = self.source
        self._chain = open_chain(source.chain, info, self._filter_error, source.generation,
                                 self.events.filter_verdict)  # fmt: skip
        self.chain_generation = source.generation
        self.filtering = Filtering(
            self._chain.filters,
            view,
            self.conv,
            self.config.limits,
            send_client=self.send_client,
            send_upstream=self.send_upstream,
            refused=self._refused_by_filter,
            wait_segment=self._await_segment,
            segment_answered=self._wake_segment_wait,
            hook_timeout=self.config.timeouts.filter_hook,
        )
        self.filtering.started()
        return self.filtering

    def renew_filters(self) -> None:
        """A reload published a new chain: use it from this command on (unchanged filters
        keep their instance; see :mod:`.reload`).  Raises SessionEnd when a new filter
        that fails closed refuses the session."""
        filtering, current = self.filtering, self._chain
        assert filtering is not None and current is not None
        self._chain, failed = swap_filters(
            current, self.source, filtering.view.info, filtering.view, self._filter_error,
            authenticated=self.user is not None, on_verdict=self.events.filter_verdict,
        )  # fmt: skip
        self.chain_generation = self._chain.generation
        filtering.use(self._chain.filters)
        if failed:
            raise SessionEnd("filter_error", "a filter of the reloaded chain failed",
                             b"* BYE [UNAVAILABLE] filter failed\r\n")  # fmt: skip

    async def _await_segment(self, done: trio.Event) -> None:
        """Wait for the server's answer to a segment of a command the relay sends in
        pieces.  The server owes it (its timer runs: a silent one is upstream_stalled);
        the client is still read, so one that vanishes is noticed at once, and what it
        pipelines meanwhile waits in the decoder (at most max_held_bytes, then no more is
        read until the answer comes)."""
        self.timers.client_partial = False
        self.timers.touch(client=True)
        held = 0
        limit = self.config.limits.max_held_bytes
        read_size = self.config.session_limits.guarded_read_size
        while not done.is_set():
            if held >= limit:
                await done.wait()
                return
            with trio.CancelScope() as scope:
                self._segment_scope = scope
                data = await self.receive(self.client, read_size, "client")
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

    # ------------------------------------------------------------ input, output

    async def receive(self, stream: trio.abc.Stream, n: int, who: str) -> bytes:
        try:
            return bytes(await stream.receive_some(n))
        except trio.BrokenResourceError as exc:
            if self.conv.phase is Phase.LOGOUT:
                raise SessionEnd("logout", "logged out") from None
            if who == "client":
                raise SessionEnd("client_closed", f"client connection broken: {exc}") from None
            raise unavailable("upstream_closed", "upstream connection broken") from None

    async def send_client(self, data: bytes) -> None:
        await acquire(self.client_lock)
        self.stats.bytes_to_client += len(data)
        try:
            await self.client.send_all(data)
        finally:
            self.client_lock.release()

    async def send_upstream(self, parts: list[bytes]) -> None:
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
        if not self.client_boundary or self.holding_client:
            # The client is inside a server response (perhaps a literal): a BYE now would
            # become part of it.  Closing is the only clean signal left.
            log.info("session %s: no BYE sent: the client is mid-response", self.id)
            return
        with trio.CancelScope(shield=True), trio.move_on_after(self.config.timeouts.farewell):
            try:
                async with self.client_lock:
                    self.stats.bytes_to_client += len(bye)
                    await self.client.send_all(bye)
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
                pass
