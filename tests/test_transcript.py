"""The transcript's redaction: what a support engineer sees must never hold a secret."""

from __future__ import annotations

import base64
import io
from dataclasses import replace

import pytest

from imapproxy.filters import (
    ChainEntry,
    ClientLineView,
    FilterChain,
    OnError,
    SessionEndInfo,
    SessionInfo,
    SessionView,
)
from imapproxy.filters.sink import RecordSink
from imapproxy.filters.transcript import TranscriptFactory, format_text, redacted_command
from imapproxy.filters.views import command_view
from imapproxy.logsafe import printable
from imapproxy.relay.gate import CommandGate
from imapproxy.wire import Decoder, Frame, FrameKind, Limits, LiteralChunk, Secret, Side
from tests.wire.test_secrets import EXCHANGES, REFUSALS, Exchange, Refusal, relay_like, run_exchange

INFO = SessionInfo("s1", "127.0.0.1", 1, "imap@test")
_SINKS: list[RecordSink] = []


def transcript_chain(out: io.StringIO) -> FilterChain:
    sink = RecordSink("-", format_text, stream=out)
    sink.start()
    _SINKS.append(sink)
    return FilterChain([ChainEntry("transcript", TranscriptFactory(sink, bodies=False),
                                   OnError.OPEN)])  # fmt: skip


def _frame(line: bytes) -> Frame:
    decoder = Decoder(Side.CLIENT)
    decoder.receive_data(line)
    event = decoder.next_event()
    assert isinstance(event, Frame)
    return event


def redacted(frame: Frame) -> str:
    """How the transcript filter shows the command of this (whole) frame."""
    view = replace(command_view(frame.raw, frame), sensitive=frame.sensitive)
    return redacted_command(view, bodies=False)


def _transcript_of(events: list[Frame | LiteralChunk]) -> str:
    """The text transcript of client events, through the transcript filter as the relay
    drives it (commands shown through the gate, SASL lines and DONE as client lines)."""
    out = io.StringIO()
    filters = transcript_chain(out).open(INFO, lambda *a: None)
    view = SessionView(INFO)
    gate = CommandGate(filters, view, Limits(), clock=lambda: 0.0)
    for event in events:
        if isinstance(event, Frame):
            if event.kind is FrameKind.COMMAND:
                assert gate.command_part(event) is None  # observed, never held
            else:
                filters.client_line(
                    ClientLineView(event.kind, event.tag, Secret(event.raw), len(event.raw)),
                    view,
                )
    filters.session_ended(view, SessionEndInfo("closed", "closed", 0, 0, 0.0))
    _SINKS.pop().close()
    return out.getvalue()


@pytest.mark.parametrize(
    ("line", "shown"),
    [
        (b"a AUTHENTICATE PLAIN AGFsaWNlAGFsaWNlcHc=\r\n", "a AUTHENTICATE PLAIN ***"),
        (b"a AUTHENTICATE PLAIN\tAGFsaWNlAGFsaWNlcHc=\r\n", "a AUTHENTICATE ***"),
        (b"a authenticate plain AGFsaWNlAGFsaWNlcHc=\r\n", "a AUTHENTICATE PLAIN ***"),
        (b"a AUTHENTICATE XOAUTH2\r\n", "a AUTHENTICATE XOAUTH2"),
        (b"a LOGIN alice alicepw\r\n", "a LOGIN alice ***"),
        (b'a LOGIN "alice" "ali ce\\"pw"\r\n', "a LOGIN alice ***"),
    ],
)
def test_credentials_are_redacted(line: bytes, shown: str) -> None:
    assert redacted(_frame(line)) == shown


def test_writer_shows_latency_and_no_password() -> None:
    out = io.StringIO()
    filters = transcript_chain(out).open(INFO, lambda *a: None)
    view = SessionView(INFO)
    now = [10.0]
    gate = CommandGate(filters, view, Limits(), clock=lambda: now[0])
    gate.command_part(_frame(b"a LOGIN alice alicepw\r\n"))
    now[0] += 0.0123
    server = Decoder(Side.SERVER)
    server.receive_data(b"* OK hi\r\na OK done\r\n")
    server.next_event()
    done = server.next_event()
    assert isinstance(done, Frame)
    gate.response(done)
    _SINKS.pop().close()
    text = out.getvalue()
    assert "alicepw" not in text
    assert "C: a LOGIN alice ***" in text
    assert "S: a OK done  (12.3 ms)" in text


# ------------------------------------------------------------------ the secrets battery


def _forms(needle: str) -> set[str]:
    """The needle and the ways the transcript could spell it (escaped, decoded base64)."""
    forms = {needle, printable(needle.encode())}
    try:
        decoded = base64.b64decode(needle, validate=True)
    except ValueError:
        return forms
    return forms | {printable(decoded)}


@pytest.mark.parametrize("refusal", REFUSALS, ids=lambda r: r.name)
def test_transcript_never_shows_what_follows_a_refused_login(refusal: Refusal) -> None:
    events = relay_like(refusal)
    text = _transcript_of(events)
    for needle in refusal.needles:
        for form in _forms(needle):
            assert form not in text, f"{form!r} in the transcript:\n{text}"
    for line in refusal.shown:  # the zone of credentials ends: the next command is shown
        assert f"C: {line.decode().strip()}\n" in text


@pytest.mark.parametrize("exchange", EXCHANGES, ids=lambda e: e.name)
def test_transcript_never_shows_a_credential(exchange: Exchange) -> None:
    text = _transcript_of(run_exchange(exchange))
    assert "C: a1 " in text
    for needle in exchange.needles:
        for form in _forms(needle):
            assert form not in text, f"{form!r} in the transcript:\n{text}"


