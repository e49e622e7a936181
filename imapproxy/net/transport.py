"""Lean byte streams for the relay: a TCP socket stream and a TLS stream over it.

Why not ``trio.SocketStream`` / ``trio.SSLStream``?  They are general and careful, and a
relay pays for it on every round trip: a read tries ``recv`` first, gets EAGAIN, re-arms
epoll and waits; every send ends with a scheduler round trip; the TLS layer adds locks,
conflict detectors and an exception-driven retry loop per call.  Profiled on a one-command-
at-a-time IMAP session, the interpreter was ~65% of the proxy's CPU (TLS ~3%), and those
layers plus the 5-6 scheduler passes they caused made up about half of the ~600 Python
calls per round trip.  With these classes: ~330 calls, 2 scheduler passes and 8 syscalls
(was ~11) per round trip, and ~25% less CPU per round trip.

These classes implement the parts of :class:`trio.abc.Stream` the session uses
(``receive_some``, ``send_all``, ``aclose``; ``version()``/``cipher()``/``server_name()``
for TLS) with the
same error contract:

* connection errors raise :class:`trio.BrokenResourceError` (the ``OSError`` or
  ``ssl.SSLError`` as ``__cause__``: the session reads ``verify_message`` from it);
* use after ``aclose`` raises :class:`trio.ClosedResourceError`; a close from another task
  wakes a blocked reader with it;
* two tasks receiving (or sending) at once raise :class:`trio.BusyResourceError`;
* a cancelled ``receive_some`` has consumed nothing: every await happens before bytes are
  taken from the socket, or after they are stored in the TLS object's input buffer.
* ``send_all`` keeps trio's contract too: once it returns, everything was handed to the
  kernel; cancelled midway, the stream is left in an unknown state (the session only ever
  closes it then).

What they do differently:

* :class:`SocketStream` remembers the size of the last read; after a small one (the peer
  now waits for us), the next read waits for readability first instead of trying ``recv``
  into an EAGAIN.  A send that completes at once returns without a scheduler round trip
  (and tells the :class:`~imapproxy.net.busypoll.BusyPoll`, if any).  Every ``receive_some``
  yields to the scheduler exactly once (a wait or a checkpoint), so a busy pump cannot
  starve the others.
* :class:`TlsStream` drives an :class:`ssl.SSLObject` over memory BIOs directly.  Reads
  ask OpenSSL for one record's worth at a time and allocate no more; big writes are
  encrypted and sent in pieces (:data:`TLS_WRITE_CHUNK`), so the output buffer stays small.
  The memory BIOs never shrink, so what goes through them at once is capped
  (:data:`TLS_REFILL_MAX`, :data:`TLS_WRITE_CHUNK`): that is what every TLS session keeps.
* Encrypting big writes in a worker thread (CPython releases the GIL in ``SSL_write``) was
  tried and measured: on the 2-core benchmark machine, where clients and Dovecot compete
  for the second core, it cost ~10-20% more CPU per GB and did not raise throughput.
* ``aclose`` never sends ``close_notify``: the session only closes streams forcefully (as
  with trio's streams under ``aclose_forcefully``), so the peer sees the TCP close.
"""

from __future__ import annotations

import socket
import ssl
from typing import Any

import trio

from .busypoll import BusyPoll
from .tls import client_sni

DEFAULT_RECEIVE_SIZE = 65536
"""``receive_some()`` without a size reads up to this many bytes."""

SMALL_READ = 65536
"""After a read of less than this, the next one asks for at most this much; after a bigger
one (a bulk transfer), for the full size asked for.  (``recv(1 MiB)`` allocates 1 MiB
before it shrinks the result: ~20 us more than ``recv(64 KiB)`` for a 50-byte answer.)"""

