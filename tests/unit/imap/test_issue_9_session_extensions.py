"""Issue 9: the session extensions UNAUTHENTICATE (RFC 8437), MULTIAPPEND (RFC 3502) and NOTIFY (RFC 5465),
as transcripts after their RFCs' examples, over a real store."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kartero.imap.commands import notify
from kartero.imap.connection import APPEND_PIECE, AppendData, CommandReady, ImapConnection, LoginRequested
from kartero.imap.syntax import NotifyGroup
from kartero.store.ids import new_message_id
from kartero.store.interface import Delivery, DeliveryTarget, MetadataChange
from kartero.store.sqlite import SQLiteStore
from tests.unit.imap.harness import SETTINGS, Client, play
from tests.unit.imap.test_fuzz import argument, assert_responses
from tests.unit.mime import corpus

WHEN = 1795687200  # 2026-11-26 10:00:00 UTC


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "data")
    s.accounts.add_account("bob@example.test", "unused")
    s.accounts.add_account("alice@example.test", "unused")
    s.start()
    yield s
    s.close()


def deliver(store: SQLiteStore, mailbox: str = "INBOX", account_id: int = 1) -> None:
    target = DeliveryTarget(account_id, mailbox)
    store.mail.deliver(Delivery(new_message_id(), corpus.PLAIN, (target,), WHEN)).result(10)


def client(store: SQLiteStore) -> Client:
    c = Client(store=store)
    c.login()
    return c


def uidvalidity(store: SQLiteStore, name: str) -> int:
    mailbox = store.mail.get_mailbox(1, name)
    assert mailbox is not None
    return mailbox.uidvalidity


# -- UNAUTHENTICATE (RFC 8437) -------------------------------------------------------------------------------


def test_issue_9_unauthenticate_is_advertised_after_login(store: SQLiteStore) -> None:
    c = Client(store=store)
    assert b"UNAUTHENTICATE" not in c.greeting
    assert b" UNAUTHENTICATE " in c.command("a LOGIN bob@example.test pw")[-1]


def test_issue_9_unauthenticate_returns_to_not_authenticated(store: SQLiteStore) -> None:
    deliver(store)
    play(lambda: Client(store=store), """
        S~ \\* OK \\[CAPABILITY .*\\] imap.example.test Kartero IMAP4rev2 ready
        C: a LOGIN bob@example.test pw
        S~ a OK \\[CAPABILITY .*\\] Logged in
        C: b ENABLE CONDSTORE
        S: * ENABLED CONDSTORE
        S: b OK ENABLE completed
        C: c EXAMINE INBOX
        S~ \\* .*
        S~ \\* .*
        S~ \\* .*
        S~ \\* .*
        S~ \\* .*
        S~ \\* .*
        S~ \\* .*
        S~ \\* .*
        S~ \\* .*
        S: c OK [READ-ONLY] EXAMINE completed
        C: d UNAUTHENTICATE
        S: d OK UNAUTHENTICATE completed
        C: e FETCH 1 FLAGS
        S: e BAD FETCH not allowed now
        C: f SELECT INBOX
        S: f BAD SELECT not allowed now
        C: g LOGIN alice@example.test pw
        S~ g OK \\[CAPABILITY .*\\] Logged in
        C: h ENABLE CONDSTORE
        S: * ENABLED CONDSTORE
        S: h OK ENABLE completed
        C: i STATUS INBOX (MESSAGES)
        S: * STATUS "INBOX" (MESSAGES 0)
        S: i OK STATUS completed
    """)  # fmt: skip


def test_issue_9_unauthenticate_lets_go_of_the_selected_mailbox(store: SQLiteStore) -> None:
    deliver(store)
    one, two = client(store), client(store)
    two.select()
    one.select()
    one.command("a STORE 1 +FLAGS.SILENT (\\Deleted)")
    one.command("b EXPUNGE")
    assert store.mail.message_rows(1, [1], expunged=True) != []  # kept while session two shows it
    assert two.command("c UNAUTHENTICATE") == [b"c OK UNAUTHENTICATE completed\r\n"]
    deliver(store, "Archive")  # the committer has let it go meanwhile
    assert store.mail.message_rows(1, [1], expunged=True) == []


# -- MULTIAPPEND (RFC 3502) -----------------------------------------------------------------------------------

FIRST = (
    b"Date: Mon, 7 Feb 1994 21:52:25 -0800 (PST)\r\nFrom: Fred Foobar <foobar@Blurdybloop.example.COM>\r\n"
    b"Subject: afternoon meeting\r\nTo: mooch@owatagu.siam.edu\r\n\r\nHello Joe, do you think we can meet at 3:30?\r\n"
)
SECOND = (
    b"Date: Mon, 7 Feb 1994 22:43:04 -0800 (PST)\r\nFrom: Joe Mooch <mooch@OWaTaGu.siam.EDU>\r\n"
    b"Subject: Re: afternoon meeting\r\nTo: foobar@blurdybloop.example.com\r\n\r\n3:30 is fine with me.\r\n"
)


def test_issue_9_multiappend_rfc_3502_example(store: SQLiteStore) -> None:
    store.mail.create_mailbox(1, "saved-messages")
    v = uidvalidity(store, "saved-messages")
    between = b' (\\Seen) " 7-Feb-1994 22:43:04 -0800" {%d}\r\n' % len(SECOND)
    play(lambda: Client(store=store), f"""
        S~ \\* OK .* ready
        C: l LOGIN bob@example.test pw
        S~ l OK .*
        C: A003 APPEND saved-messages (\\Seen) {{{len(FIRST)}}}
        S: + Ready for literal data
        C! {FIRST!r}
        C! {between!r}
        S: + Ready for literal data
        C! {SECOND!r}
        C:
        S: A003 OK [APPENDUID {v} 1:2] APPEND completed
        C: A004 APPEND unknown-mailbox {{1+}}
        C: x {{1+}}
        C: y
        S: A004 NO [TRYCREATE] No such mailbox
    """, bytewise_too=False)  # fmt: skip
    c = client(store)
    c.command("a EXAMINE saved-messages")
    assert c.command("b FETCH 1:2 (FLAGS RFC822.SIZE)")[:2] == [
        b"* 1 FETCH (FLAGS (\\Recent \\Seen) RFC822.SIZE %d)\r\n" % len(FIRST),
        b"* 2 FETCH (FLAGS (\\Recent \\Seen) RFC822.SIZE %d)\r\n" % len(SECOND),
    ]
    assert c.command("b2 FETCH 2 INTERNALDATE")[0] == b'* 2 FETCH (INTERNALDATE "08-Feb-1994 06:43:04 +0000")\r\n'
    assert c.command("c FETCH 2 BODY.PEEK[]")[1:3] == [line + b"\r\n" for line in SECOND.split(b"\r\n")[:2]]


def test_issue_9_multiappend_into_the_selected_mailbox_reports_exists(store: SQLiteStore) -> None:
    c = client(store)
    c.command("e ENABLE IMAP4rev2")
    c.select()
    lines = c.command(f"a APPEND INBOX {{{len(FIRST)}+}}\r\n{FIRST.decode()} {{{len(SECOND)}+}}\r\n{SECOND.decode()}")
    assert lines == [b"* 2 EXISTS\r\n", b"a OK [APPENDUID %d 1:2] APPEND completed\r\n" % uidvalidity(store, "INBOX")]


def test_issue_9_multiappend_is_all_or_nothing(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "data")
    store.accounts.add_account("bob@example.test", "unused")
    store.start()
    try:
        c = client(store)  # APPENDLIMIT 100000 in the harness
        # The second message is over the limit: the command fails and the first is not stored either.
        assert c.command(f"a APPEND INBOX {{{len(FIRST)}+}}\r\n{FIRST.decode()} {{200000}}") == [
            b"a NO [TOOBIG] Literal too large (100000 octets allowed)\r\n"
        ]
        # The messages together may take 4 x APPENDLIMIT (one spool file per command bounds the disk).
        small = b"x" * 90000
        out = c.send(b"b APPEND INBOX" + b" {90000+}\r\n" * 1 + small + b" {90000+}\r\n" + small + b"\r\n")
        assert out.startswith(b"b OK [APPENDUID")
        many = b"c APPEND INBOX" + (b" {90000+}\r\n" + small) * 16 + b" {90000}\r\n"
        assert c.send(many) == b"c NO [TOOBIG] Literal too large (100000 octets allowed)\r\n"  # 17 x 90000
        assert store.mail.mailbox_status(1).messages == 2
    finally:
        store.close()


def test_issue_9_multiappend_spools_each_large_message_to_one_file() -> None:
    """Past 1 MiB in memory, an APPEND's messages leave the core in AppendData pieces, back to back in the
    adapter's one spool file; the command says how large each spooled message is."""
    conn = ImapConnection(replace(SETTINGS, append_limit=5_000_000), is_loopback=True)
    conn.start()
    conn.receive_data(b"l LOGIN bob@example.test pw\r\n")
    assert isinstance(conn.next_event(), LoginRequested)
    conn.login_result("l", "bob@example.test")
    big, small, middle = b"a" * 1_500_000, b"b" * 600_000, b"c" * 700_000
    conn.receive_data(b"x APPEND INBOX {1500000+}\r\n" + big + b" {600000+}\r\n" + small)
    conn.receive_data(b" (\\Seen) {700000+}\r\n" + middle + b"\r\n")
    pieces: list[AppendData] = []
    while isinstance(event := conn.next_event(), AppendData):
        pieces.append(event)
    assert isinstance(event, CommandReady)
    assert [m.spooled for m in event.command.messages] == [1_500_000, 0, 700_000]  # type: ignore[union-attr]
    assert event.command.messages[1].data == small  # type: ignore[union-attr]
    assert b"".join(p.data for p in pieces) == big + middle
    assert [p.is_first for p in pieces].count(True) == 1 and pieces[0].is_first
    assert max(len(p.data) for p in pieces) <= APPEND_PIECE


