"""Issue 15, `kartero backup` and `kartero restore`: a backup taken while SMTP clients keep sending is
restored into an empty data folder and served again. Every message acknowledged (250) before the backup
began is there byte for byte, every message there reads whole, the restored server takes new mail; a
damaged backup and a non-empty data folder are refused with nothing written."""

from __future__ import annotations

import imaplib
import shutil
import smtplib
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kartero.mailauth.dkim import generate
from tests.integration.harness import PASSWORD, KarteroServer, free_port, run_cli, strip_trace, tls_context, wait_for

USERS = ("bob@example.test", "carol@example.test")
# Mail for elsewhere goes to a port nothing listens on: it stays in the queue, in the backup too.
EXTRA = f'[delivery]\nrelayhost = "127.0.0.1:{free_port()}"\nretry_first = "1h"\n'


@dataclass
class Sent:
    body: bytes
    acknowledged_at: float | None = None  # time.monotonic() once the 250 arrived


@dataclass
class BackedUp:
    folder: Path
    began_at: float  # time.monotonic() just before `kartero backup` started
    ended_at: float
    output: str
    sent: dict[str, Sent]  # X-Key: what the clients sent (acknowledged or not)
    dkim_key: Path  # the DKIM key's file, relative to the data folder
    dkim_key_bytes: bytes
    queue_id: str  # a message queued for a remote recipient before the backup


