"""`kartero cert status` (kartero/acme/status.py): which certificate is in use, and its report."""

from __future__ import annotations

from pathlib import Path

from kartero.acme.status import Report, Source, format_report, read_report
from kartero.acme.storage import AcmeFiles, State
from kartero.config import AcmeConfig, Config, ListenAddress, TLSConfig
from kartero.tls import make_self_signed

T0 = 1_800_000_000.0  # 2027-01-15 08:00:00 UTC


def config(tmp_path: Path, *, acme: bool = True) -> Config:
    tls = TLSConfig(tmp_path / "tls" / "cert.pem", tmp_path / "tls" / "key.pem")
    make_self_signed(tls.cert, tls.key, ["mail.example.test"], days=825)
    return Config("mail.example.test", ("example.test",), tmp_path / "data",
                  {"http": (ListenAddress("127.0.0.1", 80),)}, tls,
                  acme=AcmeConfig("https://ca.example/dir", ("mail.example.test",)) if acme else None)  # fmt: skip


def test_issue_15_format_report_of_an_acme_certificate() -> None:
    report = Report(Source.ACME, Path("/srv/data/acme/cert.pem"), ("mail.example.test", "mx.example.test"),
                    "CN=Pebble Intermediate CA 4d5e1c", "1f2e", T0 - 60 * 86400, T0 + 30 * 86400 + 43200,
                    acme_directory="https://ca.example/dir", acme_names=("mail.example.test", "mx.example.test"),
                    acme_state=State(0, 0.0, "", T0 - 60 * 86400, "http-01"))  # fmt: skip
    assert format_report(report, T0) == (
        "source: acme\n"
        "file: /srv/data/acme/cert.pem\n"
        "names: mail.example.test, mx.example.test\n"
        "issuer: CN=Pebble Intermediate CA 4d5e1c\n"
        "serial: 1f2e\n"
        "not before: 2026-11-16 08:00:00 UTC\n"
        "not after: 2027-02-14 20:00:00 UTC\n"
        "days left: 30.5\n"
        "acme directory: https://ca.example/dir\n"
        "acme names: mail.example.test, mx.example.test\n"
        "acme challenge: http-01\n"
        "last renewal: 2026-11-16 08:00:00 UTC\n"
        "last renewal error: none\n"
    )


def test_issue_15_format_report_with_a_renewal_error_and_an_expired_certificate() -> None:
    report = Report(Source.SELF_SIGNED, Path("tls/cert.pem"), ("mail.example.test",), "CN=mail.example.test", "1",
                    T0 - 10 * 86400, T0 - 86400, acme_directory="https://ca.example/dir",
                    acme_names=("mail.example.test",),
                    acme_state=State(4, T0 - 3600, "validation failed: mail.example.test: connection refused", 0.0,
                                     "tls-alpn-01"))  # fmt: skip
    text = format_report(report, T0)
    assert "source: self-signed\n" in text
    assert "days left: -1.0 (EXPIRED)\n" in text
    assert "last renewal:" not in text
    assert text.endswith("last renewal error: 2027-01-15 07:00:00 UTC (4 in a row): "
                         "validation failed: mail.example.test: connection refused\n")  # fmt: skip


def test_issue_15_format_report_without_tls() -> None:
    assert format_report(Report(None), T0).startswith("source: none")


def test_issue_15_self_signed_until_the_acme_certificate_is_stored(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    report = read_report(cfg)
    assert report.source is Source.SELF_SIGNED and report.path == cfg.tls.cert  # type: ignore[union-attr]
    assert report.names == ("mail.example.test",)
    files = AcmeFiles(cfg.data_dir)
    make_self_signed(tmp_path / "acme.pem", tmp_path / "acme.key", ["mail.example.test"], days=90)
    files.save_certificate((tmp_path / "acme.pem").read_bytes(), (tmp_path / "acme.key").read_bytes())
    report = read_report(cfg)
    assert report.source is Source.ACME and report.path == files.cert
    # without [acme], a stored ACME certificate is not used
    assert read_report(config(tmp_path, acme=False)).source is Source.SELF_SIGNED
