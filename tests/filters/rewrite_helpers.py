"""Views built directly for the rewrite filter's unit tests."""

from __future__ import annotations

from typing import Any

from imapproxy.filters import CommandView, LiteralInfo, ResponseView, SessionInfo, SessionView
from imapproxy.filters.rewrite import RewriteFilter, make_rewrite
from imapproxy.wire import FrameKind
from imapproxy.wire.parser import parse_command

INFO = SessionInfo("s1", "127.0.0.1", 1, "imap@test")
SERVER_CAPS = frozenset({"IMAP4REV1", "LIST-EXTENDED", "LIST-STATUS", "NAMESPACE"})


def rewrite(options: dict[str, Any]) -> RewriteFilter:
    return make_rewrite(options, "filters[0]")(INFO)


def session(*, utf8: bool = False, caps: frozenset[str] = SERVER_CAPS) -> SessionView:
    view = SessionView(INFO, capabilities=caps)
    view.utf8 = utf8
    return view


def cmd(raw: bytes, *, complete: bool = True, streamed: int | None = None) -> CommandView:
    """``streamed``: the size of the literal that streams after ``raw`` (its head)."""
    parsed = parse_command(raw)
    uid = parsed.name.startswith("UID ")
    name = parsed.name[4:] if uid else parsed.name
    sensitive = name in ("LOGIN", "AUTHENTICATE")
    literals = (LiteralInfo(streamed, inline=False),) if streamed is not None else ()
    return CommandView(
        parsed.tag,
        name,
        uid,
        parsed.args,
        raw,
        literals,
        complete=complete and streamed is None,
        sensitive=sensitive,
    )


def data(raw: bytes) -> ResponseView:
    words = raw.split(b" ")
    name = words[2] if words[1].isdigit() else words[1]
    return ResponseView(FrameKind.DATA, None, name.rstrip(b"\r\n").decode().upper(), raw)


def tagged(tag: bytes, status: str = "OK", text: bytes = b"done") -> ResponseView:
    raw = tag + b" " + status.encode() + b" " + text + b"\r\n"
    return ResponseView(FrameKind.STATUS, tag, status, raw)
