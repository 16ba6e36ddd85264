"""DNS blocklists (RFC 5782): is the client's address listed in one of the configured zones?

An address is listed when `<reversed address>.<zone>` has an A record in 127.0.0.0/8, except
127.255.255.0/24, which lists like Spamhaus use to say "you may not query us" (not a verdict about the
client). Answers are cached for five minutes; DNS failures list nobody.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Callable, Sequence

import dns.exception
import dns.resolver
import dns.reversename

from kartero.policy.limits import in_networks

CACHE_S = 300.0
_LISTED = ipaddress.ip_network("127.0.0.0/8")
_QUERY_REFUSED = ipaddress.ip_network("127.255.255.0/24")


class DNSBL:
    def __init__(self, zones: Sequence[str], resolver: dns.resolver.Resolver,
                 exempt: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network] = (),
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.zones = tuple(z.strip(".").lower() for z in zones)
        self.resolver = resolver
        self.exempt = tuple(exempt)
        self.clock = clock
        self._cache: dict[str, tuple[float, str | None]] = {}
        self._lock = threading.Lock()

    def cached(self, ip: str) -> tuple[bool, str | None]:
        """(known, zone): whether the answer is at hand without DNS, and the listing zone if any."""
        if in_networks(ip, self.exempt):
            return True, None
        with self._lock:
            hit = self._cache.get(ip)
        if hit is not None and self.clock() - hit[0] < CACHE_S:
            return True, hit[1]
        return False, None

    def listed(self, ip: str) -> str | None:
        """The first zone that lists `ip`, or None. Blocking (DNS)."""
        known, zone = self.cached(ip)
        if known:
            return zone
        try:
            reversed_name = dns.reversename.from_address(ip).to_text(omit_final_dot=True)
        except (dns.exception.SyntaxError, ValueError):
            return None
        base = reversed_name.rsplit(".", 2)[0]  # drop in-addr.arpa / ip6.arpa
        zone = None
        for candidate in self.zones:
            if self._lists(f"{base}.{candidate}"):
                zone = candidate
                break
        with self._lock:
            if len(self._cache) > 100_000:
                self._cache.clear()
            self._cache[ip] = (self.clock(), zone)
        return zone

    def _lists(self, name: str) -> bool:
        try:
            answer = self.resolver.resolve(name, "A", search=False)
        except dns.exception.DNSException:
            return False
        for record in answer:
            address = ipaddress.ip_address(record.to_text())
            if address in _LISTED and address not in _QUERY_REFUSED:
                return True
        return False
