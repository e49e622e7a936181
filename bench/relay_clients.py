"""Load generators for ``bench/relay_bench.py``: raw sockets + ``ssl``, no imaplib.

Each ``*_worker`` function runs in its own client process (started by the bench with
``multiprocessing``), separate from every server process. A worker first connects and
logs in, then waits on the shared barrier so that all workers (and the parent, which
samples the relay's CPU time at that moment) start the measured phase together; it
returns a dict of raw figures.

Timestamps are ``time.monotonic()`` (CLOCK_MONOTONIC), comparable across processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
import time
from typing import Any

RECV = 256 * 1024
TIMEOUT = 60.0


class ImapError(RuntimeError):
    pass


def client_context(ca_path: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(cafile=ca_path)
    return ctx


class Conn:
    """A blocking IMAP connection with a small, copy-avoiding reader."""

    def __init__(self, ep: dict[str, Any], ctx: ssl.SSLContext | None, timeout: float = TIMEOUT):
        raw = socket.create_connection((ep["host"], ep["port"]), timeout=timeout)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock: socket.socket = raw
        if ep["tls"]:
            assert ctx is not None
            self.sock = ctx.wrap_socket(raw, server_hostname="localhost")
        self.buf = bytearray()  # unread bytes, always starting at a line start
        self.rbuf = bytearray(RECV)
        self.mv = memoryview(self.rbuf)
        self.send = self.sock.sendall

    def cipher(self) -> str:
        c = self.sock.cipher() if isinstance(self.sock, ssl.SSLSocket) else None
        return f"{c[1]} {c[0]}" if c else "none (plain)"

    def _fill(self) -> None:
        n = self.sock.recv_into(self.rbuf)
        if n == 0:
            raise ImapError(f"connection closed by peer (pending {bytes(self.buf[-200:])!r})")
        self.buf += self.mv[:n]

    def read_line(self) -> bytes:
        buf = self.buf
        while True:
            i = buf.find(b"\n")
            if i >= 0:
                line = bytes(buf[: i + 1])
                del buf[: i + 1]
                return line
            self._fill()

    def skip(self, n: int) -> None:
        """Consume ``n`` bytes of literal without keeping them."""
        take = min(n, len(self.buf))
        del self.buf[:take]
        n -= take
        recv_into, mv, size = self.sock.recv_into, self.mv, RECV
        while n > 0:
            k = recv_into(mv, n if n < size else size)
            if k == 0:
                raise ImapError("connection closed inside a literal")
            n -= k

    def response(self, tag: bytes) -> tuple[bytes, int]:
        """Read up to ``tag``'s completion; returns (tagged line, literal bytes skipped)."""
        lit = 0
        prefix = tag + b" "
        while True:
            line = self.read_line()
            if line.endswith(b"}\r\n") and b"{" in line:
                n = int(line[line.rindex(b"{") + 1 : -3].rstrip(b"+"))
                self.skip(n)
                lit += n
                continue
            if line.startswith(prefix):
                if not line.startswith(prefix + b"OK"):
                    raise ImapError(f"{line!r}")
                return line, lit

    def count_tagged(self, first: int, want: int) -> None:
        """Read until ``want`` tagged completions whose tag starts with byte ``first``.

        For literal-free responses only. Scans whole line-aligned chunks with
        ``bytes.count`` so that a batch of small responses costs a few C calls.
        """
        seen = 0
        buf = self.buf
        nl_tag = b"\n" + bytes([first])
        while True:
            i = buf.rfind(b"\n")
            if i >= 0:
                chunk = bytes(buf[: i + 1])
                del buf[: i + 1]
                seen += chunk.count(nl_tag) + (chunk[0] == first)
                if b" NO " in chunk or b" BAD " in chunk:
                    raise ImapError(f"failure in {chunk[-300:]!r}")
                if seen >= want:
                    return
            self._fill()

    def greeting(self) -> None:
        line = self.read_line()
        if not line.startswith(b"* OK"):
            raise ImapError(f"greeting {line!r}")

    def command(self, tag: bytes, text: bytes) -> tuple[bytes, int]:
        self.send(tag + b" " + text + b"\r\n")
        return self.response(tag)

    def login(self, user: str, password: str) -> None:
        self.command(b"l1", b"LOGIN %s %s" % (user.encode(), password.encode()))

    def logout(self) -> None:
        with contextlib.suppress(OSError, ImapError):
            self.command(b"lo", b"LOGOUT")
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def _session(spec: dict[str, Any], ctx: ssl.SSLContext | None) -> Conn:
    conn = Conn(spec["endpoint"], ctx)
    conn.greeting()
    conn.login(spec["user"], spec["password"])
    conn.command(b"s1", b"SELECT INBOX")
    return conn


