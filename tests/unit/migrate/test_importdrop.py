"""Issue 15: the import drop (kartero/migrate/importdrop.py), through which `kartero import` hands batches
to a server running on the embedded store: the file format round trip, hostile files refused in bounded
work, the pickup storing each message once however often a file is taken in, the command's writer
counting what the server stored and stopping with a clear error when the server stops."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kartero.migrate import importdrop
from kartero.migrate.buffer import MEMORY_LIMIT, capture_bytes
from kartero.migrate.importdrop import (
    MAGIC,
    DropBatch,
    DropError,
    DropMessage,
    DropWriter,
    ImportPickup,
    decode_meta,
    encode_meta,
    read_batch,
    write_batch,
)
from kartero.migrate.importer import Importer
from kartero.migrate.model import FolderFound, Item, MessageFound
from kartero.store.imports_sql import SqlImportLedger
from kartero.store.interface import Content, FileSpan
from kartero.store.sqlite import SQLiteStore

SOURCE = "mbox:/var/mail/bob"


def _message(data: bytes, folder: str = "INBOX", *, blob: str = "0" * 23 + "1", occurrence: int = 1,
             flags: frozenset[str] = frozenset(), date: int = 1_600_000_000,
             sender: str = "") -> DropMessage:  # fmt: skip
    return DropMessage(folder, hashlib.sha256(data).hexdigest(), occurrence, blob, flags, date, sender, len(data))


def _batch(*messages: DropMessage) -> DropBatch:
    return DropBatch(1, SOURCE, messages)


def _data(data: bytes | Content) -> bytes:
    if isinstance(data, bytes):
        return data
    assert isinstance(data.tail, FileSpan)
    with open(data.tail.path, "rb") as f:
        f.seek(data.tail.offset)
        return data.head + f.read(data.tail.length)


def test_issue_15_importdrop_round_trip(tmp_path: Path) -> None:
    """Small messages come back in memory, the rest as spans of the file; a body given as a file span
    (a large buffered message) is copied into the drop file."""
    small = b"Subject: one\r\n\r\nbody\r\n"
    large = b"x" * (MEMORY_LIMIT + 10)
    spooled = tmp_path / "spooled"
    spooled.write_bytes(b"junk" + large + b"junk")
    batch = _batch(
        _message(small, "Archiv/Entwürfe", flags=frozenset({"\\Seen", "$Label1"}), sender="a@example.org"),
        _message(large, blob="0" * 23 + "2", occurrence=2, date=0),
        _message(b"", blob="0" * 23 + "3"),
    )
    path = write_batch(tmp_path / "drop", batch, [small, Content(b"", FileSpan(spooled, 4, len(large))), b""])
    assert path.name.endswith(".batch") and [p.name for p in path.parent.iterdir()] == [path.name]
    read = read_batch(path)
    assert read.batch == batch
    assert read.data[0] == small and isinstance(read.data[1], Content) and read.data[2] == b""
    assert [_data(d) for d in read.data] == [small, large, b""]


def _meta(**changes: object) -> dict[str, object]:
    meta = json.loads(encode_meta(_batch(_message(b"m"))))
    message = meta["messages"][0]
    for key, value in changes.items():
        if key in message:
            message[key] = value
        else:
            meta[key] = value
    return meta


@pytest.mark.parametrize("changes", [
    {"account": 0}, {"account": True}, {"account": "1"}, {"source": ""}, {"source": "x" * 5000},
    {"messages": []}, {"messages": [{}] * 101}, {"folder": "a//b"}, {"folder": "inbox"}, {"folder": "a*"},
    {"folder": "x" * 1001}, {"digest": "A" * 64}, {"digest": "0" * 63}, {"blob": "../../etc/passwd"},
    {"flags": ["\\Recent"]}, {"flags": ["a b"]}, {"flags": ["\\Seen", "\\seen"]}, {"flags": ["k"] * 70},
    {"flags": [1]}, {"flags": "\\Seen"}, {"date": -1}, {"date": 1.5}, {"date": 1 << 41}, {"size": -1},
    {"occurrence": 0}, {"sender": "a\r\nb"}, {"sender": "a" * 1025}, {"extra": 1},
])  # fmt: skip
def test_issue_15_importdrop_refuses_every_bad_field(changes: dict[str, object]) -> None:
    with pytest.raises(DropError):
        decode_meta(json.dumps(_meta(**changes)).encode())


def test_issue_15_importdrop_hostile_descriptions_are_refused_in_bounded_work(tmp_path: Path) -> None:
    """Nesting past the interpreter's recursion limit, a line longer than a batch can have (read no
    further than the limit), a FIFO (never waited on), a link (not followed)."""
    with pytest.raises(DropError):
        decode_meta(b"[" * 1_000_000)
    long = tmp_path / "long.batch"
    long.write_bytes(MAGIC + b" " * (importdrop.MAX_META + 10) + b"\n")
    started = time.process_time()
    with pytest.raises(DropError, match="description line"):
        read_batch(long)
    assert time.process_time() - started < 5
    fifo = tmp_path / "fifo.batch"
    os.mkfifo(fifo)
    with pytest.raises(DropError, match="regular"):
        read_batch(fifo)
    link = tmp_path / "link.batch"
    link.symlink_to(long)
    with pytest.raises(OSError):
        read_batch(link)


def test_issue_15_importdrop_sizes_and_digests_must_match_the_bytes(tmp_path: Path) -> None:
    good = write_batch(tmp_path, _batch(_message(b"abc"), _message(b"def", blob="0" * 23 + "2")), [b"abc", b"def"])
    raw = good.read_bytes()
    for name, data in (("short", raw[:-1]), ("long", raw + b"x"), ("swapped", raw[:-6] + b"defabc")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DropError):
            read_batch(tmp_path / name)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_issue_15_importdrop_any_bytes_are_refused_or_read(tail: bytes) -> None:
    """Whatever follows the magic line, reading ends in DropError or a checked batch, never another error."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "x.batch"
        path.write_bytes(MAGIC + tail)
        with contextlib.suppress(DropError):
            read_batch(path)


