"""Issue 15: `[http] public_ports` (what clients are told when the published ports differ from the
bound ones) and `[mta_sts]` (the policy served to mta-sts.DOMAIN, the TLS-RPT address)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kartero.config import ConfigError, MtaStsConfig, load

BASE = 'domains = ["example.test"]\n[listen]\nimap = ["127.0.0.1:1430"]\nsubmission = ["127.0.0.1:5870"]\n'


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "kartero.toml"
    path.write_text(BASE + text)
    return path


def test_issue_15_defaults(tmp_path: Path) -> None:
    config = load(_write(tmp_path, ""), env={})
    assert config.http.public_ports == {}
    assert config.mta_sts == MtaStsConfig("testing", 604800, (), "")


def test_issue_15_public_ports_and_mta_sts(tmp_path: Path) -> None:
    config = load(_write(tmp_path, '[http]\npublic_ports = {imap = 143, submission = 0}\n[mta_sts]\nmode = "enforce"\n'
                                   'max_age = "1d"\nmx = ["MX2.Example.NET.", "*.b\u00fccher.example"]\n'
                                   'tls_rpt = "https://reports.example.net/tlsrpt"\n'), env={})  # fmt: skip
    assert config.http.public_ports == {"imap": 143, "submission": 0}
    assert config.mta_sts == MtaStsConfig("enforce", 86400, ("mx2.example.net", "*.xn--bcher-kva.example"),
                                          "https://reports.example.net/tlsrpt")  # fmt: skip
    assert load(_write(tmp_path, "[mta_sts]\nmax_age = 31557600\n"), env={}).mta_sts.max_age_s == 31557600


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[http]\npublic_ports = 993\n", r"\[http\] public_ports: expected a table"),
        ("[http]\npublic_ports = {imap4 = 143}\n", r"\[http\] public_ports.imap4: not one of imaps, imap"),
        ("[http]\npublic_ports = {imap = 70000}\n", r"\[http\] public_ports.imap: must be a port number"),
        ('[http]\npublic_ports = {imap = "143"}\n', r"\[http\] public_ports.imap: must be a port number"),
        ("[http]\npublic_ports = {pop3 = 110}\n", r"\[http\] public_ports.pop3: no \[listen\] pop3"),
        ('[mta_sts]\nmode = "strict"\n', r'\[mta_sts\] mode: must be "testing", "enforce" or "none"'),
        ("[mta_sts]\nmax_age = 31557601\n", r"\[mta_sts\] max_age: whole seconds, at most 31557600"),
        ('[mta_sts]\nmax_age = "1.5s"\n', r"\[mta_sts\] max_age: whole seconds"),
        ("[mta_sts]\nmax_age = 0\n", r"\[mta_sts\] max_age: must be positive"),
        ('[mta_sts]\nmx = "mx2.example.net"\n', r"\[mta_sts\] mx: expected a list"),
        ('[mta_sts]\nmx = ["mx2..example.net"]\n', r"\[mta_sts\] mx: invalid domain"),
        ('[mta_sts]\nmx = ["a.*.example.net"]\n', r"\[mta_sts\] mx: invalid domain"),
        ('[mta_sts]\ntls_rpt = "postmaster@example.test"\n', r'\[mta_sts\] tls_rpt: expected "mailto:ADDRESS"'),
        ('[mta_sts]\ntls_rpt = "mailto:a@b; v=x"\n', r"\[mta_sts\] tls_rpt: expected"),
        ('[mta_sts]\nreport = "x"\n', r"\[mta_sts\] report: unknown key"),
    ],
)
def test_issue_15_config_mistakes(tmp_path: Path, text: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        load(_write(tmp_path, text), env={})
