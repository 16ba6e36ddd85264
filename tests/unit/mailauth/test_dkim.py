"""DKIM keys and signatures, checked with dkimpy's verifier against the published record."""

from __future__ import annotations

import os
import time
from pathlib import Path

import dkim
import pytest

from kartero.mailauth.dkim import DKIMError, DKIMKey, Signer, generate, load_keys, signed_header_names

MESSAGE = (
    b"From: Alice <alice@a.test>\r\nTo: bob@b.test\r\nSubject: hello\r\nDate: Thu, 26 Nov 2026 12:00:00 +0000\r\n"
    b"Message-ID: <1@a.test>\r\nX-Mailer: whatever\r\n\r\nHello Bob.\r\n"
)


def dns_for(*keys: DKIMKey) -> object:
    records = {f"{k.record_name}.".encode(): k.dns_record().encode() for k in keys}
    return lambda name, timeout=5: records.get(name)


def verify_all(message: bytes, dnsfunc: object) -> list[bool]:
    d = dkim.DKIM(message)
    count = sum(1 for name, _ in d.headers if name.lower() == b"dkim-signature")
    results = []
    for i in range(count):
        try:
            results.append(bool(d.verify(idx=i, dnsfunc=dnsfunc)))
        except dkim.ValidationError:  # e.g. "body hash mismatch"
            results.append(False)
    return results


def test_keygen_files_and_records(tmp_path: Path) -> None:
    rsa = generate(tmp_path, "a.test", "Sel-1", "rsa")
    assert rsa.selector == "sel-1" and rsa.path == tmp_path / "dkim" / "a.test" / "sel-1.rsa.key"
    assert os.stat(rsa.path).st_mode & 0o777 == 0o600
    assert rsa.record_name == "sel-1._domainkey.a.test"
    assert rsa.dns_record().startswith("v=DKIM1; k=rsa; p=MIIBIjAN")  # a 2048-bit SubjectPublicKeyInfo
    ed = generate(tmp_path, "a.test", "sel-2", "ed25519")
    assert (
        ed.dns_record().startswith("v=DKIM1; k=ed25519; p=")
        and len(ed.dns_record()) == len("v=DKIM1; k=ed25519; p=") + 44
    )
    with pytest.raises(DKIMError, match="exists; use --force"):
        generate(tmp_path, "a.test", "sel-1", "rsa")
    with pytest.raises(DKIMError, match="already has a key"):
        generate(tmp_path, "a.test", "sel-1", "ed25519")
    with pytest.raises(DKIMError, match="not a valid selector"):
        generate(tmp_path, "a.test", "bad selector", "rsa")
    replaced = generate(tmp_path, "a.test", "sel-1", "rsa", force=True)
    assert replaced.dns_record() != rsa.dns_record()
    assert {(k.selector, k.algorithm) for k in load_keys(tmp_path)["a.test"]} == {
        ("sel-1", "rsa"),
        ("sel-2", "ed25519"),
    }


def test_both_signatures_verify_and_oversigning_guards_from(tmp_path: Path) -> None:
    rsa = generate(tmp_path, "a.test", "r", "rsa")
    ed = generate(tmp_path, "a.test", "e", "ed25519")
    signed = Signer(tmp_path).sign("a.test", MESSAGE) + MESSAGE
    assert signed.count(b"DKIM-Signature: v=1; a=") == 2
    assert b"a=rsa-sha256; c=relaxed/relaxed; d=a.test;" in signed and b"a=ed25519-sha256" in signed
    assert verify_all(signed, dns_for(rsa, ed)) == [True, True]
    # Relaxed canonicalisation survives what relays do to whitespace and folding.
    refolded = signed.replace(b"Subject: hello", b"Subject:   hello").replace(
        b"Hello Bob.\r\n", b"Hello   Bob. \r\n\r\n"
    )
    assert verify_all(refolded, dns_for(rsa, ed)) == [True, True]
    # A second From: (or Subject:) added later breaks both signatures: h= names one more than there was.
    header, _, body = signed.partition(b"\r\n\r\n")
    forged = header + b"\r\nFrom: Mallory <ceo@a.test>\r\n\r\n" + body
    assert verify_all(forged, dns_for(rsa, ed)) == [False, False]
    assert verify_all(signed.replace(b"Hello Bob.", b"Hello Eve."), dns_for(rsa, ed)) == [False, False]


def test_signed_header_list() -> None:
    names = signed_header_names(MESSAGE[: MESSAGE.index(b"\r\n\r\n") + 2])
    assert names.count(b"from") == 2 and names.count(b"subject") == 2 and names.count(b"to") == 2
    assert names.count(b"date") == 2 and names.count(b"message-id") == 1 and names.count(b"cc") == 1
    assert b"x-mailer" not in names


def test_signer_sees_a_new_key_without_restart(tmp_path: Path) -> None:
    signer = Signer(tmp_path)
    assert signer.sign("a.test", MESSAGE) == b""
    old = generate(tmp_path, "a.test", "old", "rsa")
    first = signer.sign("a.test", MESSAGE)
    assert b"s=old;" in first
    time.sleep(0.01)
    new = generate(tmp_path, "a.test", "new", "rsa")
    os.utime(new.path, (old.created + 10, old.created + 10))
    os.utime(new.path.parent, None)
    second = signer.sign("a.test", MESSAGE)
    assert b"s=new;" in second and b"s=old;" not in second  # the newest key of each algorithm signs
    assert signer.sign("other.test", MESSAGE) == b""
