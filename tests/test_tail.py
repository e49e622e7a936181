"""``imapproxy tail`` without a proxy: rendering and filtering records built here, the
live feed's hub and filter (bounded queues, losses counted and reported, nothing made
while nobody is attached), following a file (rotation, truncation), and the operator
errors of both sides (one line, exit status 2)."""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imapproxy import cli, tail
from imapproxy.filters import (
    ChainEntry,
    FilterChain,
    OnError,
    SessionEndInfo,
    SessionInfo,
    SessionView,
)
from imapproxy.filters.live import LiveFilter, LiveHub, RecordFilter
from imapproxy.filters.transcript import TranscriptFilter, format_jsonl
from imapproxy.relay.control import bind_control_socket
from imapproxy.relay.gate import CommandGate
from imapproxy.tail import Renderer, Selector, follow_file
from imapproxy.wire import Decoder, Frame, Limits, Side

T = "2026-12-04T12:00:01.234Z"


def rec(record_type: str, /, **fields: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "v": 1,
        "t": T,
        "type": record_type,
        "session": "3f2a-3",
        "client": "127.0.0.1:5555",
        "user": "alice",
    }
    record.update(fields)
    return record


def command(text: str, name: str, **fields: Any) -> dict[str, Any]:
    tag = text.split()[0]
    return rec("command", tag=tag, name=name, text=text, bytes=len(text) + 2, literals=[], **fields)


def completion(text: str, cmd: str, status: str = "OK", **fields: Any) -> dict[str, Any]:
    return rec(
        "response",
        tag=text.split()[0],
        name=status,
        text=text,
        bytes=len(text) + 2,
        literals=[],
        status=status,
        code=None,
        latency_ms=1.234,
        command=cmd,
        **fields,
    )


def jl(record: dict[str, Any]) -> str:
    """A record as the proxy writes it (the transcript's encoder)."""
    return format_jsonl({**record, "t": 1_796_000_000.25})


PLAIN = Renderer(color=False)
CLOCK = r"\d\d:\d\d:\d\d\.234"


# ----------------------------------------------------------------------------- rendering


def test_commands_and_responses_read_as_a_conversation() -> None:
    lines = [
        *PLAIN.render(command("a1 SELECT INBOX", "SELECT")),
        *PLAIN.render(
            rec("response", tag=None, name="EXISTS", text="* 3 EXISTS", bytes=12, literals=[])
        ),
        *PLAIN.render(completion("a1 OK [READ-WRITE] done", "SELECT")),
    ]
    assert lines[0].endswith(" 3f2a-3 alice C> a1 SELECT INBOX")
    assert lines[1].endswith(" 3f2a-3 alice S< * 3 EXISTS")
    assert lines[2].endswith(" 3f2a-3 alice S< a1 OK [READ-WRITE] done (1.2 ms)")
    assert all(re.match(CLOCK + " ", line) for line in lines), lines
    assert not any("\x1b" in line for line in lines)


def test_blocks_and_rewrites_are_marked() -> None:
    blocked = PLAIN.render(command("a2 DELETE Precious", "DELETE", verdict="reject", filter="deny"))
    assert blocked[0].endswith("C> a2 DELETE Precious  [BLOCKED: reject by deny]")
    answered = PLAIN.render(command("a3 ID NIL", "ID", verdict="answer", filter="id"))
    assert "[BLOCKED: answer by id]" in answered[0]
    refused = PLAIN.render(command("a4 FOO", "FOO", verdict="refuse", filter="relay"))
    assert "[BLOCKED: refuse by relay]" in refused[0]
    rewritten = PLAIN.render(
        command("a5 SELECT Archive", "SELECT", verdict="replace", filter="rename")
    )
    assert rewritten[0].endswith("C> a5 SELECT Archive  [REWRITTEN by rename]")
    colour = Renderer(color=True)
    assert "\x1b[1;31m" in colour.render(command("a2 X", "X", verdict="reject", filter="d"))[0]
    assert "\x1b[1;33m" in colour.render(command("a5 X", "X", verdict="replace", filter="r"))[0]
    assert "\x1b[" not in PLAIN.render(command("a2 X", "X", verdict="reject", filter="d"))[0]


