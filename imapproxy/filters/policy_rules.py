"""The policy filter's rules and how they are matched against the parsed, normalised
command (never its spelling).  (Reading them from the configuration: :mod:`.policy_config`.)

What a command *does* is a tuple of operations, each with where its mailboxes come from
(:func:`op_shape`): ``SELECT Finance`` is SELECT on the mailbox it names; ``UID MOVE 1
Archive`` is MOVE into Archive and also what MOVE is made of (RFC 6851): ``UID COPY`` into
Archive, ``UID FETCH`` (it reads), ``UID STORE`` and ``UID EXPUNGE`` in the selected
mailbox.  CLOSE expunges; an APPEND with CATENATE reads the mailboxes its URLs name.  A
command that names no mailbox acts on the selected one (FETCH, STORE, SEARCH, EXPUNGE,
and any command the proxy does not know), except the few that concern the session only.
A rule written ``FETCH`` matches each of these FETCH operations, ``UID FETCH`` only those
of UID commands; an ``allow`` rule matches the command itself only (never what it
implies), and only when every mailbox it touches matches.

Mailbox names are compared decoded and canonical: modified UTF-7 *and* UTF-8 both tried
(so a pipelined ``ENABLE UTF8=ACCEPT`` cannot change what a name means to a rule),
``INBOX`` in any case (also as the first level: ``inbox.Sub`` is ``INBOX.Sub``), runs of
the hierarchy delimiter collapsed and a trailing one dropped.  A name the proxy cannot read
(in a literal too large to hold) is :data:`UNKNOWN`: every restricting rule's mailbox
pattern matches it, no ``allow`` pattern does.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_to_bytes

from ..wire.tokens import Atom, LiteralRef, ParenList, Token, string_value
from .api import CommandView, SessionInfo
from .ratelimit import Rate
from .views import MAILBOX_ARGUMENTS, decode_mailbox

ALLOW, DENY, READ_ONLY, HIDE = "allow", "deny", "read-only", "hide"
ACTIONS = (ALLOW, DENY, READ_ONLY, HIDE)
UNKNOWN = "\x00unknown mailbox"  # a name that could not be read (see the module docstring)
# Prefix of a pseudo-name that stands for every mailbox below a name ("\x01Corp/"): a RENAME
# moves them all.  Restricting rules whose pattern reaches below it match it; allow rules
# do not look at it.
SUBTREE = "\x01"
MAX_CACHED_NAMES = 256  # mailbox names a session keeps decoded, by their bytes

# Commands that name mailboxes, beyond views.MAILBOX_ARGUMENTS (which is the lead's):
# REPLACE (RFC 8508) names its target after the sequence set.
_EXTRA_MAILBOX_ARGUMENTS: dict[str, tuple[int, ...]] = {"REPLACE": (1,)}
MAILBOX_POSITIONS: dict[str, tuple[int, ...]] = {**MAILBOX_ARGUMENTS, **_EXTRA_MAILBOX_ARGUMENTS}
# Commands whose arguments are IMAP URLs naming mailboxes (RFC 4467 URLAUTH).
URL_COMMANDS = frozenset({"URLFETCH", "GENURLAUTH", "RESETKEY"})
# Commands about the session, not a mailbox: no operand, even with a mailbox selected.
SESSION_COMMANDS = frozenset({
    "CAPABILITY", "NOOP", "LOGOUT", "IDLE", "ID", "ENABLE", "NAMESPACE", "LIST", "LSUB",
    "XLIST", "LOGIN", "AUTHENTICATE", "STARTTLS", "COMPRESS", "GETQUOTA", "SETQUOTA",
    "NOTIFY", "UNAUTHENTICATE", "LANGUAGE", "DONE",
})  # fmt: skip
# What a command is made of (the implied operations, on which mailbox): MOVE is COPY +
# STORE \Deleted + EXPUNGE (RFC 6851) and reads its messages; COPY reads them; CLOSE
# expunges; REPLACE (RFC 8508) is APPEND + STORE + EXPUNGE; an APPEND may read through
# CATENATE URLs.  "dest": the named mailbox; "selected": the selected one; "urls": the
# mailboxes URLs name.
IMPLIED: dict[str, tuple[tuple[str, str], ...]] = {
    "MOVE": (("COPY", "dest"), ("FETCH", "selected"), ("STORE", "selected"),
             ("EXPUNGE", "selected")),
    "COPY": (("FETCH", "selected"),),
    "CLOSE": (("EXPUNGE", "selected"),),
    "REPLACE": (("APPEND", "dest"), ("STORE", "selected"), ("EXPUNGE", "selected")),
    "APPEND": (("FETCH", "urls"),),
    "URLFETCH": (("FETCH", "urls"),),
    "GENURLAUTH": (("FETCH", "urls"),),
}  # fmt: skip
# Names whose operations include a given name (to know which commands a rule may decide).
IMPLIED_BY: dict[str, frozenset[str]] = {}
for _outer, _parts in IMPLIED.items():
    for _inner, _ in _parts:
        IMPLIED_BY[_inner] = IMPLIED_BY.get(_inner, frozenset()) | {_outer}
# A FETCH of a body section without .PEEK sets \Seen (RFC 9051 6.4.5): a STORE too.
SEEN_FETCH = "FETCH\x02"  # (the plan name of such a FETCH)
IMPLIED_BY["STORE"] |= {"FETCH"}
_SEEN_ITEMS = re.compile(r"(?:BODY|BINARY)\[|RFC822(?:\.TEXT)?\Z", re.IGNORECASE)

# read-only allows exactly these (anything else changes something, or might: an unknown
# command is refused).  SELECT is let through as EXAMINE.  CLOSE is harmless once every
# SELECT became EXAMINE (a read-only mailbox is not expunged on CLOSE).
READ_COMMANDS = frozenset({
    "CAPABILITY", "NOOP", "LOGOUT", "IDLE", "ID", "ENABLE", "NAMESPACE", "LIST", "LSUB",
    "XLIST", "LOGIN", "AUTHENTICATE", "STARTTLS", "COMPRESS", "UNAUTHENTICATE", "LANGUAGE",
    "SELECT", "EXAMINE", "STATUS", "FETCH", "SEARCH", "SORT", "THREAD", "ESEARCH", "CHECK",
    "CLOSE", "UNSELECT", "GETACL", "MYRIGHTS", "LISTRIGHTS", "GETQUOTA", "GETQUOTAROOT",
    "GETMETADATA", "NOTIFY", "URLFETCH",
})  # fmt: skip


# ----------------------------------------------------------------------------- mailboxes


def canonical(name: str, delimiter: str) -> str:
    """A decoded mailbox name as rules compare it (see the module docstring)."""
    if delimiter:
        double = delimiter + delimiter
        if double in name:
            while double in name:
                name = name.replace(double, delimiter)
        if len(name) > 1 and name.endswith(delimiter):
            name = name[: -len(delimiter)]
    if (
        len(name) >= 5
        and name[:5] != "INBOX"
        and name[:5].upper() == "INBOX"
        and (len(name) == 5 or name[5:].startswith(delimiter))
    ):
        name = "INBOX" + name[5:]
    return name


def candidates(raw: bytes, delimiter: str) -> tuple[str, ...]:
    """The names ``raw`` may mean to the server: modified UTF-7 and UTF-8 decoded
    (one name for plain ASCII without ``&``)."""
    if b"&" not in raw and raw.isascii():
        return (canonical(raw.decode("ascii"), delimiter),)
    a = canonical(decode_mailbox(raw, utf8=False), delimiter)
    b = canonical(decode_mailbox(raw, utf8=True), delimiter)
    return (a,) if a == b else (a, b)


def _mailbox_token(
    token: Token, delimiter: str, cache: dict[bytes, tuple[str, ...]] | None = None
) -> tuple[str, ...]:
    if isinstance(token, LiteralRef):
        return (UNKNOWN,)
    value = string_value(token)
    if value is None:
        return ()
    if cache is None:
        return candidates(value, delimiter)
    names = cache.get(value)
    if names is None:
        if len(cache) >= MAX_CACHED_NAMES:
            cache.clear()
        names = cache[value] = candidates(value, delimiter)
    return names


_URL_MAILBOX = re.compile(rb"^(?:imap://[^/]*)?/([^;?]*)", re.IGNORECASE)


def url_mailboxes(url: bytes, delimiter: str, selected: tuple[str, ...]) -> tuple[str, ...]:
    """The mailbox an IMAP URL (RFC 5092) names, as candidates; a relative URL (``;UID=1``)
    names the selected mailbox; anything unreadable is UNKNOWN."""
    if url.startswith(b";"):
        return selected or (UNKNOWN,)
    m = _URL_MAILBOX.match(url)
    if m is None:
        return (UNKNOWN,)
    path = m.group(1)
    if path.endswith(b"/"):
        path = path[:-1]
    if not path:
        return (UNKNOWN,)
    return candidates(unquote_to_bytes(path), delimiter)


def _catenate_urls(args: Sequence[Token]) -> list[bytes]:
    """The URLs of APPEND ... CATENATE (URL "..." TEXT {n} ...) parts (RFC 4469)."""
    urls: list[bytes] = []
    for i, token in enumerate(args):
        if isinstance(token, Atom) and token.value.upper() == "CATENATE" and i + 1 < len(args):
            parts = args[i + 1]
            if isinstance(parts, ParenList):
                items = parts.items
                for j in range(len(items) - 1):
                    if isinstance(items[j], Atom) and items[j].value.upper() == "URL":  # type: ignore[union-attr]
                        value = string_value(items[j + 1])
                        urls.append(value if value is not None else b"")
    return urls


# Where an operation's mailboxes come from.
NAMED, SELECTED, URLS, NONE = 0, 1, 2, 3
_WHERE = {"dest": NAMED, "selected": SELECTED, "urls": URLS}


def op_shape(name: str) -> tuple[tuple[str, int], ...]:
    """What a command called ``name`` does: its operations, each with where its mailboxes
    come from (the first is the command itself).  An operation on URLS exists only when
    the command has URLs."""
    if name == SEEN_FETCH:
        return (("FETCH", SELECTED), ("STORE", SELECTED))
    if name in MAILBOX_POSITIONS:
        own = NAMED  # (COPY/MOVE: the destination; the source is in the implied operations)
    elif name in URL_COMMANDS:
        own = URLS
    elif name in SESSION_COMMANDS:
        own = NONE
    else:
        own = SELECTED
    return ((name, own), *((inner, _WHERE[where]) for inner, where in IMPLIED.get(name, ())))


def named_mailboxes(
    cmd: CommandView, delimiter: str, cache: dict[bytes, tuple[str, ...]] | None = None
) -> tuple[str, ...]:
    """The mailboxes ``cmd`` names as arguments (candidates of each; UNKNOWN for one that
    was not read).  ``cache``: names already decoded, by their bytes (bounded)."""
    positions = MAILBOX_POSITIONS.get(cmd.name)
    if positions is None:
        return ()
    args = cmd.args
    if cmd.name == "GETMETADATA" and args and isinstance(args[0], ParenList):
        args = args[1:]
    found: list[str] = []
    for i in positions:
        if i < len(args):
            names = _mailbox_token(args[i], delimiter, cache)
            found.extend(names)
            if cmd.name == "RENAME" and i == 0:
                # RENAME moves the mailboxes below too: a rule on one of them is a rule
                # on this RENAME
                found.extend(SUBTREE + n + delimiter for n in names if n is not UNKNOWN)
        elif not cmd.complete:
            found.append(UNKNOWN)  # not read before the decision
    return tuple(found)


def glob_reaches_below(glob: str, prefix: str, delimiter: str) -> bool:
    """Whether the (canonical) glob matches some name that starts with ``prefix`` (a
    mailbox name and the delimiter): a walk of the glob over the prefix."""
    states = _skip_wildcards(glob, {0})
    for ch in prefix:
        following: set[int] = set()
        for i in states:
            if i >= len(glob):
                continue
            g = glob[i]
            if g == "*" or (g == "%" and ch != delimiter):
                following.add(i)
            elif g == ch:
                following.add(i + 1)
        states = _skip_wildcards(glob, following)
        if not states:
            return False
    return True


def _skip_wildcards(glob: str, states: set[int]) -> set[int]:
    """States plus those reached by matching wildcards with nothing."""
    out = set(states)
    todo = list(states)
    while todo:
        i = todo.pop()
        if i < len(glob) and glob[i] in "*%" and i + 1 not in out:
            out.add(i + 1)
            todo.append(i + 1)
    return out


def command_urls(cmd: CommandView) -> list[bytes]:
    """The IMAP URLs a command reads through (APPEND ... CATENATE, URLFETCH ...)."""
    if cmd.name == "APPEND":
        return _catenate_urls(cmd.args) if len(cmd.args) > 1 else []
    if cmd.name in URL_COMMANDS:
        return [v for a in cmd.args if (v := string_value(a)) is not None]
    return []


def sets_seen(cmd: CommandView) -> bool:
    """A FETCH that sets \\Seen: BODY[...], BINARY[...], RFC822 or RFC822.TEXT (not their
    .PEEK forms, not RFC822.HEADER/SIZE)."""
    for arg in cmd.args[1:]:
        items = arg.items if isinstance(arg, ParenList) else (arg,)
        for item in items:
            if isinstance(item, Atom) and _SEEN_ITEMS.match(item.value):
                return True
    return False


def command_matches(commands: frozenset[str] | None, name: str, uid: bool) -> bool:
    """``FETCH`` in a rule covers FETCH and UID FETCH; ``UID FETCH`` only the latter."""
    return commands is None or name in commands or (uid and "UID " + name in commands)


# ----------------------------------------------------------------------------- patterns


def _glob_regex(pattern: str, delimiter: str) -> str:
    """``*`` anything, ``%`` anything but the delimiter (as in IMAP LIST); ``X/*`` (the
    delimiter, then ``*``) also covers ``X`` itself."""
    pattern = canonical(pattern, delimiter)
    parent = ""
    if delimiter and pattern.endswith(delimiter + "*") and len(pattern) > 2:
        parent = re.escape(pattern[: -1 - len(delimiter)])
    out = []
    for ch in pattern:
        if ch == "*":
            out.append(".*")
        elif ch == "%":
            out.append(f"[^{re.escape(delimiter)}]*" if delimiter else ".*")
        else:
            out.append(re.escape(ch))
    body = "".join(out)
    return f"(?:{body}|{parent})" if parent else body


def compile_mailboxes(
    patterns: Sequence[str], delimiter: str, *, ignore_case: bool = False
) -> re.Pattern[str]:
    """The globs as one pattern; ``ignore_case`` for a server whose mailbox names are not
    case-sensitive (``finance`` is ``Finance`` there)."""
    flags = re.DOTALL | (re.IGNORECASE if ignore_case else 0)
    return re.compile("|".join(f"(?:{_glob_regex(p, delimiter)})" for p in patterns) + r"\Z", flags)


def compile_users(patterns: Sequence[str]) -> re.Pattern[str]:
    """Globs on the user name, case-insensitive (servers commonly fold the case of login
    names: ``Intern1`` must not get past ``intern*``)."""
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns), re.IGNORECASE)


# ----------------------------------------------------------------------------- rules


@dataclass(frozen=True, slots=True)
class Rule:
    """One ``[[filters.rules]]`` entry, parsed.  ``None`` conditions always hold."""

    name: str
    commands: frozenset[str] | None  # "FETCH" (any UID form) or "UID FETCH" (only that)
    users: re.Pattern[str] | None
    clients: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] | None
    tls: bool | None
    listeners: frozenset[str] | None
    mailboxes: re.Pattern[str] | None
    size_over: int | None
    action: str | None  # None for a rate rule
    code: str
    text: str
    rate: Rate | None = None
    per: str = "user"  # or "client": whose bucket a rate rule takes from
    delay: float = 0.0  # seconds a refused login waits (rate rules on logins)
    globs: tuple[str, ...] = ()  # the mailbox patterns, canonical (for subtrees)
    ignore_case: bool = False  # mailbox names compared without case

    # -- conditions fixed for a session (client, listener) or a login (user, TLS)

    def applies_to_session(self, info: SessionInfo) -> bool:
        if self.clients is not None and not _in_networks(info.client_host, self.clients):
            return False
        return self.listeners is None or _listener_matches(info.listener, self.listeners)

    def applies_to_state(self, user: str | None, tls: bool) -> bool:
        if self.tls is not None and self.tls != tls:
            return False
        return self.users is None or (user is not None and self.users.match(user) is not None)

    # -- per command

    def command_names(self) -> frozenset[str] | None:
        """Command names (without UID) this rule can match, implied ones included."""
        if self.commands is None:
            return None
        base = {c[4:] if c.startswith("UID ") else c for c in self.commands}
        out = set(base)
        for c in base:
            out |= IMPLIED_BY.get(c, frozenset())
        return frozenset(out)


def _in_networks(host: str, networks: Sequence[Any]) -> bool:
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr in net for net in networks)


def _listener_matches(listener: str, names: frozenset[str]) -> bool:
    """``imap@127.0.0.1:1143`` is matched by itself, by ``imap`` and by ``127.0.0.1:1143``."""
    kind, _, address = listener.partition("@")
    return listener in names or kind in names or address in names


# ----------------------------------------------------------------------------- plans

K_ALLOW, K_BLOCK, K_RATE, K_READ_ONLY = range(4)
# (rule index, rule, kind, sources of the operations it may match, it matches with no
# mailbox whatever the operands (no URL-only operation), SELECT turns into EXAMINE)
PlanEntry = tuple[int, Rule, int, tuple[int, ...], bool, bool]


def plan_for(
    rules: Iterable[tuple[int, Rule]], shape: tuple[tuple[str, int], ...], uid: bool
) -> Plan:
    """The rules that may match a command of this shape, with what is known of them before
    its arguments are looked at: which of its operations each may match (by command name),
    hence where to look for mailboxes.  Built once per command name and session state."""
    out: list[PlanEntry] = []
    first = shape[0][0]
    for idx, rule in rules:
        commands = rule.commands
        if rule.action == ALLOW:
            if command_matches(commands, first, uid):
                srcs = tuple(sorted({src for _, src in shape}))
                out.append((idx, rule, K_ALLOW, srcs, True, False))
            continue
        matching = [(i, op, src) for i, (op, src) in enumerate(shape)
                    if command_matches(commands, op, uid)]  # fmt: skip
        if rule.action == READ_ONLY:
            # (CLOSE expunges only a mailbox opened read-write: every SELECT that matched a
            # read-only rule went as EXAMINE)
            # (nor a FETCH's \Seen, for the same reason)
            changes = [m for m in matching if m[1] not in READ_COMMANDS and (
                first not in ("CLOSE", "FETCH") or m[0] == 0)]  # fmt: skip
            srcs = tuple(sorted({src for _, _, src in changes}))
            select = first == "SELECT" and bool(matching) and matching[0][0] == 0
            if srcs or select:
                always = any(src != URLS for src in srcs)
                out.append((idx, rule, K_READ_ONLY, srcs, always, select))
            continue
        if matching:
            srcs = tuple(sorted({src for _, _, src in matching}))
            always = any(src != URLS for src in srcs)
            kind = K_RATE if rule.action is None else K_BLOCK
            out.append((idx, rule, kind, srcs, always, False))
    return Plan(tuple(out))


class Plan:
    """A command's rules (:func:`plan_for`), indexed so that a command looks only at the
    rules that can match it: those without a mailbox pattern, and those whose pattern
    matches one of its mailboxes (found by the mailbox, not by trying every pattern)."""

    __slots__ = ("by_source", "entries", "unconditional")

    def __init__(self, entries: tuple[PlanEntry, ...]) -> None:
        self.entries = entries
        # positions of the entries without a mailbox pattern: always looked at
        self.unconditional = tuple(pos for pos, e in enumerate(entries) if e[1].mailboxes is None)
        # source -> rule index -> positions of the entries with a pattern that look there
        by_source: dict[int, dict[int, list[int]]] = {}
        for pos, (idx, rule, _, srcs, _, select) in enumerate(entries):
            if rule.mailboxes is None:
                continue
            for src in set(srcs) | ({NAMED} if select else set()):
                by_source.setdefault(src, {}).setdefault(idx, []).append(pos)
        self.by_source = {
            src: {idx: tuple(p) for idx, p in m.items()} for src, m in by_source.items()
        }

    def __bool__(self) -> bool:
        return bool(self.entries)

    def __len__(self) -> int:
        return len(self.entries)


def decided_commands(rules: tuple[Rule, ...], default_deny: bool) -> frozenset[str] | None:
    """The commands a policy may decide about (the relay holds only those back); None:
    every command.  A mailbox-only rule decides the commands that name mailboxes (a
    command on the selected mailbox was decided when it was selected), unless an allow
    rule names commands (then SELECT may pass where FETCH must not)."""
    if default_deny:
        return None
    names: set[str] = set()
    allow_by_command = any(r.action == ALLOW and r.commands is not None for r in rules)
    for rule in rules:
        if rule.action == ALLOW:
            continue  # it refuses nothing; the rules after it decide what they name
        command_names = rule.command_names()
        if command_names is not None:
            names |= command_names
            continue
        if (
            rule.mailboxes is None
            or rule.size_over is not None
            or rule.action in (None, READ_ONLY)
            or allow_by_command
        ):
            return None
        names |= MAILBOX_POSITIONS.keys() | URL_COMMANDS | {"APPEND"}
    return frozenset(names)


__all__ = [
    "ACTIONS",
    "ALLOW",
    "DENY",
    "HIDE",
    "READ_COMMANDS",
    "READ_ONLY",
    "UNKNOWN",
    "Rule",
    "candidates",
    "canonical",
    "compile_mailboxes",
    "decided_commands",
    "url_mailboxes",
]
