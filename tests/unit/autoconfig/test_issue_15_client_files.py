"""Issue 15: what mail clients are told (Thunderbird's config-v1.1.xml, Outlook's autodiscover answer,
the Apple profile): the host name and exactly the services of [listen], on their public ports."""

from __future__ import annotations

import plistlib
from xml.etree import ElementTree as ET

import pytest

from kartero.autoconfig import autodiscover, mobileconfig
from kartero.autoconfig.settings import client_settings
from kartero.autoconfig.thunderbird import config_v11
from tests.unit.autoconfig.configs import make_config

# Bound on unprivileged ports behind port forwarding; POP3 is served but hidden from clients.
LISTEN = {"imaps": 9930, "imap": 1430, "pop3": 1100, "submissions": 4650, "submission": 5870, "smtp": 2525}
PUBLIC = {"imaps": 993, "submissions": 465, "submission": 587, "pop3": 0}
RESPONSE = "{http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a}"


def _servers(xml: bytes) -> list[tuple[str, str, str | None, str | None, str | None, str | None, str | None]]:
    provider = ET.fromstring(xml).find("emailProvider")
    assert provider is not None
    return [(server.tag, server.get("type", ""), server.findtext("hostname"), server.findtext("port"),
             server.findtext("socketType"), server.findtext("authentication"), server.findtext("username"))
            for server in provider if server.tag in ("incomingServer", "outgoingServer")]  # fmt: skip


def test_issue_15_thunderbird_names_the_listeners_on_their_public_ports() -> None:
    xml = config_v11("example.net", client_settings(make_config(LISTEN, PUBLIC)))
    root = ET.fromstring(xml)
    assert (root.tag, root.get("version")) == ("clientConfig", "1.1")
    provider = root.find("emailProvider")
    assert provider is not None and provider.get("id") == "example.net"
    assert provider.findtext("domain") == "example.net"
    host, auth, user = "mail.example.org", "password-cleartext", "%EMAILADDRESS%"
    assert _servers(xml) == [
        ("incomingServer", "imap", host, "993", "SSL", auth, user),  # implicit TLS first (RFC 8314)
        ("incomingServer", "imap", host, "1430", "STARTTLS", auth, user),  # no public port: the bound one
        ("outgoingServer", "smtp", host, "465", "SSL", auth, user),
        ("outgoingServer", "smtp", host, "587", "STARTTLS", auth, user),
    ]


def test_issue_15_without_tls_no_client_is_sent_to_a_plaintext_port() -> None:
    settings = client_settings(make_config({"imap": 143, "pop3": 110, "submission": 587}, tls=False))
    assert settings.endpoints == ()
    assert _servers(config_v11("example.org", settings)) == []
    with pytest.raises(ValueError):
        mobileconfig.profile("bob@example.org", settings)


def test_issue_15_pop3_when_it_is_all_there_is() -> None:
    settings = client_settings(make_config({"pop3s": 995, "pop3": 110, "submission": 587}))
    assert [(e.service, e.port) for e in settings.endpoints] == [("pop3s", 995), ("pop3", 110), ("submission", 587)]
    assert [s[1:5] for s in _servers(config_v11("example.org", settings))] == [
        ("pop3", "mail.example.org", "995", "SSL"), ("pop3", "mail.example.org", "110", "STARTTLS"),
        ("smtp", "mail.example.org", "587", "STARTTLS"),
    ]  # fmt: skip
    payload = plistlib.loads(mobileconfig.profile("bob@example.org", settings))["PayloadContent"][0]
    assert (payload["EmailAccountType"], payload["IncomingMailServerPortNumber"]) == ("EmailTypePOP", 995)


