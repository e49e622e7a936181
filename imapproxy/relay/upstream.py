"""The upstream leg's set-up: connect, TLS (implicit or STARTTLS), the greeting.

Everything here happens before the client is relayed anything; each step is bounded by its
own timeout, and any failure is a :class:`~.ends.SessionEnd` that gives the client
``* BYE [UNAVAILABLE] <reason>``.  STARTTLS to the upstream is strict: no STARTTLS
capability, or a refusal, is a failure, never a plaintext fallback; bytes the upstream sends
after its STARTTLS OK before TLS are discarded (response injection, RFC 9051 §6.2.1), and
the capabilities it announced before TLS no longer count.
"""

from __future__ import annotations

import logging
import os
import ssl
import time
from typing import Protocol

import trio

from ..capabilities import listed_capabilities, with_code_list
from ..config import ProxyConfig, UpstreamTls
from ..logsafe import MAX_DETAIL, safe
from ..net.busypoll import BusyPoll
from ..net.transport import SocketStream, TlsStream
from ..wire import NEED_DATA, Conversation, EndOfStream, Frame, FrameKind, ProtocolError
from .ends import SessionEnd, unavailable
from .events import NO_EVENTS, ProxyEvents
from .proxied import ClientAddresses, id_command, upstream_preamble

log = logging.getLogger("imapproxy.session")


class Counts(Protocol):
    """What the set-up counts (the session's stats)."""

    bytes_from_upstream: int
    bytes_to_upstream: int


_PROXY_TAG = b"IMAPPROXY"  # tags of the few commands the proxy itself sends upstream