def test_session_lines_sasl_and_losses() -> None:
    start = PLAIN.render(
        rec(
            "session_start",
            user=None,
            listener="imap@127.0.0.1:1143",
            tls={"version": "TLSv1.3", "cipher": "x", "sni": None},
        )
    )
    assert start[0].endswith(
        " 3f2a-3 - -- session start from 127.0.0.1:5555 on imap@127.0.0.1:1143, TLS TLSv1.3"
    )
    sasl = PLAIN.render(rec("client_line", tag="a1", kind="auth_data", bytes=30))
    assert sasl[0].endswith("C> *** (SASL data, 30 bytes)")
    end = PLAIN.render(
        rec(
            "session_end",
            reason="logout",
            detail="logged out",
            bytes_in=10,
            bytes_out=20,
            duration=1.5,
        )
    )
    assert end[0].endswith("-- session end: logout (logged out), in=10 out=20 1.500s")
    lost = PLAIN.render(command("a9 NOOP", "NOOP", lost=17))
    assert lost[0] == "-- 17 records lost here" and lost[1].endswith("C> a9 NOOP")
    note = PLAIN.render(
        rec(
            "notice",
            session=None,
            client=None,
            user=None,
            lost=5,
            text="5 records lost: this tail read too slowly",
        )
    )
    assert note == [note[0]] and note[0].endswith("-- 5 records lost: this tail read too slowly")


def test_nothing_from_a_record_reaches_the_terminal_unescaped() -> None:
    evil = command("a1 SELECT \x1b]0;pwned\x07\x1b[2J", "SELECT", user="bob\r\nroot")
    (line,) = PLAIN.render(evil)
    assert "\x1b" not in line and "\x07" not in line and "\r" not in line and "\n" not in line
    assert "\\x1b]0;pwned" in line and "bob\\r\\nroot" in line


# ----------------------------------------------------------------------------- filtering


def test_record_filter_fields() -> None:
    select = command("a1 SELECT INBOX", "SELECT")
    done = completion("a1 OK done", "SELECT")
    failed = completion("a2 NO nope", "UID FETCH", status="NO")
    fetch = command("a2 UID FETCH 1 FLAGS", "UID FETCH")
    start = rec("session_start", user=None, listener="l", tls=None)
    notice = rec("notice", session=None, client=None, user=None, text="x", lost=1)

    def shown(rf: RecordFilter) -> list[dict[str, Any]]:
        return [r for r in (select, done, failed, fetch, start, notice) if rf.matches(r)]

    assert shown(RecordFilter.build(user=["alice"])) == [select, done, failed, fetch, notice]
    assert shown(RecordFilter.build(user=["bob"])) == [notice]
    assert shown(RecordFilter.build(command=["select"])) == [select, done, notice]
    assert shown(RecordFilter.build(command=["FETCH"])) == [failed, fetch, notice]  # UID too
    assert shown(RecordFilter.build(command=["uid  fetch"])) == [failed, fetch, notice]
    assert shown(RecordFilter.build(status=["no"])) == [failed, notice]
    assert shown(RecordFilter.build(session=["3f2a-3"])) == [
        select,
        done,
        failed,
        fetch,
        start,
        notice,
    ]
    assert shown(RecordFilter.build(session=["3f2a-4"])) == [notice]
    assert shown(RecordFilter.build(client=["127.0.0.1"])) == shown(RecordFilter())
    assert shown(RecordFilter.build(client=["127.0.0.1:5555"])) == shown(RecordFilter())
    assert shown(RecordFilter.build(client=["127.0.0.1:5556", "10.0.0.1"])) == [notice]
    # every option must match; the values of one option are alternatives
    assert shown(RecordFilter.build(user=["alice", "bob"], command=["SELECT"], status=["OK"])) == [
        done,
        notice,
    ]
    v6 = rec("command", client="[::1]:40000", name="NOOP", text="a NOOP")
    assert RecordFilter.build(client=["::1"]).matches(v6)
    assert RecordFilter.build(client=["[::1]"]).matches(v6)
    assert not RecordFilter.build(client=["::2"]).matches(v6)