# -- NOTIFY (RFC 5465) ---------------------------------------------------------------------------------------


def push(c: Client, *mailboxes: str, names: bool = False) -> list[bytes]:
    """What the adapter sends a NOTIFY session between commands once the store announced changes to
    `mailboxes` (and to the account's mailbox list when `names`)."""
    assert c.session is not None
    ids = frozenset(m.id for m in c.store.mail.list_mailboxes(1) if m.name in mailboxes)  # type: ignore[union-attr]
    pending = notify.PendingChanges(set(ids), names)
    return b"".join(notify.updates(c.session, pending)).splitlines(keepends=True)


def test_issue_9_notify_rfc_5465_example(store: SQLiteStore) -> None:
    for name in ("Lists", "Lists/Lemonade", "Other"):
        store.mail.create_mailbox(1, name)
    deliver(store, "Lists/Lemonade")
    c = client(store)
    c.command("e ENABLE IMAP4rev2")
    c.select()
    lists, lemonade = uidvalidity(store, "Lists"), uidvalidity(store, "Lists/Lemonade")
    assert c.command(
        "a NOTIFY SET STATUS (SELECTED (MessageNew (UID BODY.PEEK[HEADER.FIELDS (From Subject)]) MessageExpunge))"
        " (SUBTREE Lists (MessageNew MessageExpunge))"
    ) == [
        b'* STATUS "Lists" (MESSAGES 0 UIDNEXT 1 UIDVALIDITY %d UNSEEN 0)\r\n' % lists,
        b'* STATUS "Lists/Lemonade" (MESSAGES 1 UIDNEXT 2 UIDVALIDITY %d UNSEEN 1)\r\n' % lemonade,
        b"a OK NOTIFY completed\r\n",
    ]
    # New mail in the selected mailbox: EXISTS, then the FETCH MessageNew asked for, with no command.
    deliver(store)
    header = b"From: Alice Example <alice@example.org>\r\nSubject: Quarterly report\r\n\r\n"
    assert push(c, "INBOX") == [
        b"* 1 EXISTS\r\n",
        b"* 1 FETCH (UID 1 BODY[HEADER.FIELDS (FROM SUBJECT)] {%d}\r\n" % len(header),
        *header.splitlines(keepends=True),
        b")\r\n",
    ]
    # In a watched mailbox: STATUS; in one that is not watched: nothing.
    deliver(store, "Lists/Lemonade")
    deliver(store, "Other")
    assert push(c, "Lists/Lemonade", "Other") == [
        b'* STATUS "Lists/Lemonade" (MESSAGES 2 UIDNEXT 3 UIDVALIDITY %d UNSEEN 2)\r\n' % lemonade
    ]
    assert push(c, "Lists/Lemonade") == []  # nothing new since
    # An expunge elsewhere reaches the selected mailbox between commands (SELECTED, not -DELAYED).
    other = client(store)
    other.select()
    other.command("b STORE 1 +FLAGS.SILENT (\\Deleted)")
    other.command("c EXPUNGE")
    assert push(c, "INBOX") == [b"* 1 EXPUNGE\r\n"]
    assert c.command("d NOTIFY NONE") == [b"d OK NOTIFY completed\r\n"]
    deliver(store)
    assert push(c, "INBOX") == []


