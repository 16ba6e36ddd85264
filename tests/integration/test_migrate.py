"""Issue 15, migration: `kartero import` of a generated Maildir tree (Maildir++ folders, dovecot-keywords,
flags, odd bytes) and a directory of mbox files (mboxrd `>From` lines, state fields, a large message),
checked over IMAP byte for byte with FLAGS and INTERNALDATE; a rerun imports nothing; an import while
the server runs on the embedded store and takes SMTP mail (through its import drop), a garbage drop file
set aside while it keeps serving; an import killed midway is finished by the next without a
duplicate; a whole IMAP account copied from that Kartero into a second one
on loopback (and again: nothing); `kartero export` in both formats read back with Python's `mailbox`;
with Dovecot: a Maildir it wrote (keywords, a modified UTF-7 folder) imported as it showed it, and our
Maildir export served by it as Kartero served the mail."""

from __future__ import annotations

import concurrent.futures
import contextlib
import imaplib
import mailbox
import os
import pwd
import re
import shutil
import smtplib
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.harness import KARTERO, PASSWORD, KarteroServer, free_port, run_cli, tls_context, wait_for

BOB, CAROL, DAVE = "bob@example.test", "carol@example.test", "dave@example.test"
BIG = b"".join(b"%07d a line of a message too large to be held in memory by the import\n" % n for n in range(30000))
# (folder, bytes as stored, flags, internal date) of every message the imports bring, in UID order.
Expected = tuple[str, bytes, frozenset[str], int]


def _crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _file(path: Path, data: bytes, mtime: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))


def make_maildir(root: Path) -> list[Expected]:
    """A Dovecot Maildir: INBOX with keywords, Maildir++ folders (one in modified UTF-7, one two levels
    deep holding the same message twice), a message without a header, 8-bit garbage, tmp/ to skip."""
    for folder in ("", ".Sent", ".Archive.2024", ".Entw&APw-rfe"):
        for sub in ("cur", "new", "tmp"):
            (root / folder / sub).mkdir(parents=True, exist_ok=True)
    (root / "dovecot-keywords").write_text("0 $Label1\n1 Work\n")
    one = b"From: a@example.org\nSubject: keywords\n\nFrom the start.\n"
    garbage = b"no header at all \xff\xfe\x01 garbage\n"  # (NUL is shown as 0x80 over IMAP)
    sent = b"Subject: sent\r\n\r\nalready CRLF\r\n"
    twice = b"Subject: twice\n\nthe same bytes in one folder twice\n"
    draft = b"Subject: =?utf-8?q?Entw=C3=BCrfe?=\n\n"
    _file(root / "cur" / "1700000000.M1P1.old,S=52:2,RSab", one, 1_600_000_000)
    _file(root / "new" / "1700000100.M2P1.old", garbage, 1_600_000_100)
    _file(root / "tmp" / "1700000200.M3P1.old", b"Subject: half delivered\n\n", 1_600_000_200)
    _file(root / ".Sent" / "cur" / "1700000300.M4P1.old:2,ST", sent, 1_600_000_300)
    _file(root / ".Archive.2024" / "cur" / "1700000400.M5P1.old:2,F", twice, 1_600_000_400)
    _file(root / ".Archive.2024" / "cur" / "1700000500.M6P1.old:2,F", twice, 1_600_000_500)
    _file(root / ".Entw&APw-rfe" / "cur" / "1700000600.M7P1.old:2,D", draft, 1_600_000_600)
    return [
        ("INBOX", _crlf(one), frozenset({"\\Answered", "\\Seen", "$Label1", "Work"}), 1_600_000_000),
        ("INBOX", _crlf(garbage), frozenset(), 1_600_000_100),
        ("Sent", sent, frozenset({"\\Seen", "\\Deleted"}), 1_600_000_300),
        ("Archive/2024", _crlf(twice), frozenset({"\\Flagged"}), 1_600_000_400),
        ("Archive/2024", _crlf(twice), frozenset({"\\Flagged"}), 1_600_000_500),
        ("Entwürfe", _crlf(draft), frozenset({"\\Draft"}), 1_600_000_600),
    ]


