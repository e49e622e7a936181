"""Replay the RFC example traces (``tests/traces/*.imap``) through the codec.

For every trace: both byte streams go through one :class:`Conversation` in wire order, and

(a) no ProtocolError is raised (except where a trace ends in something the proxy refuses by
    design: a successful COMPRESS);
(b) the frames and literal chunks re-emit both streams byte for byte;
(c) every complete message parses;
(d) a table of selected messages has the expected structure;
(e) every parsed message, re-encoded and parsed again, means the same.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from imapproxy.wire import (
    NIL,
    Atom,
    AuthData,
    Command,
    ContinuationRequest,
    Conversation,
    DataResponse,
    EncodeError,
    EndOfStream,
    Frame,
    FrameKind,
    IdleDone,
    Literal,
    LiteralChunk,
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
    Wait,
    capabilities_of,
    encode_command,
    encode_response,
    parse_command,
    parse_frame,
    parse_response,
)
from tests.wire.test_roundtrip import normalise_message
from tests.wire.trace_format import (
    LineKind,
    Trace,
    TraceFormatError,
    load_trace,
    parse_trace,
    trace_paths,
)

# ------------------------------------------------------------------ replay


@dataclass
class TraceMessage:
    """One complete message as the decoder framed it."""

    side: Side
    kind: FrameKind
    frames: list[Frame]
    data: bytes
    lineno: int  # line of the trace file whose bytes completed the first frame
    abandoned: bool = False  # a synchronising literal the server refused: never sent


@dataclass
class Replay:
    trace: Trace
    events: dict[Side, list[Frame | LiteralChunk]] = field(
        default_factory=lambda: {Side.CLIENT: [], Side.SERVER: []}
    )
    messages: dict[Side, list[TraceMessage]] = field(
        default_factory=lambda: {Side.CLIENT: [], Side.SERVER: []}
    )
    error: ProtocolError | None = None
    error_lineno: int | None = None
    ends: dict[Side, EndOfStream] = field(default_factory=dict)
    fed: dict[Side, bytearray] = field(
        default_factory=lambda: {Side.CLIENT: bytearray(), Side.SERVER: bytearray()}
    )

    def emitted(self, side: Side) -> bytes:
        return b"".join(e.raw if isinstance(e, Frame) else e.data for e in self.events[side])


class _Assembler:
    """Groups one side's events into messages."""

    def __init__(self, side: Side, out: list[TraceMessage]) -> None:
        self.side = side
        self.out = out
        self.frames: list[Frame] = []
        self.data = bytearray()
        self.lineno = 0

    def add(self, event: Frame | LiteralChunk, lineno: int) -> None:
        if isinstance(event, LiteralChunk):
            self.data += event.data
            return
        if event.first and self.frames:
            # The previous message announced a synchronising literal and the server
            # answered with a tagged reply instead of "+": it ended there.
            self._close(abandoned=True)
        if not self.frames:
            self.lineno = lineno
        self.frames.append(event)
        self.data += event.raw
        if event.final:
            self._close(abandoned=False)

    def _close(self, *, abandoned: bool) -> None:
        first = self.frames[0]
        self.out.append(
            TraceMessage(
                self.side, first.kind, self.frames, bytes(self.data), self.lineno, abandoned
            )
        )
        self.frames = []
        self.data = bytearray()

    def finish(self) -> None:
        if self.frames:
            self._close(abandoned=True)


def replay(trace: Trace) -> Replay:
    result = Replay(trace)
    conversation = Conversation()
    assemblers = {
        Side.CLIENT: _Assembler(Side.CLIENT, result.messages[Side.CLIENT]),
        Side.SERVER: _Assembler(Side.SERVER, result.messages[Side.SERVER]),
    }
    next_event = {
        Side.CLIENT: conversation.next_client_event,
        Side.SERVER: conversation.next_server_event,
    }

    def drain(lineno: int) -> None:
        progress = True
        while progress:
            progress = False
            for side in (Side.SERVER, Side.CLIENT):
                while True:
                    event = next_event[side]()
                    if isinstance(event, Wait):
                        break
                    if isinstance(event, EndOfStream):
                        result.ends[side] = event
                        break
                    result.events[side].append(event)
                    assemblers[side].add(event, lineno)
                    progress = True

    lineno = 0
    try:
        for chunk in trace.chunks():
            lineno = chunk.lineno
            if chunk.side is Side.CLIENT:
                conversation.receive_client(chunk.data)
            else:
                conversation.receive_server(chunk.data)
            result.fed[chunk.side] += chunk.data
            drain(lineno)
        conversation.receive_client(b"")
        conversation.receive_server(b"")
        drain(lineno)
    except ProtocolError as error:
        result.error = error
        result.error_lineno = lineno
    for assembler in assemblers.values():
        assembler.finish()
    return result


