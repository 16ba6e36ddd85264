"""SPF, DKIM and DMARC on the MX listener of a real `kartero serve`, senders on loopback addresses
127.0.0.10 (allowed by the senders' SPF records) and 127.0.0.11 (not), a loopback DNS server with the
zones. What is asserted: the exact Authentication-Results field, the reply, and the folder the message
lands in (INBOX or Junk)."""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from pathlib import Path

import pytest

from kartero.mailauth.dkim import DKIMKey, generate, sign
from tests.integration.dnsserver import LoopbackDNS
from tests.integration.harness import KarteroServer, wait_for

GOOD_IP, BAD_IP = "127.0.0.10", "127.0.0.11"

ZONE = f"""
good.test. 60 IN TXT "v=spf1 ip4:{GOOD_IP} -all"
_dmarc.good.test. 60 IN TXT "v=DMARC1; p=reject; rua=mailto:dmarc@good.test"
quar.test. 60 IN TXT "v=spf1 ip4:{GOOD_IP} -all"
_dmarc.quar.test. 60 IN TXT "v=DMARC1; p=quarantine"
nopol.test. 60 IN TXT "v=spf1 ip4:{GOOD_IP} -all"
_dmarc.nopol.test. 60 IN TXT "v=DMARC1; p=none"
other.test. 60 IN TXT "v=spf1 ip4:{GOOD_IP} -all"
evil.test. 60 IN TXT "v=spf1 ip4:{BAD_IP} -all"
sampled.test. 60 IN TXT "v=spf1 -all"
_dmarc.sampled.test. 60 IN TXT "v=DMARC1; p=reject; pct=0"
sp.test. 60 IN TXT "v=spf1 -all"
_dmarc.sp.test. 60 IN TXT "v=DMARC1; p=none; sp=reject"
sub.sp.test. 60 IN TXT "v=spf1 -all"
"""


@pytest.fixture(scope="module")
def mx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[KarteroServer, LoopbackDNS, Path]]:
    root = tmp_path_factory.mktemp("inbound-auth")
    with LoopbackDNS(ZONE) as dns:
        dns.zones.servfail.add("_dmarc.tempfail.test")
        server = KarteroServer(root / "mx", domains=("rcpt.test",), hostname="mx.rcpt.test", checks=True,
                               extra_config=dns.config)  # fmt: skip
        server.add_user("bob@rcpt.test")
        server.start()
        try:
            yield server, dns, root
        finally:
            assert server.stop() == 0, server.log


def message(from_header: str, subject: str, extra: bytes = b"") -> bytes:
    return (
        f"From: {from_header}\r\nTo: bob@rcpt.test\r\nSubject: {subject}\r\n".encode()
        + extra
        + b"Date: Thu, 26 Nov 2026 12:00:00 +0000\r\n\r\nHello.\r\n"
    )


def send(server: KarteroServer, source: str, mail_from: str, data: bytes) -> tuple[int, bytes]:
    """MAIL/RCPT/DATA from `source`; the reply to DATA."""
    with smtplib.SMTP(server.host, server.port, local_hostname="sender.example", source_address=(source, 0)) as c:
        c.ehlo()
        c.mail(mail_from)
        assert c.rcpt("bob@rcpt.test")[0] == 250
        code, reply = c.data(data)
        return code, reply


def latest(server: KarteroServer, mailbox: str = "INBOX") -> bytes:
    return server.messages("bob@rcpt.test", mailbox)[-1]


def auth_results(stored: bytes) -> str:
    """Our Authentication-Results field, unfolded lines joined with '|'."""
    start = stored.index(b"Authentication-Results: mx.rcpt.test;")
    end = stored.index(b"\r\n", start)
    while stored[end + 2 : end + 3] == b"\t":
        end = stored.index(b"\r\n", end + 2)
    return stored[start:end].decode().replace("\r\n\t", "|")


def publish_key(dns: LoopbackDNS, root: Path, domain: str, selector: str = "s1") -> DKIMKey:
    key = generate(root / f"keys-{domain}", domain, selector, "rsa")
    value = key.dns_record()
    dns.zones.add(
        f"{key.record_name}. 60 IN TXT " + " ".join(f'"{value[i : i + 200]}"' for i in range(0, len(value), 200))
    )
    return key


