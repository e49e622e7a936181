"""Every size limit the wire codec enforces, in one place.

Each default carries the reason it was chosen.  A ``Limits`` is passed into every decoder and
parser; nothing in the codec reads a module-level constant instead.
"""

from __future__ import annotations

from dataclasses import dataclass

KIB = 1024
MIB = 1024 * KIB


@dataclass(frozen=True, slots=True)
class Limits:
    # One protocol line (the text between literals, up to CRLF).
    # * Client lines: a longer one is refused (BYE).  Dovecot uses 64 KiB for a command
    #   line; long UID sets from real clients fit comfortably.
    # * Server lines have no length limit (a SEARCH result over 20,000 messages, an
    #   ENVELOPE with thousands of addresses): this is the longest one kept whole, so the
    #   longest that can be parsed.  A longer one is passed on in pieces of about this size
    #   (Frame.oversize), so a server line never costs more memory than this.
    max_line_bytes: int = 64 * KIB
    # A literal announced before the session is authenticated.  Only LOGIN / AUTHENTICATE /
    # ID arguments are legitimate then; nothing needs more than a few KiB.
    max_literal_bytes_unauthenticated: int = 64 * KIB
    # A literal announced once authenticated: the largest message (APPEND, FETCH BODY[]).
    # Streamed, never held, so this bounds time and upstream storage, not our memory.
    max_literal_bytes: int = 1024 * MIB
    # Literals up to this size are kept inside the frame's bytes; larger ones (and any that
    # would push a frame past it) are emitted as LiteralChunk events and never accumulated.
    inline_literal_bytes: int = 64 * KIB
    # RFC 7888 LITERAL-: a non-synchronising literal may not exceed 4096 octets.
    max_nonsync_literal_minus: int = 4096
    # Parenthesised-list nesting.  Real BODYSTRUCTUREs nest a handful of levels; the cap
    # stops recursion bombs in the parser.
    max_list_depth: int = 64
    # Tokens in one parsed message (all lists included).  A FETCH of many UIDs or a large
    # SEARCH result stays well below this.
    max_tokens: int = 100_000
    # Bytes a decoder will hold while it waits for the other side's decision (a
    # continuation request or a tagged reply) before it can read them.
    max_held_bytes: int = 64 * KIB
    # Literals in one command before authentication.  Each synchronising literal (and each
    # {n+}, which the relay sends on as {n}) costs a round trip to the server; LOGIN needs
    # 2, AUTHENTICATE none, ID a handful (RFC 2971: at most 30 field-value pairs, which a
    # client sends as quoted strings in practice).  A longer run is a client making the
    # proxy busy before anybody is known: the session ends.
    max_literals_unauthenticated: int = 16
    # Commands sent and not yet completed (pipelining).  Real clients pipeline tens to
    # hundreds; the cap bounds the per-session table of pending tags.
    max_pending_commands: int = 10_000

    def __post_init__(self) -> None:
        for name in self.__slots__:  # type: ignore[attr-defined]
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"Limits.{name} must be a non-negative integer")
        if self.max_line_bytes < 64:
            raise ValueError("Limits.max_line_bytes must be at least 64")

    def max_literal(self, authenticated: bool) -> int:
        if authenticated:
            return self.max_literal_bytes
        return self.max_literal_bytes_unauthenticated


DEFAULT_LIMITS = Limits()
