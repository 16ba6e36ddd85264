"""Issue 9, FETCH content: message/rfc822 sections, BINARY, NUL bytes. Exact responses over a real store,
checked against RFC 9051 §6.4.5, RFC 3516 and what Dovecot answers (src/lib-imap-storage/imap-msgpart.c)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kartero.store.ids import new_message_id
from kartero.store.interface import Delivery, DeliveryTarget
from kartero.store.sqlite import SQLiteStore
from tests.unit.imap.harness import Client

WHEN = 1795687200


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "data")
    s.add_account("bob@example.test", "unused")
    s.start()
    yield s
    s.close()


def deliver(store: SQLiteStore, *messages: bytes) -> Client:
    """Deliver `messages` to bob's INBOX (UIDs 1, 2, ...) and return a client with INBOX selected."""
    account = store.get_account("bob@example.test")
    assert account is not None
    for data in messages:
        store.deliver(Delivery(new_message_id(), data, (DeliveryTarget(account.id),), WHEN)).result(10)
    client = Client(store=store)
    client.login()
    client.select()
    return client


def fetch(client: Client, seq: int, item: str) -> bytes:
    """The response bytes of `FETCH seq (item)` without the tagged line."""
    out = client.send(f"f FETCH {seq} ({item})\r\n".encode())
    assert out.endswith(b"f OK FETCH completed\r\n"), out
    return out[: -len(b"f OK FETCH completed\r\n")]


def literal(seq: int, name: str, data: bytes) -> bytes:
    return b"* %d FETCH (%s {%d}\r\n%s)\r\n" % (seq, name.encode(), len(data), data)


# -- message/rfc822 (RFC 9051 §6.4.5) ---------------------------------------------------------------------

INNER = b"From: b@example.org\r\nSubject: inner\r\nContent-Type: text/plain\r\n\r\ninner body\r\n"
OUTER_HEADER = b"From: a@example.org\r\nSubject: outer\r\nContent-Type: message/rfc822\r\n\r\n"
ENCAPSULATED = OUTER_HEADER + INNER  # the message's own body is a message/rfc822
MIDDLE_HEADER = b"From: c@example.org\r\nSubject: middle\r\nContent-Type: message/rfc822\r\n\r\n"
TWICE = OUTER_HEADER + MIDDLE_HEADER + INNER  # message/rfc822 inside message/rfc822
INNER_HEADER = INNER[: INNER.index(b"\r\n\r\n") + 4]
DIGEST = (
    b"From: list@example.org\r\nSubject: digest\r\nMIME-Version: 1.0\r\n"
    b"Content-Type: multipart/digest; boundary=d\r\n\r\n"
    b"--d\r\n\r\n" + INNER + b"\r\n--d\r\n\r\n" + MIDDLE_HEADER + INNER + b"\r\n--d--\r\n"
)


def test_issue_9_body_of_a_message_rfc822_message_is_the_whole_encapsulated_message(store: SQLiteStore) -> None:
    c = deliver(store, ENCAPSULATED)
    assert fetch(c, 1, "BODY.PEEK[1]") == literal(1, "BODY[1]", INNER)
    assert fetch(c, 1, "BODY.PEEK[1.HEADER]") == literal(1, "BODY[1.HEADER]", INNER_HEADER)
    assert fetch(c, 1, "BODY.PEEK[1.TEXT]") == literal(1, "BODY[1.TEXT]", b"inner body\r\n")
    # Dovecot: the MIME header of part 1 of a non-multipart message is the message's header.
    assert fetch(c, 1, "BODY.PEEK[1.MIME]") == literal(1, "BODY[1.MIME]", OUTER_HEADER)
    assert fetch(c, 1, "BODY.PEEK[1.HEADER.FIELDS (SUBJECT)]") == literal(
        1, "BODY[1.HEADER.FIELDS (SUBJECT)]", b"Subject: inner\r\n\r\n"
    )
    assert fetch(c, 1, "BODY.PEEK[1.1]") == literal(1, "BODY[1.1]", b"inner body\r\n")
    assert fetch(c, 1, "BODY.PEEK[1.1.MIME]") == literal(1, "BODY[1.1.MIME]", INNER_HEADER)
    assert fetch(c, 1, "BODY.PEEK[1.2]") == literal(1, "BODY[1.2]", b"")
    assert fetch(c, 1, "BODY.PEEK[HEADER]") == literal(1, "BODY[HEADER]", OUTER_HEADER)
    assert fetch(c, 1, "BODY.PEEK[TEXT]") == literal(1, "BODY[TEXT]", INNER)
    # BODYSTRUCTURE agrees: part 1 is the message/rfc822, its body (1.1) the text/plain.
    assert fetch(c, 1, "BODYSTRUCTURE") == (
        b'* 1 FETCH (BODYSTRUCTURE ("message" "rfc822" NIL NIL NIL "7BIT" 77 (NIL "inner" '
        b'((NIL NIL "b" "example.org")) ((NIL NIL "b" "example.org")) ((NIL NIL "b" "example.org")) '
        b'NIL NIL NIL NIL NIL) ("text" "plain" ("charset" "us-ascii") NIL NIL "7BIT" 12 1 NIL NIL NIL NIL) '
        b"5 NIL NIL NIL NIL))\r\n"
    )


