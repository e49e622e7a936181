"""What the relay reports that filters cannot see: the observer interface for metrics.

Filters see sessions from the upstream's greeting on (commands, responses, logins).
Connections refused before that, TLS handshakes, the upstream's set-up, protocol errors
and how every session ended are the relay's own; it reports them here, one call each, to
a :class:`ProxyEvents` passed in (``Proxy(config, filters=..., events=...)``).  This class
does nothing: subclass it and override what you need (``imapproxy.metrics`` does).

Rules for implementations: methods are called on the event loop, so they must be quick
and must not block or raise.  Arguments are closed sets or numbers, except where an
exception is passed for the implementation to classify (into a closed set of its own:
never its text as a label).  Session ids identify a session across calls.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..config import ListenerConfig, ProxyConfig

# Why a connection is refused before it becomes a session (Proxy._handle).
REJECT_REASONS = ("max_sessions", "max_sessions_per_address", "proxy_protocol")


class ByteCounts(Protocol):
    """A session's running byte counts (its ``SessionStats``), read at any time."""

    bytes_from_client: int
    bytes_to_client: int
    bytes_from_upstream: int
    bytes_to_upstream: int


class ProxyEvents:
    """No-op observer of the relay (see the module docstring)."""

    __slots__ = ()

    # ------------------------------------------------------------------ process

    def configured(
        self,
        config: ProxyConfig,
        filter_names: tuple[str, ...],
        filter_errors: collections.Counter[str],
    ) -> None:
        """The proxy was built: its configuration, the chain's filter names (in order)
        and its filter error counts (by filter name, kept up to date by the relay)."""

    def config_reloaded(self, ok: bool) -> None:
        """A configuration reload was tried (``ok``: it took effect)."""

    # ------------------------------------------------------------------ client leg

    def connection_accepted(self, listener: str) -> None:
        """A TCP connection was accepted on the listener of that name."""

    def connection_rejected(self, listener: str, reason: str) -> None:
        """An accepted connection was refused (``reason`` in :data:`REJECT_REASONS`)."""

    def session_opened(self, session_id: str, listener: ListenerConfig, stats: ByteCounts) -> None:
        """A session starts; ``stats`` are its byte counts, updated as it goes."""

    def session_closed(self, session_id: str, reason: str, duration: float) -> None:
        """A session ended (``reason`` in ``imapproxy.relay.ends.END_REASONS``)."""

    def tls_handshake(self, session_id: str, side: str, version: str | None) -> None:
        """A TLS handshake completed (``side``: "client" or "upstream")."""

    def tls_failed(self, session_id: str, side: str, error: BaseException | None) -> None:
        """A TLS handshake failed; ``error`` is the cause (None: it timed out)."""

    def starttls_injection(self, session_id: str, side: str) -> None:
        """Bytes sent after a STARTTLS OK and before TLS were discarded on that side."""

    def protocol_error(self, session_id: str, side: str, reason: str) -> None:
        """The peer on ``side`` ("client", "upstream") broke the protocol; ``reason`` is a
        ``Limits`` field name, "framing", "malformed_command", "tag_in_use" or
        "stray_continuation"."""

    # ------------------------------------------------------------------ commands
    # (per command: implementations must be cheap; these carry no view, see the metrics)

    def command_started(self, session_id: str, tag: bytes, name: str) -> None:
        """A client command's first part is being relayed (``name`` as the client spelt
        it, upper-case, ``UID FETCH`` as two words; not checked against any list)."""

    def command_completed(self, session_id: str, tag: bytes, status: str) -> None:
        """The server's tagged completion of a command (status OK, NO or BAD)."""

    def filter_verdict(self, filter: str, verdict: str, rule: str | None) -> None:
        """A filter's verdict that was not a pass (see ``chain.VerdictReporter``)."""

    def command_blocked(self, session_id: str, tag: bytes) -> None:
        """A filter refused or answered a started command itself: it never reached
        the server."""

    def command_answered(self, session_id: str, name: str, result: str) -> None:
        """The relay answered a command itself without relaying it (STARTTLS: "OK" or
        "BAD"; a command it refused, malformed or with a tag in use: "blocked")."""

    # ------------------------------------------------------------------ upstream leg

    def upstream_connecting(self, session_id: str) -> None:
        """The upstream's set-up begins (connect, TLS, greeting)."""

    def upstream_connected(self, session_id: str, seconds: float) -> None:
        """The upstream greeted (after TLS/STARTTLS), ``seconds`` after set-up began."""

    def upstream_failed(self, session_id: str, reason: str, error: BaseException | None) -> None:
        """The set-up failed: ``reason`` is the session's end reason, ``error`` the cause
        when there is one (an ``OSError`` of the connect, ``trio.TooSlowError``...)."""


NO_EVENTS = ProxyEvents()
