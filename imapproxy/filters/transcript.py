"""The transcript filter: every command and response, timed and redacted, as JSON Lines
(``format = "jsonl"``, the default for files) or as readable text (``"text"``, the default
for a terminal).

Configuration::

    [[filters]]
    use = "transcript"
    path = "transcript.jsonl"   # "-" for stdout
    format = "jsonl"            # or "text"; default: text on a terminal, else jsonl
    bodies = false              # literal bodies elided unless true
    capacity = 10000            # records buffered before records are lost (counted)
    on_error = "open"

Redaction is by construction: a command the codec marks sensitive (LOGIN and AUTHENTICATE
in any form, what follows a login the proxy refused) is shown as its tag and name only, plus
the user of a well-formed two-argument LOGIN; SASL lines reach filters as ``Secret`` and are
shown as ``***``; literal bodies are replaced by ``<N bytes>`` unless ``bodies = true``.

Record schema, version 1 (every record): ``v`` (1), ``t`` (UTC time, ISO 8601 with
milliseconds), ``type``, ``session``, ``client`` (``host:port``), ``user`` (null until
logged in), ``upstream_user`` (only when a filter mapped the login name: the name the
server saw).  By type:

* ``session_start``: ``listener``, ``tls`` (null or ``{version, cipher, sni}``);
* ``command``: ``tag``, ``name`` (``"UID FETCH"``), ``text`` (redacted), ``bytes``,
  ``literals`` (sizes), and ``verdict``/``filter`` (and ``rule``, when the filter named
  one) when a filter refused, answered or replaced it;
* ``client_line``: ``tag``, ``kind`` (``auth_data``/``idle_done``), ``bytes`` (the data
  is never written);
* ``response``: ``tag`` (null if untagged), ``name``, ``status`` and ``code`` (status
  responses), ``latency_ms`` and ``command`` (a tagged completion), ``text``, ``bytes``,
  ``literals``, ``oversize``, ``by`` (a reply the proxy made: the filter's name, or
  ``relay``);
* ``session_end``: ``tls`` (as at the start; set after STARTTLS), ``reason``, ``detail``,
  ``bytes_in``, ``bytes_out``, ``duration``.

A record may carry ``lost``: how many records were lost (buffer full, disk too slow)
just before it.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

from ..logsafe import printable as _printable
from ..logsafe import safe
from ..wire.commands import CREDENTIAL_COMMANDS, SASL_MECHANISMS
from ..wire.events import FrameKind
from ..wire.tokens import string_value
from .api import (
    PASS,
    ClientLineView,
    CommandView,
    ConfigError,
    Filter,
    FilterFactory,
    LiteralInfo,
    ResponseView,
    SessionEndInfo,
    SessionInfo,
    SessionView,
    TlsInfo,
    Verdict,
)
from .chain import response_code
from .registry import check_options
from .sink import Record, RecordSink

SCHEMA_VERSION = 1
MAX_TEXT = 300  # characters of a message shown


def printable(data: bytes | str, limit: int = MAX_TEXT) -> str:
    """Text fit for one transcript line: control and 8-bit characters escaped (``\\r``,
    ``\\n``, ``\\x1b`` ...) as in the log, cut at ``limit`` characters."""
    if type(data) is str:
        return safe(data, limit)
    if len(data) <= limit and data.isascii():  # the common case: nothing to escape
        text = data.decode("ascii")
        if text.isprintable():
            return text
    text = _printable(data[:limit])
    return text + f"...(+{len(data) - limit})" if len(data) > limit else text


def render(raw: bytes, literals: tuple[LiteralInfo, ...], *, bodies: bool) -> str:
    """A message's text with inline literal bodies replaced by ``<N bytes>`` (unless
    ``bodies``), the CRLF at its end dropped, the rest escaped and cut."""
    if not literals or bodies or not any(lit.inline for lit in literals):
        return printable(raw.rstrip(b"\r\n"))
    out: list[bytes] = []
    pos = 0
    for lit in literals:
        if not lit.inline:
            break
        nl = raw.find(b"\n", pos)
        if nl < 0:
            break
        out.append(raw[pos : nl + 1])
        out.append(b"<%d bytes>" % lit.size)
        pos = nl + 1 + lit.size
    out.append(raw[pos:])
    return printable(b"".join(out).rstrip(b"\r\n"))


def redacted_command(cmd: CommandView, *, bodies: bool) -> str:
    """How a command is shown.  A sensitive one (the codec marks every form of LOGIN and
    AUTHENTICATE, and what follows a login attempt until the next well-formed command) is
    never shown as it is: only the tag and name of a well-formed LOGIN or AUTHENTICATE, the
    user of a two-argument LOGIN, the name of a known SASL mechanism; anything else is
    ``***`` wholesale."""
    if not cmd.sensitive:
        return render(cmd.raw, cmd.literals, bodies=bodies)
    tag = printable(cmd.tag, 64)
    if cmd.uid or cmd.name not in CREDENTIAL_COMMANDS:
        return "*** (not shown: may hold credentials)"
    if cmd.name == "AUTHENTICATE":
        mech = string_value(cmd.args[0]) if cmd.args and not cmd.parse_error else None
        if mech is None or mech.upper().decode("ascii", "replace") not in SASL_MECHANISMS:
            return f"{tag} AUTHENTICATE ***"
        more = len(cmd.args) > 1 or not cmd.complete
        return f"{tag} AUTHENTICATE {mech.upper().decode()}" + (" ***" if more else "")
    if len(cmd.args) == 2 and cmd.complete and not cmd.parse_error:
        user = string_value(cmd.args[0])
        if user is not None:
            return f"{tag} LOGIN {printable(user, 64)} ***"
    return f"{tag} LOGIN ***"


# The last whole second formatted, with its text: one tuple, replaced whole (the hot path
# and the writer thread both format times).  A cache of a pure function, not state.
_last_second: tuple[int, str] = (-1, "")


def _iso(t: float) -> str:
    global _last_second
    second = int(t)
    cached = _last_second
    if cached[0] != second:
        cached = _last_second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return f"{cached[1]}.{int(t * 1000) % 1000:03d}Z"


_JSON = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"))  # (one, not one per record)
_json_str: Callable[[str], str] = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]


def _json_opt(value: str | None) -> str:
    return "null" if value is None else _json_str(value)


def format_jsonl(record: Record) -> str:
    """A record as one JSON line.  (Command and response records come as lines already:
    see :class:`TranscriptFilter`.)"""
    record["t"] = _iso(record["t"])
    return _JSON.encode(record)


def format_text(record: Record) -> str:
    t = record["t"]
    stamp = time.strftime("%H:%M:%S", time.localtime(t)) + f".{int(t * 1000) % 1000:03d}"
    kind = record["type"]
    head = f"{stamp} {record['session']}"
    lost = f"  [{record['lost']} records lost before this]" if record.get("lost") else ""
    if kind == "command":
        rule = f" rule {record['rule']}" if record.get("rule") else ""
        extra = (f"  [{record['verdict']} by {record['filter']}{rule}]"
                 if record.get("verdict") else "")  # fmt: skip
        return f"{head} C: {record['text']}{extra}{lost}"
    if kind == "client_line":
        return f"{head} C: {'***' if record['kind'] == 'auth_data' else 'DONE'}{lost}"
    if kind == "response":
        latency = record.get("latency_ms")
        suffix = f"  ({latency:.1f} ms)" if latency is not None else ""
        return f"{head} S: {record['text']}{suffix}{lost}"
    if kind == "session_start":
        tls = record.get("tls")
        how = f"TLS {tls['version']}" if tls else "plaintext"
        where = f"{record['client']} on {record['listener']}"
        return f"{head} -- session start from {where}, {how}{lost}"
    if kind == "session_end":
        return (
            f"{head} -- session end: {record['reason']} ({record['detail']}), "
            f"in={record['bytes_in']} out={record['bytes_out']} "
            f"{record['duration']:.3f}s{lost}"
        )
    return f"{head} -- {record.get('text', kind)}{lost}"


class TranscriptFilter(Filter):
    """One session's transcript; records go to the process-wide sink.

    Commands and responses (a record or two for every message) are the hot path: for a
    JSON Lines sink their lines are written here directly (one format string, strings
    escaped by the json module's C encoder), not built as dicts for the writer thread to
    encode; the writer then only writes.  They parse to exactly the records the dict
    path would make (a test compares the two).
    """

    __slots__ = ("_client_json", "_session_json", "_upstream", "_user", "_user_json", "bodies",
                 "client", "jsonl", "listener", "session", "sink")  # fmt: skip

    name = "transcript"
    observes_only = True

    def __init__(self, sink: RecordSink, info: SessionInfo, *, bodies: bool) -> None:
        self.sink = sink
        self.bodies = bodies
        self.session = info.id
        self.client = f"[{info.client_host}]:{info.client_port}" if ":" in info.client_host else (
            f"{info.client_host}:{info.client_port}"
        )
        self.listener = info.listener
        self.jsonl = sink.formatter is format_jsonl
        self._session_json = _json_str(self.session)
        self._client_json = _json_str(self.client)
        self._user: str | None = None
        self._upstream: str | None = None
        self._user_json = "null"

    def _user_field(self, session: SessionView) -> str:
        """``user`` (and ``upstream_user`` when a filter mapped the name) as JSON."""
        user = session.user
        upstream = session.upstream_user
        if user is not self._user or upstream is not self._upstream:
            self._user, self._upstream = user, upstream
            self._user_json = ("null" if user is None else _json_str(user)) + (
                "" if upstream is None else f',"upstream_user":{_json_str(upstream)}')
        return self._user_json

    def _record(self, record_type: str, session: SessionView, **fields: Any) -> None:
        record: Record = {
            "v": SCHEMA_VERSION,
            "t": time.time(),
            "type": record_type,
            "session": self.session,
            "client": self.client,
            "user": session.user,
        }
        if session.upstream_user is not None:
            record["upstream_user"] = session.upstream_user
        record.update(fields)
        self.sink.put(record)

    def session_started(self, session: SessionView) -> None:
        tls = session.tls
        self._record(
            "session_start",
            session,
            listener=self.listener,
            tls=_tls_fields(tls),
        )

    def command(self, cmd: CommandView, session: SessionView) -> Verdict:
        sensitive = cmd.sensitive
        literals = cmd.literals
        # the "tag" of a line that is no well-formed command may be a password
        shown_tag = not sensitive or (cmd.name in CREDENTIAL_COMMANDS and not cmd.uid)
        tag = printable(cmd.tag, 64) if shown_tag else None
        text = (redacted_command(cmd, bodies=self.bodies) if sensitive
                else render(cmd.raw, literals, bodies=self.bodies))  # fmt: skip
        size = cmd.size if literals else len(cmd.raw)
        if self.jsonl:
            self.sink.put(
                f'{{"v":{SCHEMA_VERSION},"t":"{_iso(time.time())}","type":"command",'
                f'"session":{self._session_json},"client":{self._client_json},'
                f'"user":{self._user_field(session)},'
                f'"tag":{"null" if tag is None else _json_str(tag)},'
                f'"name":{_json_str(cmd.full_name)},"text":{_json_str(text)},'
                f'"bytes":{size},"literals":[{",".join([str(x.size) for x in literals])}]'
                + ("}" if cmd.verdict is None else
                   f',"verdict":{_json_str(cmd.verdict)},"filter":{_json_opt(cmd.by)}'
                   + ("}" if cmd.rule is None else f',"rule":{_json_str(cmd.rule)}}}'))
            )  # fmt: skip
            return PASS
        record: Record = {
            "v": SCHEMA_VERSION,
            "t": time.time(),
            "type": "command",
            "session": self.session,
            "client": self.client,
            "user": session.user,
            "tag": tag,
            "name": cmd.full_name,
            "text": text,
            "bytes": size,
            "literals": [lit.size for lit in literals],
        }
        if session.upstream_user is not None:
            record["upstream_user"] = session.upstream_user
        if cmd.verdict is not None:
            record["verdict"] = cmd.verdict
            record["filter"] = cmd.by
            if cmd.rule is not None:
                record["rule"] = cmd.rule
        self.sink.put(record)
        return PASS

    def client_line(self, line: ClientLineView, session: SessionView) -> Verdict:
        self._record(
            "client_line",
            session,
            tag=None if line.tag is None else printable(line.tag, 64),
            kind=line.kind.value,
            bytes=line.size,
        )
        return PASS

    def response(self, resp: ResponseView, session: SessionView) -> Verdict:
        tag = resp.tag
        raw = resp.raw
        literals = resp.literals
        text = render(raw, literals, bodies=self.bodies)
        if resp.oversize:
            text += f"... (long line, more than {len(raw)} bytes)"
        size = len(raw) + sum(lit.size for lit in literals if not lit.inline) if literals else (
            len(raw))  # fmt: skip
        kind = resp.kind
        status = kind is FrameKind.STATUS or kind is FrameKind.GREETING
        code = response_code(raw) if status and b"[" in raw else None
        latency = None if resp.latency is None else round(resp.latency * 1000, 3)
        command = resp.command
        if self.jsonl:
            tail = ',"oversize":true' if resp.oversize else ""
            if status:
                tail += f',"status":{_json_str(resp.name)},"code":{_json_opt(code)}'
            if latency is not None:
                tail += f',"latency_ms":{latency!r}'
            if command is not None:
                tail += f',"command":{_json_str(command.full_name)}'
            if resp.by is not None:
                tail += f',"by":{_json_str(resp.by)}'
            self.sink.put(
                f'{{"v":{SCHEMA_VERSION},"t":"{_iso(time.time())}","type":"response",'
                f'"session":{self._session_json},"client":{self._client_json},'
                f'"user":{self._user_field(session)},'
                f'"tag":{"null" if tag is None else _json_str(printable(tag, 64))},'
                f'"name":{_json_str(resp.name)},"text":{_json_str(text)},"bytes":{size},'
                f'"literals":[{",".join([str(x.size) for x in literals])}]{tail}}}'
            )
            return PASS
        record: Record = {
            "v": SCHEMA_VERSION,
            "t": time.time(),
            "type": "response",
            "session": self.session,
            "client": self.client,
            "user": session.user,
            "tag": None if tag is None else printable(tag, 64),
            "name": resp.name,
            "text": text,
            "bytes": size,
            "literals": [lit.size for lit in literals],
        }
        if session.upstream_user is not None:
            record["upstream_user"] = session.upstream_user
        if resp.oversize:
            record["oversize"] = True
        if status:
            record["status"] = resp.name
            record["code"] = code
        if latency is not None:
            record["latency_ms"] = latency
        if command is not None:
            record["command"] = command.full_name
        if resp.by is not None:
            record["by"] = resp.by
        self.sink.put(record)
        return PASS

    def session_ended(self, session: SessionView, end: SessionEndInfo) -> None:
        self._record(
            "session_end",
            session,
            tls=_tls_fields(session.tls),  # (after STARTTLS it was not known at the start)
            reason=end.reason,
            detail=printable(end.detail),
            bytes_in=end.bytes_from_client,
            bytes_out=end.bytes_from_upstream,
            duration=round(end.duration, 3),
        )


def _tls_fields(tls: TlsInfo | None) -> dict[str, str | None] | None:
    return None if tls is None else {"version": tls.version, "cipher": tls.cipher,
                                     "sni": tls.sni}  # fmt: skip


class TranscriptFactory:
    """The process-wide part: one sink shared by every session's filter."""

    def __init__(self, sink: RecordSink, *, bodies: bool) -> None:
        self.sink = sink
        self.bodies = bodies

    def __call__(self, info: SessionInfo) -> Filter:
        return TranscriptFilter(self.sink, info, bodies=self.bodies)

    # lifecycle, called by the server
    def start(self) -> None:
        self.sink.start()

    def reopen(self) -> None:
        self.sink.reopen()

    def close(self) -> None:
        self.sink.close()


def make_transcript(options: Mapping[str, Any], path: str) -> FilterFactory:
    check_options(
        options, path, {"path": str, "format": str, "bodies": bool, "capacity": int}
    )
    out = options.get("path", "-")
    fmt = options.get("format")
    if fmt is None:
        fmt = "text" if out == "-" and sys.stdout.isatty() else "jsonl"
    if fmt not in ("jsonl", "text"):
        raise ConfigError(f"{path}.format", f"expected one of jsonl, text; got {fmt!r}")
    capacity = options.get("capacity", 10_000)
    if capacity < 1:
        raise ConfigError(f"{path}.capacity", f"expected a positive number; got {capacity}")
    sink = RecordSink(out, format_jsonl if fmt == "jsonl" else format_text, capacity=capacity)
    return TranscriptFactory(sink, bodies=bool(options.get("bodies", False)))
