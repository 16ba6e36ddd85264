"""Issue 8, finding 6: FETCH streams message bytes from the store a CHUNK at a time, so the memory a
FETCH takes is a constant, not a multiple of the message."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kartero.imap.commands.view import CHUNK
from kartero.store.ids import new_message_id
from kartero.store.interface import Delivery, DeliveryTarget
from kartero.store.sqlite import SQLiteStore
from tests.unit.imap.harness import Client


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "data")
    s.start()
    yield s
    s.close()


LINE = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdef\r\n"
BODY = LINE * (6 * 1024 * 1024 // len(LINE))
MESSAGE = (b"From: a@example.org\r\nSubject: big\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
           b"--b\r\nContent-Type: text/plain\r\n\r\n" + BODY + b"\r\n--b--\r\n")  # fmt: skip


def test_issue_8_fetch_streams_big_sections_in_chunks(store: SQLiteStore, monkeypatch: pytest.MonkeyPatch) -> None:
    bob = store.accounts.add_account("bob@example.test", "h")
    store.mail.deliver(Delivery(new_message_id(), MESSAGE, (DeliveryTarget(bob.id),), 1_700_000_000)).result(10)

    def whole_message(blob_id: str) -> bytes:
        raise AssertionError("FETCH read a whole message into memory")

    monkeypatch.setattr(store.mail, "read_message", whole_message)
    client = Client(store)
    client.login()
    client.select()
    pieces: list[int] = []
    send = client.conn.send

    def record(data: bytes) -> None:
        pieces.append(len(data))
        send(data)

    monkeypatch.setattr(client.conn, "send", record)
    cases = {
        "BODY.PEEK[]": (b"BODY[]", MESSAGE),
        "RFC822": (b"RFC822", MESSAGE),
        "BODY.PEEK[1]": (b"BODY[1]", BODY),
        "BODY.PEEK[TEXT]": (b"BODY[TEXT]", MESSAGE[MESSAGE.index(b"\r\n\r\n") + 4 :]),
        "BODY.PEEK[]<100.5000000>": (b"BODY[]<100>", MESSAGE[100:5_000_100]),
    }
    for item, (name, expected) in cases.items():
        pieces.clear()
        out = client.send(f"f UID FETCH 1 ({item})\r\n".encode())
        assert max(pieces) <= 2 * CHUNK, item
        head = b"* 1 FETCH (UID 1 %s {%d}\r\n" % (name, len(expected))
        flags = b" FLAGS (\\Recent \\Seen)" if item == "RFC822" else b""  # RFC822 sets \Seen (RFC 9051 §6.4.5)
        assert out == head + expected + flags + b")\r\nf OK UID FETCH completed\r\n", item


def test_issue_8_a_streamed_fetch_finishes_when_the_message_is_expunged_meanwhile(store: SQLiteStore) -> None:
    """Once `{n}` went out, the n octets follow, whatever another session does: the FETCH holds the
    message's bytes open (before, the next chunk failed and the tagged NO landed inside the literal)."""
    bob = store.accounts.add_account("bob@example.test", "h")
    store.mail.deliver(Delivery(new_message_id(), MESSAGE, (DeliveryTarget(bob.id),), 1_700_000_000)).result(10)
    client = Client(store)
    client.login()
    client.select()
    other = Client(store)
    other.login()
    other.select()
    pieces: list[bytes] = []
    send = client.conn.send

    def record_then_expunge(data: bytes) -> None:
        pieces.append(data)
        if len(pieces) == 1:  # the literal has begun: another session removes the message now
            assert other.command("s STORE 1 +FLAGS.SILENT (\\Deleted)") == [b"s OK STORE completed\r\n"]
            assert other.command("e EXPUNGE")[-1] == b"e OK EXPUNGE completed\r\n"
        send(data)

    client.conn.send = record_then_expunge  # type: ignore[method-assign]
    out = client.send(b"f UID FETCH 1 (BODY.PEEK[])\r\n")
    head = b"* 1 FETCH (UID 1 BODY[] {%d}\r\n" % len(MESSAGE)
    assert out.startswith(head + MESSAGE + b")\r\n")
    assert out.endswith(b"f OK UID FETCH completed\r\n")


def test_issue_8_search_body_reads_in_pieces_and_sees_a_whole_large_part(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SEARCH BODY/TEXT decodes text parts in bounded pieces: a needle past the first 4 MiB, or across
    two pieces, is found, and no message is ever read whole or kept after it was decided."""
    bob = store.accounts.add_account("bob@example.test", "h")
    filler = b"plain words on a line of a long text part\r\n"
    body = filler * (5_000_000 // len(filler)) + b"needle-at-the-end\r\n"
    straddle = filler * ((1 << 20) // len(filler)) + b"across-the-boundary\r\n"
    for text in (body, straddle, b"nothing here\r\n"):
        message = b"From: a@example.org\r\nSubject: s\r\nContent-Type: text/plain\r\n\r\n" + text
        store.mail.deliver(Delivery(new_message_id(), message, (DeliveryTarget(bob.id),), 1_700_000_000)).result(10)

    def whole_message(blob_id: str) -> bytes:
        raise AssertionError("SEARCH read a whole message into memory")

    monkeypatch.setattr(store.mail, "read_message", whole_message)
    client = Client(store)
    client.login()
    client.select()
    assert client.command("s SEARCH BODY needle-AT-the-end") == [b"* SEARCH 1\r\n", b"s OK SEARCH completed\r\n"]
    assert client.command("t SEARCH TEXT across-the-boundary") == [b"* SEARCH 2\r\n", b"t OK SEARCH completed\r\n"]
    assert client.command("v SEARCH OR BODY nothing BODY needle-at") == [
        b"* SEARCH 1 3\r\n", b"v OK SEARCH completed\r\n"]  # fmt: skip
    assert client.command("u SEARCH NOT BODY words") == [b"* SEARCH 3\r\n", b"u OK SEARCH completed\r\n"]