class UpstreamSetup:
    def __init__(
        self,
        config: ProxyConfig,
        conv: Conversation,
        stats: Counts,
        upstream_ssl: ssl.SSLContext | None,
        busy_poll: BusyPoll | None,
        session_id: str,
        events: ProxyEvents = NO_EVENTS,
        client: ClientAddresses | None = None,
    ) -> None:
        """``client``: whom the session serves, for ``upstream.proxy_protocol`` and
        ``upstream.id_forwarding`` (None: the proxy's own connection, ``imapproxy check``)."""
        self.config = config
        self.client = client
        self.events = events
        self.conv = conv
        self.stats = stats
        self.upstream_ssl = upstream_ssl
        self.busy_poll = busy_poll
        self.session_id = session_id
        self.stream: trio.abc.Stream | None = None

    async def open(self) -> Frame:
        """Connect, TLS or STARTTLS as configured, up to the greeting (whose capability
        list, after STARTTLS, is the one the upstream gave over TLS).  A failure is logged
        at WARNING (the operator's upstream settings may be wrong) and raised."""
        self.events.upstream_connecting(self.session_id)
        started = time.monotonic()
        try:
            greeting = await self._open()
        except SessionEnd as end:
            # (its context: the OSError or TooSlowError it was raised for, if any)
            self.events.upstream_failed(self.session_id, end.reason, end.__context__)
            log.warning(
                "session %s: upstream %s: %s",
                self.session_id,
                self.config.upstream.endpoint,
                safe(end.detail, MAX_DETAIL),
            )
            raise
        self.events.upstream_connected(self.session_id, time.monotonic() - started)
        return greeting

    async def _open(self) -> Frame:
        timeouts = self.config.timeouts
        up = self.config.upstream
        try:
            with trio.fail_after(timeouts.upstream_connect):
                await self._connect_upstream()
        except trio.TooSlowError:
            raise unavailable(
                "upstream_unavailable",
                f"cannot connect to upstream in {timeouts.upstream_connect:g} s (a firewall "
                "dropping the connection, or a wrong address?)",
            ) from None
        if up.tls is UpstreamTls.IMPLICIT:
            await self._upstream_tls()  # under its own tls_handshake timeout
        try:
            with trio.fail_after(timeouts.upstream_greeting):
                greeting = await self._upstream_greeting()
        except trio.TooSlowError:
            hint = (
                "is it an IMAP server over TLS?"
                if up.tls is UpstreamTls.IMPLICIT
                else "is it an IMAP server? a port that expects TLS first (993) needs "
                "--upstream-tls implicit"
            )
            raise _advised(
                "upstream_unavailable",
                f"upstream sent no greeting in {timeouts.upstream_greeting:g} s",
                hint,
            ) from None
        if up.tls is UpstreamTls.STARTTLS:
            try:
                greeting = await self._upstream_starttls(greeting)
            except trio.TooSlowError:
                raise unavailable(
                    "upstream_unavailable", "upstream did not answer in time (STARTTLS)"
                ) from None
        if up.id_forwarding and self.client is not None:
            try:
                with trio.fail_after(timeouts.upstream_greeting):
                    await self._forward_id(self.client)
            except trio.TooSlowError:
                raise unavailable("upstream_protocol", "upstream did not answer ID") from None
        return greeting

    async def capabilities(self) -> list[bytes]:
        """Ask the upstream for its capabilities now (``imapproxy check``)."""
        try:
            with trio.fail_after(self.config.timeouts.upstream_greeting):
                return await self._upstream_capabilities(b"3")
        except trio.TooSlowError:
            raise unavailable(
                "upstream_protocol", "upstream did not answer CAPABILITY in time"
            ) from None

    async def _connect_upstream(self) -> None:
        up = self.config.upstream
        host, port = up.endpoint.host, up.endpoint.port
        try:
            connected = await trio.open_tcp_stream(host, port)
        except OSError as exc:
            raise unavailable(
                "upstream_unavailable", f"cannot connect to upstream: {_connect_error(exc)}"
            ) from None
        self.stream = SocketStream.from_trio(connected, busy_poll=self.busy_poll)
        if up.proxy_protocol == "v2":  # before anything else, TLS included
            try:
                await self._send_upstream_now(upstream_preamble(self.client))
            except trio.BrokenResourceError as exc:
                raise unavailable(
                    "upstream_unavailable", f"upstream connection failed: {exc}"
                ) from None

    async def _forward_id(self, client: ClientAddresses) -> None:
        """The proxy's own ID, naming the client (its answer is not relayed).  A server
        that refuses it still serves the session (logged: it will not see the client)."""
        tag = _PROXY_TAG + b"4"
        await self._send_upstream_now(id_command(tag, client))
        while True:
            frame = await self._read_upstream_frame()
            if frame.kind is FrameKind.STATUS and frame.tag == tag:
                break
        if frame.name != "OK":
            log.warning(
                "session %s: upstream refused ID (upstream.id_forwarding): it does not see "
                "the client's address",
                self.session_id,
            )

    async def _upstream_greeting(self) -> Frame:
        greeting = await self._read_upstream_frame()
        if greeting.kind is not FrameKind.GREETING:
            raise _advised(
                "upstream_protocol",
                "upstream sent no IMAP greeting",
                f"it sent {safe(greeting.raw[:80])!r} instead of '* OK ...': is it an IMAP "
                "server?",
            )
        if greeting.name == "BYE":
            # The upstream refuses us; the client deserves to see why.
            raise SessionEnd("upstream_refused", "upstream greeted with BYE", greeting.raw)
        return greeting

    async def _upstream_tls(self) -> None:
        up = self.config.upstream
        assert self.stream is not None and self.upstream_ssl is not None
        tls = TlsStream(
            self.stream,
            self.upstream_ssl,
            server_hostname=up.server_hostname or up.endpoint.host,
        )
        self.stream = tls
        try:
            with trio.fail_after(self.config.timeouts.tls_handshake):
                await tls.do_handshake()
        except trio.TooSlowError:
            self.events.tls_failed(self.session_id, "upstream", None)
            raise unavailable("upstream_tls_failed", "upstream TLS handshake timed out") from None
        except trio.BrokenResourceError as exc:
            self.events.tls_failed(self.session_id, "upstream", exc.__cause__ or exc)
            what, advice = _tls_advice(exc.__cause__ or exc)
            raise _advised("upstream_tls_failed", f"upstream TLS failed: {what}", advice) from None
        self.events.tls_handshake(self.session_id, "upstream", tls.version())

    async def _upstream_starttls(self, greeting: Frame) -> Frame:
        """STARTTLS to the upstream; each exchange is bounded by upstream_greeting, the
        handshake by tls_handshake."""
        answer_timeout = self.config.timeouts.upstream_greeting
        known = self.conv.capabilities
        if known is None:
            with trio.fail_after(answer_timeout):
                listed = await self._upstream_capabilities(b"0")
            known = frozenset(c.decode("ascii", "replace").upper() for c in listed)
        if "STARTTLS" not in known:
            raise unavailable(
                "upstream_tls_failed", "upstream does not offer STARTTLS (refusing plaintext)"
            )
        with trio.fail_after(answer_timeout):
            await self._send_upstream_now(_PROXY_TAG + b"1 STARTTLS\r\n")
            while True:
                frame = await self._read_upstream_frame()
                if frame.kind is FrameKind.STATUS and frame.tag == _PROXY_TAG + b"1":
                    break
        if frame.name != "OK":
            raise unavailable("upstream_tls_failed", "upstream refused STARTTLS")
        injected = self.conv.server.start_tls()
        if injected:
            self.events.starttls_injection(self.session_id, "upstream")
            log.warning(
                "session %s: upstream sent %d bytes after its STARTTLS OK; discarded "
                "(response injection)",
                self.session_id,
                len(injected),
            )
        await self._upstream_tls()
        # What the upstream said before TLS no longer counts (RFC 9051 §6.2.1).
        self.conv.capabilities = None
        with trio.fail_after(answer_timeout):
            caps = await self._upstream_capabilities(b"2")
        return _with_capabilities(greeting, caps)

    async def _upstream_capabilities(self, n: bytes) -> list[bytes]:
        """Ask the upstream for its capabilities (before the client is relayed anything);
        returns them as the upstream spelt them."""
        tag = _PROXY_TAG + n
        await self._send_upstream_now(tag + b" CAPABILITY\r\n")
        caps: list[bytes] | None = None
        while True:
            frame = await self._read_upstream_frame()
            if frame.kind is FrameKind.STATUS and frame.tag == tag:
                break
            if frame.kind is FrameKind.DATA and frame.name == "CAPABILITY":
                caps = listed_capabilities(frame.raw)
        if frame.name != "OK" or caps is None:
            raise unavailable("upstream_protocol", "upstream did not answer CAPABILITY")
        self.conv.set_capabilities(tuple(c.decode("ascii", "replace") for c in caps))
        return caps

    async def _send_upstream_now(self, data: bytes) -> None:
        assert self.stream is not None
        self.stats.bytes_to_upstream += len(data)
        await self.stream.send_all(data)

    async def _read_upstream_frame(self) -> Frame:
        """One complete frame from the upstream during set-up (no literals expected)."""
        assert self.stream is not None
        while True:
            try:
                ev = self.conv.next_server_event()
            except ProtocolError as exc:
                self.events.protocol_error(self.session_id, "upstream", exc.limit or "framing")
                raise unavailable("upstream_protocol", f"upstream protocol error: {exc}") from None
            if ev is NEED_DATA:
                try:
                    data = await self.stream.receive_some(self.config.session_limits.read_size)
                except trio.BrokenResourceError as exc:
                    raise unavailable(
                        "upstream_unavailable", f"upstream connection failed: {exc}"
                    ) from None
                self.stats.bytes_from_upstream += len(data)
                self.conv.receive_server(data)
                continue
            if type(ev) is Frame and ev.final:
                return ev
            if type(ev) is Frame and ev.oversize and ev.literal is None:
                # A response longer than max_line_bytes: the greeting and the answer to
                # the proxy's own CAPABILITY must be rewritten, which needs them whole;
                # anything else (an untagged OK with a long text) is skipped, and its
                # last part still tells a tagged completion.
                if ev.first and (
                    ev.kind is FrameKind.GREETING
                    or (ev.kind is FrameKind.DATA and ev.name == "CAPABILITY")
                ):
                    raise unavailable(
                        "upstream_protocol",
                        f"upstream {ev.name or ev.kind.value} response longer than "
                        f"{self.config.limits.max_line_bytes} bytes during set-up",
                    )
                continue
            if type(ev) is EndOfStream:
                raise unavailable("upstream_unavailable", "upstream closed the connection")
            raise unavailable("upstream_protocol", "unexpected literal from upstream during set-up")