def test_issue_9_notify_selected_delayed_holds_expunges_for_a_command(store: SQLiteStore) -> None:
    deliver(store)
    deliver(store)
    c, other = client(store), client(store)
    c.command("e ENABLE IMAP4rev2")
    c.select()
    other.select()
    assert c.command("a NOTIFY SET (SELECTED-DELAYED (MessageNew MessageExpunge FlagChange))") == [
        b"a OK NOTIFY completed\r\n"
    ]
    other.command("b STORE 1 +FLAGS (\\Deleted)")
    other.command("c EXPUNGE")
    deliver(store)
    assert push(c, "INBOX") == [b"* 3 EXISTS\r\n"]  # the expunge waits for a command that may report it
    assert c.command("d NOOP") == [b"* 1 EXPUNGE\r\n", b"d OK NOOP completed\r\n"]
    # IDLE is such a command: there the expunge goes out as it happens.
    other.command("f STORE 1 +FLAGS.SILENT (\\Deleted)")
    other.command("g EXPUNGE")
    assert c.session is not None
    assert b"".join(notify.updates(c.session, notify.PendingChanges(), is_idling=True)) == b"* 1 EXPUNGE\r\n"


def test_issue_9_notify_flag_changes_elsewhere_and_condstore(store: SQLiteStore) -> None:
    store.mail.create_mailbox(1, "Work")
    deliver(store, "Work")
    c, other = client(store), client(store)
    c.command("e ENABLE CONDSTORE")
    assert c.command("a NOTIFY SET (MAILBOXES (Work) (MessageNew MessageExpunge FlagChange))") == [
        b"a OK NOTIFY completed\r\n"
    ]
    other.select("Work")
    other.command("b STORE 1 +FLAGS (\\Seen)")
    assert push(c, "Work") == [b'* STATUS "Work" (UIDVALIDITY %d UNSEEN 0 HIGHESTMODSEQ 3)\r\n' % (
        uidvalidity(store, "Work"))]  # fmt: skip
    # The session's own APPEND is not reported back to it.
    assert c.command("c APPEND Work {1+}\r\nx")[-1].startswith(b"c OK [APPENDUID")
    assert push(c, "Work") == []


def test_issue_9_notify_mailbox_names_and_subscriptions(store: SQLiteStore) -> None:
    c, other = client(store), client(store)
    assert c.command("a NOTIFY SET (PERSONAL (MailboxName SubscriptionChange))") == [b"a OK NOTIFY completed\r\n"]
    other.command("b CREATE Projects")
    other.command("c SUBSCRIBE Projects")
    assert push(c, names=True) == [b'* LIST () "/" "Projects"\r\n', b'* LIST (\\Subscribed) "/" "Projects"\r\n']
    other.command("d RENAME Projects Clients")
    assert push(c, names=True) == [
        b'* LIST () "/" "Clients" ("OLDNAME" ("Projects"))\r\n',
        b'* LIST (\\Subscribed) "/" "Clients"\r\n',
        b'* LIST () "/" "Projects"\r\n',
    ]
    other.command("e UNSUBSCRIBE Clients")
    other.command("f DELETE Clients")
    assert push(c, names=True) == [b'* LIST (\\NonExistent) "/" "Clients"\r\n', b'* LIST () "/" "Clients"\r\n']
    # The session's own changes are not reported back to it.
    c.command("g CREATE Mine")
    assert push(c, names=True) == []


