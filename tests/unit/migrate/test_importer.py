"""Issue 15: the import run (kartero/migrate/importer.py) into a real store: folders made with their
superiors, flags and dates kept, unreadable things counted, a rerun stores nothing."""

from __future__ import annotations

from pathlib import Path

from kartero.migrate.buffer import capture_bytes
from kartero.migrate.importer import Importer
from kartero.migrate.model import FolderFound, Item, MessageFound, Unreadable
from kartero.store.imports_sql import SqlImportLedger
from kartero.store.sqlite import SQLiteStore


def _items(work: Path) -> list[Item]:
    def message(folder: str, data: bytes, flags: frozenset[str], date: int) -> MessageFound:
        return MessageFound(folder, capture_bytes(data, work, crlf=False), flags, date, "s@x.example")

    return [
        FolderFound("INBOX"),
        message("INBOX", b"Subject: 1\r\n\r\none\r\n", frozenset({"\\Seen", "$Label1"}), 1_600_000_000),
        message("INBOX", b"Subject: 1\r\n\r\none\r\n", frozenset(), 1_600_000_001),  # the same bytes again
        FolderFound("Archive/2024/Q1"),
        message("Archive/2024/Q1", b"\xff\xfe not a message at all", frozenset({"\\Deleted"}), 1_500_000_000),
        Unreadable("Archive/2024/Q1", "/x/cur/3: Permission denied"),
        FolderFound("Bad/*"),
        message("Bad/*", b"lost", frozenset(), 1),
    ]


def test_issue_15_import_run_and_rerun(sqlite_store: SQLiteStore, tmp_path: Path) -> None:
    store = sqlite_store
    progress: list[int] = []
    first = Importer(store.mail, SqlImportLedger(store.database), 1, "test:", progress.append).run(_items(tmp_path))
    assert (first.imported, first.skipped, first.failed) == (3, 0, 2)
    assert first.folders_created == ["Archive/2024", "Archive/2024/Q1"]  # Archive exists in every account
    assert sum(progress) == 5 and any("Bad/*" in p for p in first.problems)
    rows = {}
    for name in ("INBOX", "Archive/2024/Q1"):
        box = store.mail.get_mailbox(1, name)
        assert box is not None
        rows[name] = [(store.mail.read_message(r.blob_id), set(r.flags), r.internal_date)
                      for r in store.mail.message_rows(box.id)]  # fmt: skip
    assert rows == {
        "INBOX": [(b"Subject: 1\r\n\r\none\r\n", {"\\Seen", "$Label1"}, 1_600_000_000),
                  (b"Subject: 1\r\n\r\none\r\n", set(), 1_600_000_001)],
        "Archive/2024/Q1": [(b"\xff\xfe not a message at all", {"\\Deleted"}, 1_500_000_000)],
    }  # fmt: skip
    again = Importer(store.mail, SqlImportLedger(store.database), 1, "test:").run(_items(tmp_path))
    assert (again.imported, again.skipped, again.failed) == (0, 3, 2)
    assert not any(p.suffix == ".import" for p in tmp_path.rglob("*"))  # every buffer file went
