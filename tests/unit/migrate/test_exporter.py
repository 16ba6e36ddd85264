"""Issue 15: `kartero export` writes what it can when a folder's name cannot become a file name here."""

from __future__ import annotations

import mailbox
import os
from pathlib import Path

import pytest

from kartero.migrate.exporter import export_account
from kartero.store.ids import new_message_id
from kartero.store.interface import INBOX, Delivery, DeliveryTarget
from kartero.store.sqlite import SQLiteStore

MESSAGE = b"Subject: hi\r\n\r\nbody\r\n"


def _deliver(store: SQLiteStore, folder: str) -> None:
    if folder != INBOX and store.mail.get_mailbox(1, folder) is None:
        store.mail.create_mailbox(1, folder)
    store.mail.deliver(Delivery(new_message_id(), MESSAGE, (DeliveryTarget(1, folder),), 1_700_000_000)).result(10)


@pytest.mark.parametrize("fmt", ["maildir", "mbox"])
def test_issue_15_export_goes_on_past_a_folder_whose_name_the_file_system_refuses(
    sqlite_store: SQLiteStore, tmp_path: Path, fmt: str
) -> None:
    """IMAP takes a level of up to 1000 octets, a file system one of 255: the export stopped at that folder
    ("File name too long", exit 1), leaving every folder after it unwritten. Likewise a folder `a.mbox/b`
    after `a` (whose a.mbox file is where the mbox export wants a directory)."""
    long = "L" * 300
    for folder in (INBOX, "a", "a.mbox/b", long, "z"):
        _deliver(sqlite_store, folder)
    folders = len(sqlite_store.mail.list_mailboxes(1))  # the special-use ones too
    outcome = export_account(sqlite_store.mail, 1, tmp_path / "out", fmt)
    refused = [long] if fmt == "maildir" else ["a.mbox/b", long]
    assert (outcome.folders, outcome.messages, outcome.failed) == (folders, 5 - len(refused), len(refused))
    assert sorted(p.split(":")[0] for p in outcome.problems) == sorted(refused)
    assert all("not written (1 messages)" in p for p in outcome.problems)
    if fmt == "maildir":
        box = mailbox.Maildir(tmp_path / "out", factory=None, create=False)
        assert {"a", "a.mbox.b", "z"} <= set(box.list_folders())
        assert not any(name.startswith("L") for name in box.list_folders())
        assert len(box.get_folder("z")) == 1
    else:
        assert [len(mailbox.mbox(tmp_path / "out" / n)) for n in ("INBOX.mbox", "a.mbox", "z.mbox")] == [1, 1, 1]


@pytest.mark.parametrize("fmt", ["maildir", "mbox"])
def test_issue_15_export_is_on_disk_when_it_says_exported(
    sqlite_store: SQLiteStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    """The export wrote without any fsync or sync: a crash after "exported N messages" (and the account
    deleted next) could leave empty or missing files. Now the last thing it does is a sync(2)."""
    _deliver(sqlite_store, INBOX)
    _deliver(sqlite_store, "Archive/2024")
    events: list[str] = []
    real_rename = os.rename
    monkeypatch.setattr(os, "sync", lambda: events.append("sync"))
    monkeypatch.setattr(os, "rename", lambda source, target: (events.append("rename"), real_rename(source, target)))
    outcome = export_account(sqlite_store.mail, 1, tmp_path / "out", fmt)
    assert outcome.messages == 2
    assert events.count("rename") >= 2
    assert events[-1] == "sync"


@pytest.mark.parametrize("fmt", ["maildir", "mbox"])
def test_issue_15_exported_mail_is_readable_by_its_owner_only(sqlite_store: SQLiteStore, tmp_path: Path,
                                                              fmt: str) -> None:  # fmt: skip
    """Under the usual umask 022 the export's folders were 0755 and its files 0644: anyone on the machine
    could read the account's mail (a backup's files are 0600)."""
    _deliver(sqlite_store, "Archive/2024")
    keyword = DeliveryTarget(1, INBOX, frozenset({"$Label1"}))  # the Maildir export writes dovecot-keywords
    sqlite_store.mail.deliver(Delivery(new_message_id(), MESSAGE, (keyword,), 1_700_000_000)).result(10)
    umask = os.umask(0o022)
    try:
        export_account(sqlite_store.mail, 1, tmp_path / "out", fmt)
    finally:
        os.umask(umask)
    written = [tmp_path / "out", *(tmp_path / "out").rglob("*")]
    assert len(written) > 3
    assert fmt == "mbox" or (tmp_path / "out" / "dovecot-keywords").read_text() == "0 $Label1\n"
    assert {oct(p.stat().st_mode & 0o777) for p in written if p.is_dir()} == {"0o700"}
    assert {oct(p.stat().st_mode & 0o777) for p in written if p.is_file()} == {"0o600"}
