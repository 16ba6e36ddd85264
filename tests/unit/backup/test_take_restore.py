"""Issue 15: `kartero backup` copies what the database snapshot points at, and nothing after it;
`kartero restore` writes nothing from a damaged backup and only into an empty data folder.

The data folders here are made by hand (a database with the few tables the backup reads, segment files
with bytes past the committed end, the files beside them); tests/integration/test_backup.py takes a
backup of a real server under SMTP load."""

from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path

import pytest

from kartero.backup import take
from kartero.backup.manifest import MANIFEST_NAME, BackupCorrupt, BackupError, FileKind, verify_backup
from kartero.backup.restore import restore_backup
from kartero.backup.take import STAGING_DIR, files_to_copy, take_backup

SEGMENT_1 = b"A" * 40 + b"B" * 20 + b"half-written batch"  # committed: 60 bytes
SEGMENT_2 = b"C" * 30  # committed: all
SEGMENT_3 = b"D" * 10  # nothing points into it


def _data_dir(root: Path) -> Path:
    data = root / "data"
    (data / "messages").mkdir(parents=True)
    db = sqlite3.connect(data / "kartero.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript("""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema_version', '3');
        CREATE TABLE accounts (id INTEGER PRIMARY KEY);
        CREATE TABLE mailboxes (id INTEGER PRIMARY KEY, uidvalidity INTEGER NOT NULL);
        CREATE TABLE messages (id INTEGER PRIMARY KEY, blob_id TEXT);
        CREATE TABLE queue (id TEXT PRIMARY KEY);
        CREATE TABLE blobs (id TEXT PRIMARY KEY, segment INTEGER, "offset" INTEGER, size INTEGER);
        INSERT INTO accounts VALUES (1), (2);
        INSERT INTO mailboxes VALUES (1, 1700000000), (2, 1700000001), (3, 1700000002);
        INSERT INTO meta VALUES ('uidvalidity', '4000000000');  -- ahead of the clock: made many at once
        INSERT INTO blobs VALUES ('a', 1, 0, 40), ('b', 1, 40, 20), ('c', 2, 0, 30);
        INSERT INTO messages VALUES (1, 'a'), (2, 'b');
        INSERT INTO queue VALUES ('c');
    """)
    db.close()
    for number, data_bytes in ((1, SEGMENT_1), (2, SEGMENT_2), (3, SEGMENT_3)):
        (data / "messages" / f"{number:08d}.seg").write_bytes(data_bytes)
    for rel, text in {"dkim/example.test/s1.rsa.key": "key", "maildrop/0001.msg": "dropped", "acme/account.pem": "a",
                      "kartero.pid": "1", "spool/x": "spooled", "workers/1/spool/y": "y",
                      "maildrop/.0002.tmp": "being written", "dkim/example.test/s2.rsa.tmp": "k",
                      "importdrop/0001.batch": "batch", "importdrop/.0002.tmp": "being written"}.items():  # fmt: skip
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        (data / rel).write_text(text)
    return data


def test_issue_15_backup_copies_segments_up_to_the_committed_end(tmp_path: Path) -> None:
    data = _data_dir(tmp_path)
    (data / "kartero.db-wal").write_bytes(b"")  # a -wal beside the database is read through, never copied
    report = take_backup(data, tmp_path / "backup", "0.1.0")
    folder = tmp_path / "backup"
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == [
        "acme/account.pem", "dkim/example.test/s1.rsa.key", "importdrop/0001.batch", "kartero.db",
        "maildrop/0001.msg", MANIFEST_NAME, "messages/00000001.seg", "messages/00000002.seg",
    ]  # fmt: skip
    assert (folder / "messages" / "00000001.seg").read_bytes() == SEGMENT_1[:60]
    assert (folder / "messages" / "00000002.seg").read_bytes() == SEGMENT_2
    assert report.unreferenced_segments == 1
    manifest = verify_backup(folder)
    assert manifest == report.manifest
    assert dict(manifest.counts) == {"accounts": 2, "mailboxes": 3, "messages": 2, "queued": 1}
    assert manifest.schema_version == 3 and manifest.source == str(data.resolve())
    assert {f.path: f.kind for f in manifest.files}["kartero.db"] is FileKind.DATABASE
    assert {f.path: f.kind for f in manifest.files}["messages/00000001.seg"] is FileKind.SEGMENT
    assert all(p.stat().st_mode & 0o077 == 0 for p in folder.rglob("*"))
    copy = sqlite3.connect(folder / "kartero.db")
    assert copy.execute("SELECT COUNT(*) FROM blobs").fetchone() == (3,)
    assert copy.execute("PRAGMA journal_mode").fetchone() == ("delete",)


def test_issue_15_files_removed_after_the_listing_are_copied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Compaction removes a segment once its bodies moved, the pickups a maildrop or import drop file once
    stored: if that happens between the listing and the snapshot, the snapshot may still point at the old
    segment, and the copy must have it."""
    data = _data_dir(tmp_path)
    snapshot = take._snapshot

    def snapshot_after_removal(*args: object) -> object:
        (data / "messages" / "00000001.seg").unlink()
        (data / "maildrop" / "0001.msg").unlink()
        (data / "importdrop" / "0001.batch").unlink()
        return snapshot(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(take, "_snapshot", snapshot_after_removal)
    take_backup(data, tmp_path / "backup", "0.1.0")
    assert (tmp_path / "backup" / "messages" / "00000001.seg").read_bytes() == SEGMENT_1[:60]
    assert (tmp_path / "backup" / "maildrop" / "0001.msg").read_text() == "dropped"
    assert (tmp_path / "backup" / "importdrop" / "0001.batch").read_text() == "batch"


def test_issue_15_a_segment_made_after_the_listing_is_copied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _data_dir(tmp_path)
    snapshot = take._snapshot

    def snapshot_after_a_new_segment(source: Path, *args: object) -> object:
        (data / "messages" / "00000004.seg").write_bytes(b"E" * 5 + b"uncommitted")
        with sqlite3.connect(source) as db:
            db.execute("INSERT INTO blobs VALUES ('e', 4, 0, 5)")
        return snapshot(source, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(take, "_snapshot", snapshot_after_a_new_segment)
    take_backup(data, tmp_path / "backup", "0.1.0")
    assert (tmp_path / "backup" / "messages" / "00000004.seg").read_bytes() == b"EEEEE"


def test_issue_15_a_backup_that_cannot_be_consistent_fails_and_leaves_nothing(tmp_path: Path) -> None:
    data = _data_dir(tmp_path)
    (data / "messages" / "00000002.seg").write_bytes(b"C" * 29)  # shorter than the database says
    with pytest.raises(BackupError, match="holds 29 bytes, fewer than the 30 its database points at"):
        take_backup(data, tmp_path / "backup", "0.1.0")
    assert not (tmp_path / "backup").exists()
    (tmp_path / "empty").mkdir()
    (data / "messages" / "00000002.seg").unlink()  # gone: compacted away before it could be opened
    with pytest.raises(BackupError, match=r"segment messages/00000002\.seg was removed while the backup ran"):
        take_backup(data, tmp_path / "empty", "0.1.0")
    assert list((tmp_path / "empty").iterdir()) == []  # the folder was there before: kept, empty


def test_issue_15_backup_refuses_a_busy_folder_or_no_store(tmp_path: Path) -> None:
    data = _data_dir(tmp_path)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "old").write_text("x")
    with pytest.raises(BackupError, match="is not an empty folder"):
        take_backup(data, tmp_path / "busy", "0.1.0")
    assert [p.name for p in (tmp_path / "busy").iterdir()] == ["old"]
    with pytest.raises(BackupError, match="is inside the data folder"):
        take_backup(data, data / "backup", "0.1.0")
    with pytest.raises(BackupError, match="no embedded store at"):
        take_backup(tmp_path / "nothing", tmp_path / "b", "0.1.0")


def test_issue_15_files_to_copy_names_what_lives_in_the_data_folder(tmp_path: Path) -> None:
    assert files_to_copy(_data_dir(tmp_path)) == [
        "acme/account.pem", "dkim/example.test/s1.rsa.key", "importdrop/0001.batch", "kartero.db", "maildrop/0001.msg",
        "messages/00000001.seg", "messages/00000002.seg", "messages/00000003.seg",
    ]  # fmt: skip


def test_issue_15_restore_puts_the_backup_into_an_empty_data_folder(tmp_path: Path) -> None:
    take_backup(_data_dir(tmp_path), tmp_path / "backup", "0.1.0")
    target = tmp_path / "restored" / "data"
    report = restore_backup(tmp_path / "backup", target, keep_uidvalidity=True)  # byte for byte, the database too
    assert report.manifest.counts["messages"] == 2
    restored = sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file())
    assert restored == sorted(f.path for f in report.manifest.files)
    for entry in report.manifest.files:
        assert (target / entry.path).read_bytes() == (tmp_path / "backup" / entry.path).read_bytes()
    assert target.stat().st_mode & 0o777 == 0o700
    assert all(p.stat().st_mode & 0o077 == 0 for p in target.rglob("*"))
    with pytest.raises(BackupError, match=r"is not empty \(acme, dkim, importdrop, \.\.\.\): restore only"):
        restore_backup(tmp_path / "backup", target)


def test_issue_15_restore_of_a_damaged_backup_writes_nothing(tmp_path: Path) -> None:
    take_backup(_data_dir(tmp_path), tmp_path / "backup", "0.1.0")
    segment = tmp_path / "backup" / "messages" / "00000002.seg"
    segment.write_bytes(b"c" + segment.read_bytes()[1:])
    for target in (tmp_path / "new" / "data", tmp_path / "empty"):
        if target.name == "empty":
            target.mkdir()
        with pytest.raises(BackupCorrupt) as caught:
            restore_backup(tmp_path / "backup", target)
        assert caught.value.path == "messages/00000002.seg"
        assert not target.exists() or list(target.iterdir()) == []
    assert not (tmp_path / "new").exists()


def test_issue_15_restore_replaces_an_interrupted_restore(tmp_path: Path) -> None:
    take_backup(_data_dir(tmp_path), tmp_path / "backup", "0.1.0")
    target = tmp_path / "restored"
    (target / STAGING_DIR / "messages").mkdir(parents=True)
    (target / STAGING_DIR / "messages" / "00000001.seg").write_bytes(b"partial")
    restore_backup(tmp_path / "backup", target)
    assert not (target / STAGING_DIR).exists()
    assert (target / "messages" / "00000001.seg").read_bytes() == SEGMENT_1[:60]


def test_issue_15_restore_gives_every_mailbox_a_new_uidvalidity(tmp_path: Path) -> None:
    """UIDs handed out after the backup would be handed out again to other messages: RFC 9051 §2.3.1.1
    wants a new UIDVALIDITY then, above every one the store ever gave."""
    take_backup(_data_dir(tmp_path), tmp_path / "backup", "0.1.0")
    report = restore_backup(tmp_path / "backup", tmp_path / "renewed")
    assert report.renewed_mailboxes == 3
    assert report.summary().endswith("; a new UIDVALIDITY for its 3 mailboxes (IMAP clients read them again)")
    db = sqlite3.connect(tmp_path / "renewed" / "kartero.db")
    assert db.execute("SELECT DISTINCT uidvalidity FROM mailboxes").fetchall() == [(4000000001,)]
    assert db.execute("SELECT value FROM meta WHERE key = 'uidvalidity'").fetchone() == ("4000000001",)
    db.close()
    assert not (tmp_path / "renewed" / "kartero.db-journal").exists()
    kept = restore_backup(tmp_path / "backup", tmp_path / "kept", keep_uidvalidity=True)
    assert kept.renewed_mailboxes == 0
    assert (tmp_path / "kept" / "kartero.db").read_bytes() == (tmp_path / "backup" / "kartero.db").read_bytes()


def test_issue_15_restore_takes_a_mount_point_with_lost_and_found(tmp_path: Path) -> None:
    take_backup(_data_dir(tmp_path), tmp_path / "backup", "0.1.0")
    (tmp_path / "volume" / "lost+found").mkdir(parents=True)
    restore_backup(tmp_path / "backup", tmp_path / "volume")
    assert (tmp_path / "volume" / "kartero.db").is_file()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root gives files away")
def test_issue_15_root_restores_for_the_owner_of_the_folder(tmp_path: Path) -> None:
    """`sudo kartero restore`: the server runs as its own user and must be able to open what was restored."""
    take_backup(_data_dir(tmp_path), tmp_path / "backup", "0.1.0")
    os.chown(tmp_path / "backup", 0, 0)
    (tmp_path / "srv").mkdir()
    os.chown(tmp_path / "srv", 4321, 4321)
    restore_backup(tmp_path / "backup", tmp_path / "srv" / "kartero" / "data")
    restored = [tmp_path / "srv" / "kartero" / "data", *(tmp_path / "srv" / "kartero" / "data").rglob("*")]
    assert {(p.stat().st_uid, p.stat().st_gid) for p in restored} == {(4321, 4321)}


def test_issue_15_a_database_that_is_not_kartero_s_is_refused(tmp_path: Path) -> None:
    data = _data_dir(tmp_path)
    with sqlite3.connect(data / "kartero.db") as db:
        db.execute("DROP TABLE mailboxes")
    with pytest.raises(BackupError, match=r"cannot read the database of .*: no such table: mailboxes"):
        take_backup(data, tmp_path / "backup", "0.1.0")
    assert not (tmp_path / "backup").exists()
    # A backup whose manifest matches such a database: restore checks it before anything is in place.
    with sqlite3.connect(data / "kartero.db") as db:
        db.execute("CREATE TABLE mailboxes (id INTEGER PRIMARY KEY, uidvalidity INTEGER NOT NULL)")
    take_backup(data, tmp_path / "backup", "0.1.0")
    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as db:
        db.execute("CREATE TABLE notes (text TEXT)")
    manifest = (tmp_path / "backup" / MANIFEST_NAME).read_text()
    entry = next(f for f in verify_backup(tmp_path / "backup").files if f.path == "kartero.db")
    raw = foreign.read_bytes()
    (tmp_path / "backup" / "kartero.db").write_bytes(raw)
    manifest = manifest.replace(entry.sha256, hashlib.sha256(raw).hexdigest())
    manifest = manifest.replace(f'"size": {entry.size},', f'"size": {len(raw)},', 1)
    (tmp_path / "backup" / MANIFEST_NAME).write_text(manifest)
    with pytest.raises(BackupError, match=r"kartero\.db of the backup is not a Kartero database: no such table"):
        restore_backup(tmp_path / "backup", tmp_path / "target")
    assert not (tmp_path / "target").exists()


def test_issue_15_links_and_odd_names_are_named_not_copied(tmp_path: Path) -> None:
    data = _data_dir(tmp_path)
    (data / "tls").mkdir()
    (data / "tls" / "cert.pem").symlink_to("/etc/hostname")
    (data / "odd\\name").write_text("x")
    report = take_backup(data, tmp_path / "backup", "0.1.0")
    assert report.skipped == ("odd\\name", "tls/cert.pem")
    assert not (tmp_path / "backup" / "tls").exists()
    (tmp_path / "other").mkdir()
    (data / "kartero.db").unlink()
    (data / "kartero.db").write_text("not a database")
    with pytest.raises(BackupError, match=r"kartero\.db is not a SQLite database"):
        take_backup(data, tmp_path / "other", "0.1.0")


def test_issue_15_a_restore_failing_while_it_moves_leaves_the_folder_empty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rename into place that fails (kartero.db's, the last) left the entries moved before it in the data
    folder, which the next restore then refused as not empty, though the command said nothing was
    restored."""
    take_backup(_data_dir(tmp_path), tmp_path / "backup", "0.1.0")
    target = tmp_path / "mount"
    target.mkdir()  # an existing empty folder (a mount point): it stays, empty
    real_rename = os.rename

    def rename(source: str | Path, destination: str | Path) -> None:
        if Path(destination).name == "kartero.db":
            raise OSError(28, "No space left on device")
        real_rename(source, destination)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError, match="No space left"):
        restore_backup(tmp_path / "backup", target)
    assert list(target.iterdir()) == []
    monkeypatch.setattr(os, "rename", real_rename)
    assert restore_backup(tmp_path / "backup", target).manifest.counts["messages"] == 2