def test_the_quick_test_never_refuses_a_record_that_matches() -> None:
    """``may_match`` runs on the proxy's JSON lines before parsing: it may only say no
    when ``matches`` would."""
    records = [
        command("a1 SELECT INBOX", "SELECT"),
        command("a1 SELECT INBOX", "SELECT", user="jörg"),
        completion("a2 NO [x] nope", "UID FETCH", status="NO"),
        rec("session_start", user=None, client="[::1]:40000", listener="l", tls=None),
        command('a3 SELECT "\\"user\\":\\"alice\\""', "SELECT", user="mallory"),
    ]
    filters = [
        RecordFilter.build(user=["alice"]),
        RecordFilter.build(user=["jörg"]),
        RecordFilter.build(command=["FETCH"]),
        RecordFilter.build(status=["NO"]),
        RecordFilter.build(client=["::1"]),
        RecordFilter.build(client=["127.0.0.1:5555"]),
        RecordFilter.build(client=["127.0.0.1"]),
        RecordFilter.build(session=["3f2a-3"]),
    ]
    for record in records:
        for line in (jl(record), json.dumps(record, ensure_ascii=False)):
            for rf in filters:
                if rf.matches(record):
                    assert rf.may_match(line), (rf, line)
    # and it does say no: to another user's record, and to a value only in the text
    alice = RecordFilter.build(user=["alice"])
    assert not alice.may_match(jl(records[1]))
    assert not alice.may_match(jl(records[4]))


def test_with_user_a_sessions_login_is_shown_once_the_user_is_known() -> None:
    def session(sid: str, user: str | None) -> list[dict[str, Any]]:
        pre = {"session": sid, "user": None}
        return [
            rec("session_start", **pre, listener="l", tls=None),
            command("a1 LOGIN x ***", "LOGIN", **pre),
            completion("a1 OK in", "LOGIN", session=sid, user=user),
            command("a2 NOOP", "NOOP", session=sid, user=user),
            rec(
                "session_end",
                session=sid,
                user=user,
                reason="logout",
                detail="",
                bytes_in=1,
                bytes_out=1,
                duration=0.1,
            ),
        ]

    alice, bob, failed = session("s1", "alice"), session("s2", "bob"), session("s3", None)
    failed[2] = completion("a1 NO bad", "LOGIN", status="NO", session="s3", user=None)
    selector = Selector(RecordFilter.build(user=["alice"]))
    shown = [r for x in bob + alice + failed for _, r in selector.select(json.dumps(x), x)]
    assert shown == alice  # in order, the login included; bob's and the failed one not
    assert selector.held == {}  # nothing kept of sessions that ended
    selector = Selector(RecordFilter.build(user=["alice"], command=["NOOP"]))
    assert [r for x in alice for _, r in selector.select("", x)] == [alice[3]]
    # the proxy sends records from before a login to a tail filtered by user
    assert RecordFilter.build(user=["alice"]).matches(alice[1], before_login=True)
    assert RecordFilter.build(user=["alice"]).may_match(jl(alice[1]))
    assert not RecordFilter.build(user=["alice"]).matches(alice[1])


def test_filters_from_a_tail_are_checked() -> None:
    assert RecordFilter.from_json({"user": ["a"], "status": ["NO"]}) == RecordFilter.build(
        user=["a"], status=["NO"]
    )
    for bad, message in [
        ([], "a filter is a JSON object"),
        ({"colour": ["red"]}, "unknown filter field 'colour'"),
        ({"user": "alice"}, "filter field 'user': expected a list of strings"),
        ({"status": ["MAYBE"]}, "unknown status 'MAYBE'"),
    ]:
        with pytest.raises(ValueError, match=message):
            RecordFilter.from_json(bad)


# ----------------------------------------------------------------------------- the hub


def test_a_full_queue_loses_records_and_the_tail_is_told_how_many() -> None:
    hub = LiveHub(capacity=3)
    woken = []
    slow = hub.subscribe(lambda: woken.append("slow"))
    fast = hub.subscribe(lambda: None)
    lines = [
        json.dumps({"v": 1, "type": "command", "n": i}, separators=(",", ":")) for i in range(6)
    ]
    for line in lines[:5]:
        hub.put(line)
        fast.take(10)  # this one keeps up
    assert woken == ["slow"]  # woken once, when its queue stopped being empty
    assert [json.loads(x)["n"] for x in slow.take(10)] == [0, 1, 2]
    assert slow.lost == 2 and slow.lost_total == 2 and fast.lost_total == 0
    hub.put(lines[5])  # the next record it gets says what was lost just before it
    (after,) = slow.take(10)
    assert json.loads(after) == {"lost": 2, "v": 1, "type": "command", "n": 5}
    assert slow.lost == 0 and slow.lost_notice(0.0) is None
    for line in lines:
        hub.put(line)
    slow.take(10)  # drained, nothing follows: a notice says it
    notice = json.loads(slow.lost_notice(1e9) or "")
    assert notice["type"] == "notice" and notice["lost"] == 3 and notice["v"] == 1
    assert "3 records lost" in notice["text"]
    hub.unsubscribe(slow)
    fast.take(10)
    hub.put(lines[0])
    assert not slow.queue and len(fast.queue) == 1


