"""The `kartero` command as an admin runs it: init, users, aliases, config errors, serve. The user and
alias commands' replies and exit codes are checked in this process (harness.run_cli_in_process); the
other tests run `python -m kartero`, the user commands included."""

from __future__ import annotations

import re
import signal
import smtplib
import socket
import subprocess
import urllib.request
from pathlib import Path

from cryptography import x509

from kartero.auth.passwords import verify_password
from kartero.store.sqlite import SQLiteStore
from tests.integration.harness import KARTERO, KarteroServer, run_cli, run_cli_in_process


def kartero(*args: str, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*KARTERO, *args], cwd=cwd, input=stdin, capture_output=True, text=True, timeout=60)


def test_init_writes_a_working_config(tmp_path: Path) -> None:
    target = tmp_path / "etc"
    result = kartero("init", str(target), "--domain", "Example.TEST", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (target / "data").is_dir()
    cert = x509.load_pem_x509_certificate((target / "tls" / "cert.pem").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert names == ["mail.example.test"]
    assert (target / "tls" / "key.pem").stat().st_mode & 0o777 == 0o600
    text = (target / "kartero.toml").read_text()
    assert 'hostname = "mail.example.test"' in text and 'domains = ["example.test"]' in text
    assert re.search(r'\nsecret = "[0-9a-f]{64}"', text)  # issue 12: a random SRS secret of its own
    assert (target / "kartero.toml").stat().st_mode & 0o077 == 0  # it holds that secret
    # The written config loads and the user commands work against it.
    config = target / "kartero.toml"
    assert run_cli(config, "user", "add", "alice@example.test", "--password-stdin", stdin="pw\n").returncode == 0
    assert run_cli(config, "user", "list").stdout == "alice@example.test\n"

    again = kartero("init", str(target), "--domain", "example.test", cwd=tmp_path)
    assert again.returncode == 1
    assert again.stderr == f"kartero: {target / 'kartero.toml'} exists; use --force to overwrite it\n"
    forced = kartero(
        "init", str(target), "--domain", "other.test", "--hostname", "mx.other.test", "--force", cwd=tmp_path
    )
    assert forced.returncode == 0
    assert 'hostname = "mx.other.test"' in (target / "kartero.toml").read_text()


def test_init_refuses_a_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    result = kartero("init", str(tmp_path / "busy"), "--domain", "example.test", cwd=tmp_path)
    assert result.returncode == 1
    assert "is not empty; use --force" in result.stderr


def test_user_and_alias_commands(tmp_path: Path) -> None:
    server = KarteroServer(tmp_path / "k")
    cfg = server.config
    added = run_cli_in_process(cfg, "user", "add", "Bob@Example.test", "--password-stdin", stdin="hunter2\r\n")
    assert added.stdout == "added bob@example.test\n"
    store = SQLiteStore(server.root / "data")
    try:
        account = store.accounts.get_account("bob@example.test")
        assert account is not None
        assert verify_password(account.password_hash, "hunter2")  # line ending stripped
        assert [m.name for m in store.mail.list_mailboxes(account.id)] == [
            "INBOX", "Sent", "Drafts", "Trash", "Junk", "Archive",
        ]  # fmt: skip
    finally:
        store.close()
    dup = run_cli_in_process(cfg, "user", "add", "bob@example.test", "--password-stdin", stdin="x\n", check=False)
    assert (dup.returncode, dup.stderr) == (1, "kartero: account bob@example.test already exists\n")
    foreign = run_cli_in_process(cfg, "user", "add", "bob@elsewhere.test", "--password-stdin", stdin="x\n", check=False)
    assert foreign.returncode == 2
    assert foreign.stderr == "kartero: bob@elsewhere.test: domain elsewhere.test is not one of the local domains\n"
    bad = run_cli_in_process(cfg, "user", "add", "not an address", "--password-stdin", stdin="x\n", check=False)
    assert bad.returncode == 2 and "not a valid address" in bad.stderr
    empty = run_cli_in_process(cfg, "user", "add", "eve@example.test", "--password-stdin", stdin="\n", check=False)
    assert (empty.returncode, empty.stderr) == (2, "kartero: the password is empty\n")

    changed = run_cli_in_process(cfg, "user", "passwd", "bob@example.test", "--password-stdin", stdin="new-pw\n")
    assert changed.returncode == 0
    store = SQLiteStore(server.root / "data")
    try:
        account = store.accounts.get_account("bob@example.test")
        assert account is not None and verify_password(account.password_hash, "new-pw")
    finally:
        store.close()

    assert (
        run_cli_in_process(cfg, "alias", "add", "@example.test", "bob@example.test").stdout
        == "added @example.test -> bob@example.test\n"
    )
    run_cli_in_process(cfg, "alias", "add", "info@example.test", "bob@example.test")
    listed = run_cli_in_process(cfg, "alias", "list").stdout
    assert listed == "@example.test bob@example.test\ninfo@example.test bob@example.test\n"
    # Issue 12: a remote destination is forwarded (with an SRS sender); its local part keeps its case.
    remote = run_cli_in_process(cfg, "alias", "add", "X@example.test", "Someone@Remote.example")
    assert remote.stdout == "added x@example.test -> Someone@remote.example\n"
    deleted = run_cli_in_process(cfg, "alias", "del", "info@example.test").stdout
    assert deleted == "deleted 1 alias of info@example.test\n"
    missing = run_cli_in_process(cfg, "alias", "del", "info@example.test", check=False)
    assert (missing.returncode, missing.stderr) == (2, "kartero: no alias info@example.test\n")

    assert run_cli_in_process(cfg, "user", "del", "bob@example.test").returncode == 0
    assert run_cli_in_process(cfg, "user", "list").stdout == ""
    gone = run_cli_in_process(cfg, "user", "del", "bob@example.test", check=False)
    assert (gone.returncode, gone.stderr) == (2, "kartero: no account bob@example.test\n")


def test_config_error_exits_2_with_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('domains = ["example.test"]\n[limits]\nmessage_size = "huge"\n')
    for args in (("serve",), ("user", "list")):
        result = kartero("-c", str(cfg), *args, cwd=tmp_path)
        assert result.returncode == 2
        assert result.stderr == (f"kartero: {cfg}: [limits] message_size: expected a size like \"50MB\", got 'huge'\n")
    missing = kartero("-c", str(tmp_path / "none.toml"), "serve", cwd=tmp_path)
    assert (missing.returncode, missing.stderr) == (2, f"kartero: {tmp_path / 'none.toml'}: file not found\n")
    usage = kartero("user", "frobnicate", cwd=tmp_path)
    assert usage.returncode == 2


def test_serve_on_a_taken_port_exits_1(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = KarteroServer(tmp_path / "k", port=port)
        result = kartero("-c", str(server.config), "serve", cwd=tmp_path)
    assert result.returncode == 1
    assert f"kartero: cannot listen on 127.0.0.1:{port} (smtp): " in result.stderr


def test_quick_start_serve_with_embedded_default(tmp_path: Path) -> None:
    """README's first line: `kartero serve` with no config in an empty folder."""
    proc = subprocess.Popen(
        [*KARTERO, "serve"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(10)]
        assert lines == [
            "smtp listening on 127.0.0.1:2525\n",
            "submission listening on 127.0.0.1:5870\n",
            "submissions listening on 127.0.0.1:4650\n",
            "imap listening on 127.0.0.1:1430\n",
            "imaps listening on 127.0.0.1:9930\n",
            "pop3 listening on 127.0.0.1:1100\n",
            "pop3s listening on 127.0.0.1:9950\n",
            "managesieve listening on 127.0.0.1:4190\n",
            "http listening on 127.0.0.1:8080\n",
            "kartero ready\n",
        ]
        assert (tmp_path / "kartero-data" / "tls" / "cert.pem").exists()
        kartero("user", "add", "bob@localhost", "--password-stdin", cwd=tmp_path, stdin="pw\n")
        with smtplib.SMTP("127.0.0.1", 2525) as s:
            code, banner = s.ehlo()
            assert code == 250 and b"STARTTLS" in banner
            assert s.sendmail("a@example.org", ["bob@localhost"], b"Subject: hi\r\n\r\nhi\r\n") == {}
        with urllib.request.urlopen("http://127.0.0.1:8080/admin/login", timeout=30) as page:  # README's admin
            assert page.status == 200 and b'action="/admin/login"' in page.read()
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "using the embedded default" in err
    assert "event=stopped" in err
