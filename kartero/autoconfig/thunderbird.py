"""Thunderbird's autoconfig file, `config-v1.1.xml` (the format of Mozilla's ISP database,
https://wiki.mozilla.org/Thunderbird:Autoconfiguration:ConfigFileFormat)."""

from __future__ import annotations

from xml.etree import ElementTree as ET

from kartero.autoconfig.settings import ClientSettings, Endpoint


def config_v11(domain: str, settings: ClientSettings) -> bytes:
    """The file for accounts of `domain` (a canonical local domain), each server in order of
    preference: Thunderbird tries them in document order."""
    root = ET.Element("clientConfig", version="1.1")
    provider = ET.SubElement(root, "emailProvider", id=domain)
    ET.SubElement(provider, "domain").text = domain
    ET.SubElement(provider, "displayName").text = f"{domain} mail"
    ET.SubElement(provider, "displayShortName").text = domain
    for endpoint in settings.incoming:
        _server(ET.SubElement(provider, "incomingServer", type=endpoint.protocol), settings.hostname, endpoint)
    for endpoint in settings.outgoing:
        _server(ET.SubElement(provider, "outgoingServer", type="smtp"), settings.hostname, endpoint)
    ET.indent(root)
    document: bytes = ET.tostring(root, encoding="UTF-8", xml_declaration=True)
    return document + b"\n"


def _server(element: ET.Element, hostname: str, endpoint: Endpoint) -> None:
    ET.SubElement(element, "hostname").text = hostname
    ET.SubElement(element, "port").text = str(endpoint.port)
    ET.SubElement(element, "socketType").text = "SSL" if endpoint.is_implicit_tls else "STARTTLS"
    # PLAIN or LOGIN inside TLS; Kartero's logins are the full address.
    ET.SubElement(element, "authentication").text = "password-cleartext"
    ET.SubElement(element, "username").text = "%EMAILADDRESS%"
