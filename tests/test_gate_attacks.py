"""Hostile command shapes against the sans-IO gate alone (no I/O): what a filter is shown
and what would go upstream.  End to end, against Dovecot and a broken fake server, see
tests/integration/test_gate_attacks.py."""

from __future__ import annotations

import functools

import pytest

from imapproxy.filters import PASS, Reject
from imapproxy.filters.views import mailbox_arguments
from imapproxy.relay.gate import Collect, Forward, Refuse
from tests.test_gate import drive as base_drive
from tests.test_gate import gate_with

# the relay settles the decoder after a refusal
drive = functools.partial(base_drive, settle=True)


def guard(cmd):  # type: ignore[no-untyped-def]
    if cmd.name == "DELETE" or any("Secret" in m for m in mailbox_arguments(cmd)):
        return Reject("not this one", code="NOPERM")
    return PASS


def test_a_held_literal_that_looks_like_commands_stays_one_command() -> None:
    gate, f, _ = gate_with(guard)
    inner = b"x DELETE Secret\r\ny DELETE INBOX\r\n"
    data = b"a CREATE {%d}\r\n%s {3+}\r\nabc\r\nb NOOP\r\n" % (len(inner), inner)
    decisions = drive(gate, data)
    # refused once its name is known (it holds "Secret"), before the {3+} literal,
    # which is then discarded; no decision was ever about "x" or "y"
    assert [type(d) for d in decisions] == [Collect, Refuse, Forward]
    assert decisions[1].tag == b"a"  # type: ignore[attr-defined]
    assert decisions[2].segments == (b"b NOOP\r\n",)  # type: ignore[attr-defined]
    assert [c.tag for c in f.seen] == [b"b"]


def test_segments_never_carry_a_nonsync_announcement() -> None:
    """Literal data that itself ends in "{3+}" text, and mixed {n}/{n+}: every segment
    but the last ends in a synchronising {n}, and the literal bytes are unchanged."""
    gate, _, _ = gate_with(lambda c: PASS)
    lit = b"q {9+}"
    data = b"a RENAME {%d+}\r\n%s {3}\r\nnew\r\n" % (len(lit), lit)
    *_, fwd = drive(gate, data)
    assert isinstance(fwd, Forward)
    assert fwd.segments == (b"a RENAME {%d}\r\n" % len(lit), lit + b" {3}\r\n", b"new\r\n")
    assert all(s.endswith(b"}\r\n") and not s.endswith(b"+}\r\n") for s in fwd.segments[:-1])


@pytest.mark.parametrize(
    "data",
    [b"a AUTHENTICATE PLAIN {4+}\r\nAAAA\r\n", b"a IDLE {4}\r\n", b"a authenticate {1}\r\n"],
)
def test_exchanges_with_a_literal_are_refused(data: bytes) -> None:
    gate, f, _ = gate_with(lambda c: PASS)
    d = drive(gate, data)[0]
    assert isinstance(d, Refuse) and b"[CLIENTBUG]" in d.reply
    assert not f.seen


def test_a_refused_head_then_more_commands() -> None:
    gate, f, _ = gate_with(guard)
    decisions = drive(gate, b"a DELETE {6+}\r\nSecret\r\nb NOOP\r\nc delete {6}\r\n")
    assert isinstance(decisions[0], Refuse) and decisions[0].tag == b"a"
    assert isinstance(decisions[-1], Refuse) and decisions[-1].tag == b"c"
    assert [c.tag for c in f.seen] == [b"b"]


def test_arguments_the_proxy_cannot_read_are_refused_when_a_filter_decides() -> None:
    """Dovecot reads "Secr\\et" as "Secret"; the proxy's parser refuses it.  Fail closed:
    BAD, and the filter is never shown a command it could not judge."""
    gate, f, _ = gate_with(guard)
    [d] = drive(gate, b's RENAME "Secr\\et" Other\r\n')
    assert isinstance(d, Refuse) and d.reply.startswith(b"s BAD [CLIENTBUG]")
    assert f.seen == []
