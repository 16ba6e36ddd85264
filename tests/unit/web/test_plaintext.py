"""Plain http off loopback serves only the public paths (issue 15: ACME http-01 and autoconfig put the
http listener on port 80 of a public address, where a sign-in form would send passwords in clear).
Tests run on loopback only, so the peer test is on the decision function; the integration tests show
loopback plaintext still serving everything."""

from __future__ import annotations

import pytest

from kartero.web.app import https_url, plaintext_allowed


@pytest.mark.parametrize("path", ["/", "/admin/", "/admin/login", "/login", "/api/v1/accounts", "/metrics",
                                  "/mail.mobileconfig", "/static/app.css"])  # fmt: skip
def test_issue_15_credentials_and_pages_need_tls_off_loopback(path: str) -> None:
    assert not plaintext_allowed(False, "203.0.113.7", path)
    assert not plaintext_allowed(False, "2001:db8::7", path)
    assert not plaintext_allowed(False, None, path)  # no peer known: not trusted
    assert not plaintext_allowed(False, "not an address", path)
    assert plaintext_allowed(True, "203.0.113.7", path)
    assert plaintext_allowed(False, "127.0.0.1", path)
    assert plaintext_allowed(False, "127.9.8.7", path)
    assert plaintext_allowed(False, "::1", path)


@pytest.mark.parametrize("path", ["/.well-known/acme-challenge/abc", "/.well-known/mta-sts.txt",
                                  "/.well-known/autoconfig/mail/config-v1.1.xml", "/mail/config-v1.1.xml",
                                  "/autodiscover/autodiscover.xml", "/Autodiscover/Autodiscover.xml"])  # fmt: skip
def test_issue_15_public_paths_are_served_over_plain_http_to_anyone(path: str) -> None:
    assert plaintext_allowed(False, "203.0.113.7", path)


@pytest.mark.parametrize(("host", "port", "url"), [
    ("mail.example.org", 443, "https://mail.example.org/admin/?q=1"),
    ("mail.example.org:80", 443, "https://mail.example.org/admin/?q=1"),
    ("mail.example.org:8080", 8443, "https://mail.example.org:8443/admin/?q=1"),
    ("[2001:db8::1]:80", 443, "https://[2001:db8::1]/admin/?q=1"),
    ("[2001:db8::1]", 8443, "https://[2001:db8::1]:8443/admin/?q=1"),
])  # fmt: skip
def test_issue_15_plain_http_pages_redirect_to_the_https_listener(host: str, port: int, url: str) -> None:
    assert https_url(host, port, "/admin/?q=1") == url
