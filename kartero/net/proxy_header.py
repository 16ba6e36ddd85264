"""The PROXY protocol header (HAProxy's proxy-protocol.txt, versions 1 and 2), parsed without I/O.

A load balancer in front of Kartero opens its own connection to us and starts it with one header naming
the client it stands for; after the header the client's bytes follow unchanged. Theory of operation:
the parser is fed whatever arrived and answers "need more" (None), the header, or why the bytes are
not one. `wanted` says how many more octets may be read without reading past the header, so the
adapter can leave the client's first bytes (e.g. a TLS ClientHello) in the socket.

Bounds: a version 1 header is one line of at most 107 octets (the spec's maximum); a version 2 header
is 16 octets plus at most V2_MAX_LENGTH of addresses and TLVs (TLVs are skipped: nothing here needs
them). What the header's source means:
- v1 `TCP4`/`TCP6`, v2 `PROXY` over TCP/IPv4 or TCP/IPv6: the client is the source address and port;
- v1 `UNKNOWN`, v2 `LOCAL` (the proxy's own health checks), v2 `PROXY` with family UNSPEC or UNIX:
  no client named, the connection's real peer is used (the spec allows this for UNKNOWN and UNSPEC);
- v2 over UDP, unknown versions, commands or families, and any malformed input: refused.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

V1_PREFIX = b"PROXY "
V1_MAX_LENGTH = 107  # "PROXY UNKNOWN " + two full IPv6 addresses + two 5-digit ports + spaces + CRLF
V1_MIN_LENGTH = len(b"PROXY UNKNOWN\r\n")
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_HEADER_LENGTH = 16
V2_MAX_LENGTH = 4096  # addresses and TLVs after the 16 fixed octets (real proxies send a few hundred)

_V2_LOCAL, _V2_PROXY = 0x0, 0x1
_V2_UNSPEC, _V2_TCP4, _V2_TCP6, _V2_UNIX_STREAM = 0x00, 0x11, 0x21, 0x31
_V2_ADDRESS_LENGTH = {_V2_UNSPEC: 0, _V2_TCP4: 12, _V2_TCP6: 36, _V2_UNIX_STREAM: 216}


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A complete header. `source` is the client (address, port), None when the header names none."""

    version: int
    source: tuple[str, int] | None
    destination: tuple[str, int] | None


@dataclass(frozen=True, slots=True)
class NotProxyHeader:
    """The bytes are not a valid PROXY header; the connection must be dropped."""

    reason: str