@functools.cache
def replay_file(name: str) -> Replay:
    return replay(load_trace(TRACE_DIR_PATHS[name]))


def parse_message(message: TraceMessage) -> Message:
    if message.side is Side.SERVER:
        return parse_response(message.data)
    if message.kind is FrameKind.COMMAND:
        return parse_command(message.data)
    return parse_frame(message.frames[0])


# ------------------------------------------------------------------ the trace files

TRACE_DIR_PATHS: dict[str, Path] = {path.name: path for path in trace_paths()}

# Built into the test so that it means something even without the trace directory.
INLINE_TRACES = {
    "inline-login-literal": """\
# inline trace: a synchronising literal, a refused one, a fetch with a literal
S: * OK [CAPABILITY IMAP4rev1 LITERAL+] ready
C: a1 LOGIN {3}
S: + go ahead
C+ joe
C:  "pass word"
S: a1 OK logged in
C: a2 SELECT INBOX
S: * 2 EXISTS
S: a2 OK [READ-WRITE] done
C: a3 FETCH 1 BODY[]
S: * 1 FETCH (BODY[] {12}
S| line one
S+ xx
S:  UID 7)
S: a3 OK done
C: a4 APPEND INBOX {999}
S: a4 NO [OVERQUOTA] no room
C: a5 APPEND INBOX (\\Seen) {4+}
C+ abcd
C:
S: a5 OK [APPENDUID 1 8] done
C: a6 LOGOUT
S: * BYE bye
S: a6 OK done
""",
    "inline-idle-authenticate": """\
S: * OK ready
C: a1 AUTHENTICATE PLAIN
S: +\x20
C: AGpvZQBzZWNyZXQ=
S: a1 OK done
C: a2 IDLE
S: + idling
S: * 3 EXISTS
C: DONE
S: a2 OK IDLE done
""",
}


def _all_traces() -> list[object]:
    params: list[object] = [pytest.param(name, id=name) for name in TRACE_DIR_PATHS]
    params += [pytest.param(name, id=name) for name in INLINE_TRACES]
    return params


@functools.cache
def get_replay(name: str) -> Replay:
    if name in INLINE_TRACES:
        return replay(parse_trace(INLINE_TRACES[name], name))
    return replay_file(name)


# A trace may end with something the proxy refuses by design.
EXPECTED_ERRORS = {
    # RFC 4978: after "c OK DEFLATE active" the traffic is compressed and cannot be
    # inspected; the codec says so with a fatal error on the client side.
    "rfc4978.imap": "COMPRESS",
}
# Messages that are invalid on purpose (the server answers them with BAD).
EXPECTED_PARSE_ERRORS = {
    # RFC 3501/9051 §7.1.3 "...empty line..." -> "* BAD Empty command line"
    (Side.CLIENT, FrameKind.COMMAND, b"\r\n"),
}


def test_trace_directory_has_traces() -> None:
    """The trace files exist (tests/traces/README.md describes them)."""
    assert len(TRACE_DIR_PATHS) >= 4
    assert "rfc3501-sample.imap" in TRACE_DIR_PATHS


# ------------------------------------------------------------------ (a) no errors


@pytest.mark.parametrize("name", _all_traces())
def test_a_no_protocol_error(name: str) -> None:
    result = get_replay(name)
    expected = EXPECTED_ERRORS.get(name)
    if expected is None:
        assert result.error is None, f"line {result.error_lineno}: {result.error!r}"
        assert result.ends == {
            Side.CLIENT: EndOfStream(Side.CLIENT, clean=True, pending=0),
            Side.SERVER: EndOfStream(Side.SERVER, clean=True, pending=0),
        }
    else:
        assert result.error is not None
        assert expected in result.error.message
        assert result.error.fatal
        assert result.error.reply.startswith(b"* BYE ")
        last_line = result.trace.lines[-1]
        assert result.error_lineno == last_line.lineno


# ------------------------------------------------------------------ (b) byte-exact


@pytest.mark.parametrize("side", [Side.CLIENT, Side.SERVER])
@pytest.mark.parametrize("name", _all_traces())
def test_b_bytes_reemitted_exactly(name: str, side: Side) -> None:
    result = get_replay(name)
    emitted = result.emitted(side)
    if result.error is None:
        assert emitted == result.trace.stream(side)
    else:
        # Everything before the line that raised came out; the line itself did not.
        fed = bytes(result.fed[side])
        last = result.trace.lines[-1]
        if last.side is side:
            assert emitted == fed[: len(fed) - len(last.wire_bytes)]
        else:
            assert emitted == fed


