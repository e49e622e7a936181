"""A burst of stalled APPENDs against a proxy subprocess, and its RSS (issue 8 section 5).

One round: ``sessions`` clients connect (plain TCP) and log in, each then sends
``a APPEND INBOX {50000000+}`` and ``literal_bytes`` of that literal and stalls; once the
proxy's RSS has settled, all of them close.  :func:`run_rounds` measures the proxy's RSS
idle, while stalled and after each round (polling until it is back near the idle figure
or ``return_timeout`` has passed).  Used by ``tests/integration/test_proxy_memory.py`` and
``bench/memory_burst.py``.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .proxy import vm_rss_kib

MIB = 1024 * 1024
ANNOUNCED = 50_000_000  # the literal size the clients announce (and never finish)


@dataclass
class Round:
    stalled_kib: int  # RSS once every session of the round has sent and stalled
    after_kib: int  # RSS at the end of the wait after the sessions closed
    return_seconds: float | None  # until RSS was within the margin of idle; None: never
    later_kib: int | None = None  # RSS ``later`` seconds after the close, if asked for
    held_kib: int | None = None  # RSS while stalled after the heap was trimmed, if asked for


@dataclass
class BurstResult:
    idle_kib: int
    rounds: list[Round] = field(default_factory=list)

    @property
    def peak_kib(self) -> int:
        return max(r.stalled_kib for r in self.rounds)

    @property
    def held_kib(self) -> int:
        return max(r.held_kib or 0 for r in self.rounds)

    def table(self) -> str:
        lines = [
            f"idle RSS: {self.idle_kib / 1024:.1f} MiB",
            "round  stalled MiB  held MiB  after MiB  returned in  later MiB",
        ]
        for i, r in enumerate(self.rounds, 1):
            back = f"{r.return_seconds:.2f} s" if r.return_seconds is not None else "never"
            later = f"{r.later_kib / 1024:9.1f}" if r.later_kib is not None else "        -"
            held = f"{r.held_kib / 1024:8.1f}" if r.held_kib is not None else "       -"
            lines.append(
                f"{i:5d}  {r.stalled_kib / 1024:11.1f}  {held}  {r.after_kib / 1024:9.1f}"
                f"  {back:>11}  {later}"
            )
        return "\n".join(lines)


def _read_line(sock: socket.socket, buf: bytearray) -> bytes:
    while b"\n" not in buf:
        data = sock.recv(4096)
        if not data:
            raise EOFError(f"connection closed; unread: {bytes(buf)[:200]!r}")
        buf += data
    line, _, rest = bytes(buf).partition(b"\n")
    buf[:] = rest
    return line + b"\n"


def _login(port: int, user: str, password: str, ctx: ssl.SSLContext | None = None) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    if ctx is not None:
        sock = ctx.wrap_socket(sock, server_hostname="localhost")
    buf = bytearray()
    greeting = _read_line(sock, buf)
    assert greeting.startswith(b"* OK"), greeting
    sock.sendall(b'L LOGIN "%s" "%s"\r\n' % (user.encode(), password.encode()))
    while True:
        line = _read_line(sock, buf)
        if line.startswith(b"L "):
            assert line.startswith(b"L OK"), line
            return sock


def _logout(sock: socket.socket) -> None:
    """LOGOUT, and wait until the proxy has closed the connection (the session ended)."""
    sock.sendall(b"Z LOGOUT\r\n")
    try:
        while sock.recv(4096):
            pass
    except OSError:
        pass  # e.g. a TLS connection closed without close_notify
    sock.close()


def _stall(sock: socket.socket, literal_bytes: int) -> None:
    """The APPEND line and the first ``literal_bytes`` of its literal, then nothing."""
    sock.sendall(b"A APPEND INBOX {%d+}\r\n" % ANNOUNCED)
    chunk = b"x" * (64 * 1024)
    left = literal_bytes
    while left:
        n = min(left, len(chunk))
        sock.sendall(chunk[:n])
        left -= n


def settle(pid: int, *, step: float = 0.1, quiet: int = 3, timeout: float = 10.0) -> int:
    """RSS once it has changed by less than 1 MiB over ``quiet`` samples ``step`` apart."""
    deadline = time.monotonic() + timeout
    samples = [vm_rss_kib(pid)]
    while time.monotonic() < deadline:
        time.sleep(step)
        samples.append(vm_rss_kib(pid))
        last = samples[-quiet - 1 :]
        if len(last) > quiet and max(last) - min(last) < 1024:
            break
    return samples[-1]


def run_rounds(
    pid: int,
    port: int,
    login: Callable[[], tuple[str, str]],
    *,
    rounds: int = 4,
    sessions: int = 100,
    literal_bytes: int = MIB,
    margin_kib: int = 32 * 1024,
    return_timeout: float = 10.0,
    ctx: ssl.SSLContext | None = None,
    later: float | None = None,
    held_after: float | None = None,
) -> BurstResult:
    """Run the rounds against the proxy ``pid`` listening on ``port`` (see the module doc).

    ``login()`` gives the (user, password) for each session.  After each round RSS is
    polled until it is within ``margin_kib`` of the idle figure, at most
    ``return_timeout`` seconds; the next round starts after that.  With ``ctx`` the
    clients use implicit TLS (``port`` must then be a TLS listener).  With ``later``, RSS
    is also sampled that many seconds after the close (after the return, if later).  With
    ``held_after``, once the round has stalled one more session logs in and out, which
    makes the proxy trim its heap (:class:`imapproxy.net.malloc.HeapTrimmer`), and RSS is
    sampled ``held_after`` seconds later: what the stalled sessions hold, without the
    freed memory of the transfer."""
    # One ordinary session first, so that what any session allocates once (imports,
    # caches) is in the idle figure.
    user, password = login()
    _logout(_login(port, user, password, ctx))
    result = BurstResult(idle_kib=settle(pid))
    with ThreadPoolExecutor(max_workers=16) as pool:
        for _ in range(rounds):
            creds = [login() for _ in range(sessions)]
            socks = list(pool.map(lambda c: _login(port, *c, ctx), creds))
            try:
                list(pool.map(lambda s: _stall(s, literal_bytes), socks))
                stalled = settle(pid)
                held = None
                if held_after is not None:
                    _logout(_login(port, *login(), ctx))
                    time.sleep(held_after)
                    held = settle(pid)
            finally:
                for sock in socks:
                    sock.close()
            start = time.monotonic()
            returned = None
            after = vm_rss_kib(pid)
            while True:
                after = vm_rss_kib(pid)
                elapsed = time.monotonic() - start
                if after - result.idle_kib <= margin_kib:
                    returned = elapsed
                    break
                if elapsed > return_timeout:
                    break
                time.sleep(0.05)
            later_kib = None
            if later is not None:
                time.sleep(max(0.0, start + later - time.monotonic()))
                later_kib = vm_rss_kib(pid)
            result.rounds.append(Round(stalled, after, returned, later_kib, held))
    return result
