"""Issue 15: reading another IMAP server's answers (kartero/migrate/imap_source.py): URLs, LIST lines,
FETCH answers as imaplib returns them, batches bounded by size."""

from __future__ import annotations

from pathlib import Path

import pytest

from kartero.migrate import imap_source
from kartero.migrate.imap_source import ImapUrl, folder_of, parse_fetch, parse_imap_url, parse_list_line


@pytest.mark.parametrize(("url", "expected"), [
    ("imaps://bob%40example.org@mail.example.org", ImapUrl("mail.example.org", 993, "bob@example.org", True)),
    ("imap://bob@example.org@127.0.0.1:1143", ImapUrl("127.0.0.1", 1143, "bob@example.org", False)),
    ("imaps://bob@[::1]:994/INBOX", ImapUrl("::1", 994, "bob", True)),
])  # fmt: skip
def test_issue_15_imap_urls(url: str, expected: ImapUrl) -> None:
    assert parse_imap_url(url) == expected


@pytest.mark.parametrize("url", ["http://bob@host", "imaps://host:993", "imaps://bob@host:99999", "imaps://bob@"])
def test_issue_15_bad_imap_urls(url: str) -> None:
    with pytest.raises(ValueError):
        parse_imap_url(url)


def test_issue_15_list_lines() -> None:
    assert parse_list_line(b'(\\HasNoChildren) "/" "INBOX"') == (frozenset({"\\hasnochildren"}), "/", b"INBOX")
    assert parse_list_line(b'(\\Noselect \\HasChildren) "." Archive') == (
        frozenset({"\\noselect", "\\haschildren"}), ".", b"Archive")  # fmt: skip
    assert parse_list_line((b'() "\\\\" {7}', b'a "b" c')) == (frozenset(), "\\", b'a "b" c')
    assert parse_list_line(b'() NIL "With \\"quote\\""') == (frozenset(), "", b'With "quote"')
    assert parse_list_line(b"garbage") is None
    assert folder_of(b"Archive.Entw&APw-rfe", ".") == "Archive/Entwürfe"
    assert folder_of(b"inbox/Sub", "/") == "INBOX/Sub"
    with pytest.raises(ValueError):
        folder_of(b"Bad&Jjo", "/")


def test_issue_15_fetch_answers_with_items_before_and_after_the_literal() -> None:
    data: list[bytes | tuple[bytes, bytes]] = [
        (b'1 (UID 7 FLAGS (\\Seen) INTERNALDATE "29-Nov-2026 10:00:00 +0000" BODY[] {3}', b"abc"), b")",
        (b"2 (UID 9 BODY[] {2}", b"de"), b' FLAGS ($Label1) INTERNALDATE "29-Nov-2026 10:00:00 +0100")',
        b"3 (FLAGS (\\Deleted))",  # another client's change, reported unasked
    ]  # fmt: skip
    assert list(parse_fetch(data)) == [
        (b'1 (UID 7 FLAGS (\\Seen) INTERNALDATE "29-Nov-2026 10:00:00 +0000" BODY[] {3})', b"abc"),
        (b'2 (UID 9 BODY[] {2} FLAGS ($Label1) INTERNALDATE "29-Nov-2026 10:00:00 +0100")', b"de"),
        (b"3 (FLAGS (\\Deleted))", None),
    ]


def test_issue_15_fetches_are_grouped_by_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(imap_source, "FETCH_BYTES", 100)
    sizes = [b"1 (UID 1 RFC822.SIZE 60)", b"2 (UID 2 RFC822.SIZE 30)", b"3 (UID 3 RFC822.SIZE 500)",
             b"4 (RFC822.SIZE 20 UID 4)", None, b"junk"]  # fmt: skip
    assert imap_source._group_by_size(sizes) == [[1, 2], [3], [4]]


