"""The public filter API: what a filter sees, the hooks it has, and the verdicts it returns.

A filter is an object with up to five hooks, made once per session by a factory, so
per-session state needs no locks (anything process-wide is shared explicitly, through the
factory).  Hooks are plain functions and do no I/O (one exception: a deciding filter's
``command`` hook may return an awaitable when it must wait, see :mod:`.chain`):

* ``session_started(session)``: the connection is set up (TLS details known);
* ``authenticated(session)``: the server accepted a login (``session.user`` is set);
* ``command(cmd, session) -> Verdict``: a client command, before any byte of it reaches
  the server;
* ``client_line(line, session) -> Verdict``: a client line that is not a command (a SASL
  line of AUTHENTICATE, IDLE's ``DONE``); its data is a ``Secret``;
* ``response(resp, session) -> Verdict``: a server response, before it reaches the client;
  a tagged completion carries the command it completes and its latency;
* ``session_ended(session, end)``: the session is over (reason, bytes, duration).

Commands pass the chain in its configured order and responses in the reverse order, so a
filter that renames something on the way in sees its own names on the way back.

Verdicts are values, never exceptions: :data:`PASS`; :class:`Replace` the message;
:class:`Reject` a command with a tagged NO/BAD made here (the command never reaches the
server); :class:`Answer` a command locally (untagged lines plus the tagged completion);
:class:`Drop` an untagged response; :class:`Disconnect` (a ``* BYE`` and close).

Nothing here knows about sockets, Trio or clocks: the relay builds the views and acts on
the verdicts.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Protocol

from ..wire.conversation import Phase  # RFC 9051 §3 states, as the server confirmed them
from ..wire.errors import ParseError
from ..wire.events import FrameKind
from ..wire.limits import DEFAULT_LIMITS
from ..wire.parser import parse_command
from ..wire.secret import Secret
from ..wire.tokens import Token

# ----------------------------------------------------------------------------- views


@dataclass(frozen=True, slots=True)
class TlsInfo:
    """The client leg's TLS, once it is up (implicit TLS or after STARTTLS)."""

    version: str
    cipher: str | None = None
    sni: str | None = None


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """What is known of a session when it starts; fixed for its life."""

    id: str
    client_host: str
    client_port: int
    listener: str  # the listener's name, e.g. "imap@127.0.0.1:1143"
    starttls: bool = False  # the listener offers STARTTLS (plain, with a certificate)


@dataclass(slots=True)
class SessionView:
    """A session as filters see it.  The relay keeps it up to date; filters read it.

    ``user`` is the name the client logged in with, set once the server said OK;
    ``upstream_user`` is the name the server saw when a filter mapped it.  ``scratch`` is
    per-session state shared by the filters of one chain (keyed by filter name, by
    convention).
    """

    info: SessionInfo
    tls: TlsInfo | None = None
    phase: Phase = Phase.NOT_AUTHENTICATED
    user: str | None = None
    upstream_user: str | None = None
    mechanism: str | None = None  # "LOGIN" for the LOGIN command, else the SASL mechanism
    selected: str | None = None  # the selected mailbox, decoded
    capabilities: frozenset[str] | None = None  # the server's, upper-case
    utf8: bool = False  # UTF8=ACCEPT enabled: mailbox names are UTF-8, not modified UTF-7
    scratch: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LiteralInfo:
    """A literal of a command or response: its size and how it was announced.  ``inline``
    literals are in the message's ``raw`` bytes and parsed arguments; the others stream
    after the decision, in bounded memory, and are never held."""

    size: int
    binary: bool = False
    nonsync: bool = False
    inline: bool = True


class _Unparsed:
    __slots__ = ()

    def __repr__(self) -> str:
        return "UNPARSED"


# ``CommandView.args`` not parsed yet: parsed from ``raw`` when first asked for.
UNPARSED: Any = _Unparsed()


class _Parsed:
    """``CommandView.args`` and ``parse_error``: given, or parsed from ``raw`` on first
    use (most commands are only ever shown, never taken apart: a transcript writes
    ``raw``, and parsing every pipelined command would cost more than relaying it)."""

    __slots__ = ("name",)

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            if self.name == "parse_error":
                return None  # (the dataclass field's default)
            raise AttributeError(self.name)  # (no default: a required field)
        d = obj.__dict__
        if d["args"] is UNPARSED:
            obj._parse()
        return d[self.name]

    def __set__(self, obj: Any, value: Any) -> None:
        obj.__dict__[self.name] = value


