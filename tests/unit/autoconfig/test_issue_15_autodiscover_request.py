"""Issue 15: Outlook's autodiscover request is a client's XML, read under limits: bounded size and
depth, no DTD (so no entity expansion and no external entities, in any encoding), one address."""

from __future__ import annotations

from xml.sax.saxutils import escape

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kartero.autoconfig.autodiscover import MAX_DEPTH, MAX_REQUEST_BYTES, Asked, RequestError, parse_request

NS = "http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006"
SCHEMA = "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"


def request(address: str, prolog: str = "") -> bytes:
    return (f'<?xml version="1.0" encoding="utf-8"?>{prolog}\n<Autodiscover xmlns="{NS}"><Request>'
            f"<EMailAddress>{address}</EMailAddress><AcceptableResponseSchema>{SCHEMA}</AcceptableResponseSchema>"
            "</Request></Autodiscover>").encode()  # fmt: skip


def test_issue_15_autodiscover_request_gives_the_address() -> None:
    assert parse_request(request(" Bob@Example.NET ")) == Asked("Bob@example.net", "example.net")
    assert parse_request(request("x@b\u00fccher.example")) == Asked("x@xn--bcher-kva.example", "xn--bcher-kva.example")
    # Without the namespace, and with the address in pieces (a comment, an entity of XML's own)
    pieces = b"<Autodiscover><Request><EMailAddress>a<!-- -->b&#64;example.org</EMailAddress></Request></Autodiscover>"
    assert parse_request(pieces) == Asked("ab@example.org", "example.org")
    # UTF-16 is XML too
    assert parse_request(request("bob@example.org").decode().replace("utf-8", "utf-16").encode("utf-16")) == Asked(
        "bob@example.org", "example.org"
    )


LAUGHS = '<!DOCTYPE a [<!ENTITY l0 "ha">' + "".join(
    f'<!ENTITY l{i} "{("&l" + str(i - 1) + ";") * 10}">' for i in range(1, 10)
) + "]>"  # fmt: skip


UTF16_DTD = request("&x;@example.org", '<!DOCTYPE a [<!ENTITY x "y">]>').decode().replace("utf-8", "utf-16")
TWO_ADDRESSES = request("bob@example.org").replace(b"</Request>", b"<EMailAddress>x@y.z</EMailAddress></Request>")


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (request("&l9;@example.org", LAUGHS), "DTD"),  # a billion laughs
        (request("&x;@example.org", '<!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]>'), "DTD"),
        (request("bob@example.org", '<!DOCTYPE Autodiscover SYSTEM "http://192.0.2.1/evil.dtd">'), "DTD"),
        (request("bob@example.org", "<!DOCTYPE Autodiscover>"), "DTD"),
        (UTF16_DTD.encode("utf-16"), "DTD"),
        (request("bob@example.org").ljust(MAX_REQUEST_BYTES + 1), "larger than"),
        (b"<a>" * (MAX_DEPTH + 1), "deeper"),
        (request("a" * 400 + "@example.org"), "longer than"),
        (TWO_ADDRESSES, "more than one"),
        (request(""), "no Autodiscover/Request/EMailAddress"),
        (b"<Autodiscover><EMailAddress>bob@example.org</EMailAddress></Autodiscover>", "no Autodiscover"),
        (request("not an address"), "not an address"),
        (request("bob@[192.0.2.1]"), "not an address"),
        (request("bob@example.org").replace(b"</Request>", b""), "not well-formed"),
        (b"", "not well-formed"),
    ],
)
def test_issue_15_autodiscover_refuses(body: bytes, problem: str) -> None:
    with pytest.raises(RequestError, match=problem):
        parse_request(body)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600) | st.text(alphabet="<>/!&;#x[]ADOCTYPEaEMilR\"' =", max_size=300).map(str.encode))
def test_issue_15_autodiscover_any_bytes_give_an_address_or_a_refusal(body: bytes) -> None:
    try:
        asked = parse_request(body)
    except RequestError:
        return
    assert asked.address.endswith("@" + asked.domain)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80) | st.builds("{}@{}".format, st.text(max_size=20), st.text(max_size=40)))
def test_issue_15_autodiscover_any_address_text_gives_an_address_or_a_refusal(text: str) -> None:
    body = request(escape(text))
    try:
        asked = parse_request(body)
    except RequestError:
        return
    assert asked.address.endswith("@" + asked.domain) and asked.domain.isascii()
