"""Frame.nonsync: the decoder says which parts announce a {n+} literal (the relay rewrites
them), from the framing itself rather than from a pattern over the bytes."""

from __future__ import annotations

from imapproxy.wire import NEED_DATA, PAUSED, Decoder, Frame, Limits, Side


def _frames(decoder: Decoder) -> list[Frame]:
    out = []
    while (event := decoder.next_event()) not in (NEED_DATA, PAUSED):
        if isinstance(event, Frame):
            out.append(event)
    return out


def test_inline_and_trailing_nonsync_literals_are_flagged() -> None:
    d = Decoder(Side.CLIENT)
    d.authenticated = True
    d.receive_data(b"a APPEND INBOX {3+}\r\nabc\r\nb NOOP\r\n")
    assert [f.nonsync for f in _frames(d)] == [True, False]
    big = Decoder(Side.CLIENT, Limits(inline_literal_bytes=128))
    big.authenticated = True
    big.receive_data(b"c APPEND INBOX ~{1000+}\r\n")
    (head,) = _frames(big)
    assert head.nonsync and head.streamed


def test_sync_literal_content_that_looks_like_one_is_not_flagged() -> None:
    d = Decoder(Side.CLIENT)
    d.authenticated = True
    d.receive_data(b"a APPEND INBOX {9}\r\n")
    (head,) = _frames(d)
    assert not head.nonsync
    assert d.continuation()
    d.receive_data(b"x {5+}\r\n\r\n")  # the literal's 9 bytes, then the line end
    (rest,) = _frames(d)
    assert rest.raw == b"x {5+}\r\n\r\n"
    assert not rest.nonsync


def test_server_literals_are_never_flagged() -> None:
    d = Decoder(Side.SERVER)
    d.receive_data(b"* 1 FETCH (BODY[] {3}\r\nabc)\r\n")
    assert [f.nonsync for f in _frames(d)] == [False]
