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
logged in).  By type:

* ``session_start``: ``listener``, ``tls`` (null or ``{version, cipher, sni}``);
* ``command``: ``tag``, ``name`` (``"UID FETCH"``), ``text`` (redacted), ``bytes``,
  ``literals`` (sizes), and ``verdict``/``filter`` when a filter refused or answered it;
* ``client_line``: ``tag``, ``kind`` (``auth_data``/``idle_done``), ``bytes`` (the data
  is never written);
* ``response``: ``tag`` (null if untagged), ``name``, ``status`` and ``code`` (status
  responses), ``latency_ms`` and ``command`` (a tagged completion), ``text``, ``bytes``,
  ``literals``, ``oversize``;
* ``session_end``: ``reason``, ``detail``, ``bytes_in``, ``bytes_out``, ``duration``.

A record may carry ``lost``: how many records were lost (buffer full, disk too slow)
just before it.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping
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
    if isinstance(data, str):
        return safe(data, limit)
    text = _printable(data[:limit])
    return text + f"...(+{len(data) - limit})" if len(data) > limit else text


def render(raw: bytes, literals: tuple[LiteralInfo, ...], *, bodies: bool) -> str:
    """A message's text with inline literal bodies replaced by ``<N bytes>`` (unless
    ``bodies``), the CRLF at its end dropped, the rest escaped and cut."""
    if bodies or not any(lit.inline for lit in literals):
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


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"


def format_jsonl(record: Record) -> str:
    record["t"] = _iso(record["t"])
    return json.dumps(record, ensure_ascii=True, separators=(",", ":"))


def format_text(record: Record) -> str:
    t = record["t"]
    stamp = time.strftime("%H:%M:%S", time.localtime(t)) + f".{int(t * 1000) % 1000:03d}"
    kind = record["type"]
    head = f"{stamp} {record['session']}"
    lost = f"  [{record['lost']} records lost before this]" if record.get("lost") else ""
    if kind == "command":
        extra = f"  [{record['verdict']} by {record['filter']}]" if record.get("verdict") else ""
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
    """One session's transcript; records go to the process-wide sink."""

    __slots__ = ("bodies", "client", "listener", "session", "sink")

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

    def _record(self, record_type: str, session: SessionView, **fields: Any) -> None:
        record: Record = {
            "v": SCHEMA_VERSION,
            "t": time.time(),
            "type": record_type,
            "session": self.session,
            "client": self.client,
            "user": session.user,
        }
        record.update(fields)
        self.sink.put(record)

    def session_started(self, session: SessionView) -> None:
        tls = session.tls
        self._record(
            "session_start",
            session,
            listener=self.listener,
            tls=None if tls is None else {"version": tls.version, "cipher": tls.cipher,
                                          "sni": tls.sni},
        )  # fmt: skip

    def command(self, cmd: CommandView, session: SessionView) -> Verdict:
        # the "tag" of a line that is no well-formed command may be a password
        shown_tag = not cmd.sensitive or (cmd.name in CREDENTIAL_COMMANDS and not cmd.uid)
        self._record(
            "command",
            session,
            tag=printable(cmd.tag, 64) if shown_tag else None,
            name=cmd.full_name,
            text=redacted_command(cmd, bodies=self.bodies),
            bytes=cmd.size,
            literals=[lit.size for lit in cmd.literals],
        )
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
        fields: dict[str, Any] = {
            "tag": None if resp.tag is None else printable(resp.tag, 64),
            "name": resp.name,
            "text": render(resp.raw, resp.literals, bodies=self.bodies)
            + (f"... (long line, more than {len(resp.raw)} bytes)" if resp.oversize else ""),
            "bytes": len(resp.raw) + sum(lit.size for lit in resp.literals if not lit.inline),
            "literals": [lit.size for lit in resp.literals],
        }
        if resp.oversize:
            fields["oversize"] = True
        if resp.kind in (FrameKind.STATUS, FrameKind.GREETING):
            fields["status"] = resp.name
            fields["code"] = response_code(resp.raw)
        if resp.latency is not None:
            fields["latency_ms"] = round(resp.latency * 1000, 3)
        if resp.command is not None:
            fields["command"] = resp.command.full_name
        self._record("response", session, **fields)
        return PASS

    def session_ended(self, session: SessionView, end: SessionEndInfo) -> None:
        self._record(
            "session_end",
            session,
            reason=end.reason,
            detail=printable(end.detail),
            bytes_in=end.bytes_from_client,
            bytes_out=end.bytes_from_upstream,
            duration=round(end.duration, 3),
        )


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