@pytest.mark.parametrize(
    ("command", "reply"),
    [
        ("NOTIFY SET (PERSONAL (MailboxMetadataChange ServerMetadataChange))", "OK NOTIFY completed"),
        # No per-message annotations (RFC 5257), so none to report on (RFC 5465 §5.3).
        ("NOTIFY SET (SELECTED (MessageNew MessageExpunge AnnotationChange))",
         "NO [BADEVENT (MessageNew MessageExpunge FlagChange MailboxName SubscriptionChange MailboxMetadataChange"
         " ServerMetadataChange)] Unsupported event"),
        # §5's pairing holds for the selected mailbox only, as in Dovecot 2.3 (the RFC's §3.1 example asks for
        # MessageNew alone under SUBTREE).
        ("NOTIFY SET (SELECTED (MessageNew))", "BAD MessageNew and MessageExpunge must be given together"),
        ("NOTIFY SET (SELECTED-DELAYED (FlagChange))", "BAD FlagChange needs MessageNew and MessageExpunge"),
        ("NOTIFY SET (PERSONAL (MessageNew))", "OK NOTIFY completed"),
        ("NOTIFY SET (PERSONAL (FlagChange))", "OK NOTIFY completed"),
        ("NOTIFY SET (SELECTED (MessageNew MessageExpunge MailboxMetadataChange))",
         "BAD only message events for the selected mailbox"),
        ("NOTIFY SET (SELECTED (MailboxName))", "BAD only message events for the selected mailbox"),
        ("NOTIFY SET (SELECTED NONE) (SELECTED-DELAYED NONE)", "BAD only one of SELECTED and SELECTED-DELAYED"),
        ("NOTIFY SET (EVERYWHERE NONE)", "BAD unknown mailbox filter EVERYWHERE"),
        ("NOTIFY SET (INBOXES (MessageNew (UID) MessageExpunge))",
         "BAD fetch attributes only for the selected mailbox"),
        ("NOTIFY SET (SELECTED (MessageNew () MessageExpunge))", "BAD empty fetch attribute list"),
        ("NOTIFY SET (INBOXES (MessageNew MessageExpunge)) (SUBSCRIBED NONE)", "OK NOTIFY completed"),
        # Keywords in ASCII case only (RFC 9051 §9): U+017F is not an S.
        ("NOTIFY \u017fET (PERSONAL NONE)", "BAD NOTIFY takes SET or NONE"),
        ("NOTIFY SET (PER\u017fONAL NONE)", "BAD unknown mailbox filter PER?ONAL"),
        ("notify set status (personal (messagenew messageexpunge))", "OK NOTIFY completed"),
        ("NOTIFY SET (MAILBOXES (" + "a " * 1001 + ") NONE)", "BAD too many mailboxes (1000 at most)"),
    ],
)  # fmt: skip
def test_issue_9_notify_syntax_and_refusals(store: SQLiteStore, command: str, reply: str) -> None:
    assert client(store).command(f"t {command}")[-1] == f"t {reply}\r\n".encode()


def test_issue_9_notify_pending_changes_are_bounded() -> None:
    """A session's backlog holds each changed mailbox once, and at most MAX_PENDING_MAILBOXES of them."""
    pending = notify.PendingChanges()
    for _ in range(3):
        pending.add(range(notify.MAX_PENDING_MAILBOXES))  # the same mailboxes again: no growth
    assert len(pending.mailboxes) == notify.MAX_PENDING_MAILBOXES and not pending.overflowed
    pending.add([notify.MAX_PENDING_MAILBOXES])
    assert pending.overflowed and pending.mailboxes == set()
    pending.add(range(5))  # nothing more is kept once overflowed
    taken = pending.take()
    assert taken.overflowed and taken.mailboxes == set()
    assert not pending.overflowed and pending.mailboxes == set() and not pending.names


