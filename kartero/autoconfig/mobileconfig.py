"""An Apple configuration profile (`.mobileconfig`) with one mail account, for iOS, iPadOS and macOS
(Apple's "Configuration Profile Reference", payload `com.apple.mail.managed`).

The profile carries no password: the device asks for it when the profile is installed. Its UUIDs and
identifiers are derived from the host name and the address, so downloading it again and installing
it replaces the account instead of adding a second one. It is not signed: the device shows it as
"unverified" before installing.
"""

from __future__ import annotations

import plistlib
import uuid

from kartero.autoconfig.settings import ClientSettings

_NAMESPACE = uuid.UUID("9a3c1f2e-6c1b-4b8e-9f0d-6b6a4f1e2d37")  # Kartero's; fixed so UUIDs stay stable


def profile(address: str, settings: ClientSettings) -> bytes:
    """The profile for `address` (an account of this server): the preferred incoming service (IMAP
    before POP3, implicit TLS first) and the preferred submission service. Raises ValueError when the
    server offers no incoming or no outgoing service."""
    if not settings.incoming or not settings.outgoing:
        raise ValueError("no incoming or no outgoing service to describe")
    incoming, outgoing = settings.incoming[0], settings.outgoing[0]
    host = settings.hostname
    base = ".".join(reversed(host.split(".")))  # reverse-DNS identifiers, as Apple's own profiles use
    account_uuid = uuid.uuid5(_NAMESPACE, f"{host}\0{address}\0mail")
    profile_uuid = uuid.uuid5(_NAMESPACE, f"{host}\0{address}\0profile")
    mail = {
        "PayloadType": "com.apple.mail.managed",
        "PayloadVersion": 1,
        "PayloadIdentifier": f"{base}.kartero.mail.{account_uuid}",
        "PayloadUUID": str(account_uuid).upper(),
        "PayloadDisplayName": f"Mail ({address})",
        "EmailAccountDescription": address,
        "EmailAccountType": "EmailTypeIMAP" if incoming.protocol == "imap" else "EmailTypePOP",
        "EmailAddress": address,
        "IncomingMailServerHostName": host,
        "IncomingMailServerPortNumber": incoming.port,
        # Apple's UseSSL: TLS on that port, or STARTTLS where the port speaks plain text first
        "IncomingMailServerUseSSL": True,
        "IncomingMailServerAuthentication": "EmailAuthPassword",
        "IncomingMailServerUsername": address,
        "OutgoingMailServerHostName": host,
        "OutgoingMailServerPortNumber": outgoing.port,
        "OutgoingMailServerUseSSL": True,
        "OutgoingMailServerAuthentication": "EmailAuthPassword",
        "OutgoingMailServerUsername": address,
        "OutgoingPasswordSameAsIncomingPassword": True,
    }
    document = {
        "PayloadType": "Configuration",
        "PayloadVersion": 1,
        "PayloadIdentifier": f"{base}.kartero.profile.{profile_uuid}",
        "PayloadUUID": str(profile_uuid).upper(),
        "PayloadDisplayName": f"{address} on {host}",
        "PayloadDescription": f"The mail account {address} ({incoming.protocol.upper()} and SMTP at {host}).",
        "PayloadRemovalDisallowed": False,
        "PayloadContent": [mail],
    }
    return plistlib.dumps(document, fmt=plistlib.FMT_XML, sort_keys=True)