@pytest.mark.parametrize("name", _all_traces())
def test_b_messages_are_framed_at_trace_lines(name: str) -> None:
    """Each protocol line that is not the continuation of a literal starts a message."""
    result = get_replay(name)
    for side in (Side.CLIENT, Side.SERVER):
        starts = 0
        after_literal = False
        for line in result.trace.lines:
            if line.side is not side:
                continue
            if line.kind is LineKind.PROTOCOL:
                if not after_literal:
                    starts += 1
                after_literal = False
            else:
                after_literal = True
        messages = result.messages[side]
        if result.error is not None and result.trace.lines[-1].side is side:
            starts -= 1
        assert len(messages) == starts


# ------------------------------------------------------------------ (c) everything parses


@pytest.mark.parametrize("name", _all_traces())
def test_c_every_message_parses(name: str) -> None:
    result = get_replay(name)
    failures: list[str] = []
    for side in (Side.CLIENT, Side.SERVER):
        for message in result.messages[side]:
            expect_error = (side, message.kind, message.data) in EXPECTED_PARSE_ERRORS
            try:
                parse_message(message)
            except ParseError as error:
                if not expect_error:
                    failures.append(
                        f"line {message.lineno}: {error.message} at {error.offset}: "
                        f"{message.data[:100]!r}"
                    )
            else:
                if expect_error:
                    failures.append(f"line {message.lineno}: parsed {message.data!r}")
    assert not failures, "\n".join(failures)


# ------------------------------------------------------------------ (d) structure

Check = Message | Callable[[Message], bool]


def q(text: str) -> Quoted:
    return Quoted(text.encode())


def plist(*items: Token) -> ParenList:
    return ParenList(tuple(items))


def cmd(tag: str, name: str, *args: Token, truncated: bool = False) -> Command:
    return Command(tag.encode(), name, tuple(args), truncated)


def status(
    tag: str | None, name: str, text: str, code: ResponseCode | None = None
) -> StatusResponse:
    return StatusResponse(None if tag is None else tag.encode(), name, code, text.encode())


def sync_literal(text: str) -> Literal:
    value = text.encode()
    return Literal(value, LiteralSpec(len(value), sync=True))


def plus_literal(text: str, *, binary: bool = False) -> Literal:
    value = text.encode()
    return Literal(value, LiteralSpec(len(value), sync=False, binary=binary, nonsync_marker=True))


def fetch_items(message: Message) -> dict[str, Token]:
    assert isinstance(message, DataResponse)
    assert message.name == "FETCH"
    (items,) = message.args
    assert isinstance(items, ParenList)
    keys = items.items[0::2]
    values = items.items[1::2]
    assert all(isinstance(key, Atom) for key in keys)
    return {key.value.upper(): value for key, value in zip(keys, values, strict=True)}  # type: ignore[union-attr]


def has_header_literal(size: int, start: bytes) -> Callable[[Message], bool]:
    def check(message: Message) -> bool:
        literal = next(v for k, v in fetch_items(message).items() if k.startswith("BODY["))
        return (
            isinstance(literal, Literal)
            and literal.spec == LiteralSpec(size, sync=False)
            and literal.value.startswith(start)
            and literal.value.endswith(b"\r\n\r\n")
        )

    return check


def sample_fetch_full(message: Message) -> bool:
    items = fetch_items(message)
    envelope = items["ENVELOPE"]
    body = items["BODY"]
    assert isinstance(envelope, ParenList)
    assert isinstance(body, ParenList)
    cc = envelope.items[6]
    return (
        items["FLAGS"] == plist(Atom("\\Seen"))
        and items["RFC822.SIZE"] == Number(4286)
        and len(envelope.items) == 10
        and isinstance(cc, ParenList)
        and len(cc.items) == 2  # two addresses, written without a space between them
        and cc.items[1] == plist(q("John Klensin"), NIL, q("KLENSIN"), q("MIT.EDU"))
        and body.items[:2] == (q("TEXT"), q("PLAIN"))
        and body.items[-2:] == (Number(3028), Number(92))
    )


def multipart_bodystructure(message: Message) -> bool:
    structure = fetch_items(message)["BODYSTRUCTURE"]
    assert isinstance(structure, ParenList)
    first, second, subtype = structure.items
    return (
        isinstance(first, ParenList)
        and first.items[:2] == (q("TEXT"), q("PLAIN"))
        and isinstance(second, ParenList)
        and second.items[5] == q("BASE64")
        and subtype == q("MIXED")
    )


def rfc3516_multipart(message: Message) -> bool:
    structure = fetch_items(message)["BODYSTRUCTURE"]
    assert isinstance(structure, ParenList)
    return len(structure.items) == 4 and structure.items[-1] == q("MIXED")