def _connect_error(exc: OSError) -> str:
    """Why a connection failed: trio's "all attempts to connect ... failed" names no
    reason; its cause holds one error per address tried."""
    cause = exc.__cause__
    if isinstance(cause, BaseExceptionGroup):
        reasons = dict.fromkeys(
            os.strerror(e.errno) if e.errno else str(e)
            for e in cause.exceptions
            if isinstance(e, OSError)
        )
        if reasons:
            return ", ".join(reasons)
    return exc.strerror or str(exc)


def _advised(reason: str, what: str, advice: str) -> SessionEnd:
    """A set-up failure: the client's BYE says what failed; the log line (and ``imapproxy
    check``) also says what the operator can do about it, and may quote the upstream."""
    end = unavailable(reason, what)
    return SessionEnd(reason, f"{what}: {advice}" if advice else what, end.bye)


def _tls_advice(cause: BaseException) -> tuple[str, str]:
    """What went wrong in the upstream handshake, and which flag fixes it."""
    if isinstance(cause, ssl.SSLCertVerificationError):
        detail = cause.verify_message or str(cause)
        if cause.verify_code == _X509_V_ERR_HOSTNAME_MISMATCH or "mismatch" in detail:
            fix = "give the name it is issued for with --upstream-name NAME"
        elif "expired" in detail:
            fix = "the upstream must renew it"
        else:
            fix = (
                "give the CA that signed it with --upstream-ca FILE (or, for a test only, "
                "--upstream-insecure)"
            )
        return f"certificate not verified ({detail})", fix
    if isinstance(cause, ssl.SSLError) and cause.reason in _NOT_TLS:
        return (
            f"not TLS ({cause.reason})",
            "the upstream does not speak TLS on this port: use --upstream-tls starttls "
            "(port 143) or --upstream-tls none",
        )
    return str(cause), ""


_X509_V_ERR_HOSTNAME_MISMATCH = 62
# What OpenSSL says when the other side answers a ClientHello with plain text ("* OK ...").
_NOT_TLS = frozenset(
    {"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG", "UNKNOWN_PROTOCOL",
     "HTTP_REQUEST"}
)  # fmt: skip


def _with_capabilities(greeting: Frame, caps: list[bytes]) -> Frame:
    """The greeting with its [CAPABILITY] list replaced by ``caps`` (after upstream TLS)."""
    return greeting.with_raw(with_code_list(greeting.raw, caps))