def test_a_filtered_tail_queues_only_what_it_wants_and_loses_nothing_else() -> None:
    hub = LiveHub(capacity=2)
    sub = hub.subscribe(lambda: None)
    sub.filter = RecordFilter.build(user=["alice"])
    for user in ["bob"] * 50 + ["alice"]:
        hub.put(jl(rec("command", user=user, name="NOOP", text="a NOOP")))
    assert sub.lost_total == 0
    assert [json.loads(x)["user"] for x in sub.take(10)] == ["alice"]


def _frame(side: Side, data: bytes) -> Frame:
    decoder = Decoder(side)
    decoder.receive_data(data)
    event = decoder.next_event()
    assert isinstance(event, Frame)
    return event


INFO = SessionInfo("3f2a-3", "127.0.0.1", 5555, "imap@127.0.0.1:1143")


class ListSink:
    formatter = staticmethod(format_jsonl)

    def __init__(self) -> None:
        self.records: list[Any] = []

    def put(self, record: Any) -> None:
        self.records.append(record)


def _drive(f: Any) -> None:
    """A login, a SELECT and the end of a session through ``f`` as the relay drives it."""
    filters = FilterChain([ChainEntry(f.name, lambda info: f, OnError.OPEN)]).open(
        INFO, lambda *a: None
    )
    view = SessionView(INFO)
    gate = CommandGate(filters, view, Limits(), clock=lambda: 1.0)
    filters.session_started(view)
    gate.command_part(_frame(Side.CLIENT, b"a1 LOGIN alice s3cret\r\n"))
    view.user = "alice"
    gate.response(_frame(Side.SERVER, b"a1 OK logged in\r\n"))
    gate.command_part(_frame(Side.CLIENT, b"a2 SELECT INBOX\r\n"))
    gate.response(_frame(Side.SERVER, b"* 3 EXISTS\r\n"))
    gate.response(_frame(Side.SERVER, b"a2 OK [READ-WRITE] done\r\n"))
    filters.session_ended(view, SessionEndInfo("logout", "logged out", 10, 20, 0.5))


def _lines(records: list[Any]) -> list[dict[str, Any]]:
    out = []
    for r in records:
        record = json.loads(r if isinstance(r, str) else format_jsonl(r))
        record.pop("t")
        out.append(record)
    return out


def test_the_live_filter_makes_the_transcripts_records_only_while_a_tail_is_attached() -> None:
    hub = LiveHub(capacity=100)
    seen: list[str] = []
    original = hub.put
    hub.put = lambda record: (seen.append("put"), original(record))  # type: ignore[method-assign]
    _drive(LiveFilter(hub, INFO))
    assert seen == []  # nobody attached: not one record made

    sub = hub.subscribe(lambda: None)
    _drive(LiveFilter(hub, INFO))
    reference = ListSink()
    _drive(TranscriptFilter(reference, INFO, bodies=False))  # type: ignore[arg-type]
    got = _lines(sub.take(100))
    assert got == _lines(reference.records)  # the transcript's records, schema v1
    assert [r["type"] for r in got] == [
        "session_start",
        "command",
        "response",
        "command",
        "response",
        "response",
        "session_end",
    ]
    assert got[1]["text"] == "a1 LOGIN alice ***"
    assert "s3cret" not in json.dumps(got)


# ----------------------------------------------------------------------------- files


def _follow(path: Path, steps: list[Any], *, from_start: bool = False) -> list[str]:
    """Lines ``follow_file`` yields while ``steps`` run one per idle poll."""
    said: list[str] = []
    pending = list(steps)

    def sleep(_: float) -> None:
        pending.pop(0)()

    lines: Iterator[str] = follow_file(
        str(path), said.append, from_start=from_start, sleep=sleep, stop=lambda: not pending
    )
    return list(lines) + [f"said: {s}" for s in said]