def four_namespaces(message: Message) -> bool:
    assert isinstance(message, DataResponse)
    personal, other, shared = message.args
    return (
        personal == plist(plist(q(""), q("/")))
        and other == plist(plist(q("~"), q("/")))
        and isinstance(shared, ParenList)
        and len(shared.items) == 4
    )


def capabilities(*expected: str) -> Callable[[Message], bool]:
    return lambda message: capabilities_of(message) == expected


def auth_data_starting(prefix: bytes) -> Callable[[Message], bool]:
    return lambda message: (
        isinstance(message, AuthData) and message.data.reveal().startswith(prefix)
    )


def continuation_starting(prefix: bytes) -> Callable[[Message], bool]:
    return lambda message: (
        isinstance(message, ContinuationRequest) and message.text.startswith(prefix)
    )


APPEND_3501 = b"Date: Mon, 7 Feb 1994 21:52:25 -0800 (PST)\r\nFrom: Fred Foobar"

# (file, side, start of the message's bytes, which match (0 = first), expected)
EXPECTED: list[tuple[str, Side, bytes, int, Check]] = [
    # --- RFC 3501 §8 sample connection
    (
        "rfc3501-sample.imap",
        Side.SERVER,
        b"* OK IMAP4rev1",
        0,
        status(None, "OK", "IMAP4rev1 Service Ready"),
    ),
    (
        "rfc3501-sample.imap",
        Side.CLIENT,
        b"a001 login",
        0,
        cmd("a001", "LOGIN", Atom("mrc"), Secret(Atom("secret"))),
    ),
    (
        "rfc3501-sample.imap",
        Side.CLIENT,
        b"a002 select inbox",
        0,
        cmd("a002", "SELECT", Atom("inbox")),
    ),
    ("rfc3501-sample.imap", Side.SERVER, b"* 18 EXISTS", 0, DataResponse("EXISTS", 18)),
    ("rfc3501-sample.imap", Side.SERVER, b"* 2 RECENT", 0, DataResponse("RECENT", 2)),
    (
        "rfc3501-sample.imap",
        Side.SERVER,
        b"* FLAGS",
        0,
        DataResponse(
            "FLAGS",
            None,
            (
                plist(
                    *(Atom(f"\\{f}") for f in ["Answered", "Flagged", "Deleted", "Seen", "Draft"])
                ),
            ),
        ),
    ),
    (
        "rfc3501-sample.imap",
        Side.SERVER,
        b"* OK [UNSEEN 17]",
        0,
        status(None, "OK", "Message 17 is the first unseen message", ResponseCode("UNSEEN", b"17")),
    ),
    (
        "rfc3501-sample.imap",
        Side.SERVER,
        b"* OK [UIDVALIDITY",
        0,
        status(None, "OK", "UIDs valid", ResponseCode("UIDVALIDITY", b"3857529045")),
    ),
    (
        "rfc3501-sample.imap",
        Side.SERVER,
        b"a002 OK",
        0,
        status("a002", "OK", "SELECT completed", ResponseCode("READ-WRITE")),
    ),
    (
        "rfc3501-sample.imap",
        Side.CLIENT,
        b"a003 fetch 12 full",
        0,
        cmd("a003", "FETCH", Number(12), Atom("full")),
    ),
    ("rfc3501-sample.imap", Side.SERVER, b"* 12 FETCH (FLAGS", 0, sample_fetch_full),
    (
        "rfc3501-sample.imap",
        Side.CLIENT,
        b"a004 fetch 12 body[header]",
        0,
        cmd("a004", "FETCH", Number(12), Atom("body[header]")),
    ),
    (
        "rfc3501-sample.imap",
        Side.SERVER,
        b"* 12 FETCH (BODY[HEADER] {342}",
        0,
        has_header_literal(342, b"Date: Wed, 17 Jul 1996 02:23:25 -0700 (PDT)\r\n"),
    ),
    (
        "rfc3501-sample.imap",
        Side.CLIENT,
        b"a005 store",
        0,
        cmd("a005", "STORE", Number(12), Atom("+flags"), Atom("\\deleted")),
    ),
    ("rfc3501-sample.imap", Side.CLIENT, b"a006 logout", 0, cmd("a006", "LOGOUT")),
    (
        "rfc3501-sample.imap",
        Side.SERVER,
        b"* BYE",
        0,
        status(None, "BYE", "IMAP4rev1 server terminating connection"),
    ),
    # --- RFC 3501 §6 / §7 examples
    (
        "rfc3501-examples.imap",
        Side.SERVER,
        b"* CAPABILITY",
        0,
        capabilities("IMAP4REV1", "STARTTLS", "AUTH=GSSAPI", "LOGINDISABLED"),
    ),
    (
        "rfc3501-examples.imap",
        Side.CLIENT,
        b"A001 AUTHENTICATE GSSAPI",
        0,
        cmd("A001", "AUTHENTICATE", Atom("GSSAPI")),
    ),
    ("rfc3501-examples.imap", Side.CLIENT, b"YIIB+wYJ", 0, auth_data_starting(b"YIIB+wYJKoZI")),
    ("rfc3501-examples.imap", Side.CLIENT, b"\r\n", 0, AuthData(Secret(b""))),
    ("rfc3501-examples.imap", Side.SERVER, b"+ YGgG", 0, continuation_starting(b"YGgGCSqG")),
    ("rfc3501-examples.imap", Side.SERVER, b"+ \r\n", 0, ContinuationRequest(b"")),
    (
        "rfc3501-examples.imap",
        Side.CLIENT,
        b"A142 SELECT INBOX",
        0,
        cmd("A142", "SELECT", Atom("INBOX")),
    ),
    (
        "rfc3501-examples.imap",
        Side.SERVER,
        b"* OK [PERMANENTFLAGS",
        0,
        status(None, "OK", "Limited", ResponseCode("PERMANENTFLAGS", b"(\\Deleted \\Seen \\*)")),
    ),
    (
        "rfc3501-examples.imap",
        Side.CLIENT,
        b'A682 LIST "" *',
        0,
        cmd("A682", "LIST", q(""), SequenceSet("*")),
    ),
    (
        "rfc3501-examples.imap",
        Side.SERVER,
        b'* LIST (\\Noselect) "/" foo',
        0,
        DataResponse("LIST", None, (plist(Atom("\\Noselect")), q("/"), Atom("foo"))),
    ),
    (
        "rfc3501-examples.imap",
        Side.SERVER,
        b"* STATUS blurdybloop",
        0,
        DataResponse(
            "STATUS",
            None,
            (
                Atom("blurdybloop"),
                plist(Atom("MESSAGES"), Number(231), Atom("UIDNEXT"), Number(44292)),
            ),
        ),
    ),
    (
        "rfc3501-examples.imap",
        Side.CLIENT,
        b"A003 APPEND saved-messages",
        0,
        lambda m: (
            isinstance(m, Command)
            and m.args[:2] == (Atom("saved-messages"), plist(Atom("\\Seen")))
            and isinstance(m.args[2], Literal)
            and m.args[2].spec == LiteralSpec(310, sync=True)
            and m.args[2].value.startswith(APPEND_3501)
            and len(m.args) == 3
        ),
    ),
    (
        "rfc3501-examples.imap",
        Side.CLIENT,
        b"A284 SEARCH CHARSET UTF-8 TEXT {6}",
        0,
        cmd("A284", "SEARCH", Atom("CHARSET"), Atom("UTF-8"), Atom("TEXT"), sync_literal("XXXXXX")),
    ),
    (
        "rfc3501-examples.imap",
        Side.SERVER,
        b"* SEARCH 2 84 882",
        0,
        DataResponse("SEARCH", None, (Number(2), Number(84), Number(882))),
    ),
    ("rfc3501-examples.imap", Side.SERVER, b"* SEARCH\r\n", 0, DataResponse("SEARCH")),
    (
        "rfc3501-examples.imap",
        Side.CLIENT,
        b"A654 FETCH 2:4",
        0,
        cmd(
            "A654",
            "FETCH",
            SequenceSet("2:4"),
            plist(Atom("FLAGS"), Atom("BODY[HEADER.FIELDS (DATE FROM)]")),
        ),
    ),
    (
        "rfc3501-examples.imap",
        Side.SERVER,
        b"* 2 FETCH (FLAGS (\\Seen) BODY[HEADER.FIELDS",
        0,
        has_header_literal(91, b"Date: Wed, 17 Jul 1996"),
    ),
    (
        "rfc3501-examples.imap",
        Side.CLIENT,
        b"A999 UID FETCH",
        0,
        cmd("A999", "UID FETCH", SequenceSet("4827313:4828442"), Atom("FLAGS")),
    ),
    (
        "rfc3501-examples.imap",
        Side.SERVER,
        b"* 23 FETCH",
        0,
        DataResponse(
            "FETCH",
            23,
            (plist(Atom("FLAGS"), plist(Atom("\\Seen")), Atom("UID"), Number(4827313)),),
        ),
    ),
    ("rfc3501-examples.imap", Side.CLIENT, b"A442 XPIG-LATIN", 0, cmd("A442", "XPIG-LATIN")),
    (
        "rfc3501-examples.imap",
        Side.SERVER,
        b"* XPIG-LATIN",
        0,
        DataResponse(
            "XPIG-LATIN",
            None,
            tuple(Atom(w) for w in ["ow-nay", "eaking-spay", "ig-pay", "atin-lay"]),
        ),
    ),
    (
        "rfc3501-examples.imap",
        Side.SERVER,
        b"A223 NO",
        0,
        status("A223", "NO", "COPY failed: disk is full"),
    ),
    (
        "rfc3501-examples.imap",
        Side.SERVER,
        b"* OK [ALERT]",
        0,
        status(None, "OK", "System shutdown in 10 minutes", ResponseCode("ALERT")),
    ),
    # --- RFC 9051 examples and sample
    (
        "rfc9051-examples.imap",
        Side.CLIENT,
        b"A001 LOGIN {11}",
        0,
        cmd("A001", "LOGIN", sync_literal("FRED FOOBAR"), Secret(sync_literal("fat man"))),
    ),
    (
        "rfc9051-examples.imap",
        Side.CLIENT,
        b"A044 BLURDYBLOOP",
        0,
        cmd("A044", "BLURDYBLOOP", LiteralRef(LiteralSpec(102856, sync=True)), truncated=True),
    ),
    (
        "rfc9051-examples.imap",
        Side.SERVER,
        b"A044 BAD",
        0,
        status("A044", "BAD", 'No such command as "BLURDYBLOOP"'),
    ),
    (
        "rfc9051-examples.imap",
        Side.CLIENT,
        b"A285 SEARCH CHARSET UTF-8 TEXT {12}",
        0,
        cmd("A285", "SEARCH", Atom("CHARSET"), Atom("UTF-8"), Atom("TEXT"), sync_literal("отпуск")),
    ),
    (
        "rfc9051-examples.imap",
        Side.CLIENT,
        b"P283 SEARCH",
        0,
        cmd(
            "P283",
            "SEARCH",
            Atom("CHARSET"),
            Atom("UTF-8"),
            plist(Atom("OR"), SequenceSet("$"), SequenceSet("1,3000:3021")),
            Atom("TEXT"),
            plus_literal("мать"),
        ),
    ),
    (
        "rfc9051-examples.imap",
        Side.SERVER,
        b'* ESEARCH (TAG "A282") MIN 2 COUNT 3',
        0,
        DataResponse(
            "ESEARCH",
            None,
            (plist(Atom("TAG"), q("A282")), Atom("MIN"), Number(2), Atom("COUNT"), Number(3)),
        ),
    ),
    (
        "rfc9051-examples.imap",
        Side.SERVER,
        b"A003 OK [APPENDUID",
        0,
        status("A003", "OK", "APPEND completed", ResponseCode("APPENDUID", b"38505 3955")),
    ),
    (
        "rfc9051-examples.imap",
        Side.CLIENT,
        b"A003 APPEND saved-messages (\\Seen) {297+}",
        0,
        lambda m: (
            isinstance(m, Command)
            and isinstance(m.args[-1], Literal)
            and m.args[-1].spec == LiteralSpec(297, sync=False, nonsync_marker=True)
        ),
    ),
    ("rfc9051-examples.imap", Side.CLIENT, b"DONE", 0, IdleDone(True)),
    (
        "rfc9051-examples.imap",
        Side.SERVER,
        b"* ENABLED CONDSTORE QRESYNC",
        0,
        DataResponse("ENABLED", None, (Atom("CONDSTORE"), Atom("QRESYNC"))),
    ),
    (
        "rfc9051-examples.imap",
        Side.CLIENT,
        b"a UID MOVE",
        0,
        cmd("a", "UID MOVE", SequenceSet("42:69"), Atom("foo")),
    ),
    (
        "rfc9051-examples.imap",
        Side.SERVER,
        b"* OK [COPYUID 432432",
        0,
        status(None, "OK", "", ResponseCode("COPYUID", b"432432 42:69 1202:1229")),
    ),
    ("rfc9051-examples.imap", Side.SERVER, b"* 2 FETCH (BODYSTRUCTURE", 0, multipart_bodystructure),
    (
        "rfc9051-examples.imap",
        Side.SERVER,
        b'* NAMESPACE (("" "/")) (("~" "/")) (("#shared/"',
        0,
        four_namespaces,
    ),
    (
        "rfc9051-examples.imap",
        Side.SERVER,
        b'* LIST (\\Marked) ":" Tables',
        0,
        DataResponse(
            "LIST",
            None,
            (
                plist(Atom("\\Marked")),
                q(":"),
                Atom("Tables"),
                plist(
                    Atom("tablecloth"),
                    plist(plist(q("edge"), q("lacy")), plist(q("color"), q("red"))),
                    Atom("Sample"),
                    q("text"),
                ),
            ),
        ),
    ),
    (
        "rfc9051-sample.imap",
        Side.CLIENT,
        b"A001 AUTHENTICATE SCRAM-SHA-256",
        0,
        lambda m: (
            isinstance(m, Command)
            and m.args[0] == Atom("SCRAM-SHA-256")
            and isinstance(m.args[1], Secret)
        ),
    ),
    (
        "rfc9051-sample.imap",
        Side.SERVER,
        b'* LIST () "/" INBOX ("OLDNAME"',
        0,
        DataResponse(
            "LIST", None, (plist(), q("/"), Atom("INBOX"), plist(q("OLDNAME"), plist(q("inbox"))))
        ),
    ),
    # --- extensions
    (
        "rfc7888.imap",
        Side.CLIENT,
        b"A001 LOGIN {11+}",
        0,
        cmd("A001", "LOGIN", plus_literal("FRED FOOBAR"), Secret(plus_literal("fat man"))),
    ),
    (
        "rfc7888.imap",
        Side.CLIENT,
        b'A001 LOGIN "FRED FOOBAR"',
        0,
        cmd("A001", "LOGIN", q("FRED FOOBAR"), Secret(q("fat man"))),
    ),
    (
        "rfc3516.imap",
        Side.SERVER,
        b"* 1 FETCH (BINARY[2]<0> ~{6}",
        0,
        DataResponse(
            "FETCH",
            1,
            (
                plist(
                    Atom("BINARY[2]<0>"),
                    Literal(b"GIF89a", LiteralSpec(6, sync=False, binary=True)),
                ),
            ),
        ),
    ),
    ("rfc3516.imap", Side.SERVER, b"* 1 FETCH (BODYSTRUCTURE", 0, rfc3516_multipart),
    (
        "rfc3516.imap",
        Side.CLIENT,
        b"b9 APPEND Drafts",
        0,
        lambda m: (
            isinstance(m, Command)
            and isinstance(m.args[-1], Literal)
            and m.args[-1].spec == LiteralSpec(182, sync=True, binary=True)
        ),
    ),
    (
        "rfc3516.imap",
        Side.SERVER,
        b"b7 NO",
        0,
        status("b7", "NO", "Can't decode x-uuencode", ResponseCode("UNKNOWN-CTE")),
    ),
    (
        "rfc4959.imap",
        Side.CLIENT,
        b"A01 AUTHENTICATE PLAIN dGVz",
        0,
        cmd("A01", "AUTHENTICATE", Atom("PLAIN"), Secret(Atom("dGVzdAB0ZXN0AHRlc3Q="))),
    ),
    (
        "rfc4959.imap",
        Side.CLIENT,
        b"A01 AUTHENTICATE EXTERNAL =",
        0,
        cmd("A01", "AUTHENTICATE", Atom("EXTERNAL"), Secret(Atom("="))),
    ),
    (
        "rfc4959.imap",
        Side.CLIENT,
        b"dGVzdAB0ZXN0AHRlc3Q=",
        0,
        AuthData(Secret(b"dGVzdAB0ZXN0AHRlc3Q=")),
    ),
    (
        "rfc2971.imap",
        Side.CLIENT,
        b"a023 ID",
        0,
        cmd(
            "a023",
            "ID",
            plist(
                q("name"),
                q("sodr"),
                q("version"),
                q("19.34"),
                q("vendor"),
                q("Pink Floyd Music Limited"),
            ),
        ),
    ),
    ("rfc2971.imap", Side.SERVER, b"* ID NIL", 0, DataResponse("ID", None, (NIL,))),
    ("rfc2177.imap", Side.SERVER, b"+ idling", 0, ContinuationRequest(b"idling")),
    (
        "rfc2177.imap",
        Side.SERVER,
        b"* OK [UIDVALIDITY 1]",
        0,
        status(None, "OK", "", ResponseCode("UIDVALIDITY", b"1")),
    ),
    (
        "rfc2177.imap",
        Side.SERVER,
        b"* 4 FETCH",
        0,
        lambda m: fetch_items(m)["INTERNALDATE"] == q(" 7-Feb-1994 21:52:25 -0800"),
    ),
    (
        "rfc3501-preauth.imap",
        Side.SERVER,
        b"* PREAUTH",
        0,
        status(None, "PREAUTH", "IMAP4rev1 server logged in as Smith"),
    ),
    ("rfc4978.imap", Side.CLIENT, b"c compress deflate", 1, cmd("c", "COMPRESS", Atom("deflate"))),
    ("rfc3501-starttls.imap", Side.CLIENT, b"a002 STARTTLS", 0, cmd("a002", "STARTTLS")),
]


