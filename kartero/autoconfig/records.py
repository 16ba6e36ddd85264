"""The DNS records the autoconfiguration and MTA-STS need, as `kartero dns` and the admin's DNS check
look for them (kartero/mailauth/dnscheck.py checks them against the live DNS)."""

from __future__ import annotations

from kartero.autoconfig.mtasts import policy_id, policy_text
from kartero.autoconfig.settings import client_settings
from kartero.config import CLIENT_SERVICES, Config
from kartero.mailauth.dnscheck import ClientRecords, Srv

# RFC 6186 §3.4: the priority of each service's SRV record is the client's preference among them too;
# implicit TLS first (RFC 8314 §5.1), IMAP before POP3.
_PRIORITY = {"imaps": 0, "imap": 5, "pop3s": 10, "pop3": 15, "submissions": 0, "submission": 5}


def client_records(config: Config, domain: str) -> ClientRecords:
    """What `domain` should publish for the services of `config`: the MTA-STS id of its policy, the
    TLS-RPT address, and one SRV record per RFC 6186 service (port 0: "not offered", §3.4)."""
    settings = client_settings(config)
    srv = tuple(Srv(service, _PRIORITY[service], settings.port(service)) for service in CLIENT_SERVICES)
    rua = config.mta_sts.tls_rpt or f"mailto:postmaster@{domain}"
    return ClientRecords(policy_id(policy_text(config.hostname, config.mta_sts)), rua, srv)