class ProxyHeaderParser:
    def __init__(self) -> None:
        self._buf = bytearray()
        self._result: ProxyHeader | NotProxyHeader | None = None
        self.rest = b""  # bytes fed after the end of the header (none when reads follow `wanted`)

    @property
    def wanted(self) -> int:
        """How many octets may be read next without reading past the end of the header (at least 1)."""
        buf = self._buf
        if self._result is not None:
            return 1
        if buf[:1] == b"\r":
            if len(buf) < V2_HEADER_LENGTH:
                return V2_HEADER_LENGTH - len(buf)
            return V2_HEADER_LENGTH + int.from_bytes(buf[14:16], "big") - len(buf)
        return max(1, V1_MIN_LENGTH - len(buf), _v1_least_remaining(bytes(buf)))

    def receive(self, data: bytes) -> ProxyHeader | NotProxyHeader | None:
        """Feed bytes; the result once the header is complete or known to be invalid, else None."""
        if self._result is not None:
            return self._result
        self._buf += data
        buf = self._buf
        if buf[:1] == b"\r":
            result = self._v2()
        elif buf[:1] == b"P":
            result = self._v1()
        elif buf:
            result = NotProxyHeader("not a PROXY protocol header")
        else:
            result = None
        self._result = result
        return result

    def _v1(self) -> ProxyHeader | NotProxyHeader | None:
        buf = self._buf
        if not buf.startswith(V1_PREFIX[: len(buf)]):
            return NotProxyHeader("not a PROXY protocol header")
        end = buf.find(b"\n", 0, V1_MAX_LENGTH)
        if end < 0:
            return NotProxyHeader("v1 header longer than 107 octets") if len(buf) >= V1_MAX_LENGTH else None
        line, self.rest = bytes(buf[: end + 1]), bytes(buf[end + 1 :])
        if not line.endswith(b"\r\n") or not line.isascii():
            return NotProxyHeader("v1 header not an ASCII line ending in CRLF")
        fields = line[len(V1_PREFIX) : -2].split(b" ")
        if fields[0] == b"UNKNOWN":  # the rest of the line is to be ignored
            return ProxyHeader(1, None, None)
        if fields[0] not in (b"TCP4", b"TCP6") or len(fields) != 5:
            return NotProxyHeader("v1 header: expected TCP4, TCP6 or UNKNOWN with two addresses and two ports")
        version = 4 if fields[0] == b"TCP4" else 6
        source, destination = _address(fields[1], version), _address(fields[2], version)
        source_port, destination_port = _port(fields[3]), _port(fields[4])
        if source is None or destination is None or source_port is None or destination_port is None:
            return NotProxyHeader(f"v1 header: bad {fields[0].decode()} address or port")
        return ProxyHeader(1, (source, source_port), (destination, destination_port))

    def _v2(self) -> ProxyHeader | NotProxyHeader | None:
        buf = self._buf
        if not buf.startswith(V2_SIGNATURE[: len(buf)]):
            return NotProxyHeader("not a PROXY protocol header")
        if len(buf) < V2_HEADER_LENGTH:
            return None
        version, command, family = buf[12] >> 4, buf[12] & 0xF, buf[13]
        length = int.from_bytes(buf[14:16], "big")
        if version != 2 or command not in (_V2_LOCAL, _V2_PROXY):
            return NotProxyHeader(f"v2 header: unknown version or command 0x{buf[12]:02x}")
        if length > V2_MAX_LENGTH:
            return NotProxyHeader(f"v2 header: {length} octets of addresses and TLVs (at most {V2_MAX_LENGTH})")
        if len(buf) < V2_HEADER_LENGTH + length:
            return None
        block = bytes(buf[V2_HEADER_LENGTH : V2_HEADER_LENGTH + length])
        self.rest = bytes(buf[V2_HEADER_LENGTH + length :])
        if command == _V2_LOCAL:  # the proxy speaking for itself: the family is ignored
            return ProxyHeader(2, None, None)
        if family not in _V2_ADDRESS_LENGTH:
            return NotProxyHeader(f"v2 header: unsupported address family and protocol 0x{family:02x}")
        if length < _V2_ADDRESS_LENGTH[family]:
            return NotProxyHeader("v2 header: address block too short for its family")
        if family == _V2_TCP4:
            return ProxyHeader(2, _v2_endpoint(block[0:4], block[8:10]), _v2_endpoint(block[4:8], block[10:12]))
        if family == _V2_TCP6:
            return ProxyHeader(2, _v2_endpoint(block[0:16], block[32:34]), _v2_endpoint(block[16:32], block[34:36]))
        return ProxyHeader(2, None, None)  # UNSPEC or a UNIX socket: no client address to take


def _v1_least_remaining(buf: bytes) -> int:
    """The fewest octets any valid v1 line starting with `buf` still needs (so never too many)."""
    if buf.endswith(b"\r"):
        return 1
    fields = buf.split(b" ")
    if len(fields) < 3 or fields[1] == b"UNKNOWN":
        return 2  # at least the CRLF
    spaces = len(fields) - 1  # of the 5 a TCP4/TCP6 line has; each field after the last is >= 1 octet
    return 2 * max(0, 5 - spaces) + (1 if not fields[-1] else 0) + 2


def _address(text: bytes, version: int) -> str | None:
    try:
        address = ipaddress.ip_address(text.decode("ascii"))
    except ValueError:
        return None
    return str(address) if address.version == version else None


def _port(text: bytes) -> int | None:
    # Decimal 0-65535, no sign and no leading zero.
    if not text.isdigit() or len(text) > 5 or (len(text) > 1 and text[:1] == b"0"):
        return None
    port = int(text)
    return port if port <= 65535 else None


def _v2_endpoint(address: bytes, port: bytes) -> tuple[str, int]:
    return str(ipaddress.ip_address(address)), int.from_bytes(port, "big")
