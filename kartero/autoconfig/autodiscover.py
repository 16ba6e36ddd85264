"""Outlook's POX autodiscover (MS-OXDSCLI, MS-OXDISCO): the request names an address, the answer
gives the IMAP/POP3 and SMTP settings for it.

The request is a client's XML, so it is read under limits (issue 8's rules): at most
`MAX_REQUEST_BYTES`, `MAX_DEPTH` elements deep, no DTD at all (a DOCTYPE ends the parse before any
entity is declared, whatever the document's encoding: no entity expansion, no external entities), the
address at most `MAX_ADDRESS` characters. expat reads the document in one linear pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from xml.etree import ElementTree as ET
from xml.parsers import expat

from kartero.autoconfig.settings import ClientSettings, Endpoint
from kartero.dns.names import DomainError, canonical_domain
from kartero.mail.address import AddressError, parse_mailbox

MAX_REQUEST_BYTES = 16 * 1024  # a real request is ~400 bytes
MAX_DEPTH = 8  # the address is at depth 3
MAX_ADDRESS = 320  # RFC 5321 §4.5.3.1: local part 64 + "@" + domain 255

RESPONSE_NS = "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"
OUTLOOK_NS = "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"
_ADDRESS_PATH = ["Autodiscover", "Request", "EMailAddress"]


class RequestError(ValueError):
    """The request is not one we answer (too big, a DTD, too deep, no usable address); the text is
    for the log."""


@dataclass(frozen=True, slots=True)
class Asked:
    address: str  # as asked, with the domain in canonical form
    domain: str  # canonical


class _Reader:
    def __init__(self) -> None:
        self.path: list[str] = []
        self.address: list[str] = []
        self.size = 0
        self.found = False

    def start(self, name: str, _attributes: object) -> None:
        self.path.append(name.rpartition(" ")[2])  # "namespace local" -> local: any namespace is taken
        if len(self.path) > MAX_DEPTH:
            raise RequestError(f"elements nested deeper than {MAX_DEPTH}")
        if self.path == _ADDRESS_PATH:
            if self.found:
                raise RequestError("more than one EMailAddress")
            self.found = True

    def end(self, _name: str) -> None:
        self.path.pop()

    def text(self, data: str) -> None:
        if self.path == _ADDRESS_PATH:
            self.size += len(data)
            if self.size > MAX_ADDRESS:
                raise RequestError(f"EMailAddress longer than {MAX_ADDRESS} characters")
            self.address.append(data)


def _refuse_dtd(*_: object) -> None:
    raise RequestError("a DTD (DOCTYPE or entity declaration)")


def _refuse_external(_context: str, _base: str | None, _system_id: str | None, _public_id: str | None) -> int:
    raise RequestError("an external entity")


def parse_request(body: bytes) -> Asked:
    """The address a POX request asks about; raises RequestError."""
    if len(body) > MAX_REQUEST_BYTES:
        raise RequestError(f"request larger than {MAX_REQUEST_BYTES} bytes")
    reader = _Reader()
    parser = expat.ParserCreate(namespace_separator=" ")
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartDoctypeDeclHandler = _refuse_dtd
    parser.EntityDeclHandler = _refuse_dtd
    parser.ExternalEntityRefHandler = _refuse_external
    parser.StartElementHandler = reader.start
    parser.EndElementHandler = reader.end
    parser.CharacterDataHandler = reader.text
    try:
        parser.Parse(body, True)
    except expat.ExpatError as exc:
        raise RequestError(f"not well-formed XML: {expat.ErrorString(exc.code)}") from None
    text = "".join(reader.address).strip()
    if not text:
        raise RequestError("no Autodiscover/Request/EMailAddress")
    try:
        mailbox = parse_mailbox(text)
        domain = canonical_domain(mailbox.domain)
    except (AddressError, DomainError):
        raise RequestError("EMailAddress is not an address") from None
    return Asked(f"{mailbox.quoted_local_part()}@{domain}", domain)


def response(asked: Asked, settings: ClientSettings) -> bytes:
    """The POX answer: the preferred incoming service of each protocol (IMAP, then POP3) and the
    preferred submission service, each with the address as login name."""
    root = ET.Element("Autodiscover", xmlns=RESPONSE_NS)
    account = ET.SubElement(ET.SubElement(root, "Response", xmlns=OUTLOOK_NS), "Account")
    ET.SubElement(account, "AccountType").text = "email"
    ET.SubElement(account, "Action").text = "settings"
    chosen: dict[str, Endpoint] = {}
    for endpoint in settings.endpoints:
        chosen.setdefault(endpoint.protocol, endpoint)
    for protocol, endpoint in chosen.items():
        element = ET.SubElement(account, "Protocol")
        for name, value in (
            ("Type", protocol.upper()),
            ("Server", settings.hostname),
            ("Port", str(endpoint.port)),
            ("LoginName", asked.address),
            ("DomainRequired", "off"),
            ("SPA", "off"),
            ("SSL", "on"),
            # MS-OXDSCLI: Encryption overrides SSL; "SSL" is TLS from the first byte, "TLS" is STARTTLS
            ("Encryption", "SSL" if endpoint.is_implicit_tls else "TLS"),
            ("AuthRequired", "on"),
        ):
            ET.SubElement(element, name).text = value
        if protocol == "smtp":
            ET.SubElement(element, "UsePOPAuth").text = "on"  # the same login as the incoming server
    ET.indent(root)
    document: bytes = ET.tostring(root, encoding="UTF-8", xml_declaration=True)
    return document + b"\n"
