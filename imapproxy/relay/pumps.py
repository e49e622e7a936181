"""The two pumps of a session: client to upstream, and upstream to client.

Each feeds the bytes it reads into the session's sans-IO
:class:`~imapproxy.wire.Conversation` and forwards the frames that come out (see the
theory of operation in :mod:`imapproxy.relay.session`).  They are functions of the
session, not objects: they keep their per-read state in locals, and what both share (the
client's write lock, the read a paused client pump makes) is the session's.

Per frame they do as little as possible: the common case (a command no filter holds, a
response no filter wants) costs no await and one write per read.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from ..filters.views import decode_mailbox
from ..logsafe import safe
from ..wire import (
    NEED_DATA,
    PAUSED,
    EndOfStream,
    Frame,
    FrameKind,
    Hold,
    LiteralChunk,
    Phase,
    ProtocolError,
)
from .ends import SessionEnd, unavailable
from .gate import Forward, as_sync
from .starttls import answer_starttls, starttls_refusal

if TYPE_CHECKING:
    from .session import Session
    from .timers import SessionTimers

log = logging.getLogger("imapproxy.session")


async def pump_client(s: Session) -> None:
    """Client to upstream: commands through the gate, the rest relayed as it comes."""
    conv = s.conv
    timers = s.timers
    filtering = s.filtering
    assert filtering is not None
    gate = filtering.gate
    out: list[bytes] = []  # frames collected for one write upstream
    size = 0
    read_size = s.config.session_limits.read_size
    progressed = False  # a frame or literal chunk since the timer was last told

    async def flush() -> None:
        nonlocal size
        if out:
            await s.send_upstream(out)
            out.clear()
            size = 0

    while True:
        try:
            ev = conv.next_client_event()
        except ProtocolError as exc:
            await flush()
            s.events.protocol_error(s.id, "client", exc.limit or "framing")
            if exc.fatal:
                log.warning("session %s: client protocol error: %s", s.id, exc.message)
                raise SessionEnd("client_protocol_error", exc.message, exc.reply) from None
            log.info("session %s: refused client command: %s", s.id, exc.message)
            progressed = True  # a whole line, refused
            if exc.tag is not None:
                conv.pending.pop(exc.tag, None)
            await s.send_client(exc.reply)
            continue
        if ev is NEED_DATA:
            # The decoder took all it could: what it still holds is a partial line
            # (or literal), which the client owes.
            timers.client_partial = conv.client.buffered > 0
            timers.touch(client=True, progress=progressed)
            progressed = False
            await flush()
            await read_client(s, timers, read_size)
            continue
        if ev is PAUSED:
            await flush()
            if conv.client.waiting_for is None:
                continue  # released while we were writing
            timers.client_partial = False
            timers.touch(client=True, progress=progressed)
            progressed = False
            # Keep reading while the client waits for the server, so that a client
            # that vanishes is noticed; the decoder holds what arrives (bounded by
            # max_held_bytes).  The server pump cancels this read when its answer
            # releases the decoder.
            with trio.CancelScope() as paused:
                s.paused_scope = paused
                if conv.client.waiting_for is Hold.NONSYNC_LITERAL:
                    await trio.sleep_forever()  # the literal is coming: no more now
                else:
                    await read_client(s, timers, read_size)
            s.paused_scope = None
            continue
        if type(ev) is Frame:
            progressed = True
            if s.drop_tag is not None:
                if ev.tag == s.drop_tag and not ev.first:
                    if ev.final:
                        s.drop_tag = None
                    continue
                s.drop_tag = None
            if ev.kind is FrameKind.COMMAND:
                refusal = unsafe_command(s, ev)
                if refusal is not None:
                    await refuse(s, ev, refusal)
                    continue
            if ev.kind is FrameKind.COMMAND:
                if ev.first and ev.name == "STARTTLS":
                    # what came before goes upstream first: the answer must not
                    # overtake the commands ahead of it
                    await flush()
                    timers.touch(client=True)  # the answer may take a while
                    progressed = False
                    refusal = starttls_refusal(ev)
                    if refusal is not None:
                        await refuse(s, ev, refusal)
                    else:
                        await answer_starttls(s, ev)
                    continue
                if ev.first:
                    s.events.command_started(s.id, ev.tag, ev.name)
                    # a reload's chain takes over at a command's head, nothing held
                    if s.source.generation != s.chain_generation and not gate.holding:
                        s.renew_filters()
                if ev.sensitive:
                    s.logins.note(ev)
                decision = gate.command_part(ev)  # (sync: the common case costs no await)
                if decision is None:
                    raw = as_sync(ev) if ev.nonsync else ev.raw
                elif type(decision) is Forward and len(decision.segments) == 1:
                    raw = decision.segments[0]
                else:
                    await filtering.act(decision, flush)
                    continue
            else:  # a SASL line or IDLE's DONE
                if ev.sensitive:
                    s.logins.note(ev)
                raw = filtering.client_line(ev)
            out.append(raw)
            size += len(raw)
        elif type(ev) is LiteralChunk:
            progressed = True
            if s.drop_tag is not None:
                continue
            out.append(ev.data)
            size += len(ev.data)
        else:  # EndOfStream
            await flush()
            if conv.phase is Phase.LOGOUT:
                raise SessionEnd("logout", "client logged out")
            raise SessionEnd(
                "client_closed",
                "client closed the connection" + ("" if ev.clean else " mid-message"),
            )
        if size >= read_size:
            await flush()


async def read_client(s: Session, timers: SessionTimers, read_size: int) -> None:
    """Bytes from the client into the decoder.  They do not move the idle timer by
    themselves: only what the decoder makes of them does (:func:`pump_client`)."""
    conv = s.conv
    if conv.phase is Phase.NOT_AUTHENTICATED or conv.client.waiting_for is not None:
        # Nothing large is legitimate now; what a stalled session holds stays small.
        read_size = min(read_size, s.config.session_limits.guarded_read_size)
    data = await s.receive(s.client, read_size, "client")
    s.stats.bytes_from_client += len(data)
    timers.client_partial = False  # known again at the next NEED_DATA
    s.conv.receive_client(data)


async def pump_upstream(s: Session) -> None:
    """Upstream to client: responses through the filters, batched per read."""
    conv = s.conv
    timers = s.timers
    filtering = s.filtering
    assert filtering is not None
    assert s.upstream is not None
    out: list[bytes] = []  # bytes collected for one write to the client
    size = 0
    boundary = True  # whether `out` ends at the end of a message
    read_size = s.config.session_limits.read_size

    async def flush() -> None:
        nonlocal size
        if out:
            await flush_to_client(s, out, boundary)
            out.clear()
            size = 0

    try:
        while True:
            try:
                ev = conv.next_server_event()
            except ProtocolError as exc:
                await flush()
                s.events.protocol_error(s.id, "upstream", exc.limit or "framing")
                log.warning("session %s: upstream protocol error: %s", s.id, exc.message)
                raise SessionEnd(
                    "upstream_protocol_error",
                    exc.message,
                    b"* BYE [UNAVAILABLE] upstream protocol error\r\n",
                ) from None
            if ev is NEED_DATA:
                await flush()
                data = await s.receive(s.upstream, read_size, "upstream")
                s.stats.bytes_from_upstream += len(data)
                if conv.pending and not conv.client.idling:
                    timers.touch()  # data for a command in progress
                conv.receive_server(data)
                continue
            if type(ev) is Frame:
                kind = ev.kind
                if kind is FrameKind.STATUS:
                    if ev.tag is not None and ev.first:
                        end = completed(s, timers, ev)
                        if end is not None:
                            await flush()
                            raise end
                elif kind is FrameKind.CONTINUATION:
                    if ev.first:
                        wake_client(s)
                    if conv.continued is Hold.NONSYNC_LITERAL:
                        continue  # answers the {n} we sent for the client's {n+}
                    if conv.continued is Hold.RELAY_LITERAL:
                        filtering.relay_continuation()  # answers the relay's segment
                        continue
                    if conv.stray_continuation:
                        # A "+" nothing asked for: the server reads the client's
                        # bytes differently from the proxy.  Relaying on could let
                        # them run as commands the proxy never saw.
                        await flush()
                        s.events.protocol_error(s.id, "upstream", "stray_continuation")
                        log.warning(
                            "session %s: upstream sent a continuation request that "
                            "no command asked for",
                            s.id,
                        )
                        raise SessionEnd(
                            "upstream_desync",
                            "unexpected continuation request from upstream",
                            b"* BYE [UNAVAILABLE] proxy and server out of step\r\n",
                        )
                raw = ev.raw
                if ev.first:
                    # (read each time: a reload may swap the session's filters)
                    if filtering.filters.wants_response(ev.kind, ev.name, raw):
                        try:
                            raw = filtering.response(ev, raw)
                        except SessionEnd:
                            await flush()
                            raise
                        if raw is None:  # dropped by a filter
                            continue
                elif filtering.dropping:  # the rest of a response a filter dropped
                    filtering.dropping = not ev.final
                    continue
                out.append(raw)
                size += len(raw)
                boundary = ev.final
            elif type(ev) is LiteralChunk:
                if filtering.dropping:
                    continue
                out.append(ev.data)
                size += len(ev.data)
                boundary = False
            elif type(ev) is EndOfStream:
                await flush()
                if conv.phase is Phase.LOGOUT:
                    raise SessionEnd("logout", "logged out")
                raise unavailable("upstream_closed", "upstream closed the connection")
            if size >= read_size:
                await flush()
    finally:
        if s.holding_client:
            s.holding_client = False
            s.client_lock.release()


async def flush_to_client(s: Session, parts: list[bytes], boundary: bool) -> None:
    """Write relayed bytes to the client.  Mid-message, the client lock stays held until
    the message is complete, so nothing the proxy says itself (a local reply, a BYE)
    can land inside a server response or its literal."""
    if not s.holding_client:
        await acquire(s.client_lock)
        s.holding_client = True
    s.client_boundary = False
    data = parts[0] if len(parts) == 1 else b"".join(parts)
    s.stats.bytes_to_client += len(data)
    await s.client.send_all(data)
    if boundary:
        s.client_boundary = True
        s.holding_client = False
        s.client_lock.release()


def wake_client(s: Session) -> None:
    """Cancel the client pump's read while it waited, once the server released it."""
    paused = s.paused_scope
    if paused is not None and s.conv.client.waiting_for is None:
        s.paused_scope = None
        paused.cancel()


