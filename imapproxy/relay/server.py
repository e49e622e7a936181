"""Listeners, admission limits and graceful shutdown.

Every accepted connection becomes a :class:`~imapproxy.relay.session.Session` in one handler
nursery.  Sessions are independent: a session's failure is logged and ends that session only.

Shutdown (``Proxy.shutdown()``, wired to SIGTERM/SIGINT by the CLI): the listeners close at
once; sessions may finish on their own until ``timeouts.shutdown_drain`` has passed; then
each remaining session gets ``* BYE [UNAVAILABLE] shutting down`` and is closed.
"""

from __future__ import annotations

import collections
import errno
import itertools
import logging
import os
import socket
import ssl

import trio

from ..config import ListenerConfig, ProxyConfig, UpstreamTls
from ..filters.api import OnError
from ..filters.capabilities import CapabilityFilter
from ..filters.chain import ChainEntry, FilterChain
from ..filters.live import LiveFactory, LiveHub
from ..logsafe import MAX_DETAIL, safe
from ..net.busypoll import BusyPoll
from ..net.malloc import HeapTrimmer
from ..net.tls import server_context, upstream_context
from ..net.transport import SocketStream
from .control import ControlServer
from .events import NO_EVENTS, ProxyEvents
from .proxied import ClientAddresses, HeaderRefused, Untrusted, accept_header
from .session import Session

log = logging.getLogger("imapproxy.server")


class ListenError(OSError):
    """A listener could not be opened: one line naming the address, the flag and what to do."""

    def __init__(self, lc: ListenerConfig, exc: OSError) -> None:
        flag = "--listen-tls" if lc.implicit_tls else "--listen"
        super().__init__(
            exc.errno, f"cannot listen on {lc.endpoint} ({flag}): {_listen_advice(lc, exc)}"
        )

    def __str__(self) -> str:
        return str(self.strerror)


