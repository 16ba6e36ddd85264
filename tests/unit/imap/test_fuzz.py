"""Hypothesis feeds the IMAP core (and, through the test harness, the command handlers over a real store)
random and grammar-aware input. The only allowed outcome is well-formed IMAP responses: no exception, a
bounded input buffer, and the same output however the bytes are cut."""

from __future__ import annotations

import itertools
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kartero.imap.connection import (
    MAX_LINE,
    CommandReady,
    ConnectionClosed,
    IdleDone,
    ImapConnection,
    ImapSettings,
    LoginRequested,
    StartTLSRequested,
)
from kartero.imap.response import Status
from kartero.store.ids import new_message_id
from kartero.store.interface import Delivery, DeliveryTarget
from kartero.store.sqlite import SQLiteStore
from tests.unit.imap.harness import Client
from tests.unit.mime import corpus

SETTINGS = ImapSettings(hostname="imap.example.test", append_limit=100_000, is_tls_available=True)
TAG = rb"[!#$&',\-./0-9:;<=>?@A-Z\[\]^_`a-z|}~]+"
# A response line: untagged, continuation, or tagged status; text printable (UTF-8 for mailbox names).
LINE = re.compile(rb"(\* |\+ ?|" + TAG + rb" (OK|NO|BAD) )[^\x00-\x1f\x7f]*")
TEXT = re.compile(rb"[^\x00-\x1f\x7f]*")
LITERAL_AT_END = re.compile(rb"~?\{(\d+)\}$")


def assert_responses(out: bytes) -> None:
    """Every response starts like a response; a literal in it is skipped by its length, and what follows it
    continues the same response."""
    pos = 0
    continued = False
    while pos < len(out):
        end = out.find(b"\r\n", pos)
        assert end >= 0, f"unterminated response {out[pos : pos + 80]!r}"
        line = out[pos:end]
        assert (TEXT if continued else LINE).fullmatch(line), line[:200]
        line.decode("utf-8")
        pos = end + 2
        literal = LITERAL_AT_END.search(line)
        continued = literal is not None
        if literal is not None:
            pos += int(literal.group(1))
    assert pos == len(out) and not continued, "a literal runs past the output"


# -- the core alone --------------------------------------------------------------------------------------


def drive_core(chunks: list[bytes]) -> bytes:
    """Feed the core; answer every event at once (logins succeed for password "pw")."""
    conn = ImapConnection(SETTINGS, is_loopback=True)
    conn.start()
    out = conn.data_to_send()
    for chunk in [*chunks, b""]:
        conn.receive_data(chunk)
        while (event := conn.next_event()) is not None:
            match event:
                case LoginRequested(tag=tag, password=password):
                    conn.login_result(tag, "bob" if password == "pw" else None)
                case CommandReady(tag=tag):
                    conn.finish(tag, Status.OK, "done")
                case StartTLSRequested():
                    conn.tls_established()
                case IdleDone(tag=tag):
                    conn.finish(tag, Status.OK, "IDLE terminated")
                case ConnectionClosed():
                    pass
        assert conn.buffered_bytes <= MAX_LINE
        out += conn.data_to_send()
    assert conn.is_closed
    return out


# -- grammar-aware input ----------------------------------------------------------------------------------

COMMANDS = [
    "CAPABILITY", "NOOP", "LOGOUT", "ID", "ENABLE", "SELECT", "EXAMINE", "CREATE", "DELETE", "RENAME",
    "SUBSCRIBE", "UNSUBSCRIBE", "LIST", "LSUB", "NAMESPACE", "STATUS", "APPEND", "IDLE", "CHECK", "CLOSE",
    "UNSELECT", "EXPUNGE", "SEARCH", "FETCH", "STORE", "COPY", "MOVE", "SORT", "UID FETCH", "UID SEARCH",
    "UID STORE", "UID COPY", "UID MOVE", "UID EXPUNGE", "UID SORT", "LOGIN", "AUTHENTICATE", "COMPRESS",
    "GETMETADATA", "SETMETADATA",
]  # fmt: skip
WORDS = [
    "INBOX", "inbox", "Inbox/Sub", "Sent", "&AOQ-", "&Jjo-", "&", "&-", "&ZeVnLIqe", '"&ä-"', "a/b/c", "/", "*",
    "%", "*a*a*a*b", "NIL", "ALL", "FAST", "FULL", "FLAGS", "UID", "ENVELOPE", "BODYSTRUCTURE", "RFC822.SIZE",
    "INTERNALDATE", "BODY[]", "BODY.PEEK[HEADER]", "BODY[1.2.MIME]", "BODY[HEADER.FIELDS (FROM TO)]",
    "BINARY[1]<0.10>", "BINARY.SIZE[1]", "BODY[TEXT]<5.99999999999999999999>", "BODY[0]", "body[]", "MODSEQ",
    "1", "2", "*", "1:*", "$", "4294967295", "4294967296", "99999999999999999999999", "0", "1:4294967295",
    "1,2,3:5,*", "SEEN", "UNSEEN", "NOT", "OR", "LARGER", "SMALLER", "HEADER", "FROM", "SUBJECT", "TEXT",
    "BODY", "KEYWORD", "SINCE", "BEFORE", "ON", "SENTON", "1-Feb-2026", "31-Feb-2026", "CHARSET", "UTF-8",
    "RETURN", "(MIN MAX COUNT ALL SAVE)", "+FLAGS", "-FLAGS.SILENT", "FLAGS", "\\Seen", "\\Deleted",
    "\\Bogus", "$Label", "(\\Seen $x)", "(UNCHANGEDSINCE 1)", "(CHANGEDSINCE 1 VANISHED)", "(CONDSTORE)",
    "(QRESYNC (1 1 1:*))", "(MESSAGES UIDNEXT UNSEEN SIZE HIGHESTMODSEQ)", "(SUBSCRIBED RECURSIVEMATCH)",
    "(CHILDREN STATUS (MESSAGES))", "(SPECIAL-USE)", "(USE (\\Trash))", "REVERSE", "(REVERSE DATE SUBJECT)",
    "CONDSTORE", "QRESYNC", "UTF8=ACCEPT", "IMAP4rev2", "PLAIN", "DEFLATE", "bob", "pw", '"pw"', '""',
    '"a\\"b"', '"\\x"', "{0}", "DONE", "=", "AGJvYgBwdw==", "/private/comment", "/shared", "/Shared/vendor/x/y",
    "/private//x", "(DEPTH infinity MAXSIZE 5)", "(DEPTH 1)", '(/private/comment "c" /shared/comment NIL)',
    "(/private/a)",
]  # fmt: skip


