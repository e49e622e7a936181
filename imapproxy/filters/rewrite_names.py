"""Mailbox name mapping for the rewrite filter: the client's names <-> the server's.

A rule maps a client name to a server name, either exactly (``exact``: that one mailbox)
or as a prefix (the mailbox and everything below it in the hierarchy: ``Archive`` and
``Archive.2020`` <-> ``INBOX.Archive`` and ``INBOX.Archive.2020``).  The longest rule that
applies wins, on each side.

Names outside every rule pass unchanged.  Two kinds of names would make the mapping
ambiguous, and are kept out of sight instead:

* a server name the client would reach by another name (``Archive`` on the server when
  the client's ``Archive`` is the server's ``INBOX.Archive``): *shadowed*, left out of
  listings (:meth:`MailboxMap.shadowed`);
* a client name that would reach a server mailbox the client knows by another name
  (``INBOX.Archive`` spelt by the client): an *alias*, refused
  (:meth:`MailboxMap.alias`).

So the client sees one name per mailbox, and every name it sees leads back to the same
mailbox.  Names are compared as text (modified UTF-7 or UTF-8 decoded); ``INBOX`` is never
mapped.

The hierarchy delimiter is the server's (clients see it unchanged).  Until it is known
(configured, or learnt from a LIST or NAMESPACE answer) both ``.`` and ``/`` count as one
where a prefix ends.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

UNKNOWN_DELIMITERS = "./"
WILDCARDS = "*%"


@dataclass(frozen=True, slots=True)
class MailboxRule:
    client: str
    server: str
    exact: bool = False


def _under(name: str, prefix: str, exact: bool, delims: str) -> bool:
    if name == prefix:
        return True
    return (
        not exact
        and len(name) > len(prefix)
        and name.startswith(prefix)
        and name[len(prefix)] in delims
    )


class MailboxMap:
    """The configured rules (process-wide, immutable); the delimiter is passed per call
    (a session learns it)."""

    __slots__ = ("by_client", "by_server", "rules")

    def __init__(self, rules: Sequence[MailboxRule]) -> None:
        self.rules = tuple(rules)
        self.by_client = sorted(self.rules, key=lambda r: len(r.client), reverse=True)
        self.by_server = sorted(self.rules, key=lambda r: len(r.server), reverse=True)

    def __bool__(self) -> bool:
        return bool(self.rules)

    def client_rule(self, name: str, delims: str) -> MailboxRule | None:
        for rule in self.by_client:
            if _under(name, rule.client, rule.exact, delims):
                return rule
        return None

    def to_server(self, name: str, delims: str) -> str:
        rule = self.client_rule(name, delims)
        return name if rule is None else rule.server + name[len(rule.client) :]

    def to_client(self, name: str, delims: str) -> str:
        for rule in self.by_server:
            if _under(name, rule.server, rule.exact, delims):
                return rule.client + name[len(rule.server) :]
        return name

    def shadowed(self, server_name: str, delims: str) -> bool:
        """The client cannot reach this server mailbox by the name it would be shown."""
        return self.to_server(self.to_client(server_name, delims), delims) != server_name

    def alias(self, client_name: str, delims: str) -> bool:
        """This client name reaches a mailbox the client is shown under another name."""
        return self.to_client(self.to_server(client_name, delims), delims) != client_name

    # ------------------------------------------------------------------ LIST patterns

    def pattern_to_server(self, pattern: str, delims: str) -> tuple[str, list[str]]:
        """A LIST/LSUB pattern (reference already joined) for the server: the pattern
        itself, translated when it lies inside one rule's client names, and the extra
        server patterns needed for the mailboxes of other rules the pattern may match
        (``%`` matches the client's ``Archive`` although the server's ``INBOX.Archive``
        is not at the top).  Names the extra patterns bring that the client's pattern
        does not match are left out of the answer (:func:`glob_match`)."""
        used = None
        primary = pattern
        literal_head = pattern
        for i, c in enumerate(pattern):
            if c in WILDCARDS:
                literal_head = pattern[:i]
                break
        for rule in self.by_client:
            if rule.exact:
                if pattern == rule.client:
                    used, primary = rule, rule.server
                    break
                continue
            if pattern == rule.client or (
                literal_head.startswith(rule.client)
                and len(literal_head) > len(rule.client)
                and literal_head[len(rule.client)] in delims
            ):
                used, primary = rule, rule.server + pattern[len(rule.client) :]
                break
        extras: list[str] = []
        for rule in self.rules:
            if rule is used:
                continue
            full, below = glob_reaches(pattern, rule.client, delims)
            if full and not glob_match(primary, rule.server, delims):
                extras.append(rule.server)
            if below and not rule.exact and not covers_below(primary, rule.server, delims):
                extras.extend(rule.server + d + "*" for d in delims)
        return primary, [e for e in dict.fromkeys(extras) if e != primary]


def _closure(pattern: str, states: set[int]) -> set[int]:
    out = set(states)
    todo = list(states)
    while todo:
        i = todo.pop()
        if i < len(pattern) and pattern[i] in WILDCARDS and i + 1 not in out:
            out.add(i + 1)
            todo.append(i + 1)
    return out


def _step(pattern: str, states: set[int], c: str, delims: str) -> set[int]:
    nxt: set[int] = set()
    for i in states:
        if i >= len(pattern):
            continue
        p = pattern[i]
        if p == "*" or (p == "%" and c not in delims):
            nxt.add(i)
        elif p == c:
            nxt.add(i + 1)
    return _closure(pattern, nxt)


def _run(pattern: str, text: str, delims: str) -> set[int]:
    states = _closure(pattern, {0})
    for c in text:
        states = _step(pattern, states, c, delims)
        if not states:
            break
    return states


def glob_match(pattern: str, name: str, delims: str) -> bool:
    """RFC 3501 LIST matching: ``*`` matches anything, ``%`` anything but a delimiter;
    ``INBOX`` as a whole name in any case."""
    if name == "INBOX" and pattern.upper() == "INBOX":
        return True
    return len(pattern) in _run(pattern, name, delims)


def glob_reaches(pattern: str, name: str, delims: str) -> tuple[bool, bool]:
    """(the pattern matches ``name``, it may match some name below ``name``)."""
    states = _run(pattern, name, delims)
    full = len(pattern) in states
    below = any(bool(_run_from(pattern, states, d, delims)) for d in delims)
    return full, below


def _run_from(pattern: str, states: set[int], c: str, delims: str) -> set[int]:
    return _step(pattern, states, c, delims) if states else set()


def covers_below(pattern: str, name: str, delims: str) -> bool:
    """The pattern matches every name below ``name`` (it goes on with a bare ``*``)."""
    for d in delims:
        states = _run(pattern, name + d, delims)
        if not any(pattern[i:] == "*" for i in states):
            return False
    return True
