"""The live feed behind ``imapproxy tail``: an observer filter and a process-wide hub.

When the proxy has a control socket (``imapproxy run --control-socket PATH``) it puts a
:class:`LiveFilter` at the end of every session's chain.  The filter makes the same
records as the JSONL transcript (schema version 1: it *is* a
:class:`~.transcript.TranscriptFilter`, handing its records to a :class:`LiveHub` instead
of a file) and the hub copies each one into a bounded queue per attached tail.

* Nobody attached: each hook checks one attribute and returns; no record is made.
  (The relay still builds a view of every message for it: a tail may attach at any time
  and must see the sessions already running.)
* Attached: a record is made once (a JSON line) and appended to each tail's queue; the
  control socket's writer task (``imapproxy.relay.control``) sends it.  A queue that is
  full (that tail reads too slowly, or not at all) loses the record and counts it; the
  count reaches that tail in-band, as the transcript does it: on the next record it gets
  (``"lost": N``), or, when nothing follows, as a ``notice`` record.  A session never
  waits for a tail.
* A tail may send a filter (:class:`RecordFilter`): only matching records are queued, so a
  narrow tail on a busy proxy loses fewer.  The same filter runs again in the client.

Nothing here knows Trio: a subscriber is woken through the callable it was made with.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .api import (
    PASS,
    ClientLineView,
    CommandView,
    Filter,
    ResponseView,
    SessionEndInfo,
    SessionInfo,
    SessionView,
    Verdict,
)
from .sink import Record
from .transcript import SCHEMA_VERSION, TranscriptFilter, format_jsonl

FILTER_FIELDS = ("user", "session", "client", "command", "status")
STATUSES = frozenset({"OK", "NO", "BAD", "BYE", "PREAUTH"})


# ----------------------------------------------------------------------------- filtering


@dataclass(frozen=True, slots=True)
class RecordFilter:
    """Which records a tail wants.  Each field is a set of accepted values (empty: any);
    a record must match every non-empty field.

    * ``user``: the record's ``user``.  Records from before the login completed have
      none: with ``before_login`` they pass this test (the proxy sends them: the session
      may yet log in as that user; the client holds them until it knows);
    * ``session``: the session id;
    * ``client``: ``host:port`` exactly, or the host alone (any port; ``[::1]`` or
      ``::1`` for IPv6);
    * ``command``: upper-case names without ``UID`` (``FETCH`` covers ``UID FETCH``): a
      command record of that name, and the tagged completion of such a command;
    * ``status``: a status response (tagged or untagged) with that status.

    Notices (lost records, from the proxy) always match.
    """

    user: frozenset[str] = frozenset()
    session: frozenset[str] = frozenset()
    client: frozenset[str] = frozenset()
    command: frozenset[str] = frozenset()
    status: frozenset[str] = frozenset()
    # per field given, strings one of which a matching record's line must hold: a cheap
    # test that spares parsing most of the lines a narrow filter does not want
    needles: tuple[tuple[str, ...], ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        groups = []
        if self.user:  # (and records from before the login: see ``matches``)
            groups.append((*_needles(self.user, prefix=False), '"user":null', '"user": null'))
        for values, prefix in ((self.session, False), (self.client, True), (self.status, False)):
            if values:
                groups.append(_needles(values, prefix=prefix))
        if self.command:
            groups.append(_needles({*self.command, *(f"UID {c}" for c in self.command)},
                                   prefix=False))  # fmt: skip
        object.__setattr__(self, "needles", tuple(groups))

    def may_match(self, line: str) -> bool:
        """False when the JSON line cannot match (no string in it has a wanted value);
        True says nothing: :meth:`matches` decides."""
        return all(any(n in line for n in group) for group in self.needles)

    @classmethod
    def build(
        cls,
        *,
        user: Iterable[str] = (),
        session: Iterable[str] = (),
        client: Iterable[str] = (),
        command: Iterable[str] = (),
        status: Iterable[str] = (),
    ) -> RecordFilter:
        commands = set()
        for name in command:
            name = " ".join(name.upper().split())
            commands.add(name[4:] if name.startswith("UID ") else name)
        statuses = {s.upper() for s in status}
        unknown = statuses - STATUSES
        if unknown:
            raise ValueError(
                f"unknown status {sorted(unknown)[0]!r} (expected one of OK, NO, BAD, BYE, PREAUTH)"
            )
        clients = set()
        for addr in client:
            clients.add(addr)
            if ":" in addr and not addr.startswith("[") and addr.count(":") > 1:
                clients.add(f"[{addr}]")  # a bare IPv6 address: as records write it
        return cls(frozenset(user), frozenset(session), frozenset(clients),
                   frozenset(commands), frozenset(statuses))  # fmt: skip

    def __bool__(self) -> bool:
        return bool(self.user or self.session or self.client or self.command or self.status)

    def to_json(self) -> dict[str, list[str]]:
        return {name: sorted(getattr(self, name)) for name in FILTER_FIELDS if getattr(self, name)}

    @classmethod
    def from_json(cls, data: object) -> RecordFilter:
        """From what a tail sent (``{"user": [...], ...}``); a ValueError says what is
        wrong with it."""
        if not isinstance(data, Mapping):
            raise ValueError("a filter is a JSON object")
        values: dict[str, list[str]] = {}
        for key, value in data.items():
            if key not in FILTER_FIELDS:
                raise ValueError(f"unknown filter field {key!r}")
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"filter field {key!r}: expected a list of strings")
            values[key] = value
        return cls.build(**values)

    def matches(self, record: Mapping[str, Any], *, before_login: bool = False) -> bool:
        kind = record.get("type")
        if kind == "notice":
            return True
        user = record.get("user")
        if self.user and user not in self.user and not (before_login and user is None):
            return False
        if self.session and record.get("session") not in self.session:
            return False
        if self.client:
            client = record.get("client")
            if not isinstance(client, str):
                return False
            if client not in self.client and client.rpartition(":")[0] not in self.client:
                return False
        if self.command:
            if kind == "command":
                name = record.get("name")
            elif kind == "response":
                name = record.get("command")
            else:
                return False
            if not isinstance(name, str):
                return False
            if (name[4:] if name.startswith("UID ") else name) not in self.command:
                return False
        return not self.status or (kind == "response" and record.get("status") in self.status)


def _needles(values: Iterable[str], *, prefix: bool) -> tuple[str, ...]:
    """A JSON string equal to a value (or, with ``prefix``, starting with ``value:``)
    holds one of these, however the line was encoded (ASCII escapes or UTF-8)."""
    out: set[str] = set()
    for value in values:
        for encoded in (_json_ascii(value), json.dumps(value, ensure_ascii=False)):
            out.add(encoded)
            if prefix:
                out.add(encoded[:-1] + ":")
    return tuple(sorted(out))


_json_ascii: Callable[[str], str] = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------- the hub


def notice(text: str, *, lost: int = 0, t: float) -> str:
    """A record of type ``notice`` (from the proxy, about the feed itself) as a line."""
    record: Record = {"v": SCHEMA_VERSION, "t": t, "type": "notice", "session": None,
                      "client": None, "user": None, "text": text}  # fmt: skip
    if lost:
        record["lost"] = lost
    return format_jsonl(record)


class Subscriber:
    """One attached tail: its queue of JSON lines, what it lost, its filter."""

    __slots__ = ("capacity", "filter", "lost", "lost_total", "queue", "sent", "wake")

    def __init__(self, capacity: int, wake: Callable[[], None]) -> None:
        self.capacity = capacity
        self.wake = wake
        self.queue: collections.deque[str] = collections.deque()
        self.filter: RecordFilter | None = None
        self.lost = 0  # lost since the last line queued (reported with the next one)
        self.lost_total = 0
        self.sent = 0

    def offer(self, line: str) -> None:
        queue = self.queue
        if len(queue) >= self.capacity:
            self.lost += 1
            self.lost_total += 1
            return
        if self.lost:
            line = f'{{"lost":{self.lost},{line[1:]}'
            self.lost = 0
        queue.append(line)
        if len(queue) == 1:
            self.wake()

    def take(self, most: int) -> list[str]:
        """Up to ``most`` queued lines, oldest first."""
        queue = self.queue
        return [queue.popleft() for _ in range(min(most, len(queue)))]

    def lost_notice(self, t: float) -> str | None:
        """When the queue has run dry after losses: a notice saying how many (else None)."""
        if not self.lost or self.queue:
            return None
        lost, self.lost = self.lost, 0
        return notice(f"{lost} records lost: this tail read too slowly", lost=lost, t=t)


class LiveHub:
    """Process-wide: the attached tails.  It is the transcript filter's sink (``put``
    and ``formatter``), so records come as JSON lines (commands, responses) or dicts."""

    formatter = staticmethod(format_jsonl)  # (TranscriptFilter checks `is format_jsonl`)

    def __init__(self, *, capacity: int) -> None:
        self.capacity = capacity
        self.subscribers: tuple[Subscriber, ...] = ()  # replaced whole, never mutated

    def subscribe(self, wake: Callable[[], None]) -> Subscriber:
        sub = Subscriber(self.capacity, wake)
        self.subscribers = (*self.subscribers, sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers = tuple(s for s in self.subscribers if s is not sub)

    def put(self, record: Record | str) -> None:
        subs = self.subscribers
        if not subs:
            return
        line = record if type(record) is str else format_jsonl(record)  # type: ignore[arg-type]
        parsed: dict[str, Any] | None = None
        for sub in subs:
            rf = sub.filter
            if rf is not None:
                if not rf.may_match(line):  # type: ignore[arg-type]
                    continue
                if parsed is None:
                    parsed = json.loads(line)
                if not rf.matches(parsed, before_login=True):
                    continue
            sub.offer(line)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- the filter


class LiveFilter(TranscriptFilter):
    """The transcript's records for the hub, made only while a tail is attached."""

    __slots__ = ("hub",)

    name = "live"

    def __init__(self, hub: LiveHub, info: SessionInfo) -> None:
        super().__init__(hub, info, bodies=False)  # type: ignore[arg-type]
        self.hub = hub

    def session_started(self, session: SessionView) -> None:
        if self.hub.subscribers:
            super().session_started(session)

    def command(self, cmd: CommandView, session: SessionView) -> Verdict:
        if self.hub.subscribers:
            return super().command(cmd, session)
        return PASS

    def client_line(self, line: ClientLineView, session: SessionView) -> Verdict:
        if self.hub.subscribers:
            return super().client_line(line, session)
        return PASS

    def response(self, resp: ResponseView, session: SessionView) -> Verdict:
        if self.hub.subscribers:
            return super().response(resp, session)
        return PASS

    def session_ended(self, session: SessionView, end: SessionEndInfo) -> None:
        if self.hub.subscribers:
            super().session_ended(session, end)


class LiveFactory:
    """The chain entry's factory: one :class:`LiveFilter` per session, one hub."""

    def __init__(self, hub: LiveHub) -> None:
        self.hub = hub

    def __call__(self, info: SessionInfo) -> Filter:
        return LiveFilter(self.hub, info)
