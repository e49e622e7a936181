"""The session's side of the filter chain: it builds what filters see and acts on verdicts.

One :class:`Filtering` per session (only when the proxy has a chain).  The session calls it
from its pumps; the decisions themselves are the gate's (:mod:`.gate`, sans-IO).  What is
done here is I/O and the session's state:

* a command the gate holds back: the proxy's own ``+`` to the client, and later the
  command sent upstream in segments, each after the server's ``+``
  (:meth:`Conversation.expect_relay_continuation`; the upstream pump hands each such ``+``
  to :meth:`Filtering.relay_continuation` instead of relaying it);
* a refused or locally answered command: the reply, the decoder settled (a streamed
  ``{n}`` never comes; a ``{n+}`` is read and discarded), the reply shown to the chain as a
  response made by the proxy;
* responses offered to the chain, replaced or dropped;
* the session hooks (started, authenticated, ended).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace

import trio

from ..filters.api import (
    ClientLineView,
    Disconnect,
    Drop,
    Pass,
    Replace,
    ResponseView,
    SessionEndInfo,
    SessionView,
)
from ..filters.chain import SessionFilters, bye_line
from ..filters.views import command_view
from ..logsafe import safe
from ..wire import Conversation, Frame, FrameKind, Secret
from ..wire.limits import Limits
from .ends import SessionEnd
from .gate import Collect, CommandGate, Decision, End, Forward, Refuse, Wait

log = logging.getLogger("imapproxy.session")

_PROXY_CONTINUATION = b"+ Ready for literal data\r\n"


def _ended_by_filter(by: str | None, verdict: Disconnect) -> SessionEnd:
    return SessionEnd(
        "filter_disconnect" if by is None or verdict.text != "filter failed" else "filter_error",
        f"filter {by or '?'}: {verdict.text}",
        bye_line(verdict),
    )


class Filtering:
    __slots__ = (
        "_on_refused", "_segment_answered", "_segment_done", "_segment_ok", "_segment_tag",
        "_send_client", "_send_upstream", "_wait_segment", "conv", "dropping", "filters",
        "gate", "hook_timeout", "view",
    )  # fmt: skip

    def __init__(
        self,
        filters: SessionFilters,
        view: SessionView,
        conv: Conversation,
        limits: Limits,
        *,
        send_client: Callable[[bytes], Awaitable[None]],
        send_upstream: Callable[[list[bytes]], Awaitable[None]],
        refused: Callable[[bytes], None] = lambda tag: None,
        wait_segment: Callable[[trio.Event], Awaitable[None]] | None = None,
        segment_answered: Callable[[], None] = lambda: None,
        hook_timeout: float = 5.0,
    ) -> None:
        """``refused(tag)`` is told of every command refused here (it never reaches the
        server: e.g. a login it must not be taken for).  ``wait_segment(done)`` waits for
        the server's answer to a segment (the session's keeps an eye on the client
        meanwhile); ``segment_answered()`` is told when it came.  ``hook_timeout`` bounds
        the wait for a filter's hook that must wait (``Timeouts.filter_hook``)."""
        self.filters = filters
        self.view = view
        self.conv = conv
        self.gate = CommandGate(filters, view, limits, clock=trio.current_time)
        self._send_client = send_client
        self._send_upstream = send_upstream
        self._on_refused = refused
        self._wait_segment = wait_segment or (lambda done: done.wait())
        self._segment_answered = segment_answered
        self.hook_timeout = hook_timeout
        self._segment_done: trio.Event | None = None  # waiting for the server's "+"
        self._segment_tag: bytes | None = None
        self._segment_ok = False
        self.dropping = False  # the rest of a dropped response (its literal) is skipped

    def use(self, filters: SessionFilters) -> None:
        """A reload's filters (at a command's head, nothing held: see
        :mod:`.reload`)."""
        self.filters = filters
        self.gate.use(filters)

    # ------------------------------------------------------------------ session hooks

    def started(self) -> None:
        if self.filters.failed:
            raise SessionEnd("filter_error", "a filter could not be made", bye_line(
                Disconnect("filter failed")))  # fmt: skip
        verdict = self.filters.session_started(self.view)
        if type(verdict) is Disconnect:
            raise _ended_by_filter(None, verdict)

    def authenticated(self) -> SessionEnd | None:
        verdict = self.filters.authenticated(self.view)
        return _ended_by_filter(None, verdict) if type(verdict) is Disconnect else None

    def ended(self, end: SessionEndInfo) -> None:
        self.filters.session_ended(self.view, end)

    # ------------------------------------------------------------------ client side

    async def act(self, decision: Decision, flush: Callable[[], Awaitable[None]]) -> None:
        """Act on the gate's decision about a client command part (the relay handles a
        pass in one segment itself: it is the common case)."""
        kind = type(decision)
        if kind is Wait:
            await flush()
            while type(decision) is Wait:
                outcome = await self._await_hook(decision)  # type: ignore[arg-type]
                decision = self.gate.resume(decision, outcome)  # type: ignore[arg-type]
            kind = type(decision)
        if kind is Collect:
            await flush()
            if decision.ack:  # type: ignore[union-attr]
                await self._send_client(_PROXY_CONTINUATION)
            self.conv.client.continuation()
            return
        if kind is Forward:
            segments = decision.segments  # type: ignore[union-attr]
            await flush()
            if len(segments) == 1:
                await self._send_upstream([segments[0]])
            else:
                await self._send_segments(decision.view.tag, segments)  # type: ignore[union-attr]
            return
        if kind is Refuse:
            await flush()
            await self._refused(decision)  # type: ignore[arg-type]
            return
        assert kind is End
        await flush()
        end: End = decision  # type: ignore[assignment]
        raise SessionEnd("filter_disconnect", f"filter {end.by}: {end.text}", end.bye)

    async def _await_hook(self, wait: Wait) -> object:
        """What a suspended hook's awaitable gave: its verdict, or the exception it raised
        (a timeout after ``hook_timeout`` seconds included)."""
        with trio.move_on_after(self.hook_timeout):
            try:
                return await wait.pending.awaitable
            except Exception as exc:
                return exc
        return TimeoutError(f"command hook took longer than {self.hook_timeout:g} s")

    async def _send_segments(self, tag: bytes, segments: tuple[bytes, ...]) -> None:
        """Each segment but the last ends in ``{n}``: the next one goes only after the
        server's "+".  A tagged answer instead ends it: the server refused the command,
        and the client, which sent it whole, reads that answer."""
        for segment in segments[:-1]:
            done = self._segment_done = trio.Event()
            self._segment_tag = tag
            self._segment_ok = False
            self.conv.expect_relay_continuation(tag)
            await self._send_upstream([segment])
            await self._wait_segment(done)
            self._segment_done = None
            if not self._segment_ok:
                return
        await self._send_upstream([segments[-1]])

    def relay_continuation(self) -> None:
        """The upstream pump got the server's "+" for a segment (not relayed)."""
        done = self._segment_done
        if done is not None:
            self._segment_ok = True
            done.set()
            self._segment_answered()

    def completed(self, frame: Frame) -> None:
        """A tagged completion (first part) from the server."""
        done = self._segment_done
        if done is not None and frame.tag == self._segment_tag:
            done.set()  # refused in the middle: nothing more of it is sent
            self._segment_answered()

    async def _refused(self, decision: Refuse) -> None:
        tag = decision.tag
        conv = self.conv
        conv.pending.pop(tag, None)
        # a streamed {n} the client now never sends, a {n+} read and discarded, or an
        # exchange (AUTHENTICATE, IDLE) that will not start
        conv.client.completed(tag, "NO")
        self.gate.completed_locally(tag)
        self._on_refused(tag)
        if decision.by is not None:
            log.info(
                "session %s: %s refused by filter %s: %s",
                self.view.info.id,
                safe(decision.view.full_name),
                safe(decision.by),
                safe(decision.reply.rstrip(b"\r\n").rpartition(b"]")[2].strip() or b"-"),
            )
        reply = self.local_reply(tag, decision.status, decision.reply, decision.by or "relay")
        await self._send_client(reply)

    def local_reply(self, tag: bytes | None, status: str, reply: bytes, by: str) -> bytes:
        """Show filters a tagged reply the proxy made (its last line) before it is sent;
        returns what to send (a filter may have replaced the last line)."""
        head, sep, last = reply.rstrip(b"\r\n").rpartition(b"\r\n")
        view = ResponseView(FrameKind.STATUS, tag, status, last + b"\r\n", by=by)
        verdict, _ = self.filters.response(view, self.view)
        if type(verdict) is Replace:
            return head + sep + verdict.raw
        return reply

    def refused_by_relay(self, frame: Frame, why: str) -> None:
        """Observers see a command the relay refused itself (malformed, tag in use)."""
        view = command_view(frame.raw, frame, complete=frame.final)
        view = replace(view, sensitive=frame.sensitive, verdict="refuse", by="relay")
        self.filters.observe_command(view, self.view)

    def client_line(self, ev: Frame) -> bytes:
        """A SASL line or IDLE's DONE: the bytes to forward."""
        line = ClientLineView(ev.kind, ev.tag, Secret(ev.raw), len(ev.raw))
        verdict, by = self.filters.client_line(line, self.view)
        if type(verdict) is Replace:
            return verdict.raw
        if type(verdict) is Disconnect:
            raise _ended_by_filter(by, verdict)
        return ev.raw

    # ------------------------------------------------------------------ server side

    def response(self, ev: Frame, raw: bytes) -> bytes | None:
        """A server frame's first part about to be relayed (``raw``, as the relay would
        send it).  Returns the bytes to send, or None to drop it.  Raises SessionEnd for a
        Disconnect."""
        filters = self.filters
        view = ev.with_raw(raw)
        verdict, by = self.gate.response(view, oversize=ev.oversize)
        kind = type(verdict)
        if kind is Pass:
            return raw
        if kind is Replace:
            if not ev.final:
                filters.report(by or "?", "response", ValueError("Replace of a partial response"))
                return raw
            return verdict.raw  # type: ignore[union-attr]
        if kind is Drop:
            self.dropping = not ev.final
            return None
        raise _ended_by_filter(by, verdict)  # type: ignore[arg-type]
