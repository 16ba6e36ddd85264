"""Abuse limits, in memory: connections (per server, per service, per client address, per account and
address, and new ones per minute), messages per authenticated user per hour, and greylisting. A restart
forgets them, which costs at most one more round of greylisting; nothing here ever loses mail (every
refusal is a 4xx the sender retries). In a cluster (PostgreSQL), the sending counts and the greylisting
triplets are also the other processes' (policy/shared.py feeds them in); connection caps stay per process.

Client addresses are counted as IPv4 addresses and IPv6 /64 networks (one customer's whole allocation:
a host can pick any of 2^64 addresses in it), IPv4-mapped IPv6 addresses as the IPv4 address.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict, defaultdict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from kartero.store.interface import AbuseKind

MAX_KEYS = 100_000  # bound memory under an address-spraying flood: the least recently seen are forgotten
# A passed triplet in use is renewed (and the renewal shared with the cluster) at most this often.
PASS_REFRESH_S = 86400.0


def parse_networks(texts: Iterable[str]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(t, strict=False) for t in texts)


def in_networks(ip: str, networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        mapped = address.ipv4_mapped  # a dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d
        return any(address in n or mapped in n for n in networks)
    return any(address in n for n in networks)


def client_key(ip: str) -> str:
    """What the per-address limits count: the IPv4 address, or the IPv6 /64 the address is in."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(address) >> 64 << 64, 64)))
    return str(address)