def _load(server: KarteroServer, sent: dict[str, Sent], lock: threading.Lock, stop: threading.Event,
          worker: int) -> None:  # fmt: skip
    """One SMTP client sending until `stop`, recording each message and when its 250 came."""
    n = 0
    while not stop.is_set():
        try:
            with smtplib.SMTP(server.host, server.port, timeout=10) as smtp:
                while not stop.is_set():
                    key = f"{worker}-{n}"
                    # Sizes vary; every 9th passes the 1 MiB spool threshold (the spooled path into a segment).
                    size = 1_200_000 if n % 9 == 8 else n % 5 * 30_000
                    body = (f"Subject: load {key}\r\nX-Key: {key}\r\nMessage-ID: <{key}@load.test>\r\n\r\n".encode()
                            + b"".join(b"%06d %s line of the body\r\n" % (i, key.encode()) for i in range(size // 30))
                            + b"end\r\n")  # fmt: skip
                    entry = Sent(body)
                    with lock:
                        sent[key] = entry
                    n += 1
                    smtp.sendmail("load@elsewhere.test", [USERS[n % 2]], body)
                    entry.acknowledged_at = time.monotonic()
        except (smtplib.SMTPException, OSError):
            if stop.wait(0.05):
                return


def _queued(server: KarteroServer) -> str:
    """The id of the one queue entry, once the submission's commit made it (read as `queue list` does)."""
    found: list[str] = []

    def look() -> bool:
        with sqlite3.connect(server.root / "data" / "kartero.db") as db:
            found[:] = [row[0] for row in db.execute("SELECT id FROM queue")]
        return bool(found)

    wait_for(look)
    return found[0]


@pytest.fixture(scope="module")
def backed_up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackedUp]:
    root = tmp_path_factory.mktemp("backup")
    server = KarteroServer(root / "mx", extra_config=EXTRA)
    for user in USERS:
        server.add_user(user)
    key = generate(server.root / "data", "example.test", "kartero-ed", "ed25519").path  # as `dkim keygen` does
    server.start()
    with smtplib.SMTP(server.host, server.submission_port, timeout=30) as submission:
        submission.starttls(context=tls_context())
        submission.login("bob@example.test", PASSWORD)
        out = b"From: bob@example.test\r\nTo: someone@remote.test\r\nSubject: out\r\n\r\nQueued.\r\n"
        submission.sendmail("bob@example.test", ["someone@remote.test"], out)
    queue_id = _queued(server)
    sent: dict[str, Sent] = {}
    lock = threading.Lock()
    stop = threading.Event()
    clients = [threading.Thread(target=_load, args=(server, sent, lock, stop, w)) for w in range(4)]
    for client in clients:
        client.start()
    try:
        deadline = time.monotonic() + 20
        while sum(s.acknowledged_at is not None for s in list(sent.values())) < 40 and time.monotonic() < deadline:
            time.sleep(0.02)
        began_at = time.monotonic()
        output = run_cli(server.config, "backup", str(root / "backup")).stdout
        ended_at = time.monotonic()
        # Load goes on after the backup, until a few more messages are acknowledged.
        after = sum(s.acknowledged_at is not None for s in list(sent.values())) + 10
        while sum(s.acknowledged_at is not None for s in list(sent.values())) < after and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        stop.set()
        for client in clients:
            client.join(15)
        assert server.stop() == 0, server.log
    yield BackedUp(root / "backup", began_at, ended_at, output, sent, key.relative_to(server.root / "data"),
                   key.read_bytes(), queue_id)  # fmt: skip


def _mailbox(server: KarteroServer, user: str) -> dict[str, bytes]:
    """X-Key: the message as the client sent it, for every message in `user`'s INBOX."""
    imap = imaplib.IMAP4(server.host, server.imap_port, timeout=30)
    try:
        imap.login(user, PASSWORD)
        status, data = imap.select("INBOX", readonly=True)
        assert status == "OK"
        found: dict[str, bytes] = {}
        if int(data[0]) == 0:
            return found
        status, fetched = imap.fetch("1:*", "(BODY.PEEK[])")
        assert status == "OK"
        for item in fetched:
            if isinstance(item, tuple):
                message = strip_trace(item[1])
                key = message.split(b"X-Key: ", 1)[1].split(b"\r\n", 1)[0].decode()
                assert key not in found, f"{key} stored twice"
                found[key] = message
        return found
    finally:
        imap.logout()


def test_issue_15_restore_has_every_message_acknowledged_before_the_backup(backed_up: BackedUp,
                                                                           tmp_path: Path) -> None:  # fmt: skip
    sent = backed_up.sent
    before = {k for k, s in sent.items() if s.acknowledged_at is not None and s.acknowledged_at < backed_up.began_at}
    after = {k for k, s in sent.items() if s.acknowledged_at is not None and s.acknowledged_at > backed_up.ended_at}
    assert len(before) >= 40 and after, "the load ran before and after the backup"
    assert backed_up.output.startswith("backed up "), backed_up.output

    restored = KarteroServer(tmp_path / "restored", extra_config=EXTRA)
    result = run_cli(restored.config, "restore", str(backed_up.folder))
    assert result.stdout.startswith("restored the backup of "), result.stdout
    assert "every checksum matched" in result.stdout
    restored.start()
    try:
        found: dict[str, bytes] = {}
        for user in USERS:
            found.update(_mailbox(restored, user))
        assert before <= found.keys(), f"acknowledged before the backup, missing: {sorted(before - found.keys())}"
        for key, message in found.items():  # every message there reads whole: the bytes a client sent
            assert message == sent[key].body, key
        assert f"{len(found)} messages" in backed_up.output  # the counts the backup reported
        # Every mailbox has a new UIDVALIDITY: UIDs given after the backup will be given again.
        assert "a new UIDVALIDITY for its 12 mailboxes" in result.stdout
        with sqlite3.connect(backed_up.folder / "kartero.db") as db:
            (before_restore,) = db.execute("SELECT MAX(uidvalidity) FROM mailboxes").fetchone()
        imap = imaplib.IMAP4(restored.host, restored.imap_port, timeout=30)
        imap.login("bob@example.test", PASSWORD)
        status = imap.status("INBOX", "(UIDVALIDITY)")[1][0]
        imap.logout()
        assert int(status.split(b"UIDVALIDITY ")[1].rstrip(b")")) > before_restore
        assert (restored.root / "data" / backed_up.dkim_key).read_bytes() == backed_up.dkim_key_bytes
        assert " 1 queued;" in backed_up.output
        assert backed_up.queue_id in run_cli(restored.config, "queue", "list").stdout
        # The restored server takes new mail.
        with smtplib.SMTP(restored.host, restored.port, timeout=10) as smtp:
            smtp.sendmail("new@elsewhere.test", ["bob@example.test"], b"Subject: new\r\nX-Key: new\r\n\r\nHello.\r\n")
        assert _mailbox(restored, "bob@example.test")["new"] == b"Subject: new\r\nX-Key: new\r\n\r\nHello.\r\n"
    finally:
        assert restored.stop() == 0, restored.log


def test_issue_15_a_damaged_backup_is_refused_and_nothing_written(backed_up: BackedUp, tmp_path: Path) -> None:
    damaged = tmp_path / "damaged"
    shutil.copytree(backed_up.folder, damaged)
    segment = sorted((damaged / "messages").iterdir())[0]
    data = bytearray(segment.read_bytes())
    data[len(data) // 2] ^= 0x01
    segment.write_bytes(bytes(data))
    name = f"messages/{segment.name}"

    assert run_cli(KarteroServer(tmp_path / "x").config, "backup", "--verify", str(backed_up.folder)).returncode == 0
    server = KarteroServer(tmp_path / "target")
    checked = run_cli(server.config, "backup", "--verify", str(damaged), check=False)
    assert checked.returncode == 1
    assert checked.stderr == f"kartero: the backup in {damaged} is damaged: {name}: SHA-256 differs from the manifest (the file is damaged)\n"  # noqa: E501
    result = run_cli(server.config, "restore", str(damaged), check=False)
    assert result.returncode == 1
    assert result.stderr == (f"kartero: the backup in {damaged} is damaged, nothing was restored: {name}: SHA-256 "
                             "differs from the manifest (the file is damaged)\n")  # fmt: skip
    assert not (server.root / "data").exists()


def test_issue_15_restore_refuses_a_data_folder_in_use(backed_up: BackedUp, tmp_path: Path) -> None:
    server = KarteroServer(tmp_path / "busy")
    server.add_user("dave@example.test")  # a store of its own in the data folder
    before = sorted(p.name for p in (server.root / "data").iterdir())
    result = run_cli(server.config, "restore", str(backed_up.folder), check=False)
    assert result.returncode == 1
    assert f"kartero: the data folder {server.root / 'data'} is not empty (" in result.stderr
    assert sorted(p.name for p in (server.root / "data").iterdir()) == before
    assert run_cli(server.config, "user", "list").stdout == "dave@example.test\n"


def test_issue_15_backup_of_a_postgresql_store_points_to_pg_dump(tmp_path: Path) -> None:
    server = KarteroServer(tmp_path / "pg", store_url="postgresql://kartero@127.0.0.1:1/kartero")
    (server.root / "data" / "maildrop").mkdir(parents=True)
    (server.root / "data" / "maildrop" / "0001.msg").write_text("dropped")
    result = run_cli(server.config, "backup", str(tmp_path / "b"), check=False)
    assert result.returncode == 2
    assert result.stderr == (
        "kartero: the store is PostgreSQL ([store] backend): back it up with pg_dump (one database) or "
        f"pg_basebackup (the whole cluster), see docs/backup.md; copy these files of {server.root / 'data'} "
        "too: maildrop/0001.msg\n"
    )
    assert not (tmp_path / "b").exists()
