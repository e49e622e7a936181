"""The lean transport (imapproxy.net.transport) over real sockets on 127.0.0.1 and real TLS.

What the session relies on: bytes arrive complete and in order whatever the read sizes,
a cancelled read loses nothing (also mid-TLS-record), the peer's close is EOF (plain, or
TLS with close_notify) or BrokenResourceError (TLS without close_notify, reset), a failed
certificate check surfaces as BrokenResourceError with the ssl error as __cause__, and
big writes (encrypted and sent in pieces) keep their order against small ones, with
the same stream being read at the same time.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing
import trustme

from imapproxy.net.tls import server_context
from imapproxy.net.transport import TLS_WRITE_CHUNK, SocketStream, TlsStream
from tests.support.certs import TlsCerts, client_ssl_context, make_tls_certs


@asynccontextmanager
async def socket_pair() -> AsyncIterator[tuple[SocketStream, SocketStream]]:
    """Two connected lean streams over real TCP on 127.0.0.1."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    listener = listeners[0]
    port = listener.socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        accepted: list[trio.SocketStream] = []

        async def accept() -> None:
            accepted.append(await listener.accept())

        nursery.start_soon(accept)
        client = await trio.open_tcp_stream("127.0.0.1", port)
    await listener.aclose()
    a, b = SocketStream.from_trio(client), SocketStream.from_trio(accepted[0])
    try:
        yield a, b
    finally:
        await trio.aclose_forcefully(a)
        await trio.aclose_forcefully(b)


@asynccontextmanager
async def tls_pair(certs: TlsCerts) -> AsyncIterator[tuple[TlsStream, TlsStream]]:
    """(client, server) TLS streams, handshake done, the client verifying 'localhost'."""
    async with socket_pair() as (a, b):
        client = TlsStream(
            a,
            client_ssl_context(certs.ca_path),
            server_hostname="localhost",
        )
        server = TlsStream(
            b,
            server_context(str(certs.cert_path), str(certs.key_path)),
            server_side=True,
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.do_handshake)
            nursery.start_soon(server.do_handshake)
        yield client, server


async def receive_exactly(stream: trio.abc.Stream, n: int, chunk: int = 65536) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        data = await stream.receive_some(chunk)
        assert data, f"EOF after {len(buf)} of {n} bytes"
        buf += data
    return bytes(buf)


async def failing(fn: object, errors: list[BaseException], *args: object) -> None:
    """Run ``fn(*args)`` in a task and record the trio stream error it raises."""
    try:
        await fn(*args)  # type: ignore[operator]
    except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError) as e:
        errors.append(e)


