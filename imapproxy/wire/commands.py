"""Which commands a server reads arguments (and so literals) for, by phase.

Why this matters: a server skips the rest of a line it does not recognise *without*
honouring the literals on it (Dovecot does: ``x XFOO {19+}`` + ``b CREATE injected`` runs
``b CREATE``).  A proxy that framed those bytes as a literal would not see a command the
server executes.  So a non-synchronising literal in a command outside these sets is refused
by the proxy before it reaches the server.  (A synchronising literal is safe: the server
either says ``+`` or refuses, and the decoder waits to be told which.)
"""

from __future__ import annotations

from .conversation import Phase

# Any state (RFC 9051 §6.1) and not authenticated (§6.2).
_ANY = frozenset({"CAPABILITY", "NOOP", "LOGOUT", "ID", "ENABLE"})
NOT_AUTHENTICATED_COMMANDS = _ANY | {"STARTTLS", "AUTHENTICATE", "LOGIN"}

# Authenticated and selected (RFC 9051 §6.3, §6.4) and common extensions (IDLE, NAMESPACE,
# UNSELECT, MOVE, UIDPLUS, QUOTA, ACL, METADATA, SORT/THREAD, NOTIFY, COMPRESS, URLAUTH,
# CONDSTORE/QRESYNC via SELECT/FETCH/STORE arguments).
AUTHENTICATED_COMMANDS = _ANY | {
    "APPEND", "CHECK", "CLOSE", "COMPRESS", "COPY", "CREATE", "DELETE", "DELETEACL",
    "EXAMINE", "EXPUNGE", "FETCH", "GENURLAUTH", "GETACL", "GETMETADATA", "GETQUOTA",
    "GETQUOTAROOT", "IDLE", "LIST", "LISTRIGHTS", "LSUB", "MOVE", "MYRIGHTS", "NAMESPACE",
    "NOTIFY", "RENAME", "RESETKEY", "SEARCH", "SELECT", "SETACL", "SETMETADATA", "SETQUOTA",
    "SORT", "STATUS", "STORE", "SUBSCRIBE", "THREAD", "UNSELECT", "UNSUBSCRIBE", "URLFETCH",
    "UID COPY", "UID EXPUNGE", "UID FETCH", "UID MOVE", "UID SEARCH", "UID SORT",
    "UID STORE", "UID THREAD",
}  # fmt: skip


def reads_literals(name: str, phase: Phase) -> bool:
    """Whether a server in ``phase`` parses the arguments of command ``name``."""
    if phase is Phase.NOT_AUTHENTICATED:
        return name in NOT_AUTHENTICATED_COMMANDS
    return name in AUTHENTICATED_COMMANDS