def _listen_advice(lc: ListenerConfig, exc: OSError) -> str:
    port = lc.endpoint.port
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve {lc.endpoint.host!r} ({exc.strerror}): give an IP address"
    if exc.errno == errno.EADDRINUSE:
        return (
            f"address already in use: stop what listens there (ss -ltnp 'sport = :{port}' "
            "shows it) or choose another port"
        )
    if exc.errno == errno.EACCES:
        return (
            "permission denied: ports below 1024 need root or CAP_NET_BIND_SERVICE; "
            "choose a port above 1023"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return (
            "no such address on this machine: use 127.0.0.1, ::1, 0.0.0.0 or one of "
            "this machine's addresses (ip -brief address)"
        )
    return exc.strerror or str(exc)


class Proxy:
    def __init__(
        self,
        config: ProxyConfig,
        *,
        filters: FilterChain | None = None,
        events: ProxyEvents | None = None,
    ) -> None:
        """``filters``: the configured chain; the capability stage always runs first.
        ``events``: told what the relay does that filters cannot see (metrics)."""
        self.config = config
        self.events = events or NO_EVENTS
        self.configured = filters or FilterChain()
        require_tls = config.require_tls_for_login
        stage = ChainEntry(
            CapabilityFilter.name,
            lambda info: CapabilityFilter(info, require_tls_for_login=require_tls),
        )
        self.filters = FilterChain((stage, *self.configured.entries))
        hub = None
        if config.control_socket:  # imapproxy tail: the live feed, last in the chain
            hub = LiveHub(capacity=config.control_limits.queue_records)
            live = ChainEntry("live", LiveFactory(hub), OnError.OPEN)
            self.filters = FilterChain((*self.filters.entries, live))
        # filter name -> hooks that raised, process-wide (logged at shutdown; the metrics
        # read it when scraped)
        self.filter_errors: collections.Counter[str] = collections.Counter()
        names = tuple(entry.name for entry in self.filters.entries)
        self.events.configured(config, names, self.filter_errors)
        self.server_ssl = (
            server_context(config.cert_file, config.key_file, config.keylog_client)
            if config.cert_file and config.key_file
            else None
        )
        # each listener's TLS (its own certificate, else the proxy's; None: plain only)
        self.listener_ssl: dict[ListenerConfig, ssl.SSLContext | None] = {}
        contexts = {(config.cert_file, config.key_file): self.server_ssl}
        for lc in config.listeners:
            pair = config.certificate(lc)
            if pair is not None and pair not in contexts:
                contexts[pair] = server_context(*pair, config.keylog_client)
            self.listener_ssl[lc] = None if pair is None else contexts[pair]
        up = config.upstream
        self.upstream_ssl = upstream_context(up) if up.tls is not UpstreamTls.NONE else None
        window = config.session_limits.busy_poll
        self.busy_poll = BusyPoll(window) if window > 0 else None
        self.trimmer = HeapTrimmer()  # gives memory back once sessions have ended
        self.sessions: set[Session] = set()
        self._per_address: collections.Counter[str] = collections.Counter()
        self._awaiting_header = 0  # connections reading their PROXY protocol header
        self._ids = itertools.count(1)
        self._prefix = f"{os.getpid():x}"
        self._accept_scope: trio.CancelScope | None = None
        self._shutdown = trio.Event()
        self._session_ended = trio.Event()
        self.bound: list[tuple[ListenerConfig, tuple[str, int]]] = []
        self._listeners: list[tuple[ListenerConfig, trio.SocketListener]] | None = None
        self.control: ControlServer | None = None
        if config.control_socket and hub is not None:
            # (the socket is made last: a mistake above leaves no socket file behind)
            self.control = ControlServer(config.control_socket, hub, config.control_limits)

    def shutdown(self) -> None:
        self._shutdown.set()

    async def bind(self) -> None:
        """Open every listener, or none: a listener that cannot be opened closes the ones
        already open and raises :class:`ListenError` (nothing is logged as listening
        before all are open).  ``serve`` calls it unless it was called first."""
        if self._listeners is not None:
            return
        opened: list[tuple[ListenerConfig, trio.SocketListener]] = []
        try:
            for lc in self.config.listeners:
                try:
                    found = await trio.open_tcp_listeners(lc.endpoint.port, host=lc.endpoint.host)
                except OSError as exc:
                    raise ListenError(lc, exc) from None
                opened += [(lc, sock_listener) for sock_listener in found]
        except BaseException:
            for _, sock_listener in opened:
                sock_listener.socket.close()
            raise
        self._listeners = opened
        for lc, sock_listener in opened:
            addr = sock_listener.socket.getsockname()
            self.bound.append((lc, (addr[0], addr[1])))
            log.info(
                "listening on %s (%s)",
                _fmt(addr),
                "implicit TLS"
                if lc.implicit_tls
                else "plain/STARTTLS"
                if self.listener_ssl[lc]
                else "plain",
            )

    async def serve(
        self, *, task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run until shutdown; ``task_status.started`` gets the bound (host, port)s."""
        await self.bind()
        assert self._listeners is not None
        listeners = self._listeners
        self._lifecycle("start")
        try:
            async with trio.open_nursery() as poller:
                if self.busy_poll is not None:
                    poller.start_soon(self.busy_poll.run)
                poller.start_soon(self.trimmer.run)
                if self.control is not None:
                    poller.start_soon(self.control.serve)
                await self._serve(listeners, task_status)
                poller.cancel_scope.cancel()
        finally:
            self._lifecycle("close")
            if self.control is not None:
                self.control.close()
        if self.filter_errors:
            log.warning(
                "filter errors since start: %s",
                ", ".join(f"{name}={n}" for name, n in sorted(self.filter_errors.items())),
            )
        log.info("shut down")

    def reopen(self) -> None:
        """Reopen the filters' output files (SIGUSR1, after logrotate moved them)."""
        self._lifecycle("reopen")

    def _lifecycle(self, step: str) -> None:
        """Process-wide parts of filters (a transcript's file): a factory may have
        ``start``, ``reopen`` and ``close``."""
        for entry in self.configured.entries:
            method = getattr(entry.factory, step, None)
            if method is not None:
                method()

    async def _serve(
        self,
        listeners: list[tuple[ListenerConfig, trio.SocketListener]],
        task_status: trio.TaskStatus[list[tuple[str, int]]],
    ) -> None:
        async with trio.open_nursery() as handlers:
            with trio.CancelScope() as accept_scope:
                self._accept_scope = accept_scope
                async with trio.open_nursery() as acceptors:
                    for lc, sock_listener in listeners:
                        acceptors.start_soon(self._accept_loop, lc, sock_listener, handlers)
                    task_status.started([addr for _, addr in self.bound])
                    await self._shutdown.wait()
                    acceptors.cancel_scope.cancel()
            for _, sock_listener in listeners:
                await trio.aclose_forcefully(sock_listener)
            log.info(
                "shutting down: listeners closed, %d sessions draining for up to %.0fs",
                len(self.sessions),
                self.config.timeouts.shutdown_drain,
            )
            with trio.move_on_after(self.config.timeouts.shutdown_drain):
                while self.sessions:
                    self._session_ended = trio.Event()
                    await self._session_ended.wait()
            for session in list(self.sessions):
                session.shutdown()

    async def _accept_loop(
        self, lc: ListenerConfig, listener: trio.SocketListener, handlers: trio.Nursery
    ) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:  # e.g. EMFILE: keep serving the others
                log.error("accept failed on %s: %s", safe(lc.name), safe(exc, MAX_DETAIL))
                await trio.sleep(0.1)
                continue
            handlers.start_soon(self._handle, lc, stream)

    async def _handle(self, lc: ListenerConfig, stream: trio.SocketStream) -> None:
        try:
            peer_addr = stream.socket.getpeername()
            address = peer_addr[0]
            peer = _fmt(peer_addr)
        except OSError:
            await trio.aclose_forcefully(stream)
            return
        self.events.connection_accepted(lc.name)
        limits = self.config.session_limits
        refusal = None
        sid = f"{self._prefix}-{next(self._ids)}"
        addresses = None
        if len(self.sessions) + self._awaiting_header >= limits.max_sessions:
            refusal, reason = "too many sessions", "max_sessions"
        elif lc.proxy_protocol != "off":  # the client is who the header says
            addresses = await self._proxy_header(lc, stream, sid, peer_addr)
            if addresses is None:
                return
            log.debug("session %s: peer=%s via PROXY protocol from %s", sid, safe(
                _fmt(addresses.client), spaces=False), _fmt(peer_addr))  # fmt: skip
            address, peer = addresses.client[0], _fmt(addresses.client)
        elif self.config.upstream.proxy_protocol != "off" or self.config.upstream.id_forwarding:
            addresses = ClientAddresses(peer_addr[:2], stream.socket.getsockname()[:2])
        if refusal is None and self._per_address[address] >= limits.max_sessions_per_address:
            refusal, reason = "too many sessions from your address", "max_sessions_per_address"
        if refusal is not None:
            log.warning("session %s refused peer=%s: %s", sid, safe(peer, spaces=False), refusal)
            self.events.connection_rejected(lc.name, reason)
            await self._refuse(lc, stream, refusal)
            return
        session = Session(
            session_id=sid,
            stream=SocketStream.from_trio(stream, busy_poll=self.busy_poll),
            peer=peer,
            listener=lc,
            config=self.config,
            server_ssl=self.listener_ssl[lc],
            upstream_ssl=self.upstream_ssl,
            filters=self.filters,
            filter_errors=self.filter_errors,
            busy_poll=self.busy_poll,
            events=self.events,
            addresses=addresses,
        )
        self.sessions.add(session)
        self._per_address[address] += 1
        try:
            await session.run()
        finally:
            self.sessions.discard(session)
            self._session_ended.set()
            self.trimmer.session_ended()
            self._per_address[address] -= 1
            if not self._per_address[address]:
                del self._per_address[address]

    async def _proxy_header(
        self, lc: ListenerConfig, stream: trio.SocketStream, sid: str, peer: tuple[str, int]
    ) -> ClientAddresses | None:
        """The PROXY protocol header's addresses, or None (logged, closed).  Connections
        waiting for theirs count against max_sessions (a flood of them stays bounded)."""
        self._awaiting_header += 1
        try:
            return await accept_header(
                stream,
                1 if lc.proxy_protocol == "v1" else 2,
                lc.proxy_trusted,
                peer,
                max_v2_bytes=self.config.session_limits.proxy_header_bytes,
                within=self.config.timeouts.proxy_header,
            )
        except Untrusted as exc:
            log.warning("%s", exc)
        except HeaderRefused as exc:
            log.warning(
                "session %s refused peer=%s listener=%s: %s",
                sid, safe(_fmt(peer), spaces=False), safe(lc.name, spaces=False),
                safe(str(exc), MAX_DETAIL),
            )  # fmt: skip
        finally:
            self._awaiting_header -= 1
        self.events.connection_rejected(lc.name, "proxy_protocol")
        await trio.aclose_forcefully(stream)
        return None

    async def _refuse(self, lc: ListenerConfig, stream: trio.SocketStream, text: str) -> None:
        out: trio.abc.Stream = stream
        bye = f"* BYE [UNAVAILABLE] {text}\r\n".encode()
        with trio.move_on_after(self.config.timeouts.farewell):
            try:
                context = self.listener_ssl[lc]
                if lc.implicit_tls and context is not None:
                    out = trio.SSLStream(stream, context, server_side=True)
                    await out.do_handshake()
                await out.send_all(bye)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        await trio.aclose_forcefully(out)


def _fmt(addr: tuple[object, ...]) -> str:
    host, port = str(addr[0]), addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
