"""The decoder's pure helpers on their own: message heads (wire/heads.py), literal
announcements (wire/literals.py) and cutting long lines (wire/longlines.py).

The decoder tests cover them through whole streams; these pin each function's contract
(what it returns for the edge cases the decoder relies on) where it is defined.
"""

from __future__ import annotations

import pytest

from imapproxy.wire.events import FrameKind
from imapproxy.wire.heads import command_head, first_word, names_credentials, response_head
from imapproxy.wire.literals import SIZE_OVERFLOW, announced_literal
from imapproxy.wire.longlines import CUT_OVERFLOW, TAIL_KEEP, safe_cut


def _command(line: bytes) -> tuple[bytes | None, str, bool]:
    return command_head(line, 0, len(line))


def _response(line: bytes, greeting: bool = False) -> tuple:
    return response_head(line, 0, len(line), greeting)


# ---------------------------------------------------------------------- command heads


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"a1 NOOP\r\n", (b"a1", "NOOP", True)),
        (b"a1 noop\r\n", (b"a1", "NOOP", True)),  # the fixed table's lower-case spelling
        (b"a1 nOoP\r\n", (b"a1", "NOOP", True)),  # any other spelling, converted
        (b'a1 SELECT "INBOX"\r\n', (b"a1", "SELECT", True)),
        (b"a1 UID FETCH 1:* (FLAGS)\r\n", (b"a1", "UID FETCH", True)),
        (b"a1 uid store 5 +FLAGS (\\Seen)\r\n", (b"a1", "UID STORE", True)),
        (b"a1 UID LOGIN x\r\n", (b"a1", "UID LOGIN", False)),  # LOGIN is no UID command
        (b"a1 UID\r\n", (b"a1", "UID", False)),  # nothing after UID
        (b"a1 XYZZY\r\n", (b"a1", "XYZZY", False)),  # relayed, but not "a command again"
        (b"a1 CREATE]x\r\n", (b"a1", "", False)),  # "]" ends no name: no head at all
        (b"a+1 NOOP\r\n", (b"a+1", "", False)),  # "+" is not allowed in a tag
        (b"alice secretpw\r\n", (b"alice", "SECRETPW", False)),
        (b"dGVzdA==\r\n", (b"dGVzdA==", "", False)),  # no space: one word, no name
        (b"\r\n", (None, "", False)),
    ],
)
def test_command_head(line: bytes, expected: tuple) -> None:
    assert _command(line) == expected


def test_command_head_reads_only_its_slice() -> None:
    buf = b"xx a7 LOGIN u p\r\nyy"
    assert command_head(buf, 3, 17) == (b"a7", "LOGIN", True)
    # the name ends at the slice's end as at a line end
    assert command_head(buf, 3, 11) == (b"a7", "LOGIN", True)


# --------------------------------------------------------------------- response heads


@pytest.mark.parametrize(
    ("line", "greeting", "expected"),
    [
        (b"+ ready\r\n", False, (FrameKind.CONTINUATION, None, "+", None)),
        (b"+\r\n", True, (FrameKind.CONTINUATION, None, "+", None)),
        (b"* OK IMAP4rev1 ready\r\n", True, (FrameKind.GREETING, None, "OK", None)),
        (b"* PREAUTH hi\r\n", True, (FrameKind.GREETING, None, "PREAUTH", None)),
        (b"* OK [ALERT] x\r\n", False, (FrameKind.STATUS, None, "OK", None)),
        (b"* BYE bye\r\n", False, (FrameKind.STATUS, None, "BYE", None)),
        (b"* 3 EXISTS\r\n", True, (FrameKind.DATA, None, "EXISTS", 3)),
        (b"* 12 fetch (FLAGS ())\r\n", False, (FrameKind.DATA, None, "FETCH", 12)),
        (b"* CAPABILITY IMAP4rev1\r\n", True, (FrameKind.DATA, None, "CAPABILITY", None)),
        (b"a1 OK done\r\n", False, (FrameKind.STATUS, b"a1", "OK", None)),
        (b"a1 bad nope\r\n", False, (FrameKind.STATUS, b"a1", "BAD", None)),
        (b"a1 BYE x\r\n", False, (FrameKind.DATA, b"a1", "BYE", None)),  # no completion
        (b"a1 5 OK x\r\n", False, (FrameKind.DATA, b"a1", "OK", None)),  # tagged, numbered
        (b"*  OK\r\n", False, (FrameKind.DATA, b"*", "", None)),  # no head: first word
        (b"garbage\r\n", False, (FrameKind.DATA, b"garbage", "", None)),
    ],
)
def test_response_head(line: bytes, greeting: bool, expected: tuple) -> None:
    assert _response(line, greeting) == expected


