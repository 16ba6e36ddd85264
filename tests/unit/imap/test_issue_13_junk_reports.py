"""Issue 13: which IMAP commands report a message as spam or ham to the learner ([spam] learn): COPY and
MOVE (and their UID forms) into and out of Junk, STORE of $Junk/$NotJunk; APPEND and moves to Trash
report nothing. The handlers only hand reports over; kartero/filters/learn.py sends them."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from kartero.imap.commands.junk import flag_verdict
from kartero.store.interface import FlagOp, SpamClass, SpamReport
from kartero.store.sqlite import SQLiteStore
from tests.unit.imap.harness import Client

USER = "bob@example.test"


class Recorder:
    def __init__(self) -> None:
        self.reports: list[SpamReport] = []

    def report(self, reports: Sequence[SpamReport]) -> None:
        self.reports.extend(reports)

    def take(self) -> list[tuple[str, SpamClass]]:
        """(blob id, kind) of each report since the last call."""
        taken, self.reports = self.reports, []
        return [(r.blob_id, r.kind) for r in taken]


@pytest.fixture
def session(tmp_path: Path) -> Iterator[tuple[Client, Recorder, SQLiteStore]]:
    store = SQLiteStore(tmp_path)
    store.accounts.add_account(USER, "unused")
    store.start()
    client = Client(store=store)
    client.login(USER)
    assert client.session is not None
    recorder = Recorder()
    client.session.spam_reports = recorder
    yield client, recorder, store
    store.close()


def _append(client: Client, mailbox: str, text: str) -> str:
    """APPEND a message; returns its blob id."""
    data = f"Subject: {text}\r\n\r\n{text}\r\n".encode()
    out = client.send(f"ap APPEND {mailbox} {{{len(data)}+}}\r\n".encode() + data + b"\r\n")
    assert out.splitlines()[-1].startswith(b"ap OK"), out
    assert client.session is not None
    box = client.session.store.get_mailbox(client.session.account_id, mailbox)
    assert box is not None
    return client.session.store.message_rows(box.id)[-1].blob_id


def _ok(client: Client, line: str) -> None:
    lines = client.command(line)
    assert lines[-1].split(b" ")[1] == b"OK", lines


def test_issue_13_move_and_copy_into_junk_report_spam(session: tuple[Client, Recorder, SQLiteStore]) -> None:
    client, recorder, _ = session
    first = _append(client, "INBOX", "one")
    second = _append(client, "INBOX", "two")
    assert recorder.take() == []  # APPEND into INBOX says nothing
    client.select("INBOX")
    _ok(client, "m1 MOVE 1 Junk")
    assert recorder.reports == [SpamReport(USER, first, len(b"Subject: one\r\n\r\none\r\n"), SpamClass.SPAM)]
    assert recorder.take() == [(first, SpamClass.SPAM)]
    _ok(client, "c1 UID COPY 2 Junk")
    assert recorder.take() == [(second, SpamClass.SPAM)]
    _ok(client, "m2 UID MOVE 2 Junk")
    assert recorder.take() == [(second, SpamClass.SPAM)]


def test_issue_13_out_of_junk_reports_ham_but_not_into_trash(session: tuple[Client, Recorder, SQLiteStore]) -> None:
    client, recorder, _ = session
    first = _append(client, "Junk", "one")
    second = _append(client, "Junk", "two")
    assert recorder.take() == []  # APPEND into Junk does not learn
    client.select("Junk")
    _ok(client, "c1 COPY 1 Archive")
    assert recorder.take() == [(first, SpamClass.HAM)]
    _ok(client, "m1 UID MOVE 2 INBOX")
    assert recorder.take() == [(second, SpamClass.HAM)]
    _ok(client, "m2 MOVE 1 Trash")  # deleting a spam is no verdict on it
    assert recorder.take() == []
    _ok(client, "m3 COPY 1:* Junk")  # within Junk: nothing
    assert recorder.take() == []


def test_issue_13_special_use_decides_not_the_name(session: tuple[Client, Recorder, SQLiteStore]) -> None:
    """A mailbox created with \\Junk (RFC 6154) is a Junk mailbox whatever its name; "Spam" without it is not."""
    client, recorder, _ = session
    message = _append(client, "INBOX", "one")
    _ok(client, "k1 CREATE Spam")
    _ok(client, "k2 CREATE Filtered (USE (\\Junk))")
    client.select("INBOX")
    _ok(client, "c1 COPY 1 Spam")
    assert recorder.take() == []
    _ok(client, "c2 COPY 1 Filtered")
    assert recorder.take() == [(message, SpamClass.SPAM)]


def test_issue_13_junk_keywords_report(session: tuple[Client, Recorder, SQLiteStore]) -> None:
    client, recorder, _ = session
    first = _append(client, "INBOX", "one")
    second = _append(client, "INBOX", "two")
    client.select("INBOX")
    _ok(client, "s1 STORE 1 +FLAGS ($Junk)")
    assert recorder.take() == [(first, SpamClass.SPAM)]
    _ok(client, "s2 STORE 1 +FLAGS ($junk)")  # no change: nothing new to say
    assert recorder.take() == []
    _ok(client, "s3 UID STORE 1:2 +FLAGS.SILENT ($NotJunk)")
    assert recorder.take() == [(first, SpamClass.HAM), (second, SpamClass.HAM)]
    _ok(client, "s4 STORE 1 -FLAGS ($NotJunk)")
    _ok(client, "s5 STORE 2 FLAGS (\\Seen $Junk $NotJunk)")  # both: no verdict
    assert recorder.take() == []


def test_issue_13_no_reports_when_learning_is_off(session: tuple[Client, Recorder, SQLiteStore]) -> None:
    client, recorder, _ = session
    assert client.session is not None
    client.session.spam_reports = None
    _append(client, "INBOX", "one")
    client.select("INBOX")
    _ok(client, "m1 MOVE 1 Junk")
    _ok(client, "s1 STORE 1 +FLAGS ($Junk)")
    assert recorder.take() == []


@pytest.mark.parametrize(
    ("op", "flags", "verdict"),
    [
        (FlagOp.ADD, ["$Junk"], SpamClass.SPAM),
        (FlagOp.REPLACE, ["\\Seen", "$JUNK"], SpamClass.SPAM),
        (FlagOp.ADD, ["$NotJunk"], SpamClass.HAM),
        (FlagOp.REMOVE, ["$Junk"], None),
        (FlagOp.ADD, ["$Junk", "$NotJunk"], None),
        (FlagOp.ADD, ["Junk", "\\Flagged"], None),
    ],
)
def test_issue_13_flag_verdicts(op: FlagOp, flags: list[str], verdict: SpamClass | None) -> None:
    assert flag_verdict(op, flags) is verdict
