"""Configuration: TOML in, typed and validated settings out.

`load()` is the only code that reads the config file or $KARTERO_CONFIG. Paths are resolved against the
config file's folder. Every problem raises ConfigError with one line naming the file, the key and what is
wrong; the CLI turns that into exit code 2.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kartero.dns.names import DomainError, canonical_domain

DEFAULT_CONFIG_NAME = "kartero.toml"
EMBEDDED_DATA_DIR = "kartero-data"

# Listener kinds this version serves. The others in DESIGN.md §1 are refused by name until they exist,
# so a config never silently lacks a service it asks for.
LISTENERS = ("smtp", "submission", "submissions", "imap", "imaps", "pop3", "pop3s", "managesieve", "http", "https")
# The web admin, the JSON API and /metrics (kartero/web), served by aiohttp rather than a protocol core.
HTTP_LISTENERS = frozenset({"http", "https"})
PLANNED_LISTENERS: tuple[str, ...] = ()
# Listeners that speak TLS from the first byte and so cannot run without [tls].
IMPLICIT_TLS = frozenset({"imaps", "submissions", "pop3s"})

EMBEDDED_PORTS = {
    "smtp": 2525,
    "submission": 5870,
    "submissions": 4650,
    "imap": 1430,
    "imaps": 9930,
    "pop3": 1100,
    "pop3s": 9950,
    "managesieve": 4190,  # DESIGN.md §1b: unprivileged already (RFC 5804 §1.8's port)
    "http": 8080,  # the web admin at http://127.0.0.1:8080/admin/ (loopback: no TLS needed)
}


class ConfigError(Exception):
    """A config problem, already phrased for the admin: "FILE: [section] key: problem"."""


@dataclass(frozen=True, slots=True)
class ListenAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class TLSConfig:
    cert: Path
    key: Path


@dataclass(frozen=True, slots=True)
class Limits:
    message_size: int = 50 * 1000 * 1000
    recipients_per_message: int = 1000
    errors_per_session: int = 20
    connections: int = 4000  # sessions at once, every listener together (kept under the open-file limit)
    smtp_connections: int = 1000  # per service (its listeners together): one flooded service leaves
    submission_connections: int = 500  # the others their room
    imap_connections: int = 2000
    pop3_connections: int = 500
    http_connections: int = 500  # the web admin, the API and /metrics together
    command_timeout_s: float = 300.0
    data_timeout_s: float = 180.0
    command_deadline_s: float = 30.0  # a command complete after its first byte (+1 s per KiB received)
    login_deadline_s: float = 60.0  # submission, IMAP, POP3: logged in after connecting
    check_deadline_s: float = 120.0  # one policy decision (MAIL, RCPT, the message checks, AUTH)
    shutdown_grace_s: float = 10.0
    connections_per_ip: int = 50  # MX sessions at once from one address (0: no limit)
    unauthenticated_connections_per_ip: int = 10  # per service, before login (submission, IMAP, POP3)
    connections_per_user_and_ip: int = 10  # per service, after login (Dovecot's mail_max_userip_connections)
    connections_per_ip_per_minute: int = 120  # MX and submission, each counted apart
    messages_per_user_per_hour: int = 500  # submission (0: no limit)
    exempt: tuple[str, ...] = ("127.0.0.0/8", "::1/128")  # networks the per-address limits skip
    default_quota: int = 0  # storage limit in bytes of an account without its own (0: none)


@dataclass(frozen=True, slots=True)
class GreylistConfig:
    enabled: bool = False
    delay_s: float = 300.0
    retry_window_s: float = 86400.0
    pass_s: float = 35 * 86400.0
    exempt: tuple[str, ...] = ("127.0.0.0/8", "::1/128")


@dataclass(frozen=True, slots=True)
class DNSBLConfig:
    zones: tuple[str, ...] = ()  # none: no blocklist lookups
    exempt: tuple[str, ...] = ("127.0.0.0/8", "::1/128")


@dataclass(frozen=True, slots=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class DNSConfig:
    nameservers: tuple[HostPort, ...] = ()  # empty: the system resolver
    timeout_s: float = 10.0


@dataclass(frozen=True, slots=True)
class DeliveryConfig:
    port: int = 25
    queue_lifetime_s: float = 5 * 86400.0
    retry_first_s: float = 300.0
    retry_max_s: float = 4 * 3600.0
    delay_notice_s: float = 4 * 3600.0
    relayhost: HostPort | None = None
    connect_timeout_s: float = 30.0
    concurrency: int = 50
    per_domain: int = 5
    source_address: str | None = None  # the local address outgoing connections come from
    mta_sts: bool = True  # honour destinations' MTA-STS policies (RFC 8461)
    tls_ca_file: Path | None = None  # extra trust anchors for verified TLS (MTA-STS), PEM


@dataclass(frozen=True, slots=True)
class InboundConfig:
    """What the MX listener checks on each message (all on unless turned off)."""

    spf: bool = True
    dkim: bool = True
    dmarc: bool = True


def _default_node() -> str:
    return socket.gethostname().split(".")[0] or "node"


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """Where accounts, mail and the queue live: the embedded SQLite store under data_dir, or PostgreSQL,
    shared by every node of a cluster (docs/cluster.md)."""

    backend: str = "sqlite"  # or "postgresql"
    url: str = ""  # libpq URL (postgresql only)
    node: str = field(default_factory=_default_node)  # this node's name in the cluster
    lease_s: float = 60.0  # a dead node's deliveries are taken over after this

    @property
    def is_postgresql(self) -> bool:
        return self.backend == "postgresql"


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """Password logins: the failed-login throttle (see auth/throttle.py) and the stored SCRAM keys."""

    failure_window_s: float = 900.0
    failures_per_address_and_account: int = 10
    failures_per_address: int = 30
    failures_per_account: int = 100
    scram_iterations: int = 100_000  # PBKDF2 rounds for new SCRAM-SHA-256 keys; RFC 7677 §4: >= 4096


SCRAM_MIN_ITERATIONS = 4096  # RFC 7677 §4


@dataclass(frozen=True, slots=True)
class SRSConfig:
    """The Sender Rewriting Scheme of forwarded mail (kartero/mail/srs.py). No `secret`: the server keeps
    one it made itself in the store (the embedded database, or PostgreSQL's, shared by a cluster)."""

    secret: str = ""  # signs new SRS addresses and checks bounces
    old_secrets: tuple[str, ...] = ()  # still accepted for bounces (rotation), never used to sign


SRS_MIN_SECRET = 16  # characters: a guessable key would let anyone relay through SRS addresses


@dataclass(frozen=True, slots=True)
class MilterConfig:
    """One `[[milter]]`: a content filter speaking the milter protocol (version 6, as Postfix speaks it),
    applied in the order of the file on the listeners named."""

    address: str  # "host:port" (TCP) or "unix:/path/to/socket"
    listeners: tuple[str, ...] = ("smtp", "submission")
    on_error: str = "tempfail"  # or "accept": what a dead, slow or confused milter means for the message
    timeout_s: float = 30.0  # for each exchange with the milter (connect, every command)

    @property
    def is_unix(self) -> bool:
        return self.address.startswith("unix:")


@dataclass(frozen=True, slots=True)
class SpamConfig:
    """What milters' verdicts mean for delivery, and where users' spam/ham reports go."""

    junk_header: str = "X-Spam"  # set to "Yes" (or X-Spam-Flag: YES) by a milter: deliver to Junk
    learn: str = ""  # rspamd's controller URL ("http://127.0.0.1:11334"); "" learns nothing


@dataclass(frozen=True, slots=True)
class HooksConfig:
    """Python policy hooks (kartero/hooks.py is their API)."""

    module: Path | None = None  # the hooks file, resolved against the config file's folder
    on_error: str = "tempfail"  # or "accept": a hook that raises or passes its timeout
    timeout_s: float = 10.0


@dataclass(frozen=True, slots=True)
class HttpConfig:
    """The HTTP side: the web admin's sessions and who may scrape /metrics."""

    metrics_token: str = ""  # "": /metrics is open to whoever reaches the listener; else a bearer token
    session_lifetime_s: float = 12 * 3600.0  # a browser signs in again after this long, whatever it does
    # The port mail clients reach each service on, where it differs from the bound one in [listen] (NAT,
    # port forwarding); 0: not told to clients. Read by kartero/autoconfig (client settings, SRV records).
    public_ports: Mapping[str, int] = field(default_factory=dict)


# Services a mail client is told about (autoconfig, autodiscover, .mobileconfig, RFC 6186 SRV records).
CLIENT_SERVICES = ("imaps", "imap", "pop3s", "pop3", "submissions", "submission")


@dataclass(frozen=True, slots=True)
class MtaStsConfig:
    """The MTA-STS policy (RFC 8461) served to `mta-sts.DOMAIN` of every local domain, and the TLS-RPT
    address (RFC 8460) `kartero dns` suggests."""

    mode: str = "testing"  # testing: senders report failures but deliver; enforce; none (withdraw)
    max_age_s: int = 7 * 86400  # how long senders keep the policy
    mx: tuple[str, ...] = ()  # MX host names besides `hostname` ("*.example.net" patterns allowed)
    tls_rpt: str = ""  # the TLS-RPT rua; "": mailto:postmaster@DOMAIN


MTA_STS_MAX_AGE_S = 31_557_600  # RFC 8461 §3.2: max_age at most one year


@dataclass(frozen=True, slots=True)
class TraceConfig:
    """The message trace (docs/trace.md): how long each message's path is kept; 0 keeps none."""

    keep_s: float = 30 * 86400.0

    @property
    def is_enabled(self) -> bool:
        return self.keep_s > 0


@dataclass(frozen=True, slots=True)
class AcmeConfig:
    """Certificates from an ACME CA (docs/tls.md): who to ask, for which names, whom to trust there."""

    directory: str  # the CA's directory URL, e.g. https://acme-v02.api.letsencrypt.org/directory
    names: tuple[str, ...]  # the certificate's DNS names; default: the host name
    email: str = ""  # the account's contact (expiry and policy mail from the CA); "" registers none
    ca_file: Path | None = None  # PEM trust anchor for the CA's own HTTPS (a private CA); None: the system's


@dataclass(frozen=True, slots=True)
class Config:
    hostname: str
    domains: tuple[str, ...]
    data_dir: Path
    listen: Mapping[str, tuple[ListenAddress, ...]]
    tls: TLSConfig | None
    limits: Limits = field(default_factory=Limits)
    dns: DNSConfig = field(default_factory=DNSConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    routes: Mapping[str, HostPort] = field(default_factory=dict)
    inbound: InboundConfig = field(default_factory=InboundConfig)
    greylisting: GreylistConfig = field(default_factory=GreylistConfig)
    dnsbl: DNSBLConfig = field(default_factory=DNSBLConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    srs: SRSConfig = field(default_factory=SRSConfig)
    milters: tuple[MilterConfig, ...] = ()
    spam: SpamConfig = field(default_factory=SpamConfig)
    hooks: HooksConfig = field(default_factory=HooksConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    trace: TraceConfig = field(default_factory=TraceConfig)
    mta_sts: MtaStsConfig = field(default_factory=MtaStsConfig)
    acme: AcmeConfig | None = None
    log_level: str = "info"
    proxy_from: tuple[str, ...] = ()  # networks whose connections start with a PROXY protocol header
    source: Path | None = None  # the file it came from; None for the embedded default
    make_certificate: bool = False  # embedded default: create a self-signed certificate on first start

    @property
    def primary_domain(self) -> str:
        return self.domains[0]

    @property
    def name(self) -> str:
        return str(self.source) if self.source else "embedded default"


_SIZE = re.compile(r"(\d+)\s*([kmg]i?b?|b)?", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "ki": 2**10, "mi": 2**20, "gi": 2**30}


def parse_size(text: str) -> int | None:
    """`500M`, `2G`, `64KiB`, `1000` as bytes (k/M/G are powers of 1000, Ki/Mi/Gi of 1024); None when
    `text` is not a size."""
    m = _SIZE.fullmatch(text.strip())
    if m is None:
        return None
    return int(m.group(1)) * _SIZE_UNITS[(m.group(2) or "").lower().rstrip("b")]


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?")
_DURATION_UNITS = {"ms": 0.001, "": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float | None:
    """`30s`, `5m`, `2h`, `7d`, `250ms`, `90` (seconds) as seconds; None when `text` is not a duration."""
    m = _DURATION.fullmatch(text.strip())
    return float(m.group(1)) * _DURATION_UNITS[m.group(2) or ""] if m else None


class _Reader:
    """Walks the TOML tree, converting values and naming the exact key in every error."""

    def __init__(self, name: str, base: Path) -> None:
        self.name = name
        self.base = base

    def fail(self, section: str | None, key: str, problem: str) -> ConfigError:
        where = f"[{section}] {key}" if section else key
        return ConfigError(f"{self.name}: {where}: {problem}")

    def table(self, data: Mapping[str, Any], section: str) -> Mapping[str, Any]:
        value = data.get(section, {})
        if not isinstance(value, dict):
            raise ConfigError(f"{self.name}: [{section}]: must be a table")
        return value

    def check_keys(self, data: Mapping[str, Any], section: str | None, allowed: tuple[str, ...]) -> None:
        for key in data:
            if key not in allowed:
                raise self.fail(section, key, "unknown key")

    def string(self, data: Mapping[str, Any], section: str | None, key: str, default: str | None = None) -> str:
        value = data.get(key, default)
        if not isinstance(value, str):
            raise self.fail(section, key, "missing" if value is None else "must be a string")
        return value

    def integer(self, data: Mapping[str, Any], section: str | None, key: str, default: int, low: int) -> int:
        value = data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(section, key, "must be an integer")
        if value < low:
            raise self.fail(section, key, f"must be at least {low}")
        return value

    def size(self, data: Mapping[str, Any], section: str, key: str, default: int) -> int:
        value = data.get(key, default)
        if isinstance(value, int) and not isinstance(value, bool):
            result = value
        elif isinstance(value, str) and (parsed := parse_size(value)) is not None:
            result = parsed
        else:
            raise self.fail(section, key, f'expected a size like "50MB", got {value!r}')
        if result < 1:
            raise self.fail(section, key, "must be positive")
        return result

    def networks(self, data: Mapping[str, Any], section: str, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = data.get(key, list(default))
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(section, key, 'expected a list of networks like ["192.0.2.0/24", "::1"]')
        for text in value:
            try:
                ipaddress.ip_network(text, strict=False)
            except ValueError:
                raise self.fail(section, key, f"not a network: {text!r}") from None
        return tuple(value)

    def boolean(self, data: Mapping[str, Any], section: str, key: str, default: bool) -> bool:
        value = data.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(section, key, f"expected true or false, got {value!r}")
        return value

    def duration(self, data: Mapping[str, Any], section: str, key: str, default: float) -> float:
        value = data.get(key, default)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            result = float(value)
        elif isinstance(value, str) and (parsed := parse_duration(value)) is not None:
            result = parsed
        else:
            raise self.fail(section, key, f'expected a duration like "5m" or "30s", got {value!r}')
        if result <= 0:
            raise self.fail(section, key, "must be positive")
        return result

    def path(self, value: str) -> Path:
        return (self.base / Path(value).expanduser()).resolve()

    def host_port(self, section: str, key: str, text: object, default_port: int | None = None) -> HostPort:
        """`host:port` (a name or an address; IPv6 in brackets); the port may be left out when a
        default is given."""
        if not isinstance(text, str) or not text.strip():
            raise self.fail(section, key, f'expected "host:port", got {text!r}')
        m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(\d+))?|([^:\[\]\s]+)(?::(\d+))?", text.strip())
        if not m:
            raise self.fail(section, key, f'expected "host:port", got {text!r}')
        host = m.group(1) or m.group(3)
        port_text = m.group(2) or m.group(4)
        if port_text is None and default_port is None:
            raise self.fail(section, key, f'expected "host:port", got {text!r}')
        port = int(port_text) if port_text is not None else default_port
        assert port is not None
        if not 1 <= port <= 65535:
            raise self.fail(section, key, f"port {port} out of range 1-65535")
        return HostPort(host, port)

    def listen_address(self, key: str, text: object) -> ListenAddress:
        if not isinstance(text, str):
            raise self.fail("listen", key, f'expected addresses like "127.0.0.1:25", got {text!r}')
        m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^:\[\]]+):(\d+)", text.strip())
        if not m:
            raise self.fail("listen", key, f'expected "host:port" or "[ipv6]:port", got {text!r}')
        host = m.group(1) or m.group(3)
        port = int(m.group(2) or m.group(4))
        if not 1 <= port <= 65535:
            raise self.fail("listen", key, f"port {port} out of range 1-65535")
        try:
            ipaddress.ip_address(host)
        except ValueError:
            if host != "localhost":
                raise self.fail("listen", key, f"{host!r} is not an IP address") from None
        return ListenAddress(host, port)


def _canonical_domain(reader: _Reader, key: str, value: object) -> str:
    if not isinstance(value, str):
        raise reader.fail(None, key, f"expected domain names, got {value!r}")
    try:
        return canonical_domain(value)
    except DomainError as exc:
        raise reader.fail(None, key, str(exc)) from None


def parse(data: Mapping[str, Any], *, name: str, base: Path, source: Path | None) -> Config:
    """Validate a parsed TOML document; `base` is the folder relative paths start from."""
    r = _Reader(name, base)
    r.check_keys(
        data, None, ("hostname", "domains", "data_dir", "listen", "tls", "limits", "dns", "delivery", "routes",
                     "inbound", "greylisting", "dnsbl", "auth", "store", "log_level", "srs", "milter",
                     "spam", "hooks", "http", "trace", "mta_sts", "acme")
    )  # fmt: skip

    domains_raw = data.get("domains")
    if not isinstance(domains_raw, list) or not domains_raw:
        raise r.fail(None, "domains", "must be a non-empty list of domain names")
    domains = tuple(dict.fromkeys(_canonical_domain(r, "domains", d) for d in domains_raw))
    hostname = _canonical_domain(r, "hostname", data.get("hostname", f"mail.{domains[0]}"))
    data_dir = r.path(r.string(data, None, "data_dir", "data"))
    log_level = r.string(data, None, "log_level", "info").lower()
    if log_level not in ("debug", "info", "warning", "error"):
        raise r.fail(None, "log_level", "must be one of debug, info, warning, error")

    listen_raw = r.table(data, "listen")
    r.check_keys(listen_raw, "listen", (*LISTENERS, *PLANNED_LISTENERS, "proxy_from"))
    proxy_from = r.networks(listen_raw, "listen", "proxy_from", ())
    listen: dict[str, tuple[ListenAddress, ...]] = {}
    for key, value in listen_raw.items():
        if key == "proxy_from":
            continue
        if key in PLANNED_LISTENERS:
            raise r.fail("listen", key, "this listener is not available in this version of Kartero")
        values = value if isinstance(value, list) else [value]
        listen[key] = tuple(r.listen_address(key, v) for v in values)

    tls: TLSConfig | None = None
    if "tls" in data:
        tls_raw = r.table(data, "tls")
        r.check_keys(tls_raw, "tls", ("cert", "key"))
        cert = r.path(r.string(tls_raw, "tls", "cert"))
        key_path = r.path(r.string(tls_raw, "tls", "key"))
        for key, path in (("cert", cert), ("key", key_path)):
            if not path.is_file():
                raise r.fail("tls", key, f"file not found: {path}")
        tls = TLSConfig(cert, key_path)
    elif "acme" in data:  # the self-signed certificate until the first ACME one arrives
        tls = TLSConfig(data_dir / "tls" / "cert.pem", data_dir / "tls" / "key.pem")
    for kind in listen:
        if (kind in IMPLICIT_TLS or kind == "https") and tls is None:
            raise r.fail("listen", kind, "needs a [tls] certificate (implicit TLS)")

    lim = r.table(data, "limits")
    r.check_keys(
        lim,
        "limits",
        (
            "message_size",
            "recipients_per_message",
            "errors_per_session",
            "connections",
            "smtp_connections",
            "submission_connections",
            "imap_connections",
            "pop3_connections",
            "http_connections",
            "command_timeout",
            "data_timeout",
            "command_deadline",
            "login_deadline",
            "shutdown_grace",
            "connections_per_ip",
            "unauthenticated_connections_per_ip",
            "connections_per_user_and_ip",
            "connections_per_ip_per_minute",
            "messages_per_user_per_hour",
            "exempt",
            "default_quota",
        ),
    )
    defaults = Limits()
    limits = Limits(
        message_size=r.size(lim, "limits", "message_size", defaults.message_size),
        recipients_per_message=r.integer(lim, "limits", "recipients_per_message", defaults.recipients_per_message, 1),
        errors_per_session=r.integer(lim, "limits", "errors_per_session", defaults.errors_per_session, 1),
        connections=r.integer(lim, "limits", "connections", defaults.connections, 1),
        smtp_connections=r.integer(lim, "limits", "smtp_connections", defaults.smtp_connections, 1),
        submission_connections=r.integer(lim, "limits", "submission_connections", defaults.submission_connections, 1),
        imap_connections=r.integer(lim, "limits", "imap_connections", defaults.imap_connections, 1),
        pop3_connections=r.integer(lim, "limits", "pop3_connections", defaults.pop3_connections, 1),
        http_connections=r.integer(lim, "limits", "http_connections", defaults.http_connections, 1),
        command_timeout_s=r.duration(lim, "limits", "command_timeout", defaults.command_timeout_s),
        data_timeout_s=r.duration(lim, "limits", "data_timeout", defaults.data_timeout_s),
        command_deadline_s=r.duration(lim, "limits", "command_deadline", defaults.command_deadline_s),
        login_deadline_s=r.duration(lim, "limits", "login_deadline", defaults.login_deadline_s),
        check_deadline_s=r.duration(lim, "limits", "check_deadline", defaults.check_deadline_s),
        shutdown_grace_s=r.duration(lim, "limits", "shutdown_grace", defaults.shutdown_grace_s),
        connections_per_ip=r.integer(lim, "limits", "connections_per_ip", defaults.connections_per_ip, 0),
        unauthenticated_connections_per_ip=r.integer(
            lim, "limits", "unauthenticated_connections_per_ip", defaults.unauthenticated_connections_per_ip, 0
        ),
        connections_per_user_and_ip=r.integer(
            lim, "limits", "connections_per_user_and_ip", defaults.connections_per_user_and_ip, 0
        ),
        connections_per_ip_per_minute=r.integer(
            lim, "limits", "connections_per_ip_per_minute", defaults.connections_per_ip_per_minute, 0
        ),
        messages_per_user_per_hour=r.integer(
            lim, "limits", "messages_per_user_per_hour", defaults.messages_per_user_per_hour, 0
        ),
        exempt=r.networks(lim, "limits", "exempt", defaults.exempt),
        # 0 (no limit) is allowed here, unlike other sizes
        default_quota=0 if lim.get("default_quota", 0) in (0, "0") else r.size(lim, "limits", "default_quota", 0),
    )
    bl = r.table(data, "dnsbl")
    r.check_keys(bl, "dnsbl", ("zones", "exempt"))
    zones_raw = bl.get("zones", [])
    if not isinstance(zones_raw, list):
        raise r.fail("dnsbl", "zones", 'expected a list like ["zen.spamhaus.org"]')
    dnsbl = DNSBLConfig(
        zones=tuple(_canonical_domain(r, "[dnsbl] zones", z) for z in zones_raw),
        exempt=r.networks(bl, "dnsbl", "exempt", DNSBLConfig().exempt),
    )
    gl = r.table(data, "greylisting")
    r.check_keys(gl, "greylisting", ("enabled", "delay", "retry_window", "pass", "exempt"))
    g = GreylistConfig()
    greylisting = GreylistConfig(
        enabled=r.boolean(gl, "greylisting", "enabled", g.enabled),
        delay_s=r.duration(gl, "greylisting", "delay", g.delay_s),
        retry_window_s=r.duration(gl, "greylisting", "retry_window", g.retry_window_s),
        pass_s=r.duration(gl, "greylisting", "pass", g.pass_s),
        exempt=r.networks(gl, "greylisting", "exempt", g.exempt),
    )
    auth_raw = r.table(data, "auth")
    r.check_keys(auth_raw, "auth", ("failure_window", "failures_per_address_and_account", "failures_per_address",
                                    "failures_per_account", "scram_iterations"))  # fmt: skip
    a = AuthConfig()
    auth = AuthConfig(
        failure_window_s=r.duration(auth_raw, "auth", "failure_window", a.failure_window_s),
        failures_per_address_and_account=r.integer(
            auth_raw, "auth", "failures_per_address_and_account", a.failures_per_address_and_account, 1
        ),
        failures_per_address=r.integer(auth_raw, "auth", "failures_per_address", a.failures_per_address, 1),
        failures_per_account=r.integer(auth_raw, "auth", "failures_per_account", a.failures_per_account, 1),
        scram_iterations=r.integer(auth_raw, "auth", "scram_iterations", a.scram_iterations, SCRAM_MIN_ITERATIONS),
    )
    dns_raw = r.table(data, "dns")
    r.check_keys(dns_raw, "dns", ("nameservers", "timeout"))
    servers_raw = dns_raw.get("nameservers", [])
    if not isinstance(servers_raw, list):
        raise r.fail("dns", "nameservers", 'must be a list like ["127.0.0.1:53"]')
    dns = DNSConfig(
        nameservers=tuple(r.host_port("dns", "nameservers", v, 53) for v in servers_raw),
        timeout_s=r.duration(dns_raw, "dns", "timeout", DNSConfig().timeout_s),
    )
    for server in dns.nameservers:
        try:
            ipaddress.ip_address(server.host)
        except ValueError:
            raise r.fail("dns", "nameservers", f"{server.host!r} is not an IP address") from None

    dl = r.table(data, "delivery")
    r.check_keys(dl, "delivery", ("port", "queue_lifetime", "retry_first", "retry_max", "delay_notice", "relayhost",
                                  "connect_timeout", "concurrency", "per_domain", "source_address", "mta_sts",
                                  "tls_ca_file"))  # fmt: skip
    d = DeliveryConfig()
    port = r.integer(dl, "delivery", "port", d.port, 1)
    if port > 65535:
        raise r.fail("delivery", "port", f"port {port} out of range 1-65535")
    relay_text = dl.get("relayhost", "")
    ca_file = None
    if "tls_ca_file" in dl:
        ca_file = r.path(r.string(dl, "delivery", "tls_ca_file"))
        if not ca_file.is_file():
            raise r.fail("delivery", "tls_ca_file", f"file not found: {ca_file}")
    source_raw = dl.get("source_address")
    source_address: str | None = None
    if source_raw is not None:
        try:
            if not isinstance(source_raw, str):
                raise ValueError
            source_address = str(ipaddress.ip_address(source_raw))
        except ValueError:
            raise r.fail("delivery", "source_address", f"expected an IP address, got {source_raw!r}") from None
    delivery = DeliveryConfig(
        port=port,
        queue_lifetime_s=r.duration(dl, "delivery", "queue_lifetime", d.queue_lifetime_s),
        retry_first_s=r.duration(dl, "delivery", "retry_first", d.retry_first_s),
        retry_max_s=r.duration(dl, "delivery", "retry_max", d.retry_max_s),
        delay_notice_s=r.duration(dl, "delivery", "delay_notice", d.delay_notice_s),
        relayhost=r.host_port("delivery", "relayhost", relay_text, 25) if relay_text else None,
        connect_timeout_s=r.duration(dl, "delivery", "connect_timeout", d.connect_timeout_s),
        concurrency=r.integer(dl, "delivery", "concurrency", d.concurrency, 1),
        per_domain=r.integer(dl, "delivery", "per_domain", d.per_domain, 1),
        source_address=source_address,
        mta_sts=r.boolean(dl, "delivery", "mta_sts", d.mta_sts),
        tls_ca_file=ca_file,
    )

    inbound_raw = r.table(data, "inbound")
    r.check_keys(inbound_raw, "inbound", ("spf", "dkim", "dmarc"))
    inbound = InboundConfig(
        spf=r.boolean(inbound_raw, "inbound", "spf", True),
        dkim=r.boolean(inbound_raw, "inbound", "dkim", True),
        dmarc=r.boolean(inbound_raw, "inbound", "dmarc", True),
    )

    routes_raw = r.table(data, "routes")
    routes: dict[str, HostPort] = {}
    for key, value in routes_raw.items():
        routes[_canonical_domain(r, f"[routes] {key}", key)] = r.host_port("routes", key, value, 25)

    store_raw = r.table(data, "store")
    r.check_keys(store_raw, "store", ("backend", "url", "node", "lease"))
    backend = r.string(store_raw, "store", "backend", "sqlite")
    if backend not in ("sqlite", "postgresql"):
        raise r.fail("store", "backend", 'must be "sqlite" or "postgresql"')
    url = r.string(store_raw, "store", "url", "")
    if backend == "postgresql" and not url.startswith(("postgresql://", "postgres://")):
        raise r.fail("store", "url", 'backend "postgresql" needs a URL such as "postgresql://kartero@127.0.0.1/kartero"')
    node = r.string(store_raw, "store", "node", "") or _default_node()
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", node):
        raise r.fail("store", "node", "letters, digits, '.', '_' and '-' only, at most 63")
    store = StoreConfig(backend, url, node, r.duration(store_raw, "store", "lease", 60.0))
    if store.lease_s < 5:
        raise r.fail("store", "lease", "at least 5s")

    srs_raw = r.table(data, "srs")
    r.check_keys(srs_raw, "srs", ("secret", "old_secrets"))
    old_raw = srs_raw.get("old_secrets", [])
    if not isinstance(old_raw, list) or not all(isinstance(v, str) for v in old_raw):
        raise r.fail("srs", "old_secrets", "must be a list of strings")
    for key, value in [("secret", r.string(srs_raw, "srs", "secret", "")), *(("old_secrets", v) for v in old_raw)]:
        if (value or key == "old_secrets") and len(value) < SRS_MIN_SECRET:
            raise r.fail("srs", key, f"at least {SRS_MIN_SECRET} characters (`openssl rand -hex 32` makes one)")
    srs = SRSConfig(r.string(srs_raw, "srs", "secret", ""), tuple(old_raw))

    milters_raw = data.get("milter", [])
    if not isinstance(milters_raw, list) or not all(isinstance(m, dict) for m in milters_raw):
        raise ConfigError(f"{name}: [[milter]]: must be an array of tables")
    milters = tuple(_milter(r, m) for m in milters_raw)

    spam_raw = r.table(data, "spam")
    r.check_keys(spam_raw, "spam", ("junk_header", "learn"))
    junk_header = r.string(spam_raw, "spam", "junk_header", "X-Spam")
    if not re.fullmatch(r"[!-9;-~]{1,76}", junk_header):
        raise r.fail("spam", "junk_header", "must be a header field name")
    learn = r.string(spam_raw, "spam", "learn", "")
    if learn and not re.fullmatch(r"https?://[^\s/]+(/\S*)?", learn):
        raise r.fail("spam", "learn", 'expected a URL like "http://127.0.0.1:11334"')
    spam = SpamConfig(junk_header, learn.rstrip("/"))

    hooks_raw = r.table(data, "hooks")
    r.check_keys(hooks_raw, "hooks", ("module", "on_error", "timeout"))
    module = r.string(hooks_raw, "hooks", "module", "")
    hooks = HooksConfig(
        r.path(module) if module else None,
        _on_error(r, "hooks", hooks_raw),
        r.duration(hooks_raw, "hooks", "timeout", 10.0),
    )

    http_raw = r.table(data, "http")
    r.check_keys(http_raw, "http", ("metrics_token", "session_lifetime", "public_ports"))
    metrics_token = r.string(http_raw, "http", "metrics_token", "")
    if metrics_token and (len(metrics_token) < 16 or not metrics_token.isascii() or not metrics_token.isprintable()
                          or " " in metrics_token):  # fmt: skip
        raise r.fail("http", "metrics_token", "must be at least 16 printable ASCII characters without spaces")
    lifetime = r.duration(http_raw, "http", "session_lifetime", HttpConfig().session_lifetime_s)
    if lifetime < 60:
        raise r.fail("http", "session_lifetime", "must be at least 1m")
    http = HttpConfig(metrics_token, lifetime, _public_ports(r, http_raw, listen))
    trace_raw = r.table(data, "trace")
    r.check_keys(trace_raw, "trace", ("keep",))
    keep = trace_raw.get("keep", "30d")  # 0 (or "0"): no trace kept
    trace = TraceConfig(0.0 if keep in (0, "0") else r.duration(trace_raw, "trace", "keep", TraceConfig().keep_s))
    mta_sts = _mta_sts(r, r.table(data, "mta_sts"))
    acme = _acme(r, data, hostname) if "acme" in data else None
    if acme is not None and not HTTP_LISTENERS & listen.keys():
        raise r.fail("acme", "directory", "the CA's challenges need [listen] http (http-01, reached on port 80) "
                                          "or https (tls-alpn-01, on port 443)")

    return Config(
        hostname=hostname,
        domains=domains,
        data_dir=data_dir,
        listen=listen,
        tls=tls,
        limits=limits,
        dns=dns,
        delivery=delivery,
        routes=routes,
        inbound=inbound,
        greylisting=greylisting,
        dnsbl=dnsbl,
        auth=auth,
        store=store,
        srs=srs,
        milters=milters,
        spam=spam,
        hooks=hooks,
        http=http,
        trace=trace,
        mta_sts=mta_sts,
        acme=acme,
        make_certificate="acme" in data and "tls" not in data,
        log_level=log_level,
        proxy_from=proxy_from,
        source=source,
    )


def _acme(r: _Reader, data: Mapping[str, Any], hostname: str) -> AcmeConfig:
    raw = r.table(data, "acme")
    r.check_keys(raw, "acme", ("directory", "email", "names", "ca_file"))
    directory = r.string(raw, "acme", "directory")
    if not re.fullmatch(r"https://[^\s/]+(/\S*)?", directory):
        raise r.fail("acme", "directory", 'expected the CA\'s https:// directory URL, e.g. '
                                          '"https://acme-v02.api.letsencrypt.org/directory"')
    email = r.string(raw, "acme", "email", "")
    if email and not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", email):
        raise r.fail("acme", "email", f"not an email address: {email!r}")
    names_raw = raw.get("names", [hostname])
    if not isinstance(names_raw, list) or not names_raw or len(names_raw) > 100:
        raise r.fail("acme", "names", "must be a list of 1 to 100 DNS names")
    names = tuple(dict.fromkeys(_canonical_domain(r, "[acme] names", n) for n in names_raw))
    ca_file = None
    if "ca_file" in raw:
        ca_file = r.path(r.string(raw, "acme", "ca_file"))
        if not ca_file.exists():
            raise r.fail("acme", "ca_file", f"file not found: {ca_file}")
    return AcmeConfig(directory, names, email, ca_file)


def _on_error(r: _Reader, section: str, data: Mapping[str, Any]) -> str:
    value = r.string(data, section, "on_error", "tempfail")
    if value not in ("tempfail", "accept"):
        raise r.fail(section, "on_error", 'must be "tempfail" or "accept"')
    return value


def _milter(r: _Reader, data: Mapping[str, Any]) -> MilterConfig:
    r.check_keys(data, "milter", ("address", "listeners", "on_error", "timeout"))
    address = r.string(data, "milter", "address")
    if address.startswith("unix:"):
        if len(address) == 5:
            raise r.fail("milter", "address", 'expected "unix:/path/to/socket"')
        address = f"unix:{r.path(address[5:])}"
    else:
        hp = r.host_port("milter", "address", address)
        address = f"[{hp.host}]:{hp.port}" if ":" in hp.host else f"{hp.host}:{hp.port}"
    listeners = data.get("listeners", ["smtp", "submission"])
    if not isinstance(listeners, list) or not listeners or not all(v in ("smtp", "submission") for v in listeners):
        raise r.fail("milter", "listeners", 'expected a list of "smtp" and "submission"')
    return MilterConfig(address, tuple(dict.fromkeys(listeners)), _on_error(r, "milter", data),
                        r.duration(data, "milter", "timeout", 30.0))  # fmt: skip


def _public_ports(r: _Reader, data: Mapping[str, Any],
                  listen: Mapping[str, tuple[ListenAddress, ...]]) -> dict[str, int]:  # fmt: skip
    ports = data.get("public_ports", {})
    if not isinstance(ports, dict):
        raise r.fail("http", "public_ports", "expected a table like {imaps = 993, submissions = 465}")
    result = {}
    for service, port in ports.items():
        if service not in CLIENT_SERVICES:
            raise r.fail("http", f"public_ports.{service}", f"not one of {', '.join(CLIENT_SERVICES)}")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise r.fail("http", f"public_ports.{service}", "must be a port number (0: not told to clients)")
        if port and service not in listen:
            raise r.fail("http", f"public_ports.{service}", f"no [listen] {service}: clients would be sent nowhere")
        result[service] = port
    return result


def _mta_sts(r: _Reader, data: Mapping[str, Any]) -> MtaStsConfig:
    r.check_keys(data, "mta_sts", ("mode", "max_age", "mx", "tls_rpt"))
    default = MtaStsConfig()
    mode = r.string(data, "mta_sts", "mode", default.mode)
    if mode not in ("testing", "enforce", "none"):
        raise r.fail("mta_sts", "mode", 'must be "testing", "enforce" or "none"')
    max_age = r.duration(data, "mta_sts", "max_age", default.max_age_s)
    if not max_age.is_integer() or max_age > MTA_STS_MAX_AGE_S:
        raise r.fail("mta_sts", "max_age", f"whole seconds, at most {MTA_STS_MAX_AGE_S} (a year, RFC 8461 §3.2)")
    mx_raw = data.get("mx", [])
    if not isinstance(mx_raw, list):
        raise r.fail("mta_sts", "mx", 'expected a list of host names like ["mx2.example.org", "*.example.net"]')
    mx = []
    for name in mx_raw:
        wildcard = isinstance(name, str) and name.startswith("*.")  # RFC 8461 §3.2: only the leftmost label
        mx.append(("*." if wildcard else "") + _canonical_domain(r, "[mta_sts] mx", name[2:] if wildcard else name))
    tls_rpt = r.string(data, "mta_sts", "tls_rpt", "")
    # RFC 8460 §3: a mailto: or https: URI; it is written into a TXT record, so no quotes, ';' or spaces
    if tls_rpt and not re.fullmatch(r'mailto:[^\s;,"\\@]+@[^\s;,"\\@]+|https://[^\s;,"\\]+', tls_rpt):
        raise r.fail("mta_sts", "tls_rpt", 'expected "mailto:ADDRESS" or an "https://" URL')
    return MtaStsConfig(mode, int(max_age), tuple(dict.fromkeys(mx)), tls_rpt)


def embedded_default(cwd: Path) -> Config:
    """`kartero serve` with no config: domain localhost, data in ./kartero-data, loopback ports."""
    data_dir = (cwd / EMBEDDED_DATA_DIR).resolve()
    return Config(
        hostname="localhost",
        domains=("localhost",),
        data_dir=data_dir,
        listen={kind: (ListenAddress("127.0.0.1", port),) for kind, port in EMBEDDED_PORTS.items()},
        tls=TLSConfig(data_dir / "tls" / "cert.pem", data_dir / "tls" / "key.pem"),
        make_certificate=True,
    )


def load(path: str | os.PathLike[str] | None = None, *, env: Mapping[str, str] | None = None) -> Config:
    """Read the config: `path`, else $KARTERO_CONFIG, else ./kartero.toml, else the embedded default.

    An explicitly named file that does not exist is an error; only the implicit ./kartero.toml may be
    absent.
    """
    env = os.environ if env is None else env
    explicit = path if path is not None else env.get("KARTERO_CONFIG") or None
    cwd = Path.cwd()
    if explicit is None:
        candidate = cwd / DEFAULT_CONFIG_NAME
        if not candidate.exists():
            return embedded_default(cwd)
        file = candidate
    else:
        file = Path(explicit).expanduser()
    name = str(file)
    try:
        text = file.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{name}: file not found") from None
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read: {exc.strerror}") from None
    try:
        data = tomllib.loads(text.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{name}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{name}: invalid TOML: {exc}") from None
    return parse(data, name=name, base=file.resolve().parent, source=file.resolve())
