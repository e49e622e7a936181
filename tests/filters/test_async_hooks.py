"""Command hooks that must wait: a filter returns an awaitable, the chain suspends there and
resumes at the next filter with what it gave (no I/O here: the relay's side is tested
end to end in tests/integration/test_filter_async.py)."""

from __future__ import annotations

import gc
import warnings

import pytest

from imapproxy.filters import (
    PASS,
    ChainEntry,
    CommandView,
    Filter,
    FilterChain,
    OnError,
    Reject,
    Replace,
    SessionInfo,
    SessionView,
)
from imapproxy.filters.chain import FAILED_CLOSED_COMMAND, Suspended
from imapproxy.relay.gate import CommandGate, Forward, Refuse, Wait
from imapproxy.wire import Decoder, Frame, Side
from imapproxy.wire.limits import Limits

INFO = SessionInfo("s-1", "127.0.0.1", 50000, "imap@127.0.0.1:1143")
VIEW = SessionView(INFO)


def cmd(raw: bytes = b"a1 SELECT INBOX\r\n", *, complete: bool = True) -> CommandView:
    tag, name = raw.split(b" ")[:2]
    return CommandView(tag, name.decode().strip(), False, (), raw, complete=complete)


class Waits(Filter):
    """Answers through an awaitable for SELECT (a lookup), plainly for the rest."""

    name = "lookup"

    def __init__(self, log: list[str], result: object = PASS) -> None:
        self.log = log
        self.result = result

    def command(self, c, session):  # type: ignore[no-untyped-def]
        self.log.append(f"lookup:{c.name}")
        if c.name != "SELECT":
            return PASS
        return self._lookup(c)

    async def _lookup(self, c: CommandView) -> object:
        self.log.append("awaited")
        return self.result


class Plain(Filter):
    def __init__(self, name: str, log: list[str], verdict: object = PASS) -> None:
        self._name = name
        self.log = log
        self.verdict = verdict

    @property
    def name(self) -> str:  # type: ignore[override]
        return self._name

    def command(self, c, session):  # type: ignore[no-untyped-def]
        self.log.append(f"{self._name}:{c.raw.decode().strip()}")
        return self.verdict


class Watcher(Plain):
    observes_only = True

    def command(self, c, session):  # type: ignore[no-untyped-def]
        self.log.append(f"{self._name}:{c.verdict}:{c.by}")
        return PASS


def chain_of(*filters: Filter, on_error: OnError = OnError.CLOSED):
    errors: list[tuple[str, str, str]] = []
    entries = [ChainEntry(f.name, (lambda info, f=f: f), on_error) for f in filters]
    s = FilterChain(entries).open(INFO, lambda n, h, e: errors.append((n, h, repr(e))))
    return s, errors


def run(awaitable):  # type: ignore[no-untyped-def]
    """Drive a coroutine that does not really wait (what the relay does with Trio)."""
    try:
        awaitable.send(None)
    except StopIteration as done:
        return done.value
    raise AssertionError("the coroutine waited")


def test_a_waiting_hook_suspends_the_chain_and_resumes_at_the_next_filter() -> None:
    log: list[str] = []
    no = Reject("not for you", code="NOPERM")
    s, errors = chain_of(Waits(log), Plain("after", log, no), Watcher("w", log))
    verdict, by = s.command(cmd(), VIEW)
    assert type(verdict) is Suspended and by is None
    assert log == ["lookup:SELECT"]  # nothing after it ran yet, observers included
    outcome = run(verdict.awaitable)
    assert s.resume_command(verdict, outcome, VIEW) == (no, "after")
    assert log == ["lookup:SELECT", "awaited", "after:a1 SELECT INBOX", "w:reject:after"]
    assert errors == []


def test_the_awaited_verdict_counts_like_a_plain_one() -> None:
    log: list[str] = []
    no = Reject("looked up: no", code="NOPERM")
    s, _ = chain_of(Waits(log, no), Plain("after", log), Watcher("w", log))
    verdict, _ = s.command(cmd(), VIEW)
    assert s.resume_command(verdict, run(verdict.awaitable), VIEW) == (no, "lookup")
    assert "after:a1 SELECT INBOX" not in log  # the first terminal verdict stops the chain
    assert log[-1] == "w:reject:lookup"
    # a replacement is handed on to the next filter
    log.clear()
    new = b"a1 EXAMINE INBOX\r\n"
    s, _ = chain_of(Waits(log, Replace(new)), Plain("after", log))
    verdict, _ = s.command(cmd(), VIEW)
    assert s.resume_command(verdict, run(verdict.awaitable), VIEW) == (Replace(new), "lookup")
    assert log[-1] == "after:a1 EXAMINE INBOX"


