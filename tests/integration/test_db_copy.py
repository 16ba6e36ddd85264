"""Issue 11, `kartero db copy --from DATA_DIR`: an embedded store made by a real Kartero (SMTP deliveries
to two users, folders, flags, an expunge, METADATA, a queued message) moved into PostgreSQL, then served
by a Kartero on that database: IMAP sees the same UIDVALIDITY, UIDs, flags, MODSEQs, bytes and
tombstones, POP3 the same password, `queue list` the queued message. A second run copies nothing; a run
after rows went missing (an interrupted copy) fills exactly those."""

from __future__ import annotations

import imaplib
import poplib
import re
import smtplib
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from kartero.store.pg_db import migrate
from tests.integration.harness import KarteroServer, free_port, run_cli, run_cli_in_process, tls_context, wait_for
from tests.pgserver import PrivatePostgres

PASSWORD = "copy password"
USERS = ("bob@example.test", "carol@example.test")
# Delivery of remote mail goes to a port nothing listens on: the message stays queued, deferred.
DEAD_RELAY = free_port()
EXTRA = f'[delivery]\nrelayhost = "127.0.0.1:{DEAD_RELAY}"\nretry_first = "1h"\n'
# imaplib lets a command it does not know (METADATA, RFC 5464) run only in the state of its first use.
for _command in ("GETMETADATA", "SETMETADATA"):
    imaplib.Commands.setdefault(_command, ("AUTH", "SELECTED"))
BIG = b"".join(b"%07d big line of a large message, to pass one blob_chunks row\r\n" % n for n in range(40000))


@dataclass
class Embedded:
    server: KarteroServer
    before: dict[str, Any]  # user -> IMAP snapshot
    queue_id: str
    while_running: Any  # `db copy` run while the embedded store's server ran
    keys: str  # `kartero dkim list` of the embedded store

    @property
    def data_dir(self) -> str:
        return str(self.server.root / "data")


def _send(server: KarteroServer, to: list[str], subject: str, body: bytes = b"Hello.\r\n") -> None:
    message = (
        f"From: alice@elsewhere.test\r\nTo: {', '.join(to)}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '.')}@elsewhere.test>\r\n\r\n"
    ).encode() + body
    with smtplib.SMTP(server.host, server.port, timeout=30) as smtp:
        smtp.sendmail("alice@elsewhere.test", to, message)


def _imap(server: KarteroServer, user: str) -> imaplib.IMAP4:
    imap = imaplib.IMAP4(server.host, server.imap_port, timeout=30)
    imap.login(user, PASSWORD)
    assert imap.enable("QRESYNC")[0] == "OK"
    return imap


def _ok(result: tuple[str, Any]) -> Any:
    assert result[0] == "OK", result
    return result[1]


def snapshot(server: KarteroServer, user: str) -> dict[str, Any]:
    """What a client caches of `user`'s account, read without changing anything (EXAMINE): folders and
    subscriptions, each folder's STATUS (UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ, MAILBOXID), every message's
    UID, FLAGS, MODSEQ, INTERNALDATE and bytes, the VANISHED UIDs, and the METADATA entries."""
    imap = _imap(server, user)
    try:
        shot: dict[str, Any] = {"list": sorted(_ok(imap.list())), "lsub": sorted(_ok(imap.lsub()))}
        names = [
            line.decode().rsplit(" ", 1)[1].strip('"')
            for line in shot["list"]
            if b"\\Noselect" not in line and b"\\NonExistent" not in line
        ]
        for name in names:
            status = _ok(imap.status(f'"{name}"', "(MESSAGES UIDVALIDITY UIDNEXT HIGHESTMODSEQ MAILBOXID)"))
            _ok(imap.select(f'"{name}"', readonly=True))
            fetched = _ok(imap.uid("FETCH", "1:*", "(FLAGS MODSEQ INTERNALDATE BODY.PEEK[]) (CHANGEDSINCE 1 VANISHED)"))
            vanished = imap.response("VANISHED")[1]
            metadata = _ok(imap.xatom("GETMETADATA", f'"{name}" (/private/comment)'))
            shot[name] = {"status": status, "messages": fetched, "vanished": vanished, "metadata": metadata,
                          "untagged_metadata": imap.response("METADATA")[1]}  # fmt: skip
            imap.close()
        _ok(imap.xatom("GETMETADATA", '"" (/private/vendor/kartero-test)'))
        shot["server_metadata"] = imap.response("METADATA")[1]
        return shot
    finally:
        imap.logout()


