"""The PROXY protocol on the relay's connections: reading a header in, writing one out, and
the IMAP ``ID`` that forwards the client's address instead.

In (:func:`read_header`): on a listener with ``proxy_protocol``, a connection from a
network outside its ``proxy_trusted`` is refused before anything is read; from inside, the
header must arrive within ``timeouts.proxy_header``.  The header is read with ``MSG_PEEK``
and then exactly its bytes are taken from the socket, so whatever the client sent after it
(a TLS ClientHello, which a load balancer may put in the same packet) stays in the socket
for the session: nothing is read ahead, nothing needs handing over.

Out (:func:`upstream_preamble`, :func:`id_command`): ``upstream.proxy_protocol = "v2"``
writes a v2 header first on the upstream connection (before TLS); ``upstream.id_forwarding``
sends ``ID ("x-originating-ip" ...)`` as the proxy's first command after the greeting (and
after STARTTLS), its answer not relayed.  Dovecot takes the originating address from the
first ID of a session only, and only from ``login_trusted_networks``; the client's own ID,
if it sends one, is relayed unchanged and cannot move the address again.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass

import trio

from ..wire.proxyproto import (
    NEED_MORE,
    Address,
    ProxyHeader,
    ProxyHeaderError,
    build_v2,
    max_header_bytes,
    parse_header,
)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class HeaderRefused(Exception):
    """The connection is refused: its text is the log line's reason."""


def trusted(address: str, networks: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:10.1.2.3 on a dual-stack socket
    return any(ip in net or (mapped is not None and mapped in net) for net in networks)


async def read_header(
    sock: trio.socket.SocketType, version: int, max_v2_bytes: int, within: float
) -> ProxyHeader:
    """Read exactly the header from ``sock``; raises :class:`HeaderRefused` (malformed,
    missing, closed early, or too slow)."""
    limit = max_header_bytes(version, max_v2_bytes)
    got = b""
    try:
        with trio.fail_after(within):
            while True:
                peeked = await sock.recv(limit - len(got), socket.MSG_PEEK)
                if not peeked:
                    raise HeaderRefused("connection closed before its PROXY protocol header")
                result = parse_header(got + peeked, version, max_v2_bytes=max_v2_bytes)
                if result is NEED_MORE:
                    # all of it belongs to the header: take it, wait for more
                    got += await _take(sock, len(peeked))
                    continue
                assert isinstance(result, ProxyHeader)
                await _take(sock, result.length - len(got))
                return result
    except trio.TooSlowError:
        raise HeaderRefused(f"no PROXY protocol header within {within:g} s") from None
    except ProxyHeaderError as exc:
        raise HeaderRefused(str(exc)) from None
    except OSError as exc:
        raise HeaderRefused(f"connection failed before its PROXY protocol header: {exc}") from None


async def _take(sock: trio.socket.SocketType, n: int) -> bytes:
    """Take ``n`` bytes already peeked (so they are there)."""
    out = b""
    while len(out) < n:
        data = await sock.recv(n - len(out))
        if not data:
            raise HeaderRefused("connection closed inside its PROXY protocol header")
        out += data
    return out


@dataclass(frozen=True, slots=True)
class ClientAddresses:
    """Whom the session serves and where it connected to, as the proxy believes it: from
    a PROXY header, else the connection's own addresses."""

    client: Address
    local: Address | None


def upstream_preamble(addresses: ClientAddresses | None) -> bytes:
    """The v2 header the upstream connection starts with (LOCAL without addresses)."""
    if addresses is None:
        return build_v2(None)
    return build_v2(addresses.client, addresses.local)


def id_command(tag: bytes, addresses: ClientAddresses) -> bytes:
    """``tag ID (...)``: the fields Dovecot (``login_trusted_networks``) and nginx use."""
    fields: list[tuple[str, str]] = [
        ("x-originating-ip", addresses.client[0]),
        ("x-originating-port", str(addresses.client[1])),
    ]
    if addresses.local is not None:
        fields += [
            ("x-connected-ip", addresses.local[0]),
            ("x-connected-port", str(addresses.local[1])),
        ]
    # (addresses and numbers only: quoted strings need no escaping)
    items = " ".join(f'"{key}" "{value}"' for key, value in fields)
    return tag + b" ID (" + items.encode("ascii") + b")\r\n"


class Untrusted(HeaderRefused):
    """The connection comes from outside the listener's ``proxy_trusted``."""


async def accept_header(
    stream: trio.SocketStream,
    version: int,
    networks: Sequence[Network],
    peer: Address,
    *,
    max_v2_bytes: int,
    within: float,
) -> ClientAddresses:
    """The client's addresses on a ``proxy_protocol`` listener: from the header (a LOCAL
    or UNKNOWN one keeps the connection's own).  Raises :class:`Untrusted` for a
    connection from elsewhere (nothing read), :class:`HeaderRefused` for a bad header."""
    if not trusted(peer[0], networks):
        raise Untrusted(f"proxy protocol header from untrusted {peer[0]} refused")
    header = await read_header(stream.socket, version, max_v2_bytes, within)
    if header.source is None:
        local = stream.socket.getsockname()
        return ClientAddresses((peer[0], peer[1]), (local[0], local[1]))
    return ClientAddresses(header.source, header.destination)