@pytest.mark.parametrize(
    ("line", "shown"),
    [
        # the user is shown only for a well-formed LOGIN with two arguments
        (b"a LOGIN OnlyArgPassword\r\n", "a LOGIN ***"),
        (b'a LOGIN "alice pw"\r\n', "a LOGIN ***"),
        (b"a LOGIN alice pw extra\r\n", "a LOGIN ***"),
        (b"a LOGIN alice {2+}\r\npw\r\n", "a LOGIN alice ***"),
        (b"a LOGIN {5+}\r\nalice pw\r\n", "a LOGIN alice ***"),
        (b"a LOGIN alice\r\n", "a LOGIN ***"),
        (b"a LOGIN\r\n", "a LOGIN ***"),
        # other forms: nothing of them
        (b"a UID LOGIN alice pw\r\n", "*** (not shown: may hold credentials)"),
        (b"LOGIN OnlyArgPassword\r\n", "*** (not shown: may hold credentials)"),
        (b'a LOGIN"alice" pw\r\n', "*** (not shown: may hold credentials)"),
        (b"a XLOGIN alice pw\r\n", "*** (not shown: may hold credentials)"),
        # a SASL mechanism is shown only if it is a known one
        (b"a AUTHENTICATE AGFsaWNlAGFsaWNlcHc=\r\n", "a AUTHENTICATE ***"),
        (b"a AUTHENTICATE AGFsaWNlAGFsaWNl\r\n", "a AUTHENTICATE ***"),
        (b"a AUTHENTICATE SCRAM-SHA-256\r\n", "a AUTHENTICATE SCRAM-SHA-256"),
        (b"a AUTHENTICATE PLAIN =\r\n", "a AUTHENTICATE PLAIN ***"),
        (b"a AUTHENTICATE PLAIN {20+}\r\nAGFsaWNlAGFsaWNlcHc=\r\n", "a AUTHENTICATE PLAIN ***"),
    ],
)
def test_malformed_logins_show_no_argument(line: bytes, shown: str) -> None:
    assert redacted(_frame(line)) == shown


def test_a_long_user_name_is_cut() -> None:
    user = b"u" * 5000
    text = redacted(_frame(b"a LOGIN " + user + b" pw\r\n"))
    assert text.startswith("a LOGIN uuu") and len(text) < 400


def test_session_end_is_one_line() -> None:
    out = io.StringIO()
    filters = transcript_chain(out).open(INFO, lambda *a: None)
    detail = "BYE \r\nforged\x1b[31m"
    filters.session_ended(SessionView(INFO), SessionEndInfo("upstream_bye", detail, 1, 2, 0.5))
    _SINKS.pop().close()
    text = out.getvalue()
    assert text.count("\n") == 1 and "\r" not in text and "\x1b" not in text
    assert "BYE \\r\\nforged\\x1b[31m" in text


def test_a_long_server_line_is_shown_once() -> None:
    """The relay offers a response's first part only: a line relayed in oversize pieces
    is shown once, its beginning and "long line"."""
    server = Decoder(Side.SERVER, Limits(max_line_bytes=256))
    line = b"* SEARCH " + b" ".join(b"%d" % i for i in range(1, 2000)) + b"\r\n"
    server.receive_data(b"* OK hi\r\n" + line + b"a OK done\r\n")
    out = io.StringIO()
    filters = transcript_chain(out).open(INFO, lambda *a: None)
    gate = CommandGate(filters, SessionView(INFO), Limits(), clock=lambda: 0.0)
    gate.command_part(_frame(b"a SEARCH ALL\r\n"))
    pieces = 0
    while isinstance(event := server.next_event(), Frame):
        pieces += event.oversize
        if event.first:
            gate.response(event, oversize=event.oversize)
    _SINKS.pop().close()
    assert pieces > 10
    lines = out.getvalue().splitlines()
    assert len(lines) == 4  # the command, the greeting, the long line once, the completion
    assert "S: * SEARCH 1 2 3 4 5 " in lines[2]
    assert lines[2].endswith("... (long line, more than 224 bytes)"), lines[2]
    assert len(lines[2]) < 400
    assert "S: a OK done" in lines[3] and " ms)" in lines[3]


def test_a_command_waiting_for_the_servers_plus_is_shown_before_it() -> None:
    """An APPEND no filter holds back goes upstream in parts; the server's "+" is relayed
    before the literal comes, so the transcript shows the command first, then the "+"."""
    out = io.StringIO()
    filters = transcript_chain(out).open(INFO, lambda *a: None)
    gate = CommandGate(filters, SessionView(INFO), Limits(), clock=lambda: 0.0)
    client = Decoder(Side.CLIENT)
    client.authenticated = True
    client.receive_data(b"a APPEND INBOX {5}\r\n")
    head = client.next_event()
    assert isinstance(head, Frame) and gate.command_part(head) is None
    server = Decoder(Side.SERVER)
    server.receive_data(b"* OK hi\r\n+ OK\r\n")
    server.next_event()
    plus = server.next_event()
    assert isinstance(plus, Frame)
    gate.response(plus)
    assert client.continuation()
    client.receive_data(b"hello\r\n")
    rest = client.next_event()
    assert isinstance(rest, Frame) and gate.command_part(rest) is None
    _SINKS.pop().close()
    lines = out.getvalue().splitlines()
    assert [ln.split(" ", 2)[2] for ln in lines] == [
        "C: a APPEND INBOX {5}\\r\\n<5 bytes>",  # the literal to come, by its size
        "S: + OK",
    ]
