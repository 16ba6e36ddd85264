"""Issue 12, IMAP QUOTA (RFC 9208): GETQUOTAROOT, GETQUOTA, SETQUOTA refused, STATUS DELETED and
DELETED-STORAGE, and NO [OVERQUOTA] on APPEND and COPY past the limit (MOVE allowed), as transcripts."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kartero.store.sqlite import SQLiteStore
from tests.unit.imap.harness import SETTINGS, Client, play

Factory = Callable[..., Client]
# 600 octets: 15 of header and blank line, then the body the transcript's last client line carries.
BODY = "x" * 585
APPEND_600 = f"""
        C: {{tag}} APPEND {{mailbox}} {{{{600+}}}}
        C: Subject: hi
        C:
        C: {BODY}"""


def append(tag: str, mailbox: str = "INBOX") -> str:
    return APPEND_600.format(tag=tag, mailbox=mailbox)


@pytest.fixture
def client(tmp_path: Path) -> Iterator[Factory]:
    """Logged-in clients over a store of their own each (a transcript is played twice), bob's quota set
    to `quota` (None: the default, `default_quota`)."""
    stores: list[SQLiteStore] = []
    numbers = itertools.count()

    def make(quota: int | None = None, default_quota: int = 0) -> Client:
        store = SQLiteStore(tmp_path / str(next(numbers)))
        stores.append(store)
        store.accounts.add_account("bob@example.test", "unused")
        store.accounts.set_quota("bob@example.test", quota)
        store.start()
        c = Client(store=store, settings=dataclasses.replace(SETTINGS, default_quota=default_quota))
        c.greeting += b"".join(c.command("a LOGIN bob@example.test pw"))
        return c

    yield make
    for store in stores:
        store.close()


LOGIN = r"""
    S~ \* OK \[CAPABILITY .*\] imap.example.test Kartero IMAP4rev2 ready
    S~ a OK \[CAPABILITY .* QUOTA QUOTA=RES-STORAGE( .*)?\] Logged in
"""


def test_issue_12_without_a_limit_there_is_no_quota_root(client: Factory) -> None:
    """RFC 9208 §4.3.2: a mailbox may have no quota root; SETQUOTA is the admin's (§4.2.3 allows NO)."""
    play(client, LOGIN + """
        C: b GETQUOTAROOT INBOX
        S: * QUOTAROOT "INBOX"
        S: b OK GETQUOTAROOT completed
        C: c GETQUOTA ""
        S: c NO [NONEXISTENT] No such quota root
        C: d SETQUOTA "" (STORAGE 512)
        S: d NO [NOPERM] Only the administrator sets quotas
        C: e GETQUOTAROOT Nowhere
        S: e NO [NONEXISTENT] No such mailbox
        C: f SETQUOTA "" (STORAGE)
        S: f BAD SETQUOTA takes resource name and limit pairs
        C: g GETQUOTA
        S: g BAD GETQUOTA: missing quota root
    """ + append("h") + r"""
        S~ h OK \[APPENDUID \d+ 1\] APPEND completed
    """)  # fmt: skip


def test_issue_12_usage_and_limit_in_kib_and_append_past_the_limit(client: Factory) -> None:
    """1100 octets allowed: shown as 1 KiB (rounded down); 600 octets used show as 1 (rounded up). A
    second message of 600 would pass the limit: NO [OVERQUOTA], nothing stored (RFC 9208 §4.1)."""
    play(lambda: client(1100), LOGIN + """
        C: b GETQUOTAROOT INBOX
        S: * QUOTAROOT "INBOX" ""
        S: * QUOTA "" (STORAGE 0 1)
        S: b OK GETQUOTAROOT completed
    """ + append("c") + r"""
        S~ c OK \[APPENDUID \d+ 1\] APPEND completed
        C: d GETQUOTA ""
        S: * QUOTA "" (STORAGE 1 1)
        S: d OK GETQUOTA completed
    """ + append("e", "Trash") + """
        S: e NO [OVERQUOTA] Quota exceeded (mailbox is full)
        C: f STATUS Trash (MESSAGES SIZE)
        S: * STATUS "Trash" (MESSAGES 0 SIZE 0)
        S: f OK STATUS completed
        C: g GETQUOTAROOT Trash
        S: * QUOTAROOT "Trash" ""
        S: * QUOTA "" (STORAGE 1 1)
        S: g OK GETQUOTAROOT completed
    """)  # fmt: skip


def test_issue_12_the_default_quota_applies_to_accounts_without_their_own(client: Factory) -> None:
    play(lambda: client(None, 4096), LOGIN + """
        C: b GETQUOTA ""
        S: * QUOTA "" (STORAGE 0 4)
        S: b OK GETQUOTA completed
    """)  # fmt: skip
    play(lambda: client(0, 4096), LOGIN + """
        C: b GETQUOTA ""
        S: b NO [NONEXISTENT] No such quota root
    """)  # fmt: skip


def test_issue_12_copy_past_the_limit_is_refused_and_move_allowed(client: Factory) -> None:
    c = client(1100)
    assert b"b OK [APPENDUID" in c.send(b"b APPEND INBOX {600+}\r\nSubject: hi\r\n\r\n" + BODY.encode() + b"\r\n")
    c.select()
    assert c.command("c COPY 1 Trash") == [b"c NO [OVERQUOTA] Quota exceeded (mailbox is full)\r\n"]
    moved = c.command("d MOVE 1 Trash")
    assert moved[-1] == b"d OK MOVE completed" + b"\r\n" and b"* 1 EXPUNGE\r\n" in moved
    assert c.command("e STATUS Trash (MESSAGES SIZE DELETED DELETED-STORAGE)") == [
        b'* STATUS "Trash" (MESSAGES 1 SIZE 600 DELETED 0 DELETED-STORAGE 0)\r\n', b"e OK STATUS completed\r\n"]
    c.command("f SELECT Trash")
    c.command("g STORE 1 +FLAGS.SILENT (\\Deleted)")
    assert c.command("h STATUS Trash (DELETED DELETED-STORAGE)") == [
        b'* STATUS "Trash" (DELETED 1 DELETED-STORAGE 1)\r\n', b"h OK STATUS completed\r\n"]
    c.command("i EXPUNGE")
    assert c.command('j GETQUOTA ""') == [b'* QUOTA "" (STORAGE 0 1)\r\n', b"j OK GETQUOTA completed\r\n"]
    assert c.command("k COPY 1:* INBOX")[-1] == b"k OK COPY completed (no messages)\r\n"
