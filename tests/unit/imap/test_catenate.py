"""CATENATE (RFC 4469): APPEND assembled from TEXT literals and relative IMAP URLs (RFC 5092) of the user's
own messages; BADURL for anything else; TOOBIG past APPENDLIMIT; large results assembled in a spool file."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path

import pytest

from kartero.imap.connection import AppendData, CommandReady, ImapConnection, LoginRequested
from kartero.imap.response import Status
from kartero.imap.syntax import Append, CatPart, Section
from kartero.imap.url import MessageUrl, badurl_text, parse_message_url
from kartero.store.ids import new_message_id
from kartero.store.interface import Content, Delivery, DeliveryTarget, FileSpan, StoredMessage
from kartero.store.spool import spool_dir
from kartero.store.sqlite import SQLiteStore
from tests.unit.imap.harness import SETTINGS, Client, play

WHEN = 1795687200
BOUNDARY = b"------------030308070208000400050907"
DRAFT_HEADER = (
    b"From: Bob <bob@example.test>\r\nSubject: draft\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="' + BOUNDARY[2:] + b'"\r\n\r\n'
)
PART_MIME = b"Content-Type: text/plain; charset=us-ascii\r\n\r\n"
PART_BODY = b"The first part.\r\n"
DRAFT = DRAFT_HEADER + b"--" + BOUNDARY[2:] + b"\r\n" + PART_MIME + PART_BODY + b"--" + BOUNDARY[2:] + b"--\r\n"
FORWARDED = b"From: alice@example.org\r\nSubject: forwarded\r\n\r\nForwarded body.\r\n"


def deliver(store: SQLiteStore, data: bytes, mailbox: str = "INBOX", flags: frozenset[str] = frozenset()) -> None:
    store.mail.deliver(Delivery(new_message_id(), data, (DeliveryTarget(1, mailbox, flags),), WHEN)).result(10)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    """bob's Drafts holds DRAFT (UID 1) and FORWARDED (UID 2)."""
    s = SQLiteStore(tmp_path / "data")
    s.accounts.add_account("bob@example.test", "unused")
    s.start()
    deliver(s, DRAFT, "Drafts")
    deliver(s, FORWARDED, "Drafts")
    yield s
    s.close()


def uidvalidity(store: SQLiteStore, name: str = "Drafts") -> int:
    mailbox = store.mail.get_mailbox(1, name)
    assert mailbox is not None
    return mailbox.uidvalidity


def client(store: SQLiteStore, **settings: int) -> Client:
    c = Client(store=store, settings=replace(SETTINGS, **settings))  # type: ignore[arg-type]
    c.login()
    c.greeting = b""
    return c


def stored(store: SQLiteStore, mailbox: str, uid: int) -> bytes:
    box = store.mail.get_mailbox(1, mailbox)
    assert box is not None
    [row] = store.mail.message_rows(box.id, [uid])
    return store.mail.read_message(row.blob_id)


def test_catenate_rfc_4469_example(store: SQLiteStore) -> None:
    # RFC 4469 Appendix A: a draft edited by replacing its second part and attaching a message, with the
    # keywords in lower case as the RFC writes them. The URLs' octets are copied unchanged, \Seen is not set.
    v = uidvalidity(store)
    first, second, third = b"\r\n--" + BOUNDARY[2:] + b"\r\n", b"\r\n--" + BOUNDARY[2:] + b"\r\n", (
        b"\r\n--" + BOUNDARY[2:] + b"--\r\n")  # fmt: skip
    url = f"/Drafts;UIDVALIDITY={v}/;UID=1"
    play(lambda: client(store), f"""
        C: A003 APPEND Drafts (\\Seen \\Draft $MDNSent) CATENATE (URL "{url}/;section=HEADER" TEXT {{{len(first)}}}
        S: + Ready for literal data
        C! {first!r}
        C:  URL "{url}/;section=1.MIME" URL "{url}/;section=1" TEXT {{{len(second)}}}
        S: + Ready for literal data
        C! {second!r}
        C:  URL "/Drafts;UIDVALIDITY={v}/;UID=2" TEXT {{{len(third)}}}
        S: + Ready for literal data
        C! {third!r}
        C: )
        S: A003 OK [APPENDUID {v} 3] APPEND completed
    """, bytewise_too=False)  # fmt: skip
    # A part's body ends before the CRLF of the boundary that follows it (RFC 2046 §5.1.1).
    expected = DRAFT_HEADER + first + PART_MIME + PART_BODY[:-2] + second + FORWARDED + third
    assert stored(store, "Drafts", 3) == expected
    c = client(store)
    c.command("e ENABLE IMAP4rev2")
    c.command("s EXAMINE Drafts")
    assert c.command("f FETCH 1:3 FLAGS") == [
        b"* 1 FETCH (FLAGS ())\r\n",
        b"* 2 FETCH (FLAGS ())\r\n",
        b"* 3 FETCH (FLAGS ($MDNSent \\Draft \\Seen))\r\n",
        b"f OK FETCH completed\r\n",
    ]