def test_issue_9_message_rfc822_nested_twice(store: SQLiteStore) -> None:
    c = deliver(store, TWICE)
    middle = MIDDLE_HEADER + INNER
    assert fetch(c, 1, "BODY.PEEK[1]") == literal(1, "BODY[1]", middle)
    assert fetch(c, 1, "BODY.PEEK[1.HEADER]") == literal(1, "BODY[1.HEADER]", MIDDLE_HEADER)
    assert fetch(c, 1, "BODY.PEEK[1.TEXT]") == literal(1, "BODY[1.TEXT]", INNER)
    assert fetch(c, 1, "BODY.PEEK[1.1]") == literal(1, "BODY[1.1]", INNER)
    assert fetch(c, 1, "BODY.PEEK[1.1.MIME]") == literal(1, "BODY[1.1.MIME]", MIDDLE_HEADER)
    assert fetch(c, 1, "BODY.PEEK[1.1.HEADER]") == literal(1, "BODY[1.1.HEADER]", INNER_HEADER)
    assert fetch(c, 1, "BODY.PEEK[1.1.TEXT]") == literal(1, "BODY[1.1.TEXT]", b"inner body\r\n")
    assert fetch(c, 1, "BODY.PEEK[1.1.1]") == literal(1, "BODY[1.1.1]", b"inner body\r\n")
    assert fetch(c, 1, "BODY.PEEK[1.1.1.1]") == literal(1, "BODY[1.1.1.1]", b"")
    structure = fetch(c, 1, "BODYSTRUCTURE")
    assert structure.startswith(b'* 1 FETCH (BODYSTRUCTURE ("message" "rfc822" NIL NIL NIL "7BIT" %d ' % len(middle))
    assert b'("message" "rfc822" NIL NIL NIL "7BIT" %d ' % len(INNER) in structure
    assert b'("text" "plain" ("charset" "us-ascii") NIL NIL "7BIT" 12 1 NIL NIL NIL NIL)' in structure


def test_issue_9_multipart_digest_parts_are_messages(store: SQLiteStore) -> None:
    c = deliver(store, DIGEST)
    assert fetch(c, 1, "BODY.PEEK[1]") == literal(1, "BODY[1]", INNER)
    assert fetch(c, 1, "BODY.PEEK[1.MIME]") == literal(1, "BODY[1.MIME]", b"\r\n")
    assert fetch(c, 1, "BODY.PEEK[1.HEADER]") == literal(1, "BODY[1.HEADER]", INNER_HEADER)
    assert fetch(c, 1, "BODY.PEEK[1.1]") == literal(1, "BODY[1.1]", b"inner body\r\n")
    assert fetch(c, 1, "BODY.PEEK[2.HEADER]") == literal(1, "BODY[2.HEADER]", MIDDLE_HEADER)
    assert fetch(c, 1, "BODY.PEEK[2.1]") == literal(1, "BODY[2.1]", INNER)
    assert fetch(c, 1, "BODY.PEEK[2.1.HEADER]") == literal(1, "BODY[2.1.HEADER]", INNER_HEADER)
    structure = fetch(c, 1, "BODYSTRUCTURE")
    assert structure.startswith(b'* 1 FETCH (BODYSTRUCTURE (("message" "rfc822" NIL NIL NIL "7BIT" %d ' % len(INNER))


def test_issue_9_subparts_of_a_plain_part_do_not_exist(store: SQLiteStore) -> None:
    """Only a message/rfc822 part has numbers below it (Dovecot's imap_msgpart_find): `1` of a plain message
    is its body, `1.1` nothing; HEADER/TEXT of a part that is no message are empty."""
    c = deliver(store, b"Subject: plain\r\n\r\ntext\r\n")
    assert fetch(c, 1, "BODY.PEEK[1]") == literal(1, "BODY[1]", b"text\r\n")
    assert fetch(c, 1, "BODY.PEEK[1.1]") == literal(1, "BODY[1.1]", b"")
    assert fetch(c, 1, "BODY.PEEK[1.HEADER]") == literal(1, "BODY[1.HEADER]", b"")
    assert fetch(c, 1, "BODY.PEEK[2]") == literal(1, "BODY[2]", b"")
