"""Table-driven tests of the IMAP parser (``imapproxy.wire.parser``)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imapproxy.wire import (
    NIL,
    Atom,
    AuthData,
    Command,
    ContinuationRequest,
    DataResponse,
    Frame,
    FrameKind,
    IdleDone,
    Limits,
    Literal,
    LiteralRef,
    LiteralSpec,
    Message,
    Number,
    ParenList,
    ParseError,
    ProtocolError,
    Quoted,
    ResponseCode,
    Secret,
    SequenceSet,
    Side,
    StatusResponse,
    Token,
    capabilities_of,
    parse_command,
    parse_frame,
    parse_response,
    string_value,
)

# ------------------------------------------------------------------ helpers


def q(text: str | bytes) -> Quoted:
    return Quoted(text.encode() if isinstance(text, str) else text)


def plist(*items: Token) -> ParenList:
    return ParenList(tuple(items))


def client_literal(value: bytes, *, plus: bool = False, binary: bool = False) -> Literal:
    """A literal as the client announces it (``{n}`` is synchronising, ``{n+}`` is not)."""
    return Literal(
        value, LiteralSpec(len(value), sync=not plus, binary=binary, nonsync_marker=plus)
    )


def server_literal(value: bytes, *, binary: bool = False) -> Literal:
    """A literal in a server response (never synchronising)."""
    return Literal(value, LiteralSpec(len(value), sync=False, binary=binary))


def cmd(tag: str, name: str, *args: Token, truncated: bool = False) -> Command:
    return Command(tag.encode(), name, tuple(args), truncated)


def data(name: str, *args: Token, number: int | None = None) -> DataResponse:
    return DataResponse(name, number, tuple(args))


def status(
    tag: str | None, name: str, text: str, code: str | None = None, code_args: bytes = b""
) -> StatusResponse:
    rcode = None if code is None else ResponseCode(code, code_args)
    return StatusResponse(None if tag is None else tag.encode(), name, rcode, text.encode())


ENVELOPE = (
    b'"Wed, 17 Jul 1996 02:23:25 -0700 (PDT)" "IMAP4rev1 WG mtg summary and minutes" '
    b'(("Terry Gray" NIL "gray" "cac.washington.edu")) '
    b'(("Terry Gray" NIL "gray" "cac.washington.edu")) '
    b'(("Terry Gray" NIL "gray" "cac.washington.edu")) '
    b'((NIL NIL "imap" "cac.washington.edu")) '
    b'((NIL NIL "minutes" "CNRI.Reston.VA.US") ("John Klensin" NIL "KLENSIN" "MIT.EDU")) '
    b'NIL NIL "<B27397-0100000@cac.washington.edu>"'
)


def terry() -> ParenList:
    return plist(plist(q("Terry Gray"), NIL, q("gray"), q("cac.washington.edu")))


ENVELOPE_TOKENS = plist(
    q("Wed, 17 Jul 1996 02:23:25 -0700 (PDT)"),
    q("IMAP4rev1 WG mtg summary and minutes"),
    terry(),
    terry(),
    terry(),
    plist(plist(NIL, NIL, q("imap"), q("cac.washington.edu"))),
    plist(
        plist(NIL, NIL, q("minutes"), q("CNRI.Reston.VA.US")),
        plist(q("John Klensin"), NIL, q("KLENSIN"), q("MIT.EDU")),
    ),
    NIL,
    NIL,
    q("<B27397-0100000@cac.washington.edu>"),
)

# ------------------------------------------------------------------ commands

COMMANDS: list[object] = [
    # --- any state
    pytest.param(b"abcd CAPABILITY\r\n", cmd("abcd", "CAPABILITY"), id="capability"),
    pytest.param(b"a002 NOOP\r\n", cmd("a002", "NOOP"), id="noop"),
    pytest.param(b"A023 LOGOUT\r\n", cmd("A023", "LOGOUT"), id="logout"),
    pytest.param(b"a1 noop\n", cmd("a1", "NOOP"), id="bare-lf-line-end"),
    # --- not authenticated
    pytest.param(b"a002 STARTTLS\r\n", cmd("a002", "STARTTLS"), id="starttls"),
    pytest.param(
        b"A001 AUTHENTICATE GSSAPI\r\n", cmd("A001", "AUTHENTICATE", Atom("GSSAPI")), id="auth"
    ),
    pytest.param(
        b"A01 AUTHENTICATE PLAIN dGVzdAB0ZXN0AHRlc3Q=\r\n",
        cmd("A01", "AUTHENTICATE", Atom("PLAIN"), Secret(Atom("dGVzdAB0ZXN0AHRlc3Q="))),
        id="authenticate-sasl-ir",
    ),
    pytest.param(
        b"A01 AUTHENTICATE EXTERNAL =\r\n",
        cmd("A01", "AUTHENTICATE", Atom("EXTERNAL"), Secret(Atom("="))),
        id="authenticate-empty-ir",
    ),
    pytest.param(
        b"a001 LOGIN SMITH SESAME\r\n",
        cmd("a001", "LOGIN", Atom("SMITH"), Secret(Atom("SESAME"))),
        id="login-atoms",
    ),
    pytest.param(
        b'b LOGIN "fred" "f\\"o\\\\o"\r\n',
        cmd("b", "LOGIN", q("fred"), Secret(q(b'f"o\\o'))),
        id="login-quoted-escapes",
    ),
    pytest.param(
        b"A001 LOGIN {11}\r\nFRED FOOBAR {7}\r\nfat man\r\n",
        cmd(
            "A001",
            "LOGIN",
            client_literal(b"FRED FOOBAR"),
            Secret(client_literal(b"fat man")),
        ),
        id="login-sync-literals",
    ),
    pytest.param(
        b"A001 LOGIN {11+}\r\nFRED FOOBAR {7+}\r\nfat man\r\n",
        cmd(
            "A001",
            "LOGIN",
            client_literal(b"FRED FOOBAR", plus=True),
            Secret(client_literal(b"fat man", plus=True)),
        ),
        id="login-literal-plus",
    ),
    pytest.param(
        b"a1 ENABLE CONDSTORE UTF8=ACCEPT\r\n",
        cmd("a1", "ENABLE", Atom("CONDSTORE"), Atom("UTF8=ACCEPT")),
        id="enable",
    ),
    # --- authenticated
    pytest.param(b"A142 SELECT INBOX\r\n", cmd("A142", "SELECT", Atom("INBOX")), id="select"),
    pytest.param(
        b"a002 select inbox\r\n", cmd("a002", "SELECT", Atom("inbox")), id="select-lower-case"
    ),
    pytest.param(
        b"A1 SELECT INBOX (CONDSTORE)\r\n",
        cmd("A1", "SELECT", Atom("INBOX"), plist(Atom("CONDSTORE"))),
        id="select-params",
    ),
    pytest.param(
        b'k1 select "/archive/projects/experiment-iv"\r\n',
        cmd("k1", "SELECT", q("/archive/projects/experiment-iv")),
        id="select-quoted",
    ),
    pytest.param(
        b"A932 EXAMINE blurdybloop\r\n", cmd("A932", "EXAMINE", Atom("blurdybloop")), id="examine"
    ),
    pytest.param(
        b"A003 CREATE owatagusiam/\r\n", cmd("A003", "CREATE", Atom("owatagusiam/")), id="create"
    ),
    pytest.param(
        b'A002 CREATE "INBOX.Sent Mail"\r\n',
        cmd("A002", "CREATE", q("INBOX.Sent Mail")),
        id="create-quoted",
    ),
    pytest.param(b"A685 DELETE foo/bar\r\n", cmd("A685", "DELETE", Atom("foo/bar")), id="delete"),
    pytest.param(
        b"A683 RENAME blurdybloop sarasoop\r\n",
        cmd("A683", "RENAME", Atom("blurdybloop"), Atom("sarasoop")),
        id="rename",
    ),
    pytest.param(
        b"A002 SUBSCRIBE #news.comp.mail.mime\r\n",
        cmd("A002", "SUBSCRIBE", Atom("#news.comp.mail.mime")),
        id="subscribe",
    ),
    pytest.param(
        b"A002 UNSUBSCRIBE #news.comp.mail.mime\r\n",
        cmd("A002", "UNSUBSCRIBE", Atom("#news.comp.mail.mime")),
        id="unsubscribe",
    ),
    pytest.param(
        b'A682 LIST "" *\r\n',
        # a lone "*" lexes like a sequence set; its string value is still "*"
        cmd("A682", "LIST", q(""), SequenceSet("*")),
        id="list-star",
    ),
    pytest.param(b'A86 LIST "" %\r\n', cmd("A86", "LIST", q(""), Atom("%")), id="list-percent"),
    pytest.param(
        b"A202 LIST ~/Mail/ %\r\n",
        cmd("A202", "LIST", Atom("~/Mail/"), Atom("%")),
        id="list-tilde",
    ),
    pytest.param(
        b'A02 LIST (SUBSCRIBED RECURSIVEMATCH) "" ("INBOX" Drafts) '
        b"RETURN (CHILDREN STATUS (MESSAGES UNSEEN))\r\n",
        cmd(
            "A02",
            "LIST",
            plist(Atom("SUBSCRIBED"), Atom("RECURSIVEMATCH")),
            q(""),
            plist(q("INBOX"), Atom("Drafts")),
            Atom("RETURN"),
            plist(Atom("CHILDREN"), Atom("STATUS"), plist(Atom("MESSAGES"), Atom("UNSEEN"))),
        ),
        id="list-extended",
    ),
    pytest.param(
        b'A03 LIST () "" "%" RETURN (CHILDREN)\r\n',
        cmd("A03", "LIST", plist(), q(""), q("%"), Atom("RETURN"), plist(Atom("CHILDREN"))),
        id="list-empty-selection",
    ),
    pytest.param(
        b'A002 LSUB "#news." "comp.mail.*"\r\n',
        cmd("A002", "LSUB", q("#news."), q("comp.mail.*")),
        id="lsub",
    ),
    pytest.param(b"A001 NAMESPACE\r\n", cmd("A001", "NAMESPACE"), id="namespace"),
    pytest.param(
        b"A042 STATUS blurdybloop (UIDNEXT MESSAGES)\r\n",
        cmd("A042", "STATUS", Atom("blurdybloop"), plist(Atom("UIDNEXT"), Atom("MESSAGES"))),
        id="status",
    ),
    pytest.param(
        b"A003 APPEND saved-messages (\\Seen) {5}\r\nhello\r\n",
        cmd(
            "A003",
            "APPEND",
            Atom("saved-messages"),
            plist(Atom("\\Seen")),
            client_literal(b"hello"),
        ),
        id="append-flags",
    ),
    pytest.param(
        b'A003 APPEND INBOX (\\Seen $Forwarded) "17-Jul-1996 02:44:25 -0700" {5+}\r\nhello\r\n',
        cmd(
            "A003",
            "APPEND",
            Atom("INBOX"),
            plist(Atom("\\Seen"), Atom("$Forwarded")),
            q("17-Jul-1996 02:44:25 -0700"),
            client_literal(b"hello", plus=True),
        ),
        id="append-flags-date-time",
    ),
    pytest.param(
        b"A1 APPEND INBOX {0}\r\n\r\n",
        cmd("A1", "APPEND", Atom("INBOX"), client_literal(b"")),
        id="append-zero-length-literal",
    ),
    pytest.param(
        b"A1 APPEND INBOX ~{3}\r\na\x00c\r\n",
        cmd("A1", "APPEND", Atom("INBOX"), client_literal(b"a\x00c", binary=True)),
        id="append-literal8-with-nul",
    ),
    pytest.param(
        b"A1 APPEND INBOX ~{3+}\r\nabc\r\n",
        cmd("A1", "APPEND", Atom("INBOX"), client_literal(b"abc", plus=True, binary=True)),
        id="append-literal8-plus",
    ),
    pytest.param(
        b"A1 APPEND INBOX UTF8 (~{3+}\r\nabc)\r\n",
        cmd(
            "A1",
            "APPEND",
            Atom("INBOX"),
            Atom("UTF8"),
            plist(client_literal(b"abc", plus=True, binary=True)),
        ),
        id="append-utf8-literal8-in-list",
    ),
    pytest.param(
        b"A1 APPEND INBOX {3+}\r\nabc (\\Seen) {2+}\r\nxy\r\n",
        cmd(
            "A1",
            "APPEND",
            Atom("INBOX"),
            client_literal(b"abc", plus=True),
            plist(Atom("\\Seen")),
            client_literal(b"xy", plus=True),
        ),
        id="multiappend",
    ),
    pytest.param(
        b"A1 APPEND INBOX {12}\r\nline1\r\nline2\r\n",
        cmd("A1", "APPEND", Atom("INBOX"), client_literal(b"line1\r\nline2")),
        id="append-literal-with-crlf-inside",
    ),
    pytest.param(b"A002 IDLE\r\n", cmd("A002", "IDLE"), id="idle"),
    # --- selected
    pytest.param(b"A341 CLOSE\r\n", cmd("A341", "CLOSE"), id="close"),
    pytest.param(b"A342 UNSELECT\r\n", cmd("A342", "UNSELECT"), id="unselect"),
    pytest.param(b"A202 EXPUNGE\r\n", cmd("A202", "EXPUNGE"), id="expunge"),
    pytest.param(
        b"A003 UID EXPUNGE 3000:3002\r\n",
        cmd("A003", "UID EXPUNGE", SequenceSet("3000:3002")),
        id="uid-expunge",
    ),
    pytest.param(
        b'A282 SEARCH FLAGGED SINCE 1-Feb-1994 NOT FROM "Smith"\r\n',
        cmd(
            "A282",
            "SEARCH",
            Atom("FLAGGED"),
            Atom("SINCE"),
            Atom("1-Feb-1994"),
            Atom("NOT"),
            Atom("FROM"),
            q("Smith"),
        ),
        id="search",
    ),
    pytest.param(
        b"A284 SEARCH CHARSET UTF-8 TEXT {6}\r\nXXXXXX\r\n",
        cmd(
            "A284",
            "SEARCH",
            Atom("CHARSET"),
            Atom("UTF-8"),
            Atom("TEXT"),
            client_literal(b"XXXXXX"),
        ),
        id="search-charset-literal",
    ),
    pytest.param(
        b"A285 SEARCH CHARSET UTF-8 TEXT {12}\r\n" + "отпуск".encode() + b"\r\n",
        cmd(
            "A285",
            "SEARCH",
            Atom("CHARSET"),
            Atom("UTF-8"),
            Atom("TEXT"),
            client_literal("отпуск".encode()),
        ),
        id="search-utf8-literal",
    ),
    pytest.param(
        b"A285 UID SEARCH RETURN (MIN MAX) 1:5000\r\n",
        cmd(
            "A285",
            "UID SEARCH",
            Atom("RETURN"),
            plist(Atom("MIN"), Atom("MAX")),
            SequenceSet("1:5000"),
        ),
        id="uid-search-return",
    ),
    pytest.param(
        b"P283 SEARCH CHARSET UTF-8 (OR $ 1,3000:3021) TEXT {4+}\r\nabcd\r\n",
        cmd(
            "P283",
            "SEARCH",
            Atom("CHARSET"),
            Atom("UTF-8"),
            plist(Atom("OR"), SequenceSet("$"), SequenceSet("1,3000:3021")),
            Atom("TEXT"),
            client_literal(b"abcd", plus=True),
        ),
        id="search-saved-result",
    ),
    pytest.param(
        b"A283 FETCH $ (UID INTERNALDATE FLAGS BODY.PEEK[HEADER])\r\n",
        cmd(
            "A283",
            "FETCH",
            SequenceSet("$"),
            plist(Atom("UID"), Atom("INTERNALDATE"), Atom("FLAGS"), Atom("BODY.PEEK[HEADER]")),
        ),
        id="fetch-dollar",
    ),
    pytest.param(
        b"a003 fetch 12 full\r\n", cmd("a003", "FETCH", Number(12), Atom("full")), id="fetch-macro"
    ),
    pytest.param(
        b"A654 FETCH 2:4 (FLAGS BODY[HEADER.FIELDS (DATE FROM)])\r\n",
        cmd(
            "A654",
            "FETCH",
            SequenceSet("2:4"),
            plist(Atom("FLAGS"), Atom("BODY[HEADER.FIELDS (DATE FROM)]")),
        ),
        id="fetch-header-fields",
    ),
    pytest.param(
        b"a1 FETCH 1:*,5 BODY.PEEK[HEADER.FIELDS (FROM TO)]<0.100>\r\n",
        cmd(
            "a1",
            "FETCH",
            SequenceSet("1:*,5"),
            Atom("BODY.PEEK[HEADER.FIELDS (FROM TO)]<0.100>"),
        ),
        id="fetch-section-partial",
    ),
    pytest.param(
        b"a1 FETCH 1 (BODY[] BINARY.PEEK[1.2]<0.100> BINARY.SIZE[1] BODY[1.MIME])\r\n",
        cmd(
            "a1",
            "FETCH",
            Number(1),
            plist(
                Atom("BODY[]"),
                Atom("BINARY.PEEK[1.2]<0.100>"),
                Atom("BINARY.SIZE[1]"),
                Atom("BODY[1.MIME]"),
            ),
        ),
        id="fetch-binary",
    ),
    pytest.param(
        b"a1 uid fetch 1:* (FLAGS) (CHANGEDSINCE 12345 VANISHED)\r\n",
        cmd(
            "a1",
            "UID FETCH",
            SequenceSet("1:*"),
            plist(Atom("FLAGS")),
            plist(Atom("CHANGEDSINCE"), Number(12345), Atom("VANISHED")),
        ),
        id="uid-fetch-lower-case-modifiers",
    ),
    pytest.param(
        b"A003 STORE 2:4 +FLAGS (\\Deleted)\r\n",
        cmd("A003", "STORE", SequenceSet("2:4"), Atom("+FLAGS"), plist(Atom("\\Deleted"))),
        id="store",
    ),
    pytest.param(
        b"F284 STORE $ +FLAGS.Silent (\\Deleted)\r\n",
        cmd("F284", "STORE", SequenceSet("$"), Atom("+FLAGS.Silent"), plist(Atom("\\Deleted"))),
        id="store-silent-dollar",
    ),
    pytest.param(
        b"a005 store 12 +flags \\deleted\r\n",
        cmd("a005", "STORE", Number(12), Atom("+flags"), Atom("\\deleted")),
        id="store-no-list",
    ),
    pytest.param(
        b"A1 UID STORE 1:3 -FLAGS.SILENT (\\Seen $Junk)\r\n",
        cmd(
            "A1",
            "UID STORE",
            SequenceSet("1:3"),
            Atom("-FLAGS.SILENT"),
            plist(Atom("\\Seen"), Atom("$Junk")),
        ),
        id="uid-store",
    ),
    pytest.param(
        b"A003 COPY 2:4 MEETING\r\n",
        cmd("A003", "COPY", SequenceSet("2:4"), Atom("MEETING")),
        id="copy",
    ),
    pytest.param(
        b'E283 COPY $ "Other Messages"\r\n',
        cmd("E283", "COPY", SequenceSet("$"), q("Other Messages")),
        id="copy-quoted",
    ),
    pytest.param(
        b"n1 uid copy 1:* oldmail\r\n",
        cmd("n1", "UID COPY", SequenceSet("1:*"), Atom("oldmail")),
        id="uid-copy",
    ),
    pytest.param(
        b"a MOVE 1,3 foo\r\n", cmd("a", "MOVE", SequenceSet("1,3"), Atom("foo")), id="move"
    ),
    pytest.param(
        b"a UID MOVE 42:69 foo\r\n",
        cmd("a", "UID MOVE", SequenceSet("42:69"), Atom("foo")),
        id="uid-move",
    ),
    pytest.param(
        b'a023 ID ("name" "sodr" "version" "19.34")\r\n',
        cmd("a023", "ID", plist(q("name"), q("sodr"), q("version"), q("19.34"))),
        id="id",
    ),
    pytest.param(b"a042 ID NIL\r\n", cmd("a042", "ID", NIL), id="id-nil"),
    pytest.param(b"a042 ID nil\r\n", cmd("a042", "ID", NIL), id="id-nil-lower-case"),
    pytest.param(b"c compress deflate\r\n", cmd("c", "COMPRESS", Atom("deflate")), id="compress"),
    pytest.param(
        b'a SETMETADATA INBOX (/private/comment "My comment")\r\n',
        cmd("a", "SETMETADATA", Atom("INBOX"), plist(Atom("/private/comment"), q("My comment"))),
        id="setmetadata",
    ),
    # --- unknown commands and extensions parse generically
    pytest.param(b"A442 XPIG-LATIN\r\n", cmd("A442", "XPIG-LATIN"), id="x-command"),
    pytest.param(
        b'a X-FOO bar (baz "q" {3+}\r\nabc ((NIL))) 12 1:3 \\Flag\r\n',
        cmd(
            "a",
            "X-FOO",
            Atom("bar"),
            plist(Atom("baz"), q("q"), client_literal(b"abc", plus=True), plist(plist(NIL))),
            Number(12),
            SequenceSet("1:3"),
            Atom("\\Flag"),
        ),
        id="x-command-args",
    ),
    pytest.param(
        b"a uid x-frob 1:2\r\n",
        cmd("a", "UID X-FROB", SequenceSet("1:2")),
        id="uid-x-command",
    ),
    pytest.param(
        b"A044 BLURDYBLOOP {3}\r\nabc\r\n",
        cmd("A044", "BLURDYBLOOP", client_literal(b"abc")),
        id="unknown-command-literal",
    ),
    # --- quoted strings
    pytest.param(b'a X ""\r\n', cmd("a", "X", q("")), id="quoted-empty"),
    pytest.param(b'a X "\\\\"\r\n', cmd("a", "X", q(b"\\")), id="quoted-backslash"),
    pytest.param(b'a X "\\""\r\n', cmd("a", "X", q(b'"')), id="quoted-dquote"),
    pytest.param(
        b'a X "a b (c) {5} [d]"\r\n', cmd("a", "X", q("a b (c) {5} [d]")), id="quoted-specials"
    ),
    pytest.param('a X "Grüße"\r\n'.encode(), cmd("a", "X", q("Grüße")), id="quoted-utf8"),
    # --- numbers and sequence sets
    pytest.param(
        b"a X 0 4294967295 9223372036854775807\r\n",
        cmd("a", "X", Number(0), Number(4294967295), Number(2**63 - 1)),
        id="numbers",
    ),
    pytest.param(
        b"a X 1:*,5 * 2,4 $ 7:3\r\n",
        cmd(
            "a",
            "X",
            SequenceSet("1:*,5"),
            SequenceSet("*"),
            SequenceSet("2,4"),
            SequenceSet("$"),
            SequenceSet("7:3"),
        ),
        id="sequence-sets",
    ),
]


@pytest.mark.parametrize(("raw", "expected"), COMMANDS)
def test_parse_command(raw: bytes, expected: Command) -> None:
    assert parse_command(raw) == expected


@pytest.mark.parametrize(("raw", "expected"), COMMANDS)
def test_parse_frame_command(raw: bytes, expected: Command) -> None:
    frame = Frame(Side.CLIENT, FrameKind.COMMAND, raw, expected.tag, expected.name)
    assert parse_frame(frame) == expected


@pytest.mark.parametrize(
    ("value", "ranges"),
    [
        ("1", [(1, 1)]),
        ("1:*,5", [(1, None), (5, 5)]),
        ("*", [(None, None)]),
        ("2,4:7,9:*", [(2, 2), (4, 7), (9, None)]),
        ("$", []),
    ],
)
def test_sequence_set_ranges(value: str, ranges: list[tuple[int | None, int | None]]) -> None:
    assert SequenceSet(value).ranges() == ranges


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("\u0663", id="arabic-indic-3"),
        pytest.param("\u0661:\u0662", id="arabic-indic-range"),
        pytest.param("\uff11\uff12", id="fullwidth-12"),
        pytest.param("3\u0663", id="mixed"),
    ],
)
def test_non_ascii_digits_are_not_numbers(text: str) -> None:
    """Only ASCII digits make a number or a sequence set: a mailbox named "\u0663" must not
    turn into the number 3 (which re-encodes as the different mailbox "3")."""
    raw = b"a SELECT " + text.encode() + b"\r\n"
    try:
        parsed = parse_command(raw)
    except ParseError:
        return  # refusing 8-bit atoms is fine too
    (token,) = parsed.args
    assert not isinstance(token, (Number, SequenceSet))
    assert string_value(token) == text.encode()


def test_quoted_and_literal_spec_details() -> None:
    """``sync``/``nonsync_marker``/``binary`` of every announcement form."""
    parsed = parse_command(b"a X {1}\r\na {1+}\r\nb ~{1}\r\nc ~{1+}\r\nd\r\n")
    specs = [arg.spec for arg in parsed.args if isinstance(arg, Literal)]
    assert specs == [
        LiteralSpec(1, sync=True, binary=False, nonsync_marker=False),
        LiteralSpec(1, sync=False, binary=False, nonsync_marker=True),
        LiteralSpec(1, sync=True, binary=True, nonsync_marker=False),
        LiteralSpec(1, sync=False, binary=True, nonsync_marker=True),
    ]
    assert [spec.announcement() for spec in specs] == [b"{1}", b"{1+}", b"~{1}", b"~{1+}"]


def test_literal_value_is_verbatim() -> None:
    """Literal bytes are not unescaped or interpreted: quotes, CRLF, parens, braces."""
    body = b'"\\x" (a) {3}\r\n) * OK'
    parsed = parse_command(b"a X {%d}\r\n%s\r\n" % (len(body), body))
    assert parsed.args == (client_literal(body),)


# ------------------------------------------------------------------ streamed heads


def test_streamed_literal_head_is_truncated() -> None:
    raw = b"a APPEND INBOX {500000}\r\n"
    expected = cmd(
        "a",
        "APPEND",
        Atom("INBOX"),
        LiteralRef(LiteralSpec(500000, sync=True)),
        truncated=True,
    )
    assert parse_command(raw) == expected
    frame = Frame(
        Side.CLIENT,
        FrameKind.COMMAND,
        raw,
        b"a",
        "APPEND",
        final=False,
        literal=LiteralSpec(500000, sync=True),
        streamed=True,
    )
    assert parse_frame(frame) == expected


def test_streamed_literal_head_with_flags_and_plus() -> None:
    parsed = parse_command(b'a APPEND INBOX (\\Seen) "1-Jan-2020 00:00:00 +0000" ~{99999+}\r\n')
    assert parsed.truncated
    assert parsed.args[-1] == LiteralRef(
        LiteralSpec(99999, sync=False, binary=True, nonsync_marker=True)
    )


def test_streamed_literal_head_of_response() -> None:
    parsed = parse_response(b"* 12 FETCH (UID 7 BODY[] {123456}\r\n")
    assert parsed == DataResponse(
        "FETCH",
        12,
        (plist(Atom("UID"), Number(7), Atom("BODY[]"), LiteralRef(LiteralSpec(123456, False))),),
        truncated=True,
    )


# ------------------------------------------------------------------ responses

RESPONSES: list[object] = [
    # --- status responses
    pytest.param(
        b"* OK IMAP4rev1 Service Ready\r\n", status(None, "OK", "IMAP4rev1 Service Ready"), id="ok"
    ),
    pytest.param(
        b"* OK [CAPABILITY IMAP4rev1 LITERAL+ SASL-IR AUTH=PLAIN] ready\r\n",
        status(None, "OK", "ready", "CAPABILITY", b"IMAP4rev1 LITERAL+ SASL-IR AUTH=PLAIN"),
        id="ok-capability-code",
    ),
    pytest.param(
        b"* OK [PERMANENTFLAGS (\\Seen \\*)] Limited\r\n",
        status(None, "OK", "Limited", "PERMANENTFLAGS", b"(\\Seen \\*)"),
        id="permanentflags",
    ),
    pytest.param(
        b"* OK [UIDVALIDITY 3857529045] UIDs valid\r\n",
        status(None, "OK", "UIDs valid", "UIDVALIDITY", b"3857529045"),
        id="uidvalidity",
    ),
    pytest.param(
        b"* OK [UIDVALIDITY 1]\r\n",
        status(None, "OK", "", "UIDVALIDITY", b"1"),
        id="code-without-text",
    ),
    pytest.param(
        b"A003 OK [APPENDUID 38505 3955] APPEND completed\r\n",
        status("A003", "OK", "APPEND completed", "APPENDUID", b"38505 3955"),
        id="appenduid",
    ),
    pytest.param(
        b"A004 OK [COPYUID 38505 304,319:320 3956:3958] Done\r\n",
        status("A004", "OK", "Done", "COPYUID", b"38505 304,319:320 3956:3958"),
        id="copyuid",
    ),
    pytest.param(
        b"A1 NO [TRYCREATE] Mailbox doesn't exist\r\n",
        status("A1", "NO", "Mailbox doesn't exist", "TRYCREATE"),
        id="trycreate",
    ),
    pytest.param(
        b"* OK [ALERT] System shutdown in 10 minutes\r\n",
        status(None, "OK", "System shutdown in 10 minutes", "ALERT"),
        id="alert",
    ),
    pytest.param(
        b'B283 NO [BADCHARSET (UTF-8 "US-ASCII")] KOI8-R is not supported\r\n',
        status("B283", "NO", "KOI8-R is not supported", "BADCHARSET", b'(UTF-8 "US-ASCII")'),
        id="badcharset",
    ),
    pytest.param(
        b"A142 OK [READ-WRITE] SELECT completed\r\n",
        status("A142", "OK", "SELECT completed", "READ-WRITE"),
        id="read-write",
    ),
    pytest.param(
        b"a1 ok [read-only] done\r\n",
        status("a1", "OK", "done", "READ-ONLY"),
        id="lower-case-status-and-code",
    ),
    pytest.param(
        b"a002 OK NOOP completed\r\n", status("a002", "OK", "NOOP completed"), id="tagged-ok"
    ),
    pytest.param(
        b"A223 NO COPY failed: disk is full\r\n",
        status("A223", "NO", "COPY failed: disk is full"),
        id="tagged-no",
    ),
    pytest.param(
        b'A044 BAD No such command as "BLURDYBLOOP"\r\n',
        status("A044", "BAD", 'No such command as "BLURDYBLOOP"'),
        id="tagged-bad",
    ),
    pytest.param(
        b"* BAD Empty command line\r\n",
        status(None, "BAD", "Empty command line"),
        id="untagged-bad",
    ),
    pytest.param(
        b"* PREAUTH IMAP4rev1 server logged in as Smith\r\n",
        status(None, "PREAUTH", "IMAP4rev1 server logged in as Smith"),
        id="preauth",
    ),
    pytest.param(
        b"* BYE Autologout; idle for too long\r\n",
        status(None, "BYE", "Autologout; idle for too long"),
        id="bye",
    ),
    pytest.param(b"a1 OK\r\n", status("a1", "OK", ""), id="no-text"),
    pytest.param(
        b"a1 OK text with {5}\r\n", status("a1", "OK", "text with {5}"), id="text-with-brace"
    ),
    pytest.param(
        b'a1 OK see [this] (and) "that"\r\n',
        status("a1", "OK", 'see [this] (and) "that"'),
        id="text-with-bracket",
    ),
    pytest.param(
        b"a1 OK [ALERT] text ] with [ brackets\r\n",
        status("a1", "OK", "text ] with [ brackets", "ALERT"),
        id="code-then-brackets-in-text",
    ),
    # --- untagged data
    pytest.param(b"* 23 EXISTS\r\n", data("EXISTS", number=23), id="exists"),
    pytest.param(b"* 5 EXPUNGE\r\n", data("EXPUNGE", number=5), id="expunge"),
    pytest.param(b"* 3 RECENT\r\n", data("RECENT", number=3), id="recent"),
    pytest.param(
        b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n",
        data(
            "FLAGS",
            plist(
                Atom("\\Answered"),
                Atom("\\Flagged"),
                Atom("\\Deleted"),
                Atom("\\Seen"),
                Atom("\\Draft"),
            ),
        ),
        id="flags",
    ),
    pytest.param(
        b'* LIST (\\Noselect) "/" foo/bar\r\n',
        data("LIST", plist(Atom("\\Noselect")), q("/"), Atom("foo/bar")),
        id="list",
    ),
    pytest.param(
        b"* LIST () NIL INBOX\r\n", data("LIST", plist(), NIL, Atom("INBOX")), id="list-nil-delim"
    ),
    pytest.param(
        b'* LIST (\\HasNoChildren) "/" {8}\r\nfoo\r\nbar\r\n',
        data("LIST", plist(Atom("\\HasNoChildren")), q("/"), server_literal(b"foo\r\nbar")),
        id="list-literal-name",
    ),
    pytest.param(
        b'* LIST () "/" "NewMailbox" ("OLDNAME" ("OldMailbox"))\r\n',
        data(
            "LIST",
            plist(),
            q("/"),
            q("NewMailbox"),
            plist(q("OLDNAME"), plist(q("OldMailbox"))),
        ),
        id="list-extended-data",
    ),
    pytest.param(
        b"* STATUS blurdybloop (MESSAGES 231 UIDNEXT 44292)\r\n",
        data(
            "STATUS",
            Atom("blurdybloop"),
            plist(Atom("MESSAGES"), Number(231), Atom("UIDNEXT"), Number(44292)),
        ),
        id="status",
    ),
    pytest.param(
        b"* SEARCH 2 84 882\r\n",
        data("SEARCH", Number(2), Number(84), Number(882)),
        id="search",
    ),
    pytest.param(b"* SEARCH\r\n", data("SEARCH"), id="search-empty"),
    pytest.param(
        b'* ESEARCH (TAG "A282") MIN 2 COUNT 3\r\n',
        data(
            "ESEARCH",
            plist(Atom("TAG"), q("A282")),
            Atom("MIN"),
            Number(2),
            Atom("COUNT"),
            Number(3),
        ),
        id="esearch",
    ),
    pytest.param(
        b'* ESEARCH (TAG "a567") UID COUNT 17 ALL 4:18,21,28\r\n',
        data(
            "ESEARCH",
            plist(Atom("TAG"), q("a567")),
            Atom("UID"),
            Atom("COUNT"),
            Number(17),
            Atom("ALL"),
            SequenceSet("4:18,21,28"),
        ),
        id="esearch-uid-all",
    ),
    pytest.param(
        b"* CAPABILITY IMAP4rev1 STARTTLS AUTH=GSSAPI LOGINDISABLED\r\n",
        data(
            "CAPABILITY",
            Atom("IMAP4rev1"),
            Atom("STARTTLS"),
            Atom("AUTH=GSSAPI"),
            Atom("LOGINDISABLED"),
        ),
        id="capability",
    ),
    pytest.param(
        b"* ENABLED CONDSTORE QRESYNC\r\n",
        data("ENABLED", Atom("CONDSTORE"), Atom("QRESYNC")),
        id="enabled",
    ),
    pytest.param(
        b'* ID ("name" "Cyrus" "version" "1.5")\r\n',
        data("ID", plist(q("name"), q("Cyrus"), q("version"), q("1.5"))),
        id="id",
    ),
    pytest.param(b"* ID NIL\r\n", data("ID", NIL), id="id-nil"),
    pytest.param(
        b'* NAMESPACE (("" "/")) NIL (("Public Folders/" "/"))\r\n',
        data(
            "NAMESPACE",
            plist(plist(q(""), q("/"))),
            NIL,
            plist(plist(q("Public Folders/"), q("/"))),
        ),
        id="namespace",
    ),
    pytest.param(
        b"* 14 FETCH (FLAGS (\\Seen \\Deleted))\r\n",
        data("FETCH", plist(Atom("FLAGS"), plist(Atom("\\Seen"), Atom("\\Deleted"))), number=14),
        id="fetch-flags",
    ),
    pytest.param(
        b'* 12 FETCH (FLAGS (\\Seen) INTERNALDATE "17-Jul-1996 02:44:25 -0700" '
        b"RFC822.SIZE 4286 ENVELOPE (" + ENVELOPE + b") "
        b'BODY ("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 3028 92))\r\n',
        data(
            "FETCH",
            plist(
                Atom("FLAGS"),
                plist(Atom("\\Seen")),
                Atom("INTERNALDATE"),
                q("17-Jul-1996 02:44:25 -0700"),
                Atom("RFC822.SIZE"),
                Number(4286),
                Atom("ENVELOPE"),
                ENVELOPE_TOKENS,
                Atom("BODY"),
                plist(
                    q("TEXT"),
                    q("PLAIN"),
                    plist(q("CHARSET"), q("US-ASCII")),
                    NIL,
                    NIL,
                    q("7BIT"),
                    Number(3028),
                    Number(92),
                ),
            ),
            number=12,
        ),
        id="fetch-envelope-body",
    ),
    pytest.param(
        b"* 12 FETCH (BODY[HEADER] {11}\r\nSubject: x\n UID 5)\r\n",
        data(
            "FETCH",
            plist(Atom("BODY[HEADER]"), server_literal(b"Subject: x\n"), Atom("UID"), Number(5)),
            number=12,
        ),
        id="fetch-body-literal",
    ),
    pytest.param(
        b"* 12 FETCH (BODY[] {0}\r\n)\r\n",
        data("FETCH", plist(Atom("BODY[]"), server_literal(b"")), number=12),
        id="fetch-empty-literal",
    ),
    pytest.param(
        b"* 12 FETCH (BINARY[] ~{3}\r\na\x00c)\r\n",
        data("FETCH", plist(Atom("BINARY[]"), server_literal(b"a\x00c", binary=True)), number=12),
        id="fetch-binary-literal8",
    ),
    pytest.param(
        b"* 1 FETCH (BINARY.SIZE[1] 23 BODY[HEADER.FIELDS (DATE FROM)]<0> NIL)\r\n",
        data(
            "FETCH",
            plist(
                Atom("BINARY.SIZE[1]"),
                Number(23),
                Atom("BODY[HEADER.FIELDS (DATE FROM)]<0>"),
                NIL,
            ),
            number=1,
        ),
        id="fetch-sections",
    ),
    pytest.param(
        b"* XPIG-LATIN ow-nay eaking-spay ig-pay atin-lay\r\n",
        data(
            "XPIG-LATIN",
            Atom("ow-nay"),
            Atom("eaking-spay"),
            Atom("ig-pay"),
            Atom("atin-lay"),
        ),
        id="x-data",
    ),
    # --- continuation requests
    pytest.param(
        b"+ Ready for literal data\r\n", ContinuationRequest(b"Ready for literal data"), id="cont"
    ),
    pytest.param(b"+ idling\r\n", ContinuationRequest(b"idling"), id="cont-idling"),
    pytest.param(
        b"+ YGgGCSqGSIb3EgECAgIAb1kwV6ADAgEFoQMCAQ+iSzBJ==\r\n",
        ContinuationRequest(b"YGgGCSqGSIb3EgECAgIAb1kwV6ADAgEFoQMCAQ+iSzBJ=="),
        id="cont-base64",
    ),
    pytest.param(b"+ \r\n", ContinuationRequest(b""), id="cont-empty"),
    pytest.param(b"+\r\n", ContinuationRequest(b""), id="cont-bare"),
]


@pytest.mark.parametrize(("raw", "expected"), RESPONSES)
def test_parse_response(raw: bytes, expected: Message) -> None:
    assert parse_response(raw) == expected


def _server_kind(message: Message) -> FrameKind:
    if isinstance(message, ContinuationRequest):
        return FrameKind.CONTINUATION
    if isinstance(message, StatusResponse):
        return FrameKind.STATUS
    return FrameKind.DATA


@pytest.mark.parametrize(("raw", "expected"), RESPONSES)
def test_parse_frame_response(raw: bytes, expected: Message) -> None:
    frame = Frame(Side.SERVER, _server_kind(expected), raw, None, "")
    assert parse_frame(frame) == expected


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(
            b'* 1 FETCH (ENVELOPE (NIL NIL ((NIL NIL "a" "example.org")'
            b'(NIL NIL "b" "example.org")) NIL NIL NIL NIL NIL NIL NIL))\r\n',
            id="envelope-address-list",
        ),
        pytest.param(
            b'* 2 FETCH (BODYSTRUCTURE (("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" '
            b'1152 23)("TEXT" "PLAIN" ("CHARSET" "US-ASCII" "NAME" "cc.diff") '
            b'"<960723163407.20117h@cac.washington.edu>" "Compiler diff" "BASE64" 4554 73) '
            b'"MIXED"))\r\n',
            id="multipart-bodystructure",
        ),
        pytest.param(
            b'* NAMESPACE (("" "/")) (("~" "/")) (("#shared/" "/")("#public/" "/"))\r\n',
            id="namespace-list",
        ),
    ],
)
def test_adjacent_lists_without_space(raw: bytes) -> None:
    """RFC 9051 §9 puts no SP between addresses (env-from = "(" 1*address ")"), between the
    parts of a multipart body (body-type-mpart = 1*body SP media-subtype) and between
    namespace descriptors (Namespace = nil / "(" 1*Namespace-Descr ")").  Every multipart
    BODYSTRUCTURE and every envelope with two addresses in one field looks like this."""
    parsed = parse_response(raw)
    assert isinstance(parsed, DataResponse)
    inner = parsed.args[-1]
    assert isinstance(inner, ParenList)


def test_adjacent_lists_items() -> None:
    parsed = parse_response(b"* X ((a)(b) c)\r\n")
    assert parsed == data("X", plist(plist(Atom("a")), plist(Atom("b")), Atom("c")))


# ------------------------------------------------------------------ errors

COMMAND_ERRORS: list[object] = [
    pytest.param(b"\r\n", None, id="empty-line"),
    pytest.param(b"NOOP\r\n", None, id="missing-tag"),
    pytest.param(b" NOOP\r\n", None, id="leading-space"),
    pytest.param(b"+a NOOP\r\n", None, id="plus-in-tag"),
    pytest.param(b"a1 \r\n", b"a1", id="missing-command-name"),
    pytest.param(b"a1 UID\r\n", b"a1", id="uid-without-command"),
    pytest.param(b'a1 LOGIN joe "secret\r\n', b"a1", id="unterminated-quoted"),
    pytest.param(b'a1 LOGIN joe "sec\\ret"\r\n', b"a1", id="bad-escape"),
    pytest.param(b'a1 LOGIN joe "sec\\a"\r\n', b"a1", id="bad-escape-a"),
    pytest.param(b'a1 SELECT "a\rb"\r\n', b"a1", id="cr-in-quoted"),
    pytest.param(b"a1 FETCH 1 (FLAGS\r\n", b"a1", id="unclosed-paren"),
    pytest.param(b"a1 FETCH 1 ((FLAGS)\r\n", b"a1", id="unclosed-nested-paren"),
    pytest.param(b"a1 FETCH 1 FLAGS)\r\n", b"a1", id="stray-close-paren"),
    pytest.param(b"a1 FETCH 1 (FLAGS))\r\n", b"a1", id="extra-close-paren"),
    pytest.param(b"a1 FETCH 1 (FLAGS)UID\r\n", b"a1", id="junk-after-paren"),
    pytest.param(b'a1 SELECT "INBOX"x\r\n', b"a1", id="junk-after-quoted"),
    pytest.param(b"a1 FETCH 1  FLAGS\r\n", b"a1", id="double-space"),
    pytest.param(b"a1 FETCH 1 FLAGS \r\n", b"a1", id="trailing-space"),
    pytest.param(b"a1 FETCH 1 BODY[HEADER\r\n", b"a1", id="unterminated-section"),
    pytest.param(b"a1 APPEND INBOX {10}\r\nabc\r\n", b"a1", id="literal-short"),
    pytest.param(b"a1 APPEND INBOX {5}\r\nabc\r\n", b"a1", id="literal-eats-crlf"),
    pytest.param(b"a1 APPEND INBOX {3}\r\na\x00c\r\n", b"a1", id="nul-in-literal"),
    pytest.param(b"a1 APPEND INBOX {3+}\r\na\x00c\r\n", b"a1", id="nul-in-nonsync-literal"),
    pytest.param(b"a1 APPEND INBOX {3}x\r\nabc\r\n", b"a1", id="bad-literal-announcement"),
    pytest.param(b"a1 APPEND INBOX {3}\r\nabcd\r\n", b"a1", id="junk-after-literal"),
    pytest.param(b"a1 NOOP", b"a1", id="missing-crlf"),
    pytest.param(b"a1 NOOP\r\na2 NOOP\r\n", b"a1", id="two-commands"),
    pytest.param(b"a1 FETCH 99999999999999999999 FLAGS\r\n", b"a1", id="number-too-large"),
]


@pytest.mark.parametrize(("raw", "tag"), COMMAND_ERRORS)
def test_command_parse_errors(raw: bytes, tag: bytes | None) -> None:
    with pytest.raises(ParseError) as info:
        parse_command(raw)
    error = info.value
    assert isinstance(error, ProtocolError)
    assert error.fatal is False
    assert error.side is Side.CLIENT
    assert error.tag == tag
    expected_prefix = (tag or b"*") + b" BAD "
    assert error.reply.startswith(expected_prefix)
    assert error.reply.endswith(b"\r\n")
    assert error.reply.count(b"\r\n") == 1


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b'a1 SELECT "a\x00b"\r\n', id="nul-in-quoted"),
        pytest.param(b"a1 FETCH 1 BODY[\x00]\r\n", id="nul-in-section"),
        pytest.param(b"a1 FETCH 1 BODY[\x01]\r\n", id="ctl-in-section"),
    ],
)
def test_nul_and_ctl_outside_literals_are_rejected(raw: bytes) -> None:
    """NUL is only allowed inside a literal8 (RFC 9051 §4.3, CHAR excludes NUL; quoted
    strings are TEXT-CHARs, atoms exclude CTL)."""
    with pytest.raises(ParseError) as info:
        parse_command(raw)
    assert info.value.tag == b"a1"


RESPONSE_ERRORS: list[object] = [
    pytest.param(b"\r\n", id="empty"),
    pytest.param(b"OK hello\r\n", id="missing-tag"),
    pytest.param(b"a1 FETCH x\r\n", id="tagged-data"),
    pytest.param(b"a1 PREAUTH x\r\n", id="tagged-preauth"),
    pytest.param(b"a1 OK [ALERT hi\r\n", id="unterminated-code"),
    pytest.param(b"a1 OKAY\r\n", id="tagged-not-status"),
    pytest.param(b"a1 OK hi\r\nmore\r\n", id="status-spans-lines"),
    pytest.param(b"a1 OK h\x00i\r\n", id="nul-in-text"),
    pytest.param(b"a1 OK h\ri\r\n", id="cr-in-text"),
    pytest.param(b"* 12\r\n", id="number-without-name"),
    pytest.param(b'* LIST (\\Noselect "/" foo\r\n', id="unbalanced-paren"),
    pytest.param(b'* LIST () "/" {10}\r\nabc\r\n', id="literal-short"),
    pytest.param(b"* 1 FETCH (BODY[] {3}\r\na\x00c)\r\n", id="nul-in-literal"),
    pytest.param(b'* LIST () "/\\a" foo\r\n', id="bad-escape"),
]


@pytest.mark.parametrize("raw", RESPONSE_ERRORS)
def test_response_parse_errors(raw: bytes) -> None:
    with pytest.raises(ParseError) as info:
        parse_response(raw)
    assert info.value.fatal is False
    assert info.value.side is Side.SERVER


# ------------------------------------------------------------------ limits


def _nested(depth: int) -> bytes:
    return b"(" * depth + b"x" + b")" * depth


@pytest.mark.parametrize("depth", [1, 4, 5])
def test_list_depth_at_limit_parses(depth: int) -> None:
    limits = Limits(max_list_depth=5)
    parsed = parse_command(b"a1 X " + _nested(depth) + b"\r\n", limits)
    token: Token = parsed.args[0]
    for _ in range(depth):
        assert isinstance(token, ParenList)
        token = token.items[0]
    assert token == Atom("x")
    assert isinstance(parse_response(b"* X " + _nested(depth) + b"\r\n", limits), DataResponse)


@pytest.mark.parametrize("depth", [6, 7, 50])
def test_list_depth_over_limit_raises(depth: int) -> None:
    limits = Limits(max_list_depth=5)
    with pytest.raises(ParseError) as info:
        parse_command(b"a1 X " + _nested(depth) + b"\r\n", limits)
    assert info.value.limit == "max_list_depth"
    assert info.value.reply.startswith(b"a1 BAD ")
    with pytest.raises(ParseError) as info:
        parse_response(b"* X " + _nested(depth) + b"\r\n", limits)
    assert info.value.limit == "max_list_depth"


def test_default_list_depth_stops_recursion_bombs() -> None:
    with pytest.raises(ParseError) as info:
        parse_command(b"a1 X " + _nested(100_000) + b"\r\n")
    assert info.value.limit == "max_list_depth"


@pytest.mark.parametrize(
    ("args", "count"),
    [
        (b"a b c", 3),
        (b"(a b)", 3),
        (b"(a) b", 3),
        (b"()", 1),
        (b"(())", 2),
    ],
)
def test_token_count_at_limit_parses(args: bytes, count: int) -> None:
    limits = Limits(max_tokens=count)
    parse_command(b"a1 X " + args + b"\r\n", limits)
    parse_response(b"* X " + args + b"\r\n", limits)


@pytest.mark.parametrize(
    ("args", "limit"),
    [
        (b"a b c d", 3),
        (b"(a b) c", 3),
        (b"(a b c)", 3),
        (b"((a))", 2),
    ],
)
def test_token_count_over_limit_raises(args: bytes, limit: int) -> None:
    limits = Limits(max_tokens=limit)
    with pytest.raises(ParseError) as info:
        parse_command(b"a1 X " + args + b"\r\n", limits)
    assert info.value.limit == "max_tokens"
    assert info.value.reply.startswith(b"a1 BAD ")
    with pytest.raises(ParseError) as info:
        parse_response(b"* X " + args + b"\r\n", limits)
    assert info.value.limit == "max_tokens"


# ------------------------------------------------------------------ capabilities


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(
            b"* CAPABILITY IMAP4rev1 STARTTLS AUTH=GSSAPI literal+\r\n",
            ("IMAP4REV1", "STARTTLS", "AUTH=GSSAPI", "LITERAL+"),
            id="data",
        ),
        pytest.param(
            b"* OK [CAPABILITY IMAP4rev2 LITERAL+ sasl-ir] Service Ready\r\n",
            ("IMAP4REV2", "LITERAL+", "SASL-IR"),
            id="untagged-ok-code",
        ),
        pytest.param(
            b"a1 OK [CAPABILITY IMAP4rev1 ID IDLE] Logged in\r\n",
            ("IMAP4REV1", "ID", "IDLE"),
            id="tagged-ok-code",
        ),
        pytest.param(
            b"* PREAUTH [CAPABILITY IMAP4rev1] Logged in as Smith\r\n",
            ("IMAP4REV1",),
            id="preauth-code",
        ),
        pytest.param(b"* CAPABILITY\r\n", (), id="empty"),
        pytest.param(b"* OK [ALERT] hi\r\n", None, id="other-code"),
        pytest.param(b"* OK hi\r\n", None, id="no-code"),
        pytest.param(b"* 3 EXISTS\r\n", None, id="other-data"),
        pytest.param(b"* ENABLED IMAP4rev2\r\n", None, id="enabled-is-not-capability"),
        pytest.param(b"+ CAPABILITY\r\n", None, id="continuation"),
    ],
)
def test_capabilities_of(raw: bytes, expected: tuple[str, ...] | None) -> None:
    assert capabilities_of(parse_response(raw)) == expected


def test_capabilities_of_client_messages() -> None:
    assert capabilities_of(parse_command(b"a CAPABILITY\r\n")) is None
    assert capabilities_of(AuthData(Secret(b"x"))) is None
    assert capabilities_of(IdleDone()) is None


# ------------------------------------------------------------------ other frame kinds


@pytest.mark.parametrize(
    ("raw", "payload"),
    [
        (b"dGVzdAB0ZXN0AHRlc3Q=\r\n", b"dGVzdAB0ZXN0AHRlc3Q="),
        (b"\r\n", b""),
        (b"*\r\n", b"*"),
        (b"YWJj\n", b"YWJj"),
    ],
)
def test_parse_frame_auth_data(raw: bytes, payload: bytes) -> None:
    frame = Frame(Side.CLIENT, FrameKind.AUTH_DATA, raw, b"A001", "AUTH_DATA", sensitive=True)
    parsed = parse_frame(frame)
    assert isinstance(parsed, AuthData)
    assert isinstance(parsed.data, Secret)
    assert parsed.data.reveal() == payload
    assert parsed.cancelled is (payload == b"*")


@pytest.mark.parametrize(
    ("raw", "valid"),
    [
        (b"DONE\r\n", True),
        (b"done\r\n", True),
        (b"Done\n", True),
        (b"other\r\n", False),
        (b"DONE \r\n", False),
        (b"\r\n", False),
    ],
)
def test_parse_frame_idle_done(raw: bytes, valid: bool) -> None:
    frame = Frame(Side.CLIENT, FrameKind.IDLE_DONE, raw, b"A002", "IDLE_DONE")
    assert parse_frame(frame) == IdleDone(valid)


def test_parse_frame_greeting() -> None:
    raw = b"* OK [CAPABILITY IMAP4rev1] ready\r\n"
    frame = Frame(Side.SERVER, FrameKind.GREETING, raw, None, "OK")
    assert parse_frame(frame) == status(None, "OK", "ready", "CAPABILITY", b"IMAP4rev1")


# ------------------------------------------------------------------ robustness

_ARG_WORDS = st.sampled_from(
    [
        b"INBOX",
        b"1:*",
        b"42",
        b"NIL",
        b'"q \\" s"',
        b"{3+}\r\nabc",
        b"~{2+}\r\n\x00\x01",
        b"{0}\r\n",
        b"BODY[HEADER.FIELDS (A B)]<0.5>",
        b"\\Seen",
        b"$",
        b"()",
        b"(a (b))",
        b"%",
        b"*",
    ]
)


@given(
    name=st.from_regex(r"X-?[A-Z][A-Z0-9.\-]{0,15}", fullmatch=True),
    words=st.lists(_ARG_WORDS, max_size=8),
    uid=st.booleans(),
)
def test_unknown_commands_parse_generically(name: str, words: list[bytes], uid: bool) -> None:
    """Unknown commands with well-formed arguments never raise, whatever the name."""
    full_name = ("UID " if uid else "") + name
    raw = b"t1 " + full_name.encode() + b"".join(b" " + w for w in words) + b"\r\n"
    parsed = parse_command(raw)
    assert parsed.tag == b"t1"
    assert parsed.name == full_name
    assert len(parsed.args) == len(words)
    assert not parsed.truncated


_NOISE = st.lists(
    st.sampled_from(list(b'aZ09 ()[]{}"\\~+*%$:,<>.\r\n\x00\x01\x7f\xff]-')), max_size=40
).map(bytes)


@given(
    prefix=st.sampled_from([b"", b"a ", b"a X ", b"a X (", b"* ", b"* 1 FETCH (", b"+ "]),
    noise=_NOISE,
)
def test_arbitrary_bytes_only_ever_raise_parse_error(prefix: bytes, noise: bytes) -> None:
    for raw in (prefix + noise, prefix + noise + b"\r\n"):
        for parse in (parse_command, parse_response):
            try:
                parse(raw)
            except ParseError as error:
                assert error.fatal is False


def test_literal_lengths_with_leading_zeros() -> None:
    """RFC 9051 number = 1*DIGIT: {0005} is 5, however many zeros pad it."""
    from imapproxy.wire import parse_command, string_value

    cmd = parse_command(b"a LOGIN {" + b"0" * 30 + b"5}\r\nalice {02}\r\npw\r\n")
    assert [string_value(a) for a in cmd.args[:1]] == [b"alice"]
    assert len(cmd.args) == 2