def completed(s: Session, timers: SessionTimers, frame: Frame) -> SessionEnd | None:
    """A tagged completion from upstream (after Conversation processed it).  Returns
    an end when a filter ends the session on login."""
    wake_client(s)
    if s.no_pending is not None:
        s.no_pending.set()
    tag = frame.tag
    assert tag is not None
    filtering = s.filtering
    assert filtering is not None
    filtering.completed(frame)
    view = filtering.view
    conv = s.conv
    view.phase = conv.phase
    view.utf8 = conv.utf8_accept
    if conv.selected is not s.selected:  # (decoded only when it changes)
        s.selected = conv.selected
        view.selected = _mailbox_name(conv.selected, view.utf8)
    s.events.command_completed(s.id, tag, frame.name)
    pending = s.logins.completed(tag, frame.name)
    end = None
    if pending is not None:
        s.user, mechanism = pending
        log.info("session %s: authenticated as %s", s.id, safe(s.user))
        view.user = s.user
        view.mechanism = mechanism
        view.capabilities = s.conv.capabilities
        end = filtering.authenticated()
    timers.touch()
    return end


def unsafe_command(s: Session, frame: Frame) -> str | None:
    """Why the proxy must not forward this command, if it must not.

    A malformed head (tag with "]" or 8-bit bytes, name glued to a special) would let
    the server read bytes differently from the proxy: the server rejects the tag or
    does not know the name and skips the line.  (Literals are safe: a synchronising one
    lets the server decide, and the decoder waits for that answer; a non-synchronising
    one is sent on as synchronising, see :func:`.gate.as_sync`.)
    """
    if frame.first and not frame.name:
        return "malformed command"
    if frame.first and s.conv.tag_in_use:
        # Answers are matched to commands by tag: a second command with the tag of
        # one in progress would let the first one's answer settle the second one's
        # literal, and the proxy and the server would read the stream differently.
        return "tag already in use by a command in progress"
    return None