def test_response_number_of_ten_digits_is_read_and_more_is_no_number() -> None:
    assert _response(b"* 4294967295 EXISTS\r\n")[3] == 4294967295
    assert _response(b"* 12345678901 EXISTS\r\n") == (FrameKind.DATA, None, "12345678901", None)


# ----------------------------------------------------------------- credentials, words


@pytest.mark.parametrize(
    ("line", "named"),
    [
        (b"a1 UID LOGIN x\r\n", True),
        (b"a1 xLoginy\r\n", True),
        (b"a1 AUTHENTICATE]\r\n", True),
        (b"alice secret\r\n", False),
        (b"a1 LOG IN\r\n", False),
    ],
)
def test_names_credentials(line: bytes, named: bool) -> None:
    assert names_credentials(line, 0, len(line)) is named


def test_names_credentials_reads_only_its_slice() -> None:
    buf = b"a1 NOOP\r\nb1 LOGIN u p\r\n"
    assert not names_credentials(buf, 0, 9)
    assert names_credentials(buf, 9, len(buf))


def test_first_word() -> None:
    assert first_word(b"alice secret\r\n", 0, 14) == b"alice"
    assert first_word(b"dGVzdA==\r\n", 0, 10) == b"dGVzdA=="
    assert first_word(b" x\r\n", 0, 4) is None
    assert first_word(b"\r\n", 0, 2) is None


# --------------------------------------------------------------- literal announcements


def _announced(text: bytes) -> tuple[int, bool, bool] | None:
    return announced_literal(text, 0, len(text))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (b"a1 LOGIN {5}", (5, False, False)),
        (b"a1 LOGIN {5+}", (5, False, True)),
        (b"a1 APPEND INBOX ~{12}", (12, True, False)),
        (b"a1 APPEND INBOX ~{12+}", (12, True, True)),
        (b"* 1 FETCH (BODY[] {0}", (0, False, False)),
        (b"a1 X {007}", (7, False, False)),  # leading zeros are legal (1*DIGIT)
        (b"a1 X {" + b"0" * 60 + b"1}", (1, False, False)),
        (b"a1 X {" + b"9" * 20 + b"}", (10**20 - 1, False, False)),  # 20 digits: a size
        (b"a1 X {" + b"1" * 21 + b"}", (SIZE_OVERFLOW, False, False)),  # 21: overflow
        (b"a1 X {5} y", None),  # not at the end
        (b"a1 X {}", None),
        (b"a1 X {5+1}", None),
        (b"a1 X {-5}", None),
        (b"a1 X ~ {5}", (5, False, False)),  # "~" must touch the "{"
        (b"a1 X {{5}", (5, False, False)),  # matched from the last "{"
        (b"a1 NOOP", None),
        (b"{5}", (5, False, False)),
    ],
)
def test_announced_literal(text: bytes, expected: tuple | None) -> None:
    assert _announced(text) == expected


def test_announced_literal_looks_only_inside_the_line() -> None:
    buf = b"a1 X {5}\r\n~{9}\r\n"
    # the "~" before the second line's "{" lies outside that line: no literal8
    assert announced_literal(buf, 11, 14) == (9, False, False)
    assert announced_literal(buf, 10, 14) == (9, True, False)
    assert announced_literal(buf, 0, 8) == (5, False, False)


# ------------------------------------------------------------------ long-line cutting


def _cut_in(line: bytes, cut: int, part_start: int = 0) -> int:
    assert len(line) >= cut + TAIL_KEEP + 1, "safe_cut needs TAIL_KEEP + 1 bytes after a cut"
    return safe_cut(line, cut, 0, part_start)


def test_safe_cut_leaves_a_cut_that_splits_nothing() -> None:
    line = b"* SEARCH " + b"1 " * 100 + b"\r\n"
    assert _cut_in(line, 50) == 50
    # digits up to the line end but after no "{": no announcement either
    digits = b"* SEARCH 1 " + b"7" * 60 + b"\r\n"
    assert _cut_in(digits, 30) == 30


def test_safe_cut_moves_back_before_an_announcement_it_would_split() -> None:
    head = b"* 1 FETCH (BODY[] " + b"x" * 40
    line = head + b"{" + b"0" * 60 + b"5}\r\n"
    brace = len(head)
    for cut in (brace, brace + 1, brace + 20):
        assert _cut_in(line, cut) == brace, cut
    literal8 = head + b"~{" + b"0" * 60 + b"5}\r\n"
    assert _cut_in(literal8, brace + 10) == brace  # back before the "~"


def test_safe_cut_overflows_when_the_announcement_fills_the_part() -> None:
    line = b"{" + b"0" * 80 + b"5}\r\n"
    assert _cut_in(line, 30) == CUT_OVERFLOW
    # The same bytes after a part that began before them: a cut is possible.
    assert safe_cut(b"ab" + line, 32, 0, 0) == 2
    assert safe_cut(b"ab" + line, 32, 0, 2) == CUT_OVERFLOW
