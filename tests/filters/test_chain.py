"""The filter chain on its own: ordering, verdicts, error containment (no I/O)."""

from __future__ import annotations

from dataclasses import dataclass, field

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
    SessionEndInfo,
    SessionInfo,
    SessionView,
    bye_line,
    local_reply,
    status_line,
)
from imapproxy.wire import FrameKind

INFO = SessionInfo("s-1", "127.0.0.1", 50000, "imap@127.0.0.1:1143")


def cmd(raw: bytes = b"a1 SELECT INBOX\r\n", *, complete: bool = True) -> CommandView:
    tag, name = raw.split(b" ")[:2]
    return CommandView(tag, name.decode().strip(), False, (), raw, complete=complete)


def data(raw: bytes = b"* 1 EXISTS\r\n") -> ResponseView:
    return ResponseView(FrameKind.DATA, None, "EXISTS", raw, number=1)


def tagged(raw: bytes = b"a1 OK done\r\n") -> ResponseView:
    return ResponseView(FrameKind.STATUS, b"a1", "OK", raw)


@dataclass
class Recorder(Filter):
    """Records what it saw into a shared log and answers with a fixed verdict."""

    label: str
    log: list[tuple[str, str, bytes]]
    verdict: object = PASS
    raises: bool = False
    seen: list[bytes] = field(default_factory=list)

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.label

    def command(self, c, session):  # type: ignore[no-untyped-def]
        self.log.append((self.label, "command", c.raw))
        if self.raises:
            raise RuntimeError("boom with a secret: hunter2")
        return self.verdict

    def response(self, r, session):  # type: ignore[no-untyped-def]
        self.log.append((self.label, "response", r.raw))
        if self.raises:
            raise RuntimeError("boom")
        return self.verdict


class Observer(Recorder):
    observes_only = True


def chain_of(*filters: Filter, on_error: OnError = OnError.CLOSED):
    errors: list[tuple[str, str, str]] = []
    entries = [ChainEntry(f.name, (lambda info, f=f: f), on_error) for f in filters]
    session = FilterChain(entries).open(INFO, lambda n, h, e: errors.append((n, h, str(e))))
    return session, errors


VIEW = SessionView(INFO)


def test_commands_in_order_responses_in_reverse() -> None:
    log: list[tuple[str, str, bytes]] = []
    s, errors = chain_of(Recorder("a", log), Recorder("b", log), Recorder("c", log))
    assert s.command(cmd(), VIEW) == (PASS, None)
    assert s.response(data(), VIEW) == (PASS, None)
    assert [(who, hook) for who, hook, _ in log] == [
        ("a", "command"), ("b", "command"), ("c", "command"),
        ("c", "response"), ("b", "response"), ("a", "response"),
    ]  # fmt: skip
    assert errors == []


def test_replace_is_seen_by_the_next_filter_and_returned() -> None:
    log: list[tuple[str, str, bytes]] = []
    new = b"a1 SELECT Archive\r\n"
    s, _ = chain_of(Recorder("a", log, Replace(new)), Recorder("b", log))
    verdict, by = s.command(cmd(), VIEW)
    assert verdict == Replace(new) and by == "a"
    assert log[1] == ("b", "command", new)


def test_first_terminal_verdict_stops_the_chain() -> None:
    log: list[tuple[str, str, bytes]] = []
    no = Reject("not here", code="NOPERM")
    s, _ = chain_of(Recorder("a", log), Recorder("b", log, no), Recorder("c", log))
    assert s.command(cmd(), VIEW) == (no, "b")
    assert [who for who, _, _ in log] == ["a", "b"]
    # responses: reverse order, a drop stops it
    log.clear()
    s, _ = chain_of(Recorder("a", log), Recorder("b", log, DROP), Recorder("c", log))
    assert s.response(data(), VIEW) == (DROP, "b")
    assert [who for who, _, _ in log] == ["c", "b"]


def test_observe_only_filters_cannot_decide() -> None:
    log: list[tuple[str, str, bytes]] = []
    s, errors = chain_of(Observer("o", log, Reject()), Recorder("b", log))
    assert s.command(cmd(), VIEW) == (PASS, None)
    assert s.decides  # "b" may decide
    only, _ = chain_of(Observer("o", log, DROP))
    assert not only.decides
    assert only.response(data(), VIEW) == (PASS, None)
    assert errors == []


