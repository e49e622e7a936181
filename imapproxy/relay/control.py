"""The control socket (``imapproxy run --control-socket PATH``): where ``imapproxy tail``
attaches to see the live conversation.

A Unix socket, mode 0600 (it shows who logs in and what they do: the proxy's user and
root only).  At start-up an existing socket nobody answers on (a proxy that crashed) is
removed; an existing file that is not a socket, or a socket a running process answers on,
is refused with one line.  The socket is removed when the proxy stops.

Protocol, newline-delimited JSON both ways (one object a line, UTF-8):

* proxy -> tail: first ``{"type":"hello","protocol":1,"pid":N,"schema":1}``, then records
  of the JSONL transcript (schema version 1), and ``notice`` records about the feed
  itself (``{"type":"notice","lost":N,"text":...}``); a record may carry ``lost``;
* tail -> proxy (optional, at any time): ``{"filter":{"user":[...],"session":[...],
  "client":[...],"command":[...],"status":[...]}}`` (see
  :class:`~imapproxy.filters.live.RecordFilter`): from then on only matching records are
  queued for it.  A line that is not such an object gets a notice and closes the
  connection.

Each attached tail has a writer task sending from its own bounded queue (records that do
not fit are lost and counted, see :mod:`imapproxy.filters.live`): a tail that does not
read blocks only that task.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import stat
import time

import trio

from ..config import ControlLimits
from ..filters.live import LiveHub, RecordFilter, Subscriber, notice
from ..logsafe import safe

log = logging.getLogger("imapproxy.control")

PROTOCOL = 1
_BATCH = 512  # lines per send: one write for many records


def bind_control_socket(path: str) -> socket.socket:
    """A listening Unix socket at ``path``, mode 0600; a ValueError (one line, names the
    path and what to do) when it cannot be."""
    flag = "--control-socket"
    if len(os.fsencode(path)) > 107:
        raise ValueError(f"{flag} {path}: path too long for a Unix socket (at most 107 bytes)")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise ValueError(f"{flag} {path}: cannot use it: {exc.strerror}") from None
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise ValueError(
                f"{flag} {path}: exists and is not a socket; remove it or choose another path"
            )
        if _answers(path):
            raise ValueError(
                f"{flag} {path}: another process is listening on it (another proxy?); "
                "stop it or choose another path"
            )
        os.unlink(path)  # stale: left by a proxy that did not stop cleanly
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # created 0600 from the start (no window before chmod)
    try:
        sock.bind(path)
    except OSError as exc:
        sock.close()
        raise ValueError(f"{flag} {path}: cannot create the socket: {exc.strerror}") from None
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    sock.listen(16)
    sock.setblocking(False)
    return sock


def _answers(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except OSError as exc:
        # refused: nobody listens (stale); EACCES and the like: somebody else's, keep it
        return exc.errno not in (errno.ECONNREFUSED, errno.ENOENT)
    finally:
        probe.close()
    return True


class ControlServer:
    """Serves ``imapproxy tail`` clients on the bound socket, in the proxy's nursery."""

    def __init__(self, path: str, hub: LiveHub, limits: ControlLimits) -> None:
        self.path = path
        self.hub = hub
        self.limits = limits
        self._sock: socket.socket | None = bind_control_socket(path)
        self._ino = os.stat(path).st_ino
        self.attached = 0

    async def serve(self) -> None:
        sock = self._sock
        assert sock is not None
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
        log.info("control socket %s: ready for imapproxy tail", safe(self.path))
        try:
            async with trio.open_nursery() as nursery:
                while True:
                    try:
                        stream = await listener.accept()
                    except OSError as exc:
                        log.error("control socket: accept failed: %s", safe(exc))
                        await trio.sleep(0.1)
                        continue
                    nursery.start_soon(self._client, stream)
        finally:
            with contextlib.suppress(trio.ClosedResourceError):
                await trio.aclose_forcefully(listener)
            self.close()

    def close(self) -> None:
        """Remove the socket file (if it is still ours)."""
        self._sock = None
        with contextlib.suppress(OSError):
            if os.stat(self.path).st_ino == self._ino:
                os.unlink(self.path)

    async def _client(self, stream: trio.SocketStream) -> None:
        async with stream:
            if self.attached >= self.limits.max_clients:
                line = notice(f"too many tails attached (at most {self.limits.max_clients})",
                              t=time.time())  # fmt: skip
                with trio.move_on_after(1), contextlib.suppress(trio.BrokenResourceError):
                    await stream.send_all(line.encode() + b"\n")
                return
            wake = trio.Event()

            def wake_writer() -> None:
                wake.set()

            sub = self.hub.subscribe(wake_writer)
            self.attached += 1
            log.info("control socket: a tail attached (%d now)", self.attached)
            refused: list[str] = []  # the reader's complaint, sent by the writer
            try:
                hello = {"type": "hello", "protocol": PROTOCOL, "schema": 1, "pid": os.getpid()}
                await stream.send_all(json.dumps(hello).encode() + b"\n")
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._reader, stream, sub, refused, nursery.cancel_scope)
                    while not refused:
                        await wake.wait()
                        wake = trio.Event()
                        await self._drain(stream, sub)
                    text = f"bad request: {refused[0]}"
                    with trio.move_on_after(1):
                        await stream.send_all(notice(text, t=time.time()).encode() + b"\n")
                    nursery.cancel_scope.cancel()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            finally:
                self.hub.unsubscribe(sub)
                self.attached -= 1
                log.info(
                    "control socket: a tail detached (%d sent, %d lost)", sub.sent, sub.lost_total
                )

    async def _drain(self, stream: trio.SocketStream, sub: Subscriber) -> None:
        while True:
            lines = sub.take(_BATCH)
            if not lines:
                last = sub.lost_notice(time.time())
                if last is None:
                    return
                lines = [last]
            lines.append("")
            await stream.send_all("\n".join(lines).encode("utf-8"))
            sub.sent += len(lines) - 1

    async def _reader(
        self,
        stream: trio.SocketStream,
        sub: Subscriber,
        refused: list[str],
        scope: trio.CancelScope,
    ) -> None:
        """The tail's lines (its filter).  Its EOF ends the attachment; a bad line is
        handed to the writer (``refused``), which says so and ends it."""
        buf = bytearray()
        limit = self.limits.max_line_bytes
        try:
            while True:
                data = await stream.receive_some(4096)
                if not data:
                    break
                buf += data
                while (nl := buf.find(b"\n")) >= 0:
                    line = bytes(buf[:nl])
                    del buf[: nl + 1]
                    if line.strip():
                        self._request(line, sub)
                if len(buf) > limit:
                    raise ValueError(f"a line longer than {limit} bytes")
        except ValueError as exc:
            refused.append(str(exc))
            sub.wake()
            return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        scope.cancel()

    @staticmethod
    def _request(line: bytes, sub: Subscriber) -> None:
        try:
            request = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            raise ValueError("not a JSON object") from None
        if not isinstance(request, dict) or set(request) != {"filter"}:
            raise ValueError('expected {"filter": {...}}')
        rf = RecordFilter.from_json(request["filter"])
        sub.filter = rf if rf else None
