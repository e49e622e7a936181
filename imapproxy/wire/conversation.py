"""Conversation state: both directions of one IMAP connection, seen together.

The client's bytes cannot be framed without knowing what the server said (see
:mod:`imapproxy.wire.decoder`), and the session state (RFC 9051 §3: not authenticated,
authenticated, selected, logout) changes only when the server completes a command.  A
:class:`Conversation` owns one decoder per direction and wires the server's answers into the
client decoder, tracks pending commands by tag (pipelining included) and the capabilities the
server announced.

It is still sans-IO: bytes in, events out; the caller moves the bytes.  Events must be taken
from both directions in the order the caller relays them: in particular the server event that
releases a paused client decoder (a ``+``) is processed here *before* it is forwarded, so the
client's answer to it can only ever be read the way the server will read it.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from .decoder import Decoder, Hold
from .errors import LimitExceeded, ParseError, Side, bye
from .events import Event, Frame, FrameKind, LiteralChunk, Wait
from .limits import DEFAULT_LIMITS, Limits
from .parser import capabilities_of, parse_command, parse_response
from .tokens import Command, string_value


class Phase(enum.Enum):
    NOT_AUTHENTICATED = "not_authenticated"
    AUTHENTICATED = "authenticated"
    SELECTED = "selected"
    LOGOUT = "logout"


@dataclass(slots=True)
class PendingCommand:
    """A command sent by the client and not yet completed by the server."""

    tag: bytes
    name: str
    mailbox: bytes | None = None  # SELECT / EXAMINE target


_CAPABILITY_CODE = re.compile(rb"[^ ]+ [A-Za-z]+ \[CAPABILITY[ \]]", re.IGNORECASE)
_SELECTING = frozenset({"SELECT", "EXAMINE"})
_LEAVING_MAILBOX = frozenset({"CLOSE", "UNSELECT"})
AUTHENTICATING_COMMANDS = frozenset({"LOGIN", "AUTHENTICATE"})
_BYE_KEPT = 512  # bytes of a server's BYE kept for the log (its text is resp-text)


class Conversation:
    def __init__(self, limits: Limits = DEFAULT_LIMITS, *, nonsync_as_sync: bool = False) -> None:
        self.limits = limits
        self.client = Decoder(Side.CLIENT, limits)
        self.client.nonsync_as_sync = nonsync_as_sync
        self.server = Decoder(Side.SERVER, limits)
        self.phase = Phase.NOT_AUTHENTICATED
        self.selected: bytes | None = None
        self.pending: dict[bytes, PendingCommand] = {}
        self.capabilities: frozenset[str] | None = None
        self.greeted = False
        self.utf8_accept = False  # the server confirmed ENABLE UTF8=ACCEPT
        self._assembling: list[bytes] | None = None  # parts of a SELECT/EXAMINE so far
        # What the server's last "+" released in the client decoder (None: nothing).  With
        # nonsync_as_sync, a "+" that released Hold.NONSYNC_LITERAL answers the relay's own
        # {n}: the client never asked for it, so the relay must not pass it on.
        self.continued: Hold | None = None
        # The last "+" was asked for by nothing: no literal or exchange waited for it, and
        # none is in progress (IDLE keep-alives and SASL steps are not stray).  Then the
        # server reads the client's bytes differently from this conversation.
        self.stray_continuation = False
        # "+"s the server owes for literals the relay itself sent (expect_relay_continuation)
        self._relay_literals = 0
        self._relay_tag: bytes | None = None
        # The last command started reuses the tag of one still in progress.  It is not
        # tracked (the first keeps the tag): answers are matched to commands by tag, so
        # the driver must refuse it rather than forward it (RFC 9051 §2.2.1: tags are
        # unique among commands in progress; a server need not check).
        self.tag_in_use = False
        # The server's untagged BYE, if it sent one (its first bytes, for a log), and
        # whether it answered the client's LOGOUT rather than ending the session itself
        # (shutting down, its own idle timeout).
        self.bye: bytes | None = None
        self.bye_requested = False

    # ------------------------------------------------------------- client side

    def receive_client(self, data: bytes) -> None:
        self.client.receive_data(data)

    def next_client_event(self) -> Event | Wait:
        event = self.client.next_event()
        if type(event) is Frame and event.kind is FrameKind.COMMAND:
            if event.first:
                self._command_started(event)
            elif self._assembling is not None:
                self._assemble(event)
        elif type(event) is LiteralChunk:
            self._assembling = None  # a streamed mailbox name: too large to be real
        return event

    def _command_started(self, frame: Frame) -> None:
        tag = frame.tag
        self.tag_in_use = False
        if tag is None:
            return
        if tag in self.pending:
            self.tag_in_use = True
            self._assembling = None
            return
        if len(self.pending) >= self.limits.max_pending_commands:
            raise LimitExceeded(
                "too many commands pending",
                side=Side.CLIENT,
                fatal=True,
                reply=bye("too many commands pending"),
                limit="max_pending_commands",
                tag=tag,
            )
        self.pending[tag] = PendingCommand(tag, frame.name)
        self._assembling = None
        if frame.name in _SELECTING:
            # The mailbox name may come as a synchronising literal in a later part.
            self._assembling = [frame.raw]
            if frame.final:
                self._assemble_done(tag)

    def _assemble(self, frame: Frame) -> None:
        assert self._assembling is not None
        self._assembling.append(frame.raw)
        if frame.final and frame.tag is not None:
            self._assemble_done(frame.tag)

    def _assemble_done(self, tag: bytes) -> None:
        parts = self._assembling or []
        self._assembling = None
        pending = self.pending.get(tag)
        if pending is None:
            return
        try:
            cmd = parse_command(b"".join(parts), self.limits)
        except ParseError:
            return
        if cmd.args:
            pending.mailbox = string_value(cmd.args[0])

    # ------------------------------------------------------------- server side

    def receive_server(self, data: bytes) -> None:
        self.server.receive_data(data)

    def next_server_event(self) -> Event | Wait:
        event = self.server.next_event()
        if type(event) is Frame and event.first:
            self._server_frame(event)
        return event

    def _server_frame(self, frame: Frame) -> None:
        kind = frame.kind
        if kind is FrameKind.CONTINUATION:
            if self._relay_literals:
                # the relay holds the client's command whole and sends it in segments:
                # the client decoder waits for nothing, this "+" is the relay's
                self._relay_literals -= 1
                self.continued = Hold.RELAY_LITERAL
                self.stray_continuation = False
                return
            hold = self.client.waiting_for
            self.continued = hold if self.client.continuation() else None
            self.stray_continuation = self.continued is None and self.client.exchange not in (
                Hold.AUTHENTICATE,
                Hold.IDLE,
            )
            return
        if kind is FrameKind.GREETING:
            self.greeted = True
            if frame.name == "PREAUTH":
                self._set_phase(Phase.AUTHENTICATED)
            elif frame.name == "BYE":
                self._set_phase(Phase.LOGOUT)
            self._maybe_capabilities(frame)
            return
        if kind is FrameKind.STATUS:
            if frame.tag is None:
                if frame.name == "BYE":
                    self.bye = frame.raw[:_BYE_KEPT]
                    self.bye_requested = any(p.name == "LOGOUT" for p in self.pending.values())
                    self._set_phase(Phase.LOGOUT)
                elif frame.name == "OK":
                    self._maybe_capabilities(frame)
                return
            self._completed(frame)
            return
        if kind is FrameKind.DATA and frame.name == "CAPABILITY":
            self._maybe_capabilities(frame)
        elif (
            kind is FrameKind.DATA
            and frame.name == "ENABLED"
            and b"UTF8=ACCEPT" in frame.raw.upper()
        ):
            # RFC 6855: once UTF8=ACCEPT is enabled, mailbox names travel as UTF-8
            self.utf8_accept = True

    def expect_relay_continuation(self, tag: bytes) -> None:
        """The relay sent a segment of command ``tag`` ending in a literal announcement of
        its own (the client's command was already read whole): the server's next "+"
        answers it, unless the command is completed first."""
        self._relay_literals += 1
        self._relay_tag = tag

    def _completed(self, frame: Frame) -> None:
        tag = frame.tag
        assert tag is not None
        if tag == self._relay_tag:  # completed instead of "+": no more "+" is owed
            self._relay_literals = 0
            self._relay_tag = None
        status = frame.name
        self.client.completed(tag, status)
        cmd = self.pending.pop(tag, None)
        if status == "OK":
            self._maybe_capabilities(frame)
        if cmd is None:
            return
        name = cmd.name
        if status == "OK":
            if name in AUTHENTICATING_COMMANDS:
                self._set_phase(Phase.AUTHENTICATED)
            elif name in _SELECTING:
                self.selected = cmd.mailbox
                self._set_phase(Phase.SELECTED)
            elif name in _LEAVING_MAILBOX:
                self._set_phase(Phase.AUTHENTICATED)
            elif name == "LOGOUT":
                self._set_phase(Phase.LOGOUT)
        elif status == "NO" and name in _SELECTING and self.phase is Phase.SELECTED:
            # RFC 9051 §6.3.2: a failed SELECT leaves no mailbox selected.
            self._set_phase(Phase.AUTHENTICATED)

    def _set_phase(self, phase: Phase) -> None:
        if self.phase is Phase.LOGOUT:
            return
        self.phase = phase
        if phase is not Phase.SELECTED:
            self.selected = None
        authenticated = phase in (Phase.AUTHENTICATED, Phase.SELECTED)
        self.client.authenticated = authenticated
        self.server.authenticated = authenticated

    def _maybe_capabilities(self, frame: Frame) -> None:
        if frame.oversize or not frame.final:
            # Too long to parse (a capability list over max_line_bytes): the known
            # capabilities stay as they were.  Completions are tracked all the same (tag
            # and name come from the first part).
            return
        raw = frame.raw
        if frame.kind is not FrameKind.DATA and (
            b"[" not in raw or not _CAPABILITY_CODE.match(raw)
        ):
            return
        try:
            caps = capabilities_of(parse_response(frame.raw, self.limits))
        except ParseError:
            return
        if caps is None:
            return
        self.set_capabilities(caps)

    def set_capabilities(self, caps: tuple[str, ...] | frozenset[str]) -> None:
        self.capabilities = frozenset(c.upper() for c in caps)
        if "LITERAL+" in self.capabilities:
            self.client.max_nonsync_literal = None
        elif "LITERAL-" in self.capabilities or "IMAP4REV2" in self.capabilities:
            # RFC 9051 includes LITERAL- in IMAP4rev2.
            self.client.max_nonsync_literal = self.limits.max_nonsync_literal_minus
        else:
            # Neither: a non-synchronising literal is not allowed at all (RFC 7888).
            self.client.max_nonsync_literal = 0

    # ------------------------------------------------------------- questions

    @property
    def waiting_for(self) -> Hold | None:
        """What the client side is paused for (a ``+`` or a tagged reply)."""
        return self.client.waiting_for

    def command_for(self, tag: bytes) -> PendingCommand | None:
        return self.pending.get(tag)


__all__ = ["Command", "Conversation", "PendingCommand", "Phase"]
