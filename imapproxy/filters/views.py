"""Building the views filters see from the codec's frames, and reading common things out
of them (mailbox arguments).  Pure functions: the relay calls them, tests call them too."""

from __future__ import annotations

import re
from collections.abc import Sequence

from ..wire.events import Frame, LiteralSpec
from ..wire.limits import DEFAULT_LIMITS, Limits
from ..wire.mutf7 import MUTF7Error, decode_mutf7
from ..wire.tokens import ParenList, string_value
from .api import UNPARSED, CommandView, LiteralInfo, ResponseView


def literal_info(spec: LiteralSpec, *, inline: bool) -> LiteralInfo:
    return LiteralInfo(spec.size, spec.binary, spec.nonsync_marker, inline)


_LITERAL_END = re.compile(rb"(~?)\{0*(\d{1,20})(\+?)\}\r?\Z")


def inline_literals(raw: bytes) -> list[LiteralInfo]:
    """The literals held inside a frame's bytes (a server response's small literals are
    kept in one frame), in order: each line that ends in an announcement is followed by
    that many bytes."""
    out: list[LiteralInfo] = []
    pos = 0
    end = len(raw)
    while pos < end:
        nl = raw.find(b"\n", pos)
        if nl < 0:
            break
        brace = raw.rfind(b"{", pos, nl)
        m = _LITERAL_END.match(raw, brace - 1 if brace > pos and raw[brace - 1] == 0x7E
                               else brace, nl) if brace >= 0 else None  # fmt: skip
        if m is None:
            pos = nl + 1
            continue
        size = int(m.group(2))
        if nl + 1 + size > end:
            break  # the last announcement: its literal streams after this frame
        out.append(LiteralInfo(size, bool(m.group(1)), bool(m.group(3)), True))
        pos = nl + 1 + size
    return out


def command_view(
    raw: bytes,
    frame: Frame,
    literals: Sequence[LiteralInfo] = (),
    *,
    complete: bool = True,
    limits: Limits = DEFAULT_LIMITS,
) -> CommandView:
    """The view of a command whose parts so far are ``raw`` (joined, inline literals
    included); ``frame`` is its last part (for the tag and name the decoder found).
    ``complete`` is False when a streamed literal follows: then the arguments are parsed
    up to it and the last one is a ``LiteralRef``."""
    tag = frame.tag or b""
    full = frame.name
    uid = full.startswith("UID ")
    name = full[4:] if uid else full
    # the arguments are parsed when a filter asks for them (see CommandView)
    view = CommandView(tag, name, uid, UNPARSED, raw, tuple(literals), complete)
    if limits is not DEFAULT_LIMITS:
        view.__dict__["_limits"] = limits
    return view


def response_view(
    frame: Frame,
    *,
    command: CommandView | None = None,
    latency: float | None = None,
    literals: Sequence[LiteralInfo] = (),
    oversize: bool = False,
) -> ResponseView:
    return ResponseView(
        frame.kind,
        frame.tag,
        frame.name,
        frame.raw,
        frame.number,
        command,
        latency,
        tuple(literals),
        oversize,
    )


# Which arguments of a command are mailbox names (by position), for every command that
# names one (RFC 9051, 3501, 4314 ACL, 2087/9208 QUOTA, 5464 METADATA, 6851 MOVE, 8508
# REPLACE).  LIST and
# LSUB take a reference and a pattern, not mailbox names; they are answered with names the
# response side sees.
MAILBOX_ARGUMENTS: dict[str, tuple[int, ...]] = {
    "SELECT": (0,),
    "EXAMINE": (0,),
    "CREATE": (0,),
    "DELETE": (0,),
    "RENAME": (0, 1),
    "SUBSCRIBE": (0,),
    "UNSUBSCRIBE": (0,),
    "STATUS": (0,),
    "APPEND": (0,),
    "REPLACE": (1,),  # RFC 8508: REPLACE <message> <mailbox> <literal>
    "COPY": (1,),
    "MOVE": (1,),
    "GETACL": (0,),
    "SETACL": (0,),
    "DELETEACL": (0,),
    "MYRIGHTS": (0,),
    "LISTRIGHTS": (0,),
    "GETQUOTAROOT": (0,),
    "SETMETADATA": (0,),
    "GETMETADATA": (0,),  # (after an options list, if any: see mailbox_arguments)
}


def decode_mailbox(raw: bytes, *, utf8: bool = False) -> str:
    """A mailbox name as a filter compares it: modified UTF-7 decoded (UTF-8 when the
    client enabled UTF8=ACCEPT), ``INBOX`` in any case spelt ``INBOX``.  Bytes that are
    neither are decoded with replacement characters, so they never match a real name by
    accident."""
    if utf8:
        text = raw.decode("utf-8", "replace")
    else:
        try:
            text = decode_mutf7(raw)
        except MUTF7Error:
            text = raw.decode("utf-8", "replace")
    if text.upper() == "INBOX":
        return "INBOX"
    return text


def mailbox_arguments(cmd: CommandView, *, utf8: bool = False) -> tuple[str, ...]:
    """The decoded mailbox names a command names (``()`` for one that names none, or
    whose mailbox argument is missing or streamed)."""
    positions = MAILBOX_ARGUMENTS.get(cmd.name)
    if positions is None:
        return ()
    args = cmd.args
    if cmd.name == "GETMETADATA" and args and isinstance(args[0], ParenList):
        args = args[1:]
    names: list[str] = []
    for i in positions:
        if i < len(args):
            value = string_value(args[i])
            if value is not None:
                names.append(decode_mailbox(value, utf8=utf8))
    return tuple(names)
