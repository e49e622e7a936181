"""Tests of modified UTF-7 mailbox-name encoding (RFC 3501 section 5.1.3)."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from imapproxy.wire.mutf7 import MUTF7Error, decode_mutf7, encode_mutf7, is_valid_mutf7

# (text, canonical modified UTF-7)
KNOWN = [
    ("", b""),
    ("INBOX", b"INBOX"),
    ("~peter/mail/台北/日本語", b"~peter/mail/&U,BTFw-/&ZeVnLIqe-"),
    ("&", b"&-"),
    ("&&", b"&-&-"),
    ("Tom & Jerry", b"Tom &- Jerry"),
    ("a-b+c/d\\e~f", b"a-b+c/d\\e~f"),
    (" !\"#$%'()*+,-./09:;<=>?@AZ[\\]^_`az{|}~", b" !\"#$%'()*+,-./09:;<=>?@AZ[\\]^_`az{|}~"),
    # German
    ("Entwürfe", b"Entw&APw-rfe"),
    ("Gelöschte Elemente", b"Gel&APY-schte Elemente"),
    ("Straße", b"Stra&AN8-e"),
    ("Répertoire", b"R&AOk-pertoire"),
    # Greek
    ("Εισερχόμενα", b"&A5UDuQPDA7UDwQPHA8wDvAO1A70DsQ-"),
    # Cyrillic: the base64 contains '+', which is fine inside a shifted sequence
    ("предлог", b"&BD8EQAQ1BDQEOwQ+BDM-"),
    # Non-BMP: surrogate pairs
    ("😀", b"&2D3eAA-"),
    ("Mail 📧 box", b"Mail &2D3c5w- box"),
    ("🎉🎉", b"&2Dzfidg834k-"),
    # a non-ASCII run next to '&' is still one sequence on each side of '&-'
    ("é&é", b"&AOk-&-&AOk-"),
    ("éé", b"&AOkA6Q-"),
    # controls and DEL are shifted too, together with adjacent non-ASCII
    ("a\tb", b"a&AAk-b"),
    ("\x00", b"&AAA-"),
    ("\x7fé\r\n", b"&AH8A6QANAAo-"),
    # base64 '/' becomes ','
    ("\u03ff", b"&A,8-"),
]


@pytest.mark.parametrize(("text", "encoded"), KNOWN)
def test_encode_known(text: str, encoded: bytes) -> None:
    assert encode_mutf7(text) == encoded


@pytest.mark.parametrize(("text", "encoded"), KNOWN)
def test_decode_known(text: str, encoded: bytes) -> None:
    assert decode_mutf7(encoded) == text
    assert is_valid_mutf7(encoded)


def test_rfc3501_example() -> None:
    assert decode_mutf7(b"~peter/mail/&U,BTFw-/&ZeVnLIqe-") == "~peter/mail/台北/日本語"
    assert encode_mutf7("~peter/mail/台北/日本語") == b"~peter/mail/&U,BTFw-/&ZeVnLIqe-"


def test_decode_accepts_bytes_like() -> None:
    assert decode_mutf7(bytearray(b"R&AOk-pertoire")) == "Répertoire"  # type: ignore[arg-type]
    assert decode_mutf7(memoryview(b"&-")) == "&"  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["\ud800", "a\udc00", "\ud83d\ude00", "é\udfff"])
def test_encode_rejects_lone_surrogates(text: str) -> None:
    with pytest.raises(MUTF7Error, match="surrogate"):
        encode_mutf7(text)


# (bad input, regex expected in the message, offset)
INVALID = [
    # 8-bit bytes and control characters
    (b"Entw\xc3\xbcrfe", "8-bit byte", 4),
    (b"\xff", "8-bit byte", 0),
    (b"&AOk-\x80", "8-bit byte", 5),
    (b"a\tb", "control character", 1),
    (b"a\x00", "control character", 1),
    (b"a\r\n", "control character", 1),
    (b"a\x7f", "control character", 1),
    (b"&AO\nk-", "control character", 3),
    # unterminated shifted sequences
    (b"&", "unterminated", 0),
    (b"abc&", "unterminated", 3),
    (b"&AOk", "unterminated", 0),
    (b"x&AOkA6Q", "unterminated", 1),
    # illegal base64 characters ('/' and '=' are not modified base64)
    (b"&A,8/-", "illegal character", 4),
    (b"&AO/k-", "illegal character", 3),
    (b"&AOk=-", "illegal character", 4),
    (b"&AOk==-", "illegal character", 4),
    (b"&AOk.", "illegal character", 4),
    (b"&AOk&-", "illegal character", 4),
    (b"&AOk ", "illegal character", 4),
    (b"&.", "illegal character", 1),
    (b"&&-", "illegal character", 1),
    # shifted printable ASCII (must be written directly)
    (b"&AGE-", "printable US-ASCII", 0),
    (b"&ACA-", "printable US-ASCII", 0),
    (b"&AH4-", "printable US-ASCII", 0),
    (b"x&AOkAYQ-", "printable US-ASCII", 1),
    (b"&AGEA6Q-", "printable US-ASCII", 0),
    (b"&ACY-", "'&'", 0),
    # non-zero leftover bits
    (b"&AOl-", "leftover bits", 0),
    (b"&AOm-", "leftover bits", 0),
    (b"&AOkA6QD-", "leftover bits", 0),
    (b"&2D3eAB-", "leftover bits", 0),
    # wrong padding length (a run of 4n+1 characters cannot end on a byte boundary)
    (b"&AOkAA-", "base64 length", 0),
    (b"&AOkA6QA-", "odd number of bytes", 0),
    # odd number of UTF-16 bytes
    (b"&AOkA-", "odd number of bytes", 0),
    (b"&AOkA6QA=-", "illegal character", 8),
    (b"&AOkA6QDp2A-", "odd number of bytes", 0),
    # unpaired surrogates
    (b"&2D0-", "unpaired", 0),  # high surrogate at the end
    (b"&3gA-", "unpaired", 0),  # low surrogate alone
    (b"&3gDYPQ-", "unpaired", 0),  # low before high
    (b"&2D0A6Q-", "unpaired", 0),  # high followed by a non-surrogate
    (b"&2D3YPd4A-", "unpaired", 0),  # two highs then a low
    (b"&2D0-&3gA-", "unpaired", 0),  # a pair split over two sequences
    # adjacent shifted sequences must be one sequence
    (b"&AOk-&AOk-", "directly follows another", 5),
    (b"x&AOk-&AOk-y", "directly follows another", 6),
    (b"&AGE-&AGE-", "printable US-ASCII", 0),
    # empty shifted sequence other than '&-'
    (b"&A-", "encodes no data", 0),
    (b"ab&,-", "encodes no data", 2),
]


@pytest.mark.parametrize(("data", "message", "offset"), INVALID)
def test_decode_rejects(data: bytes, message: str, offset: int) -> None:
    with pytest.raises(MUTF7Error, match=message) as info:
        decode_mutf7(data)
    assert info.value.offset == offset
    assert str(info.value) == info.value.message
    assert isinstance(info.value, ValueError)
    assert not is_valid_mutf7(data)


def test_error_message_does_not_contain_input() -> None:
    secret = b"TopSecretProjectName" * 100
    for bad in (secret + b"\x80", secret + b"&AOk", secret + b"&AGE-", secret + b"&AOk-&AOk-"):
        with pytest.raises(MUTF7Error) as info:
            decode_mutf7(bad)
        assert "TopSecret" not in str(info.value)
        assert len(str(info.value)) < 200
        assert info.value.offset is not None
        assert info.value.offset >= len(secret)


def test_ampersand_escape_then_shifted_is_not_adjacent() -> None:
    # '&-' is the escape for '&', not a shifted sequence, so no adjacency problem.
    assert decode_mutf7(b"&AOk-&-&AOk-&-") == "é&é&"
    assert decode_mutf7(b"&-&AOk-") == "&é"


# --- property tests -------------------------------------------------------------------------

# Text without lone surrogates (st.text() never produces surrogate code points).
names = st.text()
non_ascii = st.text(
    alphabet=st.characters(min_codepoint=0x80, exclude_categories=["Cs"]), min_size=1
)


@given(names)
@example("~peter/mail/台北/日本語")
@example("&&&-&")
def test_roundtrip(name: str) -> None:
    assert decode_mutf7(encode_mutf7(name)) == name


@given(names)
def test_encoded_is_printable_ascii(name: str) -> None:
    encoded = encode_mutf7(name)
    assert all(0x20 <= b <= 0x7E for b in encoded)
    assert is_valid_mutf7(encoded)


@given(names)
def test_encode_is_identity_on_plain_ascii(name: str) -> None:
    plain = "".join(c for c in name if " " <= c <= "~" and c != "&")
    assert encode_mutf7(plain) == plain.encode("ascii")


@given(non_ascii)
def test_encode_matches_stdlib_utf7_for_non_ascii_runs(text: str) -> None:
    # A run of non-ASCII characters is one UTF-7 base64 block; modified UTF-7 only swaps
    # '+' -> '&' for the shift and '/' -> ',' in the alphabet.
    utf7 = text.encode("utf-7")
    assert utf7.startswith(b"+")
    assert utf7.endswith(b"-")
    expected = b"&" + utf7[1:-1].replace(b"/", b",") + b"-"
    assert encode_mutf7(text) == expected


@given(non_ascii)
def test_decode_matches_stdlib_utf7_for_non_ascii_runs(text: str) -> None:
    encoded = encode_mutf7(text)
    utf7 = b"+" + encoded[1:-1].replace(b",", b"/") + b"-"
    assert decode_mutf7(encoded) == utf7.decode("utf-7") == text


# Building blocks that make interesting, often valid and often invalid, inputs.
_tokens = st.one_of(
    st.sampled_from(
        [b"a", b"-", b"&", b"&-", b"+", b",", b"/", b"=", b"A", b"O", b"k", b"2D", b"3g", b" "]
    ),
    names.map(encode_mutf7),
    st.binary(max_size=3),
)
candidates = st.one_of(st.lists(_tokens, max_size=8).map(b"".join), st.binary())


@given(candidates)
@example(b"&AOk-&AOk-")
@example(b"&AOkA6Q-")
@example(b"&-&AOk-&-")
def test_canonical_form(data: bytes) -> None:
    # decode either succeeds on canonical input, or fails cleanly with MUTF7Error.
    try:
        text = decode_mutf7(data)
    except MUTF7Error:
        assert not is_valid_mutf7(data)
        return
    assert is_valid_mutf7(data)
    assert encode_mutf7(text) == data


@given(st.lists(names, min_size=2, max_size=5))
def test_concatenation_of_encodings_decodes_or_is_rejected_as_adjacent(parts: list[str]) -> None:
    # Joining encodings is only canonical when no shifted sequences end up adjacent.
    joined = b"".join(encode_mutf7(p) for p in parts)
    whole = "".join(parts)
    if is_valid_mutf7(joined):
        assert decode_mutf7(joined) == whole
        assert joined == encode_mutf7(whole)
    else:
        with pytest.raises(MUTF7Error, match="directly follows another"):
            decode_mutf7(joined)