def _ctx(spec: dict[str, Any]) -> ssl.SSLContext | None:
    return client_context(spec["ca_path"]) if spec["endpoint"]["tls"] else None


# -- (a) bulk FETCH BODY[] -------------------------------------------------------------


def bulk_worker(spec: dict[str, Any], barrier: threading.Barrier) -> dict[str, Any]:
    """UID FETCH uid BODY[] over ``spec["uids"]`` round robin, ``depth`` in flight."""
    conn = _session(spec, _ctx(spec))
    cipher = conn.cipher()
    uids: list[int] = spec["uids"]
    depth, count = spec["depth"], spec["count"]
    barrier.wait()
    c0 = time.process_time()
    t0 = time.monotonic()
    deadline = t0 + spec["max_seconds"]
    sent = done = payload = 0
    read_line, skip, send = conn.read_line, conn.skip, conn.send
    while sent < min(depth, count):
        send(b"F%d UID FETCH %d BODY[]\r\n" % (sent, uids[sent % len(uids)]))
        sent += 1
    while done < sent:
        line = read_line()
        if line[-3:] == b"}\r\n":
            n = int(line[line.rindex(b"{") + 1 : -3])
            skip(n)
            payload += n
        elif line[:1] == b"F":
            if b" OK " not in line:
                raise ImapError(f"{line!r}")
            done += 1
            if sent < count and time.monotonic() < deadline:
                send(b"F%d UID FETCH %d BODY[]\r\n" % (sent, uids[sent % len(uids)]))
                sent += 1
    t1 = time.monotonic()
    cpu = time.process_time() - c0
    conn.logout()
    return {
        "bytes": payload,
        "messages": done,
        "t0": t0,
        "t1": t1,
        "client_cpu_s": cpu,
        "cipher": cipher,
    }


# -- (b) pipelined small commands -------------------------------------------------------


def pipeline_worker(spec: dict[str, Any], barrier: threading.Barrier) -> dict[str, Any]:
    """Batches of ``batch`` commands written back to back; read all tagged completions."""
    conn = _session(spec, _ctx(spec))
    size = spec["batch"]
    cmd: bytes = spec["command"].encode()
    batch = b"".join(b"Z%d %s\r\n" % (i, cmd) for i in range(size))
    barrier.wait()
    c0 = time.process_time()
    t0 = time.monotonic()
    deadline = t0 + spec["max_seconds"]
    batches = 0
    send, count_tagged, z = conn.send, conn.count_tagged, ord("Z")
    while batches < spec["max_batches"]:
        send(batch)
        count_tagged(z, size)
        batches += 1
        if time.monotonic() >= deadline:
            break
    t1 = time.monotonic()
    cpu = time.process_time() - c0
    conn.logout()
    return {"commands": batches * size, "t0": t0, "t1": t1, "client_cpu_s": cpu}


# -- (c) one-at-a-time latency ----------------------------------------------------------


def latency_worker(spec: dict[str, Any], barrier: threading.Barrier) -> dict[str, Any]:
    """Round trips (ns) of one command at a time on an established session."""
    conn = _session(spec, _ctx(spec))
    barrier.wait()
    out: dict[str, list[int]] = {}
    send, count_tagged, clock, el = conn.send, conn.count_tagged, time.perf_counter_ns, ord("L")
    for name, text in spec["commands"].items():
        line = b"L1 " + text.encode() + b"\r\n"
        for _ in range(spec["warmup"]):
            send(line)
            count_tagged(el, 1)
        samples = []
        for _ in range(spec["count"]):
            t = clock()
            send(line)
            count_tagged(el, 1)
            samples.append(clock() - t)
        out[name] = samples
    conn.logout()
    return {"rtt_ns": out}


# -- (d) session set-up rate ------------------------------------------------------------


