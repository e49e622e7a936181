"""Listeners, admission limits and graceful shutdown.

Every accepted connection becomes a :class:`~imapproxy.relay.session.Session` in one handler
nursery.  Sessions are independent: a session's failure is logged and ends that session only.

Shutdown (``Proxy.shutdown()``, wired to SIGTERM/SIGINT by the CLI): the listeners close at
once; sessions may finish on their own until ``timeouts.shutdown_drain`` has passed; then
each remaining session gets ``* BYE [UNAVAILABLE] shutting down`` and is closed.

Reload (``Proxy.reload``, wired to SIGHUP): everything that can fail (the new file, its
chain, the certificates, the new listeners' sockets, new filters' ``start``) is done
first, and a failure changes nothing; then the new chain is published (sessions take it at
their next command, see :mod:`.reload`), new handshakes get the new certificates,
listeners removed stop accepting (their sessions go on) and listeners added are served.
"""

from __future__ import annotations

import collections
import dataclasses
import errno
import itertools
import logging
import os
import socket
import ssl
from collections.abc import Callable, Hashable, Iterable

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
from .reload import ChainSource, Reloaded, listener_key, merge_entries, restart_keys
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
        keys: tuple[Hashable, ...] | None = None,
    ) -> None:
        """``filters``: the configured chain; the capability stage always runs first.
        ``events``: told what the relay does that filters cannot see (metrics).
        ``keys``: one per configured entry, what a reload compares (equal: kept)."""
        self.config = config
        self.events = events or NO_EVENTS
        self.configured = filters or FilterChain()
        self._keys = keys if keys is not None else tuple(object() for _ in self.configured.entries)
        require_tls = config.require_tls_for_login
        self._stage = ChainEntry(
            CapabilityFilter.name,
            lambda info: CapabilityFilter(info, require_tls_for_login=require_tls),
        )
        self._live: ChainEntry | None = None
        hub = None
        if config.control_socket:  # imapproxy tail: the live feed, last in the chain
            hub = LiveHub(capacity=config.control_limits.queue_records)
            self._live = ChainEntry("live", LiveFactory(hub), OnError.OPEN)
        self.filters = self._full_chain(self.configured)
        # what sessions run with: a reload publishes a new chain here
        self.source = ChainSource(self.filters)
        # filter name -> hooks that raised, process-wide (logged at shutdown; the metrics
        # read it when scraped)
        self.filter_errors: collections.Counter[str] = collections.Counter()
        names = tuple(entry.name for entry in self.filters.entries)
        self.events.configured(config, names, self.filter_errors)
        # each listener's TLS (its own certificate, else the proxy's; None: plain only)
        self.server_ssl, self.listener_ssl = _contexts(config)
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
        # by address (listener_key): what is served, each with the scope of its accept loops
        self._serving: dict[Hashable, _Listening] = {}
        self._acceptors: trio.Nursery | None = None
        self._handlers: trio.Nursery | None = None
        self.control: ControlServer | None = None
        if config.control_socket and hub is not None:
            # (the socket is made last: a mistake above leaves no socket file behind)
            self.control = ControlServer(config.control_socket, hub, config.control_limits)

    def shutdown(self) -> None:
        self._shutdown.set()

    def _full_chain(self, configured: FilterChain) -> FilterChain:
        """The capability stage, the configured chain, the live feed (if any)."""
        live = () if self._live is None else (self._live,)
        return FilterChain((self._stage, *configured.entries, *live))

    async def reload(self, build: Callable[[], Reloaded]) -> bool:
        """Apply a new configuration (SIGHUP): ``build`` reads and checks it as start-up
        does.  The filter chain (from each session's next command), the certificates (for
        new handshakes) and the listeners change; sessions in flight go on.  Anything that
        fails (a mistake in the file, a certificate that does not load, an address that
        cannot be listened on) changes nothing: one ERROR line, and False."""
        try:
            new = build()
            server_ssl, listener_ssl = _contexts(new.config)
            merged, added, removed = merge_entries(
                self.configured.entries, self._keys, new.chain.entries, new.keys
            )
            wanted = {listener_key(lc): lc for lc in new.config.listeners}
            # what a reload changes of the configuration (the rest needs a restart)
            applied = dataclasses.replace(
                self.config, listeners=new.config.listeners, cert_file=new.config.cert_file,
                key_file=new.config.key_file,
            )  # fmt: skip
            opened = await _open_listeners(
                lc for key, lc in wanted.items() if key not in self._serving
            )
        except Exception as exc:  # ConfigError is a ValueError; ListenError an OSError
            what = exc if isinstance(exc, (ValueError, OSError)) else (
                f"{type(exc).__name__}: {exc}")  # fmt: skip
            log.error("reload refused: %s; the running configuration stays", safe(what, 500))
            self.events.config_reloaded(False)
            return False
        started: list[ChainEntry] = []
        try:
            for entry in added:
                method = getattr(entry.factory, "start", None)
                if method is not None:
                    method()
                started.append(entry)
        except Exception as exc:  # e.g. a transcript file that cannot be made
            for entry in started:
                getattr(entry.factory, "close", lambda: None)()
            for _, sock_listener in opened:
                sock_listener.socket.close()
            log.error("reload refused: %s; the running configuration stays", safe(exc, 500))
            self.events.config_reloaded(False)
            return False
        for key in (*restart_keys(self.config, new.config), *new.restart):
            log.warning("reload: %s changed: it takes effect only after a restart", key)
        # from here on nothing can fail: commit
        self.config = applied
        self.server_ssl, self.listener_ssl = server_ssl, listener_ssl
        self.configured = FilterChain(merged)
        self._keys = new.keys
        self.filters = self._full_chain(self.configured)
        self.source.chain = self.filters
        self.source.generation += 1
        for entry in removed:  # at once: see the README's "Reload"
            method = getattr(entry.factory, "close", None)
            if method is not None:
                await trio.to_thread.run_sync(method)
        gone = [key for key in self._serving if key not in wanted]
        for key in gone:
            listening = self._serving.pop(key)
            await listening.close()
            self.bound = [(lc, addr) for lc, addr in self.bound if listener_key(lc) != key]
            log.info("reload: no longer listening on %s", listening.lc.endpoint)
        for key, lc in wanted.items():
            if key in self._serving:
                self._serving[key].lc = lc
        self.bound = [(wanted[listener_key(lc)], addr) for lc, addr in self.bound]
        fresh: dict[Hashable, _Listening] = {}
        for lc, sock_listener in opened:
            fresh.setdefault(listener_key(lc), _Listening(lc)).sockets.append(sock_listener)
        self._serving.update(fresh)
        self._log_listening(opened)
        if self._acceptors is not None:
            for listening in fresh.values():
                self._start_accepting(listening)
        names = tuple(entry.name for entry in self.filters.entries)
        self.events.configured(self.config, names, self.filter_errors)
        self.events.config_reloaded(True)
        log.info(
            "reload: configuration applied (generation %d): filters %s; %d added, %d "
            "removed; listeners %d added, %d removed",
            self.source.generation,
            ", ".join(names) or "-",
            len(added),
            len(removed),
            len(fresh),
            len(gone),
        )
        return True

    async def bind(self) -> None:
        """Open every listener, or none: a listener that cannot be opened closes the ones
        already open and raises :class:`ListenError` (nothing is logged as listening
        before all are open).  ``serve`` calls it unless it was called first."""
        if self._listeners is not None:
            return
        opened = await _open_listeners(self.config.listeners)
        self._listeners = opened
        for lc, sock_listener in opened:
            self._serving.setdefault(listener_key(lc), _Listening(lc)).sockets.append(
                sock_listener
            )
        self._log_listening(opened)

    def _log_listening(self, opened: list[tuple[ListenerConfig, trio.SocketListener]]) -> None:
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
        self._lifecycle("start")
        try:
            async with trio.open_nursery() as poller:
                if self.busy_poll is not None:
                    poller.start_soon(self.busy_poll.run)
                poller.start_soon(self.trimmer.run)
                if self.control is not None:
                    poller.start_soon(self.control.serve)
                await self._serve(task_status)
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

    async def _serve(self, task_status: trio.TaskStatus[list[tuple[str, int]]]) -> None:
        async with trio.open_nursery() as handlers:
            self._handlers = handlers
            with trio.CancelScope() as accept_scope:
                self._accept_scope = accept_scope
                async with trio.open_nursery() as acceptors:
                    self._acceptors = acceptors
                    for listening in self._serving.values():
                        self._start_accepting(listening)
                    task_status.started([addr for _, addr in self.bound])
                    await self._shutdown.wait()
                    self._acceptors = None
                    acceptors.cancel_scope.cancel()
            for listening in list(self._serving.values()):
                for sock_listener in listening.sockets:
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

    def _start_accepting(self, listening: _Listening) -> None:
        assert self._acceptors is not None and self._handlers is not None
        for sock_listener in listening.sockets:
            self._acceptors.start_soon(
                self._accept_loop, listening, sock_listener, self._handlers
            )

    async def _accept_loop(
        self, listening: _Listening, listener: trio.SocketListener, handlers: trio.Nursery
    ) -> None:
        with trio.CancelScope() as scope:
            listening.scopes.append(scope)
            while True:
                try:
                    stream = await listener.accept()
                except OSError as exc:  # e.g. EMFILE: keep serving the others
                    lc = listening.lc
                    log.error("accept failed on %s: %s", safe(lc.name), safe(exc, MAX_DETAIL))
                    await trio.sleep(0.1)
                    continue
                # (read now: a reload may have changed the listener at this address)
                handlers.start_soon(self._handle, listening.lc, stream)

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
            server_ssl=self.listener_ssl.get(lc),
            upstream_ssl=self.upstream_ssl,
            filters=self.filters,
            filter_errors=self.filter_errors,
            busy_poll=self.busy_poll,
            events=self.events,
            source=self.source,
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
                context = self.listener_ssl.get(lc)
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


