"""How a session ends: the closed set of end reasons and the exception that carries one.

The reasons are fit for metric labels and log fields; each names the side at fault.
"""

from __future__ import annotations

from ..logsafe import safe
from ..wire import Conversation

_SHOWN_BYE = 120  # characters of a server's BYE text shown in the end line

END_REASONS: dict[str, str] = {
    # the client
    "logout": "the client's LOGOUT was answered",
    "client_closed": "the client closed or broke the connection",
    "client_protocol_error": "the client broke the protocol or a limit (BYE)",
    "tls_failed": "the client's TLS handshake failed or timed out",
    "idle_timeout": "the client sent nothing for the idle timeout",
    "client_stalled": "the client stopped for the idle timeout in the middle of a message",
    "login_timeout": "no login within login_timeout of connecting (the client's deadline)",
    # the server
    "upstream_bye": "the server said BYE by itself (shutdown, its own timeout)",
    "upstream_stalled": "a command in progress, the client waiting: the server said nothing "
    "for the answer timeout",
    "upstream_unavailable": "cannot connect to the server, or it did not greet in time",
    "upstream_refused": "the server greeted with BYE",
    "upstream_tls_failed": "TLS (or STARTTLS) to the server failed",
    "upstream_protocol": "the server broke the protocol during set-up",
    "upstream_protocol_error": "the server broke the protocol or a limit during the relay",
    "upstream_closed": "the server closed or broke the connection",
    "upstream_desync": "the server asked for a continuation nothing waited for",
    # the proxy
    "shutdown": "the proxy shut down (after the drain)",
    "connection_lost": "a connection broke while the proxy wrote to it",
    "closed": "both directions ended without another reason",
    "cancelled": "the proxy stopped the session's task",
    "error": "an internal error (logged with its traceback)",
    # filters
    "filter_disconnect": "a filter ended the session (its Disconnect verdict)",
    "filter_error": "a filter set to on_error = closed failed where only ending the session "
    "was safe (making it, starting it, or on a response)",
}


class SessionEnd(Exception):
    """Ends a session with a reason (a closed set, fit for metric labels) and a BYE."""

    def __init__(self, reason: str, detail: str, bye: bytes | None = None) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.bye = bye


def unavailable(reason: str, detail: str) -> SessionEnd:
    text = detail.replace("\r", " ").replace("\n", " ")
    return SessionEnd(
        reason, detail, b"* BYE [UNAVAILABLE] " + text.encode("ascii", "replace") + b"\r\n"
    )


def named_bye(end: SessionEnd, conv: Conversation) -> SessionEnd:
    """A session that ended after the server's own BYE (it shut down, or timed the
    session out) is the server's doing, not a LOGOUT."""
    if end.reason != "logout" or conv.bye is None or conv.bye_requested:
        return end
    text = safe(conv.bye.split(b" ", 2)[-1].rstrip(b"\r\n"), _SHOWN_BYE)
    return SessionEnd("upstream_bye", f"upstream said BYE: {text}")