_VALID = MAGIC + encode_meta(_batch(_message(b"Subject: x\r\n\r\ny\r\n", flags=frozenset({"\\Seen"})))) + b"\n"
_VALID += b"Subject: x\r\n\r\ny\r\n"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(_VALID) - 1), st.integers(0, 255)), min_size=1, max_size=4))
def test_issue_15_importdrop_a_damaged_file_is_refused_or_read_whole(flips: list[tuple[int, int]]) -> None:
    """A valid file with bytes changed: DropError, or a batch whose messages are the file's bytes exactly."""
    import tempfile

    raw = bytearray(_VALID)
    for position, value in flips:
        raw[position] = value
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "x.batch"
        path.write_bytes(bytes(raw))
        try:
            read = read_batch(path)
        except DropError:
            return
        body = b"".join(_data(d) for d in read.data)
        assert raw.endswith(body) and all(hashlib.sha256(_data(d)).hexdigest() == m.digest
                                          for d, m in zip(read.data, read.batch.messages, strict=True))  # fmt: skip


def _items(work: Path, count: int) -> list[Item]:
    items: list[Item] = [FolderFound("INBOX"), FolderFound("Live")]
    for n in range(count):
        data = b"Subject: %d\r\n\r\nbody\r\n" % n
        folder = "INBOX" if n % 2 else "Live"
        captured = capture_bytes(data, work, crlf=False)
        items.append(MessageFound(folder, captured, frozenset({"\\Seen"}), 1_600_000_000 + n))
    return items


def _stored(store: SQLiteStore) -> list[tuple[str, bytes, int]]:
    rows = []
    for name in ("INBOX", "Live"):
        box = store.mail.get_mailbox(1, name)
        assert box is not None
        rows += [(name, store.mail.read_message(r.blob_id), r.internal_date) for r in store.mail.message_rows(box.id)]
    return rows