def _expected_id(entry: tuple[str, Side, bytes, int, Check]) -> str:
    name, side, prefix, index, _check = entry
    text = prefix.decode("utf-8", "replace").strip()[:40] or "<empty>"
    return f"{name}:{side.value[0].upper()}:{text}#{index}"


@pytest.mark.parametrize(
    ("name", "side", "prefix", "index", "check"),
    [pytest.param(*entry, id=_expected_id(entry)) for entry in EXPECTED],
)
def test_d_expected_structure(
    name: str, side: Side, prefix: bytes, index: int, check: Check
) -> None:
    if name not in TRACE_DIR_PATHS:
        pytest.skip(f"{name} is not in tests/traces")
    matches = [m for m in replay_file(name).messages[side] if m.data.startswith(prefix)]
    assert len(matches) > index, f"no message #{index} starting with {prefix!r}"
    parsed = parse_message(matches[index])
    if callable(check):
        assert check(parsed), parsed
    else:
        assert parsed == check


def test_d_inline_trace_structure() -> None:
    result = get_replay("inline-login-literal")
    client = [parse_message(m) for m in result.messages[Side.CLIENT]]
    assert client[0] == cmd("a1", "LOGIN", sync_literal("joe"), Secret(q("pass word")))
    refused = result.messages[Side.CLIENT][3]
    assert refused.abandoned
    assert client[3] == cmd(
        "a4", "APPEND", Atom("INBOX"), LiteralRef(LiteralSpec(999, sync=True)), truncated=True
    )
    assert client[4] == cmd(
        "a5", "APPEND", Atom("INBOX"), plist(Atom("\\Seen")), plus_literal("abcd")
    )
    server = [parse_message(m) for m in result.messages[Side.SERVER]]
    assert (
        DataResponse(
            "FETCH",
            1,
            (
                plist(
                    Atom("BODY[]"),
                    Literal(b"line one\r\nxx", LiteralSpec(12, False)),
                    Atom("UID"),
                    Number(7),
                ),
            ),
        )
        in server
    )


