"""MTA-STS (RFC 8461): a destination domain's promise that its MX hosts speak TLS with valid
certificates, and which hosts they are.

`_mta-sts.<domain>` TXT says a policy exists and its id; the policy itself comes over HTTPS from
`https://mta-sts.<domain>/.well-known/mta-sts.txt` with a certificate valid for that name. Policies are
cached for their max_age (capped at a year) and refetched when the TXT id changes; while a cached policy
is valid, a failure to refresh it keeps the old one (§5.1), so an attacker who blocks the fetch gains
nothing. `enforce`: deliver only to MX hosts the policy names, over TLS with a certificate valid for
the host name, or not at all (defer). `testing`: check the same, log failures, deliver anyway.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from dataclasses import dataclass

from kartero.dns.resolver import NoRecords, Records, Resolver, Temporary
from kartero.log import kv

log = logging.getLogger("kartero.delivery")

MAX_POLICY_BYTES = 64 * 1024  # §3.3
MAX_AGE_CAP_S = 31_557_600  # §3.2: one year
FETCH_TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True)
class Policy:
    domain: str
    id: str
    mode: str  # enforce, testing, none
    mx: tuple[str, ...]  # patterns: "mail.example.com" or "*.example.net"
    max_age_s: int
    fetched_at: float

    def allows(self, host: str) -> bool:
        """Whether an MX host name matches one of the policy's mx patterns (§4.1)."""
        host = host.lower().rstrip(".")
        for pattern in self.mx:
            if pattern.startswith("*."):
                suffix = pattern[1:]  # ".example.net": exactly one more label
                if host.endswith(suffix) and "." not in host[: -len(suffix)] and host[: -len(suffix)]:
                    return True
            elif host == pattern:
                return True
        return False

    @property
    def enforced(self) -> bool:
        return self.mode == "enforce"


class PolicyError(Exception):
    pass


def parse_policy(domain: str, policy_id: str, text: str, now: float) -> Policy:
    """The policy file (§3.2): `key: value` lines; version, mode and max_age are required."""
    fields: dict[str, str] = {}
    mx: list[str] = []
    for line in text.replace("\r\n", "\n").split("\n"):
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key, value = key.strip().lower(), value.strip()
        if key == "mx":
            mx.append(value.lower().rstrip("."))
        else:
            fields.setdefault(key, value)
    if fields.get("version") != "STSv1":
        raise PolicyError("no 'version: STSv1' line")
    mode = fields.get("mode", "").lower()
    if mode not in ("enforce", "testing", "none"):
        raise PolicyError(f"bad mode {fields.get('mode')!r}")
    try:
        max_age = int(fields.get("max_age", ""))
    except ValueError:
        raise PolicyError("bad or missing max_age") from None
    if mode != "none" and not mx:
        raise PolicyError("no mx lines")
    return Policy(domain, policy_id, mode, tuple(mx), max(0, min(max_age, MAX_AGE_CAP_S)), now)


def parse_txt(records: tuple[str, ...]) -> str | None:
    """The id of the one `v=STSv1` record (§3.1), or None."""
    found = [r for r in records if r.replace(" ", "").startswith("v=STSv1;") or r.strip() == "v=STSv1"]
    if len(found) != 1:
        return None
    for part in found[0].split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key == "id" and value:
            return value.strip()
    return None


class MTASTS:
    """Fetches and caches the policies of destination domains (in memory)."""

    def __init__(self, resolver: Resolver, tls: ssl.SSLContext, *, port: int = 443) -> None:
        self.resolver = resolver
        self.tls = tls
        self.port = port
        self._cache: dict[str, Policy] = {}

    async def policy(self, domain: str) -> Policy | None:
        """The domain's valid policy, or None (no policy, or none could be had and none is cached)."""
        now = time.time()
        cached = self._cache.get(domain)
        if cached is not None and now - cached.fetched_at > cached.max_age_s:
            del self._cache[domain]
            cached = None
        answer = await self.resolver.txt(f"_mta-sts.{domain}")
        if isinstance(answer, Temporary) or (isinstance(answer, NoRecords) and cached is not None):
            return cached  # §5.1: keep using a valid cached policy when DNS fails or the record went away
        policy_id = parse_txt(answer.values) if isinstance(answer, Records) else None
        if policy_id is None:
            return cached
        if cached is not None and cached.id == policy_id:
            return cached
        try:
            text = await self._fetch(domain)
            policy = parse_policy(domain, policy_id, text, now)
        except (OSError, ssl.SSLError, TimeoutError, PolicyError, UnicodeDecodeError) as exc:
            log.warning("%s", kv(event="mtasts.fetch_failed", domain=domain, detail=str(exc)))
            return cached
        self._cache[domain] = policy
        log.info("%s", kv(event="mtasts.policy", domain=domain, id=policy_id, mode=policy.mode, mx=",".join(policy.mx)))
        return policy

    async def _fetch(self, domain: str) -> str:
        """GET the policy over HTTPS, the certificate checked for mta-sts.<domain>; no redirects (§3.3)."""
        host = f"mta-sts.{domain}"
        addresses = await self.resolver.addresses(host)
        if not isinstance(addresses, Records):
            raise OSError(f"{host} has no address")
        async with asyncio.timeout(FETCH_TIMEOUT_S):
            reader, writer = await asyncio.open_connection(addresses.values[0], self.port, ssl=self.tls,
                                                           server_hostname=host)  # fmt: skip
            try:
                writer.write(f"GET /.well-known/mta-sts.txt HTTP/1.0\r\nHost: {host}\r\n"
                             "User-Agent: Kartero\r\nConnection: close\r\n\r\n".encode())  # fmt: skip
                response = await reader.read(MAX_POLICY_BYTES + 16 * 1024)
            finally:
                writer.close()
        head, sep, body = response.partition(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0].split()
        if not sep or len(status) < 2 or status[1] != b"200":
            raise PolicyError(f"HTTP {b' '.join(status[1:]).decode('ascii', 'replace') or 'garbage'} from {host}")
        if len(body) > MAX_POLICY_BYTES:
            raise PolicyError("policy larger than 64 KiB")
        return body.decode("utf-8")
