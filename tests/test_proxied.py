"""Reading a PROXY header off a real socket (imapproxy.relay.proxied): exactly the header is
taken, the client's bytes after it stay in the socket; trusted networks; the ID command."""

from __future__ import annotations

import ipaddress
import socket

import pytest
import trio
import trio.testing

from imapproxy.relay.proxied import (
    ClientAddresses,
    HeaderRefused,
    Untrusted,
    accept_header,
    id_command,
    read_header,
    trusted,
)
from imapproxy.wire.proxyproto import build_v2

HELLO = b"\x16\x03\x01\x00\xa5" + bytes(range(200))  # what a TLS client sends first


def pair() -> tuple[trio.socket.SocketType, socket.socket]:
    a, b = socket.socketpair()
    return trio.socket.from_stdlib_socket(a), b


async def rest(sock: trio.socket.SocketType, n: int) -> bytes:
    out = b""
    with trio.move_on_after(10):  # (bytes lost would otherwise wait forever)
        while len(out) < n:
            data = await sock.recv(n - len(out))
            assert data
            out += data
    return out


@pytest.mark.parametrize("version", [1, 2])
async def test_header_and_client_bytes_in_one_packet(version: int) -> None:
    ours, theirs = pair()
    header = (
        build_v2(("192.0.2.7", 5), ("10.0.0.1", 993))
        if version == 2
        else b"PROXY TCP4 192.0.2.7 10.0.0.1 5 993\r\n"
    )
    theirs.sendall(header + HELLO)
    got = await read_header(ours, version, 4096, 5)
    assert got.source == ("192.0.2.7", 5) and got.length == len(header)
    assert await rest(ours, len(HELLO)) == HELLO  # nothing after the header was taken


@pytest.mark.parametrize("version", [1, 2])
async def test_header_in_pieces(version: int) -> None:
    ours, theirs = pair()
    header = (
        build_v2(("2001:db8::7", 5), ("2001:db8::1", 993))
        if version == 2
        else b"PROXY TCP6 2001:db8::7 2001:db8::1 5 993\r\n"
    )

    async def trickle() -> None:
        for i in range(len(header)):
            theirs.sendall(header[i : i + 1] + (HELLO if i == len(header) - 1 else b""))
            await trio.testing.wait_all_tasks_blocked()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trickle)
        got = await read_header(ours, version, 4096, 5)
    assert got.source == ("2001:db8::7", 5)
    assert await rest(ours, len(HELLO)) == HELLO


async def test_missing_header_is_refused_at_once() -> None:
    ours, theirs = pair()
    theirs.sendall(b"a1 LOGIN alice secret\r\n")
    with pytest.raises(HeaderRefused, match="no PROXY v2 header"):
        await read_header(ours, 2, 4096, 5)


async def test_closed_before_the_header() -> None:
    ours, theirs = pair()
    theirs.sendall(build_v2(("192.0.2.7", 5))[:10])
    theirs.close()
    with pytest.raises(HeaderRefused, match="closed before"):
        await read_header(ours, 2, 4096, 5)


async def test_no_header_in_time(autojump_clock: trio.abc.Clock) -> None:
    ours, theirs = pair()
    theirs.sendall(b"PROXY TCP4 ")  # and then nothing
    with pytest.raises(HeaderRefused, match="within 5 s"):
        await read_header(ours, 1, 4096, 5)
    theirs.close()


async def test_untrusted_peer_is_refused_unread() -> None:
    a, b = socket.socketpair()
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(a))
    b.sendall(build_v2(("192.0.2.7", 5)))
    nets = [ipaddress.ip_network("10.0.0.0/8")]
    line = r"proxy protocol header from untrusted 192\.0\.2\.1 refused"
    with pytest.raises(Untrusted, match=line):
        await accept_header(stream, 2, nets, ("192.0.2.1", 4000), max_v2_bytes=4096, within=5)
    assert a.recv(100, socket.MSG_PEEK | socket.MSG_DONTWAIT)  # nothing was read


def test_trusted_networks() -> None:
    nets = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8")]
    assert trusted("10.1.2.3", nets)
    assert trusted("::ffff:10.1.2.3", nets)  # a dual-stack listener's IPv4 peer
    assert trusted("fd00::1", nets)
    assert not trusted("11.0.0.1", nets)
    assert not trusted("::1", nets)
    assert not trusted("not an address", nets)


def test_id_command() -> None:
    both = ClientAddresses(("2001:db8::7", 5), ("10.0.0.1", 143))
    assert id_command(b"X1", both) == (
        b'X1 ID ("x-originating-ip" "2001:db8::7" "x-originating-port" "5" '
        b'"x-connected-ip" "10.0.0.1" "x-connected-port" "143")\r\n'
    )
    assert id_command(b"X1", ClientAddresses(("192.0.2.7", 5), None)) == (
        b'X1 ID ("x-originating-ip" "192.0.2.7" "x-originating-port" "5")\r\n'
    )


async def test_connections_waiting_for_their_header_count_against_max_sessions() -> None:
    """A flood of connections that never send a header stays bounded: they hold places
    under max_sessions while they wait; the next connection is refused at once."""
    from imapproxy.config import (
        Endpoint,
        ListenerConfig,
        ProxyConfig,
        SessionLimits,
        UpstreamConfig,
    )
    from tests.support.proxy import free_port, running_proxy

    listener = ListenerConfig(
        Endpoint("127.0.0.1", 0),
        implicit_tls=False,
        proxy_protocol="v2",
        proxy_trusted=(ipaddress.ip_network("127.0.0.0/8"),),
    )
    config = ProxyConfig(
        (listener,),
        UpstreamConfig(Endpoint("127.0.0.1", free_port())),
        session_limits=SessionLimits(max_sessions=2),
    )
    async with running_proxy(config) as (proxy, addrs):
        host, port = addrs[0]
        silent = [await trio.open_tcp_stream(host, port) for _ in range(2)]
        with trio.fail_after(10):  # both accepted and waiting for their header
            while proxy._awaiting_header < 2:
                await trio.testing.wait_all_tasks_blocked(0.01)
        third = await trio.open_tcp_stream(host, port)
        with trio.fail_after(10):
            answer = await third.receive_some(1000)
        assert answer == b"* BYE [UNAVAILABLE] too many sessions\r\n"
        for stream in (*silent, third):
            await stream.aclose()