WAIT_FIRST_BELOW = 1024
"""After a read of less than this (an interactive command or answer), the next read waits
for readability before calling ``recv``: the peer is waiting for us, so a ``recv`` now
would only fail with EAGAIN.  After a bigger read (pipelined answers, bulk data) more is
probably queued already, and the next read tries ``recv`` first (measured: waiting first
there cost ~10% of pipelined throughput)."""

TLS_RECORD_SIZE = 16384
"""Most plaintext one TLS record holds; ``SSL_read`` returns at most one record per call,
so reading more per call only costs a bigger allocation (~35 us for 1 MiB)."""

TLS_REFILL_SIZE = 65536
"""Ciphertext read from the socket per refill at least (a :class:`SocketStream` reads at
most :data:`SMALL_READ` unless the previous read was big)."""

TLS_REFILL_MAX = 131072
"""Ciphertext read from the socket per refill at most, whatever the caller asked for.  The
input ``MemoryBIO`` is an OpenSSL ``BUF_MEM`` that grows to 4/3 of the most it ever held
and never shrinks: refills of 1 MiB left every TLS session that once received a burst
holding ~1.4 MiB for the rest of its life (100 stalled uploads: +170 MiB).  With this cap
it holds at most ~190 KiB.  Measured (2 GiB through ``receive_some(1 MiB)``): CPU per GB
is the same for 128 KiB and 1 MiB refills (median 0.59 vs 0.64 s/GB; 64 KiB: 0.67)."""

TLS_WRITE_CHUNK = 262144
"""Big writes are encrypted and sent in pieces of this size: the output buffer stays small
(cache-resident, reused), instead of growing (and zero-filling, and page-faulting) to the
size of a 1 MiB write before it is copied out again.  Like the input BIO it never shrinks
(4/3 of the most it held): with 256 KiB pieces a TLS session that once sent a big write
keeps ~340 KiB, with 64 KiB ~85 KiB.  Measured (2 GiB through ``send_all(1 MiB)``, median
of 5): 0.42 CPU-s/GB with 64 KiB pieces, 0.41 with 256 KiB, 0.49 with 32 KiB; but through
the relay (bench/relay_bench.py, 1 MiB FETCHes, 3 interleaved repetitions) 64 KiB pieces
cost 4-8% of the throughput (779 vs 848 MB/s) and 256 KiB none (906 vs 900): the fewer
sends matter more than the cache.  A stalled upload sends nothing big, so what a stalled
session holds is unchanged; a session that fetched a big message keeps the ~340 KiB."""


