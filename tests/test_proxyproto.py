"""The PROXY protocol parser and builder (imapproxy.wire.proxyproto), bytes in, results out."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imapproxy.wire.proxyproto import (
    NEED_MORE,
    V1_MAX_BYTES,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyHeaderError,
    build_v2,
    parse_header,
)

CLIENT_BYTES = b"\x16\x03\x01\x02\x00rest of a ClientHello"


def v2(command: int, fam: int, body: bytes) -> bytes:
    return V2_SIGNATURE + bytes((0x20 | command, fam)) + struct.pack("!H", len(body)) + body


# ----------------------------------------------------------------------------- v1


def test_v1_tcp4() -> None:
    raw = b"PROXY TCP4 192.0.2.7 10.0.0.1 51234 143\r\n"
    got = parse_header(raw + CLIENT_BYTES, 1)
    assert got == ProxyHeader(1, len(raw), ("192.0.2.7", 51234), ("10.0.0.1", 143))


def test_v1_tcp6() -> None:
    raw = b"PROXY TCP6 2001:db8::7 2001:db8::1 65535 993\r\n"
    got = parse_header(raw, 1)
    assert got == ProxyHeader(1, len(raw), ("2001:db8::7", 65535), ("2001:db8::1", 993))


def test_v1_unknown_keeps_the_connections_address() -> None:
    for raw in (b"PROXY UNKNOWN\r\n", b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n"):
        got = parse_header(raw + b"a", 1)
        assert isinstance(got, ProxyHeader) and got.local and got.length == len(raw)


def test_v1_incomplete_is_need_more_at_every_cut() -> None:
    raw = b"PROXY TCP4 192.0.2.7 10.0.0.1 51234 143\r\n"
    for cut in range(len(raw)):
        assert parse_header(raw[:cut], 1) is NEED_MORE, cut


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"* OK hello\r\n", "no PROXY v1 header"),
        (b"a001 LOGIN", "no PROXY v1 header"),
        (b"proxy TCP4", "no PROXY v1 header"),
        (V2_SIGNATURE, "no PROXY v1 header"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "LF without CR"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX\r\n", "byte 0x0d"),
        (b"PROXY TCP4 1.2.3.4\x00 5.6.7.8 1 2\r\n", "byte 0x00"),
        (b"PROXY " + b"A" * 120, "longer than 107"),
        (b"PROXY\r\n", "no PROXY v1 header"),
        (b"PROXY \r\n", "must be TCP4, TCP6 or UNKNOWN"),
        (b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", "must be TCP4, TCP6 or UNKNOWN"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "single spaces"),
        (b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", "single spaces"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", "single spaces"),
        (b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n", "source address"),
        (b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", "source address"),
        (b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", "not IPv4"),
        (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "not IPv6"),
        (b"PROXY TCP4 1.2.3.4 nothing 1 2\r\n", "destination address"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "source port"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", "source port"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 -2\r\n", "destination port"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 +2\r\n", "destination port"),
    ],
)
def test_v1_malformed(raw: bytes, reason: str) -> None:
    with pytest.raises(ProxyHeaderError, match=reason.replace("(", r"\(")):
        parse_header(raw, 1)


def test_v1_is_bounded_without_crlf() -> None:
    assert parse_header(b"PROXY " + b"A" * (V1_MAX_BYTES - 7), 1) is NEED_MORE
    with pytest.raises(ProxyHeaderError, match="longer than 107"):
        parse_header(b"PROXY " + b"A" * (V1_MAX_BYTES - 6), 1)


def test_v1_longest_real_header_fits() -> None:
    addr = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    raw = f"PROXY TCP6 {addr} {addr} 65535 65535\r\n".encode()
    assert len(raw) == V1_MAX_BYTES - 3  # the spec's 107 counts a longer UNKNOWN line
    assert isinstance(parse_header(raw, 1), ProxyHeader)


# ----------------------------------------------------------------------------- v2


def test_v2_tcp4_with_tlvs_skipped() -> None:
    body = bytes([192, 0, 2, 7, 10, 0, 0, 1]) + struct.pack("!HH", 51234, 143)
    tlvs = b"\x01\x00\x02h2" + b"\x05\x00\x04abcd"  # ALPN, unique id
    raw = v2(1, 0x11, body + tlvs)
    got = parse_header(raw + CLIENT_BYTES, 2)
    assert got == ProxyHeader(2, len(raw), ("192.0.2.7", 51234), ("10.0.0.1", 143))


def test_v2_tcp6_and_mapped_ipv4() -> None:
    src = ipaddress.IPv6Address("2001:db8::7").packed
    dst = ipaddress.IPv6Address("::ffff:10.0.0.1").packed
    raw = v2(1, 0x21, src + dst + struct.pack("!HH", 1, 2))
    assert parse_header(raw, 2) == ProxyHeader(2, len(raw), ("2001:db8::7", 1), ("10.0.0.1", 2))


@pytest.mark.parametrize(
    "raw",
    [
        v2(0, 0x00, b""),  # LOCAL: a health check
        v2(0, 0x11, bytes(12)),  # LOCAL with addresses: they are ignored
        v2(1, 0x00, b""),  # PROXY, UNSPEC
        v2(1, 0x31, bytes(216)),  # PROXY, AF_UNIX
    ],
)
def test_v2_without_a_client_address(raw: bytes) -> None:
    got = parse_header(raw + b"x", 2)
    assert isinstance(got, ProxyHeader) and got.local and got.length == len(raw)


def test_v2_incomplete_is_need_more_at_every_cut() -> None:
    raw = v2(1, 0x11, bytes(12) + b"\x03\x00\x04abcd")
    for cut in range(len(raw)):
        assert parse_header(raw[:cut], 2) is NEED_MORE, cut


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"* OK hello\r\n", "no PROXY v2 header"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "no PROXY v2 header"),
        (b"\r\n\r\n\x00\r\nQUIT\r", "no PROXY v2 header"),
        (V2_SIGNATURE + b"\x11", "version 1"),
        (V2_SIGNATURE + b"\x31\x11\x00\x00", "version 3"),
        (V2_SIGNATURE + b"\x22\x11\x00\x0c", "unknown command 2"),
        (V2_SIGNATURE + b"\x21\x41\x00\x00", "unknown address family 0x41"),
        (V2_SIGNATURE + b"\x21\x13\x00\x0c", "unknown address family 0x13"),
        (V2_SIGNATURE + b"\x21\x11\xff\xff", "of 65551 bytes"),
        (v2(1, 0x11, bytes(11)), "shorter than the 12"),
        (v2(1, 0x21, bytes(12)), "shorter than the 36"),
        (v2(1, 0x12, bytes(12)), "datagram"),
        (v2(1, 0x10, bytes(12)), "datagram"),
    ],
)
def test_v2_malformed(raw: bytes, reason: str) -> None:
    with pytest.raises(ProxyHeaderError, match=reason):
        parse_header(raw, 2)


def test_v2_length_bound_is_the_configured_one() -> None:
    raw = v2(1, 0x11, bytes(12) + b"\x04\x00\x20" + bytes(32))
    assert isinstance(parse_header(raw, 2, max_v2_bytes=len(raw)), ProxyHeader)
    with pytest.raises(ProxyHeaderError, match="at most"):
        parse_header(raw[:16], 2, max_v2_bytes=len(raw) - 1)  # refused before the body


def test_unknown_version_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="1 or 2"):
        parse_header(b"", 3)


# ----------------------------------------------------------------------------- build


def test_build_v2_round_trips() -> None:
    for src, dst in [
        (("192.0.2.7", 5), ("10.0.0.1", 143)),
        (("2001:db8::7", 5), ("2001:db8::1", 143)),
    ]:
        raw = build_v2(src, dst)
        assert parse_header(raw, 2) == ProxyHeader(2, len(raw), src, dst)


def test_build_v2_mixed_families_and_local() -> None:
    raw = build_v2(("2001:db8::7", 5), ("10.0.0.1", 143))
    assert raw[13] == 0x21  # TCP6, the IPv4 address mapped
    assert parse_header(raw, 2) == ProxyHeader(2, 52, ("2001:db8::7", 5), ("10.0.0.1", 143))
    local = build_v2(None)
    assert parse_header(local, 2) == ProxyHeader(2, 16, None, None)
    assert local[12] == 0x20


# ----------------------------------------------------------------------------- properties

ipv4 = st.builds(ipaddress.IPv4Address, st.integers(0, 2**32 - 1)).map(str)
ipv6 = st.builds(ipaddress.IPv6Address, st.integers(0, 2**128 - 1)).filter(
    lambda a: a.ipv4_mapped is None
).map(str)
port = st.integers(0, 65535)


@given(st.one_of(st.tuples(ipv4, ipv4), st.tuples(ipv6, ipv6)), port, port, st.binary(max_size=64))
def test_property_v1_round_trip_and_rest_untouched(
    addrs: tuple[str, str], sport: int, dport: int, rest: bytes
) -> None:
    proto = "TCP4" if "." in addrs[0] else "TCP6"
    raw = f"PROXY {proto} {addrs[0]} {addrs[1]} {sport} {dport}\r\n".encode()
    got = parse_header(raw + rest, 1)
    assert got == ProxyHeader(1, len(raw), (addrs[0], sport), (addrs[1], dport))
    assert (raw + rest)[got.length :] == rest


@given(
    st.one_of(st.tuples(ipv4, ipv4), st.tuples(ipv6, ipv6)),
    port,
    port,
    st.binary(max_size=64),
    st.binary(max_size=64),
)
def test_property_v2_round_trip_with_tlvs(
    addrs: tuple[str, str], sport: int, dport: int, tlvs: bytes, rest: bytes
) -> None:
    raw = build_v2((addrs[0], sport), (addrs[1], dport))
    raw = raw[:14] + struct.pack("!H", len(raw) - 16 + len(tlvs)) + raw[16:] + tlvs
    got = parse_header(raw + rest, 2)
    assert got == ProxyHeader(2, len(raw), (addrs[0], sport), (addrs[1], dport))


@given(st.binary(max_size=300), st.sampled_from([1, 2]))
def test_property_any_bytes_give_a_header_need_more_or_an_error(data: bytes, version: int) -> None:
    try:
        got = parse_header(data, version, max_v2_bytes=256)
    except ProxyHeaderError as exc:
        assert str(exc)
        return
    if got is NEED_MORE:
        assert len(data) < (V1_MAX_BYTES if version == 1 else 256)
    else:
        assert isinstance(got, ProxyHeader) and 0 < got.length <= len(data)


@given(st.binary(min_size=1, max_size=200), st.sampled_from([1, 2]))
def test_property_prefixes_of_garbage_are_refused_early(junk: bytes, version: int) -> None:
    """Bytes that do not start like a header are refused at once, never held."""
    magic = b"PROXY " if version == 1 else V2_SIGNATURE
    if magic.startswith(junk[: len(magic)]):
        return
    with pytest.raises(ProxyHeaderError):
        parse_header(junk, version)


@pytest.mark.parametrize("version", [1, 2])
def test_error_text_never_quotes_a_command_s_arguments(version: int) -> None:
    with pytest.raises(ProxyHeaderError) as caught:
        parse_header(b"a LOGIN u hunter2\r\n", version)
    assert "hunter2" not in str(caught.value) and "a LOG" in str(caught.value)