def test_catenate_sections_partial_and_plain_parts(store: SQLiteStore) -> None:
    # HEADER.FIELDS is computed, TEXT and <partial> are spans; keywords in any case, percent-encoded
    # octets in the mailbox name; MULTIAPPEND of a CATENATE and a plain message.
    store.mail.create_mailbox(1, "Old mail")
    deliver(store, FORWARDED, "Old mail")
    c = client(store)
    lines = c.command(
        'a APPEND Drafts CATENATE (URL "/Drafts/;UID=2/;SECTION=HEADER.FIELDS%20(SUBJECT)" '
        'URL "/Old%20mail/;UID=1/;SECTION=TEXT/;PARTIAL=0.9" URL "/Drafts/;uid=1/;section=1/;partial=4") '
        "(\\Flagged) {5+}\r\nplain"
    )
    assert lines == [b"a OK [APPENDUID %d 3:4] APPEND completed\r\n" % uidvalidity(store)]
    assert stored(store, "Drafts", 3) == b"Subject: forwarded\r\n\r\n" + b"Forwarded" + PART_BODY[4:-2]
    assert stored(store, "Drafts", 4) == b"plain"


@pytest.mark.parametrize(
    "url",
    [
        "/Drafts/;UID=9",  # no such message
        "/Drafts;UIDVALIDITY=1/;UID=1",  # another UIDVALIDITY: the mailbox was recreated
        "/Nowhere/;UID=1",  # no such mailbox
        "/Drafts/;UID=1/;SECTION=7",  # no such part
        "/Drafts/;UID=1/;SECTION=BOGUS",
        "imap://bob@imap.example.test/Drafts/;UID=1",  # absolute: RFC 4469 §3 describes relative URLs only
        "//imap.example.test/Drafts/;UID=1",
        "/Drafts/;UID=1/;URLAUTH=anonymous:internal:0123456789abcdef",
        "/Drafts/;UID=1;SECTION=1",  # SECTION needs its "/"
        "/Drafts;UID=1",
        "/Drafts/;SECTION=1/;UID=1",
        "/Drafts/;UID=0",
        "/Drafts/;UID=4294967296",
        "/Dr%2afts/;UID=1",  # "*": not the mailbox Drafts
        "/Drafts%ZZ/;UID=1",
        ";UID=1",  # relative to the selected mailbox: not taken
    ],
)
def test_catenate_bad_urls_store_nothing(store: SQLiteStore, url: str) -> None:
    # RFC 4469 §4.1: NO [BADURL url] for the first URL that failed; with MULTIAPPEND nothing is stored.
    c = client(store)
    assert c.command(f'a APPEND Drafts {{5+}}\r\nfirst CATENATE (TEXT {{2+}}\r\nok URL "{url}")') == [
        f"a NO [BADURL {url}] Bad URL\r\n".encode()
    ]
    assert store.mail.mailbox_status(uidvalidity_mailbox_id(store)).messages == 2


def uidvalidity_mailbox_id(store: SQLiteStore) -> int:
    mailbox = store.mail.get_mailbox(1, "Drafts")
    assert mailbox is not None
    return mailbox.id