def test_d_enough_expectations() -> None:
    assert len(EXPECTED) >= 30
    assert len({entry[0] for entry in EXPECTED}) >= 8


# ------------------------------------------------------------------ (e) re-encoding


@pytest.mark.parametrize("name", _all_traces())
def test_e_reencoding_is_stable(name: str) -> None:
    result = get_replay(name)
    failures: list[str] = []
    checked = 0
    for side in (Side.CLIENT, Side.SERVER):
        for message in result.messages[side]:
            try:
                parsed = parse_message(message)
            except ParseError:
                continue  # reported by test_c_every_message_parses
            if isinstance(parsed, (AuthData, IdleDone)):
                continue  # not encoder input: forwarded as received
            try:
                if isinstance(parsed, Command):
                    if parsed.truncated:
                        with pytest.raises(EncodeError):
                            encode_command(parsed)
                        continue
                    again: Message = parse_command(encode_command(parsed))
                else:
                    again = parse_response(encode_response(parsed))
            except (EncodeError, ParseError) as error:
                failures.append(f"line {message.lineno}: {error!r}: {message.data[:100]!r}")
                continue
            checked += 1
            if normalise_message(again) != normalise_message(parsed):
                failures.append(f"line {message.lineno}: {parsed!r} != {again!r}")
    assert not failures, "\n".join(failures)
    assert checked > 0