def make_mboxes(root: Path) -> list[Expected]:
    """`inbox` (INBOX) with mboxrd-quoted lines and state fields, `Lists/python.mbox` with a large message."""
    _file(root / "inbox", (
        b"From alice@example.org Sun Nov 29 10:00:00 2026\nFrom: alice@example.org\nStatus: RO\nX-Status: AF\n"
        b"Subject: quoted\n\n>From the start\n>>From twice\nFrom unquoted, no empty line before\n\n"
        b"From MAILER-DAEMON Mon Nov 30 11:00:00 2026 +0100\nSubject: second\n\nbody\n\n"
    ), 1_700_000_000)  # fmt: skip
    _file(root / "Lists" / "python.mbox", b"From list@example.org Sun Nov 29 12:00:00 2026\nSubject: big\n\n" + BIG,
          1_700_000_000)  # fmt: skip
    return [
        ("INBOX", b"From: alice@example.org\r\nSubject: quoted\r\n\r\nFrom the start\r\n>From twice\r\n"
                  b"From unquoted, no empty line before\r\n", frozenset({"\\Seen", "\\Answered", "\\Flagged"}),
         1_795_946_400),
        ("INBOX", b"Subject: second\r\n\r\nbody\r\n", frozenset(), 1_796_032_800),
        ("Lists/python", _crlf(b"Subject: big\n\n" + BIG), frozenset(), 1_795_953_600),
    ]  # fmt: skip


def _imap(server: KarteroServer, user: str) -> imaplib.IMAP4_SSL:
    imap = imaplib.IMAP4_SSL(server.host, server.imaps_port, ssl_context=tls_context(), timeout=30)
    imap.login(user, PASSWORD)
    return imap


def fetch_all(server: KarteroServer, user: str) -> dict[str, list[tuple[bytes, frozenset[str], int]]]:
    """Every message of every folder over IMAP: BODY.PEEK[], FLAGS (\\Recent left out), INTERNALDATE."""
    found: dict[str, list[tuple[bytes, frozenset[str], int]]] = {}
    with _imap(server, user) as imap:
        _, listed = imap.list()
        for line in listed:
            assert isinstance(line, bytes)
            name = re.fullmatch(rb'\(.*\) "/" "?(.*?)"?', line).group(1)  # type: ignore[union-attr]
            typ, _ = imap.select(b'"' + name + b'"', readonly=True)  # type: ignore[arg-type]
            assert typ == "OK"
            _, data = imap.uid("FETCH", "1:*", "(FLAGS INTERNALDATE BODY.PEEK[])")
            messages = []
            for part in data:
                if isinstance(part, tuple):
                    flags = frozenset(imaplib.ParseFlags(part[0])) - {b"\\Recent"}
                    date = int(time.mktime(imaplib.Internaldate2tuple(part[0])))  # type: ignore[arg-type]
                    messages.append((part[1], frozenset(f.decode() for f in flags), date))
            if messages:
                found[mutf7_decode(name.decode())] = messages
    return found


def mutf7_decode(name: str) -> str:
    from kartero.imap.mutf7 import decode

    return decode(name)


def by_folder(expected: list[Expected]) -> dict[str, list[tuple[bytes, frozenset[str], int]]]:
    folders: dict[str, list[tuple[bytes, frozenset[str], int]]] = {}
    for folder, data, flags, date in expected:
        folders.setdefault(folder, []).append((data, flags, date))
    return folders


@dataclass
class Migrated:
    server: KarteroServer
    expected: list[Expected]
    first: list[str]  # the summaries of the first imports
    again: list[str]  # of the reruns
    live: Live


@dataclass
class Live:
    """An import while the server runs and takes SMTP mail for the same account."""

    expected: list[Expected]
    sent: list[bytes]  # the bodies sent over SMTP meanwhile
    first: str
    again: str