class SocketStream(trio.abc.Stream):
    """A connected TCP socket as a lean :class:`trio.abc.Stream` (see the module doc)."""

    __slots__ = ("_closed", "_last_read", "_receiving", "_sending", "busy_poll", "socket")

    def __init__(self, sock: socket.socket, *, busy_poll: BusyPoll | None = None) -> None:
        sock.setblocking(False)
        self.socket = sock
        self.busy_poll = busy_poll  # told after each send (see imapproxy.net.busypoll)
        self._last_read = 0  # a fresh connection: the peer speaks when it is ready
        self._closed = False
        self._receiving = False
        self._sending = False

    @classmethod
    def from_trio(
        cls, stream: trio.SocketStream, *, busy_poll: BusyPoll | None = None
    ) -> SocketStream:
        """Take over the socket of a ``trio.SocketStream`` (which must not be used after)."""
        trio_sock = stream.socket
        fd = trio_sock.detach()
        sock = socket.socket(trio_sock.family, trio_sock.type, trio_sock.proto, fileno=fd)
        return cls(sock, busy_poll=busy_poll)

    # ------------------------------------------------------------ receive

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving")
        if self._closed:
            raise trio.ClosedResourceError("the stream is closed")
        n = max_bytes or DEFAULT_RECEIVE_SIZE
        sock = self.socket
        self._receiving = True
        try:
            # Exactly one yield per call, before anything is taken from the socket.
            last = self._last_read
            if last < SMALL_READ:
                n = min(n, SMALL_READ)
            if last < WAIT_FIRST_BELOW:
                await trio.lowlevel.wait_readable(sock)
            else:
                await trio.lowlevel.checkpoint()
            while True:
                try:
                    data = sock.recv(n)
                except BlockingIOError:
                    await trio.lowlevel.wait_readable(sock)
                    continue
                except OSError as exc:
                    if self._closed:
                        raise trio.ClosedResourceError("the stream is closed") from None
                    raise trio.BrokenResourceError(f"socket error: {exc}") from exc
                self._last_read = len(data)
                return data
        finally:
            self._receiving = False

    # ------------------------------------------------------------ send

    def send_nowait(self, data: bytes | memoryview) -> int:
        """One non-blocking ``send``: how many bytes went (0 if the buffer is full)."""
        try:
            return self.socket.send(data)
        except BlockingIOError:
            return 0
        except OSError as exc:
            if self._closed:
                raise trio.ClosedResourceError("the stream is closed") from None
            raise trio.BrokenResourceError(f"socket error: {exc}") from exc

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is already sending")
        if self._closed:
            raise trio.ClosedResourceError("the stream is closed")
        self._sending = True
        try:
            sent = self.send_nowait(data)
            if sent < len(data):
                await self._send_rest(data, sent)
        finally:
            self._sending = False
        if self.busy_poll is not None:
            self.busy_poll.expect()

    async def _send_rest(self, data: bytes | bytearray | memoryview, sent: int) -> None:
        sock = self.socket
        with memoryview(data) as view:
            total = len(view)
            while sent < total:
                await trio.lowlevel.wait_writable(sock)
                sent += self.send_nowait(view[sent:])

    async def wait_send_all_might_not_block(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the stream is closed")
        await trio.lowlevel.wait_writable(self.socket)

    # ------------------------------------------------------------ close

    def close(self) -> None:
        """Close now; a task blocked on this socket gets ``ClosedResourceError``."""
        if self._closed:
            return
        self._closed = True
        if self.socket.fileno() != -1:
            trio.lowlevel.notify_closing(self.socket)
        self.socket.close()

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()


class TlsStream(trio.abc.Stream):
    """TLS over another stream with an ``SSLObject`` and memory BIOs (see the module doc).

    Call :meth:`do_handshake` first; failures raise ``BrokenResourceError`` with the
    ``ssl.SSLError`` (e.g. ``SSLCertVerificationError``) as ``__cause__``."""

    __slots__ = (
        "_flushing",
        "_incoming",
        "_outgoing",
        "_receiving",
        "_sending",
        "_ssl",
        "transport_stream",
    )

    def __init__(
        self,
        transport_stream: trio.abc.Stream,
        context: ssl.SSLContext,
        *,
        server_side: bool = False,
        server_hostname: str | None = None,
    ) -> None:
        self.transport_stream = transport_stream
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(
            self._incoming,
            self._outgoing,
            server_side=server_side,
            server_hostname=server_hostname,
        )
        self._flushing: trio.Event | None = None  # set while a reader sends
        self._receiving = False
        self._sending = False

    # ------------------------------------------------------------ info

    def version(self) -> str | None:
        return self._ssl.version()

    def cipher(self) -> tuple[str, str, int] | None:
        return self._ssl.cipher()

    def getpeercert(self) -> dict[str, Any] | None:
        return self._ssl.getpeercert()

    def server_name(self) -> str | None:
        """Server side: the SNI name the client sent (None if it sent none, or if the
        context is not one of :func:`imapproxy.net.tls.server_context`)."""
        return client_sni(self._ssl)

    def peer_certificate_der(self) -> bytes | None:
        """The peer's certificate as DER, verified or not (``imapproxy check``)."""
        return self._ssl.getpeercert(binary_form=True)

    # ------------------------------------------------------------ handshake

    async def do_handshake(self) -> None:
        if self._receiving or self._sending:
            raise trio.BusyResourceError("the stream is in use")
        self._receiving = self._sending = True
        try:
            while True:
                try:
                    self._ssl.do_handshake()
                except ssl.SSLWantReadError:
                    await self._flush_pending()
                    await self._refill(TLS_REFILL_SIZE)
                    continue
                except ssl.SSLError as exc:
                    raise trio.BrokenResourceError(f"TLS handshake failed: {exc}") from exc
                await self._flush_pending()  # the last flight (and TLS 1.3 session tickets)
                return
        finally:
            self._receiving = self._sending = False

    # ------------------------------------------------------------ receive

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving")
        n = max_bytes or DEFAULT_RECEIVE_SIZE
        self._receiving = True
        try:
            while True:
                try:
                    data = self._ssl.read(min(n, TLS_RECORD_SIZE))
                except ssl.SSLWantReadError:
                    if self._outgoing.pending and not self._sending:
                        await self._reader_flush()  # e.g. a TLS 1.3 KeyUpdate answer
                    await self._refill(min(max(n, TLS_REFILL_SIZE), TLS_REFILL_MAX))
                    continue
                except ssl.SSLZeroReturnError:
                    return b""  # close_notify: a clean end of stream
                except ssl.SSLError as exc:
                    raise trio.BrokenResourceError(f"TLS error: {exc}") from exc
                if len(data) < n and self._incoming.pending:
                    data = self._read_more(data, n)
                return data
        finally:
            self._receiving = False

    def _read_more(self, first: bytes, n: int) -> bytes:
        """Further complete records already received (SSL_read returns one per call)."""
        parts = [first]
        size = len(first)
        while size < n and self._incoming.pending:
            try:
                more = self._ssl.read(min(n - size, TLS_RECORD_SIZE))
            except ssl.SSLError:
                break  # an incomplete record, or an error the next call reports
            if not more:
                break
            parts.append(more)
            size += len(more)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def _refill(self, size: int) -> None:
        """Read ciphertext into the SSLObject's input.  Nothing is awaited after the read,
        so a cancellation loses nothing."""
        data = await self.transport_stream.receive_some(size)
        if data:
            self._incoming.write(data)
        else:
            self._incoming.write_eof()  # the next read raises SSLEOFError (ragged EOF)

    # ------------------------------------------------------------ send

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        while self._sending:
            if self._flushing is None:
                raise trio.BusyResourceError("another task is already sending")
            await self._flushing.wait()  # the reader is sending what reading produced
        self._sending = True
        try:
            if len(data) <= TLS_WRITE_CHUNK:
                self._encrypt(data)
                await self.transport_stream.send_all(self._outgoing.read())
            else:
                with memoryview(data) as view:
                    for i in range(0, len(view), TLS_WRITE_CHUNK):
                        self._encrypt(view[i : i + TLS_WRITE_CHUNK])
                        await self.transport_stream.send_all(self._outgoing.read())
            await self._flush_pending()
        finally:
            self._sending = False

    def _encrypt(self, data: bytes | bytearray | memoryview) -> None:
        try:
            self._ssl.write(data)
        except ssl.SSLError as exc:
            raise trio.BrokenResourceError(f"TLS error: {exc}") from exc

    async def _reader_flush(self) -> None:
        """Send output that reading produced; a writer that comes meanwhile waits."""
        flushed = self._flushing = trio.Event()
        self._sending = True
        try:
            await self._flush_pending()
        finally:
            self._sending = False
            self._flushing = None
            flushed.set()

    async def _flush_pending(self) -> None:
        """Send what the SSLObject produced outside ``send_all`` (handshake, KeyUpdate)."""
        while self._outgoing.pending:
            await self.transport_stream.send_all(self._outgoing.read())

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport_stream.wait_send_all_might_not_block()

    # ------------------------------------------------------------ close

    async def aclose(self) -> None:
        """Close the transport without ``close_notify`` (see the module doc)."""
        await self.transport_stream.aclose()