def test_issue_9_notify_overflow_turns_notify_off(store: SQLiteStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """RFC 5465 §5.8: a session that fell too far behind hears NOTIFICATIONOVERFLOW once, then nothing
    unsolicited, as after NOTIFY NONE; a new NOTIFY SET works again."""
    monkeypatch.setattr(notify, "MAX_PENDING_MAILBOXES", 2)
    for name in ("A", "B", "C"):
        store.mail.create_mailbox(1, name)
    c = client(store)
    c.command("e ENABLE IMAP4rev2")
    c.select()
    assert c.command("a NOTIFY SET (SELECTED (MessageNew MessageExpunge)) (PERSONAL (MessageNew MessageExpunge))"
                     ) == [b"a OK NOTIFY completed\r\n"]  # fmt: skip
    assert c.session is not None and c.session.notify is not None
    for name in ("A", "B", "C"):
        deliver(store, name)
    deliver(store)
    pending = notify.PendingChanges()
    pending.add(m.id for m in store.mail.list_mailboxes(1) if m.name in ("A", "B", "C"))
    assert b"".join(notify.updates(c.session, pending)) == (
        b"* OK [NOTIFICATIONOVERFLOW] Too many changes to report, NOTIFY is off\r\n"
    )
    assert c.session.notify is None
    deliver(store, "A")
    assert push(c, "A", "INBOX") == []
    assert c.command("b NOOP") == [b"* 1 EXISTS\r\n", b"b OK NOOP completed\r\n"]  # as without NOTIFY
    assert c.command("c NOTIFY SET (PERSONAL (MessageNew MessageExpunge))") == [b"c OK NOTIFY completed\r\n"]
    deliver(store, "B")
    assert push(c, "B") == [b'* STATUS "B" (MESSAGES 2 UIDNEXT 3 UIDVALIDITY %d UNSEEN 2)\r\n' % (
        uidvalidity(store, "B"))]  # fmt: skip


def test_issue_9_notify_subtree_takes_the_name_and_its_inferiors_only() -> None:
    group = NotifyGroup("SUBTREE", frozenset({"Lists", "Work/2026"}), frozenset({"MessageNew", "MessageExpunge"}))
    state = notify.NotifyState((group,), None)
    taken = ["Lists", "Lists/Lemonade", "Lists/a/b", "Work/2026", "Work/2026/Q1"]
    for name in taken:
        assert state.events_for(name) == group.events, name
    for name in ("Listsx", "Lists2/a", "Work", "Work/2025", "INBOX", "lists"):
        assert state.events_for(name) == frozenset(), name


def test_issue_9_notify_watches_mailboxes_created_after_notify_set(store: SQLiteStore) -> None:
    """PERSONAL with message events only: a mailbox another session creates later is watched too, and
    mail that reached it before this session re-read the mailbox list is reported all the same."""
    c, other = client(store), client(store)
    assert c.command("a NOTIFY SET (PERSONAL (MessageNew MessageExpunge))") == [b"a OK NOTIFY completed\r\n"]
    assert c.session is not None and c.session.notify is not None
    assert c.session.notify.follows_names  # the adapter passes on changes to the mailbox list
    other.command("b CREATE Projects")
    assert push(c, names=True) == []  # no MailboxName asked for, nothing in it yet
    deliver(store, "Projects")
    assert push(c, "Projects") == [b'* STATUS "Projects" (MESSAGES 1 UIDNEXT 2 UIDVALIDITY %d UNSEEN 1)\r\n' % (
        uidvalidity(store, "Projects"))]  # fmt: skip
    # Created and filled before the session heard of it: the message change named a mailbox it did not
    # watch yet, the mailbox-list change brings the STATUS.
    other.command("c CREATE Clients")
    deliver(store, "Clients")
    assert push(c, "Clients") == []
    assert push(c, names=True) == [b'* STATUS "Clients" (MESSAGES 1 UIDNEXT 2 UIDVALIDITY %d UNSEEN 1)\r\n' % (
        uidvalidity(store, "Clients"))]  # fmt: skip
    assert push(c, "Clients", names=True) == []


def test_issue_9_a_refused_literal_plus_drops_the_rest_of_its_command(store: SQLiteStore) -> None:
    """RFC 7888 §4: a refused non-synchronising literal is read and dropped, and so is the rest of its
    command, further LITERAL+ literals included. The tail used to be parsed as a new command (`* BAD`)."""
    c = client(store)  # APPENDLIMIT 100000 in the harness
    value = b"v" * 65537
    out = c.send(b"s SETMETADATA INBOX (/private/comment {65537+}\r\n" + value + b")\r\nn NOOP\r\n")
    assert out == b"s NO [METADATA MAXSIZE 65536] Value too large\r\nn OK NOOP completed\r\n"
    big, small = b"x" * 150000, b"From: a@example.org\r\n\r\nhi\r\n"
    out = c.send(b"a APPEND INBOX {150000+}\r\n" + big + b" {%d+}\r\n%s\r\nn NOOP\r\n" % (len(small), small))
    assert out == b"a NO [TOOBIG] Literal too large (100000 octets allowed)\r\nn OK NOOP completed\r\n"
    assert store.mail.mailbox_status(1).messages == 0  # nothing stored: the small message was part of the command
    # The dropped tail of a command is bounded too: past 4 x the limit in all, the session ends.
    out = c.send(b"b APPEND INBOX {150000+}\r\n" + big + b" {400000+}\r\n")
    assert out.startswith(b"* BYE")


NOTIFY_WORDS = [
    "SET", "NONE", "STATUS", "SELECTED", "SELECTED-DELAYED", "INBOXES", "PERSONAL", "SUBSCRIBED", "SUBTREE",
    "MAILBOXES", "(SELECTED (MessageNew (UID BODY.PEEK[HEADER.FIELDS (FROM)]) MessageExpunge FlagChange))",
    "(SELECTED-DELAYED (MessageNew MessageExpunge))", "(PERSONAL (MailboxName SubscriptionChange))",
    "(SUBTREE (INBOX Sent) (MessageNew MessageExpunge))", "(MAILBOXES INBOX NONE)", "(INBOXES (AnnotationChange))",
    "(SUBSCRIBED (MessageNew () MessageExpunge))", "(PERSONAL (MessageNew (BODY[) MessageExpunge))",
    "(SUBTREE \"&Jjo\" (MessageNew MessageExpunge))", "(MAILBOXES ())", "(PERSONAL ((MessageNew)))",
]  # fmt: skip
NOTIFY_ARGUMENT = st.one_of(st.sampled_from(NOTIFY_WORDS).map(str.encode), argument())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(NOTIFY_ARGUMENT, max_size=6), max_size=4))
def test_issue_9_notify_hostile_arguments_only_produce_responses(
    store: SQLiteStore, commands: list[list[bytes]]
) -> None:
    """Whatever follows NOTIFY, the answer is IMAP responses (BAD, NO [BADEVENT], OK), never an exception,
    and a session that set NOTIFY still answers commands."""
    c = Client(store=store)
    c.login()
    c.select()
    script = b"".join(b"n%d NOTIFY %s\r\n" % (i, b" ".join(args)) for i, args in enumerate(commands))
    # The empty line ends a command whose last argument was a literal (its line goes on after it).
    out = c.send(script + b"\r\nz NOOP\r\n")
    assert_responses(out)
    assert b"SERVERBUG" not in out
    assert out.endswith(b"z OK NOOP completed\r\n") or b"* BYE" in out