NOT_FOLDERS = ("list", "lsub", "server_metadata")  # the snapshot's other keys


def _messages(shots: dict[str, Any]) -> int:
    """How many messages the snapshots' STATUS replies count, over every user and folder."""
    return sum(
        int(re.search(rb"MESSAGES (\d+)", folder["status"][0]).group(1))  # type: ignore[union-attr]
        for shot in shots.values()
        for name, folder in shot.items()
        if isinstance(folder, dict)
    )


def _mailboxes(shots: dict[str, Any]) -> int:
    return sum(1 for shot in shots.values() for folder in shot.values() if isinstance(folder, dict))


def _uidvalidity(shot: dict[str, Any], name: str) -> int:
    match = re.search(rb"UIDVALIDITY (\d+)", shot[name]["status"][0])
    assert match
    return int(match.group(1))


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory, postgres: PrivatePostgres) -> Iterator[Embedded]:
    """A stopped Kartero on the embedded store with mail in it (made once for the module's tests, which
    only read it)."""
    server = KarteroServer(tmp_path_factory.mktemp("embedded"), extra_config=EXTRA)
    for user in USERS:
        server.add_user(user, PASSWORD)
    server.add_alias("team@example.test", "bob@example.test")
    server.add_alias("team@example.test", "carol@example.test")
    server.start()
    try:
        for n in range(1, 5):
            _send(server, ["bob@example.test"], f"to bob {n}")
        _send(server, ["team@example.test"], "to both")  # one body, two mailboxes
        _send(server, ["carol@example.test"], "large", BIG)
        _send(server, ["carol@example.test"], "to carol")
        wait_for(lambda: len(server.messages("bob@example.test")) == 5)
        imap = _imap(server, "bob@example.test")
        _ok(imap.create("Projects"))
        _ok(imap.create('"Lists/Work"'))
        _ok(imap.subscribe("Projects"))
        _ok(imap.select("INBOX"))
        _ok(imap.uid("STORE", "1", "+FLAGS", r"(\Seen \Flagged $Label1)"))
        _ok(imap.uid("STORE", "3", "+FLAGS", r"(\Answered)"))
        _ok(imap.uid("COPY", "1:2", "Projects"))
        _ok(imap.uid("STORE", "2", "+FLAGS", r"(\Deleted)"))
        _ok(imap.expunge())
        _ok(imap.xatom("SETMETADATA", 'INBOX (/private/comment "inbox note")'))
        _ok(imap.xatom("SETMETADATA", '"" (/private/vendor/kartero-test "server note")'))
        imap.logout()
        with smtplib.SMTP(server.host, server.submission_port, local_hostname="laptop.example", timeout=30) as sub:
            sub.starttls(context=tls_context())
            sub.login("bob@example.test", PASSWORD)
            out = b"From: bob@example.test\r\nTo: someone@remote.test\r\nSubject: out\r\n\r\nQueued.\r\n"
            sub.sendmail("bob@example.test", ["someone@remote.test"], out)
        wait_for(lambda: "deferred" in run_cli_in_process(server.config, "queue", "list").stdout)
        listing = run_cli_in_process(server.config, "queue", "list").stdout
        queue_id = listing.splitlines()[1].split()[0]
        before = {user: snapshot(server, user) for user in USERS}
        run_cli_in_process(server.config, "dkim", "keygen", "example.test")  # a file under data_dir/dkim/
        keys = run_cli_in_process(server.config, "dkim", "list").stdout
        early = _target(tmp_path_factory.mktemp("early"), postgres)
        while_running = _copy(early, str(server.root / "data"), check=False)
    finally:
        assert server.stop() == 0, server.log
    assert before["bob@example.test"]["INBOX"]["vanished"] == [b"(EARLIER) 2"]
    assert before["bob@example.test"]["server_metadata"] == [b'"" (/private/vendor/kartero-test "server note")']
    yield Embedded(server, before, queue_id, while_running, keys)


