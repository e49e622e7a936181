"""The transcript filter on its own: record schema, redaction, the never-blocking sink."""

from __future__ import annotations

import io
import json
import os
import stat
import threading
import time
from pathlib import Path

import pytest

from imapproxy.filters import (
    ClientLineView,
    ConfigError,
    LiteralInfo,
    ResponseView,
    SessionEndInfo,
    SessionInfo,
    SessionView,
    TlsInfo,
)
from imapproxy.filters.sink import RecordSink
from imapproxy.filters.transcript import (
    SCHEMA_VERSION,
    format_jsonl,
    make_transcript,
    printable,
    redacted_command,
)
from imapproxy.filters.views import command_view
from imapproxy.wire import Decoder, Frame, FrameKind, Secret, Side

INFO = SessionInfo("ab-1", "127.0.0.1", 40000, "imap@127.0.0.1:1143")
COMMON = {"v", "t", "type", "session", "client", "user"}


def view(data: bytes, *, authenticated: bool = False):  # type: ignore[no-untyped-def]
    dec = Decoder(Side.CLIENT)
    dec.authenticated = authenticated
    dec.receive_data(data)
    parts: list[Frame] = []
    while True:
        ev = dec.next_event()
        if isinstance(ev, Frame):
            parts.append(ev)
            if ev.final:
                break
        elif not dec.continuation():
            break
    raw = b"".join(p.raw for p in parts)
    lits = [LiteralInfo(p.literal.size) for p in parts if p.literal is not None]
    cv = command_view(raw, parts[-1], lits)
    from dataclasses import replace

    return replace(cv, sensitive=parts[0].sensitive)


