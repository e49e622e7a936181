"""End reasons are a closed, documented set (they become metric labels): every reason the
session (its module and the relay modules it is split into) can end with is listed in
``END_REASONS``; peer text in the end line is escaped and cut short."""

from __future__ import annotations

import re
from pathlib import Path

import imapproxy.relay.session as session
from imapproxy.relay.session import END_REASONS, SessionEnd

SOURCE = "\n".join(p.read_text() for p in sorted(Path(session.__file__).parent.glob("*.py")))
# SessionEnd("reason", ...) and unavailable("reason", ...), on one line or the next
_USED = re.compile(r'(?:SessionEnd|unavailable)\(\s*"([a-z_]+)"')


def test_every_reason_used_is_documented() -> None:
    used = set(_USED.findall(SOURCE))
    assert len(used) >= 15, used  # the pattern still finds them
    assert used <= set(END_REASONS), used - set(END_REASONS)


def test_the_timer_and_bye_reasons_are_used() -> None:
    used = set(_USED.findall(SOURCE))
    timers = {"idle_timeout", "client_stalled", "login_timeout", "upstream_stalled"}
    assert timers | {"upstream_bye", "logout"} <= used


def test_reasons_are_label_safe() -> None:
    for name, meaning in END_REASONS.items():
        assert re.fullmatch(r"[a-z][a-z_]*", name), name
        assert meaning


def test_session_end_carries_the_reason() -> None:
    end = SessionEnd("client_stalled", "detail", b"* BYE x\r\n")
    assert (end.reason, end.detail, end.bye) == ("client_stalled", "detail", b"* BYE x\r\n")