@dataclass(frozen=True)
class CommandView:
    """A client command, parsed.

    ``name`` is upper-case without a ``UID`` prefix (``uid`` says whether there was one;
    :attr:`full_name` gives ``"UID FETCH"``).  ``args`` are the wire parser's tokens
    (credentials wrapped in :class:`~imapproxy.wire.secret.Secret`), parsed from ``raw``
    when first asked for; a literal too large to hold is a
    :class:`~imapproxy.wire.tokens.LiteralRef` and ``complete`` is False: the decision is
    taken on what precedes it (APPEND's mailbox, flags and size) and the literal streams
    only after it passed.  ``raw`` is the command as the client sent it, up to that point
    (after a filter replaced it, as the next filter sees it: ``args`` follow).
    ``parse_error`` is set when the arguments could not be parsed (the head is still
    known; such a command usually gets a BAD from the server).
    """

    tag: bytes
    name: str
    uid: bool
    args: tuple[Token, ...] = _Parsed()  # type: ignore[assignment]
    raw: bytes
    literals: tuple[LiteralInfo, ...] = ()
    complete: bool = True
    parse_error: str | None = _Parsed()  # type: ignore[assignment]
    # LOGIN/AUTHENTICATE in any form, or what a client sent after a login the proxy
    # refused: ``raw`` holds credentials and must never be shown (args has them as Secret)
    sensitive: bool = False
    # What became of it, as observers see it (they run after the deciding filters):
    # None (passed), "replace", "reject", "answer", "disconnect", "abandoned" (the server
    # refused a literal of it: the rest never came), or "refuse" (the relay
    # itself refused it: a malformed head, a tag in use); ``by`` names who decided.
    verdict: str | None = None
    by: str | None = None
    rule: str | None = None  # the rule of that filter, when it named one

    def _parse(self) -> None:
        d = self.__dict__
        try:
            d["args"] = parse_command(self.raw, d.get("_limits") or DEFAULT_LIMITS).args
            d["parse_error"] = None
        except ParseError as exc:
            d["args"] = ()
            d["parse_error"] = exc.message

    def with_raw(self, raw: bytes, **changes: Any) -> CommandView:
        """The same command with other bytes (a filter's replacement): its ``args`` are
        parsed from them when asked for."""
        view = replace(self, raw=raw, args=UNPARSED, parse_error=None, **changes)
        if "_limits" in self.__dict__:
            view.__dict__["_limits"] = self.__dict__["_limits"]
        return view

    @property
    def full_name(self) -> str:
        return "UID " + self.name if self.uid else self.name

    @property
    def size(self) -> int:
        """Bytes of the whole command, streamed literals included."""
        return len(self.raw) + sum(lit.size for lit in self.literals if not lit.inline)


@dataclass(frozen=True, slots=True)
class ClientLineView:
    """A client line inside an exchange: ``kind`` is AUTH_DATA (one SASL message, base64,
    or ``*`` to cancel) or IDLE_DONE; ``tag`` is the exchange's command's tag."""

    kind: FrameKind
    tag: bytes | None
    data: Secret[bytes]
    size: int


@dataclass(frozen=True, slots=True)
class ResponseView:
    """A server response.

    ``kind`` is GREETING, STATUS (tagged or untagged OK/NO/BAD/BYE/PREAUTH), DATA
    (untagged data) or CONTINUATION.  For a tagged completion, ``command`` is the command
    it completes and ``latency`` the seconds since that command went upstream.
    ``oversize`` is True for a response too long to parse (its head, tag, name and size
    are known; it is relayed verbatim and cannot be replaced).
    """

    kind: FrameKind
    tag: bytes | None
    name: str
    raw: bytes
    number: int | None = None
    command: CommandView | None = None
    latency: float | None = None
    literals: tuple[LiteralInfo, ...] = ()
    oversize: bool = False
    # Made by the proxy, not the server: the name of the filter (or "relay") that made it.
    by: str | None = None

    @property
    def status(self) -> str | None:
        """OK/NO/BAD/BYE/PREAUTH for status responses and greetings, else None."""
        return self.name if self.kind in (FrameKind.STATUS, FrameKind.GREETING) else None


@dataclass(frozen=True, slots=True)
class SessionEndInfo:
    reason: str  # a closed set (see imapproxy.relay.session), fit for a metric label
    detail: str  # printable, for logs
    bytes_from_client: int
    bytes_from_upstream: int
    duration: float


# ----------------------------------------------------------------------------- verdicts


class Pass:
    """Let the message through unchanged."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "PASS"


PASS = Pass()


@dataclass(frozen=True, slots=True)
class Replace:
    """Send ``raw`` (one complete message, CRLF-terminated) instead.  The next filter sees
    the replacement.  A command keeps its tag.  A command whose last literal streams (its
    view is not ``complete``: a large APPEND) is replaced up to that literal: ``raw`` ends
    with the same announcement (``{N}``, same size and kind), and the literal follows
    as the client sends it.  Not for a response too long to parse.  ``rule``: which of
    the filter's rules asked for it (shown to observers, written in the transcript)."""

    raw: bytes
    rule: str | None = None