def test_aligned_spf_passes_into_inbox(mx: tuple[KarteroServer, LoopbackDNS, Path]) -> None:
    server, _, _ = mx
    assert send(server, GOOD_IP, "a@good.test", message("A <a@good.test>", "ok"))[0] == 250
    stored = latest(server)
    # Return-Path, our Received, then our Authentication-Results, then the message.
    assert stored.split(b"\r\n")[0] == b"Return-Path: <a@good.test>"
    assert auth_results(stored) == (
        "Authentication-Results: mx.rcpt.test;|dkim=none;|spf=pass smtp.mailfrom=a@good.test;"
        "|dmarc=pass (p=reject dis=none) header.from=good.test"
    )
    assert stored.index(b"Received: from sender.example") < stored.index(b"Authentication-Results:")


def test_reject_policy_refuses_spoofed_mail(mx: tuple[KarteroServer, LoopbackDNS, Path]) -> None:
    server, _, _ = mx
    before = len(server.messages("bob@rcpt.test"))
    # From an address SPF does not allow, and, separately, with an unaligned envelope sender.
    assert send(server, BAD_IP, "a@good.test", message("A <a@good.test>", "spoof")) == (
        550, b"5.7.1 Rejected by the DMARC policy of good.test: reject"
    )  # fmt: skip
    assert send(server, GOOD_IP, "bounce@other.test", message("A <a@good.test>", "unaligned"))[0] == 550
    assert len(server.messages("bob@rcpt.test")) == before
    wait_for(
        lambda: any("dmarc=fail" in line and "action=reject" in line for line in server.log_events("mailauth.checked"))
    )


def test_quarantine_goes_to_junk_and_none_is_labelled(mx: tuple[KarteroServer, LoopbackDNS, Path]) -> None:
    server, _, _ = mx
    junk_before = len(server.messages("bob@rcpt.test", "Junk"))
    assert send(server, BAD_IP, "a@quar.test", message("a@quar.test", "quarantined"))[0] == 250
    assert len(server.messages("bob@rcpt.test", "Junk")) == junk_before + 1
    assert "dmarc=fail (p=quarantine dis=quarantine) header.from=quar.test" in auth_results(latest(server, "Junk"))
    assert send(server, BAD_IP, "a@nopol.test", message("a@nopol.test", "p=none"))[0] == 250
    assert "|spf=fail smtp.mailfrom=a@nopol.test;|dmarc=fail (p=none dis=none) header.from=nopol.test" in auth_results(
        latest(server)
    )
    # pct=0: the reject policy applies to no message; the next milder one (quarantine) instead.
    assert send(server, GOOD_IP, "a@sampled.test", message("a@sampled.test", "sampled"))[0] == 250
    assert "(p=reject dis=quarantine)" in auth_results(latest(server, "Junk"))
    # A subdomain without its own record gets the organisational domain's sp=.
    assert send(server, GOOD_IP, "a@sub.sp.test", message("a@sub.sp.test", "subdomain"))[0] == 550
    # A DNS failure is not a verdict: temperror, delivered.
    assert send(server, GOOD_IP, "a@tempfail.test", message("a@tempfail.test", "tempfail"))[0] == 250
    assert "dmarc=temperror header.from=tempfail.test" in auth_results(latest(server))


