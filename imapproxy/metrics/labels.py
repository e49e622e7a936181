"""The closed sets every metric label takes its values from, and the mappings onto them.

A label value is never taken from the wire or from an exception's text: command names,
SASL mechanisms and TLS errors are mapped onto the sets here (anything unknown is
``other``), the rest comes from the configuration (listener, upstream, filter and rule
names).  Bucket bounds are here too, each with its reason.
"""

from __future__ import annotations

import errno
import socket
import ssl

import trio

from ..relay.ends import END_REASONS
from ..relay.events import REJECT_REASONS
from ..wire.limits import Limits

# Command names, with the UID forms as two words (as Dovecot's cmd_name).  Clients choose
# command names: anything else is "other".
COMMANDS: tuple[str, ...] = (
    "CAPABILITY", "NOOP", "LOGOUT", "STARTTLS", "AUTHENTICATE", "LOGIN", "ENABLE", "ID",
    "SELECT", "EXAMINE", "CREATE", "DELETE", "RENAME", "SUBSCRIBE", "UNSUBSCRIBE", "LIST",
    "LSUB", "NAMESPACE", "STATUS", "APPEND", "IDLE", "CHECK", "CLOSE", "UNSELECT", "EXPUNGE",
    "SEARCH", "FETCH", "STORE", "COPY", "MOVE", "SORT", "THREAD",
    "UID FETCH", "UID SEARCH", "UID STORE", "UID COPY", "UID MOVE", "UID EXPUNGE",
    "UID SORT", "UID THREAD",
    "GETQUOTA", "GETQUOTAROOT", "SETQUOTA", "GETACL", "SETACL", "DELETEACL", "MYRIGHTS",
    "LISTRIGHTS", "GETMETADATA", "SETMETADATA", "COMPRESS", "NOTIFY",
    "other",
)  # fmt: skip
COMMAND_SET = frozenset(COMMANDS)
# IDLE's duration is the client's choice (up to 29 minutes): it has a histogram of its own.
TIMED_COMMANDS: tuple[str, ...] = tuple(c for c in COMMANDS if c != "IDLE")

# How a command ended: the tagged status, or what the proxy saw instead.
COMMAND_RESULTS = ("OK", "NO", "BAD", "BYE", "blocked", "aborted")
STATUSES = frozenset({"OK", "NO", "BAD"})

# "LOGIN" is the LOGIN command (and AUTHENTICATE LOGIN: the same user name and password).
MECHANISMS: tuple[str, ...] = (
    "LOGIN", "PLAIN", "CRAM-MD5", "DIGEST-MD5", "SCRAM-SHA-1", "SCRAM-SHA-256", "XOAUTH2",
    "OAUTHBEARER", "EXTERNAL", "GSSAPI", "ANONYMOUS", "other",
)  # fmt: skip
_MECHANISM_SET = frozenset(MECHANISMS)
AUTH_RESULTS = ("success", "failure", "blocked", "aborted")

TLS_MODES = ("implicit", "starttls", "none")
SIDES = ("client", "upstream")
TLS_VERSIONS = ("TLSv1.2", "TLSv1.3", "other")
TLS_FAILURES = ("timeout", "eof", "certificate", "protocol", "cipher", "other")
UPSTREAM_ERRORS = ("refused", "timeout", "dns", "closed", "tls", "protocol", "bye", "other")
PROTOCOL_ERRORS: tuple[str, ...] = (
    *Limits.__slots__,  # type: ignore[attr-defined]  # the limit that was hit
    "framing",  # a message the codec cannot frame (no limit involved)
    "stray_continuation",  # the server sent "+" when nothing waited for one
    "other",
)
DIRECTIONS = ("received", "sent")
RELOAD_RESULTS = ("success", "failure")
CLOSE_REASONS: tuple[str, ...] = tuple(END_REASONS)
REJECTIONS: tuple[str, ...] = REJECT_REASONS
RELAY = "relay"  # the filter label of what the relay itself decided
# Verdicts other than pass (the chain reports them): commands and responses.
VERDICTS = ("replace", "reject", "answer", "drop", "disconnect")
OTHER = "other"

# ------------------------------------------------------------------ buckets (seconds, bytes)