def test_issue_15_an_import_through_the_drop_stores_each_message_once(sqlite_store: SQLiteStore,
                                                                     tmp_path: Path) -> None:  # fmt: skip
    """The command's writer with a server that takes each file in as it is nudged; a file taken in twice
    (the server crashed before removing it) and a rerun store nothing more."""
    store = sqlite_store
    ledger = SqlImportLedger(store.database)
    data_dir = tmp_path / "data"
    pickup = ImportPickup(data_dir, store.mail, ledger)
    kept: list[bytes] = []

    def nudge() -> None:
        kept.extend(p.read_bytes() for p in sorted(importdrop.drop_dir(data_dir).glob("*.batch")))
        pickup.run_once()

    writer = DropWriter(data_dir, 1, SOURCE, ledger, nudge, lambda: True)
    outcome = Importer(store.mail, ledger, 1, SOURCE, handover=writer).run(_items(tmp_path, 250))
    assert (outcome.imported, outcome.skipped, outcome.failed) == (250, 0, 0)
    first = _stored(store)
    assert len(first) == 250 and len(kept) == 3  # three batches of at most 100
    assert first == [(folder, b"Subject: %d\r\n\r\nbody\r\n" % n, 1_600_000_000 + n)  # UIDs in the source's order
                     for folder, parity in (("INBOX", 1), ("Live", 0)) for n in range(250) if n % 2 == parity]
    for n, raw in enumerate(kept):  # each file again, as after a crash between storing and removing it
        (importdrop.drop_dir(data_dir) / f"again{n}.batch").write_bytes(raw)
    assert pickup.run_once() == 0 and _stored(store) == first
    assert not list(importdrop.drop_dir(data_dir).iterdir())
    again = Importer(store.mail, ledger, 1, SOURCE, handover=writer).run(_items(tmp_path, 250))
    assert (again.imported, again.skipped, again.failed) == (0, 250, 0)


def test_issue_15_the_writer_stops_when_the_server_does(monkeypatch: pytest.MonkeyPatch, sqlite_store: SQLiteStore,
                                                        tmp_path: Path) -> None:  # fmt: skip
    """The server is gone: the command stops with the count of what waits; the server, when it runs,
    stores it and settles the ledger, though the command never confirmed anything; a rerun skips it."""
    monkeypatch.setattr(importdrop, "ALIVE_CHECK_S", 0.0)
    store = sqlite_store
    ledger = SqlImportLedger(store.database)
    data_dir = tmp_path / "data"
    writer = DropWriter(data_dir, 1, SOURCE, ledger, lambda: None, lambda: False)
    importer = Importer(store.mail, ledger, 1, SOURCE, handover=writer)
    with pytest.raises(DropError, match="the server stopped: 200 messages wait in"):
        importer.run(_items(tmp_path, 250))  # the third batch finds two waiting
    assert (importer.outcome.imported, importer.outcome.failed) == (0, 250)
    assert len(list(importdrop.drop_dir(data_dir).glob("*.batch"))) == 2  # kept for the server
    assert ImportPickup(data_dir, store.mail, ledger).run_once() == 200
    rerun = Importer(store.mail, ledger, 1, SOURCE).run(_items(tmp_path, 250))
    assert (rerun.imported, rerun.skipped) == (50, 200) and len(_stored(store)) == 250


def test_issue_15_a_garbage_drop_file_is_set_aside(sqlite_store: SQLiteStore, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    folder = importdrop.drop_dir(data_dir)
    folder.mkdir(parents=True)
    (folder / "a.batch").write_bytes(MAGIC + b"{}\n")
    (folder / "b.batch").mkdir()
    (folder / ".c.tmp").write_bytes(b"half written")
    old = time.time() - 2 * importdrop.STALE_TMP_S
    os.utime(folder / ".c.tmp", (old, old))
    (folder / ".d.tmp").write_bytes(b"being written")
    pickup = ImportPickup(data_dir, sqlite_store.mail, SqlImportLedger(sqlite_store.database))
    assert pickup.run_once() == 0
    assert sorted(p.name for p in folder.iterdir()) == [".d.tmp", "corrupt"]
    assert sorted(p.name for p in (folder / "corrupt").iterdir()) == ["a.batch", "b.batch"]
    shutil.rmtree(folder)
    assert pickup.run_once() == 0  # no folder: nothing to do


def test_issue_15_a_commit_that_never_ends_holds_the_pickup_for_its_wait_only() -> None:
    """The server's pickup thread waited on the committer with no deadline; a group that outlasts the wait
    is not handed over again one by one (it may still commit: that would store it twice)."""
    from concurrent.futures import Future

    from kartero.migrate.importer import store_deliveries

    class Stuck:
        singles = 0

        def deliver_group(self, deliveries: object) -> Future[None]:
            return Future()  # never done

        def deliver(self, delivery: object) -> Future[None]:
            self.singles += 1
            return Future()

    mail = Stuck()
    results = store_deliveries(mail, [object(), object(), object()], 0.05)  # type: ignore[arg-type, list-item]
    assert [type(r) for r in results] == [TimeoutError] * 3
    assert mail.singles == 0
