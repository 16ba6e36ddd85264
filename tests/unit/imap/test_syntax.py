"""The IMAP grammar: tokens, literals, sequence sets, FETCH items, SEARCH keys, mailbox names."""

from __future__ import annotations

import datetime
import re

import pytest

from kartero.imap import mutf7
from kartero.imap.syntax import (
    STAR,
    BodyItem,
    Fetch,
    ListCommand,
    SAnd,
    Search,
    SeqKey,
    SequenceSet,
    SKey,
    SNot,
    SOr,
    StoreCommand,
    parse_command,
    parse_sequence_set,
)
from kartero.imap.tokens import Atom, ParseError, PList, RawCommand, String, tokenize


def parse(line: str, literals: tuple[bytes, ...] = (), *, utf8: bool = False):  # type: ignore[no-untyped-def]
    lines = tuple(part.encode() for part in line.split("\x00"))
    tokens = tokenize(RawCommand(lines, literals))
    assert isinstance(tokens[1], Atom)
    return parse_command(tokens[1].value.upper(), tokens[2:], utf8=utf8)


def test_tokens_with_literals_brackets_and_lists() -> None:
    tokens = tokenize(RawCommand((b"a FETCH 1:* (BODY[HEADER.FIELDS (FROM TO)]<0.100> FLAGS) ", b""), (b"lit",)))
    assert tokens == [
        Atom("a"),
        Atom("FETCH"),
        Atom("1:*"),
        PList((Atom("BODY[HEADER.FIELDS (FROM TO)]<0.100>"), Atom("FLAGS"))),
        String(b"lit", is_literal=True),
    ]
    assert tokenize(RawCommand((b'a LOGIN "q\\"uote\\\\" x',), ())) == [
        Atom("a"),
        Atom("LOGIN"),
        String(b'q"uote\\'),
        Atom("x"),
    ]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("a LOGIN (x", "missing )"),
        ("a LOGIN x)", "unexpected )"),
        ('a LOGIN "x\\y"', "bad escape in quoted string"),
        ("a  NOOP", "extra space"),
        ("a FETCH 1 BODY[TEXT", "missing ]"),
    ],
)
def test_token_errors(line: str, reason: str) -> None:
    with pytest.raises(ParseError, match=re.escape(reason)):
        tokenize(RawCommand((line.encode(),), ()))


def test_sequence_sets() -> None:
    assert parse_sequence_set("1,3:5,7:*,*") == SequenceSet(((1, 1), (3, 5), (7, STAR), (STAR, STAR)))
    assert parse_sequence_set("$").is_saved
    for bad in ("0", "1:0", "a", "1,,2", ""):
        with pytest.raises(ParseError):
            parse_sequence_set(bad)


def test_fetch_items_and_modifiers() -> None:
    cmd = parse("a UID FETCH 1:* (FLAGS BODY.PEEK[1.2.MIME] BINARY[2]<5.10> BODY[HEADER.FIELDS.NOT (X-A)]) "
                "(CHANGEDSINCE 12 VANISHED)")  # fmt: skip
    assert isinstance(cmd, Fetch) and cmd.is_uid and cmd.changed_since == 12 and cmd.vanished
    flags, mime, binary, fields = cmd.items
    assert flags == "FLAGS"
    assert isinstance(mime, BodyItem) and mime.peek and mime.section.part == (1, 2) and mime.section.text == "MIME"
    assert isinstance(binary, BodyItem) and binary.kind == "BINARY" and binary.partial == (5, 10)
    assert binary.response_name() == "BINARY[2]<5>"
    assert isinstance(fields, BodyItem) and fields.section.fields == ("X-A",)
    assert fields.response_name() == "BODY[HEADER.FIELDS.NOT (X-A)]"
    assert parse("a FETCH 1 ALL").items == ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE")  # type: ignore[union-attr]
    for bad in ("a FETCH 1 BODY[0]", "a FETCH 1 (NOPE)", "a FETCH 1 BODY[MIME]", "a FETCH 1 BINARY[HEADER]",
                "a FETCH 1 FLAGS (VANISHED)", "a FETCH 1 BODY[]<0.0>"):  # fmt: skip
        with pytest.raises(ParseError):
            parse(bad)