def test_catenate_urls_name_only_the_users_own_messages(tmp_path: Path) -> None:
    # Mailbox names in a URL are the session user's: alice's INBOX message is out of bob's reach.
    store = SQLiteStore(tmp_path / "data")
    store.accounts.add_account("bob@example.test", "unused")
    store.accounts.add_account("alice@example.test", "unused")
    store.start()
    try:
        store.mail.deliver(Delivery(new_message_id(), FORWARDED, (DeliveryTarget(2, "INBOX"),), WHEN)).result(10)
        c = client(store)
        assert c.command('a APPEND INBOX CATENATE (URL "/INBOX/;UID=1")') == [
            b"a NO [BADURL /INBOX/;UID=1] Bad URL\r\n"
        ]
    finally:
        store.close()


def test_badurl_never_echoes_what_breaks_a_response(store: SQLiteStore) -> None:
    # A URL is an astring: as a literal it may hold CRLF or "]". BADURL percent-encodes such octets.
    c = client(store)
    out = c.send(b"a APPEND Drafts CATENATE (URL {18+}\r\n/x]\r\n* OK forged \xff)\r\n")
    assert out == b"a NO [BADURL /x%5D%0D%0A*%20OK%20forged%20%FF] Bad URL\r\n"


def test_catenate_syntax_errors(store: SQLiteStore) -> None:
    c = client(store)
    assert c.command("a APPEND Drafts CATENATE ()") == [b"a BAD CATENATE needs TEXT or URL parts\r\n"]
    assert c.command('b APPEND Drafts CATENATE (TEXT "quoted")') == [
        b"b BAD CATENATE parts are TEXT literal or URL astring\r\n"
    ]
    assert c.command('c APPEND Drafts CATENATE (URL "/x" TEXT)') == [b"c BAD CATENATE needs TEXT or URL parts\r\n"]
    long_url = "/Drafts/;UID=1/;SECTION=" + "1." * 1100 + "1"
    assert c.command(f'd APPEND Drafts CATENATE (URL "{long_url}")') == [
        b"d BAD URL empty or too long (2048 octets at most)\r\n"
    ]
    assert c.command('e APPEND Drafts CATENATE (URL "")') == [b"e BAD URL empty or too long (2048 octets at most)\r\n"]


def test_catenate_is_bounded_by_appendlimit(store: SQLiteStore) -> None:
    # The harness's APPENDLIMIT is 100000: one URL of a 60000-octet message twice is too much; the
    # catenated messages of one command together take 4 x APPENDLIMIT at most.
    deliver(store, b"Subject: big\r\n\r\n" + b"x" * 59984)
    c = client(store)
    assert c.command('a APPEND Drafts CATENATE (URL "/INBOX/;UID=1" URL "/INBOX/;UID=1")') == [
        b"a NO [TOOBIG] Message too large\r\n"
    ]
    one = 'CATENATE (URL "/INBOX/;UID=1")'
    assert c.command(f"b APPEND Drafts {' '.join([one] * 7)}") == [b"b NO [TOOBIG] Message too large\r\n"]
    assert c.command(f"c APPEND Drafts {' '.join([one] * 6)}")[0].startswith(b"c OK [APPENDUID")


def test_catenate_stops_resolving_urls_past_appendlimit(store: SQLiteStore) -> None:
    # 100 URL parts (the most a message may have) of a 60,000-octet message: the second already passes
    # APPENDLIMIT (100000), so the handler looks up two messages, not 100, and holds no section octets
    # (HEADER.FIELDS.NOT is computed again when copied).
    deliver(store, b"Subject: big\r\n\r\n" + b"x" * 59984)
    c = client(store)
    recording = Recording(store)
    assert c.session is not None
    c.session.store = recording  # type: ignore[assignment]
    parts = " ".join(['URL "/INBOX/;UID=1"'] * 100)
    assert c.command(f"a APPEND Drafts CATENATE ({parts})") == [b"a NO [TOOBIG] Message too large\r\n"]
    assert recording.lookups == 2
    parts = " ".join(['URL "/INBOX/;UID=1/;SECTION=HEADER.FIELDS.NOT%20(X)"'] * 3)
    assert c.command(f"b APPEND Drafts CATENATE ({parts})")[0].startswith(b"b OK")
    assert recording.deliveries[0].data == b"Subject: big\r\n\r\n" * 3