# ------------------------------------------------------------------ the loader itself


def test_loader_builds_wire_bytes() -> None:
    trace = parse_trace(
        "# comment\n\nS: * OK hi\nC: a LOGIN {5}\nS: + \nC| ab\nC+ c\nC:  x\nC:\nS:\n"
    )
    assert trace.stream(Side.CLIENT) == b"a LOGIN {5}\r\nab\r\nc x\r\n\r\n"
    assert trace.stream(Side.SERVER) == b"* OK hi\r\n+ \r\n\r\n"
    assert [chunk.lineno for chunk in trace.chunks()] == [3, 4, 5, 6, 7, 8, 9, 10]
    assert [line.text for line in trace.protocol_lines(Side.CLIENT)] == ["a LOGIN {5}", " x", ""]


def test_loader_counts_utf8_octets() -> None:
    word = "отпуск"
    trace = parse_trace("C: a SEARCH TEXT {12}\nS: + \nC+ " + word + "\nC:\n")
    assert trace.stream(Side.CLIENT) == b"a SEARCH TEXT {12}\r\n" + word.encode() + b"\r\n"


@pytest.mark.parametrize(
    "text", ["X: hello\n", "C; hello\n", "Cx hello\n", "C:hello\n", "C: a\r\nS: b\r\n"]
)
def test_loader_rejects_bad_lines(text: str) -> None:
    with pytest.raises(TraceFormatError):
        parse_trace(text)


@pytest.mark.parametrize("name", list(TRACE_DIR_PATHS))
def test_loader_reads_every_trace_file(name: str) -> None:
    trace = load_trace(TRACE_DIR_PATHS[name])
    assert trace.lines
    assert trace.lines[0].side is Side.SERVER  # every file starts with the greeting
    assert trace.stream(Side.SERVER)