def _protocols(xml: bytes) -> list[dict[str, str]]:
    root = ET.fromstring(xml)
    assert root.tag == "{http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006}Autodiscover"
    account = root.find(f"{RESPONSE}Response/{RESPONSE}Account")
    assert account is not None
    assert (account.findtext(f"{RESPONSE}AccountType"), account.findtext(f"{RESPONSE}Action")) == ("email", "settings")
    return [{child.tag.removeprefix(RESPONSE): child.text or "" for child in p}
            for p in account.findall(f"{RESPONSE}Protocol")]  # fmt: skip


def test_issue_15_autodiscover_answers_the_preferred_service_of_each_protocol() -> None:
    asked = autodiscover.Asked("Bob@example.net", "example.net")
    xml = autodiscover.response(asked, client_settings(make_config(LISTEN, PUBLIC)))
    common = {"Server": "mail.example.org", "LoginName": "Bob@example.net", "DomainRequired": "off", "SPA": "off",
              "SSL": "on", "AuthRequired": "on"}  # fmt: skip
    assert _protocols(xml) == [
        {"Type": "IMAP", "Port": "993", "Encryption": "SSL", **common},
        {"Type": "SMTP", "Port": "465", "Encryption": "SSL", "UsePOPAuth": "on", **common},
    ]
    starttls = client_settings(make_config({"imap": 143, "submission": 587, "pop3s": 995}))
    assert [(p["Type"], p["Port"], p["Encryption"]) for p in _protocols(autodiscover.response(asked, starttls))] == [
        ("IMAP", "143", "TLS"), ("POP3", "995", "SSL"), ("SMTP", "587", "TLS"),
    ]  # fmt: skip


def test_issue_15_autodiscover_escapes_the_asked_address() -> None:
    asked = autodiscover.parse_request(
        b"<Autodiscover><Request><EMailAddress>\"a&amp;&lt;b\"@example.org</EMailAddress></Request></Autodiscover>"
    )
    xml = autodiscover.response(asked, client_settings(make_config(LISTEN)))
    assert _protocols(xml)[0]["LoginName"] == '"a&<b"@example.org'
    assert b"&amp;&lt;b" in xml


def test_issue_15_mobileconfig_is_a_profile_without_password_stable_per_account() -> None:
    settings = client_settings(make_config(LISTEN, PUBLIC))
    body = mobileconfig.profile("bob@example.org", settings)
    document = plistlib.loads(body)
    assert (document["PayloadType"], document["PayloadVersion"]) == ("Configuration", 1)
    [mail] = document["PayloadContent"]
    assert {key: value for key, value in mail.items() if not key.startswith("Payload")} == {
        "EmailAccountDescription": "bob@example.org",
        "EmailAccountType": "EmailTypeIMAP",
        "EmailAddress": "bob@example.org",
        "IncomingMailServerHostName": "mail.example.org",
        "IncomingMailServerPortNumber": 993,
        "IncomingMailServerUseSSL": True,
        "IncomingMailServerAuthentication": "EmailAuthPassword",
        "IncomingMailServerUsername": "bob@example.org",
        "OutgoingMailServerHostName": "mail.example.org",
        "OutgoingMailServerPortNumber": 465,
        "OutgoingMailServerUseSSL": True,
        "OutgoingMailServerAuthentication": "EmailAuthPassword",
        "OutgoingMailServerUsername": "bob@example.org",
        "OutgoingPasswordSameAsIncomingPassword": True,
    }
    assert mail["PayloadType"] == "com.apple.mail.managed"
    assert "IncomingPassword" not in mail and "OutgoingPassword" not in mail  # the device asks for it
    uuids = {document["PayloadUUID"], mail["PayloadUUID"]}
    assert len(uuids) == 2 and document["PayloadIdentifier"] != mail["PayloadIdentifier"]
    # The same account gets the same ids (installing again replaces it); another account others.
    assert mobileconfig.profile("bob@example.org", settings) == body
    other = plistlib.loads(mobileconfig.profile("alice@example.org", settings))
    assert not uuids & {other["PayloadUUID"], other["PayloadContent"][0]["PayloadUUID"]}