def _target(root: Path, postgres: PrivatePostgres, *, migrated: bool = True) -> KarteroServer:
    url = postgres.new_database()
    if migrated:
        migrate(url)
    return KarteroServer(root, store_url=url, extra_config=EXTRA)


def _copy(target: KarteroServer, source: str, check: bool = True) -> Any:
    return run_cli(target.config, "db", "copy", "--from", source, check=check)


def _assert_same(target: KarteroServer, embedded: Embedded) -> None:
    for user in USERS:
        assert snapshot(target, user) == embedded.before[user], user


def test_issue_11_db_copy_moves_everything_clients_and_the_queue_see(
    embedded: Embedded, postgres: PrivatePostgres, tmp_path: Path
) -> None:
    target = _target(tmp_path / "pg", postgres)
    first = _copy(target, embedded.data_dir)
    mailboxes, messages = _mailboxes(embedded.before), _messages(embedded.before)
    # 6 special-use mailboxes each, bob's Projects, Lists and Lists/Work; 4 + 2 + 3 messages
    assert (mailboxes, messages) == (15, 9)
    assert first.stdout == (
        f"copied 2 accounts, 2 aliases, {mailboxes} mailboxes, {messages} messages (2.6 MB), 1 queued; "
        "skipped 0 already there\nDKIM keys: copied 1, skipped 0 already there\n"
    )
    # Issue 12: the SRS secret the embedded server made itself comes along: its bounce addresses stay valid.
    query = "SELECT value FROM meta WHERE key = 'secret:srs'"
    source = sqlite3.connect(Path(embedded.data_dir) / "kartero.db")
    try:
        made = source.execute(query).fetchone()
    finally:
        source.close()
    with psycopg.connect(str(target.store_url)) as database:
        assert made is not None and database.execute(query).fetchone() == made
    again = _copy(target, embedded.data_dir)
    assert again.stdout == (
        "copied 0 accounts, 0 aliases, 0 mailboxes, 0 messages (0.0 MB), 0 queued; "
        f"skipped {2 + mailboxes + messages + 1} already there\nDKIM keys: copied 0, skipped 1 already there\n"
    )
    keys = run_cli_in_process(target.config, "dkim", "list").stdout
    assert keys == embedded.keys  # the same key, now in the database
    target.start()
    try:
        _assert_same(target, embedded)
        pop = poplib.POP3(target.host, target.pop3_port, timeout=30)
        pop.user("carol@example.test")
        pop.pass_(PASSWORD)
        assert pop.stat()[0] == 3
        assert b"\r\n".join(pop.retr(2)[1]).endswith(BIG.rstrip(b"\r\n"))
        pop.quit()
        listing = run_cli_in_process(target.config, "queue", "list").stdout
        assert embedded.queue_id in listing and "deferred  someone@remote.test  attempts=1" in listing, listing
        # New mail continues the copied UIDs; a new mailbox gets a UIDVALIDITY no copied one had.
        _send(target, ["bob@example.test"], "after the move")
        imap = _imap(target, "bob@example.test")
        _ok(imap.create("Fresh"))
        fresh = _ok(imap.status("Fresh", "(UIDVALIDITY)"))[0]
        inbox = _ok(imap.select("INBOX"))
        assert _ok(imap.uid("SEARCH", "ALL")) == [b"1 3 4 5 6"], inbox
        highest = max(_uidvalidity(shot, n) for shot in embedded.before.values() for n in shot if n not in NOT_FOLDERS)
        assert int(re.search(rb"UIDVALIDITY (\d+)", fresh).group(1)) > highest  # type: ignore[union-attr]
        # A message expunged on the new server stays expunged if the copy is run again.
        _ok(imap.uid("STORE", "1", "+FLAGS", r"(\Deleted)"))
        _ok(imap.expunge())
        imap.logout()
    finally:
        assert target.stop() == 0, target.log
    assert _copy(target, embedded.data_dir).stdout.startswith("copied 0 accounts, 0 aliases, 0 mailboxes, 0 messages")
    target.start()
    try:
        imap = _imap(target, "bob@example.test")
        _ok(imap.select("INBOX"))
        assert _ok(imap.uid("SEARCH", "ALL")) == [b"3 4 5 6"]
        imap.logout()
    finally:
        assert target.stop() == 0, target.log