def test_issue_9_notify_rfc_5465_section_3_1_example_whole_and_bytewise(store: SQLiteStore) -> None:
    """The NOTIFY SET of RFC 5465 §3.1 (as corrected by errata 1804 and 2318, with MessageExpunge beside
    MessageNew as §5 requires), in lower case, played whole and one byte at a time: the section brackets
    of the fetch attributes hold spaces and parentheses, as in FETCH."""
    for name in ("Lists", "Lists/Lemonade", "misc"):
        store.mail.create_mailbox(1, name)
    lists, lemonade, misc = (uidvalidity(store, name) for name in ("Lists", "Lists/Lemonade", "misc"))
    play(lambda: Client(store=store), f"""
        S~ \\* OK .*
        C: a LOGIN bob@example.test pw
        S~ a OK .*
        C: b notify set status (selected (MessageNew (uid body.peek[header.fields (from to subject)]) MessageExpunge)) (subtree Lists (MessageNew MessageExpunge))
        S: * STATUS "Lists" (MESSAGES 0 UIDNEXT 1 UIDVALIDITY {lists} UNSEEN 0)
        S: * STATUS "Lists/Lemonade" (MESSAGES 0 UIDNEXT 1 UIDVALIDITY {lemonade} UNSEEN 0)
        S: b OK NOTIFY completed
        C: c notify set (selected (MessageNew (uid body.peek[header.fields (from to subject)]) MessageExpunge)) (subtree Lists (MessageNew MessageExpunge)) (mailboxes misc (MessageNew MessageExpunge))
        S: c OK NOTIFY completed
        C: d NOTIFY SET STATUS (MAILBOXES misc (MessageNew MessageExpunge))
        S: * STATUS "misc" (MESSAGES 0 UIDNEXT 1 UIDVALIDITY {misc} UNSEEN 0)
        S: d OK NOTIFY completed
        C: e NOTIFY NONE
        S: e OK NOTIFY completed
    """)  # noqa: E501


def meanwhile(
    monkeypatch: pytest.MonkeyPatch, store: SQLiteStore, method: str, change: Callable[[], object],
    *, after: bool = False,
) -> None:  # fmt: skip
    """Make another session's `change` happen while this session's command runs: just before (or just
    after) its own call to the store's `method` (once), as two threads may interleave."""
    original = getattr(store.mail, method)

    def interleaved(*args: object, **kwargs: object) -> object:
        monkeypatch.setattr(store.mail, method, original)
        if not after:
            change()
        result = original(*args, **kwargs)
        if after:
            if isinstance(result, Future):
                result.result(10)
            change()
        return result

    monkeypatch.setattr(store.mail, method, interleaved)


@pytest.mark.parametrize(
    ("own", "method"),
    [
        ("CREATE Mine", "create_mailbox"),
        ("DELETE Old", "delete_mailbox"),
        ("RENAME Old Renamed", "rename_mailbox"),
        ("SUBSCRIBE Old", "set_subscribed"),
        ("UNSUBSCRIBE Old", "set_subscribed"),
    ],
)
def test_issue_9_notify_reports_a_name_change_made_during_an_own_one(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch, own: str, method: str
) -> None:
    """RFC 5465 §5 spares the client only its own changes: another session's CREATE and SUBSCRIBE while
    this one's command runs are reported all the same (the state read after the command was taken as
    this session's own)."""
    store.mail.create_mailbox(1, "Old")
    c, other = client(store), client(store)
    assert c.command("a NOTIFY SET (PERSONAL (MailboxName SubscriptionChange))") == [b"a OK NOTIFY completed\r\n"]
    meanwhile(monkeypatch, store, method, lambda: (other.command("x CREATE Theirs"),
                                                   other.command("y SUBSCRIBE Theirs")))  # fmt: skip
    assert c.command(f"b {own}")[-1].startswith(b"b OK ")
    assert push(c, names=True) == [b'* LIST () "/" "Theirs"\r\n', b'* LIST (\\Subscribed) "/" "Theirs"\r\n']
    assert push(c, names=True) == []


@pytest.mark.parametrize(
    ("own", "method"),
    [
        ("APPEND Work {1+}\r\nx", "deliver_group"),
        ("COPY 1 Work", "copy_messages"),
        ("MOVE 1 Work", "copy_messages"),
    ],
)
def test_issue_9_notify_reports_mail_another_session_adds_during_an_own_write(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch, own: str, method: str
) -> None:
    """Mail delivered to a watched mailbox while this session's APPEND/COPY/MOVE into it runs is reported
    (a STATUS), whichever of the two writes came first; the session's own write alone is not."""
    store.mail.create_mailbox(1, "Work")
    for _ in range(3):
        deliver(store)
    c = client(store)
    c.command("e ENABLE IMAP4rev2")
    c.select()
    assert c.command("a NOTIFY SET (MAILBOXES (Work) (MessageNew MessageExpunge))") == [b"a OK NOTIFY completed\r\n"]
    assert c.command(f"b {own}")[-1].startswith(b"b OK ")
    assert push(c, "Work") == []  # alone: nothing reported back
    meanwhile(monkeypatch, store, method, lambda: deliver(store, "Work"))
    assert c.command(f"c {own}")[-1].startswith(b"c OK ")
    assert push(c, "Work") == [b'* STATUS "Work" (MESSAGES 3 UIDNEXT 4 UIDVALIDITY %d UNSEEN 3)\r\n' % (
        uidvalidity(store, "Work"))]  # fmt: skip
    # The other way round: the other session's delivery lands after this session's write.
    meanwhile(monkeypatch, store, method, lambda: deliver(store, "Work"), after=True)
    assert c.command(f"d {own}")[-1].startswith(b"d OK ")
    assert push(c, "Work") == [b'* STATUS "Work" (MESSAGES 5 UIDNEXT 6 UIDVALIDITY %d UNSEEN 5)\r\n' % (
        uidvalidity(store, "Work"))]  # fmt: skip


