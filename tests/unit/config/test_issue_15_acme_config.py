"""Issue 15: `[acme] directory, email, names, ca_file`: certificates from an ACME CA."""

from __future__ import annotations

from pathlib import Path

import pytest

from kartero.config import AcmeConfig, ConfigError, TLSConfig, load

BASE = ('domains = ["example.test"]\nhostname = "mail.example.test"\ndata_dir = "data"\n'
        '[listen]\nhttp = ["127.0.0.1:80"]\n')
DIRECTORY = 'directory = "https://acme-v02.api.letsencrypt.org/directory"\n'


def test_issue_15_acme_defaults_to_the_host_name_and_a_self_signed_start(tmp_path: Path) -> None:
    path = tmp_path / "kartero.toml"
    path.write_text(BASE + "[acme]\n" + DIRECTORY)
    config = load(path, env={})
    assert config.acme == AcmeConfig("https://acme-v02.api.letsencrypt.org/directory", ("mail.example.test",))
    # no [tls]: a self-signed certificate in the data folder serves until the first ACME one arrives
    assert config.tls == TLSConfig(tmp_path / "data" / "tls" / "cert.pem", tmp_path / "data" / "tls" / "key.pem")
    assert config.make_certificate


def test_issue_15_acme_every_key(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    path = tmp_path / "kartero.toml"
    path.write_text(BASE + "[acme]\n" + DIRECTORY + 'email = "postmaster@example.test"\n'
                    'names = ["MAIL.example.test", "mx.example.test", "mail.example.test"]\nca_file = "ca.pem"\n')
    acme = load(path, env={}).acme
    assert acme is not None
    assert acme.names == ("mail.example.test", "mx.example.test")
    assert acme.email == "postmaster@example.test" and acme.ca_file == tmp_path / "ca.pem"


@pytest.mark.parametrize(("text", "problem"), [
    ("", r"\[acme\] directory: missing"),
    ('directory = "http://ca.example/dir"', r"\[acme\] directory: expected the CA's https://"),
    (DIRECTORY + 'email = "nobody"', r"\[acme\] email: not an email address"),
    (DIRECTORY + "names = []", r"\[acme\] names: must be a list of 1 to 100"),
    (DIRECTORY + 'names = ["bad name"]', r"\[acme\] names"),
    (DIRECTORY + 'ca_file = "missing.pem"', r"\[acme\] ca_file: file not found"),
    (DIRECTORY + 'challenge = "dns-01"', r"\[acme\] challenge: unknown key"),
])  # fmt: skip
def test_issue_15_acme_mistakes(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "kartero.toml"
    path.write_text(BASE + "[acme]\n" + text + "\n")
    with pytest.raises(ConfigError, match=problem):
        load(path, env={})


def test_issue_15_acme_needs_a_listener_for_the_challenges(tmp_path: Path) -> None:
    path = tmp_path / "kartero.toml"
    path.write_text('domains = ["example.test"]\n[listen]\nsmtp = ["127.0.0.1:25"]\n[acme]\n' + DIRECTORY)
    with pytest.raises(ConfigError, match=r"\[acme\] directory: the CA's challenges need \[listen\] http"):
        load(path, env={})


def test_issue_15_init_template_acme_example_loads_once_uncommented(tmp_path: Path) -> None:
    from kartero.cli import INIT_TEMPLATE

    text = INIT_TEMPLATE.format(date="2026-11-30", hostname="mail.example.test", domain="example.test",
                                srs_secret="s" * 64)  # fmt: skip
    assert "\n[acme]" not in text  # off until the admin turns it on
    for key in ("[acme]", "directory =", "email =", "names ="):
        text = text.replace(f"\n# {key}", f"\n{key}")
    (tmp_path / "tls").mkdir()
    for name in ("cert.pem", "key.pem"):
        (tmp_path / "tls" / name).write_text("")
    path = tmp_path / "kartero.toml"
    path.write_text(text)
    acme = load(path, env={}).acme
    assert acme == AcmeConfig("https://acme-v02.api.letsencrypt.org/directory", ("mail.example.test",),
                              "postmaster@example.test")  # fmt: skip