def test_dkim_aligned_passes_and_third_party_signature_does_not(
    mx: tuple[KarteroServer, LoopbackDNS, Path],
) -> None:
    server, dns, root = mx
    good_key = publish_key(dns, root, "good.test")
    evil_key = publish_key(dns, root, "evil.test")
    # Signed by good.test and sent from a host its SPF does not list: DKIM carries DMARC.
    signed = message("a@good.test", "signed")
    signed = sign(signed, [good_key]) + signed
    assert send(server, BAD_IP, "a@good.test", signed)[0] == 250
    results = auth_results(latest(server))
    assert results.startswith(
        "Authentication-Results: mx.rcpt.test;|dkim=pass header.d=good.test header.s=s1 header.b="
    )
    assert "|spf=fail smtp.mailfrom=a@good.test;|dmarc=pass (p=reject dis=none) header.from=good.test" in results
    # A valid signature of the sender's own domain (evil.test), SPF passing for evil.test, and a forged
    # From: ceo@good.test: nothing aligns with good.test, so its reject policy applies.
    forged = message("CEO <ceo@good.test>", "wire the money")
    forged = sign(forged, [evil_key]) + forged
    assert send(server, BAD_IP, "x@evil.test", forged)[0] == 550
    wait_for(
        lambda: any(
            "dkim=pass:evil.test" in line and "dmarc=fail" in line for line in server.log_events("mailauth.checked")
        )
    )
    # A body changed in transit fails its signature.
    tampered = signed.replace(b"Hello.", b"Hello!")
    assert send(server, BAD_IP, "a@good.test", tampered)[0] == 550


def test_forged_authentication_results_are_removed(mx: tuple[KarteroServer, LoopbackDNS, Path]) -> None:
    server, _, _ = mx
    extra = (
        b"Authentication-Results: MX.RCPT.TEST; dkim=pass header.d=good.test;\r\n\tdmarc=pass\r\n"
        b"Authentication-Results: relay.elsewhere.example; spf=pass smtp.mailfrom=x@y\r\n"
    )
    assert send(server, GOOD_IP, "a@nopol.test", message("a@nopol.test", "forged ar", extra))[0] == 250
    stored = latest(server)
    assert stored.count(b"Authentication-Results: mx.rcpt.test;") == 1
    assert b"MX.RCPT.TEST" not in stored and b"\tdmarc=pass\r\n" not in stored
    assert b"Authentication-Results: relay.elsewhere.example; spf=pass smtp.mailfrom=x@y\r\n" in stored


def test_issue_8_large_spooled_message_is_checked_and_labelled_like_a_small_one(
    mx: tuple[KarteroServer, LoopbackDNS, Path],
) -> None:
    """A message past the 1 MiB spool threshold goes through the checks from its spool file: its DKIM
    signature is verified over the whole body, forged fields are removed from its header, and the
    body is stored byte for byte."""
    server, dns, root = mx
    key = publish_key(dns, root / "big", "good.test", "big")  # a key of its own: the module shares the zone
    forged_ar = b"Authentication-Results: mx.rcpt.test; dmarc=pass\r\n"
    body = b"".join(b"line %07d of a large signed message\r\n" % i for i in range(80_000))  # ~3 MB
    big = message("a@good.test", "big", forged_ar).replace(b"Hello.\r\n", body)
    signed = sign(big, [key]) + big
    assert send(server, BAD_IP, "a@good.test", signed)[0] == 250
    stored = latest(server)
    assert auth_results(stored).startswith("Authentication-Results: mx.rcpt.test;|dkim=pass header.d=good.test")
    assert "dmarc=pass (p=reject dis=none) header.from=good.test" in auth_results(stored)
    assert stored.count(b"Authentication-Results:") == 1 and stored.endswith(body)
    tampered = signed.replace(b"line 0040000", b"line 0040001")
    assert send(server, BAD_IP, "a@good.test", tampered)[0] == 550


def test_issue_8_header_too_large_to_clean_is_refused(mx: tuple[KarteroServer, LoopbackDNS, Path]) -> None:
    """A header that does not end within its first 2 MiB cannot be read and cleaned of forged fields, so
    the message is refused (found in review: a forged Authentication-Results survived in one)."""
    server, _, _ = mx
    forged = b"Authentication-Results: mx.rcpt.test; dmarc=pass\r\n"
    padding = b"".join(b"X-Pad-%06d: %s\r\n" % (i, b"p" * 60) for i in range(32_000))  # ~2.4 MB of fields
    big = message("a@nopol.test", "huge header", padding + forged)
    with smtplib.SMTP(server.host, server.port, local_hostname="sender.example", source_address=(GOOD_IP, 0)) as c:
        c.ehlo()
        c.mail("a@nopol.test")
        assert c.rcpt("bob@rcpt.test")[0] == 250
        assert c.data(big) == (552, b"5.3.4 Message header too large")
