"""The command gate on its own: assembly, decisions, safe segments, refusals (no I/O)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from imapproxy.filters import (
    DROP,
    PASS,
    Answer,
    ChainEntry,
    CommandView,
    Disconnect,
    Filter,
    FilterChain,
    OnError,
    Reject,
    Replace,
    ResponseView,
    SessionInfo,
    SessionView,
)
from imapproxy.relay.gate import Collect, CommandGate, End, Forward, Refuse, segment_command
from imapproxy.wire import NEED_DATA, PAUSED, Decoder, Frame, FrameKind, Limits, Side

INFO = SessionInfo("s-1", "127.0.0.1", 1, "imap@x")
LIMITS = Limits()


class Decide(Filter):
    name = "decide"

    def __init__(self, fn: Callable[[CommandView], object]) -> None:
        self.fn = fn
        self.seen: list[CommandView] = []
        self.responses: list[ResponseView] = []

    def command(self, cmd, session):  # type: ignore[no-untyped-def]
        if cmd.complete or (cmd.literals[-1:] and not cmd.literals[-1].inline):
            self.seen.append(cmd)  # (not the partial views of a command being assembled)
        return self.fn(cmd)

    def response(self, resp, session):  # type: ignore[no-untyped-def]
        self.responses.append(resp)
        return DROP if resp.name == "EXPUNGE" else super().response(resp, session)


def gate_with(fn: Callable[[CommandView], object], on_error: OnError = OnError.CLOSED):
    f = Decide(fn)
    chain = FilterChain([ChainEntry("decide", lambda i: f, on_error)])
    now = [100.0]
    gate = CommandGate(chain.open(INFO, lambda *a: None), SessionView(INFO), LIMITS,
                       clock=lambda: now[0])  # fmt: skip
    return gate, f, now


def drive(gate: CommandGate, data: bytes, *, settle: bool = False) -> list[object]:
    """Feed client bytes through a decoder (as the relay does, nonsync_as_sync) and the
    gate; answer Collect as the relay would.  Returns the gate's decisions.  With
    ``settle`` a refusal settles the decoder as the relay does
    (``conv.client.completed(tag, "NO")``): a {n} literal then never comes, a {n+} one is
    read and discarded."""
    dec = Decoder(Side.CLIENT, LIMITS)
    dec.authenticated = True
    dec.nonsync_as_sync = True
    dec.receive_data(data)
    out: list[object] = []
    while True:
        ev = dec.next_event()
        if ev is NEED_DATA or ev is PAUSED:
            return out
        if isinstance(ev, Frame):
            decision = gate.command_part(ev)
            out.append(decision)
            if isinstance(decision, Collect):
                assert dec.continuation()
            elif settle and isinstance(decision, Refuse):
                dec.completed(decision.tag, "NO")


def passing(cmd: CommandView) -> object:
    return PASS


def test_single_line_command_passes_as_one_segment() -> None:
    gate, f, _ = gate_with(passing)
    [d] = drive(gate, b"a1 SELECT INBOX\r\n")
    assert isinstance(d, Forward) and d.segments == (b"a1 SELECT INBOX\r\n",) and not d.streams
    assert f.seen[0].name == "SELECT" and f.seen[0].complete


@pytest.mark.parametrize("plus", [b"", b"+"])
def test_command_assembled_across_literals_then_sent_in_safe_segments(plus: bytes) -> None:
    gate, f, _ = gate_with(passing)
    data = b"a1 RENAME {3" + plus + b"}\r\nOld {3" + plus + b"}\r\nNew\r\n"
    decisions = drive(gate, data)
    assert decisions[:2] == [Collect(ack=not plus), Collect(ack=not plus)]
    fwd = decisions[2]
    assert isinstance(fwd, Forward)
    # every literal goes as {n}: the next segment only after the server's "+"
    assert fwd.segments == (b"a1 RENAME {3}\r\n", b"Old {3}\r\n", b"New\r\n")
    assert f.seen[0].raw == data and len(f.seen) == 1
    from imapproxy.filters.views import mailbox_arguments

    assert mailbox_arguments(f.seen[0]) == ("Old", "New")


def test_decision_on_the_head_of_a_streamed_literal() -> None:
    gate, f, _ = gate_with(passing)
    [d] = drive(gate, b"a1 APPEND Sent (\\Seen) {50000000}\r\n")
    assert isinstance(d, Forward) and d.streams
    assert d.segments == (b"a1 APPEND Sent (\\Seen) {50000000}\r\n",)
    assert not f.seen[0].complete and f.seen[0].literals[0].size == 50_000_000
    assert not f.seen[0].literals[0].inline


def test_reject_and_answer_make_local_replies() -> None:
    gate, _, _ = gate_with(
        lambda c: Reject("Finance is closed", code="NOPERM") if b"Finance" in c.raw else PASS
    )
    [collect, d] = drive(gate, b"a1 SELECT {7}\r\nFinance\r\n")
    assert collect == Collect(ack=True)
    assert isinstance(d, Refuse) and d.reply == b"a1 NO [NOPERM] Finance is closed\r\n"
    # a filter that can refuse on the head does so before the client sends the literal
    gate, _, _ = gate_with(lambda c: Reject("no SELECT", code="NOPERM"))
    [d] = drive(gate, b"a1 SELECT {7}\r\n")
    assert isinstance(d, Refuse) and d.reply == b"a1 NO [NOPERM] no SELECT\r\n"
    gate, _, _ = gate_with(lambda c: Answer((b"* ID NIL\r\n",), "ID completed"))
    [d] = drive(gate, b"x ID NIL\r\n")
    assert isinstance(d, Refuse) and d.reply == b"* ID NIL\r\nx OK ID completed\r\n"
    gate, _, _ = gate_with(lambda c: Disconnect("go away"))
    [d] = drive(gate, b"x NOOP\r\n")
    assert isinstance(d, End) and d.bye == b"* BYE [UNAVAILABLE] go away\r\n"


def test_replace_is_resegmented_and_checked() -> None:
    gate, _, _ = gate_with(lambda c: Replace(b"a1 SELECT {7+}\r\nArchive\r\n"))
    [d] = drive(gate, b"a1 SELECT INBOX\r\n")
    assert isinstance(d, Forward) and d.replaced
    assert d.segments == (b"a1 SELECT {7}\r\n", b"Archive\r\n")
    # a replacement that is two commands, another tag or unfinished fails closed
    for bad in (b"a1 NOOP\r\nb CREATE x\r\n", b"zz NOOP\r\n", b"a1 SELECT {7}\r\nArc"):
        gate, _, _ = gate_with(lambda c, b=bad: Replace(b))
        [d] = drive(gate, b"a1 SELECT INBOX\r\n")
        assert isinstance(d, Refuse) and b"[UNAVAILABLE]" in d.reply, bad


def test_too_big_to_hold_is_refused() -> None:
    gate, f, _ = gate_with(passing)
    big = b"x" * 60_000
    data = b"a1 X" + b"".join(b" {%d+}\r\n" % len(big) + big for _ in range(5)) + b"\r\n"
    decisions = drive(gate, data)
    refused = [d for d in decisions if isinstance(d, Refuse)]
    assert refused and b"[TOOBIG]" in refused[0].reply
    assert all(not c.complete for c in f.seen)  # never shown it whole


def test_exchange_commands_take_no_literal() -> None:
    gate, _, _ = gate_with(passing)
    [d] = drive(gate, b"a1 AUTHENTICATE {5}\r\n")
    assert isinstance(d, Refuse) and d.reply.startswith(b"a1 BAD [CLIENTBUG]")


def test_rest_of_a_headed_command_is_not_gated() -> None:
    gate, _, _ = gate_with(passing)
    dec_frames = drive(gate, b"a1 APPEND Sent {100000}\r\n")
    assert isinstance(dec_frames[0], Forward)
    later = Frame(Side.CLIENT, FrameKind.COMMAND, b" {3}\r\n", b"a1", "APPEND",
                  first=False, final=True)  # fmt: skip
    assert gate.command_part(later) is None


def test_responses_carry_command_and_latency_and_can_be_dropped() -> None:
    gate, f, now = gate_with(passing)
    drive(gate, b"a1 FETCH 1 FLAGS\r\n")
    now[0] += 0.25

    done = Frame(Side.SERVER, FrameKind.STATUS, b"a1 OK done\r\n", b"a1", "OK")
    assert gate.response(done)[1] is None
    assert f.responses[0].command is not None and f.responses[0].command.name == "FETCH"
    assert f.responses[0].latency == pytest.approx(0.25)
    gone = Frame(Side.SERVER, FrameKind.DATA, b"* 3 EXPUNGE\r\n", None, "EXPUNGE", 3)
    assert gate.response(gone) == (DROP, "decide")


def test_segment_command_rejects_streamed_literals() -> None:
    with pytest.raises(ValueError, match="literal that large"):
        segment_command(b"a APPEND x {100000}\r\n" + b"y" * 100000 + b"\r\n", b"a", LIMITS)


def test_observers_never_hold_a_command_back() -> None:
    class Watch(Filter):
        name = "watch"
        observes_only = True
        seen: list[CommandView] = []

        def command(self, cmd, session):  # type: ignore[no-untyped-def]
            self.seen.append(cmd)
            return Reject()  # ignored: an observer cannot decide

    w = Watch()
    chain = FilterChain([ChainEntry("watch", lambda i: w)])
    gate = CommandGate(chain.open(INFO, lambda *a: None), SessionView(INFO), LIMITS,
                       clock=lambda: 0.0)  # fmt: skip
    dec = Decoder(Side.CLIENT, LIMITS)
    dec.authenticated = True
    dec.receive_data(b"a1 RENAME {3}\r\n")
    first = dec.next_event()
    assert isinstance(first, Frame) and gate.command_part(first) is None
    assert dec.continuation()  # the server's "+" (relayed as usual)
    dec.receive_data(b"Old New\r\n")
    last = dec.next_event()
    assert isinstance(last, Frame) and gate.command_part(last) is None
    # shown as far as it had come when it waited for the server's "+" (the "+" is relayed
    # before the rest: a transcript shows them in that order), and not again
    assert [c.raw for c in w.seen] == [b"a1 RENAME {3}\r\n"]
    assert not w.seen[0].complete and w.seen[0].literals[0].size == 3


def test_only_wanted_commands_are_held_or_viewed() -> None:
    class LoginOnly(Filter):
        name = "login-only"
        wants_commands = frozenset({"LOGIN"})
        seen: list[str] = []

        def command(self, cmd, session):  # type: ignore[no-untyped-def]
            self.seen.append(cmd.name)
            return Reject("no")

    f = LoginOnly()
    chain = FilterChain([ChainEntry("l", lambda i: f)])
    gate = CommandGate(chain.open(INFO, lambda *a: None), SessionView(INFO), LIMITS,
                       clock=lambda: 0.0)  # fmt: skip
    assert drive(gate, b"a1 SELECT {5}\r\n") == [None]  # not held: forwarded as usual
    gate = CommandGate(chain.open(INFO, lambda *a: None), SessionView(INFO), LIMITS,
                       clock=lambda: 0.0)  # fmt: skip
    decisions = drive(gate, b"a2 LOGIN {5}\r\nalice pw\r\n")
    # refused on its head: the client is never asked for the literal
    assert len(decisions) == 1 and isinstance(decisions[0], Refuse)
    assert f.seen == ["LOGIN"]


BIG = 200_000  # over inline_literal_bytes: the literal streams after the decision


@pytest.mark.parametrize("plus", [b"", b"+"])
def test_the_head_of_a_streaming_command_can_be_replaced(plus: bytes) -> None:
    """A large APPEND is decided on its head; a filter may replace the head (a renamed
    mailbox) as long as it announces the same literal, which then streams as the client
    sends it."""
    new = b"a1 APPEND {13}\r\nINBOX.Archive (\\Seen) {%d}\r\n" % BIG

    def rename(cmd: CommandView) -> object:
        return Replace(new) if cmd.name == "APPEND" else PASS

    gate, f, _ = gate_with(rename)
    decisions = drive(gate, b"a1 APPEND Archive (\\Seen) {%d%s}\r\n" % (BIG, plus))
    [d] = decisions
    assert isinstance(d, Forward) and d.streams and d.replaced
    assert d.segments == (b"a1 APPEND {13}\r\n", b"INBOX.Archive (\\Seen) {%d}\r\n" % BIG)
    assert not f.seen[0].complete


@pytest.mark.parametrize(
    "replacement",
    [
        b"a1 APPEND Other {%d}\r\n" % (BIG + 1),  # another size
        b"a1 APPEND Other ~{%d}\r\n" % BIG,  # binary instead of text
        b"a1 APPEND Other {5}\r\nhello\r\n",  # a complete command instead of a head
        b"a1 APPEND Other {%d}\r\nextra" % BIG,  # bytes after the announcement
        b"a2 APPEND Other {%d}\r\n" % BIG,  # another tag
    ],
)
def test_a_replaced_head_must_announce_the_same_literal(replacement: bytes) -> None:
    gate, _, _ = gate_with(lambda cmd: Replace(replacement))
    [d] = drive(gate, b"a1 APPEND Archive {%d}\r\n" % BIG)
    assert isinstance(d, Refuse) and d.reply == b"a1 NO [UNAVAILABLE] filter failed\r\n"