def make_live_mboxes(root: Path) -> list[Expected]:
    """An mbox directory of three batches and more (importer.BATCH is 100): `inbox` and `Projects/live`,
    with flags from the state fields."""
    start = 1_700_000_000
    expected: list[Expected] = []
    for name, folder, count in (("inbox", "INBOX", 230), ("Projects/live.mbox", "Projects/live", 40)):
        chunks = []
        for n in range(count):
            date = start + 60 * len(expected)
            state, flags = [(b"", frozenset()), (b"Status: RO\n", frozenset({"\\Seen"})),
                            (b"X-Status: F\nX-Keywords: Work\n", frozenset({"\\Flagged", "Work"}))][n % 3]
            body = b"Subject: live %d in %s\n" % (n, folder.encode())
            chunks.append(b"From live@example.org " + time.strftime("%a %b %d %H:%M:%S %Y", time.gmtime(date)).encode()
                          + b"\n" + body + state + b"\nbody %d\n\n" % n)  # fmt: skip
            expected.append((folder, _crlf(body + b"\nbody %d\n" % n), flags, date))
        _file(root / name, b"".join(chunks), start)
    return expected


def _send_while(busy: threading.Event, server: KarteroServer) -> list[bytes]:
    """SMTP messages to DAVE until `busy` is cleared (at least one)."""
    sent: list[bytes] = []
    with smtplib.SMTP(server.host, server.port, timeout=10) as smtp:
        while busy.is_set() or not sent:
            body = b"Subject: by smtp %d\r\n\r\nsent while importing\r\n" % len(sent)
            smtp.sendmail("someone@example.org", [DAVE], body)
            sent.append(body)
    return sent


@pytest.fixture(scope="module")
def migrated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Migrated]:
    root = tmp_path_factory.mktemp("migrate")
    expected = make_maildir(root / "Maildir") + make_mboxes(root / "mail")
    live_expected = make_live_mboxes(root / "live")
    server = KarteroServer(root / "a")
    server.add_user(BOB, PASSWORD)
    server.add_user(DAVE, PASSWORD)
    first = [run_cli(server.config, "import", BOB, str(root / p)).stdout for p in ("Maildir", "mail")]
    again = [run_cli(server.config, "import", BOB, str(root / p)).stdout for p in ("Maildir", "mail")]
    server.start()
    try:
        busy = threading.Event()
        busy.set()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            sending = pool.submit(_send_while, busy, server)
            try:
                live_first = run_cli(server.config, "import", DAVE, str(root / "live")).stdout
            finally:
                busy.clear()
            sent = sending.result()
        live_again = run_cli(server.config, "import", DAVE, str(root / "live")).stdout
        live = Live(live_expected, sent, live_first, live_again)
        yield Migrated(server, expected, first, again, live)
    finally:
        assert server.stop() == 0, server.log


def test_issue_15_import_keeps_bytes_flags_and_internal_dates(migrated: Migrated) -> None:
    assert migrated.first == ["imported 6, skipped 0 already present, failed 0\n",
                              "imported 3, skipped 0 already present, failed 0\n"]  # fmt: skip
    expected = by_folder(migrated.expected)
    assert fetch_all(migrated.server, BOB) == expected


def test_issue_15_a_rerun_imports_nothing(migrated: Migrated) -> None:
    assert migrated.again == ["imported 0, skipped 6 already present, failed 0\n",
                              "imported 0, skipped 3 already present, failed 0\n"]  # fmt: skip