@dataclass(frozen=True, slots=True)
class Reject:
    """Refuse a command: ``tag NO|BAD [code] text``, made by the proxy; nothing reaches
    the server.  ``code`` is an RFC 5530 response code without brackets (None: none)."""

    text: str = "refused by policy"
    status: str = "NO"
    code: str | None = "NOPERM"
    rule: str | None = None  # which of the filter's rules refused it (never sent)


@dataclass(frozen=True, slots=True)
class Answer:
    """Answer a command locally: each of ``untagged`` (complete lines, CRLF-terminated),
    then ``tag status [code] text``; nothing reaches the server."""

    untagged: tuple[bytes, ...] = ()
    text: str = "done"
    status: str = "OK"
    code: str | None = None
    rule: str | None = None  # which of the filter's rules answered it (never sent)


class Drop:
    """Drop an untagged response (never a tagged completion or a continuation)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "DROP"


DROP = Drop()


@dataclass(frozen=True, slots=True)
class Disconnect:
    """End the session: ``* BYE [UNAVAILABLE] text`` to the client, both legs closed."""

    text: str = "closed by policy"
    code: str | None = "UNAVAILABLE"


Verdict = Pass | Replace | Reject | Answer | Drop | Disconnect
TERMINAL_FOR_COMMANDS = (Reject, Answer, Disconnect)
TERMINAL_FOR_RESPONSES = (Drop, Disconnect)

# ----------------------------------------------------------------------------- filters


class OnError(enum.Enum):
    """What happens when a filter's hook raises.  The exception is logged with the
    session id and counted either way."""

    CLOSED = "closed"  # fail closed: the command is refused NO [UNAVAILABLE], a
    # response hook's failure ends the session with BYE (a rewrite that failed could show
    # what it should hide)
    OPEN = "open"  # fail open: the message passes as it is


class Filter:
    """Base class with no-op hooks: override what you need.

    Set ``name`` (a default; logs, transcript records, ``by`` fields and metric labels use
    the name the chain was configured with: the ``[[filters]]`` table's ``name``, else its
    ``use``, so one filter configured twice is told apart).  A filter that
    only watches sets ``observes_only = True``: its verdicts are ignored, it runs after
    the filters that decide and sees what became of each message (``CommandView.verdict``,
    a replaced message as sent), and the relay does not hold a command back to assemble
    it for this filter alone.

    ``wants_commands`` and ``wants_responses`` say which messages the filter wants (command names
    without ``UID``, so ``"FETCH"`` covers ``UID FETCH``; response names such as
    ``"CAPABILITY"``, ``"OK"``, ``"LIST"``); ``None`` means all.  The relay builds views
    only for messages some filter wants, so a narrow filter costs nothing elsewhere.
    ``wants_codes`` adds status responses (and greetings) that carry one of these
    response codes (``"CAPABILITY"``, ``"ALERT"``, ...), whatever their name.
    :meth:`decided_commands` narrows, among the wanted commands, those the filter may
    refuse, answer or replace: only those are held back until whole (the others are
    shown once their last part has gone by, and a verdict on them is not acted on).
    """

    __slots__ = ()  # (subclasses may define slots: one filter per session adds up)

    name: ClassVar[str] = "filter"
    observes_only: ClassVar[bool] = False
    wants_commands: ClassVar[frozenset[str] | None] = None
    wants_responses: ClassVar[frozenset[str] | None] = None
    wants_codes: ClassVar[frozenset[str]] = frozenset()

    def decided_commands(self) -> frozenset[str] | None:
        """The commands this filter may decide about (None: every wanted command)."""
        return self.wants_commands

    def session_started(self, session: SessionView) -> None:
        return None

    def authenticated(self, session: SessionView) -> None:
        return None

    def command(self, cmd: CommandView, session: SessionView) -> Verdict:
        return PASS

    def client_line(self, line: ClientLineView, session: SessionView) -> Verdict:
        return PASS

    def response(self, resp: ResponseView, session: SessionView) -> Verdict:
        return PASS

    def session_ended(self, session: SessionView, end: SessionEndInfo) -> None:
        return None


class FilterFactory(Protocol):
    """Makes one filter per session.  Configured once per process (options validated
    there), called once per session."""

    def __call__(self, session: SessionInfo) -> Filter: ...


class ConfigError(ValueError):
    """A configuration mistake, with the key path it was found at."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


# A filter module's entry point: options (the TOML table less ``use``/``on_error``) and the
# key path for error messages -> a factory.  Unknown or ill-typed options raise ConfigError.
FilterMaker = Callable[[Mapping[str, Any], str], FilterFactory]
