"""The certificate expiry the web admin's dashboard shows (issue 14)."""

from __future__ import annotations

import time
from pathlib import Path

from kartero.tls import certificate_expiry, make_self_signed


def test_expiry_is_the_first_certificates_not_after(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    make_self_signed(cert, key, ["mx.example.test"], days=30)
    expiry = certificate_expiry(cert)
    assert expiry is not None and abs(expiry - (time.time() + 30 * 86400)) < 120


def test_no_expiry_for_a_missing_or_broken_file(tmp_path: Path) -> None:
    assert certificate_expiry(tmp_path / "none.pem") is None
    (tmp_path / "bad.pem").write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    assert certificate_expiry(tmp_path / "bad.pem") is None
    (tmp_path / "empty.pem").write_text("")
    assert certificate_expiry(tmp_path / "empty.pem") is None