class Recording:
    """The store, noting the deliveries it is given (to see whether a message came as a spool file)."""

    def __init__(self, store: SQLiteStore) -> None:
        self.store = store
        self.deliveries: list[Delivery] = []
        self.spool_files: list[list[Path]] = []
        self.lookups = 0

    def deliver_group(self, deliveries: Sequence[Delivery]) -> Future[list[list[StoredMessage]]]:
        self.deliveries += deliveries
        folder = spool_dir(self.store.root)
        self.spool_files.append(sorted(folder.iterdir()) if folder.exists() else [])
        return self.store.mail.deliver_group(deliveries)

    def message_rows(self, *args: object, **kwargs: object) -> object:
        self.lookups += 1
        return self.store.mail.message_rows(*args, **kwargs)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> object:
        return getattr(self.store.mail, name)


def test_large_catenate_is_assembled_in_a_spool_file(store: SQLiteStore) -> None:
    # Past 1 MiB the catenated message is written to a spool file a CHUNK at a time (never joined in
    # memory): a 1.5 MB stored message, a TEXT literal the core spooled (1.2 MB) and a small one.
    big = b"Subject: big\r\n\r\n" + b"y" * 1_500_000
    deliver(store, big)
    text = b"z" * 1_200_000
    c = client(store, append_limit=5_000_000)
    recording = Recording(store)
    assert c.session is not None
    c.session.store = recording  # type: ignore[assignment]
    command = b'a APPEND Drafts CATENATE (URL "/INBOX/;UID=1" TEXT {1200000+}\r\n' + text + b" TEXT {3+}\r\nend)\r\n"
    out = c.send(command)
    assert out == b"a OK [APPENDUID %d 3] APPEND completed\r\n" % uidvalidity(store)
    [delivery] = recording.deliveries
    assert isinstance(delivery.data, Content) and isinstance(delivery.data.tail, FileSpan)
    assert delivery.data.tail.length == len(big) + len(text) + 3
    assert len(recording.spool_files[0]) == 2  # the core's spool file (the TEXT) and the assembled message
    assert stored(store, "Drafts", 3) == big + text + b"end"
    assert list(spool_dir(store.root).iterdir()) == []  # both removed after the command


def test_small_catenate_is_assembled_in_memory(store: SQLiteStore) -> None:
    c = client(store)
    recording = Recording(store)
    assert c.session is not None
    c.session.store = recording  # type: ignore[assignment]
    assert c.command('a APPEND Drafts CATENATE (URL "/Drafts/;UID=2" TEXT {3+}\r\nend)')[0].startswith(b"a OK")
    assert recording.deliveries[0].data == FORWARDED + b"end"


def test_core_spools_catenate_text_but_never_a_url_literal() -> None:
    # TEXT literals are message octets (spooled past 1 MiB like any APPEND literal); a URL literal is an
    # argument, held, and at most 2,048 octets (MAX_URL).
    conn = ImapConnection(replace(SETTINGS, append_limit=5_000_000), is_loopback=True)
    conn.start()
    conn.receive_data(b"l LOGIN bob@example.test pw\r\n")
    assert isinstance(conn.next_event(), LoginRequested)
    conn.login_result("l", "bob@example.test")
    conn.data_to_send()
    text = b"t" * 1_100_000
    url = b"/INBOX/;UID=1"
    conn.receive_data(b"x APPEND INBOX CATENATE (TEXT {1100000+}\r\n" + text + b" URL {13+}\r\n" + url + b")\r\n")
    pieces = []
    while isinstance(event := conn.next_event(), AppendData):
        pieces.append(event.data)
    assert isinstance(event, CommandReady) and isinstance(event.command, Append)
    assert event.command.messages[0].parts == (CatPart(literal=0, spooled=1_100_000), CatPart(url=url))
    assert b"".join(pieces) == text
    conn.finish("x", Status.OK, "APPEND completed")
    conn.data_to_send()
    conn.receive_data(b"y APPEND INBOX CATENATE (URL {2049}\r\n")
    assert conn.next_event() is None
    assert conn.data_to_send() == b"y BAD Literal too large (2048 octets allowed)\r\n"