class _Listening:
    """One listening address: its sockets (IPv4 and IPv6 for a name), the listener it is
    (a reload may change its TLS mode, certificate or name) and the scope of its accept
    loops (a reload that removes it cancels them and closes the sockets)."""

    def __init__(self, lc: ListenerConfig) -> None:
        self.lc = lc
        self.sockets: list[trio.SocketListener] = []
        self.scopes: list[trio.CancelScope] = []

    async def close(self) -> None:
        """Stop accepting here (the sessions it accepted go on)."""
        for scope in self.scopes:
            scope.cancel()
        for sock_listener in self.sockets:
            await trio.aclose_forcefully(sock_listener)


async def _open_listeners(
    lcs: Iterable[ListenerConfig],
) -> list[tuple[ListenerConfig, trio.SocketListener]]:
    """Open every listener, or none (raises :class:`ListenError`)."""
    opened: list[tuple[ListenerConfig, trio.SocketListener]] = []
    try:
        for lc in lcs:
            try:
                found = await trio.open_tcp_listeners(lc.endpoint.port, host=lc.endpoint.host)
            except OSError as exc:
                raise ListenError(lc, exc) from None
            opened += [(lc, sock_listener) for sock_listener in found]
    except BaseException:
        for _, sock_listener in opened:
            sock_listener.socket.close()
        raise
    return opened


def _contexts(
    config: ProxyConfig,
) -> tuple[ssl.SSLContext | None, dict[ListenerConfig, ssl.SSLContext | None]]:
    """The proxy's server TLS context and each listener's (certificates read now)."""
    server_ssl = (
        server_context(config.cert_file, config.key_file, config.keylog_client)
        if config.cert_file and config.key_file
        else None
    )
    listener_ssl: dict[ListenerConfig, ssl.SSLContext | None] = {}
    contexts = {(config.cert_file, config.key_file): server_ssl}
    for lc in config.listeners:
        pair = config.certificate(lc)
        if pair is not None and pair not in contexts:
            contexts[pair] = server_context(*pair, config.keylog_client)
        listener_ssl[lc] = None if pair is None else contexts[pair]
    return server_ssl, listener_ssl
