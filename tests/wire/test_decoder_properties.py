"""Property tests of the framing layer: chunk-boundary independence, byte-exactness and
robustness against arbitrary input, plus a short run of ``bench/fuzz_decoder.py``.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imapproxy.wire import (
    Decoder,
    EndOfStream,
    Frame,
    FrameKind,
    Hold,
    Limits,
    LiteralChunk,
    ProtocolError,
    Side,
    Wait,
)
from imapproxy.wire.events import Event
from tests.wire.helpers import (
    Chunker,
    Failure,
    Script,
    bytewise,
    fixed,
    reassemble,
    replay,
    script_bytes,
    split_at,
    whole,
)

C = Side.CLIENT
S = Side.SERVER

# Small enough that streaming (inline 64) happens inside the corpus, large enough that no
# corpus line or literal hits a limit.
CORPUS_LIMITS = Limits(
    max_line_bytes=2048,
    inline_literal_bytes=64,
    max_literal_bytes_unauthenticated=4096,
    max_literal_bytes=1 << 20,
    max_held_bytes=4096,
)

GREET = b"* OK [CAPABILITY IMAP4rev1 LITERAL+ IDLE ID AUTH=PLAIN SASL-IR] ready\r\n"
GREET_MINUS = b"* OK [CAPABILITY IMAP4rev1 LITERAL- IDLE] ready\r\n"
LOGIN: Script = [
    (S, GREET),
    (C, b"a1 LOGIN alice secret\r\n"),
    (S, b"a1 OK [CAPABILITY IMAP4rev1 LITERAL+ IDLE MOVE] Logged in\r\n"),
]
BODY_200 = b"".join(b"Line %03d of the body\r\n" % i for i in range(10))[:200]
assert len(BODY_200) == 200
HEADER = (
    b"Date: Wed, 17 Jul 1996 02:23:25 -0700 (PDT)\r\n"
    b"From: Terry Gray <gray@cac.washington.edu>\r\n"
    b"Subject: IMAP4rev1 WG mtg summary and minutes\r\n"
    b"\r\n"
)

# Server lines longer than CORPUS_LIMITS.max_line_bytes: relayed in oversize pieces.
LONG_SEARCH = b"* SEARCH " + b" ".join(b"%d" % i for i in range(1, 1500)) + b"\r\n"
LONG_ENVELOPE = (
    b'ENVELOPE ("Mon, 1 Jan 2024 00:00:00 +0000" "hi" NIL NIL NIL ('
    + b"".join(b'(NIL NIL "user%04d" "example.org")' % i for i in range(150))
    + b") NIL NIL NIL NIL)"
)
assert len(LONG_SEARCH) > 3 * 2048 and len(LONG_ENVELOPE) > 2 * 2048

CORPUS: dict[str, Script] = {
    "long-server-lines": [
        *LOGIN,
        (C, b"s SELECT INBOX\r\n"),
        (S, b"* 1499 EXISTS\r\ns OK [READ-WRITE] " + b"t" * 3000 + b"\r\n"),
        (C, b"f SEARCH ALL\r\n"),
        (S, LONG_SEARCH + b"f OK " + b"done " * 600 + b"{5}\r\n"),
        (C, b"g NOOP\r\n"),
        (S, b"* OK [ALERT] " + b"!" * 5000 + b"\r\ng OK\r\n"),
    ],
    "long-envelope-then-literals": [
        *LOGIN,
        (C, b"f FETCH 1:2 (ENVELOPE BODY[])\r\n"),
        (
            S,
            b"* 1 FETCH (" + LONG_ENVELOPE + b" BODY[] {0012}\r\nhello\r\nworld)\r\n"
            b"* 2 FETCH ("
            + LONG_ENVELOPE
            + b" BODY[] {200}\r\n"
            + BODY_200
            + b" FLAGS ("
            + b"\\Seen " * 400
            + b"))\r\nf OK done\r\n",
        ),
    ],
    "rfc3501-session": [
        (S, b"* OK IMAP4rev1 Service Ready\r\n"),
        (C, b"a001 login mrc secret\r\n"),
        (S, b"a001 OK LOGIN completed\r\n"),
        (C, b"a002 select inbox\r\n"),
        (
            S,
            b"* 18 EXISTS\r\n* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n"
            b"* 2 RECENT\r\n* OK [UNSEEN 17] Message 17 is the first unseen message\r\n"
            b"* OK [UIDVALIDITY 3857529045] UIDs valid\r\n"
            b"a002 OK [READ-WRITE] SELECT completed\r\n",
        ),
        (C, b"a004 fetch 12 body[header]\r\n"),
        (
            S,
            b"* 12 FETCH (BODY[HEADER] {%d}\r\n" % len(HEADER)
            + HEADER
            + b")\r\na004 OK FETCH completed\r\n",
        ),
        (C, b"a005 store 12 +flags \\deleted\r\n"),
        (S, b"* 12 FETCH (FLAGS (\\Seen \\Deleted))\r\na005 OK +FLAGS completed\r\n"),
        (C, b"a006 logout\r\n"),
        (S, b"* BYE IMAP4rev1 server terminating connection\r\na006 OK LOGOUT completed\r\n"),
    ],
    "preauth-list-literal-names": [
        (S, b"* PREAUTH [CAPABILITY IMAP4rev1] welcome\r\n"),
        (C, b'l LIST "" *\r\n'),
        (
            S,
            b'* LIST (\\HasNoChildren) "/" INBOX\r\n'
            b'* LIST (\\HasNoChildren) "/" {9}\r\nfoo\r\nbar\r\n'
            b'* LIST () "/" {0}\r\n\r\n'
            b"l OK LIST completed\r\n",
        ),
    ],
    "append-sync-literal": [
        *LOGIN,
        (C, b"b APPEND INBOX (\\Seen) {11}\r\n"),
        (S, b"+ Ready for literal data\r\n"),
        (C, b"Hello world\r\n"),
        (S, b"b OK [APPENDUID 38505 3955] APPEND completed\r\n"),
    ],
    "append-sync-literal-sent-early": [
        *LOGIN,
        (C, b"b APPEND INBOX {11}\r\nHello world\r\nc NOOP\r\n"),
        (S, b"+ go ahead\r\n"),
        (S, b"b OK done\r\nc OK done\r\n"),
    ],
    "append-sync-literal-refused": [
        *LOGIN,
        (C, b"b APPEND nosuch {13}\r\n"),
        (S, b"b NO [TRYCREATE] no such mailbox\r\n"),
        (C, b"c CREATE nosuch\r\n"),
        (S, b"c OK done\r\n"),
    ],
    "append-refused-with-early-bytes": [
        *LOGIN,
        (C, b"b APPEND nosuch {10}\r\nc NOOP\r\n\r\n"),
        (S, b"b NO [TRYCREATE] no such mailbox\r\nc OK\r\n"),
    ],
    "append-big-sync-streamed": [
        *LOGIN,
        (C, b"b APPEND INBOX {200}\r\n"),
        (S, b"+ Ready\r\n"),
        (C, BODY_200 + b"\r\n"),
        (S, b"b OK done\r\n"),
    ],
    "multiappend-literal-plus": [
        *LOGIN,
        (
            C,
            b"m APPEND INBOX {3+}\r\nabc (\\Seen) {4+}\r\ndefg {100+}\r\n"
            + BODY_200[:100]
            + b"\r\n",
        ),
        (S, b"m OK [APPENDUID 1 5:7] done\r\n"),
    ],
    "catenate": [
        *LOGIN,
        (
            C,
            b'c APPEND Drafts CATENATE (URL "/Drafts;UIDVALIDITY=385759045/;UID=20/;section=1"'
            b' TEXT {42+}\r\n--------------030308070208000400050907\r\n URL "/INBOX;UID=3"'
            b" TEXT ~{5+}\r\n\x00\x01\x02\x03\x04)\r\n",
        ),
        (S, b"c OK [APPENDUID 385759045 45] CATENATE Completed\r\n"),
    ],
    "authenticate-plain": [
        (S, GREET),
        (C, b"a AUTHENTICATE PLAIN\r\n"),
        (S, b"+ \r\n"),
        (C, b"AGFsaWNlAHNlY3JldA==\r\n"),
        (S, b"a OK [CAPABILITY IMAP4rev1 IDLE] Success\r\n"),
        (C, b"b SELECT INBOX\r\n"),
        (S, b"* 1 EXISTS\r\nb OK [READ-WRITE] done\r\n"),
    ],
    "authenticate-sasl-ir": [
        (S, GREET),
        (C, b"a AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldA==\r\n"),
        (S, b"a OK Success\r\n"),
        (C, b"b NOOP\r\n"),
        (S, b"b OK\r\n"),
    ],
    "authenticate-multistep-pipelined": [
        (S, GREET),
        (C, b"a AUTHENTICATE SCRAM-SHA-1\r\nbiwsbj11c2VyLHI9ZnlrbytkMmxiYkZnT05S\r\n"),
        (S, b"+ cj1meWtvK2QybGJiRmdPTlJ2OXFreGRhd0wzcmZjTkhZSlkxWlZ2V1ZzN2oscz1RU1hDUitR\r\n"),
        (
            C,
            b"Yz1iaXdzLHI9ZnlrbytkMmxiYkZnT05Sdjlxa3hkYXdMM3JmY05IWUpZMVpWdldWczdqLHA9djBYOHYzQnoyVDBDSkdiSlF5RjBYK0hJNFRzPQ==\r\n",
        ),
        (S, b"+ dj1ybWY5cHFWOFM3c3VBb1pXamE0ZEpSa0ZzS1E9\r\n"),
        (C, b"\r\n"),
        (S, b"a OK done\r\n"),
    ],
    "authenticate-cancelled": [
        (S, GREET),
        (C, b"a AUTHENTICATE PLAIN\r\n"),
        (S, b"+ \r\n"),
        (C, b"*\r\n"),
        (S, b"a BAD cancelled\r\n"),
        (C, b"b LOGIN {5+}\r\nalice {6+}\r\nsecret\r\n"),
        (S, b"b OK\r\n"),
    ],
    "login-sync-literals": [
        (S, b"* OK ready\r\n"),
        (C, b"a LOGIN {5}\r\n"),
        (S, b"+ \r\n"),
        (C, b"alice {6}\r\n"),
        (S, b"+ \r\n"),
        (C, b"secret\r\n"),
        (S, b"a OK\r\n"),
    ],
    "idle": [
        *LOGIN,
        (C, b"s SELECT INBOX\r\n"),
        (S, b"s OK [READ-WRITE] done\r\n"),
        (C, b"i IDLE\r\n"),
        (S, b"+ idling\r\n"),
        (S, b"* 4 EXISTS\r\n* 3 EXPUNGE\r\n"),
        (C, b"DONE\r\n"),
        (S, b"i OK IDLE terminated\r\n"),
        (C, b"j NOOP\r\n"),
        (S, b"j OK\r\n"),
    ],
    "idle-refused": [
        *LOGIN,
        (C, b"i IDLE\r\nj NOOP\r\n"),
        (S, b"i BAD no mailbox selected\r\nj OK\r\n"),
    ],
    "idle-done-sent-early": [
        *LOGIN,
        (C, b"i IDLE\r\nDONE\r\n"),
        (S, b"+ idling\r\ni OK IDLE terminated\r\n"),
    ],
    "pipelined-out-of-order": [
        *LOGIN,
        (C, b"p1 NOOP\r\np2 SELECT INBOX\r\np3 UID FETCH 1:* (FLAGS)\r\np4 APPEND x {5}\r\n"),
        (S, b"* 1 FETCH (UID 1 FLAGS ())\r\np3 OK\r\np1 OK\r\n"),
        (S, b"p2 OK [READ-WRITE] done\r\n+ go\r\n"),
        (C, b"hello\r\n"),
        (S, b"p4 OK\r\n"),
    ],
    "fetch-binary-envelope-literals": [
        *LOGIN,
        (C, b"f UID FETCH 7 (ENVELOPE BINARY[1] BODY.PEEK[HEADER.FIELDS (SUBJECT)])\r\n"),
        (
            S,
            b'* 3 FETCH (UID 7 ENVELOPE ("Wed, 17 Jul 1996 02:23:25 -0700" {12}\r\n'
            b'Hello\r\nWorld ((NIL NIL {4}\r\njohn "x.org")) NIL NIL NIL NIL NIL NIL NIL)'
            b" BINARY[1] ~{6}\r\n\x00\x01\r\n\xfe\xff"
            b" BODY[HEADER.FIELDS (SUBJECT)] {17}\r\nSubject: hi\r\n\r\n\r\n)\r\n"
            b"f OK done\r\n",
        ),
    ],
    "fetch-streamed-bodies": [
        *LOGIN,
        (C, b"f FETCH 1:2 BODY[]\r\n"),
        (
            S,
            b"* 1 FETCH (BODY[] {200}\r\n"
            + BODY_200
            + b")\r\n* 2 FETCH (BODY[] {65}\r\n"
            + BODY_200[:65]
            + b" BODY[1] {64}\r\n"
            + BODY_200[:64]
            + b")\r\nf OK done\r\n",
        ),
    ],
    "status-lines-ending-in-braces": [
        (S, b"* OK [ALERT] maintenance {5}\r\n"),
        (C, b"a LOGIN alice secret\r\n"),
        (S, b"* NO warning {3}\r\na OK welcome {2}\r\n"),
        (C, b"b APPEND INBOX {3}\r\n"),
        (S, b"+ go {4}\r\n"),
        (C, b"abc\r\n"),
        (S, b"b BAD sorry {1}\r\n"),
    ],
    "bare-lf-and-zero-literals": [
        (S, b"* OK ready\n"),
        (C, b"a LOGIN {0}\n"),
        (S, b"+\n"),
        (C, b" {0+}\n\n"),
        (S, b"a NO empty\n"),
        (C, b"b NOOP\n"),
        (S, b"b OK\n"),
    ],
    "nul-and-8bit": [
        *LOGIN,
        (C, b'x SEARCH CHARSET UTF-8 SUBJECT "gr\xc3\xbc\xc3\x9fe"\r\n'),
        (S, b"* SEARCH 1 \xff 3\x00\r\nx OK\r\n"),
        (C, b"y APPEND INBOX ~{8+}\r\n\x00\x00\r\n\x00\r\n\x00\x00\r\n"),
        (S, b"y OK\r\n"),
    ],
    "literal-content-looks-like-protocol": [
        *LOGIN,
        (C, b"a APPEND INBOX {40+}\r\nb LOGOUT\r\nc STARTTLS\r\nd IDLE\r\n{5}\r\n{9}\r\n\r\n"),
        (S, b"a OK\r\n"),
        (C, b"e FETCH 1 BODY[]\r\n"),
        (S, b"* 1 FETCH (BODY[] {24}\r\ne OK done\r\n+ go\r\n* BYE\r\n)\r\ne OK\r\n"),
    ],
    "literal-minus": [
        (S, GREET_MINUS),
        (C, b"a LOGIN alice secret\r\n"),
        (S, b"a OK\r\n"),
        (C, b"b APPEND INBOX {4096+}\r\n" + b"-" * 4096 + b"\r\n"),
        (S, b"b OK\r\n"),
    ],
    "id-enable-namespace": [
        (S, GREET),
        (C, b'i ID ("name" {7+}\r\nmy mail "version" "1.0")\r\n'),
        (S, b'* ID ("name" "Dovecot") \r\ni OK\r\n'),
        (C, b"a LOGIN alice secret\r\ne ENABLE CONDSTORE\r\nn NAMESPACE\r\n"),
        (
            S,
            b'a OK\r\n* ENABLED CONDSTORE\r\ne OK\r\n* NAMESPACE (("" "/")) NIL NIL\r\nn OK\r\n',
        ),
    ],
    "select-close-logout": [
        *LOGIN,
        (C, b"s EXAMINE {7+}\r\nArchive\r\n"),
        (S, b"* 0 EXISTS\r\ns OK [READ-ONLY] done\r\n"),
        (C, b"u UNSELECT\r\n"),
        (S, b"u OK\r\n"),
        (C, b"z LOGOUT\r\n"),
        (S, b"* BYE bye\r\nz OK\r\n"),
    ],
}


def _no_failures(events: Sequence[object]) -> None:
    failures = [e for e in events if isinstance(e, Failure)]
    assert not failures, failures


# ============================================================ 1 + 13. exactness and chunking


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_corpus_is_framed_byte_exactly_and_ends_cleanly(name: str) -> None:
    script = CORPUS[name]
    result = replay(script, limits=CORPUS_LIMITS)
    for side in (C, S):
        events = result.events(side)
        _no_failures(events)
        assert reassemble(events) == script_bytes(script, side)
        assert events[-1] == EndOfStream(side, clean=True, pending=0)
    assert result.conversation.pending == {}


def test_corpus_covers_streaming_holds_and_several_kinds() -> None:
    kinds = set()
    streamed = 0
    oversize = 0
    for script in CORPUS.values():
        result = replay(script, limits=CORPUS_LIMITS)
        for e in result.client + result.server:
            if isinstance(e, Frame):
                kinds.add(e.kind)
                streamed += e.streamed
                oversize += e.oversize
    assert len(kinds) == 7  # every FrameKind occurs
    assert streamed >= 3
    assert oversize >= 10
    assert len(CORPUS) >= 25


CHUNKERS: dict[str, Chunker] = {
    "bytewise": bytewise,
    "2": fixed(2),
    "3": fixed(3),
    "7": fixed(7),
    "64": fixed(64),
}


@pytest.mark.parametrize("chunking", sorted(CHUNKERS))
@pytest.mark.parametrize("name", sorted(CORPUS))
def test_corpus_events_do_not_depend_on_chunking(name: str, chunking: str) -> None:
    # LiteralChunk events are merged before comparing: where a streamed literal is cut into
    # chunks depends on how its bytes arrived.  Frames must be equal as they are.
    script = CORPUS[name]
    reference = replay(script, limits=CORPUS_LIMITS, chunker=whole)
    chunked = replay(script, limits=CORPUS_LIMITS, chunker=CHUNKERS[chunking])
    for side in (C, S):
        assert chunked.normalised(side) == reference.normalised(side)
    assert chunked.conversation.phase is reference.conversation.phase
    assert chunked.conversation.capabilities == reference.conversation.capabilities


@pytest.mark.parametrize("name", sorted(CORPUS))
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_corpus_events_do_not_depend_on_random_split_points(name: str, data: st.DataObject) -> None:
    script = CORPUS[name]
    chunkers: list[Chunker] = []
    for _side, step in script:
        points = data.draw(st.lists(st.integers(0, len(step)), max_size=12), label="splits")
        chunkers.append(lambda b, p=points: split_at(b, p))
    reference = replay(script, limits=CORPUS_LIMITS)
    chunked = replay(script, limits=CORPUS_LIMITS, chunker=chunkers)
    for side in (C, S):
        assert chunked.normalised(side) == reference.normalised(side)


# ======================================================================= 14. robustness

SMALL = Limits(
    max_line_bytes=256,
    inline_literal_bytes=128,
    max_literal_bytes_unauthenticated=512,
    max_literal_bytes=4096,
    max_held_bytes=256,
    max_nonsync_literal_minus=64,
)


@dataclass
class Harness:
    """Drives one decoder, checking after every step that it behaves:

    * ``next_event`` returns an Event or a Wait, or raises ProtocolError (nothing else);
    * a fatal error is raised again on every later call;
    * after draining, the unframed bytes stay within one line + inline literals + held
      bytes + the last chunk fed;
    * the events follow the message grammar (chunks only inside a streamed literal, parts
      after the first marked ``first=False`` with the same tag and name);
    * if nothing failed, the events (plus what ``start_tls`` returned, plus what is still
      buffered) are exactly the bytes fed; ``check_exact(clean=True)`` (for well-formed
      input) requires that nothing failed, and that an ended stream was all given out.
    """

    decoder: Decoder
    fed: bytearray = field(default_factory=bytearray)
    out: bytearray = field(default_factory=bytearray)
    events: list[Event] = field(default_factory=list)
    error: ProtocolError | None = None
    any_error: bool = False
    first_error: ProtocolError | None = None  # fatal or not, for messages
    eof: bool = False
    eof_seen: bool = False
    tls_pending: bool = False  # STARTTLS was accepted: start_tls() is due
    last_chunk: int = 0
    # grammar state
    open_part: Frame | None = None  # last non-final part
    stream_left: int = 0

    @property
    def dead(self) -> bool:
        return self.error is not None or self.eof_seen

    def bound(self) -> int:
        d = self.decoder
        lim = d.limits
        held = lim.max_held_bytes
        if d.waiting_for is Hold.NONSYNC_LITERAL:
            held += d._held_before  # the client sends that literal without waiting
        return lim.max_line_bytes + lim.inline_literal_bytes + held + self.last_chunk

    def feed(self, data: bytes) -> Wait | None:
        if self.dead or self.eof:
            return None
        self.decoder.receive_data(data)
        self.fed += data
        self.last_chunk = len(data)
        return self.drain()

    def close(self) -> Wait | None:
        if self.dead or self.eof:
            return None
        self.eof = True
        self.decoder.receive_data(b"")
        return self.drain()

    def drain(self) -> Wait | None:
        d = self.decoder
        for _ in range(100_000):
            try:
                event = d.next_event()
            except ProtocolError as exc:
                self._failed(exc)
                if exc.fatal:
                    return None
                continue
            if isinstance(event, Wait):
                assert event in (Wait.NEED_DATA, Wait.PAUSED)
                assert d.buffered <= self.bound(), (d.buffered, self.bound())
                return event
            self._check_event(event)
            if isinstance(event, EndOfStream):
                self.eof_seen = True
                return None
        raise AssertionError("next_event made no progress")

    def _failed(self, exc: ProtocolError) -> None:
        assert type(exc).__name__ in ("ProtocolError", "LimitExceeded"), repr(exc)
        assert isinstance(exc.reply, bytes) and exc.reply.endswith(b"\r\n")
        self.any_error = True
        if self.first_error is None:
            self.first_error = exc
        if exc.fatal:
            assert exc.reply.startswith(b"* BYE ")
            self.error = exc
            for _ in range(2):
                with pytest.raises(ProtocolError) as again:
                    self.decoder.next_event()
                assert again.value is exc
        else:
            assert exc.reply.startswith((exc.tag or b"*") + b" ")
            assert b" NO " in exc.reply or b" BAD " in exc.reply
            self.open_part = None
            self.stream_left = 0

    def _check_event(self, event: Event) -> None:
        assert type(event) in (Frame, LiteralChunk, EndOfStream), type(event)
        self.events.append(event)
        if isinstance(event, EndOfStream):
            assert event.side is self.decoder.side
            assert event.pending == self.decoder.buffered
            return
        if isinstance(event, LiteralChunk):
            assert self.stream_left > 0, "a chunk outside a streamed literal"
            assert event.data
            assert event.remaining == self.stream_left - len(event.data)
            self.stream_left = event.remaining
            self.out += event.data
            return
        assert event.side is self.decoder.side
        assert self.stream_left == 0, "a frame inside a streamed literal"
        if self.open_part is not None:
            assert not event.first
            assert (event.tag, event.name, event.kind) == (
                self.open_part.tag,
                self.open_part.name,
                self.open_part.kind,
            )
        else:
            assert event.first
        assert not event.oversize or event.side is S
        if event.final:
            assert event.literal is None and not event.streamed
            self.open_part = None
        elif event.literal is None:
            # a piece of a long server line, no larger than a part kept whole
            assert event.oversize
            lim = self.decoder.limits
            assert len(event.raw) <= lim.max_line_bytes + lim.inline_literal_bytes
            self.open_part = event
        else:
            self.open_part = event
            if (
                event.streamed
                and not event.literal.sync
                and self.decoder.waiting_for is not Hold.NONSYNC_LITERAL
            ):  # (held {n+}: its chunks come after the "+", like a sync literal's)
                self.stream_left = event.literal.size
        self.out += event.raw

    # answers from the other side
    def continuation(self) -> None:
        if self.dead:
            return
        d = self.decoder
        hold = d.waiting_for
        if d.continuation() and hold in (Hold.LITERAL, Hold.NONSYNC_LITERAL):
            assert self.open_part is not None and self.open_part.literal is not None
            if self.open_part.streamed:
                self.stream_left = self.open_part.literal.size
        self.drain()

    def completed(self, status: str, tag: bytes | None = None) -> None:
        """The server completed ``tag`` (default: whatever the decoder holds)."""
        if self.dead:
            return
        d = self.decoder
        hold = d.waiting_for
        if tag is None:
            tag = d._hold_tag or b"a"
        try:
            settled = d.completed(tag, status)
        except ProtocolError as exc:
            assert hold is Hold.COMPRESS and status == "OK"
            self._failed(exc)
            return
        if settled and hold is Hold.LITERAL:
            self.open_part = None  # the message ended without its literal
        if settled and hold is Hold.NONSYNC_LITERAL:
            self.open_part = None  # the rest of the message is consumed, never given out
        if settled and hold is Hold.STARTTLS and status == "OK":
            self.tls_pending = True
        self.drain()

    def start_tls(self) -> None:
        if self.dead:
            return
        if not self.tls_pending:
            return  # only after a STARTTLS OK
        self.tls_pending = False
        self.out += self.decoder.start_tls()
        self.open_part = None
        self.drain()

    def check_exact(self, *, clean: bool = False) -> None:
        """The bytes fed are accounted for exactly.  After an error that cannot be checked
        (replies replace input), so ``clean=True`` - for input that must decode - requires
        that there was none, and that a closed stream ended cleanly with nothing left."""
        d = self.decoder
        if clean:
            assert self.first_error is None, f"well-formed input failed: {self.first_error!r}"
            if self.eof:
                assert self.eof_seen, "closed, but no EndOfStream"
                end = self.events[-1]
                assert isinstance(end, EndOfStream) and end.clean and end.pending == 0, end
        elif self.any_error:
            return
        consumed = len(self.fed) - len(self.out) - d.buffered
        assert consumed == d.discarded_bytes, (consumed, d.discarded_bytes)
        if not d.discarded_bytes:
            assert bytes(self.out) + bytes(d._buf[d._pos :]) == bytes(self.fed)


STATES: dict[str, tuple[Side, bytes, str]] = {
    # name: (side, bytes to get there, then: "", "continuation", "auth", "minus", "ok")
    "client-commands": (C, b"", ""),
    "client-authenticated": (C, b"", "auth"),
    "client-literal-minus": (C, b"", "minus"),
    "client-literal-hold": (C, b"a APPEND INBOX {5}\r\n", ""),
    "client-literal-body": (C, b"a APPEND INBOX {5}\r\n", "continuation"),
    "client-streamed-literal-body": (C, b"a APPEND INBOX {300}\r\n", "continuation"),
    "client-auth-hold": (C, b"a AUTHENTICATE PLAIN\r\n", ""),
    "client-auth-data": (C, b"a AUTHENTICATE PLAIN\r\n", "continuation"),
    "client-idle-hold": (C, b"a IDLE\r\n", ""),
    "client-idle-done": (C, b"a IDLE\r\n", "continuation"),
    "client-starttls-hold": (C, b"a STARTTLS\r\n", ""),
    "client-starttls-ok": (C, b"a STARTTLS\r\n", "ok"),
    # nonsync_as_sync (the relay's mode): {n+} pauses; a refusal discards the message's rest
    "client-converting": (C, b"", "convert"),
    "client-converting-hold": (C, b"a APPEND INBOX {5+}\r\n", "convert"),
    "client-converting-streamed": (C, b"a APPEND INBOX {300+}\r\n", "convert+continuation"),
    "client-converting-refused": (C, b"a APPEND INBOX {300+}\r\n", "convert+refused"),
    "server-greeting": (S, b"", ""),
    "server-responses": (S, b"* OK hi\r\n", ""),
    "server-authenticated": (S, b"* PREAUTH hi\r\n", "auth"),
    "server-literal-body": (S, b"* OK hi\r\n* 1 FETCH (BODY[] {300}\r\n", ""),
}


def harness_in(state: str) -> Harness:
    side, prefix, then = STATES[state]
    h = Harness(Decoder(side, SMALL))
    if then.startswith("convert"):
        h.decoder.nonsync_as_sync = True
        h.decoder.authenticated = True
        then = then.partition("+")[2]
    if then == "auth":
        h.decoder.authenticated = True
    elif then == "minus":
        h.decoder.max_nonsync_literal = SMALL.max_nonsync_literal_minus
    if prefix:
        h.feed(prefix)
    if then == "continuation":
        h.continuation()
    elif then == "ok":
        h.completed("OK")
    elif then == "refused":
        h.completed("NO")
    assert not h.dead
    return h


ACTIONS = st.one_of(
    st.binary(min_size=1, max_size=300).map(lambda b: ("data", b)),
    st.sampled_from(
        [
            ("continuation", b""),
            ("completed", b"OK"),
            ("completed", b"NO"),
            ("completed", b"BAD"),
            ("start_tls", b""),
        ]
    ),
)


def run_actions(h: Harness, actions: Sequence[tuple[str, bytes]], eof: bool) -> None:
    for kind, arg in actions:
        if kind == "data":
            h.feed(arg)
        elif kind == "continuation":
            h.continuation()
        elif kind == "completed":
            h.completed(arg.decode())
        else:
            h.start_tls()
    if eof:
        h.close()
    h.check_exact()


@pytest.mark.parametrize("state", sorted(STATES))
@settings(max_examples=60, deadline=None)
@given(actions=st.lists(ACTIONS, max_size=12), eof=st.booleans())
def test_arbitrary_bytes_and_answers_only_give_events_or_protocol_errors(
    state: str, actions: list[tuple[str, bytes]], eof: bool
) -> None:
    run_actions(harness_in(state), actions, eof)


# IMAP-ish fragments, so that random streams reach deep states more often than st.binary().
FRAGMENTS = [
    b"a ",
    b"* ",
    b"+ ",
    b"1 ",
    b"OK",
    b"NO",
    b"BAD",
    b"BYE",
    b"FETCH",
    b"APPEND",
    b"AUTHENTICATE",
    b"IDLE",
    b"DONE",
    b"STARTTLS",
    b"COMPRESS",
    b"LOGIN",
    b"UID",
    b" ",
    b"(",
    b")",
    b'"',
    b"\r\n",
    b"\n",
    b"\r",
    b"{0}",
    b"{1}",
    b"{5}",
    b"{5+}",
    b"~{3}",
    b"~{3+}",
    b"{64}",
    b"{129}",
    b"{300+}",
    b"{513}",
    b"{99999999999999999999}",
    b"{-1}",
    b"\x00",
    b"x" * 50,
    b"x" * 255,
]
IMAPISH = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.binary(max_size=8)), max_size=60).map(
    b"".join
)


@pytest.mark.parametrize("state", sorted(STATES))
@settings(max_examples=60, deadline=None)
@given(
    data=IMAPISH,
    splits=st.lists(st.integers(0, 5000), max_size=10),
    answers=st.lists(st.sampled_from(["continuation", "OK", "NO", "BAD", "start_tls"]), max_size=6),
    eof=st.booleans(),
)
def test_imap_like_noise_only_gives_events_or_protocol_errors(
    state: str, data: bytes, splits: list[int], answers: list[str], eof: bool
) -> None:
    h = harness_in(state)
    auto_answer(h, split_at(data, splits), answers, eof)


def auto_answer(h: Harness, pieces: Sequence[bytes], answers: Sequence[str], eof: bool) -> None:
    """Feed the pieces; whenever the decoder pauses, give it the next answer."""
    queue = list(answers)
    steps: list[bytes | None] = [*pieces, None]  # None: the end of the input
    for piece in steps:
        wait = h.feed(piece) if piece is not None else (h.close() if eof else None)
        while wait is Wait.PAUSED and queue and not h.dead:
            answer = queue.pop(0)
            if answer == "continuation":
                h.continuation()
            elif answer == "start_tls":
                h.start_tls()
            else:
                h.completed(answer)
            wait = h.drain() if not h.dead else None
    h.check_exact()


MUTATIONS = st.one_of(
    st.tuples(st.just("insert"), st.integers(0, 10_000), st.binary(min_size=1, max_size=12)),
    st.tuples(st.just("insert"), st.integers(0, 10_000), st.sampled_from(FRAGMENTS)),
    st.tuples(st.just("delete"), st.integers(0, 10_000), st.integers(1, 40)),
    st.tuples(st.just("replace"), st.integers(0, 10_000), st.binary(min_size=1, max_size=1)),
    st.tuples(st.just("duplicate"), st.integers(0, 10_000), st.integers(1, 200)),
    st.tuples(st.just("truncate"), st.integers(0, 10_000), st.just(0)),
)


def mutate(data: bytes, mutations: Sequence[tuple[str, int, object]]) -> bytes:
    buf = bytearray(data)
    for op, pos, arg in mutations:
        at = pos % (len(buf) + 1)
        if op == "insert":
            assert isinstance(arg, bytes)
            buf[at:at] = arg
        elif op == "delete":
            assert isinstance(arg, int)
            del buf[at : at + arg]
        elif op == "replace" and at < len(buf):
            assert isinstance(arg, bytes)
            buf[at : at + 1] = arg
        elif op == "duplicate":
            assert isinstance(arg, int)
            buf[at:at] = buf[at : at + arg]
        elif op == "truncate":
            del buf[at:]
    return bytes(buf)


CLIENT_STREAMS = [script_bytes(s, C) for s in CORPUS.values()]
SERVER_STREAMS = [script_bytes(s, S) for s in CORPUS.values()]


@settings(max_examples=300, deadline=None)
@given(
    side=st.sampled_from([C, S]),
    index=st.integers(0, len(CORPUS) - 1),
    mutations=st.lists(MUTATIONS, max_size=6),
    splits=st.lists(st.integers(0, 10_000), max_size=12),
    answers=st.lists(
        st.sampled_from(["continuation", "OK", "NO", "BAD", "start_tls"]), max_size=12
    ),
    authenticated=st.booleans(),
    eof=st.booleans(),
)
def test_mutated_corpus_streams_only_give_events_or_protocol_errors(
    side: Side,
    index: int,
    mutations: list[tuple[str, int, object]],
    splits: list[int],
    answers: list[str],
    authenticated: bool,
    eof: bool,
) -> None:
    base = (CLIENT_STREAMS if side is C else SERVER_STREAMS)[index]
    data = mutate(base, mutations)
    h = Harness(Decoder(side, SMALL))
    h.decoder.authenticated = authenticated
    auto_answer(h, split_at(data, splits), answers, eof)


def run_corpus_stream(script: Script, side: Side) -> Harness:
    """One side of a corpus script through the harness.  The client side gets the answers
    the script's server gives (its "+" lines and tagged completions, found by a server
    decoder, so literal content is never taken for one), each when the script has it."""
    h = Harness(Decoder(side, CORPUS_LIMITS))
    server = Decoder(S, CORPUS_LIMITS)
    for who, data in script:
        if who is side:
            h.feed(data)
            continue
        if side is S:
            continue  # the server decoder needs no answers
        server.receive_data(data)
        while isinstance(event := server.next_event(), Frame | LiteralChunk):
            if not isinstance(event, Frame) or not event.first:
                continue
            if event.kind is FrameKind.CONTINUATION:
                h.continuation()
            elif event.kind is FrameKind.STATUS and event.tag is not None:
                h.completed(event.name, event.tag)
                h.start_tls()  # (only acts after an accepted STARTTLS)
    h.close()
    return h


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_unmutated_corpus_streams_pass_the_harness(name: str) -> None:
    """The harness accepts well-formed input: every corpus stream, each side alone (the
    client's answered as the script's server answers), decodes without any error, ends
    cleanly and gives out exactly the bytes fed."""
    script = CORPUS[name]
    for side in (C, S):
        h = run_corpus_stream(script, side)
        h.check_exact(clean=True)
        assert h.decoder.discarded_bytes == 0
        assert reassemble(h.events) == script_bytes(script, side)


# ======================================================================= 15. fuzz script


def _load_fuzzer() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "bench" / "fuzz_decoder.py"
    spec = importlib.util.spec_from_file_location("fuzz_decoder", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("fuzz_decoder", module)
    spec.loader.exec_module(module)
    return module


def test_fuzz_script_runs_briefly_without_failures(capsys: pytest.CaptureFixture[str]) -> None:
    fuzzer = _load_fuzzer()
    status = fuzzer.main(["--seconds", "2", "--seed", "20240601"])
    out = capsys.readouterr().out
    assert "iterations" in out
    assert status == 0, out


def test_fuzz_script_iterations_mode_is_deterministic(capsys: pytest.CaptureFixture[str]) -> None:
    fuzzer = _load_fuzzer()
    first = fuzzer.run(iterations=30, seed=7)
    second = fuzzer.run(iterations=30, seed=7)
    assert first.iterations == second.iterations == 30
    assert first.digest == second.digest
    assert [f.seed for f in first.failures] == [f.seed for f in second.failures]


def test_refused_streamed_nonsync_literal_then_next_command() -> None:
    """The discard path end to end, deterministically: a refused {300+} (streamed), its
    bytes, then the next command, which is the only thing given out."""
    h = harness_in("client-converting-refused")
    h.feed(b"x" * 300 + b"\r\na NOOP\r\n")
    h.check_exact()
    assert [e.raw for e in h.events if isinstance(e, Frame)][-1] == b"a NOOP\r\n"
    assert h.decoder.discarded_bytes == 302


def test_accepted_streamed_nonsync_literal_then_next_command() -> None:
    h = harness_in("client-converting-streamed")
    h.feed(b"y" * 300 + b"\r\nb NOOP\r\n")
    h.check_exact()
    assert bytes(h.out).endswith(b"y" * 300 + b"\r\nb NOOP\r\n")