def test_issue_15_an_import_while_the_server_runs_and_takes_smtp_mail(migrated: Migrated) -> None:
    """The embedded store: the batches go through the server's import drop, beside SMTP deliveries to the
    same INBOX; every message once, with its bytes, flags and date, in the source's order; a rerun: 0."""
    live = migrated.live
    assert live.first == f"imported {len(live.expected)}, skipped 0 already present, failed 0\n"
    assert live.again == f"imported 0, skipped {len(live.expected)} already present, failed 0\n"
    found = fetch_all(migrated.server, DAVE)
    by_smtp = [m for m in found["INBOX"] if b"Subject: by smtp" in m[0]]
    found["INBOX"] = [m for m in found["INBOX"] if m not in by_smtp]
    assert found == by_folder(live.expected)
    assert sorted(data.partition(b"Subject: ")[2] for data, _, _ in by_smtp) == sorted(
        body.partition(b"Subject: ")[2] for body in live.sent)  # fmt: skip
    assert not list((migrated.server.root / "data" / "importdrop").glob("*.batch"))
    stored = migrated.server.log_events("importdrop.stored")  # by the server, not by a second committer
    assert sum(int(re.search(r" stored=(\d+)", line).group(1)) for line in stored) == len(live.expected)  # type: ignore[union-attr]


def test_issue_15_a_garbage_import_drop_file_is_set_aside_and_the_server_serves_on(migrated: Migrated) -> None:
    server = migrated.server
    drop = server.root / "data" / "importdrop"
    drop.mkdir(exist_ok=True)
    for name, data in (("00000000000000garbage", b"KARTERO-IMPORTDROP 1\n" + b"[" * 100_000 + b"\n"),
                       ("00000000000001garbage", b"not a batch at all")):  # fmt: skip
        (drop / f".{name}.tmp").write_bytes(data)  # as the command writes: whole, then renamed
        (drop / f".{name}.tmp").rename(drop / f"{name}.batch")
    run_cli(server.config, "queue", "flush")  # SIGUSR1: look now
    corrupt = sorted(server.wait_events("importdrop.corrupt", 2))
    assert sorted((drop / "corrupt").iterdir()) == [drop / "corrupt" / "00000000000000garbage.batch",
                                                      drop / "corrupt" / "00000000000001garbage.batch"]  # fmt: skip
    assert "00garbage.batch" in corrupt[0] and "description line" in corrupt[0]
    assert "01garbage.batch" in corrupt[1] and "not an import drop file" in corrupt[1]
    with _imap(server, DAVE) as imap:
        assert imap.select("INBOX", readonly=True)[0] == "OK"


def test_issue_15_imap_import_from_a_second_kartero(migrated: Migrated, tmp_path: Path) -> None:
    target = KarteroServer(tmp_path / "b")  # never started: the CLI writes its store
    target.add_user(CAROL, PASSWORD)
    store = target.store()
    try:
        store.accounts.set_quota(CAROL, 100_000)  # the import goes past it, and says so
    finally:
        store.close()
    source = migrated.server
    url = f"imaps://{BOB.replace('@', '%40')}@{source.host}:{source.imaps_port}"
    first = run_cli(target.config, "import", CAROL, "--imap", url, "--insecure", stdin=PASSWORD + "\n")
    assert first.stdout == "imported 9, skipped 0 already present, failed 0\n"
    assert f"warning: {CAROL} is over its quota now" in first.stderr
    again = run_cli(target.config, "import", CAROL, "--imap", url, "--insecure", stdin=PASSWORD + "\n")
    assert again.stdout == "imported 0, skipped 9 already present, failed 0\n"
    refused = run_cli(target.config, "import", CAROL, "--imap", url, stdin=PASSWORD + "\n", check=False)
    assert refused.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in refused.stderr  # self-signed: --insecure
    store = target.store()
    try:
        account = store.accounts.get_account(CAROL)
        assert account is not None
        copied = {}
        for box in store.mail.list_mailboxes(account.id):
            rows = store.mail.message_rows(box.id)
            if rows:
                copied[box.name] = [(store.mail.read_message(r.blob_id), r.flags, r.internal_date) for r in rows]
    finally:
        store.close()
    assert copied == by_folder(migrated.expected)


