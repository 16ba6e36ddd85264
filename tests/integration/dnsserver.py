"""A real DNS server (UDP and TCP, built on dnslib) on a loopback address, serving test zones.

Unlike dnslib's ZoneResolver it tells NXDOMAIN (no such name) from NODATA (the name exists, not that
type), which is what the implicit-MX rule turns on; names listed in `servfail` answer SERVFAIL. Records
can be changed while it runs.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from dnslib import QTYPE, RCODE, RR, DNSRecord
from dnslib.server import BaseResolver, DNSHandler, DNSServer

from tests.integration.harness import free_port


class Zones(BaseResolver):  # type: ignore[misc]
    def __init__(self, zone_text: str) -> None:
        self.lock = threading.Lock()
        self.records: list[RR] = []
        self.servfail: set[str] = set()
        self.queries: list[tuple[str, str]] = []
        self.set_zone(zone_text)

    def set_zone(self, zone_text: str) -> None:
        """Replace every record with those in `zone_text` (zone file syntax, absolute names)."""
        with self.lock:
            self.records = list(RR.fromZone(zone_text))

    def add(self, zone_text: str) -> None:
        with self.lock:
            self.records.extend(RR.fromZone(zone_text))

    def resolve(self, request: DNSRecord, handler: DNSHandler) -> DNSRecord:
        reply = request.reply()
        qname = request.q.qname
        qtype = QTYPE[request.q.qtype]
        name = str(qname).lower()
        with self.lock:
            self.queries.append((name.rstrip("."), qtype))
            if name.rstrip(".") in self.servfail:
                reply.header.rcode = RCODE.SERVFAIL
                return reply
            same_name = [rr for rr in self.records if str(rr.rname).lower() == name]
        for rr in same_name:
            if qtype == "ANY" or QTYPE[rr.rtype] == qtype:
                reply.add_answer(rr)
        if not same_name:
            reply.header.rcode = RCODE.NXDOMAIN
        return reply


class LoopbackDNS:
    """`with LoopbackDNS(zone) as dns:` -- listening on `dns.host:dns.port` over UDP and TCP."""

    def __init__(self, zone_text: str, host: str = "127.0.0.1", port: int = 0) -> None:
        self.zones = Zones(zone_text)
        self.host = host
        self.port = port or free_port(host)
        self._servers = [
            DNSServer(self.zones, address=host, port=self.port, tcp=tcp, logger=_QuietLogger()) for tcp in (False, True)
        ]

    def __enter__(self) -> LoopbackDNS:
        for server in self._servers:
            server.start_thread()
        return self

    def __exit__(self, *exc: object) -> None:
        for server in self._servers:
            server.stop()
            server.server.server_close()

    @property
    def config(self) -> str:
        """The `[dns]` section a Kartero config needs to use this server."""
        return f'[dns]\nnameservers = ["{self.host}:{self.port}"]\ntimeout = "2s"\n'

    def queried(self, names: Iterable[str]) -> list[tuple[str, str]]:
        wanted = set(names)
        with self.zones.lock:
            return [q for q in self.zones.queries if q[0] in wanted]


class _QuietLogger:
    def __getattr__(self, name: str) -> object:
        return lambda *args, **kwargs: None