@st.composite
def literal(draw: st.DrawFn) -> bytes:
    data = draw(st.sampled_from([b"", b"x", b"Subject: hi\r\n\r\nbody\r\n", b"\r\n)", b"\xff\x00"]))
    size = len(data) + draw(st.sampled_from([0, 0, 0, 1, -1]))
    marker = draw(st.sampled_from([b"{%d}", b"{%d+}", b"~{%d}", b"{%d+}"])) % max(size, 0)
    return marker + b"\r\n" + data


@st.composite
def argument(draw: st.DrawFn, depth: int = 0) -> bytes:
    kind = draw(st.integers(0, 9))
    if kind <= 4:
        return draw(st.sampled_from(WORDS)).encode()
    if kind == 5:
        return draw(literal())
    if kind == 6 and depth < 3:
        items = draw(st.lists(argument(depth + 1), max_size=4))
        return b"(" + b" ".join(items) + b")"
    if kind == 7:
        levels = draw(st.sampled_from([1, 50, 99, 100, 101, 5000]))
        return b"(" * levels + draw(st.sampled_from([b"SEEN", b""])) + b")" * draw(st.sampled_from([levels, 0]))
    if kind == 8:
        count = draw(st.sampled_from([2, 200, 3000]))
        return b",".join([draw(st.sampled_from([b"1:4294967295", b"*", b"2:1", b"5"]))] * count)
    return draw(st.binary(max_size=6).filter(lambda b: b"\n" not in b))


@st.composite
def command(draw: st.DrawFn) -> bytes:
    tag = draw(st.sampled_from([b"a", b"A1", b"t.2", b"+", b"*", b"", b"x{1}", b"b"]))
    name = draw(st.sampled_from(COMMANDS)).encode()
    if draw(st.booleans()):
        name = name.lower()
    args = draw(st.lists(argument(), max_size=5))
    return b" ".join([tag, name, *args]) + draw(st.sampled_from([b"\r\n", b"\r\n", b"\n"]))


LOGIN = b"l LOGIN bob@example.test pw\r\n"
SESSION = st.lists(command(), max_size=8).map(lambda cmds: [LOGIN, b"s SELECT INBOX\r\n", *cmds])


def cut(data: bytes, points: list[int]) -> list[bytes]:
    """`data` in pieces, cut at `points` (an empty piece would mean the peer closed)."""
    marks = sorted({p % (len(data) + 1) for p in points} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(marks)]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=12))
def test_random_bytes_only_produce_responses(chunks: list[bytes]) -> None:
    assert_responses(drive_core(chunks))


@settings(max_examples=300, deadline=None)
@given(SESSION, st.lists(st.integers(0, 10_000), max_size=6))
def test_grammar_aware_sessions_only_produce_responses_however_cut(commands: list[bytes], points: list[int]) -> None:
    data = b"".join(commands)
    whole = drive_core([data])
    assert_responses(whole)
    if b"STARTTLS" not in data.upper():  # bytes pipelined behind STARTTLS are dropped: CVE-2011-0411
        assert drive_core(cut(data, points)) == whole
        assert drive_core([data[i : i + 1] for i in range(min(len(data), 3000))]) == drive_core([data[:3000]])


# -- through the handlers, over a real store -------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_store() -> Iterator[SQLiteStore]:
    with tempfile.TemporaryDirectory() as folder:
        store = SQLiteStore(Path(folder) / "data")
        account = store.accounts.add_account("bob@example.test", "unused")
        store.start()
        for i, message in enumerate((corpus.PLAIN, corpus.MIXED, corpus.FORWARDED, corpus.ALTERNATIVE)):
            flags = frozenset({"\\Seen"} if i % 2 else {"$Label"})
            store.mail.deliver(Delivery(new_message_id(), message, (DeliveryTarget(account.id, "INBOX", flags),),
                                   1795687200)).result(10)  # fmt: skip
        yield store
        store.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(SESSION)
def test_grammar_aware_sessions_through_the_handlers(fuzz_store: SQLiteStore, commands: list[bytes]) -> None:
    client = Client(store=fuzz_store)
    out = client.greeting + client.send(b"".join(commands) + b"z LOGOUT\r\n") + client.send(b"")
    assert_responses(out)
    assert client.conn.is_closed and client.conn.buffered_bytes == 0