class _Listing:
    """What ImapSource asks of imaplib before it reads any message: LIST and STATUS."""

    def __init__(self, lines: list[bytes | tuple[bytes, bytes] | None]) -> None:
        self.lines = lines

    def list(self) -> tuple[str, list[bytes | tuple[bytes, bytes] | None]]:
        return "OK", self.lines

    def status(self, name: str, items: str) -> tuple[str, list[bytes]]:
        return "OK", [name.encode() + b" (MESSAGES 2)"]


def test_issue_15_folders_of_an_imap_account(tmp_path: Path) -> None:
    conn = _Listing([
        b'(\\HasNoChildren) "." INBOX', b'(\\HasNoChildren \\Sent) "." "Sent Items"',
        b'(\\Noselect \\HasChildren) "." "[Gmail]"', (b'(\\HasNoChildren \\Trash) "." {11}', b"[Gmail].Bin"), b"",
        b'(\\HasNoChildren) "." "Projekte.Entw&APw-rfe"', b'(\\HasNoChildren) "." "Bad&Jjo"', b"nonsense", None,
    ])  # fmt: skip
    source = imap_source.ImapSource(conn, ImapUrl("h", 993, "u", True), tmp_path)  # type: ignore[arg-type]
    assert [(f, raw) for f, raw, _ in source.folders] == [
        ("INBOX", b"INBOX"), ("Projekte/Entwürfe", b"Projekte.Entw&APw-rfe"), ("Sent", b"Sent Items"),
        ("Trash", b"[Gmail].Bin"),
    ]  # fmt: skip
    assert source.total == 8 and source.identity == "imaps://u@h:993"
    assert [p.problem for p in source.problems] == ["mailbox name b'Bad&Jjo' is not modified UTF-7",
                                                    "unreadable LIST answer b'nonsense'"]  # fmt: skip


def test_issue_15_a_fetch_answer_is_read_in_linear_time(tmp_path: Path) -> None:
    """A FETCH answer full of `FLAGS (` (or `INTERNALDATE "`) without the closing character: the regex
    search scanned to the end from each one (140 KB: 14 s; imaplib takes lines of 1 MB)."""
    import time

    source = imap_source.ImapSource.__new__(imap_source.ImapSource)
    source._work_dir = tmp_path
    for junk in (b"FLAGS (" * 150_000, b'INTERNALDATE "' * 80_000):
        started = time.process_time()
        item = source._message("INBOX", b"1 (UID 7 " + junk, b"Subject: x\r\n\r\n")
        assert time.process_time() - started < 5
        assert item == imap_source.Unreadable("INBOX", "no INTERNALDATE for UID 7")
    good = source._message("INBOX", b'1 (UID 7 FLAGS (\\Seen $Work) INTERNALDATE "29-Nov-2026 10:00:00 +0000"',
                           b"Subject: x\r\n\r\n")  # fmt: skip
    assert isinstance(good, imap_source.MessageFound)
    assert (good.flags, good.internal_date) == ({"\\Seen", "$Work"}, 1_795_946_400)


class _Liar:
    """A server whose EXAMINE says 10^15 messages and whose FETCH then has none of them."""

    fetched = 0

    def select(self, name: str, readonly: bool) -> tuple[str, list[bytes]]:
        return "OK", [b"1000000000000000"]

    def fetch(self, wanted: str, items: str) -> tuple[str, list[bytes | None]]:
        self.fetched += 1
        return "OK", [None]


def test_issue_15_a_server_counting_messages_it_does_not_have_ends_the_folder(tmp_path: Path) -> None:
    """The loop over EXISTS ran 10^13 FETCHes for a server that says 10^15 messages."""
    conn = _Liar()
    source = imap_source.ImapSource.__new__(imap_source.ImapSource)
    source._conn, source._work_dir = conn, tmp_path  # type: ignore[assignment]
    items = list(source._folder("INBOX", b"INBOX"))
    assert conn.fetched == 1
    assert [item.problem for item in items if isinstance(item, imap_source.Unreadable)] == [
        f"the server says 1000000000000000 messages: only the first {imap_source.MAX_MESSAGES} are read",
        "the server has no messages 1:10000000 it counted",
    ]