def test_issue_9_notify_rfc_5465_section_3_1_example_as_published(store: SQLiteStore) -> None:
    """The §3.1 example with `(subtree Lists (MessageNew))` as the RFC writes it (no MessageExpunge): taken
    as Dovecot 2.3 takes it; new mail in Lists is reported, an expunge there alone is not."""
    for name in ("Lists", "Lists/Lemonade"):
        store.mail.create_mailbox(1, name)
    deliver(store, "Lists/Lemonade")
    deliver(store, "Lists/Lemonade")
    lists, lemonade = uidvalidity(store, "Lists"), uidvalidity(store, "Lists/Lemonade")
    c = play(lambda: Client(store=store), f"""
        S~ \\* OK .*
        C: a LOGIN bob@example.test pw
        S~ a OK .*
        C: b notify set status (selected (MessageNew (uid body.peek[header.fields (from to subject)]) MessageExpunge)) (subtree Lists (MessageNew))
        S: * STATUS "Lists" (MESSAGES 0 UIDNEXT 1 UIDVALIDITY {lists} UNSEEN 0)
        S: * STATUS "Lists/Lemonade" (MESSAGES 2 UIDNEXT 3 UIDVALIDITY {lemonade} UNSEEN 2)
        S: b OK NOTIFY completed
    """, bytewise_too=False)  # noqa: E501
    deliver(store, "Lists")
    assert push(c, "Lists") == [b'* STATUS "Lists" (MESSAGES 1 UIDNEXT 2 UIDVALIDITY %d UNSEEN 1)\r\n' % lists]
    other = client(store)
    other.select("Lists/Lemonade")
    other.command("x STORE 1 +FLAGS.SILENT (\\Deleted)")
    other.command("y EXPUNGE")
    assert push(c, "Lists/Lemonade") == []  # MessageExpunge was not asked for
    deliver(store, "Lists/Lemonade")  # the STATUS of new mail shows the expunge too
    assert push(c, "Lists/Lemonade") == [
        b'* STATUS "Lists/Lemonade" (MESSAGES 2 UIDNEXT 4 UIDVALIDITY %d UNSEEN 2)\r\n' % lemonade]  # fmt: skip


@pytest.mark.parametrize(
    ("events", "reported"),
    [
        ("MessageNew", {"new"}),
        ("MessageExpunge", {"expunge"}),
        ("FlagChange", {"flags"}),
        ("MessageNew MessageExpunge FlagChange", {"new", "expunge", "flags"}),
    ],
)
def test_issue_9_notify_message_events_count_each_on_its_own_outside_selected(
    store: SQLiteStore, events: str, reported: set[str]
) -> None:
    store.mail.create_mailbox(1, "Work")
    deliver(store, "Work")
    deliver(store, "Work")
    c, other = client(store), client(store)
    assert c.command(f"a NOTIFY SET (MAILBOXES Work ({events}))") == [b"a OK NOTIFY completed\r\n"]
    other.select("Work")
    seen = set()
    deliver(store, "Work")
    if push(c, "Work"):
        seen.add("new")
    other.command("b STORE 1 +FLAGS (\\Flagged)")
    if push(c, "Work"):
        seen.add("flags")
    other.command("c STORE 2 +FLAGS.SILENT (\\Deleted)")
    push(c, "Work")
    other.command("d EXPUNGE")
    if push(c, "Work"):
        seen.add("expunge")
    # \\Deleted set and expunged: only the expunge counts for MessageExpunge, the flag for FlagChange.
    assert seen == reported


def metadata_push(c: Client, changes: list[MetadataChange]) -> list[bytes]:
    """What the adapter sends a NOTIFY session once the store announced these METADATA changes."""
    assert c.session is not None
    pending = notify.PendingChanges()
    for change in changes:
        if notify.metadata_concerns(c.session, change):
            pending.add_metadata(change.mailbox_id, change.names)
    changes.clear()
    return b"".join(notify.updates(c.session, pending)).splitlines(keepends=True)


