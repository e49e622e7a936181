"""The rewrite filter's mailbox part: every mailbox argument of a command mapped to the
server's name, every mailbox in a response mapped back (see :mod:`.rewrite_names` for the
mapping itself).

Commands: the arguments :data:`~.views.MAILBOX_ARGUMENTS` names (SELECT, EXAMINE, CREATE,
DELETE, RENAME's two, SUBSCRIBE, UNSUBSCRIBE, STATUS, APPEND, COPY/MOVE's destination,
the ACL, QUOTA-root and METADATA commands), and LIST/LSUB's reference and patterns.  A
pattern that may match mapped mailboxes it cannot be translated to (``%`` and the client's
``Archive``, which is the server's ``INBOX.Archive``) is sent with extra patterns, on a
server with LIST-EXTENDED; names those bring that the client's own pattern does not match
are left out of the answer.

Responses: LIST and LSUB (and LIST-EXTENDED's ``OLDNAME``), STATUS, NAMESPACE prefixes,
ACL, MYRIGHTS, LISTRIGHTS, METADATA and QUOTAROOT.  Only the name changes; every other
byte stays.  A replaced command keeps its tag and is one complete command (literals
inline); the relay sends it in segments.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..wire.events import FrameKind
from .api import (
    DROP,
    PASS,
    CommandView,
    Reject,
    Replace,
    ResponseView,
    SessionView,
    Verdict,
)
from .rewrite_names import UNKNOWN_DELIMITERS, MailboxMap, glob_match
from .rewrite_wire import (
    Item,
    arguments,
    astring,
    decode_name,
    encode_name,
    rewrite_as,
    splice,
    strings,
)
from .views import MAILBOX_ARGUMENTS

MAILBOX_COMMANDS = frozenset(MAILBOX_ARGUMENTS) | {"LIST", "LSUB"}
MAILBOX_RESPONSES = frozenset(
    {"LIST", "LSUB", "STATUS", "NAMESPACE", "ACL", "MYRIGHTS", "LISTRIGHTS", "METADATA",
     "QUOTAROOT"}
)  # fmt: skip
_NEW_NAME = frozenset({"CREATE"})  # (and RENAME's second argument)
# Refusals for the names a client could only have guessed (see MailboxMap.alias).
NO_SUCH_MAILBOX = Reject("Mailbox doesn't exist", code="NONEXISTENT")
NAME_NOT_AVAILABLE = Reject("Mailbox name not available", code="CANNOT")


@dataclass(frozen=True, slots=True)
class _Listing:
    """A LIST or LSUB in progress: the client's full patterns (reference joined)."""

    kind: str
    patterns: tuple[str, ...]
    status: bool  # RETURN (STATUS ...): STATUS lines belong to the listing