class SlidingWindow:
    """How many events per key in the last `window_s` seconds (at most MAX_KEYS keys: past that the
    least recently recorded key is forgotten, so a spray of addresses cannot reset everyone's count)."""

    def __init__(self, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self.clock = clock
        self._events: OrderedDict[str, deque[float]] = OrderedDict()

    def count(self, key: str) -> int:
        events = self._events.get(key)
        if not events:
            return 0
        cutoff = self.clock() - self.window_s
        while events and events[0] <= cutoff:
            events.popleft()
        if not events:
            del self._events[key]
            return 0
        return len(events)

    def record(self, key: str) -> None:
        events = self._events.get(key)
        if events is None:
            if len(self._events) >= MAX_KEYS:
                self._events.popitem(last=False)
            events = self._events[key] = deque()
        else:
            self._events.move_to_end(key)
        events.append(self.clock())

    def record_earlier(self, key: str, age_s: float) -> None:
        """An event of `age_s` seconds ago (another process's): counted in its place in time."""
        if age_s >= self.window_s:
            return
        at = self.clock() - max(0.0, age_s)
        self.record(key)
        events = self._events[key]
        events.pop()
        i = len(events)
        while i and events[i - 1] > at:  # remote events come nearly in order: a short walk
            i -= 1
        events.insert(i, at)

    def retry_after(self, key: str) -> float:
        events = self._events.get(key)
        return max(0.0, events[0] + self.window_s - self.clock()) if events else 0.0


@dataclass
class ConnectionLimits:
    """Per client address (see `client_key`), or per account and address when `user` is given: at most
    `concurrent` sessions at once, `per_minute` new ones a minute (0 means no limit); addresses in
    `exempt` are not limited."""

    concurrent: int
    per_minute: int
    exempt: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self._open: dict[str, int] = defaultdict(int)  # a key lives only while it has open sessions
        self._recent = SlidingWindow(60.0, self.clock)

    def open(self, ip: str, user: str | None = None) -> str | None:
        """Count a new session; the reason to refuse it, or None. Every open is paired with `close`."""
        key = _key(ip, user)
        self._open[key] += 1
        if in_networks(ip, self.exempt):
            return None
        recent = self._recent.count(key) if self.per_minute else 0
        if self.per_minute:
            self._recent.record(key)  # refused attempts count too: hammering keeps an address out
        if self.concurrent and self._open[key] > self.concurrent:
            return f"more than {self.concurrent} connections at once"
        if self.per_minute and recent >= self.per_minute:
            return f"more than {self.per_minute} connections a minute"
        return None

    def close(self, ip: str, user: str | None = None) -> None:
        key = _key(ip, user)
        self._open[key] -= 1
        if self._open[key] <= 0:
            del self._open[key]


def _key(ip: str, user: str | None) -> str:
    return client_key(ip) if user is None else f"{user.lower()} {client_key(ip)}"


@dataclass(frozen=True, slots=True)
class ServiceLimits:
    """The caps of one service (all its listeners together, e.g. imap + imaps)."""

    sessions: int  # at once, from everyone: a flood of one service leaves the others their room
    per_ip: int  # at once from one address, before login (every session, on a service without login)
    per_ip_per_minute: int = 0  # new sessions a minute from one address (0: no limit)
    per_user_ip: int = 0  # logged-in sessions at once per account and address (0: no limit)

    def __post_init__(self) -> None:
        if self.sessions < 1 or min(self.per_ip, self.per_ip_per_minute, self.per_user_ip) < 0:
            raise ValueError("connection limits must be positive (per address: 0 means none)")


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a session may not go on; `is_per_address` tells the client's own excess from a full server."""

    reason: str
    is_per_address: bool


@dataclass(slots=True)
class Ticket:
    """One admitted (or refused) session, as `Admission` counted it; hand it back to `close`."""

    service: str
    ip: str
    refusal: Refusal | None
    user: str | None = None  # set once logged in: counted per account and address from then on
    is_counted: bool = False  # admitted and not yet closed


class Admission:
    """Every connection cap of the server: sessions at once in total (`total`, kept under the open-file
    limit), per service, per client address before login, per account and address after, and new
    sessions a minute per address. A refused session is not counted (its socket closes at once)."""

    def __init__(self, total: int, services: Mapping[str, ServiceLimits],
                 exempt: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = (),
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.total = total
        self.services = dict(services)
        self._open_total = 0
        self._open: dict[str, int] = dict.fromkeys(self.services, 0)
        self._per_ip = {name: ConnectionLimits(s.per_ip, s.per_ip_per_minute, exempt, clock)
                        for name, s in self.services.items()}  # fmt: skip
        self._per_user = {name: ConnectionLimits(s.per_user_ip, 0, exempt, clock) for name, s in self.services.items()}

    def open(self, service: str, ip: str) -> Ticket:
        """Admit a new session of `service` from `ip`, or say why not (`Ticket.refusal`)."""
        limits = self.services[service]
        if self._open_total >= self.total or self._open[service] >= limits.sessions:
            return Ticket(service, ip, Refusal("too many connections", is_per_address=False))
        reason = self._per_ip[service].open(ip)
        if reason is not None:
            self._per_ip[service].close(ip)
            return Ticket(service, ip, Refusal(reason, is_per_address=True))
        self._open_total += 1
        self._open[service] += 1
        return Ticket(service, ip, None, is_counted=True)

    def log_in(self, ticket: Ticket, user: str) -> Refusal | None:
        """The session logged in as `user`: it moves from its address's count to the account's; a
        refusal means the account has too many sessions from that address (the session must end)."""
        if not ticket.is_counted or ticket.user is not None:
            return ticket.refusal
        per_user = self._per_user[ticket.service]
        reason = per_user.open(ticket.ip, user)
        if reason is not None:
            per_user.close(ticket.ip, user)
            return Refusal(reason, is_per_address=True)
        self._per_ip[ticket.service].close(ticket.ip)
        ticket.user = user
        return None

    def close(self, ticket: Ticket) -> None:
        """The session ended: release what `open` (and `log_in`) counted for it."""
        if not ticket.is_counted:
            return
        ticket.is_counted = False
        self._open_total -= 1
        self._open[ticket.service] -= 1
        if ticket.user is not None:
            self._per_user[ticket.service].close(ticket.ip, ticket.user)
        else:
            self._per_ip[ticket.service].close(ticket.ip)

    def count(self, service: str | None = None) -> int:
        """Sessions open now, of one service or of all."""
        return self._open_total if service is None else self._open[service]


@dataclass
class Greylist:
    """RFC 6647 greylisting of (client network, sender, recipient): the first attempt is deferred; a
    retry after `delay_s` (and within `retry_window_s`) passes, and the triplet then passes for `pass_s`.
    IPv4 clients count by /24 and IPv6 by /64, so a sender's pool of outgoing hosts is one client."""

    delay_s: float
    retry_window_s: float = 86400.0
    pass_s: float = 35 * 86400.0
    exempt: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    clock: Callable[[], float] = time.time
    # Tells the cluster of each triplet seen first or passed (policy/shared.py); None: one process.
    publish: Callable[[AbuseKind, tuple[str, ...]], None] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        self._first_seen: dict[tuple[str, str, str], float] = {}
        self._passed: dict[tuple[str, str, str], float] = {}

    def wait(self, ip: str, sender: str, recipient: str) -> float:
        """0 when the message may pass, else how many seconds the sender should still wait."""
        if in_networks(ip, self.exempt):
            return 0.0
        key = (_network(ip), sender.lower(), recipient.lower())
        now = self.clock()
        passed = self._passed.get(key)
        if passed is not None and now - passed < self.pass_s:
            # In use: it keeps passing, renewed (and the cluster told) at most once a day.
            if now - passed >= min(PASS_REFRESH_S, self.pass_s / 2):
                self._passed[key] = now
                self._tell(AbuseKind.GREY_PASSED, key)
            return 0.0
        first = self._first_seen.get(key)
        if first is None or now - first > self.retry_window_s:
            if len(self._first_seen) >= MAX_KEYS:
                self._first_seen.clear()
            self._first_seen[key] = now
            self._tell(AbuseKind.GREY_SEEN, key)
            return self.delay_s
        if now - first < self.delay_s:
            return self.delay_s - (now - first)
        self._pass(key, now)
        self._tell(AbuseKind.GREY_PASSED, key)
        return 0.0

    def remote_seen(self, network: str, sender: str, recipient: str, age_s: float) -> None:
        """Another process greylisted this triplet `age_s` seconds ago: the delay runs from the first
        attempt anywhere (an MX round robin sends the retry to another node)."""
        now = self.clock()
        if age_s > self.retry_window_s:
            return
        key, at = (network, sender, recipient), now - max(0.0, age_s)
        first = self._first_seen.get(key)
        if first is None or now - first > self.retry_window_s or at < first:
            if first is None and len(self._first_seen) >= MAX_KEYS:
                self._first_seen.clear()
            self._first_seen[key] = at

    def remote_passed(self, network: str, sender: str, recipient: str, age_s: float) -> None:
        """Another process let this triplet pass `age_s` seconds ago: it passes here too."""
        if age_s >= self.pass_s:
            return
        key, at = (network, sender, recipient), self.clock() - max(0.0, age_s)
        if at > self._passed.get(key, -math.inf):
            self._pass(key, at)

    def _pass(self, key: tuple[str, str, str], at: float) -> None:
        self._first_seen.pop(key, None)
        if key not in self._passed and len(self._passed) >= MAX_KEYS:
            self._passed.clear()
        self._passed[key] = at

    def _tell(self, kind: AbuseKind, key: tuple[str, str, str]) -> None:
        if self.publish is not None:
            self.publish(kind, key)


def _network(ip: str) -> str:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    prefix = 24 if address.version == 4 else 64
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))
