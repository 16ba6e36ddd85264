"""Issue 15: the backup manifest is read as untrusted input, and checking a backup names the bad file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from kartero.backup.manifest import (
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    BackupCorrupt,
    BackupError,
    FileEntry,
    FileKind,
    Manifest,
    parse_manifest,
    verify_backup,
)

SHA_EMPTY = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def _manifest(*files: FileEntry) -> Manifest:
    return Manifest(created_at="2026-11-30T08:00:00+00:00", source="/srv/kartero/data", kartero_version="0.1.0",
                    schema_version=3, counts={"accounts": 1, "messages": 2},
                    files=(FileEntry("kartero.db", FileKind.DATABASE, 0, SHA_EMPTY), *files))  # fmt: skip


def _document(**changes: object) -> bytes:
    document = json.loads(_manifest().to_json())
    document.update(changes)
    return json.dumps(document).encode()


def test_issue_15_manifest_round_trips() -> None:
    manifest = _manifest(FileEntry("messages/00000001.seg", FileKind.SEGMENT, 0, SHA_EMPTY),
                         FileEntry("dkim/example.test/s1.rsa.key", FileKind.FILE, 0, SHA_EMPTY))  # fmt: skip
    assert parse_manifest(manifest.to_json()) == manifest
    assert json.loads(manifest.to_json())["bytes"] == 0


@pytest.mark.parametrize("path", ["../etc/passwd", "/etc/passwd", "a//b", "a/./b", "a/../b", "a\\b", "", "a/",
                                  "x\x00y", "a" * 2000])  # fmt: skip
def test_issue_15_manifest_paths_stay_inside_the_folder(path: str) -> None:
    files = [{"path": "kartero.db", "kind": "database", "size": 0, "sha256": SHA_EMPTY},
             {"path": path, "kind": "file", "size": 0, "sha256": SHA_EMPTY}]  # fmt: skip
    with pytest.raises(BackupCorrupt) as caught:
        parse_manifest(_document(files=files))
    assert caught.value.path == MANIFEST_NAME
    assert "bad path" in str(caught.value)


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"format": "tarball"}, "not a kartero-backup manifest"),
        ({"version": 2}, "manifest version 2, this Kartero reads 1"),
        ({"files": []}, "no kartero.db among the files"),
        ({"files": {"kartero.db": 0}}, "files is not a list"),
        ({"counts": {"accounts": -1}}, "counts is not an object of numbers"),
        ({"counts": {"accounts": True}}, "counts is not an object of numbers"),
        ({"files": [{"path": "kartero.db", "kind": "database", "size": "0", "sha256": SHA_EMPTY}]}, "is not a number"),
        ({"files": [{"path": "kartero.db", "kind": "database", "size": 0, "sha256": "00"}]}, "sha256 is not 64"),
        ({"files": [{"path": "kartero.db", "kind": "archive", "size": 0, "sha256": SHA_EMPTY}]}, "'archive'"),
        ({"files": [{"path": "kartero.db", "kind": "database", "size": 0, "sha256": SHA_EMPTY}] * 2}, "named twice"),
        ({"files": [{"path": "kartero.db", "kind": "database", "size": 0, "sha256": SHA_EMPTY},
                    {"path": "manifest.json", "kind": "file", "size": 0, "sha256": SHA_EMPTY}]}, "named as a file"),
        ({"created_at": 5}, "is not a string"),
    ],
)  # fmt: skip
def test_issue_15_a_malformed_manifest_is_refused(changes: dict[str, object], why: str) -> None:
    with pytest.raises(BackupCorrupt) as caught:
        parse_manifest(_document(**changes))
    assert caught.value.path == MANIFEST_NAME
    assert why in str(caught.value)


def test_issue_15_a_manifest_that_is_no_json_or_too_large_is_refused() -> None:
    for raw in (b"{", b"\xff\xfe", b"[]", b" " * (MAX_MANIFEST_BYTES + 1)):
        with pytest.raises(BackupCorrupt) as caught:
            parse_manifest(raw)
        assert caught.value.path == MANIFEST_NAME


def _backup(folder: Path, files: dict[str, bytes]) -> None:
    folder.mkdir()
    entries = []
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
        kind = FileKind.DATABASE if rel == "kartero.db" else FileKind.FILE
        entries.append(FileEntry(rel, kind, len(data), hashlib.sha256(data).hexdigest()))
    manifest = Manifest(created_at="2026-11-30T08:00:00+00:00", source="/srv/data", kartero_version="0.1.0",
                        schema_version=3, counts={}, files=tuple(entries))  # fmt: skip
    (folder / MANIFEST_NAME).write_bytes(manifest.to_json())


FILES = {"kartero.db": b"SQLite format 3\x00" + b"x" * 100, "messages/00000001.seg": b"body " * 50,
         "dkim/example.test/s1.rsa.key": b"-----BEGIN PRIVATE KEY-----\n"}  # fmt: skip


def test_issue_15_verify_accepts_an_intact_backup(tmp_path: Path) -> None:
    _backup(tmp_path / "b", FILES)
    assert len(verify_backup(tmp_path / "b").files) == 3


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        (lambda p: p.write_bytes(b"bodY " + p.read_bytes()[5:]),
         "SHA-256 differs from the manifest (the file is damaged)"),
        (lambda p: p.write_bytes(p.read_bytes()[:-1]), "249 bytes, the manifest says 250"),
        (lambda p: p.write_bytes(p.read_bytes() + b"x"), "longer than the 250 bytes the manifest says"),
        (lambda p: p.unlink(), "missing"),
        (lambda p: (p.unlink(), p.symlink_to(p.with_name("elsewhere"))), "Too many levels of symbolic links"),
    ],
)  # fmt: skip
def test_issue_15_verify_names_the_damaged_file(tmp_path: Path, damage: object, why: str) -> None:
    _backup(tmp_path / "b", FILES)
    damage(tmp_path / "b" / "messages" / "00000001.seg")  # type: ignore[operator]
    with pytest.raises(BackupCorrupt) as caught:
        verify_backup(tmp_path / "b")
    assert caught.value.path == "messages/00000001.seg"
    assert str(caught.value) == f"messages/00000001.seg: {why}"


def test_issue_15_a_folder_without_manifest_is_no_backup(tmp_path: Path) -> None:
    with pytest.raises(BackupError, match="holds no backup"):
        verify_backup(tmp_path)


def test_issue_15_a_manifest_nested_too_deeply_is_refused() -> None:
    """json nests by recursion: a hostile `[[[[...` was a RecursionError traceback, not a BackupCorrupt."""
    for raw in (b"[" * 100_000, b'{"format": ' + b"[" * 100_000):
        with pytest.raises(BackupCorrupt) as caught:
            parse_manifest(raw)
        assert str(caught.value) == f"{MANIFEST_NAME}: nested too deeply"


def test_issue_15_verify_follows_no_link_inside_the_backup(tmp_path: Path) -> None:
    """A backup whose `messages` folder is a link elsewhere: the file there matches the manifest, but it
    lies outside the backup, and restore would copy it into the data folder (a file root can read and the
    server's user could not). Only the last level was opened with O_NOFOLLOW."""
    _backup(tmp_path / "b", FILES)
    (tmp_path / "b" / "messages").rename(tmp_path / "outside")
    (tmp_path / "b" / "messages").symlink_to(tmp_path / "outside")
    with pytest.raises(BackupCorrupt) as caught:
        verify_backup(tmp_path / "b")
    assert caught.value.path == "messages/00000001.seg"
    assert str(caught.value) == "messages/00000001.seg: messages is a link or no folder"