def pattern(n: int, seed: int = 0) -> bytes:
    """Position-dependent bytes, so a reordered or lost piece shows."""
    block = bytes((seed + i * 7) % 251 for i in range(251))
    return (block * (n // 251 + 1))[:n]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> TlsCerts:
    return make_tls_certs(Path(tmp_path_factory.mktemp("transport-tls")))


# ------------------------------------------------------------------ plain sockets


async def test_partial_reads_keep_every_byte() -> None:
    async with socket_pair() as (a, b):
        payload = pattern(10_000)
        await a.send_all(payload)
        got = bytearray()
        while len(got) < len(payload):
            data = await b.receive_some(7)
            assert 0 < len(data) <= 7
            got += data
        assert got == payload


async def test_cancelled_receive_loses_nothing() -> None:
    async with socket_pair() as (a, b):
        for i in range(20):
            with trio.move_on_after(0.005) as scope:
                await b.receive_some(100)
            assert scope.cancelled_caught  # nothing was there yet
            await a.send_all(b"line %d\r\n" % i)
            assert await receive_exactly(b, len(b"line %d\r\n" % i)) == b"line %d\r\n" % i


async def test_peer_close_is_eof() -> None:
    async with socket_pair() as (a, b):
        await a.send_all(b"bye")
        await a.aclose()
        assert await receive_exactly(b, 3) == b"bye"
        assert await b.receive_some(100) == b""
        assert await b.receive_some(100) == b""


async def test_send_to_closed_peer_breaks() -> None:
    async with socket_pair() as (a, b):
        b.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00" * 2)
        await b.aclose()  # linger 0: a reset
        with pytest.raises(trio.BrokenResourceError) as info:
            for _ in range(100):
                await a.send_all(b"x" * 1000)
                await trio.sleep(0.001)
        assert isinstance(info.value.__cause__, OSError)


async def test_large_send_all_plain() -> None:
    payload = pattern(8 * 1024 * 1024, seed=3)
    async with socket_pair() as (a, b), trio.open_nursery() as nursery:
        nursery.start_soon(a.send_all, payload)
        assert await receive_exactly(b, len(payload), 1024 * 1024) == payload


async def test_close_wakes_a_blocked_reader() -> None:
    async with socket_pair() as (a, _b):
        errors: list[BaseException] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(failing, a.receive_some, errors, 10)
            await trio.testing.wait_all_tasks_blocked()  # the reader is waiting
            await a.aclose()
        assert [type(e) for e in errors] == [trio.ClosedResourceError]
        with pytest.raises(trio.ClosedResourceError):
            await a.receive_some(10)
        with pytest.raises(trio.ClosedResourceError):
            await a.send_all(b"x")


async def test_two_readers_are_refused() -> None:
    async with socket_pair() as (a, _b), trio.open_nursery() as nursery:
        nursery.start_soon(a.receive_some, 10)
        await trio.testing.wait_all_tasks_blocked()  # the first reader is waiting
        with pytest.raises(trio.BusyResourceError):
            await a.receive_some(10)
        nursery.cancel_scope.cancel()


# ------------------------------------------------------------------ TLS


async def test_tls_round_trip_and_version(certs: TlsCerts) -> None:
    async with tls_pair(certs) as (client, server):
        assert client.version() in ("TLSv1.2", "TLSv1.3")
        assert server.version() == client.version()
        await client.send_all(b"a1 NOOP\r\n")
        assert await receive_exactly(server, 9) == b"a1 NOOP\r\n"
        await server.send_all(b"a1 OK done\r\n")
        assert await receive_exactly(client, 12) == b"a1 OK done\r\n"


async def test_tls_partial_reads(certs: TlsCerts) -> None:
    async with tls_pair(certs) as (client, server):
        payload = pattern(50_000, seed=1)
        await client.send_all(payload)
        got = bytearray()
        while len(got) < len(payload):
            data = await server.receive_some(1000)
            assert 0 < len(data) <= 1000
            got += data
        assert got == payload


async def test_tls_cancelled_receive_mid_record_loses_nothing(certs: TlsCerts) -> None:
    """The peer's records arrive a few bytes at a time; the reader is cancelled over and
    over while it holds half a record.  Every plaintext byte still comes out, in order."""
    async with socket_pair() as (a, b):
        server = TlsStream(
            b, server_context(str(certs.cert_path), str(certs.key_path)), server_side=True
        )
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        peer = client_ssl_context(certs.ca_path).wrap_bio(
            incoming, outgoing, server_hostname="localhost"
        )

        async def peer_handshake() -> None:
            while True:
                try:
                    peer.do_handshake()
                except ssl.SSLWantReadError:
                    if outgoing.pending:
                        await a.send_all(outgoing.read())
                    incoming.write(await a.receive_some(65536))
                    continue
                if outgoing.pending:
                    await a.send_all(outgoing.read())
                return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(peer_handshake)
            nursery.start_soon(server.do_handshake)

        payload = pattern(20_000, seed=2)
        for i in range(0, len(payload), 5000):
            peer.write(payload[i : i + 5000])
        ciphertext = outgoing.read()

        # Each piece is sent only after a receive was cancelled since the last one, so
        # receives are cancelled between pieces (often mid-record) however slow the machine.
        cancelled = trio.Event()

        async def trickle() -> None:
            nonlocal cancelled
            for i in range(0, len(ciphertext), 97):
                await a.send_all(ciphertext[i : i + 97])
                await cancelled.wait()
                cancelled = trio.Event()

        got = bytearray()
        cancels = 0
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trickle)
            while len(got) < len(payload):
                with trio.move_on_after(0.0007) as scope:
                    got += await server.receive_some(65536)
                if scope.cancelled_caught:
                    cancels += 1
                    cancelled.set()
            cancelled.set()  # (the last piece's wait)
        assert got == payload
        assert cancels >= len(range(0, len(ciphertext), 97)) - 1


async def test_tls_peer_close_without_close_notify_breaks(certs: TlsCerts) -> None:
    async with tls_pair(certs) as (client, server):
        await client.send_all(b"last words")
        await client.transport_stream.aclose()  # TCP close, no close_notify
        assert await receive_exactly(server, 10) == b"last words"
        with pytest.raises(trio.BrokenResourceError) as info:
            await server.receive_some(100)
        # a ragged EOF, or a reset (the client closed with session tickets unread)
        assert isinstance(info.value.__cause__, ssl.SSLError | ConnectionResetError)


async def test_tls_close_notify_is_eof(certs: TlsCerts) -> None:
    async with tls_pair(certs) as (client, server):
        with pytest.raises(ssl.SSLWantReadError):
            client._ssl.unwrap()  # queue close_notify
        await client.transport_stream.send_all(client._outgoing.read())
        assert await server.receive_some(100) == b""


async def failed_handshake(
    certs: TlsCerts, ca_path: Path, server_hostname: str
) -> ssl.SSLCertVerificationError:
    """A client handshake that must fail verification: the SSL error behind it."""
    async with socket_pair() as (a, b):
        client = TlsStream(a, client_ssl_context(ca_path), server_hostname=server_hostname)
        server = TlsStream(
            b, server_context(str(certs.cert_path), str(certs.key_path)), server_side=True
        )
        errors: list[BaseException] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(failing, server.do_handshake, errors)
            with pytest.raises(trio.BrokenResourceError) as info:
                await client.do_handshake()
            nursery.cancel_scope.cancel()
    cause = info.value.__cause__
    assert isinstance(cause, ssl.SSLCertVerificationError)
    return cause


async def test_tls_verify_failure_has_the_ssl_error_as_cause(
    certs: TlsCerts, tmp_path: Path
) -> None:
    other_ca = trustme.CA()
    other_ca.cert_pem.write_to_path(str(tmp_path / "other-ca.pem"))
    cause = await failed_handshake(certs, tmp_path / "other-ca.pem", "localhost")
    assert cause.verify_message


async def test_tls_hostname_mismatch_fails(certs: TlsCerts) -> None:
    cause = await failed_handshake(certs, certs.ca_path, "imap.example.org")
    assert "Hostname mismatch" in (cause.verify_message or "")


async def test_tls_handshake_with_vanishing_peer_breaks(certs: TlsCerts) -> None:
    async with socket_pair() as (a, b):
        server = TlsStream(
            b, server_context(str(certs.cert_path), str(certs.key_path)), server_side=True
        )
        await a.send_all(b"\x16\x03\x01")  # the start of a ClientHello, then nothing
        await a.aclose()
        with pytest.raises(trio.BrokenResourceError) as info:
            await server.do_handshake()
        assert isinstance(info.value.__cause__, ssl.SSLError)


async def test_tls_large_send_all(certs: TlsCerts) -> None:
    payload = pattern(8 * 1024 * 1024, seed=4)
    async with (
        tls_pair(certs) as (client, server),
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(server.send_all, payload)
        assert await receive_exactly(client, len(payload), 1024 * 1024) == payload


async def test_tls_big_writes_keep_order_with_concurrent_reads(certs: TlsCerts) -> None:
    """Small writes and big ones (sent in pieces) alternate on one stream while the same
    stream is read from: the bytes arrive in order both ways."""
    chunk = TLS_WRITE_CHUNK
    sizes = [10, chunk, 5, 3 * chunk + 17, 1, chunk - 1, chunk + 1, 1024 * 1024, 3]
    writes = [pattern(n, seed=i) for i, n in enumerate(sizes)] * 3
    upstream = pattern(2 * 1024 * 1024, seed=99)
    async with tls_pair(certs) as (client, server):
        got_from_server = b""
        got_from_client = b""

        async def server_writes() -> None:
            for w in writes:
                await server.send_all(w)

        async def client_writes() -> None:
            for i in range(0, len(upstream), 100_000):
                await client.send_all(upstream[i : i + 100_000])

        async def client_reads() -> None:
            nonlocal got_from_server
            got_from_server = await receive_exactly(client, sum(map(len, writes)), 300_000)

        async def server_reads() -> None:
            nonlocal got_from_client
            got_from_client = await receive_exactly(server, len(upstream), 1024 * 1024)

        async with trio.open_nursery() as nursery:
            for task in (server_writes, client_writes, client_reads, server_reads):
                nursery.start_soon(task)
        assert got_from_server == b"".join(writes)
        assert got_from_client == upstream


async def test_tls_two_writers_are_refused(certs: TlsCerts) -> None:
    async with tls_pair(certs) as (client, _server), trio.open_nursery() as nursery:
        nursery.start_soon(client.send_all, b"x" * (8 * 1024 * 1024))
        await trio.testing.wait_all_tasks_blocked()  # the first writer is blocked
        with pytest.raises(trio.BusyResourceError):
            await client.send_all(b"y")
        nursery.cancel_scope.cancel()


async def test_tls_aclose_forcefully(certs: TlsCerts) -> None:
    async with tls_pair(certs) as (client, server):
        await trio.aclose_forcefully(client)
        with pytest.raises(trio.BrokenResourceError):
            await server.receive_some(10)
        with pytest.raises(trio.ClosedResourceError):
            await client.receive_some(10)