def test_two_waiting_filters_suspend_twice_in_order() -> None:
    log: list[str] = []
    s, _ = chain_of(Waits(log), Waits(log, Reject("second")))
    first, _ = s.command(cmd(), VIEW)
    second, by = s.resume_command(first, run(first.awaitable), VIEW)
    assert type(second) is Suspended and second.index == 1 and by is None
    assert s.resume_command(second, run(second.awaitable), VIEW) == (Reject("second"), "lookup")


@pytest.mark.parametrize("on_error", [OnError.CLOSED, OnError.OPEN])
def test_a_failed_or_timed_out_wait_is_the_filters_error(on_error: OnError) -> None:
    log: list[str] = []
    s, errors = chain_of(Waits(log), Plain("after", log), on_error=on_error)
    verdict, _ = s.command(cmd(), VIEW)
    verdict.discard()
    result = s.resume_command(verdict, TimeoutError("command hook took longer than 5 s"), VIEW)
    if on_error is OnError.CLOSED:
        assert result == (FAILED_CLOSED_COMMAND, "lookup")
        assert "after:a1 SELECT INBOX" not in log
    else:
        assert result == (PASS, None)
        assert log[-1] == "after:a1 SELECT INBOX"
    assert errors == [("lookup", "command", "TimeoutError('command hook took longer than 5 s')")]
    # an awaited value that is no verdict is the filter's bug too
    s, errors = chain_of(Waits(log, "yes"), on_error=on_error)
    verdict, _ = s.command(cmd(), VIEW)
    result = s.resume_command(verdict, run(verdict.awaitable), VIEW)
    assert result == ((FAILED_CLOSED_COMMAND, "lookup") if on_error is OnError.CLOSED
                      else (PASS, None))  # fmt: skip
    assert errors and errors[0][2].startswith("TypeError(")


def test_precheck_and_other_hooks_never_leave_a_coroutine_unawaited() -> None:
    log: list[str] = []

    class AsyncStart(Filter):
        name = "async-start"

        async def session_started(self, session):  # type: ignore[no-untyped-def,override]
            log.append("never")

    s, errors = chain_of(Waits(log), AsyncStart(), on_error=OnError.OPEN)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "coroutine ... was never awaited" would raise
        assert s.precheck(cmd(b"a1 SELECT {5}\r\n", complete=False), VIEW) == (PASS, None)
        assert s.session_started(VIEW) is PASS  # open: reported, passes
        gc.collect()
    assert "never" not in log and "awaited" not in log
    assert errors == [("async-start", "session_started",
                       "TypeError('session_started cannot wait (only the command hook may "
                       "be async)')")]  # fmt: skip


def _frames(data: bytes) -> list[Frame]:
    dec = Decoder(Side.CLIENT, Limits())
    dec.authenticated = True
    dec.receive_data(data)
    out = []
    while isinstance(ev := dec.next_event(), Frame):
        out.append(ev)
    return out


def test_the_gate_waits_then_forwards_or_refuses() -> None:
    log: list[str] = []
    s, _ = chain_of(Waits(log))
    gate = CommandGate(s, VIEW, Limits(), clock=lambda: 0.0)
    (frame,) = _frames(b"a1 SELECT INBOX\r\n")
    wait = gate.command_part(frame)
    assert type(wait) is Wait and wait.view.name == "SELECT"
    decision = gate.resume(wait, run(wait.pending.awaitable))
    assert type(decision) is Forward and decision.segments == (b"a1 SELECT INBOX\r\n",)
    s, _ = chain_of(Waits(log, Reject("later", code="LIMIT")))
    gate = CommandGate(s, VIEW, Limits(), clock=lambda: 0.0)
    wait = gate.command_part(_frames(b"a2 select inbox\r\n")[0])
    decision = gate.resume(wait, run(wait.pending.awaitable))
    assert type(decision) is Refuse and decision.reply == b"a2 NO [LIMIT] later\r\n"
