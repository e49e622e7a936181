"""Peer-supplied strings in log lines: one line, no control characters, bounded length."""

from __future__ import annotations

import pytest

from imapproxy.logsafe import MAX_LOGGED, printable, safe


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("alice", "alice"),
        ("jörg", "jörg"),  # printable non-ASCII stays readable
        ("a\r\nb", "a\\r\\nb"),
        ("\x1b[31mred", "\\x1b[31mred"),
        ("nel\x85", "nel\\x85"),
        ("ls\u2028ps\u2029", "ls\\u2028ps\\u2029"),
        ("rtl\u202eevil", "rtl\\u202eevil"),
        ("tab\tdel\x7f", "tab\\x09del\\x7f"),
        (b"a\r\n\x1b\xff b", "a\\r\\n\\x1b\\xff b"),
        (OSError(5, "bad\r\nthing"), "[Errno 5] bad\\r\\nthing"),
    ],
)
def test_safe_escapes_what_could_forge_a_line(value: object, shown: str) -> None:
    assert safe(value) == shown


def test_spaces_escaped_for_key_value_fields() -> None:
    assert safe("bob reason=logout", spaces=False) == "bob\\x20reason=logout"
    assert " " not in safe("x" * 1000 + " y", spaces=False)


@pytest.mark.parametrize(
    ("value", "shown"),
    [("u" * 1_000_000, MAX_LOGGED), (b"u" * 1_000_000, MAX_LOGGED), ("\x1b" * 1_000_000, 50)],
)
def test_safe_cuts_long_values(value: str | bytes, shown: int) -> None:
    text = safe(value)
    assert len(text) < MAX_LOGGED + 20
    assert text.endswith(f"...(+{1_000_000 - shown})")


def test_printable_matches_the_transcript_convention() -> None:
    assert printable(b"\\Seen \r\n\x00\x80") == "\\Seen \\r\\n\\x00\\x80"


def test_escaping_counts_against_the_limit() -> None:
    text = safe("\x1b" * 100, limit=40)
    assert text == "\\x1b" * 10 + "...(+90)"
    assert safe(b"\xff" * 10, limit=8) == "\\xff\\xff...(+8)"
    assert safe("abc", limit=3) == "abc"
    assert safe("abcd", limit=3) == "abc...(+1)"