def test_issue_15_export_as_maildir_reads_back_with_python_mailbox(migrated: Migrated, tmp_path: Path) -> None:
    done = run_cli(migrated.server.config, "export", BOB, str(tmp_path / "out"))  # while the server runs
    assert done.stdout == "exported 9 messages in 10 folders, failed 0\n"
    letters = {"\\Draft": "D", "\\Flagged": "F", "\\Answered": "R", "\\Seen": "S", "\\Deleted": "T"}
    found: dict[str, list[tuple[bytes, str, int]]] = {}
    root = mailbox.Maildir(tmp_path / "out", factory=None, create=False)
    keywords = (tmp_path / "out" / "dovecot-keywords").read_text().splitlines()
    assert keywords == ["0 $Label1", "1 Work"]
    for name in ["", *root.list_folders()]:
        box = root if not name else root.get_folder(name)
        messages = sorted(((box.get_bytes(k), box.get_message(k)) for k in box.iterkeys()),
                          key=lambda m: m[1].get_date())  # fmt: skip
        if messages:
            found[name or "INBOX"] = [(data, m.get_flags(), int(m.get_date())) for data, m in messages]
    expected: dict[str, list[tuple[bytes, str, int]]] = {}
    for folder, data, flags, date in migrated.expected:
        info = "".join(sorted(letters[f] for f in flags if f in letters))
        info += "ab" if "Work" in flags else ""
        dirname = {"Archive/2024": "Archive.2024", "Entwürfe": "Entw&APw-rfe", "Lists/python": "Lists.python"}
        expected.setdefault(dirname.get(folder, folder), []).append((data, info, date))
    assert found == expected


def test_issue_15_export_as_mbox_reads_back_with_python_mailbox(migrated: Migrated, tmp_path: Path) -> None:
    done = run_cli(migrated.server.config, "export", BOB, str(tmp_path / "out"), "--format", "mbox")
    assert done.stdout == "exported 9 messages in 10 folders, failed 0\n"
    found: dict[str, list[tuple[bytes, str, str]]] = {}
    for path in sorted((tmp_path / "out").rglob("*.mbox")):
        box = mailbox.mbox(path, create=False)
        messages = [(box.get_bytes(k), box.get_message(k)) for k in box.iterkeys()]
        if messages:
            name = path.relative_to(tmp_path / "out").as_posix().removesuffix(".mbox")
            found[name] = [(data, "".join(sorted(m.get_flags())), m.get_from()) for data, m in messages]
    assert not list((tmp_path / "out").rglob("*.tmp"))
    expected: dict[str, list[tuple[bytes, str, str]]] = {}
    letters = {"\\Seen": "R", "\\Answered": "A", "\\Flagged": "F", "\\Draft": "T", "\\Deleted": "D"}
    for folder, data, flags, date in migrated.expected:
        status = b"Status: RO\n" if "\\Seen" in flags else b"Status: O\n"
        x_status = "".join(c for c in "AFTD" if c in {letters[f] for f in flags if f in letters})
        fields = status + (b"X-Status: %s\n" % x_status.encode() if x_status else b"")
        keywords = sorted(f for f in flags if not f.startswith("\\"))
        fields += b"X-Keywords: %s\n" % " ".join(keywords).encode() if keywords else b""
        lf = data.replace(b"\r\n", b"\n")
        quoted = re.sub(rb"(?m)^(>*From )", rb">\1", lf)  # mboxrd, which mailbox.mbox leaves as it is
        sender = "alice@example.org" if b"quoted" in data else "list@example.org" if b"big" in data else "MAILER-DAEMON"
        asctime = time.asctime(time.gmtime(date))
        mutt_flags = "".join(sorted({"O"} | {letters[f] for f in flags if f in letters}))
        expected.setdefault(folder, []).append((fields + quoted, mutt_flags, f"{sender} {asctime}"))
    assert found == expected


# -- Dovecot: its Maildir imported, our export served by it ------------------------------------------------

DOVECOT_CONF = """\
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
mail_location = maildir:{root}/mail/%n/Maildir
first_valid_uid = 1
passdb {{
  driver = passwd-file
  args = username_format=%n {root}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={root}/mail/%n
}}
service imap-login {{
  inet_listener imap {{
    port = {port}
  }}
}}
"""