def test_issue_9_notify_metadata_changes_elsewhere_are_reported(store: SQLiteStore) -> None:
    """RFC 5465 §5.7/§5.8 with RFC 5464 §4.4.2: SETMETADATA by another session reaches a NOTIFY session as
    `* METADATA mailbox entry ...` (names only); the session's own SETMETADATA, another account's, and a
    mailbox outside the filter are not reported."""
    store.mail.create_mailbox(1, "Work")
    store.accounts.add_account("carol@example.test", "unused")
    changes: list[MetadataChange] = []
    store.mail.add_metadata_listener(changes.append)
    c, other, carol = client(store), client(store), Client(store=store)
    carol.login("carol@example.test")
    c.command("e ENABLE IMAP4rev2")
    c.select()
    assert c.command("a NOTIFY SET (SELECTED (MessageNew MessageExpunge)) (PERSONAL (MailboxMetadataChange"
                     " ServerMetadataChange))") == [b"a OK NOTIFY completed\r\n"]  # fmt: skip
    assert other.command('b SETMETADATA INBOX (/private/comment "x")') == [b"b OK SETMETADATA completed\r\n"]
    other.command('c SETMETADATA "" (/shared/admin "mailto:a@example.test" /private/vendor/k NIL)')
    other.command('d SETMETADATA Work (/private/Comment {3+}\r\nabc)')
    other.command('d2 SETMETADATA Work (/private/comment "again")')
    carol.command('f SETMETADATA "" (/private/comment "not bob\'s")')
    assert metadata_push(c, changes) == [
        b'* METADATA "" /private/vendor/k /shared/admin\r\n',
        b'* METADATA "INBOX" /private/comment\r\n',
        b'* METADATA "Work" /private/comment\r\n',
    ]
    assert c.command('g SETMETADATA Work (/private/comment "mine")') == [b"g OK SETMETADATA completed\r\n"]
    assert metadata_push(c, changes) == []
    # Only the mailboxes of the filter, and server entries only with ServerMetadataChange.
    assert c.command("h NOTIFY SET (MAILBOXES Work (MailboxMetadataChange))") == [b"h OK NOTIFY completed\r\n"]
    other.command('i SETMETADATA INBOX (/private/comment "y")')
    other.command('j SETMETADATA "" (/private/comment "z")')
    other.command('k SETMETADATA Work (/shared/comment "w")')
    assert metadata_push(c, changes) == [b'* METADATA "Work" /shared/comment\r\n']
    assert c.command("l NOTIFY NONE") == [b"l OK NOTIFY completed\r\n"]
    other.command('m SETMETADATA Work (/shared/comment "v")')
    assert metadata_push(c, changes) == []


def test_issue_9_notify_pending_metadata_is_bounded() -> None:
    """A peer setting entry after entry while this session reads nothing: past MAX_PENDING_METADATA names
    the session overflows (§5.8) instead of keeping them all."""
    pending = notify.PendingChanges()
    for i in range(notify.MAX_PENDING_METADATA):
        pending.add_metadata(None, [f"/private/e{i}"])
    pending.add_metadata(None, ["/private/e0"])  # already pending: no more to keep
    assert not pending.overflowed
    pending.add_metadata(7, ["/private/e0"])
    assert pending.overflowed and not pending.metadata


@pytest.mark.parametrize("leave", ["UNSELECT", "CLOSE", "SELECT INBOX"])
def test_issue_9_notify_own_changes_in_a_mailbox_left_are_not_reported(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch, leave: str
) -> None:
    """A watched mailbox the session had selected: its own STORE (and CLOSE's silent expunge) there is not
    reported back by STATUS once it leaves the mailbox; another session's delivery meanwhile is."""
    store.mail.create_mailbox(1, "Work")
    deliver(store, "Work")
    deliver(store, "Work")
    c = client(store)
    c.command("e ENABLE IMAP4rev2")
    assert c.command("a NOTIFY SET (PERSONAL (MessageNew MessageExpunge FlagChange))") == [
        b"a OK NOTIFY completed\r\n"]  # fmt: skip
    c.select("Work")
    c.command("b STORE 1 +FLAGS.SILENT (\\Deleted)")
    assert push(c, "Work") == []  # selected: reported by the sync, never by STATUS
    assert c.command(f"c {leave}")[-1].startswith(b"c OK")
    assert push(c, "Work") == []
    c.select("Work")
    c.command("d STORE 1 +FLAGS.SILENT (\\Deleted)")
    method = "expunge" if leave == "CLOSE" else "mailbox_status"
    meanwhile(monkeypatch, store, method, lambda: deliver(store, "Work"))
    assert c.command(f"f {leave}")[-1].startswith(b"f OK")
    messages = 1 if leave == "CLOSE" else 3  # CLOSE expunged one message each time
    assert push(c, "Work") == [b'* STATUS "Work" (MESSAGES %d UIDNEXT 4 UIDVALIDITY %d UNSEEN %d)\r\n' % (
        messages, uidvalidity(store, "Work"), messages)]  # fmt: skip


def test_issue_9_a_refused_select_lets_go_of_the_mailbox_it_closes(store: SQLiteStore) -> None:
    """SELECT of a name that cannot be deselects (NO, after CLOSED); the view left behind must release its
    expunge hold, else every such pair pins that mailbox's expunged bodies until the server restarts."""
    c = client(store)
    for _ in range(3):
        c.select()
        assert store.committer.holds.lowest(1) is not None
        lines = c.command("s SELECT " + "a" * 2000)
        assert lines[0] == b"* OK [CLOSED] Previous mailbox closed\r\n" and lines[-1].startswith(b"s NO")
        assert store.committer.holds.lowest(1) is None


def test_issue_9_notify_set_takes_at_most_100_event_groups(store: SQLiteStore) -> None:
    """Every change is matched against every group of a session's NOTIFY SET: 1,700 groups in one 61 KB
    command cost 0.3 s of CPU per push. 100 groups at most; more is BAD."""
    c = client(store)
    group = " (PERSONAL (MessageNew MessageExpunge))"
    assert c.command("a NOTIFY SET" + group * 100) == [b"a OK NOTIFY completed\r\n"]
    assert c.command("b NOTIFY SET" + group * 101)[-1].startswith(b"b BAD")