def setup_worker(spec: dict[str, Any], barrier: threading.Barrier) -> dict[str, Any]:
    """Connect, TLS, greeting, LOGIN, SELECT INBOX, LOGOUT in a loop until the deadline."""
    ctx = _ctx(spec)
    users: list[tuple[str, str]] = spec["users"]
    barrier.wait()
    t0 = time.monotonic()
    deadline = t0 + spec["max_seconds"]
    n = 0
    while n < spec["max_sessions"]:
        user, password = users[n % len(users)]
        conn = Conn(spec["endpoint"], ctx)
        try:
            conn.greeting()
            conn.login(user, password)
            conn.command(b"s1", b"SELECT INBOX")
            conn.command(b"s2", b"LOGOUT")
        finally:
            conn.close()
        n += 1
        if time.monotonic() >= deadline:
            break
    return {"sessions": n, "t0": t0, "t1": time.monotonic()}


# -- (e) idle authenticated sessions ----------------------------------------------------


async def _open_idle(
    ep: dict[str, Any], ctx: ssl.SSLContext | None, user: str, password: str
) -> asyncio.StreamWriter:
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(
            ep["host"],
            ep["port"],
            ssl=ctx,
            server_hostname="localhost" if ctx else None,
            limit=16 * 1024,
        ),
        TIMEOUT,
    )

    async def until(tag: bytes) -> None:
        while True:
            line = await asyncio.wait_for(reader.readline(), TIMEOUT)
            if not line:
                raise ImapError("connection closed")
            if line.startswith(tag + b" "):
                if not line.startswith(tag + b" OK"):
                    raise ImapError(f"{line!r}")
                return

    await until(b"*")
    writer.write(b"i1 LOGIN %s %s\r\n" % (user.encode(), password.encode()))
    await until(b"i1")
    writer.write(b"i2 SELECT INBOX\r\n")
    await until(b"i2")
    return writer


async def _idle_main(spec: dict[str, Any], barrier: threading.Barrier, q: Any) -> dict[str, Any]:
    ctx = _ctx(spec)
    ep = spec["endpoint"]
    users: list[tuple[str, str]] = spec["users"]
    sem = asyncio.Semaphore(spec["concurrency"])
    loop = asyncio.get_running_loop()

    failures = 0

    async def one(i: int) -> asyncio.StreamWriter:
        nonlocal failures
        async with sem:
            if failures > 20:  # the target is broken: fail fast instead of timing out 1000s
                raise ImapError("gave up after 20 failed sessions")
            user, password = users[i % len(users)]
            try:
                return await _open_idle(ep, ctx, user, password)
            except BaseException:
                failures += 1
                raise

    # Open sessions step by step (cumulative counts in spec["steps"]); after each step
    # report, then wait twice on the barrier: all clients are at the step (the parent
    # measures the relay's RSS), and the parent is done measuring.
    writers: list[asyncio.StreamWriter] = []
    n_errors = 0
    for step, count in enumerate(spec["steps"]):
        t0 = time.monotonic()
        first = len(writers) + n_errors
        results = await asyncio.gather(
            *(one(i) for i in range(first, first + count - len(writers))),
            return_exceptions=True,
        )
        t1 = time.monotonic()
        writers += [r for r in results if isinstance(r, asyncio.StreamWriter)]
        errors = [repr(r) for r in results if not isinstance(r, asyncio.StreamWriter)]
        n_errors += len(errors)
        report = {
            "step": step,
            "opened": len(writers),
            "errors": errors[:5],
            "n_errors": len(errors),
            "seconds": t1 - t0,
        }
        q.put(("opened", spec["idx"], report))
        await loop.run_in_executor(None, barrier.wait)
        await loop.run_in_executor(None, barrier.wait)
    for w in writers:
        w.transport.abort()
    await asyncio.sleep(0)
    return {"opened": len(writers), "n_errors": n_errors}


def idle_worker(spec: dict[str, Any], barrier: threading.Barrier, q: Any) -> dict[str, Any]:
    return asyncio.run(_idle_main(spec, barrier, q))


WORKERS = {
    "bulk": bulk_worker,
    "pipeline": pipeline_worker,
    "latency": latency_worker,
    "setup": setup_worker,
}


def worker_entry(kind: str, spec: dict[str, Any], barrier: threading.Barrier, q: Any) -> None:
    """Process target: run one worker, put ("ok"|"error", idx, payload) on ``q``."""
    try:
        fn = WORKERS.get(kind)
        result = idle_worker(spec, barrier, q) if fn is None else fn(spec, barrier)
        q.put(("ok", spec["idx"], result))
    except BaseException as exc:
        with contextlib.suppress(Exception):
            barrier.abort()
        q.put(("error", spec["idx"], f"{type(exc).__name__}: {exc}"))
