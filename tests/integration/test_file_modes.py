"""Issue 8, finding 8: the data folder (argon2 hashes, SCRAM keys, every subject and address, messages)
and key files are for Kartero's user only: data/ 0700, the database and keys 0600 — after `init`, after
`user add`, after `serve` (which also fixes folders made by older versions) and after a WAL checkpoint."""

from __future__ import annotations

import smtplib
import sqlite3
import stat
from pathlib import Path

from tests.integration.harness import KarteroServer, run_cli


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def loose_files(root: Path, old: frozenset[Path] = frozenset()) -> list[str]:
    """Everything under `root` (except `old` files, inside the 0700 folder anyway) that group or others
    may read, write or enter."""
    return [f"{p} {mode(p):04o}" for p in [root, *root.rglob("*")] if mode(p) & 0o077 and p not in old]


def test_issue_8_init_and_user_add_make_private_files(tmp_path: Path) -> None:
    target = tmp_path / "site"
    run_cli(target / "kartero.toml", "init", str(target), "--domain", "example.test")
    assert mode(target / "data") == 0o700
    assert mode(target / "tls" / "key.pem") == 0o600
    assert mode(target / "kartero.toml") == 0o600
    run_cli(target / "kartero.toml", "user", "add", "bob@example.test", "--password-stdin", stdin="pw\n")
    run_cli(target / "kartero.toml", "dkim", "keygen", "example.test")
    assert loose_files(target / "data") == []
    assert mode(target / "data" / "kartero.db") == 0o600


def test_issue_8_serve_fixes_old_modes_and_keeps_everything_private(tmp_path: Path) -> None:
    mx = KarteroServer(tmp_path / "mx")
    mx.add_user("bob@example.test")  # made by the test process, as an older Kartero would have: 0755/0644
    data = mx.root / "data"
    data.chmod(0o755)
    (data / "kartero.db").chmod(0o644)
    dkim = data / "dkim" / "example.test"
    dkim.mkdir(parents=True)
    (dkim / "old.rsa.key").write_bytes(b"not really a key\n")
    (dkim / "old.rsa.key").chmod(0o644)
    database = {data / name for name in ("kartero.db", "kartero.db-wal", "kartero.db-shm")}
    old = frozenset(set(data.rglob("*")) - database - {dkim / "old.rsa.key"})  # e.g. data/messages/ 0755
    mx.start()
    try:
        fixed = mx.wait_events("data.mode_fixed", 3)
        assert any(f"path={data} was=0755 now=0700" in line for line in fixed), fixed
        assert any(f"path={data / 'kartero.db'} was=0644 now=0600" in line for line in fixed), fixed
        assert mode(data) == 0o700 and mode(dkim / "old.rsa.key") == 0o600
        with smtplib.SMTP(mx.host, mx.port, timeout=30) as client:  # files the server makes: segments, WAL
            client.sendmail("alice@elsewhere.example", ["bob@example.test"], b"Subject: x\r\n\r\nHi.\r\n")
        assert (data / "kartero.db-wal").exists() and loose_files(data, old) == []
        db = sqlite3.connect(data / "kartero.db", timeout=2.0)
        try:  # busy (1) when a server thread is reading just then: the pages written so far still move
            assert db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] in (0, 1)
        finally:
            db.close()
        with smtplib.SMTP(mx.host, mx.port, timeout=30) as client:  # the WAL starts over after the checkpoint
            client.sendmail("alice@elsewhere.example", ["bob@example.test"], b"Subject: y\r\n\r\nHi.\r\n")
        run_cli(mx.config, "user", "add", "carol@example.test", "--password-stdin", stdin="pw\n")
        assert loose_files(data, old) == []
        assert {mode(data / name) for name in ("kartero.db", "kartero.db-wal", "kartero.db-shm")} == {0o600}
    finally:
        assert mx.stop() == 0, mx.log
    assert loose_files(data, old) == []
    assert len(mx.messages("bob@example.test")) == 2