def test_issue_9_catenate_url_literals_are_bounded_by_the_command_not_the_messages() -> None:
    """URL literals are held in memory: 2,048 octets each and MAX_COMMAND together (they counted against
    4 x APPENDLIMIT, ~200 MB, at 64 KiB each), and 100 URL parts a message (each one is looked up)."""
    conn = ImapConnection(replace(SETTINGS, append_limit=50_000_000), is_loopback=True)
    conn.start()
    conn.receive_data(b"l LOGIN bob@example.test pw\r\n")
    assert isinstance(conn.next_event(), LoginRequested)
    conn.login_result("l", "bob@example.test")
    conn.data_to_send()
    url = b"/INBOX/;UID=1/;PARTIAL=0.1" + b"x" * 2022
    conn.receive_data(b"a APPEND INBOX CATENATE (" + b"URL {2048+}\r\n" + url + b" " + b"URL {2048+}\r\n" + url)
    for _ in range(600):  # 1.2 MB of URLs: refused past 1 MiB, the rest of the command dropped
        conn.receive_data(b" URL {2048+}\r\n" + url)
    conn.receive_data(b")\r\n")
    assert conn.next_event() is None
    assert conn.data_to_send() == b"a BAD Literal too large (2048 octets allowed)\r\n"
    parts = b" ".join([b"URL /INBOX/;UID=1"] * 101)
    conn.receive_data(b"b APPEND INBOX CATENATE (" + parts + b")\r\n")
    assert conn.next_event() is None
    assert conn.data_to_send().startswith(b"b BAD")


def test_parse_message_url() -> None:
    assert parse_message_url(b"/INBOX;UIDVALIDITY=7/;UID=20/;SECTION=1.2.MIME/;PARTIAL=10.5") == MessageUrl(
        "INBOX", 7, 20, Section((1, 2), "MIME"), (10, 5)
    )
    assert parse_message_url(b"/inbox/;Uid=20") == MessageUrl("INBOX", None, 20)
    assert parse_message_url(b"/a/b%C3%A4;uidvalidity=1/;uid=3/;partial=4") == MessageUrl("a/b\u00e4", 1, 3, None,
                                                                                         (4, None))  # fmt: skip
    for bad in (b"/INBOX/;UID=1/;PARTIAL=1.0", b"/INBOX/;UID=1/;SECTION=", b"/INBOX/;UID=1/", b"/INBOX/;UID=1;",
                b"/INBOX;UIDVALIDITY=1;UID=1", b"/INBOX/;UIDVALIDITY=1/;UID=1", b"/INBOX/;UID=1/;UID=2",
                b"/%FF/;UID=1", b"/IN BOX/;UID=1"):  # fmt: skip
        assert parse_message_url(bad) is None, bad
    assert badurl_text(b"/a]b c\r\n") == "/a%5Db%20c%0D%0A"


def test_parse_message_url_is_linear() -> None:
    # Every octet is looked at a bounded number of times: 100 URLs of MAX_URL octets of ";" / "%" / "/".
    started = time.process_time()
    for filler in (b";", b"%", b"/", b";A=", b"%4"):
        for _ in range(20):
            parse_message_url(b"/" + filler * (2048 // len(filler)))
    assert time.process_time() - started < 5


def test_issue_9_a_tag_named_catenate_makes_no_catenate() -> None:
    """Only the command's arguments say CATENATE: a message literal after a mailbox named URL, in a
    command tagged CATENATE, is a message (spooled, NO [TOOBIG] past APPENDLIMIT), not a URL (BAD)."""
    conn = ImapConnection(replace(SETTINGS, append_limit=100_000), is_loopback=True)
    conn.start()
    conn.receive_data(b"l LOGIN bob@example.test pw\r\n")
    assert isinstance(conn.next_event(), LoginRequested)
    conn.login_result("l", "bob@example.test")
    conn.data_to_send()
    conn.receive_data(b"CATENATE APPEND URL {200000}\r\n")
    assert conn.next_event() is None
    assert conn.data_to_send() == b"CATENATE NO [TOOBIG] Literal too large (100000 octets allowed)\r\n"
