"""Views built from real decoder frames, and mailbox arguments in every spelling."""

from __future__ import annotations

import pytest

from imapproxy.filters.views import command_view, literal_info, mailbox_arguments
from imapproxy.wire import NEED_DATA, PAUSED, Decoder, Frame, Side
from imapproxy.wire.tokens import LiteralRef


def frames(data: bytes, *, authenticated: bool = True, plus: bool = True) -> list[Frame]:
    """Every frame the client decoder gives for ``data``, answering each sync literal
    with a "+" as a server would."""
    dec = Decoder(Side.CLIENT)
    dec.authenticated = authenticated
    dec.receive_data(data)
    out: list[Frame] = []
    while True:
        ev = dec.next_event()
        if ev is NEED_DATA:
            return out
        if ev is PAUSED:
            assert plus and dec.continuation()
            continue
        if isinstance(ev, Frame):
            out.append(ev)


def view_of(data: bytes):  # type: ignore[no-untyped-def]
    parts = frames(data)
    raw = b"".join(p.raw for p in parts)
    lits = [literal_info(p.literal, inline=True) for p in parts if p.literal is not None]
    return command_view(raw, parts[-1], lits)


@pytest.mark.parametrize(
    "spelling",
    [
        b"a SELECT Finance\r\n",
        b'a SELECT "Finance"\r\n',
        b"a SELECT {7}\r\nFinance\r\n",
        b"a SELECT {7+}\r\nFinance\r\n",
        b"a select Finance\r\n",
        b"a SeLeCt \"Finance\"\r\n",
    ],
)
def test_mailbox_in_every_spelling(spelling: bytes) -> None:
    view = view_of(spelling)
    assert view.name == "SELECT" and not view.uid and view.parse_error is None
    assert mailbox_arguments(view) == ("Finance",)


def test_inbox_any_case_and_mutf7() -> None:
    assert mailbox_arguments(view_of(b"a STATUS iNbOx (MESSAGES)\r\n")) == ("INBOX",)
    # "Entwürfe" in modified UTF-7 and, with UTF8=ACCEPT, in UTF-8
    assert mailbox_arguments(view_of(b"a CREATE Entw&APw-rfe\r\n")) == ("Entwürfe",)
    utf8 = view_of("a CREATE \"Entwürfe\"\r\n".encode())
    assert mailbox_arguments(utf8, utf8=True) == ("Entwürfe",)
    # not canonical modified UTF-7: never equal to the real name
    assert mailbox_arguments(view_of(b"a CREATE Entw&AP-rfe\r\n")) != ("Entwürfe",)


def test_uid_variants_and_several_mailboxes() -> None:
    copy = view_of(b"a UID COPY 1:* Archive\r\n")
    assert (copy.name, copy.uid, copy.full_name) == ("COPY", True, "UID COPY")
    assert mailbox_arguments(copy) == ("Archive",)
    assert mailbox_arguments(view_of(b"a uid move 1 {5}\r\nTrash\r\n")) == ("Trash",)
    assert mailbox_arguments(view_of(b"a RENAME Old \"New One\"\r\n")) == ("Old", "New One")
    assert mailbox_arguments(view_of(b"a GETMETADATA (DEPTH 1) Box /private\r\n")) == ("Box",)
    assert mailbox_arguments(view_of(b"a NOOP\r\n")) == ()


def test_append_decided_on_its_head() -> None:
    dec = Decoder(Side.CLIENT)
    dec.authenticated = True
    dec.receive_data(b"a APPEND Sent (\\Seen) {50000000}\r\n")
    head = dec.next_event()
    assert isinstance(head, Frame) and head.streamed and head.literal is not None
    view = command_view(
        head.raw, head, [literal_info(head.literal, inline=False)], complete=False
    )
    assert not view.complete and view.size == len(head.raw) + 50_000_000
    assert isinstance(view.args[-1], LiteralRef)
    assert mailbox_arguments(view) == ("Sent",)


def test_unparsable_arguments_keep_the_head() -> None:
    view = view_of(b'a SELECT "unterminated\r\n')
    assert view.name == "SELECT" and view.tag == b"a"
    assert view.parse_error and view.args == ()


def test_replace_names_its_mailbox() -> None:
    """RFC 8508 REPLACE: the second argument is the mailbox the new message goes to."""
    from imapproxy.filters.api import UNPARSED, CommandView
    from imapproxy.filters.views import mailbox_arguments

    raw = b"a REPLACE 4 Archive {5}\r\nhello\r\n"
    cmd = CommandView(b"a", "REPLACE", False, UNPARSED, raw)
    assert mailbox_arguments(cmd) == ("Archive",)
