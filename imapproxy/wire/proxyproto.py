"""The PROXY protocol (HAProxy's, versions 1 and 2), sans-IO: parse a header, build one.

A load balancer that accepts the client's connection writes one header at the start of its
connection to us, saying whom it accepted and on which address; the client's own bytes
follow.  :func:`parse_header` takes the bytes received so far and answers

* :data:`NEED_MORE`: the header is not complete yet (but nothing so far is wrong);
* a :class:`ProxyHeader`: the header, with ``length``, the number of bytes it took (the
  bytes after it are the client's and are not the parser's business);
* or raises :class:`ProxyHeaderError` naming what is wrong, as soon as it is wrong (a
  connection that does not start like the expected version is refused at its first bytes).

Only what an IMAP proxy needs is read: TCP over IPv4/IPv6.  A v2 ``LOCAL`` header (the load
balancer's own health check) and a v1 ``UNKNOWN`` or v2 ``UNSPEC``/``UNIX`` one carry no
client address (``source`` is None): the connection's own address stays the client's.
v2 TLVs are skipped unread.  The reference is HAProxy's ``doc/proxy-protocol.txt``.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from dataclasses import dataclass

V1_MAX_BYTES = 107
"""A v1 header is at most 107 bytes, CRLF included (the specification's own bound)."""

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED = 16  # signature (12), version/command, family/protocol, length (2)

Address = tuple[str, int]


class _NeedMore(enum.Enum):
    NEED_MORE = "need more"


NEED_MORE = _NeedMore.NEED_MORE
"""The header is incomplete: read more and call :func:`parse_header` again."""


class ProxyHeaderError(ValueError):
    """A malformed header, or none where one was required: its text says what is wrong
    (it quotes no client bytes beyond a few escaped characters)."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    version: int  # 1 or 2
    length: int  # bytes the header took, from the connection's first byte
    source: Address | None  # the client (None: none given, keep the connection's own)
    destination: Address | None  # where the client connected to (the balancer's address)

    @property
    def local(self) -> bool:
        """No client address given (v2 LOCAL, a health check; v1 UNKNOWN)."""
        return self.source is None


def parse_header(data: bytes, version: int, *, max_v2_bytes: int = 4096) -> ProxyHeader | _NeedMore:
    """Parse the header of the given ``version`` (1 or 2) at the start of ``data``.

    ``max_v2_bytes`` bounds a v2 header (16 fixed bytes plus its declared length): one that
    declares more is refused before it is read."""
    if version == 1:
        return _parse_v1(data)
    if version == 2:
        return _parse_v2(data, max_v2_bytes)
    raise ValueError(f"PROXY protocol version must be 1 or 2, not {version!r}")


def max_header_bytes(version: int, max_v2_bytes: int) -> int:
    """The most bytes a header of this version may take (what a reader may look at)."""
    return V1_MAX_BYTES if version == 1 else max_v2_bytes


# ----------------------------------------------------------------------------- v1


_V1_PREFIX = b"PROXY "


def _parse_v1(data: bytes) -> ProxyHeader | _NeedMore:
    head = data[:V1_MAX_BYTES]
    start = head[: len(_V1_PREFIX)]
    if not _V1_PREFIX.startswith(start):
        raise ProxyHeaderError(f"no PROXY v1 header (the connection starts with {_show(start)})")
    end = head.find(b"\r\n")
    if end < 0:
        bare = head.find(b"\n")
        if bare >= 0:
            raise ProxyHeaderError("PROXY v1 header ends in LF without CR")
        if len(head) >= V1_MAX_BYTES:
            raise ProxyHeaderError(f"PROXY v1 header longer than {V1_MAX_BYTES} bytes")
        _check_v1_chars(head.rstrip(b"\r") if head.endswith(b"\r") else head)
        return NEED_MORE
    line = head[:end]
    _check_v1_chars(line)
    parts = line.split(b" ")
    if len(parts) < 2:
        raise ProxyHeaderError("PROXY v1 header without a protocol")
    proto = parts[1]
    if proto == b"UNKNOWN":  # the rest of the line, if any, is to be ignored
        return ProxyHeader(1, end + 2, None, None)
    if proto not in (b"TCP4", b"TCP6"):
        raise ProxyHeaderError(
            f"PROXY v1 protocol must be TCP4, TCP6 or UNKNOWN, not {_show(proto)}"
        )
    if len(parts) != 6:
        raise ProxyHeaderError(
            "PROXY v1 header must be 'PROXY TCP4|TCP6 SRC DST SPORT DPORT' (single spaces)"
        )
    want = 4 if proto == b"TCP4" else 6
    src = _v1_address(parts[2], want, "source")
    dst = _v1_address(parts[3], want, "destination")
    sport = _v1_port(parts[4], "source")
    dport = _v1_port(parts[5], "destination")
    return ProxyHeader(1, end + 2, (src, sport), (dst, dport))


def _check_v1_chars(text: bytes) -> None:
    for byte in text:
        if not 0x20 <= byte < 0x7F:
            raise ProxyHeaderError(f"PROXY v1 header contains byte 0x{byte:02x}")


def _v1_address(text: bytes, family: int, what: str) -> str:
    try:
        address = ipaddress.ip_address(text.decode("ascii"))
    except ValueError:
        raise ProxyHeaderError(f"PROXY v1 {what} address {_show(text)} is not valid") from None
    if address.version != family:
        raise ProxyHeaderError(f"PROXY v1 {what} address {_show(text)} is not IPv{family}")
    return str(address)


def _v1_port(text: bytes, what: str) -> int:
    if not text.isdigit() or (len(text) > 1 and text.startswith(b"0")) or int(text) > 65535:
        raise ProxyHeaderError(f"PROXY v1 {what} port {_show(text)} is not 0-65535")
    return int(text)


# ----------------------------------------------------------------------------- v2


_CMD_LOCAL, _CMD_PROXY = 0x0, 0x1
_AF_UNSPEC, _AF_INET, _AF_INET6, _AF_UNIX = 0x0, 0x1, 0x2, 0x3
_PROTO_UNSPEC, _PROTO_STREAM = 0x0, 0x1
_ADDRESS_BYTES = {_AF_UNSPEC: 0, _AF_INET: 12, _AF_INET6: 36, _AF_UNIX: 216}


def _parse_v2(data: bytes, max_bytes: int) -> ProxyHeader | _NeedMore:
    start = data[: len(V2_SIGNATURE)]
    if not V2_SIGNATURE.startswith(start):
        raise ProxyHeaderError(f"no PROXY v2 header (the connection starts with {_show(start)})")
    if len(data) < V2_FIXED:
        if len(data) > 12 and data[12] >> 4 != 2:
            raise ProxyHeaderError(f"PROXY v2 header with version {data[12] >> 4}")
        return NEED_MORE
    ver_cmd, fam, length = struct.unpack_from("!BBH", data, 12)
    if ver_cmd >> 4 != 2:
        raise ProxyHeaderError(f"PROXY v2 header with version {ver_cmd >> 4}")
    command = ver_cmd & 0xF
    if command not in (_CMD_LOCAL, _CMD_PROXY):
        raise ProxyHeaderError(f"PROXY v2 header with unknown command {command}")
    total = V2_FIXED + length
    if total > max_bytes:
        raise ProxyHeaderError(f"PROXY v2 header of {total} bytes (at most {max_bytes} allowed)")
    family, proto = fam >> 4, fam & 0xF
    if family not in _ADDRESS_BYTES or proto > 2:
        raise ProxyHeaderError(f"PROXY v2 header with unknown address family 0x{fam:02x}")
    if len(data) < total:
        return NEED_MORE
    if command == _CMD_LOCAL:  # a health check: the addresses, if any, are to be ignored
        return ProxyHeader(2, total, None, None)
    if family in (_AF_UNSPEC, _AF_UNIX):  # no usable client address: keep the connection's
        return ProxyHeader(2, total, None, None)
    if proto != _PROTO_STREAM:
        raise ProxyHeaderError("PROXY v2 header for a datagram (not TCP) connection")
    if length < _ADDRESS_BYTES[family]:
        raise ProxyHeaderError(
            f"PROXY v2 address block of {length} bytes, shorter than the "
            f"{_ADDRESS_BYTES[family]} its family needs"
        )
    body = data[V2_FIXED:total]
    if family == _AF_INET:
        src_raw, dst_raw, sport, dport = struct.unpack_from("!4s4sHH", body)
        src: str = str(ipaddress.IPv4Address(src_raw))
        dst: str = str(ipaddress.IPv4Address(dst_raw))
    else:
        src_raw, dst_raw, sport, dport = struct.unpack_from("!16s16sHH", body)
        src = _v6(src_raw)
        dst = _v6(dst_raw)
    # the rest of the block (TLVs: ALPN, SNI, unique id, SSL details) is not needed
    return ProxyHeader(2, total, (src, sport), (dst, dport))


def _v6(raw: bytes) -> str:
    """An IPv6 address; an IPv4-mapped one as IPv4 (how the rest of the proxy writes it)."""
    address = ipaddress.IPv6Address(raw)
    mapped = address.ipv4_mapped
    return str(mapped) if mapped is not None else str(address)


def build_v2(source: Address | None, destination: Address | None = None) -> bytes:
    """A v2 header: PROXY over TCP from ``source`` to ``destination``; LOCAL (a connection
    on the proxy's own behalf, e.g. ``imapproxy check``) when ``source`` is None.

    Both addresses are written in one family: IPv4 when both are IPv4, else IPv6 (an IPv4
    address as IPv4-mapped).  A missing destination is the unspecified address, port 0."""
    if source is None:
        return V2_SIGNATURE + bytes((0x20 | _CMD_LOCAL, 0)) + b"\x00\x00"
    src = ipaddress.ip_address(source[0])
    dst = ipaddress.ip_address(destination[0]) if destination else ipaddress.IPv4Address(0)
    dport = destination[1] if destination else 0
    if src.version == 4 and dst.version == 4:
        fam, body = _AF_INET, src.packed + dst.packed
    else:
        fam, body = _AF_INET6, _as_v6(src).packed + _as_v6(dst).packed
    body += struct.pack("!HH", source[1], dport)
    return (
        V2_SIGNATURE
        + bytes((0x20 | _CMD_PROXY, fam << 4 | _PROTO_STREAM))
        + struct.pack("!H", len(body))
        + body
    )


def _as_v6(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv6Address:
    if address.version == 6:
        return address  # type: ignore[return-value]
    return ipaddress.IPv6Address(b"\x00" * 10 + b"\xff\xff" + address.packed)


def _show(raw: bytes) -> str:
    """The first few bytes of what arrived, escaped (for the error text): enough to tell
    TLS, HTTP or an IMAP command from a header; too few to hold a command's arguments
    (a password)."""
    return repr(raw[:8])