@pytest.mark.parametrize("hook", ["command", "response"])
def test_raising_filter_open_passes_closed_refuses(hook: str) -> None:
    log: list[tuple[str, str, bytes]] = []
    s, errors = chain_of(Recorder("bad", log, raises=True), Recorder("b", log),
                         on_error=OnError.OPEN)  # fmt: skip
    verdict, by = getattr(s, hook)(cmd() if hook == "command" else data(), VIEW)
    assert verdict is PASS and by is None
    assert [who for who, _, _ in log] == (["bad", "b"] if hook == "command" else ["b", "bad"])
    assert errors and errors[0][:2] == ("bad", hook)

    log.clear()
    s, errors = chain_of(Recorder("bad", log, raises=True), Recorder("b", log))
    verdict, by = getattr(s, hook)(cmd() if hook == "command" else data(), VIEW)
    assert by == "bad"
    if hook == "command":
        assert verdict == Reject("filter failed", status="NO", code="UNAVAILABLE")
        assert local_reply(b"a1", verdict) == b"a1 NO [UNAVAILABLE] filter failed\r\n"
    else:
        assert isinstance(verdict, Disconnect)


@pytest.mark.parametrize(
    ("verdict", "message"),
    [
        (DROP, cmd()),  # a command cannot be dropped (the client would hang)
        (Reject(), data()),  # a response cannot be rejected
        (DROP, tagged()),  # a tagged completion cannot be dropped
        (Reject(status="OK"), cmd()),  # a rejection that says OK
        (Answer(status="BYE"), cmd()),
        ("not a verdict", cmd()),
    ],
)
def test_misfit_verdicts_are_filter_errors(verdict: object, message: object) -> None:
    log: list[tuple[str, str, bytes]] = []
    s, errors = chain_of(Recorder("f", log, verdict))
    if isinstance(message, CommandView):
        result, by = s.command(message, VIEW)
        assert isinstance(result, Reject) and result.code == "UNAVAILABLE"
    else:
        result, by = s.response(message, VIEW)
        assert isinstance(result, Disconnect)
    assert by == "f" and len(errors) == 1


def test_oversize_response_cannot_be_replaced() -> None:
    log: list[tuple[str, str, bytes]] = []
    s, errors = chain_of(Recorder("f", log, Replace(b"* 1 EXISTS\r\n")), on_error=OnError.OPEN)
    big = ResponseView(FrameKind.DATA, None, "SEARCH", b"* SEARCH 1 2 3", oversize=True)
    assert s.response(big, VIEW) == (PASS, None)
    assert errors[0][0] == "f"


def test_one_instance_per_session_and_factory_failures() -> None:
    made: list[str] = []

    def factory(info: SessionInfo) -> Filter:
        made.append(info.id)
        return Filter()

    def broken(info: SessionInfo) -> Filter:
        raise OSError("cannot open the rule file")

    chain = FilterChain([ChainEntry("ok", factory)])
    a = chain.open(INFO, lambda *a: None)
    b = chain.open(SessionInfo("s-2", "::1", 1, "x"), lambda *a: None)
    assert made == ["s-1", "s-2"] and a._filters[0][0] is not b._filters[0][0]

    errors: list[str] = []
    opened = FilterChain([ChainEntry("bad", broken, OnError.OPEN)]).open(
        INFO, lambda n, h, e: errors.append(f"{n}:{h}")
    )
    assert not opened.failed and not opened and errors == ["bad:factory"]
    closed = FilterChain([ChainEntry("bad", broken)]).open(INFO, lambda *a: None)
    assert closed.failed


def test_notification_hooks_contain_errors() -> None:
    class Bad(Filter):
        name = "bad"

        def session_started(self, session: SessionView) -> None:
            raise RuntimeError("x")

        def session_ended(self, session: SessionView, end: SessionEndInfo) -> None:
            raise RuntimeError("y")

    errors: list[str] = []
    for mode, expect in ((OnError.OPEN, PASS), (OnError.CLOSED, Disconnect("filter failed"))):
        s = FilterChain([ChainEntry("bad", lambda i: Bad(), mode)]).open(
            INFO, lambda n, h, e: errors.append(h)
        )
        assert s.session_started(VIEW) == expect
        s.session_ended(VIEW, SessionEndInfo("closed", "closed", 0, 0, 0.0))
    assert errors == ["session_started", "session_ended"] * 2