def test_search_keys() -> None:
    cmd = parse('a UID SEARCH RETURN (MIN COUNT) CHARSET UTF-8 OR FROM "alice" NOT SEEN 2:4 UID 10:* '
                "SINCE 1-Feb-2026 LARGER 100 HEADER X-Spam yes")  # fmt: skip
    assert isinstance(cmd, Search) and cmd.is_uid and cmd.returns == ("MIN", "COUNT") and cmd.charset == "UTF-8"
    assert cmd.key == SAnd(
        (
            SOr(SKey("HEADER", ("from", "alice")), SNot(SKey("FLAG", ("\\Seen", True)))),
            SeqKey(SequenceSet(((2, 4),)), is_uid=False),
            SeqKey(SequenceSet(((10, STAR),)), is_uid=True),
            SKey("SINCE", (datetime.date(2026, 2, 1),)),
            SKey("LARGER", (100,)),
            SKey("HEADER", ("x-spam", "yes")),
        )
    )
    for bad in ("a SEARCH", "a SEARCH SINCE 31-Feb-2026", "a SEARCH FOO", "a SEARCH OR SEEN", "a SEARCH LARGER x"):
        with pytest.raises(ParseError):
            parse(bad)


def test_store_and_list() -> None:
    cmd = parse("a STORE 1:3 (UNCHANGEDSINCE 7) +FLAGS.SILENT (\\seen $Label)")
    assert cmd == StoreCommand(False, SequenceSet(((1, 3),)), "+", True, frozenset({"\\Seen", "$Label"}), 7)
    with pytest.raises(ParseError, match="unknown system flag"):
        parse("a STORE 1 FLAGS (\\Bogus)")
    lst = parse('a LIST (SUBSCRIBED RECURSIVEMATCH) "" ("INBOX" "Work/%") RETURN (CHILDREN STATUS (MESSAGES))')
    assert isinstance(lst, ListCommand) and lst.is_extended
    assert lst.patterns == ("INBOX", "Work/%") and lst.status_items == ("MESSAGES",)
    assert lst.selection == {"SUBSCRIBED", "RECURSIVEMATCH"}


def test_mailbox_names_in_modified_utf7_and_utf8() -> None:
    assert mutf7.encode("Entwürfe & Co") == "Entw&APw-rfe &- Co"
    assert mutf7.decode("Entw&APw-rfe &- Co") == "Entwürfe & Co"
    assert mutf7.decode(mutf7.encode("日本語/メール")) == "日本語/メール"
    assert parse("a SELECT Entw&APw-rfe").mailbox == "Entwürfe"  # type: ignore[union-attr]
    assert parse('a SELECT "Entwürfe"', utf8=True).mailbox == "Entwürfe"  # type: ignore[union-attr]
    assert parse("a SELECT inbox").mailbox == "INBOX"  # type: ignore[union-attr]
    assert parse("a SELECT Inbox/Sub").mailbox == "INBOX/Sub"  # type: ignore[union-attr]
    # Raw UTF-8 without UTF8=ACCEPT is not modified UTF-7, but unambiguous: taken as the same name.
    assert parse('a SELECT "Entwürfe"').mailbox == "Entwürfe"  # type: ignore[union-attr]


def test_append_with_flags_date_and_literal() -> None:
    cmd = parse('a APPEND Sent (\\Seen) "26-Nov-2026 10:00:00 +0100" \x00', (b"Subject: x\r\n\r\nbody\r\n",))
    (message,) = cmd.messages  # type: ignore[union-attr]
    assert message.flags == {"\\Seen"}
    assert message.date == datetime.datetime(2026, 11, 26, 9, 0, tzinfo=datetime.UTC)
    assert message.data == b"Subject: x\r\n\r\nbody\r\n"
    with pytest.raises(ParseError, match="as a literal"):
        parse('a APPEND Sent "26-Nov-2026 10:00:00 +0100" "not a literal"')