@dataclass
class Dovecot:
    root: Path
    port: int

    def imap(self, user: str) -> imaplib.IMAP4:
        imap = imaplib.IMAP4("127.0.0.1", self.port, timeout=30)
        imap.login(user, PASSWORD)
        return imap

    def give(self, path: Path) -> None:
        """Make `path` (a Maildir put there by a test) Dovecot's: its processes run as nobody."""
        nobody = pwd.getpwnam("nobody")
        for item in [path, *path.rglob("*")]:
            os.chown(item, nobody.pw_uid, nobody.pw_gid)


@pytest.fixture(scope="module")
def dovecot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dovecot]:
    """A private Dovecot 2.3 on a loopback port, users bob and eve (Maildir, its default Maildir++ layout)."""
    if shutil.which("dovecot") is None or os.geteuid() != 0:
        pytest.skip("needs root and Debian's dovecot-imapd")
    root = tmp_path_factory.mktemp("dovecot")
    for folder in [root, *root.parents]:
        if folder != Path("/"):
            folder.chmod(folder.stat().st_mode | 0o005)
    nobody = pwd.getpwnam("nobody")
    (root / "mail").mkdir()
    os.chown(root / "mail", nobody.pw_uid, nobody.pw_gid)
    (root / "passwd").write_text("".join(f"{user}:{{PLAIN}}{PASSWORD}::::::\n" for user in ("bob", "eve")))
    port = free_port()
    (root / "dovecot.conf").write_text(DOVECOT_CONF.format(root=root, uid=nobody.pw_uid, gid=nobody.pw_gid, port=port))
    process = subprocess.Popen(["dovecot", "-F", "-c", str(root / "dovecot.conf")], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_for(lambda: _accepts(port))
        dovecot = Dovecot(root, port)
        # imap-login accepts before the auth process is up: a login then gets "[UNAVAILABLE] Temporary
        # authentication failure" (seen once in a loaded run), so ready means a login goes through.
        wait_for(lambda: _logs_in(dovecot))
        yield dovecot
    finally:
        process.terminate()
        process.wait(10)


def _logs_in(dovecot: Dovecot) -> bool:
    with contextlib.suppress(imaplib.IMAP4.error, OSError), dovecot.imap("eve") as imap:
        imap.logout()
        return True
    return False


def _accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


def test_issue_15_a_maildir_dovecot_wrote_is_imported_as_dovecot_shows_it(dovecot: Dovecot, tmp_path: Path) -> None:
    appended = [  # (folder as Dovecot names it, folder here, flags, date, bytes sent)
        ("INBOX", "INBOX", "(\\Seen $Label1 Work)", 1_700_000_000, b"Subject: one\r\n\r\nFrom the top\r\n"),
        ("INBOX", "INBOX", "()", 1_700_000_100, b"Subject: two\r\n\r\n\xe4 8-bit\r\n"),
        ("Archiv.Entw&APw-rfe", "Archiv/Entwürfe", "(\\Draft \\Answered Work $Forwarded)", 1_700_000_200,
         b"Subject: draft\r\n\r\n.\r\n"),
        ("Archiv.Entw&APw-rfe", "Archiv/Entwürfe", "(\\Deleted \\Flagged)", 1_700_000_300, b"no header\r\n"),
    ]  # fmt: skip
    with dovecot.imap("bob") as imap:
        assert imap.create("Archiv.Entw&APw-rfe")[0] == "OK"
        for box, _, flags, date, data in appended:
            assert imap.append(box, flags, imaplib.Time2Internaldate(date), data)[0] == "OK"
    maildir = dovecot.root / "mail" / "bob" / "Maildir"
    assert (maildir / ".Archiv.Entw&APw-rfe" / "dovecot-keywords").exists()  # Dovecot's own layout
    target = KarteroServer(tmp_path / "k")
    target.add_user(CAROL, PASSWORD)
    assert run_cli(target.config, "import", CAROL, str(maildir)).stdout == (
        "imported 4, skipped 0 already present, failed 0\n")  # fmt: skip
    store = target.store()
    try:
        account = store.accounts.get_account(CAROL)
        assert account is not None
        got = []
        for name in ("INBOX", "Archiv/Entwürfe"):
            box = store.mail.get_mailbox(account.id, name)
            assert box is not None
            got += [(name, set(r.flags), r.internal_date, store.mail.read_message(r.blob_id))
                    for r in store.mail.message_rows(box.id)]  # fmt: skip
    finally:
        store.close()
    assert got == [(here, set(flags.strip("()").split()), date, data) for _, here, flags, date, data in appended]


def test_issue_15_dovecot_serves_the_maildir_export(migrated: Migrated, dovecot: Dovecot) -> None:
    target = dovecot.root / "mail" / "eve" / "Maildir"
    run_cli(migrated.server.config, "export", BOB, str(target))
    dovecot.give(target.parent)
    found: dict[str, list[tuple[bytes, frozenset[str], int]]] = {}
    with dovecot.imap("eve") as imap:
        _, listed = imap.list()
        for line in listed:
            assert isinstance(line, bytes)
            name = re.fullmatch(rb'\(.*\) "\." "?(.*?)"?', line).group(1)  # type: ignore[union-attr]
            assert imap.select(b'"' + name + b'"', readonly=True)[0] == "OK"  # type: ignore[arg-type]
            _, data = imap.uid("FETCH", "1:*", "(FLAGS INTERNALDATE BODY.PEEK[])")
            messages = []
            for part in data:
                if isinstance(part, tuple):
                    flags = frozenset(f.decode() for f in imaplib.ParseFlags(part[0])) - {"\\Recent"}
                    date = int(time.mktime(imaplib.Internaldate2tuple(part[0])))  # type: ignore[arg-type]
                    messages.append((part[1], flags, date))
            if messages:
                found[mutf7_decode(name.decode()).replace(".", "/")] = messages
    assert found == by_folder(migrated.expected)


@pytest.mark.parametrize("serving", [False, True], ids=["alone", "beside-the-server"])
def test_issue_15_an_import_killed_midway_is_finished_by_the_next_without_duplicates(
    tmp_path: Path, serving: bool
) -> None:
    """SIGKILL while messages are being stored (the ledger has claimed some, the store committed some; or,
    beside a server, some batches wait in its import drop), then the same command again: every message of
    the mbox is there exactly once."""
    count = 1500
    bodies = [b"Subject: message %d\n\nbody of message %d\n" % (n, n) for n in range(count)]
    mbox = tmp_path / "big.mbox"
    mbox.write_bytes(b"".join(b"From a@x Sun Nov 29 10:00:00 2026\n" + body + b"\n" for body in bodies))
    server = KarteroServer(tmp_path / "k")
    server.add_user(BOB, PASSWORD)
    database = server.root / "data" / "kartero.db"

    def claimed() -> int:
        with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)) as db:
            return int(db.execute("SELECT COUNT(*) FROM import_ledger").fetchone()[0])

    if serving:
        server.start()
    process = subprocess.Popen([*KARTERO, "-c", str(server.config), "import", BOB, str(mbox)],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_for(lambda: process.poll() is not None or claimed() >= 300, timeout_s=30)
    finally:
        process.kill()
        process.wait(10)
    assert process.returncode == -9, "the import ended before it could be killed: make it longer"
    before = claimed()
    assert 300 <= before < count
    done = run_cli(server.config, "import", BOB, str(mbox))
    imported, skipped = map(int, re.fullmatch(r"imported (\d+), skipped (\d+) already present, failed 0\n",
                                              done.stdout).groups())  # type: ignore[union-attr]
    assert imported + skipped == count and 0 < skipped <= before
    if serving:
        assert server.stop() == 0, server.log
        assert server.log_events("importdrop.stored") and not server.log_events("importdrop.corrupt")
    stored = server.messages(BOB)
    assert sorted(stored) == sorted(_crlf(body) for body in bodies)