async def refuse(s: Session, frame: Frame, why: str) -> None:
    """Answer a command with BAD without forwarding any of it; its literal (which the
    client sends anyway) is consumed here, as the client meant it."""
    tag = frame.tag if frame.tag is not None and frame.name else b"*"
    if frame.tag is not None and not s.conv.tag_in_use:
        s.conv.pending.pop(frame.tag, None)  # (else it is the earlier command's)
        s.logins.forget(frame.tag)
    waits = frame.waits_for_continuation
    s.conv.client.refused()
    if not frame.final and not waits:
        s.drop_tag = frame.tag
    log.warning("session %s: refused a client command: %s", s.id, why)
    s.events.command_answered(s.id, frame.name, "blocked")
    reply = tag + b" BAD [CLIENTBUG] " + why.encode() + b"\r\n"
    filtering = s.filtering
    if filtering is not None:
        filtering.refused_by_relay(frame, why)
        reply = filtering.local_reply(tag, "BAD", reply, "relay")
    await s.send_client(reply)


async def acquire(lock: trio.Lock) -> None:
    """Take the lock; when it is free, without the two scheduler round trips of
    ``acquire()`` (a relay writes once per read: the round trips show in latency)."""
    try:
        lock.acquire_nowait()
    except trio.WouldBlock:
        await lock.acquire()


def _mailbox_name(raw: bytes | None, utf8: bool) -> str | None:
    return None if raw is None else decode_mailbox(raw, utf8=utf8)