def test_following_a_file_from_its_end_through_rotation_and_truncation(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text("old 1\nold 2\n")

    def append(text: str) -> Any:
        return lambda: path.open("a").write(text)

    def rotate() -> None:
        path.rename(tmp_path / "t.jsonl.1")
        (tmp_path / "t.jsonl.1").open("a").write("late to the old file\n")

    steps = [
        append("new 1\npartial"),
        append(" line\n"),
        rotate,
        lambda: None,  # renamed, the new one not made yet: keep waiting
        append("after rotation\n"),
        lambda: path.write_text(""),  # truncated (copytruncate)
        append("after truncation\n"),
        lambda: None,
    ]
    out = _follow(path, steps)
    assert out == [
        "new 1",
        "partial line",
        "late to the old file",
        "after rotation",
        "after truncation",
        f"said: following {path}",
        f"said: {path} was rotated: following the new file",
    ]
    path.write_text("a\nb\n")
    assert _follow(path, [lambda: None], from_start=True)[:2] == ["a", "b"]


def _tail_args(*argv: str) -> argparse.Namespace:
    return cli.build_parser().parse_args(["tail", *argv])


def test_tail_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.sock"
    assert cli.main(["tail", "--socket", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"imapproxy tail: error: cannot connect to {missing}: No such file or "
        f"directory; is the proxy running with --control-socket {missing}?\n"
    )
    stale = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(stale))
    s.close()  # nobody listens
    assert cli.main(["tail", "--socket", str(stale)]) == 2
    assert "Connection refused; is the proxy running" in capsys.readouterr().err
    assert cli.main(["tail", "--file", str(tmp_path / "none.jsonl")]) == 2
    assert capsys.readouterr().err.startswith("imapproxy tail: error: cannot open ")
    text = tmp_path / "text.log"
    text.write_text("12:00:00.000 s1 C: a NOOP\n")
    out, errs = io.StringIO(), io.StringIO()
    args = _tail_args("--file", str(text), "--from-start")
    lines = iter(["12:00:00.000 s1 C: a NOOP", json.dumps(command("a1 NOOP", "NOOP"))])
    tail._print(
        lines, RecordFilter(), PLAIN, out, lambda s: errs.write(s + "\n"), as_json=args.json
    )
    assert "not JSON records" in errs.getvalue()
    assert out.getvalue().endswith("C> a1 NOOP\n")


def test_json_output_passes_records_through_and_reports_filtered_losses() -> None:
    lines = [
        jl(command("a1 NOOP", "NOOP")),
        '{"lost":4,' + jl(command("a2 NOOP", "NOOP", user="bob"))[1:],
        jl(command("a3 SELECT x", "SELECT")),
    ]
    out = io.StringIO()
    tail._print(
        iter(lines),
        RecordFilter.build(command=["NOOP"], user=["alice"]),
        PLAIN,
        out,
        lambda s: None,
        as_json=True,
    )
    got = [json.loads(x) for x in out.getvalue().splitlines()]
    assert got[0] == json.loads(lines[0])
    # bob's record is not shown, but what was lost before it may have matched: said
    assert got[1]["type"] == "notice" and got[1]["lost"] == 4 and len(got) == 2


# ----------------------------------------------------------------------------- the socket


def test_control_socket_is_private_and_refuses_what_is_not_its_own(tmp_path: Path) -> None:
    path = tmp_path / "ctl.sock"
    sock = bind_control_socket(str(path))
    try:
        assert stat.S_ISSOCK(path.stat().st_mode) and stat.S_IMODE(path.stat().st_mode) == 0o600
        with pytest.raises(ValueError, match="another process is listening on it"):
            bind_control_socket(str(path))
    finally:
        sock.close()
    again = bind_control_socket(str(path))  # stale now (nobody listens): replaced
    again.close()
    os.unlink(path)
    regular = tmp_path / "file"
    regular.write_text("keep me")
    with pytest.raises(ValueError, match="exists and is not a socket; remove it"):
        bind_control_socket(str(regular))
    assert regular.read_text() == "keep me"
    with pytest.raises(ValueError, match="path too long"):
        bind_control_socket(str(tmp_path / ("x" * 120)))
    with pytest.raises(ValueError, match="cannot create the socket: No such file"):
        bind_control_socket(str(tmp_path / "no" / "dir.sock"))


def test_run_with_a_bad_control_socket_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    regular = tmp_path / "file"
    regular.write_text("")
    status = cli.main(
        [
            "run",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            "127.0.0.1:1",
            "--control-socket",
            str(regular),
        ]
    )
    assert status == 2
    assert capsys.readouterr().err == (
        f"imapproxy run: error: --control-socket {regular}: exists and is not a socket; "
        "remove it or choose another path\n"
    )
