"""Issue 9, parsing and LIST: keywords in any case, `[` as an atom character, mailbox names that cannot be,
LIST-EXTENDED's RETURN options and RECURSIVEMATCH (RFC 5258 §3.5 and its §5 examples), LSUB's \\Noselect
parents (RFC 3501 §6.3.9). Each test failed before its fix."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kartero.imap.commands.mailbox import ListPatterns
from kartero.imap.syntax import BodyItem, Fetch, Section
from kartero.store.ids import new_message_id
from kartero.store.interface import Delivery, DeliveryTarget
from kartero.store.sqlite import SQLiteStore
from tests.unit.imap.harness import Client, play
from tests.unit.imap.test_syntax import parse

WHEN = 1795687200  # 2026-11-26 10:00:00 UTC
MESSAGE = (
    b"From: Alice <alice@example.org>\r\n"
    b"To: bob@example.test\r\n"
    b"Subject: case test\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: multipart/mixed; boundary=b\r\n"
    b"\r\n"
    b"--b\r\n"
    b"Content-Type: text/plain\r\n"
    b"\r\n"
    b"hello\r\n"
    b"--b--\r\n"
)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "data")
    account = s.accounts.add_account("bob@example.test", "unused")
    s.start()
    target = DeliveryTarget(account.id, "INBOX", frozenset())
    s.mail.deliver(Delivery(new_message_id(), MESSAGE, (target,), WHEN)).result(10)
    yield s
    s.close()


def logged_in(store: SQLiteStore, *, select: bool = False) -> Client:
    c = Client(store=store)
    c.login()
    if select:
        c.select()
    c.greeting = b""
    return c


def transcript(store: SQLiteStore, script: str, *, select: bool = False) -> None:
    """Play `script` on a logged-in client (once: the commands change the store)."""
    play(lambda: logged_in(store, select=select), script, bytewise_too=False)


# -- keywords in any case (RFC 9051 §9) ----------------------------------------------------------------


def test_issue_9_fetch_items_and_sections_in_lower_case(store: SQLiteStore) -> None:
    # Before: `body.peek[header]` and every lower-case section got "BAD unknown fetch item".
    transcript(
        store,
        """
        C: f1 fetch 1 (body.peek[header.fields (from)] rfc822.size binary.size[1] uid)
        S: * 1 FETCH (BODY[HEADER.FIELDS (FROM)] {35}
        S: From: Alice <alice@example.org>
        S:
        S:  RFC822.SIZE 186 BINARY.SIZE[1] 5 UID 1)
        S: f1 OK FETCH completed
        C: f2 Uid Fetch 1 (Body.Peek[1.Mime] bInArY.pEeK[1] body.peek[header.fields.not (from to mime-version)])
        S: * 1 FETCH (UID 1 BODY[1.MIME] {28}
        S: Content-Type: text/plain
        S:
        S:  BINARY[1] {5}
        S: hello BODY[HEADER.FIELDS.NOT (FROM TO MIME-VERSION)] {65}
        S: Subject: case test
        S: Content-Type: multipart/mixed; boundary=b
        S:
        S: )
        S: f2 OK UID FETCH completed
        C: f3 fetch 1 body.peek[text]<0.3>
        S: * 1 FETCH (BODY[TEXT]<0> {3}
        S: --b)
        S: f3 OK FETCH completed
        C: f4 fetch 1 body[header]<0.4>
        S: * 1 FETCH (BODY[HEADER]<0> {4}
        S: From FLAGS (\\Recent \\Seen))
        S: f4 OK FETCH completed
        """,
        select=True,
    )


def test_keywords_of_every_command_in_lower_case(store: SQLiteStore) -> None:
    transcript(
        store,
        """
        C: a examine inbox (condstore)
        S~ \\* .*
        S~ \\* .*
        S~ \\* .*
        S~ \\* .*
        S~ \\* .*
        S~ \\* .*
        S~ \\* .*
        S~ \\* OK \\[MAILBOXID \\(\\w+\\)\\] Ok
        S~ \\* .*
        S: a OK [READ-ONLY] EXAMINE completed
        C: b select inbox
        S: * OK [CLOSED] Previous mailbox closed
        S~ \\* .*
        S~ \\* .*
        S~ \\* .*
        S~ \\* .*
        S~ \\* .*
        S~ \\* .*
        S~ \\* .*
        S~ \\* OK \\[MAILBOXID \\(\\w+\\)\\] Ok
        S~ \\* .*
        S: b OK [READ-WRITE] SELECT completed
        C: c store 1 +flags.silent (\\seen $label)
        S: * FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $label)
        S: * OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $label \\*)] Flags permitted
        S: c OK STORE completed
        C: d search return (min count) unkeyword $other seen not deleted header subject "case" since 1-jan-2020
        S: * ESEARCH (TAG "d") MIN 1 COUNT 1
        S: d OK SEARCH completed
        C: e uid sort (reverse arrival) utf-8 all
        S: * SORT 1
        S: e OK UID SORT completed
        C: f fetch 1 (flags internaldate)
        S: * 1 FETCH (FLAGS ($label \\Recent \\Seen) INTERNALDATE "26-Nov-2026 10:00:00 +0000")
        S: f OK FETCH completed
        C: g status inbox (messages unseen uidnext)
        S: * STATUS "INBOX" (MESSAGES 1 UNSEEN 0 UIDNEXT 2)
        S: g OK STATUS completed
        C: h list (subscribed) "" "inbox" return (children special-use)
        S: * LIST (\\HasNoChildren \\Subscribed) "/" "INBOX"
        S: h OK LIST completed
        C: i fetch 1 fast
        S: * 1 FETCH (FLAGS ($label \\Recent \\Seen) INTERNALDATE "26-Nov-2026 10:00:00 +0000" RFC822.SIZE 186)
        S: i OK FETCH completed
        C: j Noop
        S: j OK NOOP completed
        """,
    )


def test_issue_9_binary_of_the_whole_message_parses_in_lower_case() -> None:
    command = parse("a fetch 1 (binary.peek[] BINARY.SIZE[] body.peek[1.2.mime]<5.10>)")
    assert isinstance(command, Fetch)
    assert command.items == (
        BodyItem("BINARY", Section(), peek=True),
        BodyItem("BINARY.SIZE", Section()),
        BodyItem("BODY", Section((1, 2), "MIME"), peek=True, partial=(5, 10)),
    )


def test_issue_9_a_lookalike_of_a_keyword_is_not_one(store: SQLiteStore) -> None:
    # str.upper() turns U+017F (long s) into S and U+0131 (dotless i) into I.
    c = logged_in(store)
    assert c.command("a \u017felect INBOX") == [b"a BAD Unknown command ?elect\r\n"]
    assert c.command("b SELECT \u0131nbox") == [b"b NO [NONEXISTENT] No such mailbox\r\n"]
    c.command("c ENABLE UTF8=ACCEPT")
    assert c.command("d SELECT \u0131nbox") == [b"d NO [NONEXISTENT] No such mailbox\r\n"]
    c.select()
    assert c.command("e SEARCH \u017fEEN") == [b"e BAD unknown search key ?EEN\r\n"]


# -- `[` is an ATOM-CHAR (RFC 9051 §9) ------------------------------------------------------------------


def test_issue_9_a_bracket_is_an_atom_character_outside_fetch_sections(store: SQLiteStore) -> None:
    # Before: every `[` opened a FETCH-style section, so `SELECT a[b` got "BAD missing ]".
    transcript(
        store,
        """
        C: a SELECT a[b
        S: a NO [NONEXISTENT] No such mailbox
        C: b LIST "" a[%
        S: b OK LIST completed
        C: c CREATE x[1]
        S~ c OK \\[MAILBOXID \\(\\w+\\)\\] CREATE completed
        C: d LIST "" x[%
        S: * LIST (\\HasNoChildren) "/" "x[1]"
        S: d OK LIST completed
        C: e STATUS x[1] (MESSAGES)
        S: * STATUS "x[1]" (MESSAGES 0)
        S: e OK STATUS completed
        C: f[1] NOOP
        S: f[1] OK NOOP completed
        C: g SELECT body[x
        S: g NO [NONEXISTENT] No such mailbox
        """,
    )


# -- names no mailbox can have: NO, not BAD --------------------------------------------------------------


def test_issue_9_a_broken_modified_utf7_name_gets_no_and_lists_nothing(store: SQLiteStore) -> None:
    # Before: "BAD bad mailbox name: unterminated modified UTF-7 run".
    transcript(
        store,
        """
        C: a SELECT &Jjo
        S: a NO [CANNOT] Mailbox name is not valid mUTF-7
        C: b STATUS &Jjo (MESSAGES)
        S: b NO [CANNOT] Mailbox name is not valid mUTF-7
        C: c CREATE "a&ZeVnLIqe"
        S: c NO [CANNOT] Mailbox name is not valid mUTF-7
        C: d RENAME INBOX &-&
        S: d NO [CANNOT] Mailbox name is not valid mUTF-7
        C: e SUBSCRIBE &AAE-
        S: e NO [CANNOT] Mailbox name holds control characters
        C: f APPEND &Jjo {1+}
        C: x
        S: f NO [CANNOT] Mailbox name is not valid mUTF-7
        C: g LIST "" &Jjo
        S: g OK LIST completed
        C: h LIST &Jjo "*"
        S: h OK LIST completed
        C: i LIST "" ("&Jjo" "INBOX")
        S: * LIST (\\HasNoChildren) "/" "INBOX"
        S: i OK LIST completed
        C: j SELECT &Jjo (BOGUS)
        S: j BAD unknown select parameter BOGUS
        """,
    )


def test_issue_9_a_refused_select_deselects(store: SQLiteStore) -> None:
    c = logged_in(store)
    c.select()
    assert c.command("a SELECT &Jjo") == [b"* OK [CLOSED] Previous mailbox closed\r\n",
                                          b"a NO [CANNOT] Mailbox name is not valid mUTF-7\r\n"]  # fmt: skip
    assert c.command("b FETCH 1 FLAGS") == [b"b BAD FETCH not allowed now\r\n"]
    c.command("c ENABLE QRESYNC")
    c.select()
    assert c.command("d EXAMINE " + "n" * 1001) == [
        b"* OK [CLOSED] Previous mailbox closed\r\n",
        b"d NO [CANNOT] Mailbox name too long (1000 octets and 100 levels at most)\r\n",
    ]
    assert c.session is not None and c.session.selected is None


def test_issue_9_copy_to_an_impossible_name_gets_no(store: SQLiteStore) -> None:
    c = logged_in(store)
    c.select()
    assert c.command("a COPY 1 &Jjo") == [b"a NO [CANNOT] Mailbox name is not valid mUTF-7\r\n"]
    assert c.command("b UID MOVE 1 &Jjo") == [b"b NO [CANNOT] Mailbox name is not valid mUTF-7\r\n"]
    assert c.command("c FETCH 1 UID") == [b"* 1 FETCH (UID 1)\r\n", b"c OK FETCH completed\r\n"]


# -- LIST-EXTENDED (RFC 5258) and LSUB (RFC 3501 §6.3.9) ------------------------------------------------

DEFAULTS = ("Archive", "Drafts", "Junk", "Sent", "Trash")


def bare(store: SQLiteStore) -> Client:
    """A client of an account holding INBOX only, subscribed to nothing (the RFC examples start so)."""
    c = logged_in(store)
    for name in DEFAULTS:
        c.command(f"x DELETE {name}")
        c.command(f"x UNSUBSCRIBE {name}")
    c.command("x UNSUBSCRIBE INBOX")
    return c


def test_issue_9_unknown_list_return_options_are_bad(store: SQLiteStore) -> None:
    # RFC 5258 §3: "the server MUST respond with BAD" to an option it does not know. Before: ignored.
    transcript(
        store,
        """
        C: a LIST "" "INBOX" RETURN (BOGUS)
        S: a BAD unknown return option BOGUS
        C: b LIST "" "INBOX" RETURN (CHILDREN MYRIGHTS)
        S: b BAD unknown return option MYRIGHTS
        C: c LIST (BOGUS) "" "INBOX"
        S: c BAD unknown selection option BOGUS
        C: d LIST "" ()
        S: d BAD empty list of mailbox patterns
        C: e LIST "" "INBOX" RETURN ()
        S: * LIST (\\HasNoChildren) "/" "INBOX"
        S: e OK LIST completed
        """,
    )


def test_issue_9_rfc_5258_example_8_childinfo_versus_haschildren(store: SQLiteStore) -> None:
    # RFC 5258 §5 example 8 ("." there, "/" here). Kartero always sends \HasChildren or \HasNoChildren.
    # Before: every matching mailbox was listed, subscribed children or not, and CHILDINFO went only to
    # names that matched no pattern.
    def factory() -> Client:
        c = bare(store)
        for name in ("Foo/Bar", "Foo/Baz", "Moo"):
            c.command(f"x CREATE {name}")
        c.greeting = b""
        return c

    play(
        factory,
        """
        C: C01 LIST "" "*"
        S: * LIST (\\HasNoChildren) "/" "INBOX"
        S: * LIST (\\HasChildren) "/" "Foo"
        S: * LIST (\\HasNoChildren) "/" "Foo/Bar"
        S: * LIST (\\HasNoChildren) "/" "Foo/Baz"
        S: * LIST (\\HasNoChildren) "/" "Moo"
        S: C01 OK LIST completed
        C: CA3 LIST "" "%" RETURN (CHILDREN)
        S: * LIST (\\HasNoChildren) "/" "INBOX"
        S: * LIST (\\HasChildren) "/" "Foo"
        S: * LIST (\\HasNoChildren) "/" "Moo"
        S: CA3 OK LIST completed
        C: s1 SUBSCRIBE Foo/Baz
        S: s1 OK SUBSCRIBE completed
        C: C02 LIST (SUBSCRIBED) "" "*"
        S: * LIST (\\HasNoChildren \\Subscribed) "/" "Foo/Baz"
        S: C02 OK LIST completed
        C: C03 LIST (SUBSCRIBED) "" "%"
        S: C03 OK LIST completed
        C: C04 LIST (SUBSCRIBED RECURSIVEMATCH) "" "%"
        S: * LIST (\\HasChildren) "/" "Foo" ("CHILDINFO" ("SUBSCRIBED"))
        S: C04 OK LIST completed
        C: s2 SUBSCRIBE Foo
        S: s2 OK SUBSCRIBE completed
        C: A1 LIST (SUBSCRIBED RECURSIVEMATCH) "" "%"
        S: * LIST (\\HasChildren \\Subscribed) "/" "Foo" ("CHILDINFO" ("SUBSCRIBED"))
        S: A1 OK LIST completed
        C: s3 UNSUBSCRIBE Foo
        S: s3 OK UNSUBSCRIBE completed
        C: s4 DELETE Foo
        S: s4 OK DELETE completed
        C: A2 LIST (SUBSCRIBED RECURSIVEMATCH) "" "%"
        S: * LIST (\\NonExistent \\HasChildren) "/" "Foo" ("CHILDINFO" ("SUBSCRIBED"))
        S: A2 OK LIST completed
        C: s5 UNSUBSCRIBE Foo/Baz
        S: s5 OK UNSUBSCRIBE completed
        C: B LIST (SUBSCRIBED RECURSIVEMATCH) "" "%"
        S: B OK LIST completed
        C: s6 CREATE Foo
        S~ s6 OK \\[MAILBOXID \\(\\w+\\)\\] CREATE completed
        C: s7 SUBSCRIBE Foo
        S: s7 OK SUBSCRIBE completed
        C: s8 SUBSCRIBE Moo
        S: s8 OK SUBSCRIBE completed
        C: C LIST (SUBSCRIBED RECURSIVEMATCH) "" "%" RETURN (CHILDREN)
        S: * LIST (\\HasChildren \\Subscribed) "/" "Foo"
        S: * LIST (\\HasNoChildren \\Subscribed) "/" "Moo"
        S: C OK LIST completed
        """,
        bytewise_too=False,
    )


def test_issue_9_rfc_5258_example_9_childinfo_only_for_children_not_listed(store: SQLiteStore) -> None:
    # RFC 5258 §5 example 9 and the §3.5 SHOULD: baz2 and qux2 are not listed, as every subscribed child
    # of theirs is; foo2 (not subscribed) and eps2 (subscribed) carry CHILDINFO for foo2/bar1 and
    # eps2/mamba, which "*2" does not match. Listed in Kartero's order (the RFC's is not significant).
    def factory() -> Client:
        c = bare(store)
        names = ["foo2/bar1", "foo2/bar2", "baz2/bar2", "baz2/bar22", "baz2/bar222", "eps2/mamba", "qux2/bar2"]
        for name in names:
            c.command(f"x CREATE {name}")
        c.command("x DELETE qux2")  # the example's qux2 does not exist
        for name in [*names, "eps2"]:
            c.command(f"x SUBSCRIBE {name}")
        c.greeting = b""
        return c

    play(
        factory,
        """
        C: A04 LIST (SUBSCRIBED RECURSIVEMATCH) "" "*2"
        S: * LIST (\\HasNoChildren \\Subscribed) "/" "baz2/bar2"
        S: * LIST (\\HasNoChildren \\Subscribed) "/" "baz2/bar22"
        S: * LIST (\\HasNoChildren \\Subscribed) "/" "baz2/bar222"
        S: * LIST (\\HasChildren \\Subscribed) "/" "eps2" ("CHILDINFO" ("SUBSCRIBED"))
        S: * LIST (\\HasChildren) "/" "foo2" ("CHILDINFO" ("SUBSCRIBED"))
        S: * LIST (\\HasNoChildren \\Subscribed) "/" "foo2/bar2"
        S: * LIST (\\HasNoChildren \\Subscribed) "/" "qux2/bar2"
        S: A04 OK LIST completed
        C: A05 LIST (SUBSCRIBED RECURSIVEMATCH) "" "%"
        S: * LIST (\\HasChildren) "/" "baz2" ("CHILDINFO" ("SUBSCRIBED"))
        S: * LIST (\\HasChildren \\Subscribed) "/" "eps2" ("CHILDINFO" ("SUBSCRIBED"))
        S: * LIST (\\HasChildren) "/" "foo2" ("CHILDINFO" ("SUBSCRIBED"))
        S: * LIST (\\NonExistent \\HasChildren) "/" "qux2" ("CHILDINFO" ("SUBSCRIBED"))
        S: A05 OK LIST completed
        C: A06 LIST (SUBSCRIBED RECURSIVEMATCH) "" "*" RETURN (STATUS (MESSAGES))
        S: * LIST (\\HasNoChildren \\Subscribed) "/" "baz2/bar2"
        S: * STATUS "baz2/bar2" (MESSAGES 0)
        S: * LIST (\\HasNoChildren \\Subscribed) "/" "baz2/bar22"
        S: * STATUS "baz2/bar22" (MESSAGES 0)
        S: * LIST (\\HasNoChildren \\Subscribed) "/" "baz2/bar222"
        S: * STATUS "baz2/bar222" (MESSAGES 0)
        S: * LIST (\\HasChildren \\Subscribed) "/" "eps2" ("CHILDINFO" ("SUBSCRIBED"))
        S: * STATUS "eps2" (MESSAGES 0)
        S: * LIST (\\HasNoChildren \\Subscribed) "/" "eps2/mamba"
        S: * STATUS "eps2/mamba" (MESSAGES 0)
        S: * LIST (\\HasNoChildren \\Subscribed) "/" "foo2/bar1"
        S: * STATUS "foo2/bar1" (MESSAGES 0)
        S: * LIST (\\HasNoChildren \\Subscribed) "/" "foo2/bar2"
        S: * STATUS "foo2/bar2" (MESSAGES 0)
        S: * LIST (\\HasNoChildren \\Subscribed) "/" "qux2/bar2"
        S: * STATUS "qux2/bar2" (MESSAGES 0)
        S: A06 OK LIST completed
        """,
        bytewise_too=False,
    )


def test_issue_9_lsub_percent_lists_a_parent_of_a_subscribed_child_as_noselect(store: SQLiteStore) -> None:
    # RFC 3501 §6.3.9: with "news/comp/mail/misc" subscribed and "news/comp/mail" not, LSUB "news/comp/%"
    # returns news/comp/mail with \Noselect. Before: nothing.
    def factory() -> Client:
        c = bare(store)
        c.command("x CREATE news/comp/mail/misc")
        c.command("x CREATE news/comp/mail/mime")
        c.command("x SUBSCRIBE news/comp/mail/misc")
        c.command("x SUBSCRIBE news/comp/mail/mime")
        c.command("x SUBSCRIBE news/comp/lang")
        c.greeting = b""
        return c

    play(
        factory,
        """
        C: A002 LSUB "news/" "comp/mail/*"
        S: * LSUB () "/" "news/comp/mail/mime"
        S: * LSUB () "/" "news/comp/mail/misc"
        S: A002 OK LSUB completed
        C: A003 LSUB "news/" "comp/%"
        S: * LSUB (\\Noselect) "/" "news/comp/lang"
        S: * LSUB (\\Noselect) "/" "news/comp/mail"
        S: A003 OK LSUB completed
        C: A004 LSUB "" "%"
        S: * LSUB (\\Noselect) "/" "news"
        S: A004 OK LSUB completed
        C: A005 SUBSCRIBE news
        S: A005 OK SUBSCRIBE completed
        C: A006 LSUB "" "%"
        S: * LSUB () "/" "news"
        S: A006 OK LSUB completed
        """,
        bytewise_too=False,
    )


NAMES = st.text(alphabet="ab/I", min_size=1, max_size=12).filter(lambda n: "//" not in n and n[0] != "/")
PATTERNS = st.text(alphabet="ab/%*I", max_size=6)


@settings(max_examples=300, deadline=None)
@given(NAMES, st.lists(PATTERNS, min_size=1, max_size=3), st.sampled_from(["", "a/", "INBOX/"]))
def test_nearest_matching_superior_is_the_nearest_superior_that_matches(
    name: str, patterns: list[str], reference: str
) -> None:
    wanted = ListPatterns(reference, patterns)
    parts = name.split("/")
    superiors = ["/".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)]
    expected = next((s for s in superiors if s and wanted.matches(s)), None)
    assert wanted.nearest_matching_superior(name) == expected