def test_locally_made_lines_cannot_be_split() -> None:
    # A filter's text (perhaps built from a mailbox name) never becomes a second line.
    line = status_line(b"a1", "NO", "NOPERM", "no\r\n* OK [ALERT] injected\r\nx")
    assert line.count(b"\r\n") == 1 and line.endswith(b"\r\n")
    assert line.startswith(b"a1 NO [NOPERM] no")
    answered = local_reply(b"t", Answer((b"* ID NIL\r\n",), "ID done"))
    assert answered == b"* ID NIL\r\nt OK ID done\r\n"
    assert bye_line(Disconnect("bye now")) == b"* BYE [UNAVAILABLE] bye now\r\n"
    assert status_line(b"t", "NO", None, "") == b"t NO no\r\n"


def test_client_lines_carry_secrets_and_take_only_replace_or_disconnect() -> None:
    from imapproxy.filters import ClientLineView
    from imapproxy.wire import Secret

    line = ClientLineView(FrameKind.AUTH_DATA, b"a1", Secret(b"AGFsaWNlAHB3\r\n"), 14)
    assert "AGFsaWNl" not in repr(line)

    class Mapper(Filter):
        name = "mapper"

        def client_line(self, line, session):  # type: ignore[no-untyped-def]
            return Replace(b"AGJvYgBwdw==\r\n")

    class Seer(Filter):
        name = "seer"
        seen: list[bytes] = []

        def client_line(self, line, session):  # type: ignore[no-untyped-def]
            self.seen.append(line.data.reveal())
            return PASS

    seer = Seer()
    s = FilterChain(
        [ChainEntry("mapper", lambda i: Mapper()), ChainEntry("seer", lambda i: seer)]
    ).open(INFO, lambda *a: None)
    assert s.client_line(line, VIEW) == (Replace(b"AGJvYgBwdw==\r\n"), None)
    assert seer.seen == [b"AGJvYgBwdw==\r\n"]

    errors: list[str] = []
    for bad in (Reject(), Replace(b"two\r\nlines\r\n"), DROP):
        log: list[tuple[str, str, bytes]] = []

        class Bad(Recorder):
            def client_line(self, line, session):  # type: ignore[no-untyped-def]
                return self.verdict

        s = FilterChain([ChainEntry("bad", lambda i, b=bad, lg=log: Bad("bad", lg, b))]).open(
            INFO, lambda n, h, e: errors.append(h)
        )
        assert isinstance(s.client_line(line, VIEW)[0], Disconnect)
    assert errors == ["client_line"] * 3


def test_the_next_filter_sees_the_arguments_of_a_replacement() -> None:
    """Arguments are parsed from ``raw`` when asked for, so after a Replace the next
    filter's ``args`` are the replacement's, not the original's."""
    from imapproxy.filters.views import command_view
    from imapproxy.wire import Decoder, Side
    from imapproxy.wire.tokens import string_value

    dec = Decoder(Side.CLIENT)
    dec.authenticated = True
    dec.receive_data(b"a1 SELECT INBOX\r\n")
    frame = dec.next_event()
    original = command_view(frame.raw, frame)  # type: ignore[union-attr, arg-type]
    seen: list[object] = []

    class Reads(Filter):
        name = "reads"

        def command(self, c, session):  # type: ignore[no-untyped-def]
            seen.append((string_value(c.args[0]) if c.args else None, c.parse_error))
            return PASS

    log: list[tuple[str, str, bytes]] = []
    s, _ = chain_of(Recorder("rename", log, Replace(b"a1 SELECT Archive\r\n")), Reads())
    assert s.command(original, VIEW) == (Replace(b"a1 SELECT Archive\r\n"), "rename")
    broken, _ = chain_of(Recorder("rename", log, Replace(b'a1 SELECT "Arc\r\n')), Reads())
    broken.command(original, VIEW)
    assert seen == [(b"Archive", None), (None, "bad quoted string")]
    assert string_value(original.args[0]) == b"INBOX"  # the original view is unchanged