class MailboxRewriter:
    """One session's mailbox rewriting (the map is shared; the state is not)."""

    __slots__ = ("_listings", "_statuses", "delimiter", "map")

    def __init__(self, mailbox_map: MailboxMap, delimiter: str | None) -> None:
        self.map = mailbox_map
        self.delimiter = delimiter  # the server's; learnt when not configured
        self._listings: dict[bytes, _Listing] = {}  # by tag
        self._statuses: dict[bytes, str] = {}  # STATUS commands in progress: client names

    @property
    def delims(self) -> str:
        return self.delimiter or UNKNOWN_DELIMITERS

    # ------------------------------------------------------------------ commands

    def command(self, cmd: CommandView, session: SessionView) -> Verdict:
        if cmd.parse_error is not None:
            return PASS  # the relay refuses it: nothing to rewrite
        if not cmd.complete:
            return self._streamed(cmd, session)
        items = arguments(cmd.raw, command=True)
        if cmd.name in ("LIST", "LSUB"):
            return self._listing(cmd, items, session)
        positions = MAILBOX_ARGUMENTS[cmd.name]
        if cmd.name == "GETMETADATA" and items and items[0].kind == "list":
            items = items[1:]
        changes: list[tuple[Item, bytes]] = []
        utf8 = session.utf8
        for n, i in enumerate(positions):
            if i >= len(items) or not items[i].is_string:
                continue
            item = items[i]
            name = decode_name(item.value, utf8=utf8)
            if name is None:
                continue
            if name.upper() == "INBOX":
                name = "INBOX"
            if self.map.alias(name, self.delims):
                new_name = cmd.name in _NEW_NAME or (cmd.name == "RENAME" and n == 1)
                return NAME_NOT_AVAILABLE if new_name else NO_SUCH_MAILBOX
            server = self.map.to_server(name, self.delims)
            if cmd.name == "STATUS":
                self._statuses[cmd.tag] = name
            if server != name:
                changes.append((item, rewrite_as(item, encode_name(server, utf8=utf8))))
        if not changes:
            return PASS
        return Replace(splice(cmd.raw, changes))

    def _streamed(self, cmd: CommandView, session: SessionView) -> Verdict:
        """A command decided on its head (its literal streams after): only APPEND's
        mailbox stands before a large literal.  The head is replaced; the message follows
        as the client sends it."""
        if cmd.name != "APPEND" or all(lit.inline for lit in cmd.literals):
            return PASS  # (or a precheck: the whole command is shown once assembled)
        first = _first_argument(cmd.raw)
        if first is None or not first.is_string:
            return PASS
        name = decode_name(first.value, utf8=session.utf8)
        if name is None:
            return PASS
        if name.upper() == "INBOX":
            return PASS
        if self.map.alias(name, self.delims):
            return NO_SUCH_MAILBOX
        server = self.map.to_server(name, self.delims)
        if server == name:
            return PASS
        # the head is replaced up to the message, which streams after it as announced
        new = rewrite_as(first, encode_name(server, utf8=session.utf8))
        return Replace(splice(cmd.raw, [(first, new)]))

    def _listing(self, cmd: CommandView, items: tuple[Item, ...], session: SessionView) -> Verdict:
        i = 1 if cmd.name == "LIST" and items and items[0].kind == "list" else 0
        if len(items) < i + 2 or not items[i].is_string:
            return PASS
        ref_item, pat_item = items[i], items[i + 1]
        utf8 = session.utf8
        delims = self.delims
        ref = decode_name(ref_item.value, utf8=utf8)
        pats = strings(pat_item.items) if pat_item.kind == "list" else [pat_item]
        if ref is None or not pats:
            return PASS
        changes: list[tuple[Item, bytes]] = []
        full: list[str] = []
        extras: list[str] = []
        if ref:
            server_ref = self.map.to_server(ref, delims)
            if server_ref != ref:
                changes.append((ref_item, rewrite_as(ref_item, encode_name(server_ref, utf8=utf8))))
        for item in pats:
            pattern = decode_name(item.value, utf8=utf8)
            if pattern is None:
                continue
            full.append(ref + pattern)
            if ref:
                continue  # (a reference and extra patterns do not mix: see the README)
            primary, more = self.map.pattern_to_server(pattern, delims)
            extras.extend(more)
            if primary != pattern:
                changes.append((item, rewrite_as(item, encode_name(primary, utf8=utf8))))
        caps = session.capabilities or frozenset()
        if extras and cmd.name == "LIST" and "LIST-EXTENDED" in caps:
            # the pattern argument becomes a list: the client's (translated) and the extras
            changed = dict(changes)
            words = [changed.get(p, _raw(cmd.raw, p)) for p in pats]
            words += [astring(encode_name(e, utf8=utf8)) for e in dict.fromkeys(extras)]
            changes = [c for c in changes if c[0] not in pats]
            extended = b"(" + b" ".join(words) + b")"
            if i == 0 and len(items) == 2:
                # The extended syntax returns only what is asked for (RFC 5258 section
                # 3): ask for what a basic LIST returns with it.
                extended += (
                    b" RETURN (CHILDREN SPECIAL-USE)"
                    if "SPECIAL-USE" in caps
                    else (b" RETURN (CHILDREN)")
                )
            changes.append((pat_item, extended))
        status = any(
            a.kind == "atom" and a.value.upper() == b"RETURN" and n + 1 < len(items)
            and any(x.is_string and x.value.upper() == b"STATUS" for x in items[n + 1].items)
            for n, a in enumerate(items)
        )  # fmt: skip
        self._listings[cmd.tag] = _Listing(cmd.name, tuple(full), status)
        if not changes:
            return PASS
        return Replace(splice(cmd.raw, changes))

    # ------------------------------------------------------------------ responses

    def completed(self, tag: bytes) -> None:
        self._listings.pop(tag, None)
        self._statuses.pop(tag, None)

    def response(self, resp: ResponseView, session: SessionView) -> Verdict:
        if resp.kind is not FrameKind.DATA or resp.oversize or resp.name not in MAILBOX_RESPONSES:
            return PASS
        items = arguments(resp.raw, command=False)
        name = resp.name
        if name in ("LIST", "LSUB"):
            return self._list_line(resp, items, session)
        if name == "NAMESPACE":
            return self._namespace(resp, items, session)
        if not items or not items[0].is_string:
            return PASS
        item = items[0]
        server = decode_name(item.value, utf8=session.utf8)
        if server is None or (name == "METADATA" and server == ""):
            return PASS
        delims = self.delims
        if self.map.shadowed(server, delims):
            return DROP
        client = self.map.to_client(server, delims)
        if client == server:
            return PASS
        if name == "STATUS" and not self._status_wanted(client, delims):
            return DROP
        new = rewrite_as(item, encode_name(client, utf8=session.utf8))
        return Replace(splice(resp.raw, [(item, new)]))

    def _status_wanted(self, client: str, delims: str) -> bool:
        """A STATUS line of a mapped mailbox brought by a LIST's extra patterns (RETURN
        (STATUS ...)) is left out with its LIST line."""
        listings = [x for x in self._listings.values() if x.status]
        if not listings or client in self._statuses.values():
            return True
        return any(glob_match(p, client, delims) for x in listings for p in x.patterns)

    def _list_line(
        self, resp: ResponseView, items: tuple[Item, ...], session: SessionView
    ) -> Verdict:
        if len(items) < 3 or not items[2].is_string:
            return PASS
        delim_item, name_item = items[1], items[2]
        delims = self.delims
        if delim_item.kind == "quoted" and len(delim_item.value) == 1:
            delims = delim_item.value.decode("ascii", "replace")
            if self.delimiter is None:
                self.delimiter = delims
        utf8 = session.utf8
        server = decode_name(name_item.value, utf8=utf8)
        if server is None:
            return PASS
        if self.map.shadowed(server, delims):
            return DROP
        client = self.map.to_client(server, delims)
        if client != server:
            listings = [x for x in self._listings.values() if x.kind == resp.name]
            if listings and not any(
                glob_match(p, client, delims) for x in listings for p in x.patterns
            ):
                return DROP
        changes: list[tuple[Item, bytes]] = []
        if client != server:
            changes.append((name_item, rewrite_as(name_item, encode_name(client, utf8=utf8))))
        if len(items) > 3 and items[3].kind == "list":
            ext = items[3].items
            for n in range(0, len(ext) - 1, 2):
                key, value = ext[n], ext[n + 1]
                if not (key.is_string and key.value.upper() == b"OLDNAME"):
                    continue
                for old in strings(value.items) if value.kind == "list" else [value]:
                    text = decode_name(old.value, utf8=utf8)
                    if text is None:
                        continue
                    mapped = self.map.to_client(text, delims)
                    if mapped != text:
                        changes.append((old, rewrite_as(old, encode_name(mapped, utf8=utf8))))
        if not changes:
            return PASS
        return Replace(splice(resp.raw, changes))

    def _namespace(
        self, resp: ResponseView, items: tuple[Item, ...], session: SessionView
    ) -> Verdict:
        """``* NAMESPACE personal other shared``: each a NIL or a list of (prefix delim
        ...).  A prefix ending in its delimiter is mapped without it."""
        changes: list[tuple[Item, bytes]] = []
        utf8 = session.utf8
        for group in items[:3]:
            if group.kind != "list":
                continue
            for entry in group.items:
                if entry.kind != "list" or len(entry.items) < 2 or not entry.items[0].is_string:
                    continue
                prefix_item, delim_item = entry.items[0], entry.items[1]
                delim = ""
                if delim_item.kind == "quoted" and len(delim_item.value) == 1:
                    delim = delim_item.value.decode("ascii", "replace")
                    if self.delimiter is None:
                        self.delimiter = delim
                prefix = decode_name(prefix_item.value, utf8=utf8)
                if not prefix:
                    continue
                delims = delim or self.delims
                stem = prefix[:-1] if delim and prefix.endswith(delim) else prefix
                mapped = self.map.to_client(stem, delims) + prefix[len(stem) :]
                if mapped != prefix:
                    new = rewrite_as(prefix_item, encode_name(mapped, utf8=utf8))
                    changes.append((prefix_item, new))
        if not changes:
            return PASS
        return Replace(splice(resp.raw, changes))


def _raw(raw: bytes, item: Item) -> bytes:
    return raw[item.start : item.end]


def _first_argument(raw: bytes) -> Item | None:
    """APPEND's mailbox in a head that ends in a streamed literal's announcement."""
    cut = raw.rfind(b"{")
    if cut < 0:
        return None
    head = raw[:cut].rstrip(b"~").rstrip(b" ") + b"\r\n"
    # the flags and date before the literal are complete; the mailbox is the first
    try:
        items = arguments(head, command=True)
    except ValueError:
        return None
    return items[0] if items else None
