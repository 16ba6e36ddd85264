"""The client settings every autoconfiguration format describes: one host name, and per service the
port clients reach it on and how TLS starts there."""

from __future__ import annotations

from dataclasses import dataclass

from kartero.config import CLIENT_SERVICES, Config

# service -> (protocol, implicit TLS); CLIENT_SERVICES' order is the preference: implicit TLS first
# (RFC 8314 §3), IMAP before POP3.
_KINDS = {
    "imaps": ("imap", True),
    "imap": ("imap", False),
    "pop3s": ("pop3", True),
    "pop3": ("pop3", False),
    "submissions": ("smtp", True),
    "submission": ("smtp", False),
}


@dataclass(frozen=True, slots=True)
class Endpoint:
    service: str  # one of CLIENT_SERVICES
    protocol: str  # imap, pop3, smtp
    port: int
    is_implicit_tls: bool  # else STARTTLS


@dataclass(frozen=True, slots=True)
class ClientSettings:
    hostname: str
    endpoints: tuple[Endpoint, ...]  # preferred first

    @property
    def incoming(self) -> tuple[Endpoint, ...]:
        return tuple(e for e in self.endpoints if e.protocol != "smtp")

    @property
    def outgoing(self) -> tuple[Endpoint, ...]:
        return tuple(e for e in self.endpoints if e.protocol == "smtp")

    def port(self, service: str) -> int:
        """The port clients are told for `service`; 0 when it is not offered."""
        return next((e.port for e in self.endpoints if e.service == service), 0)


def client_settings(config: Config) -> ClientSettings:
    """The services of `[listen]` a client may use, on their public ports. Without a `[tls]`
    certificate the STARTTLS services are left out: no client is told to send a password in clear."""
    endpoints = []
    for service in CLIENT_SERVICES:
        protocol, is_implicit = _KINDS[service]
        bound = config.listen.get(service, ())
        if not bound or (config.tls is None and not is_implicit):
            continue
        port = config.http.public_ports.get(service, bound[0].port)
        if port:
            endpoints.append(Endpoint(service, protocol, port, is_implicit))
    return ClientSettings(config.hostname, tuple(endpoints))
