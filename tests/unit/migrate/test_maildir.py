"""Issue 15: Maildir reading (kartero/migrate/maildir.py): the info suffix, Maildir++ folder names in
modified UTF-7, dovecot-keywords, and a source's folders and messages."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kartero.migrate.maildir import (
    MaildirSource,
    folder_dirname,
    folder_name,
    format_info,
    format_keywords,
    parse_info,
    parse_keywords,
)
from kartero.migrate.model import FolderFound, MessageFound, Unreadable


@pytest.mark.parametrize(("name", "flags", "letters"), [
    ("1700000000.M1P2.host,S=30:2,RS", {"\\Answered", "\\Seen"}, ""),
    ("1700000000.M1P2.host,S=30:2,DFPRST", {"\\Draft", "\\Flagged", "\\Answered", "\\Seen", "\\Deleted"}, ""),
    ("1700000000.M1P2.host:2,Sbza", {"\\Seen"}, "abz"),
    ("1700000000.M1P2.host", set(), ""),  # new/: no info
    ("1700000000.M1P2.host:2,", set(), ""),
    ("1700000000.M1P2.host:1,S", set(), ""),  # experimental info 1: no flags
    ("odd:2,X?S", {"\\Seen"}, ""),
])  # fmt: skip
def test_issue_15_info_suffix(name: str, flags: set[str], letters: str) -> None:
    assert parse_info(name) == (flags, letters)


def test_issue_15_info_written_in_ascii_order() -> None:
    assert format_info({"\\Seen", "\\Draft", "\\Answered", "\\Flagged", "\\Deleted", "$x"}, "ca") == ":2,DFRSTac"
    assert format_info(set()) == ":2,"


@pytest.mark.parametrize(("dirname", "name"), [
    (".Sent", "Sent"),
    (".Archive.2024", "Archive/2024"),
    (".Entw&APw-rfe", "Entwürfe"),
    (".&ZeVnLIqe-.&U,BTFw-", "日本語/台北"),
    (".inbox.sub", "INBOX/sub"),
    (".A&-B", "A&B"),
])  # fmt: skip
def test_issue_15_maildir_plus_plus_names(dirname: str, name: str) -> None:
    assert folder_name(dirname) == name
    assert folder_name(folder_dirname(name)) == name


@pytest.mark.parametrize("dirname", ["Sent", ".", "..", ".Bad&Jjo", ".Bad&-&ZeV"])
def test_issue_15_not_maildir_plus_plus_names(dirname: str) -> None:
    with pytest.raises(ValueError):
        folder_name(dirname)


def test_issue_15_dovecot_keywords_file() -> None:
    text = "0 $Label1\n1 Work\n\n26 TooFar\nx junk\n3 bad(keyword\n2 $Forwarded\n"
    assert parse_keywords(text) == {"a": "$Label1", "b": "Work", "c": "$Forwarded"}
    assert parse_keywords(format_keywords({"a": "$Label1", "c": "Later"})) == {"a": "$Label1", "c": "Later"}


def _message(folder: Path, sub: str, name: str, data: bytes, mtime: int) -> None:
    (folder / sub).mkdir(parents=True, exist_ok=True)
    (folder / sub / name).write_bytes(data)
    os.utime(folder / sub / name, (mtime, mtime))


def test_issue_15_maildir_source_reads_folders_flags_keywords_and_dates(tmp_path: Path) -> None:
    root = tmp_path / "Maildir"
    for folder in (root, root / ".Archive.2024", root / ".Bad&Jjo"):
        for sub in ("cur", "new", "tmp"):
            (folder / sub).mkdir(parents=True)
    (root / "dovecot-keywords").write_text("0 $Label1\n1 Work\n")
    _message(root, "cur", "2.M2.h:2,RSb", b"Subject: 2\n\nsecond\n", 1_700_000_200)
    _message(root, "new", "1.M1.h", b"Subject: 1\n\nfirst\n", 1_700_000_100)
    _message(root, "tmp", "3.M3.h", b"half delivered", 1_700_000_300)
    _message(root / ".Archive.2024", "cur", "4.M4.h:2,Ta", b"\xff no header\r\n", 1_700_000_400)
    source = MaildirSource(root, tmp_path / "work")
    assert source.identity == f"maildir:{root.resolve()}" and source.total == 3
    items = list(source.items())
    assert isinstance(items[0], Unreadable) and "Bad&Jjo" in items[0].folder
    found = [(i.folder, i.body.data, set(i.flags), i.internal_date) if isinstance(i, MessageFound) else i
             for i in items[1:]]  # fmt: skip
    assert found == [
        FolderFound("INBOX"),
        ("INBOX", b"Subject: 1\r\n\r\nfirst\r\n", set(), 1_700_000_100),
        ("INBOX", b"Subject: 2\r\n\r\nsecond\r\n", {"\\Answered", "\\Seen", "Work"}, 1_700_000_200),
        FolderFound("Archive/2024"),
        ("Archive/2024", b"\xff no header\r\n", {"\\Deleted"}, 1_700_000_400),  # no keywords file there
    ]
