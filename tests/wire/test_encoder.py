"""Tests of the serialiser (``imapproxy.wire.encoder``): exact bytes, and refusal of any value
that could inject a line end, a NUL or an unbalanced token into the stream."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imapproxy.wire import (
    NIL,
    Atom,
    Command,
    ContinuationRequest,
    DataResponse,
    EncodeError,
    Literal,
    LiteralRef,
    LiteralSpec,
    Number,
    ParenList,
    Quoted,
    Response,
    ResponseCode,
    Secret,
    SequenceSet,
    StatusResponse,
    Token,
    encode_command,
    encode_response,
    encode_string,
    parse_command,
    parse_response,
)

SYNC = LiteralSpec(3, sync=True)


def plist(*items: Token) -> ParenList:
    return ParenList(tuple(items))


def lit(value: bytes, *, binary: bool = False) -> Literal:
    return Literal(value, LiteralSpec(len(value), sync=True, binary=binary))


# ------------------------------------------------------------------ encode_string


@pytest.mark.parametrize(
    ("value", "nonsync", "expected"),
    [
        pytest.param(b"", True, b'""', id="empty"),
        pytest.param(b"INBOX", True, b'"INBOX"', id="plain"),
        pytest.param(b'say "hi"', True, b'"say \\"hi\\""', id="dquote"),
        pytest.param(b"a\\b", True, b'"a\\\\b"', id="backslash"),
        pytest.param(b'\\"', True, b'"\\\\\\""', id="backslash-dquote"),
        pytest.param(b"(a) {5} [b] * %", True, b'"(a) {5} [b] * %"', id="specials-quoted"),
        pytest.param(b"a\r\nb", True, b"{4+}\r\na\r\nb", id="crlf-nonsync"),
        pytest.param(b"a\r\nb", False, b"{4}\r\na\r\nb", id="crlf-sync"),
        pytest.param(b"a\rb", True, b"{3+}\r\na\rb", id="bare-cr"),
        pytest.param(b"a\nb", False, b"{3}\r\na\nb", id="bare-lf"),
        pytest.param("Grüße".encode(), False, b"{7}\r\n" + "Grüße".encode(), id="8-bit"),
        pytest.param(b"\xff", True, b"{1+}\r\n\xff", id="non-utf8"),
        pytest.param(b"x" * 1024, True, b'"' + b"x" * 1024 + b'"', id="long-quoted"),
        pytest.param(b"x" * 1025, True, b"{1025+}\r\n" + b"x" * 1025, id="too-long-to-quote"),
    ],
)
def test_encode_string(value: bytes, nonsync: bool, expected: bytes) -> None:
    assert encode_string(value, nonsync=nonsync) == expected


@pytest.mark.parametrize("value", [b"\x00", b"a\x00b", b"a\r\n\x00"])
def test_encode_string_refuses_nul(value: bytes) -> None:
    with pytest.raises(EncodeError):
        encode_string(value, nonsync=True)


@pytest.mark.parametrize("value", [b"a\r\nb", "é".encode(), b"x" * 2000])
def test_encode_string_without_literal(value: bytes) -> None:
    with pytest.raises(EncodeError):
        encode_string(value, nonsync=True, allow_literal=False)


@given(st.binary(max_size=300).filter(lambda value: b"\x00" not in value))
def test_encode_string_reads_back(value: bytes) -> None:
    encoded = encode_string(value, nonsync=True)
    parsed = parse_command(b"a X " + encoded + b"\r\n")
    (token,) = parsed.args
    assert isinstance(token, (Quoted, Literal))
    assert token.value == value


# ------------------------------------------------------------------ commands

ENCODED_COMMANDS: list[object] = [
    pytest.param(Command(b"a1", "NOOP"), b"a1 NOOP\r\n", id="no-args"),
    pytest.param(Command(b"a1", "SELECT", (Atom("INBOX"),)), b"a1 SELECT INBOX\r\n", id="atom"),
    pytest.param(
        Command(b"a1", "SELECT", (Quoted(b"Sent Items"),)),
        b'a1 SELECT "Sent Items"\r\n',
        id="quoted",
    ),
    pytest.param(
        Command(b"a1", "LOGIN", (Quoted(b"joe"), Secret(Quoted(b'p"w\\')))),
        b'a1 LOGIN "joe" "p\\"w\\\\"\r\n',
        id="login-secret-escaped",
    ),
    pytest.param(
        Command(b"a1", "LOGIN", (Atom("joe"), Secret(Quoted(b"new\r\nline")))),
        b"a1 LOGIN joe {9+}\r\nnew\r\nline\r\n",
        id="login-secret-literal",
    ),
    pytest.param(
        Command(
            b"A654",
            "FETCH",
            (SequenceSet("2:4"), plist(Atom("FLAGS"), Atom("BODY[HEADER.FIELDS (DATE FROM)]"))),
        ),
        b"A654 FETCH 2:4 (FLAGS BODY[HEADER.FIELDS (DATE FROM)])\r\n",
        id="fetch-section",
    ),
    pytest.param(
        Command(
            b"a1",
            "UID FETCH",
            (SequenceSet("1:*,5"), Atom("BODY.PEEK[HEADER.FIELDS (FROM TO)]<0.100>")),
        ),
        b"a1 UID FETCH 1:*,5 BODY.PEEK[HEADER.FIELDS (FROM TO)]<0.100>\r\n",
        id="uid-fetch-partial",
    ),
    pytest.param(
        Command(b"a1", "SEARCH", (SequenceSet("$"), Number(0), Number(2**63 - 1), NIL)),
        b"a1 SEARCH $ 0 9223372036854775807 NIL\r\n",
        id="seqset-number-nil",
    ),
    pytest.param(
        Command(
            b"A003",
            "APPEND",
            (Atom("saved-messages"), plist(Atom("\\Seen")), lit(b"abc")),
        ),
        b"A003 APPEND saved-messages (\\Seen) {3+}\r\nabc\r\n",
        id="append-literal-is-nonsync",
    ),
    pytest.param(
        Command(b"A003", "APPEND", (Atom("INBOX"), lit(b"a\x00c", binary=True))),
        b"A003 APPEND INBOX ~{3+}\r\na\x00c\r\n",
        id="append-literal8",
    ),
    pytest.param(
        Command(b"A003", "APPEND", (Atom("INBOX"), lit(b""))),
        b"A003 APPEND INBOX {0+}\r\n\r\n",
        id="append-empty-literal",
    ),
    pytest.param(
        Command(b"A003", "APPEND", (Atom("INBOX"), lit(b"ab"), plist(), lit(b"cd"))),
        b"A003 APPEND INBOX {2+}\r\nab () {2+}\r\ncd\r\n",
        id="multiappend",
    ),
    pytest.param(
        Command(
            b"a", "SEARCH", (Atom("CHARSET"), Atom("UTF-8"), Atom("TEXT"), Quoted("ü".encode()))
        ),
        b"a SEARCH CHARSET UTF-8 TEXT {2+}\r\n\xc3\xbc\r\n",
        id="8-bit-quoted-becomes-literal",
    ),
    pytest.param(
        Command(b"a", "ID", (plist(Quoted(b"name"), NIL, plist(plist())),)),
        b'a ID ("name" NIL (()))\r\n',
        id="nested-lists",
    ),
    pytest.param(Command(b"a.1-x]", "X-CMD", ()), b"a.1-x] X-CMD\r\n", id="tag-with-resp-special"),
]


@pytest.mark.parametrize(("command", "expected"), ENCODED_COMMANDS)
def test_encode_command(command: Command, expected: bytes) -> None:
    assert encode_command(command) == expected


@pytest.mark.parametrize(("command", "expected"), ENCODED_COMMANDS)
def test_encode_command_without_literal_plus(command: Command, expected: bytes) -> None:
    """``literal_plus=False``: fine without literals, EncodeError with any literal."""
    if b"+}\r\n" in expected:
        with pytest.raises(EncodeError):
            encode_command(command, literal_plus=False)
    else:
        assert encode_command(command, literal_plus=False) == expected


def test_literal_plus_false_does_not_trip_on_quoted_text() -> None:
    """Only real literals count, not a quoted string that happens to contain ``{1+}``."""
    command = Command(b"a", "SEARCH", (Atom("TEXT"), Quoted(b"{1+}")))
    assert encode_command(command, literal_plus=False) == b'a SEARCH TEXT "{1+}"\r\n'


# --- what may never be encoded

BAD_ATOMS = [
    "",
    "a b",
    "a\r\nb",
    "a\rb",
    "a\nb",
    "\r\n",
    'a"b',
    "a{5}",
    "{5}",
    "a(b",
    "a)b",
    "a\x00b",
    "a\x01b",
    "a\x7fb",
    "BODY[HEADER",
    "BODY[a\r\nb]",
    "BODY[[x]]",
    'BODY["x"]',
    "BODY[{3}]",
    "x\tz",
]


@pytest.mark.parametrize("value", BAD_ATOMS)
def test_invalid_atom_raises(value: str) -> None:
    with pytest.raises(EncodeError):
        encode_command(Command(b"a", "X", (Atom(value),)))
    with pytest.raises(EncodeError):
        encode_response(DataResponse("X", None, (Atom(value),)))


@pytest.mark.parametrize(
    "value", ["INBOX", "\\Seen", "$Junk", "BODY[HEADER.FIELDS (A B)]<0.10>", "%", "a*", "~/Mail/"]
)
def test_valid_atom_encodes_verbatim(value: str) -> None:
    assert encode_command(Command(b"a", "X", (Atom(value),))) == b"a X " + value.encode() + b"\r\n"


def test_atom_with_unencodable_text_raises_encode_error() -> None:
    """An Atom holding text with no byte form (a lone surrogate) is refused with
    EncodeError, not a UnicodeEncodeError."""
    with pytest.raises(EncodeError):
        encode_command(Command(b"a", "X", (Atom("\ud800"),)))


def test_atom_from_non_utf8_bytes_is_re_encoded_to_the_same_bytes() -> None:
    """The parser keeps 8-bit atom bytes as surrogate escapes; encoding gives them back."""
    assert encode_command(Command(b"a", "X", (Atom("\udcff"),))) == b"a X \xff\r\n"


BAD_TAGS = [
    b"",
    b"a b",
    b"a\r\n",
    b"\r\nb",
    b"a+",
    b"+",
    b"*",
    b"a*",
    b'a"',
    b"a{",
    b"a(",
    b"a)",
    b"a%",
    b"a\\",
    b"a\x00",
    b"\xff",
    b"a\x7f",
]


@pytest.mark.parametrize("tag", BAD_TAGS)
def test_invalid_tag_raises(tag: bytes) -> None:
    with pytest.raises(EncodeError):
        encode_command(Command(tag, "NOOP"))
    with pytest.raises(EncodeError):
        encode_response(StatusResponse(tag, "OK", None, b"done"))


@pytest.mark.parametrize(
    "name",
    [
        "",
        "NO OP\r\n",
        "NOOP\r\n",
        "A\rB",
        "X(",
        "X{1}",
        'X"',
        "UID FETCH X",
        " NOOP",
        "NOOP ",
        "UID  FETCH",
        "UID\r\nFETCH",
    ],
)
def test_invalid_command_name_raises(name: str) -> None:
    with pytest.raises(EncodeError):
        encode_command(Command(b"a", name))


def test_two_word_name_must_be_a_uid_command() -> None:
    """``name`` carries a ``UID`` prefix and nothing else: any other two-word name would be
    read back as a different command name plus an argument."""
    encode_command(Command(b"a", "UID FETCH", (Number(1), Atom("FLAGS"))))
    with pytest.raises(EncodeError):
        encode_command(Command(b"a", "LOGOUT NOW"))


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(Number(-1), id="negative"),
        pytest.param(Number(2**63), id="too-large"),
        pytest.param(SequenceSet("1 2"), id="seqset-space"),
        pytest.param(SequenceSet("1\r\n"), id="seqset-crlf"),
        pytest.param(SequenceSet("a"), id="seqset-letter"),
        pytest.param(SequenceSet(""), id="seqset-empty"),
        pytest.param(Quoted(b"\x00"), id="nul-in-quoted"),
        pytest.param(Literal(b"a\x00", LiteralSpec(2, True)), id="nul-in-literal"),
        pytest.param(Literal(b"a\x00", LiteralSpec(2, False)), id="nul-in-server-literal"),
        pytest.param(LiteralRef(LiteralSpec(10, True)), id="literal-ref"),
        pytest.param(plist(Atom("ok"), LiteralRef(LiteralSpec(10, True))), id="nested-ref"),
        pytest.param(plist(Atom("a b")), id="nested-bad-atom"),
        pytest.param(Secret(Atom("a\r\nb")), id="secret-bad-atom"),
        pytest.param("INBOX", id="plain-str"),
        pytest.param(b"INBOX", id="plain-bytes"),
        pytest.param(None, id="none"),
    ],
)
def test_invalid_token_raises(token: object) -> None:
    with pytest.raises(EncodeError):
        encode_command(Command(b"a", "X", (token,)))  # type: ignore[arg-type]
    with pytest.raises(EncodeError):
        encode_response(DataResponse("X", 1, (token,)))  # type: ignore[arg-type]


def test_truncated_command_raises() -> None:
    head = parse_command(b"a APPEND INBOX {500000}\r\n")
    assert head.truncated
    with pytest.raises(EncodeError):
        encode_command(head)
    with pytest.raises(EncodeError):
        encode_command(Command(b"a", "APPEND", (Atom("INBOX"),), truncated=True))


def test_truncated_response_raises() -> None:
    head = parse_response(b"* 1 FETCH (BODY[] {500000}\r\n")
    assert isinstance(head, DataResponse)
    assert head.truncated
    with pytest.raises(EncodeError):
        encode_response(head)


# ------------------------------------------------------------------ responses

ENCODED_RESPONSES: list[object] = [
    pytest.param(
        StatusResponse(None, "OK", None, b"IMAP4rev1 Service Ready"),
        b"* OK IMAP4rev1 Service Ready\r\n",
        id="untagged-ok",
    ),
    pytest.param(
        StatusResponse(b"A142", "OK", ResponseCode("READ-WRITE"), b"SELECT completed"),
        b"A142 OK [READ-WRITE] SELECT completed\r\n",
        id="tagged-code",
    ),
    pytest.param(
        StatusResponse(None, "OK", ResponseCode("PERMANENTFLAGS", b"(\\Seen \\*)"), b"Limited"),
        b"* OK [PERMANENTFLAGS (\\Seen \\*)] Limited\r\n",
        id="code-args",
    ),
    pytest.param(
        StatusResponse(b"A3", "OK", ResponseCode("APPENDUID", b"38505 3955"), b"done"),
        b"A3 OK [APPENDUID 38505 3955] done\r\n",
        id="appenduid",
    ),
    pytest.param(
        StatusResponse(None, "OK", ResponseCode("UIDVALIDITY", b"1"), b""),
        b"* OK [UIDVALIDITY 1]\r\n",
        id="code-without-text",
    ),
    pytest.param(
        StatusResponse(b"a", "NO", None, b'text with {5} and "quotes" ] ['),
        b'a NO text with {5} and "quotes" ] [\r\n',
        id="text-specials",
    ),
    pytest.param(StatusResponse(b"a", "OK", None, b""), b"a OK \r\n", id="empty-text"),
    pytest.param(
        StatusResponse(None, "BYE", None, b"Autologout"), b"* BYE Autologout\r\n", id="bye"
    ),
    pytest.param(
        StatusResponse(None, "PREAUTH", ResponseCode("CAPABILITY", b"IMAP4rev1"), b"hi"),
        b"* PREAUTH [CAPABILITY IMAP4rev1] hi\r\n",
        id="preauth",
    ),
    pytest.param(DataResponse("EXISTS", 23), b"* 23 EXISTS\r\n", id="exists"),
    pytest.param(DataResponse("SEARCH"), b"* SEARCH\r\n", id="search-empty"),
    pytest.param(
        DataResponse("LIST", None, (plist(Atom("\\Noselect")), Quoted(b"/"), Quoted(b"a b"))),
        b'* LIST (\\Noselect) "/" "a b"\r\n',
        id="list",
    ),
    pytest.param(
        DataResponse("LIST", None, (plist(), Quoted(b"/"), Quoted("Entwürfe".encode()))),
        b'* LIST () "/" {9}\r\n' + "Entwürfe".encode() + b"\r\n",
        id="list-8-bit-name-becomes-sync-literal",
    ),
    pytest.param(
        DataResponse(
            "FETCH",
            12,
            (plist(Atom("BODY[HEADER]"), Literal(b"a: b\r\n\r\n", LiteralSpec(8, False))),),
        ),
        b"* 12 FETCH (BODY[HEADER] {8}\r\na: b\r\n\r\n)\r\n",
        id="fetch-literal",
    ),
    pytest.param(
        DataResponse(
            "FETCH",
            1,
            (plist(Atom("BINARY[]"), Literal(b"\x00\x01", LiteralSpec(2, False, binary=True))),),
        ),
        b"* 1 FETCH (BINARY[] ~{2}\r\n\x00\x01)\r\n",
        id="fetch-literal8",
    ),
    pytest.param(ContinuationRequest(b"Ready"), b"+ Ready\r\n", id="continuation"),
    pytest.param(ContinuationRequest(b""), b"+ \r\n", id="continuation-empty"),
    pytest.param(ContinuationRequest(b"dGVzdA=="), b"+ dGVzdA==\r\n", id="continuation-base64"),
]


@pytest.mark.parametrize(("response", "expected"), ENCODED_RESPONSES)
def test_encode_response(response: Response, expected: bytes) -> None:
    assert encode_response(response) == expected


@pytest.mark.parametrize(("response", "expected"), ENCODED_RESPONSES)
def test_encoded_response_parses_back(response: Response, expected: bytes) -> None:
    del expected
    reparsed = parse_response(encode_response(response))
    assert type(reparsed) is type(response)


BAD_TEXT = [b"a\r\nb", b"\r\n", b"a\rb", b"a\nb", b"a\x00b", b"x\r\n* OK [ALERT] hi"]


@pytest.mark.parametrize("text", BAD_TEXT)
def test_response_text_with_line_end_or_nul_raises(text: bytes) -> None:
    with pytest.raises(EncodeError):
        encode_response(StatusResponse(b"a", "OK", None, text))
    with pytest.raises(EncodeError):
        encode_response(StatusResponse(None, "NO", ResponseCode("ALERT"), text))
    with pytest.raises(EncodeError):
        encode_response(ContinuationRequest(text))


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("", b""),
        ("ALERT X", b""),
        ("AL]ERT", b""),
        ("AL\r\nERT", b""),
        ('A"B', b""),
        ("A{1}", b""),
        ("ALERT", b"a]b"),
        ("ALERT", b"]"),
        ("ALERT", b"a\r\nb"),
        ("ALERT", b"a\nb"),
        ("ALERT", b"a\x00b"),
    ],
)
def test_invalid_response_code_raises(name: str, args: bytes) -> None:
    with pytest.raises(EncodeError):
        encode_response(StatusResponse(b"a", "OK", ResponseCode(name, args), b"text"))


def test_text_cannot_smuggle_a_response_code() -> None:
    """Text that starts with ``[`` and has no code of its own would be read back as a
    response code (``[ALERT]`` shown to the user, ``[CAPABILITY ...]`` changing the proxy's
    view of the server): the encoder must refuse it rather than change its meaning."""
    response = StatusResponse(b"a", "OK", None, b"[ALERT] you have been hacked")
    try:
        encoded = encode_response(response)
    except EncodeError:
        return
    assert parse_response(encoded) == response


@pytest.mark.parametrize(
    "response",
    [
        pytest.param(StatusResponse(b"a", "BYE", None, b"x"), id="tagged-bye"),
        pytest.param(StatusResponse(b"a", "PREAUTH", None, b"x"), id="tagged-preauth"),
        pytest.param(StatusResponse(None, "MAYBE", None, b"x"), id="not-a-status"),
        pytest.param(StatusResponse(None, "OK\r\n", None, b"x"), id="status-crlf"),
        pytest.param(DataResponse("FETCH\r\n", 1), id="data-name-crlf"),
        pytest.param(DataResponse("A B", None), id="data-name-space"),
        pytest.param(DataResponse("", None), id="data-name-empty"),
        pytest.param(DataResponse("X", None, (Atom("x"),), truncated=True), id="data-truncated"),
        pytest.param(Command(b"a", "NOOP"), id="command"),
    ],
)
def test_invalid_response_raises(response: object) -> None:
    with pytest.raises(EncodeError):
        encode_response(response)  # type: ignore[arg-type]


# ------------------------------------------------------------------ no injection, ever

_LINE_OUTSIDE_LITERALS = re.compile(rb"\{\d+\+?\}\r\n")


def _assert_single_line(encoded: bytes) -> None:
    """No CR, LF or NUL anywhere except the final CRLF (for encodings without literals)."""
    assert encoded.endswith(b"\r\n")
    body = encoded[:-2]
    assert b"\r" not in body
    assert b"\n" not in body
    assert b"\x00" not in body


_ANY_TEXT = st.text(
    alphabet=st.sampled_from(list('aZ09 \r\n\x00\t\x7f()[]{}"\\*%+]~<>.-é')), max_size=12
)


@given(value=_ANY_TEXT)
def test_atom_never_injects(value: str) -> None:
    try:
        encoded = encode_command(Command(b"a", "X", (Atom(value),)))
    except EncodeError:
        return
    _assert_single_line(encoded)
    assert b" " not in encoded[len(b"a X ") : -2] or "[" in value


@given(tag=_ANY_TEXT.map(str.encode), name=_ANY_TEXT)
def test_tag_and_name_never_inject(tag: bytes, name: str) -> None:
    try:
        encoded = encode_command(Command(tag, name))
    except EncodeError:
        return
    _assert_single_line(encoded)
    parsed = parse_command(encoded)
    assert parsed.tag == tag


@given(text=_ANY_TEXT.map(str.encode), code_name=_ANY_TEXT, code_args=_ANY_TEXT.map(str.encode))
def test_status_text_and_code_never_inject(text: bytes, code_name: str, code_args: bytes) -> None:
    try:
        encoded = encode_response(
            StatusResponse(b"a", "NO", ResponseCode(code_name, code_args), text)
        )
    except EncodeError:
        return
    _assert_single_line(encoded)
    parsed = parse_response(encoded)
    assert isinstance(parsed, StatusResponse)
    assert parsed.tag == b"a"
    assert parsed.status == "NO"


@given(text=_ANY_TEXT.map(str.encode))
def test_continuation_text_never_injects(text: bytes) -> None:
    try:
        encoded = encode_response(ContinuationRequest(text))
    except EncodeError:
        return
    _assert_single_line(encoded)
    assert parse_response(encoded) == ContinuationRequest(text)


@given(value=st.binary(max_size=40))
def test_string_values_never_inject(value: bytes) -> None:
    """Whatever bytes a filter puts into a Quoted, the command stays one command."""
    try:
        encoded = encode_command(Command(b"a", "SELECT", (Quoted(value),)))
    except EncodeError:
        assert b"\x00" in value
        return
    parsed = parse_command(encoded)
    assert parsed.name == "SELECT"
    (token,) = parsed.args
    assert isinstance(token, (Quoted, Literal))
    assert token.value == value