# A command through a proxy on the same network as its server: 0.5 ms (NOOP over loopback)
# to a minute (a SEARCH of a large mailbox, a big APPEND).
COMMAND_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0, 60.0,
)  # fmt: skip
# IDLE lasts until the client has something to do; clients re-issue it within 29 minutes.
IDLE_BUCKETS = (1.0, 10.0, 30.0, 60.0, 300.0, 600.0, 900.0, 1200.0, 1500.0, 1800.0, 3600.0)
# Sessions: a mobile check (seconds) to a desktop client kept open all day.
SESSION_BUCKETS = (1.0, 10.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0,
                   86400.0)  # fmt: skip
# Connect + TLS + greeting: sub-millisecond on loopback, seconds over a WAN or when loaded.
CONNECT_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
# Literals: a short flag list or name (bytes) to a large attachment (256 MiB); x4 steps.
LITERAL_BUCKETS = tuple(float(1024 * 4**n) for n in range(10))

# ------------------------------------------------------------------ mappings


def command_label(name: str, uid: bool) -> str:
    """The label of a command (``name`` upper-case without UID, as in CommandView)."""
    full = "UID " + name if uid else name
    return full if full in COMMAND_SET else OTHER


def status_label(status: str) -> str:
    """A tagged status as a result: OK/NO/BAD (anything else a server sends is BAD)."""
    return status if status in STATUSES else "BAD"


def mechanism_label(name: str, raw: bytes) -> str:
    """The mechanism of a LOGIN or AUTHENTICATE command: the word after the command name
    in its first line (never anything else of ``raw``, which holds credentials)."""
    if name == "LOGIN":
        return "LOGIN"
    words = raw.split(None, 3)
    if len(words) < 3:
        return OTHER
    mech = words[2].decode("ascii", "replace").upper()
    return mech if mech in _MECHANISM_SET else OTHER


def tls_version_label(version: str | None) -> str:
    return version if version in TLS_VERSIONS else OTHER


def tls_failure_label(error: BaseException | None) -> str:
    """A failed handshake's cause (None: it timed out) as a reason from TLS_FAILURES."""
    if error is None or isinstance(error, trio.TooSlowError):
        return "timeout"
    if isinstance(error, ssl.SSLCertVerificationError):
        return "certificate"
    if isinstance(error, ssl.SSLEOFError | ssl.SSLZeroReturnError):
        return "eof"
    if isinstance(error, ssl.SSLError):
        reason = (error.reason or "").upper()
        if "CERT" in reason or "UNKNOWN_CA" in reason:
            return "certificate"
        if "CIPHER" in reason or "SIGNATURE" in reason or "GROUP" in reason:
            return "cipher"
        if "EOF" in reason:
            return "eof"
        if "VERSION" in reason or "PROTOCOL" in reason or "RECORD" in reason or "HTTP" in reason:
            return "protocol"
        return OTHER
    if isinstance(error, ConnectionError | trio.BrokenResourceError | EOFError):
        return "eof"
    return OTHER


def upstream_error_label(reason: str, error: BaseException | None) -> str:
    """A failed upstream set-up (its end reason and cause) as a reason from
    UPSTREAM_ERRORS."""
    if reason == "upstream_tls_failed":
        return "tls"
    if reason == "upstream_refused":
        return "bye"
    if reason == "upstream_protocol":
        return "protocol"
    if reason != "upstream_unavailable":
        return OTHER
    if error is None or isinstance(error, trio.BrokenResourceError | EOFError):
        return "closed"  # it closed (or broke) the connection before greeting
    if isinstance(error, trio.TooSlowError):
        return "timeout"
    return _connect_error_label(error)


def _connect_error_label(error: BaseException) -> str:
    if isinstance(error, socket.gaierror):
        return "dns"
    if isinstance(error, ConnectionRefusedError):
        return "refused"
    if isinstance(error, OSError) and error.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
        return "refused"
    if isinstance(error, TimeoutError):
        return "timeout"
    # trio.open_tcp_stream: "all attempts to connect ... failed", the errors as its cause
    cause = error.__cause__
    if isinstance(cause, BaseExceptionGroup) and cause.exceptions:
        return _connect_error_label(cause.exceptions[0])
    if isinstance(cause, OSError):
        return _connect_error_label(cause)
    return OTHER


def protocol_error_label(reason: str) -> str:
    return reason if reason in PROTOCOL_ERRORS else OTHER
