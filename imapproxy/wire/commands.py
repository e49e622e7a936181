"""The IMAP command names this proxy knows, in one place.

Used to tell a *well-formed command* (a tag and a known command name) from anything else a
client may send.  The decoder needs that to decide what may be shown: after a LOGIN or
AUTHENTICATE, a client that was refused (by the proxy or the server) may still send the
password or the SASL response it had prepared, and such a line (``alice secretpw``, a bare
base64 string) must never be taken for a command and shown.  A name not in this set is
still relayed (the server decides); it only does not count as "the client is sending
commands again".
"""

from __future__ import annotations

# RFC 9051 (IMAP4rev2) and RFC 3501 (IMAP4rev1) commands.
_BASE = (
    "APPEND", "AUTHENTICATE", "CAPABILITY", "CHECK", "CLOSE", "COPY", "CREATE", "DELETE",
    "ENABLE", "EXAMINE", "EXPUNGE", "FETCH", "IDLE", "LIST", "LOGIN", "LOGOUT", "LSUB",
    "MOVE", "NAMESPACE", "NOOP", "RENAME", "SEARCH", "SELECT", "STARTTLS", "STATUS", "STORE",
    "SUBSCRIBE", "UID", "UNSELECT", "UNSUBSCRIBE",
)  # fmt: skip
# Common extensions: ACL (RFC 4314), QUOTA (RFC 9208), ID (RFC 2971), COMPRESS (RFC 4978),
# SORT/THREAD (RFC 5256), ESEARCH (RFC 6237), METADATA (RFC 5464), NOTIFY (RFC 5465),
# URLAUTH (RFC 4467), REPLACE (RFC 8508), UNAUTHENTICATE (RFC 8437),
# XLIST (Gmail), Dovecot's X-commands.
_EXTENSIONS = (
    "COMPRESS", "DELETEACL", "ESEARCH", "GENURLAUTH", "GETACL", "GETMETADATA", "GETQUOTA",
    "GETQUOTAROOT", "ID", "LISTRIGHTS", "MYRIGHTS", "NOTIFY", "REPLACE", "RESETKEY",
    "SETACL", "SETMETADATA", "SETQUOTA", "SORT", "THREAD", "UNAUTHENTICATE", "URLFETCH",
    "XLIST", "X-STATE", "XAPPLEPUSHSERVICE",
)  # fmt: skip

KNOWN_COMMANDS = frozenset(_BASE + _EXTENSIONS)

# What may follow UID (RFC 9051 §6.4.9, RFC 4315 UID EXPUNGE, RFC 5256, RFC 8508).
UID_COMMANDS = frozenset({"COPY", "MOVE", "FETCH", "SEARCH", "STORE", "EXPUNGE", "SORT",
                          "THREAD", "REPLACE"})  # fmt: skip

# Commands that carry credentials: every form of them (any case, under UID, with a name
# glued to something, with any number of arguments) is redacted wholesale.
CREDENTIAL_COMMANDS = frozenset({"LOGIN", "AUTHENTICATE"})

# SASL mechanisms whose name may be shown (RFC 4422 registry, common ones).  Anything else
# in the mechanism's place (a client that put its base64 response there) is shown as ***.
SASL_MECHANISMS = frozenset(
    {
        "PLAIN", "LOGIN", "XOAUTH2", "OAUTHBEARER", "CRAM-MD5", "DIGEST-MD5", "EXTERNAL",
        "ANONYMOUS", "GSSAPI", "GS2-KRB5", "NTLM", "OTP", "SCRAM-SHA-1", "SCRAM-SHA-1-PLUS",
        "SCRAM-SHA-256", "SCRAM-SHA-256-PLUS", "SCRAM-SHA-512", "SCRAM-SHA-512-PLUS",
    }
)  # fmt: skip
