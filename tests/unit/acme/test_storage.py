"""data_dir/acme/ (kartero/acme/storage.py): whole files or none, private keys, a broken pair unused."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import pytest

from kartero.acme.storage import AcmeFiles, State, write_atomically
from kartero.tls import make_self_signed


def test_issue_15_write_atomically_replaces_the_whole_file_with_the_mode(tmp_path: Path) -> None:
    target = tmp_path / "key.pem"
    write_atomically(target, b"old", 0o600)
    write_atomically(target, b"new", 0o600)
    assert target.read_bytes() == b"new"
    assert target.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["key.pem"]  # no temporary file left


def test_issue_15_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "cert.pem"
    write_atomically(target, b"old", 0o644)
    with mock.patch("kartero.acme.storage.os.fsync", side_effect=OSError(28, "No space left on device")), \
            pytest.raises(OSError):
        write_atomically(target, b"new", 0o644)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["cert.pem"]


def test_issue_15_account_key_is_made_once_and_private(tmp_path: Path) -> None:
    files = AcmeFiles(tmp_path)
    key = files.account_key()
    assert files.account_key().private_numbers() == key.private_numbers()
    assert (tmp_path / "acme" / "account.key").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "acme").stat().st_mode & 0o777 == 0o700


def test_issue_15_account_url_is_kept_per_directory(tmp_path: Path) -> None:
    files = AcmeFiles(tmp_path)
    assert files.account_uri("https://ca.example/dir") is None
    files.save_account("https://ca.example/dir", "https://ca.example/acct/1")
    assert files.account_uri("https://ca.example/dir") == "https://ca.example/acct/1"
    assert files.account_uri("https://other.example/dir") is None  # another CA: register there


def test_issue_15_certificate_pair_round_trip_and_a_mismatched_pair_is_none(tmp_path: Path) -> None:
    files = AcmeFiles(tmp_path)
    assert files.certificate() is None
    make_self_signed(tmp_path / "a.pem", tmp_path / "a.key", ["mail.example.test", "mx.example.test"], days=90)
    make_self_signed(tmp_path / "b.pem", tmp_path / "b.key", ["mail.example.test"], days=90)
    files.save_certificate((tmp_path / "a.pem").read_bytes(), (tmp_path / "a.key").read_bytes())
    validity = files.certificate()
    assert validity is not None and validity.names == {"mail.example.test", "mx.example.test"}
    assert 89 * 86400 < validity.not_after - validity.not_before < 91 * 86400
    assert files.key.stat().st_mode & 0o777 == 0o600
    # a crash between the two renames: the new key with the old certificate
    write_atomically(files.key, (tmp_path / "b.key").read_bytes(), 0o600)
    assert files.certificate() is None
    files.cert.write_bytes(b"not a certificate")
    assert files.certificate() is None


def test_issue_15_state_round_trip_and_a_damaged_state_reads_as_new(tmp_path: Path) -> None:
    files = AcmeFiles(tmp_path)
    assert files.state() == State()
    files.save_state(State(3, 1000.0, "x" * 5000, 500.0, "http-01"))
    state = files.state()
    assert state == State(3, 1000.0, "x" * 500, 500.0, "http-01")  # the CA's text is bounded
    (tmp_path / "acme" / "state.json").write_text('{"failures": "many"}')
    assert files.state() == State()
