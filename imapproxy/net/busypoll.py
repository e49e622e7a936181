"""Busy polling: keep the event loop awake for a moment after the proxy sends something.

Why: a relayed round trip wakes the proxy twice - when the command arrives and when the
answer comes back - and waking a process that sleeps in ``epoll_wait`` is slow on virtual
machines (the idle vCPU halts; the wake-up is an inter-processor interrupt through the
hypervisor).  Measured on the benchmark VM, the proxy added ~0.37 ms to a NOOP round trip,
of which only ~0.12 ms was its own work.  An answer usually comes within a few hundred
microseconds of the request, so for ``window`` seconds after each send the loop polls
(``epoll_wait`` with a zero timeout, through trio's scheduler) instead of sleeping.

Cost: while nothing arrives, at most ``window`` seconds of CPU per send, spent only by a
proxy that was otherwise idle; a busy proxy never sleeps anyway.  Idle sessions cost
nothing.  One poller serves the whole process: one ``epoll_wait`` per pass whatever the
number of sessions.
"""

from __future__ import annotations

import time

import trio

DEFAULT_WINDOW = 0.0003
"""Seconds the loop stays awake after a send (0 turns busy polling off)."""


class BusyPoll:
    """Run :meth:`run` in a nursery; streams call :meth:`expect` after they send."""

    __slots__ = ("_until", "_wakeup", "window")

    def __init__(self, window: float = DEFAULT_WINDOW) -> None:
        self.window = window
        self._until = 0.0
        self._wakeup: trio.Event | None = None  # set while the poller sleeps

    def expect(self) -> None:
        """Something was sent: an answer is likely soon."""
        self._until = time.perf_counter() + self.window
        wakeup = self._wakeup
        if wakeup is not None:
            self._wakeup = None
            wakeup.set()

    async def run(self) -> None:
        """Poll while an answer is expected; sleep otherwise.  Runs until cancelled."""
        while True:
            if time.perf_counter() >= self._until:
                wakeup = self._wakeup = trio.Event()
                await wakeup.wait()
            await trio.lowlevel.checkpoint()
