"""BusyPoll: awake for its window after each send, asleep otherwise, gone when cancelled."""

from __future__ import annotations

import time

import trio

from imapproxy.net.busypoll import BusyPoll
from imapproxy.net.transport import SocketStream


async def _settle() -> None:
    for _ in range(5):
        await trio.lowlevel.checkpoint()


async def test_polls_for_its_window_then_sleeps() -> None:
    poll = BusyPoll(window=0.02)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(poll.run)
        await _settle()
        assert poll._wakeup is not None  # nothing expected: asleep

        poll.expect()
        started = time.perf_counter()
        passes = 0
        while poll._wakeup is None:  # awake: this loop runs because the poller polls
            await trio.lowlevel.checkpoint()
            passes += 1
        elapsed = time.perf_counter() - started
        # its window (0.02 s), then it sleeps: the upper bound only says "not for ever"
        # (generous: a loaded machine may not run this task for a while)
        assert 0.015 < elapsed < 5.0
        assert passes > 10

        await trio.sleep(0.05)
        assert poll._wakeup is not None  # still asleep, no CPU spent meanwhile
        nursery.cancel_scope.cancel()


async def test_expect_extends_the_window() -> None:
    poll = BusyPoll(window=0.05)
    poll.expect()
    first = poll._until
    await trio.sleep(0.01)
    poll.expect()
    assert poll._until > first


async def test_socket_sends_tell_the_poller() -> None:
    poll = BusyPoll(window=10.0)
    a_sock, b_sock = trio.socket.socketpair()
    a = SocketStream.from_trio(trio.SocketStream(a_sock), busy_poll=poll)
    b = SocketStream.from_trio(trio.SocketStream(b_sock))
    try:
        assert poll._until == 0.0
        await b.send_all(b"no poller here")
        assert poll._until == 0.0
        await a.send_all(b"x")
        assert poll._until > time.perf_counter() + 5
        assert await b.receive_some(10) == b"x"
    finally:
        await a.aclose()
        await b.aclose()