def run_session(tmp_path: Path, **options: object) -> list[dict]:  # type: ignore[type-arg]
    out = tmp_path / "t.jsonl"
    factory = make_transcript({"path": str(out), **options}, "filters[0]")
    factory.start()  # type: ignore[attr-defined]
    f = factory(INFO)
    s = SessionView(INFO, tls=TlsInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384", "imap.example"))
    f.session_started(s)
    login = view(b"a1 LOGIN alice {8}\r\nhunter22\r\n")
    f.command(login, s)
    f.response(ResponseView(FrameKind.STATUS, b"a1", "OK", b"a1 OK [CAPABILITY IMAP4rev1] in\r\n",
                            command=login, latency=0.0123), s)  # fmt: skip
    s.user = "alice"
    f.command(view(b"a2 APPEND INBOX {11}\r\nhello world\r\n", authenticated=True), s)
    f.client_line(ClientLineView(FrameKind.AUTH_DATA, b"a3", Secret(b"c2VjcmV0\r\n"), 10), s)
    f.response(ResponseView(FrameKind.DATA, None, "FETCH", b"* 1 FETCH (BODY[] {5}\r\nhello)\r\n",
                            number=1, literals=(LiteralInfo(5),)), s)  # fmt: skip
    f.session_ended(s, SessionEndInfo("logout", "logged out", 120, 340, 1.5))
    factory.close()  # type: ignore[attr-defined]
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_schema_of_every_record_type(tmp_path: Path) -> None:
    records = run_session(tmp_path)
    assert [r["type"] for r in records] == [
        "session_start", "command", "response", "command", "client_line", "response",
        "session_end",
    ]  # fmt: skip
    for r in records:
        assert set(r) >= COMMON, r
        assert r["v"] == SCHEMA_VERSION and r["session"] == "ab-1"
        assert r["client"] == "127.0.0.1:40000"
        assert r["t"].endswith("Z") and "T" in r["t"]
    start, login, ok, append, sasl, fetch, end = records
    assert start["tls"] == {"version": "TLSv1.3", "cipher": "TLS_AES_256_GCM_SHA384",
                            "sni": "imap.example"}  # fmt: skip
    assert start["listener"] == "imap@127.0.0.1:1143" and start["user"] is None
    assert login["name"] == "LOGIN" and login["text"] == "a1 LOGIN alice ***"
    assert ok["status"] == "OK" and ok["code"] == "CAPABILITY" and ok["latency_ms"] == 12.3
    assert ok["command"] == "LOGIN"
    assert append["user"] == "alice" and append["literals"] == [11]
    assert append["text"] == "a2 APPEND INBOX {11}\\r\\n<11 bytes>"
    assert sasl == {**sasl, "kind": "auth_data", "bytes": 10, "tag": "a3"}
    assert fetch["text"] == "* 1 FETCH (BODY[] {5}\\r\\n<5 bytes>)"
    assert end["reason"] == "logout" and end["bytes_in"] == 120 and end["duration"] == 1.5


def test_no_secret_anywhere(tmp_path: Path) -> None:
    text = json.dumps(run_session(tmp_path))
    for secret in ("hunter22", "c2VjcmV0", "secret", "hello world"):
        assert secret not in text


def test_bodies_when_asked(tmp_path: Path) -> None:
    records = run_session(tmp_path, bodies=True)
    assert records[3]["text"] == "a2 APPEND INBOX {11}\\r\\nhello world"


@pytest.mark.parametrize(
    ("data", "shown"),
    [
        (b"a LOGIN alice pw\r\n", "a LOGIN alice ***"),
        (b'a LOGIN "alice pw"\r\n', "a LOGIN ***"),  # one argument: perhaps all password
        (b"a LOGIN OnlyArgPassword\r\n", "a LOGIN ***"),
        (b"a LOGIN a b c\r\n", "a LOGIN ***"),
        (b"a UID LOGIN alice pw\r\n", "*** (not shown: may hold credentials)"),
        (b"a AUTHENTICATE PLAIN AGFsaWNlAHB3\r\n", "a AUTHENTICATE PLAIN ***"),
        (b"a authenticate plain\r\n", "a AUTHENTICATE PLAIN"),
        (b"a AUTHENTICATE AGFsaWNlAHB3=\r\n", "a AUTHENTICATE ***"),
    ],
)
def test_sensitive_commands(data: bytes, shown: str) -> None:
    cv = view(data)
    assert cv.sensitive or cv.name in ("LOGIN", "AUTHENTICATE")
    from dataclasses import replace

    assert redacted_command(replace(cv, sensitive=True), bodies=True) == shown


def test_printable_escapes_and_cuts() -> None:
    assert printable(b"a\r\nb\x1b[31m\xff") == "a\\r\\nb\\x1b[31m\\xff"
    assert printable("x" * 400).endswith("...(+100)")


def test_options_are_validated() -> None:
    with pytest.raises(ConfigError, match=r"filters\[0\]\.format: expected one of jsonl, text"):
        make_transcript({"format": "xml"}, "filters[0]")
    with pytest.raises(ConfigError, match=r"filters\[0\]\.bodies: expected bool"):
        make_transcript({"bodies": "yes"}, "filters[0]")
    with pytest.raises(ConfigError, match=r"filters\[0\]\.pth: unknown key"):
        make_transcript({"pth": "x"}, "filters[0]")


def test_file_is_private_and_reopened(tmp_path: Path) -> None:
    out = tmp_path / "t.jsonl"
    sink = RecordSink(str(out), format_jsonl)
    sink.start()
    sink.put({"t": time.time(), "type": "note", "n": 1})
    deadline = time.monotonic() + 10
    while sink.written < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    out.rename(tmp_path / "t.jsonl.1")  # logrotate
    sink.reopen()
    sink.put({"t": time.time(), "type": "note", "n": 2})
    sink.close()
    assert json.loads((tmp_path / "t.jsonl.1").read_text())["n"] == 1
    assert json.loads(out.read_text())["n"] == 2


class BlockedStream(io.StringIO):
    """A terminal nobody reads: every write blocks until released."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def write(self, s: str) -> int:
        self.release.wait()
        return super().write(s)


def test_a_blocked_sink_never_blocks_the_producer_and_counts_losses() -> None:
    stream = BlockedStream()
    sink = RecordSink("-", format_jsonl, capacity=100, stream=stream)
    sink.start()
    began = time.monotonic()
    for i in range(10_000):
        sink.put({"t": time.time(), "type": "note", "n": i})
    elapsed = time.monotonic() - began
    # 10,000 puts against a writer that cannot write: none of them waited on it
    assert elapsed < 5.0
    assert sink.lost_total >= 10_000 - 101
    stream.release.set()
    sink.put({"t": time.time(), "type": "note", "n": "after"})
    sink.close()
    lines = [json.loads(x) for x in stream.getvalue().splitlines()]
    assert sum(r.get("lost", 0) for r in lines) == sink.lost_total
    assert len(lines) + sink.lost_total == 10_001


def test_the_tag_of_a_line_that_may_be_a_password_is_not_shown(tmp_path: Path) -> None:
    from dataclasses import replace

    out = tmp_path / "t.jsonl"
    factory = make_transcript({"path": str(out)}, "filters[0]")
    factory.start()  # type: ignore[attr-defined]
    f = factory(INFO)
    s = SessionView(INFO)
    line = view(b"hunter22 x\r\n")  # after a refused login: sensitive, not a command
    f.command(replace(line, sensitive=True, verdict="refuse", by="relay"), s)
    f.command(replace(view(b"a1 LOGIN alice pw\r\n"), sensitive=True), s)
    factory.close()  # type: ignore[attr-defined]
    text = out.read_text()
    assert "hunter22" not in text
    records = [json.loads(x) for x in text.splitlines()]
    assert records[0]["tag"] is None and records[1]["tag"] == "a1"


class Lines:
    """A stand-in sink that keeps what the filter hands over (a line or a dict)."""

    def __init__(self, formatter) -> None:  # type: ignore[no-untyped-def]
        self.formatter = formatter
        self.items: list[object] = []

    def put(self, item: object) -> None:
        self.items.append(item)


def _messages(s: SessionView):  # type: ignore[no-untyped-def]
    """Commands and responses of every shape a record can take."""
    login = view(b"a1 LOGIN alice {8}\r\nhunter22\r\n")
    select = view(b'a2 SELECT "Caf\xc3\xa9 \\"x\\""\r\n', authenticated=True)  # 8-bit, quotes
    from dataclasses import replace

    yield "command", login
    yield "command", replace(select, verdict="reject", by="pol\u00efcy")
    yield "command", view(b"a3 APPEND INBOX {11}\r\nhello world\r\n", authenticated=True)
    yield "command", view(b"a4 UID FETCH 1:* (FLAGS)\r\n", authenticated=True)
    yield "response", ResponseView(FrameKind.GREETING, None, "OK", b"* OK [ALERT] hi\x1b\r\n")
    yield "response", ResponseView(FrameKind.STATUS, b"a1", "OK", b"a1 OK [CAPABILITY X] in\r\n",
                                   command=login, latency=0.0123456)  # fmt: skip
    yield "response", ResponseView(FrameKind.STATUS, b"a2", "NO", b"a2 NO nope\r\n",
                                   latency=2.0, by="relay")  # fmt: skip
    yield "response", ResponseView(FrameKind.DATA, None, "FETCH",
                                   b"* 1 FETCH (BODY[] {5}\r\nhello)\r\n", number=1,
                                   literals=(LiteralInfo(5), LiteralInfo(9, inline=False)))
    yield "response", ResponseView(FrameKind.DATA, None, "SEARCH", b"* SEARCH 1 2 3",
                                   oversize=True)  # fmt: skip
    yield "response", ResponseView(FrameKind.CONTINUATION, None, "+", b"+ Ready\r\n")


@pytest.mark.parametrize(
    ("user", "upstream"),
    [(None, None), ("alice", None), ("j\u00f6rg \"q\"\\", None), ("bob", "bob@example.com")],
)
def test_jsonl_lines_made_on_the_hot_path_equal_the_records(
    user: str | None, upstream: str | None
) -> None:
    """Command and response lines are written directly for a JSONL sink: they must parse
    to exactly the record the dict path (what the text format uses) makes."""
    from imapproxy.filters.transcript import TranscriptFilter, format_text

    direct = Lines(format_jsonl)
    dicts = Lines(format_text)
    s = SessionView(INFO, user=user, upstream_user=upstream)
    for sink in (direct, dicts):
        f = TranscriptFilter(sink, INFO, bodies=False)  # type: ignore[arg-type]
        for hook, message in _messages(s):
            getattr(f, hook)(message, s)
    assert all(type(x) is str for x in direct.items)
    assert all(type(x) is dict for x in dicts.items)
    assert len(direct.items) == len(dicts.items) == 10
    for line, record in zip(direct.items, dicts.items, strict=True):
        parsed = json.loads(line)  # type: ignore[arg-type]
        expected = json.loads(format_jsonl(dict(record)))  # type: ignore[call-overload]
        assert parsed.pop("t")[:19] == expected.pop("t")[:19]  # (to the second)
        assert parsed == expected
        assert line.isascii()  # type: ignore[union-attr]
    assert all(json.loads(x).get("upstream_user") == upstream for x in direct.items)  # type: ignore[arg-type]
    rejected = json.loads(direct.items[1])  # type: ignore[arg-type]
    assert rejected["verdict"] == "reject" and rejected["filter"] == "pol\u00efcy"
    assert json.loads(direct.items[3])["name"] == "UID FETCH"  # type: ignore[arg-type]


def test_losses_are_reported_in_a_line_made_on_the_hot_path() -> None:
    stream = BlockedStream()
    sink = RecordSink("-", format_jsonl, capacity=10, stream=stream)
    sink.start()
    for i in range(1000):
        sink.put(f'{{"v":1,"type":"command","n":{i}}}')
    stream.release.set()
    deadline = time.monotonic() + 10
    while sink.written + sink.lost_total < 1000 and time.monotonic() < deadline:
        time.sleep(0.01)  # the writer catches up: the next record has room
    sink.put('{"v":1,"type":"command","n":"after"}')
    sink.close()
    lines = [json.loads(x) for x in stream.getvalue().splitlines()]
    assert sum(r.get("lost", 0) for r in lines) == sink.lost_total > 0
    assert len(lines) + sink.lost_total == 1001
    assert lines[-1]["n"] == "after" and all(r["type"] == "command" for r in lines)
