"""The PROXY protocol header parser (HAProxy proxy-protocol.txt v1 and v2), fed bytes by the test."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kartero.net.proxy_header import (
    V2_MAX_LENGTH,
    V2_SIGNATURE,
    NotProxyHeader,
    ProxyHeader,
    ProxyHeaderParser,
)

ALL_ONES = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
LONGEST_V1 = f"PROXY UNKNOWN {ALL_ONES} {ALL_ONES} 65535 65535\r\n".encode()  # the spec's 107 octets
FIELDS = "v1 header: expected TCP4, TCP6 or UNKNOWN with two addresses and two ports"
TRAILER = b"EHLO client.example\r\n"  # what the client sends after the header: never consumed


def v2(command: int, family: int, block: bytes) -> bytes:
    return V2_SIGNATURE + bytes([0x20 | command, family]) + struct.pack("!H", len(block)) + block


def v2_tcp4(source: str, destination: str, sport: int, dport: int, tlvs: bytes = b"") -> bytes:
    block = ipaddress.IPv4Address(source).packed + ipaddress.IPv4Address(destination).packed
    return v2(0x1, 0x11, block + struct.pack("!HH", sport, dport) + tlvs)


def v2_tcp6(source: str, destination: str, sport: int, dport: int) -> bytes:
    block = ipaddress.IPv6Address(source).packed + ipaddress.IPv6Address(destination).packed
    return v2(0x1, 0x21, block + struct.pack("!HH", sport, dport))


VALID = [
    (b"PROXY TCP4 203.0.113.7 192.0.2.1 56324 25\r\n", ProxyHeader(1, ("203.0.113.7", 56324), ("192.0.2.1", 25))),
    (
        b"PROXY TCP6 2001:db8::7 2001:db8::1 65535 993\r\n",
        ProxyHeader(1, ("2001:db8::7", 65535), ("2001:db8::1", 993)),
    ),
    (
        b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n",
        ProxyHeader(1, (ALL_ONES, 65535), (ALL_ONES, 65535)),
    ),
    (LONGEST_V1, ProxyHeader(1, None, None)),
    (b"PROXY UNKNOWN\r\n", ProxyHeader(1, None, None)),
    (b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", ProxyHeader(1, None, None)),  # the rest is ignored
    (v2_tcp4("203.0.113.7", "192.0.2.1", 56324, 25), ProxyHeader(2, ("203.0.113.7", 56324), ("192.0.2.1", 25))),
    (v2_tcp6("2001:db8::7", "2001:db8::1", 4000, 143), ProxyHeader(2, ("2001:db8::7", 4000), ("2001:db8::1", 143))),
    # TLVs (here ALPN and a unique id) after the addresses are skipped.
    (
        v2_tcp4("203.0.113.7", "192.0.2.1", 1, 2, b"\x01\x00\x02h2" + b"\x05\x00\x04abcd"),
        ProxyHeader(2, ("203.0.113.7", 1), ("192.0.2.1", 2)),
    ),
    (v2(0x0, 0x00, b""), ProxyHeader(2, None, None)),  # LOCAL: a health check; the real peer is used
    (v2(0x0, 0x11, bytes(12)), ProxyHeader(2, None, None)),  # LOCAL ignores the family
    (v2(0x1, 0x00, b""), ProxyHeader(2, None, None)),  # UNSPEC
    (v2(0x1, 0x31, bytes(216)), ProxyHeader(2, None, None)),  # a UNIX socket: no address for us
]


def test_the_longest_v1_header_is_107_octets() -> None:
    assert len(LONGEST_V1) == 107


@pytest.mark.parametrize(("header", "expected"), VALID)
def test_valid_headers_whole_and_byte_at_a_time(header: bytes, expected: ProxyHeader) -> None:
    parser = ProxyHeaderParser()
    assert parser.receive(header + TRAILER) == expected
    assert parser.rest == TRAILER
    parser = ProxyHeaderParser()
    results = [parser.receive(header[i : i + 1]) for i in range(len(header))]
    assert results[:-1] == [None] * (len(header) - 1) and results[-1] == expected


@pytest.mark.parametrize(("header", "expected"), VALID)
def test_reading_what_wanted_asks_never_reads_past_the_header(header: bytes, expected: ProxyHeader) -> None:
    stream, parser, result = header + TRAILER, ProxyHeaderParser(), None
    position = 0
    while result is None:
        wanted = parser.wanted
        assert wanted >= 1
        result = parser.receive(stream[position : position + wanted])
        position += wanted
    assert result == expected
    assert position == len(header) and parser.rest == b""


INVALID = [
    (b"EHLO client.example\r\n", "not a PROXY protocol header"),
    (b"\x16\x03\x01\x02\x00\x01", "not a PROXY protocol header"),  # a TLS ClientHello
    (b"PROXY\tTCP4 1.2.3.4 5.6.7.8 1 2\r\n", "not a PROXY protocol header"),
    (b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "not a PROXY protocol header"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "v1 header not an ASCII line ending in CRLF"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", FIELDS),
    (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", FIELDS),
    (b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", FIELDS),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n", "v1 header: bad TCP4 address or port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", "v1 header: bad TCP4 address or port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", "v1 header: bad TCP4 address or port"),
    (b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", "v1 header: bad TCP4 address or port"),
    (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "v1 header: bad TCP6 address or port"),
    (b"PROXY TCP4 1.2.3.004 5.6.7.8 1 2\r\n", "v1 header: bad TCP4 address or port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\xff\r\n", "v1 header not an ASCII line ending in CRLF"),
    (LONGEST_V1[:-2] + b"5\r\n", "v1 header longer than 107 octets"),
    (b"PROXY UNKNOWN " + b"x" * 100 + b"\r\n", "v1 header longer than 107 octets"),
    (b"PROXY " + b"A" * 200, "v1 header longer than 107 octets"),
    (V2_SIGNATURE[:5] + b"X", "not a PROXY protocol header"),
    (V2_SIGNATURE + b"\x11\x11\x00\x00", "v2 header: unknown version or command 0x11"),
    (V2_SIGNATURE + b"\x22\x11\x00\x00", "v2 header: unknown version or command 0x22"),
    (v2(0x1, 0x12, bytes(12)), "v2 header: unsupported address family and protocol 0x12"),  # UDP
    (v2(0x1, 0x41, bytes(12)), "v2 header: unsupported address family and protocol 0x41"),
    (v2(0x1, 0x21, bytes(12)), "v2 header: address block too short for its family"),
    (
        V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", V2_MAX_LENGTH + 1),
        f"v2 header: {V2_MAX_LENGTH + 1} octets of addresses and TLVs (at most {V2_MAX_LENGTH})",
    ),
]


@pytest.mark.parametrize(("data", "reason"), INVALID)
def test_invalid_headers_are_refused_whole_and_byte_at_a_time(data: bytes, reason: str) -> None:
    assert ProxyHeaderParser().receive(data) == NotProxyHeader(reason)
    parser = ProxyHeaderParser()
    results = [parser.receive(data[i : i + 1]) for i in range(len(data))]
    assert NotProxyHeader(reason) in results
    assert results[-1] == NotProxyHeader(reason)  # once refused, always refused


@pytest.mark.parametrize(
    "data",
    [b"", b"PROXY TCP4 1.2.3.4", V2_SIGNATURE[:7], v2_tcp4("1.2.3.4", "5.6.7.8", 1, 2)[:-1]],
)
def test_truncated_headers_need_more(data: bytes) -> None:
    assert ProxyHeaderParser().receive(data) is None


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300), st.integers(1, 40))
def test_any_bytes_give_a_result_or_need_more_and_buffer_is_bounded(data: bytes, step: int) -> None:
    parser = ProxyHeaderParser()
    for i in range(0, len(data), step):
        result = parser.receive(data[i : i + step])
        assert result is None or isinstance(result, (ProxyHeader, NotProxyHeader))
    assert len(parser._buf) <= len(data)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(VALID), st.integers(0, 200))
def test_corrupting_a_valid_header_gives_a_result_never_an_exception(case: tuple[bytes, ProxyHeader], at: int) -> None:
    header = bytearray(case[0])
    header[at % len(header)] ^= 0xFF
    result = ProxyHeaderParser().receive(bytes(header))
    assert result is None or isinstance(result, (ProxyHeader, NotProxyHeader))
