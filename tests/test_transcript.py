"""The transcript's redaction: what a support engineer sees must never hold a secret."""

from __future__ import annotations

import io

import pytest

from imapproxy.transcript import TranscriptWriter, redacted
from imapproxy.wire import Decoder, Frame, Side


def _frame(line: bytes) -> Frame:
    decoder = Decoder(Side.CLIENT)
    decoder.receive_data(line)
    event = decoder.next_event()
    assert isinstance(event, Frame)
    return event


@pytest.mark.parametrize(
    ("line", "shown"),
    [
        (b"a AUTHENTICATE PLAIN AGFsaWNlAGFsaWNlcHc=\r\n", "a AUTHENTICATE PLAIN ***"),
        (b"a AUTHENTICATE PLAIN\tAGFsaWNlAGFsaWNlcHc=\r\n", "a AUTHENTICATE PLAIN ***"),
        (b"a authenticate plain AGFsaWNlAGFsaWNlcHc=\r\n", "a authenticate plain ***"),
        (b"a AUTHENTICATE XOAUTH2\r\n", "a AUTHENTICATE XOAUTH2"),
        (b"a LOGIN alice alicepw\r\n", "a LOGIN alice ***"),
        (b'a LOGIN "alice" "ali ce\\"pw"\r\n', "a LOGIN alice ***"),
    ],
)
def test_credentials_are_redacted(line: bytes, shown: str) -> None:
    assert redacted(_frame(line)) == shown


def test_writer_shows_latency_and_no_password() -> None:
    out = io.StringIO()
    writer = TranscriptWriter(out)
    writer.frame("s1", _frame(b"a LOGIN alice alicepw\r\n"), to_upstream=True)
    server = Decoder(Side.SERVER)
    server.receive_data(b"* OK hi\r\na OK done\r\n")
    server.next_event()
    done = server.next_event()
    assert isinstance(done, Frame)
    writer.frame("s1", done, to_upstream=False)
    text = out.getvalue()
    assert "alicepw" not in text
    assert "C: a LOGIN alice ***" in text
    assert "S: a OK done  (" in text and " ms)" in text


def test_a_long_server_line_is_shown_once_with_its_size() -> None:
    from imapproxy.wire import Limits

    server = Decoder(Side.SERVER, Limits(max_line_bytes=256))
    line = b"* SEARCH " + b" ".join(b"%d" % i for i in range(1, 2000)) + b"\r\n"
    server.receive_data(b"* OK hi\r\n" + line + b"a OK done\r\n")
    out = io.StringIO()
    writer = TranscriptWriter(out)
    writer.frame("s1", _frame(b"a SEARCH ALL\r\n"), to_upstream=True)
    pieces = 0
    while isinstance(event := server.next_event(), Frame):
        pieces += event.oversize
        writer.frame("s1", event, to_upstream=False)
    assert pieces > 10
    lines = out.getvalue().splitlines()
    assert len(lines) == 4  # the command, the greeting, the long line once, the completion
    assert "S: * SEARCH 1 2 3 4 5 " in lines[2]
    assert lines[2].endswith(f"... (long line, {len(line)} bytes)")
    assert len(lines[2]) < 400
    assert "S: a OK done" in lines[3] and " ms)" in lines[3]