def test_issue_11_db_copy_rerun_fills_exactly_what_an_interrupted_run_missed(
    embedded: Embedded, postgres: PrivatePostgres, tmp_path: Path
) -> None:
    target = _target(tmp_path / "pg", postgres)
    _copy(target, embedded.data_dir)
    assert target.store_url
    with psycopg.connect(target.store_url, autocommit=True) as db:
        # What a run stopped midway leaves out: a whole account's later mailbox, messages of another
        # (one whose body only it had), and the queue entry.
        db.execute("DELETE FROM mailboxes WHERE name = 'Lists/Work'")
        gone = db.execute(
            "DELETE FROM messages WHERE uid IN (3, 4) AND mailbox_id = (SELECT m.id FROM mailboxes m JOIN accounts a"
            " ON a.id = m.account_id WHERE a.address = 'bob@example.test' AND m.name = 'INBOX') RETURNING blob_id"
        ).fetchall()
        db.execute("DELETE FROM blobs WHERE id = ANY(%s)", ([r[0] for r in gone],))
        db.execute("DELETE FROM queue")
        db.execute("DELETE FROM blobs b WHERE NOT EXISTS (SELECT 1 FROM messages WHERE blob_id = b.id)")
        db.execute("DELETE FROM expunged")
    rerun = _copy(target, embedded.data_dir)
    mailboxes, messages = _mailboxes(embedded.before), _messages(embedded.before)
    assert rerun.stdout == (
        "copied 0 accounts, 0 aliases, 1 mailboxes, 2 messages (0.0 MB), 1 queued; "
        f"skipped {2 + mailboxes - 1 + messages - 2} already there\nDKIM keys: copied 0, skipped 1 already there\n"
    )
    target.start()
    try:
        _assert_same(target, embedded)
        assert embedded.queue_id in run_cli_in_process(target.config, "queue", "list").stdout
    finally:
        assert target.stop() == 0, target.log


def test_issue_11_db_copy_refuses_to_merge_or_to_write_where_it_should_not(
    embedded: Embedded, postgres: PrivatePostgres, tmp_path: Path
) -> None:
    # The embedded store's server still running: mail arriving during the copy would be left behind.
    assert embedded.while_running.returncode == 1
    assert re.search(r"a Kartero server \(pid \d+\) runs on .*: stop it first", embedded.while_running.stderr)
    # The target has its own bob (made there, another UIDVALIDITY for his INBOX): nothing is copied.
    target = _target(tmp_path / "pg", postgres)
    run_cli_in_process(target.config, "user", "add", "bob@example.test", "--password-stdin", stdin="other\n")
    refused = _copy(target, embedded.data_dir, check=False)
    assert refused.returncode == 1
    assert "already has a different account bob@example.test" in refused.stderr, refused.stderr
    assert run_cli_in_process(target.config, "user", "list").stdout == "bob@example.test\n"
    # The same account, but a mailbox of the same name that is another one.
    target = _target(tmp_path / "pg2", postgres)
    _copy(target, embedded.data_dir)
    assert target.store_url
    with psycopg.connect(target.store_url, autocommit=True) as db:
        db.execute("UPDATE mailboxes SET uidvalidity = uidvalidity + 1000 WHERE name = 'Projects'")
    refused = _copy(target, embedded.data_dir, check=False)
    assert refused.returncode == 1
    assert "already has a different mailbox 'Projects' of bob@example.test" in refused.stderr, refused.stderr
    # A database `kartero db init` has not made ready.
    target = _target(tmp_path / "pg3", postgres, migrated=False)
    unready = _copy(target, embedded.data_dir, check=False)
    assert unready.returncode == 1 and "run `kartero db init`" in unready.stderr, unready.stderr
    # A config on the embedded store, and a folder without a store.
    embedded_config = KarteroServer(tmp_path / "plain")
    wrong = _copy(embedded_config, embedded.data_dir, check=False)
    assert wrong.returncode == 2 and 'backend = "postgresql"' in wrong.stderr, wrong.stderr
    target = _target(tmp_path / "pg4", postgres)
    empty = _copy(target, str(tmp_path / "nothing"), check=False)
    assert empty.returncode == 2 and "no embedded store" in empty.stderr, empty.stderr
    assert not (tmp_path / "nothing").exists()
