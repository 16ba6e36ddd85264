"""THREAD (RFC 5256): the REFERENCES and ORDEREDSUBJECT algorithms step by step, the response syntax, the
link-cut tree against plain parent pointers, hostile reference chains, and transcripts over a store that
reproduce the shapes of the RFC's example responses."""

from __future__ import annotations

import random
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kartero.imap.thread import (
    ThreadMessage,
    _LinkCut,
    format_threads,
    is_reply_or_forward,
    message_ids,
    ordered_subject,
    references,
)
from kartero.store.ids import new_message_id
from kartero.store.interface import Delivery, DeliveryTarget
from kartero.store.sqlite import SQLiteStore
from tests.unit.imap.harness import Client, play
from tests.unit.imap.test_syntax import parse


def msg(number: int, subject: str = "", *, mid: str = "", refs: tuple[str, ...] = (), date: int = 0) -> ThreadMessage:
    base = subject.upper()
    return ThreadMessage(number, date or number, base, False, mid, refs)


def threaded(messages: list[ThreadMessage]) -> str:
    return format_threads(references(messages))


# -- the pieces ------------------------------------------------------------------------------------------


def test_message_ids_are_read_linearly_and_leniently() -> None:
    assert message_ids("<a@x> <b@y>") == ["<a@x>", "<b@y>"]
    assert message_ids("(comment) <a@\r\n x>\t<b@y> junk <no-at> <@x> <c@z") == ["<a@x>", "<b@y>"]
    assert message_ids("<<a@x>> <d <e@f>") == ["<a@x>", "<e@f>"]
    assert message_ids(" ".join(f"<{i}@x>" for i in range(5000))) == [f"<{i}@x>" for i in range(4000, 5000)]


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("Re: lunch", True), ("RE:lunch", True), ("Fwd: lunch", True), ("fw : lunch", True),
        ("[list] Re: lunch", True), ("[a] [b] re[2]: lunch", True), ("lunch (fwd)", True),
        ("[Fwd: lunch]", True), ("lunch", False), ("[list] lunch", False), ("Reply: lunch", False),
        ("re lunch", False), ("", False), ("[unclosed re: x", False),
    ],
)  # fmt: skip
def test_reply_or_forward_markers(subject: str, expected: bool) -> None:
    assert is_reply_or_forward(subject) is expected


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 15), st.integers(0, 15), st.booleans()), max_size=60))
def test_link_cut_tree_agrees_with_parent_pointers(operations: list[tuple[int, int, bool]]) -> None:
    forest = _LinkCut()
    for _ in range(16):
        forest.add()
    parent = [-1] * 16

    def root(x: int) -> int:
        while parent[x] >= 0:
            x = parent[x]
        return x

    for a, b, is_cut in operations:
        if is_cut:
            forest.cut(a)
            parent[a] = -1
        elif parent[a] < 0 and root(b) != a:
            forest.link(a, b)
            parent[a] = b
        assert forest.parent == parent
        assert [forest.find_root(x) for x in range(16)] == [root(x) for x in range(16)]


def test_format_of_thread_lists() -> None:
    # RFC 5256 §4: a run of only children is written flat; several children each get a list; a dummy
    # writes no number.
    assert threaded([msg(1, mid="<a@x>"), msg(2, mid="<b@x>", refs=("<a@x>",)), msg(3)]) == "(1 2)(3)"
    assert threaded([msg(1, mid="<a@x>"), msg(2, refs=("<a@x>",)), msg(3, refs=("<a@x>",))]) == "(1 (2)(3))"
    assert threaded([msg(1, "x", refs=("<gone@x>",)), msg(2, "y", refs=("<gone@x>",))]) == "((1)(2))"
    assert format_threads([]) == ""


# -- REFERENCES, step by step ----------------------------------------------------------------------------


def test_references_links_every_reference_to_the_next_and_the_last_to_the_message() -> None:
    # (1A) <a> -> <b> -> <c> from one References field, (1B) <c> -> the message; the missing <b> is a
    # dummy, pruned (3) with its child promoted.
    messages = [msg(1, "s", mid="<a@x>"), msg(2, "s", mid="<c@x>"), msg(3, "s", refs=("<a@x>", "<b@x>", "<c@x>"))]
    assert threaded(messages) == "(1 2 3)"


def test_references_falls_back_to_in_reply_to_only_in_the_handler_so_no_references_is_a_root() -> None:
    assert threaded([msg(1, "a", mid="<a@x>"), msg(2, "b")]) == "(1)(2)"


def test_references_refuses_loops() -> None:
    # 1 answers 2 and 2 answers 1: the second link would close a loop and is not made.
    assert threaded([msg(1, "a", mid="<a@x>", refs=("<b@x>",)), msg(2, "b", mid="<b@x>", refs=("<a@x>",))]) == "(2 1)"
    # A message that names itself, before and after other references.
    assert threaded([msg(1, "a", mid="<a@x>", refs=("<a@x>",))]) == "(1)"
    assert threaded([msg(1, "a", mid="<a@x>", refs=("<z@x>", "<a@x>", "<y@x>"))]) == "(1)"


def test_references_keeps_a_link_from_1a_and_replaces_one_for_the_message_itself() -> None:
    # Message 2 says <p> -> <a> (1A gives <a> the parent <p>). Message 3 says <q> -> <a>: <a> already
    # has a parent, so 1A leaves it. Message 1 (<a>) arrives first here, with References <r>: 1B links it
    # under <r>; message 2's 1A sees <a> with a parent and keeps it.
    messages = [
        msg(1, "t", mid="<a@x>", refs=("<r@x>",)),
        msg(2, "t", mid="<b@x>", refs=("<p@x>", "<a@x>")),
        msg(3, "t", mid="<c@x>", refs=("<q@x>", "<a@x>")),
    ]
    assert threaded(messages) == "(1 (2)(3))"
    # The other order: 2 and 3 first, then 1 with References <r>: 1B breaks the <p> -> <a> link.
    late = [messages[1], messages[2], ThreadMessage(4, 4, "T", False, "<a@x>", ("<r@x>",))]
    assert threaded(late) == "(4 (2)(3))"


def test_duplicate_message_ids_get_unique_ones() -> None:
    # The second <a> is a message of its own; replies to <a> go to the first.
    messages = [msg(1, "a", mid="<a@x>"), msg(2, "b", mid="<a@x>"), msg(3, "c", refs=("<a@x>",))]
    assert threaded(messages) == "(1 3)(2)"


def test_prune_keeps_a_top_dummy_with_several_children_only() -> None:
    # <gone> has 1 and 2: kept as a dummy at the top. <lost> has only 3: promoted. <deep> under 4 holds
    # 5 and 6: below the top a dummy is always replaced by its children.
    messages = [
        msg(1, "p", refs=("<gone@x>",)), msg(2, "q", refs=("<gone@x>",)), msg(3, "r", refs=("<lost@x>",)),
        msg(4, "s", mid="<s@x>"), msg(5, "t", refs=("<s@x>", "<deep@x>")), msg(6, "u", refs=("<s@x>", "<deep@x>")),
    ]  # fmt: skip
    assert threaded(messages) == "((1)(2))(3)(4 (5)(6))"


def test_subject_merging() -> None:
    # (5): "Re: pear" (no references) goes under "pear"; two "plum"s get a dummy; a dummy thread takes in
    # a message with its subject.
    pear = [
        ThreadMessage(1, 10, "PEAR", True, "<1@x>"),
        ThreadMessage(2, 20, "PEAR", False, "<2@x>"),
        ThreadMessage(3, 30, "PLUM", False, "<3@x>"),
        ThreadMessage(4, 40, "PLUM", False, "<4@x>"),
        ThreadMessage(5, 50, "FIG", False, "<5@x>", ("<gone@x>",)),
        ThreadMessage(6, 60, "FIG", False, "<6@x>", ("<gone@x>",)),
        ThreadMessage(7, 70, "FIG", True, "<7@x>"),
        ThreadMessage(8, 80, "", False, "<8@x>"),
        ThreadMessage(9, 90, "", False, "<9@x>"),
    ]
    assert threaded(pear) == "(2 1)((3)(4))((5)(6)(7))(8)(9)"


def test_siblings_sort_by_sent_date_then_mailbox_order() -> None:
    messages = [
        ThreadMessage(1, 100, "A", False, "<a@x>"),
        ThreadMessage(2, 300, "A", True, "<b@x>", ("<a@x>",)),
        ThreadMessage(3, 200, "A", True, "<c@x>", ("<a@x>",)),
        ThreadMessage(4, 200, "A", True, "<d@x>", ("<a@x>",)),
        ThreadMessage(5, 50, "B", False, "<e@x>"),
    ]
    assert threaded(messages) == "(5)(1 (3)(4)(2))"


def test_ordered_subject() -> None:
    messages = [
        ThreadMessage(1, 100, "APPLE", False),
        ThreadMessage(2, 300, "BANANA", True),
        ThreadMessage(3, 200, "BANANA", False),
        ThreadMessage(4, 500, "BANANA", True),
        ThreadMessage(5, 400, "BANANA", True),
        ThreadMessage(6, 600, "CHERRY", False),
        ThreadMessage(7, 700, "CHERRY", True),
    ]
    assert format_threads(ordered_subject(messages)) == "(1)(3 (2)(5)(4))(6 7)"


# -- hostile input ---------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_a_deep_reference_chain_is_threaded_without_recursion_or_quadratic_work() -> None:
    # 30,000 messages, each answering the one before: one thread 30,000 deep. Checking each link for a
    # loop by walking up parent pointers takes 450 million steps; the link-cut tree a few million.
    count = 30_000
    messages = [msg(i, "chain", mid=f"<{i}@x>", refs=(f"<{i - 1}@x>",) if i > 1 else ()) for i in range(1, count + 1)]
    random.Random(9).shuffle(messages)  # the mailbox order need not follow the chain
    started = time.process_time()
    out = threaded(messages)
    assert time.process_time() - started < 5
    assert out == "(" + " ".join(str(i) for i in range(1, count + 1)) + ")"


@pytest.mark.timeout(60)
def test_long_references_fields_are_cut_to_the_nearest_ancestors() -> None:
    chain = tuple(f"<{i}@x>" for i in range(5000))
    messages = [msg(i, "s", mid=f"<m{i}@x>", refs=chain) for i in range(1, 201)]
    started = time.process_time()
    out = threaded(messages)
    assert time.process_time() - started < 5
    assert out == "(" + "".join(f"({i})" for i in range(1, 201)) + ")"


@pytest.mark.timeout(60)
def test_a_comb_of_dummies_is_pruned_in_linear_time() -> None:
    # A chain of 20,000 referenced-only ids (20 messages of 1,000 References each, overlapping by one)
    # and a reply hanging at every level: pruning dummy by dummy, splicing each level's children into
    # the level above, copies 200 million list items; looking through the dummies once copies 20,000.
    depth = 19_980
    messages = [msg(k + 1, "c", mid=f"<m{k}@x>", refs=tuple(f"<d{i}@x>" for i in range(999 * k, 999 * k + 1000)))
                for k in range(20)]  # fmt: skip
    messages += [msg(21 + j, f"r{j}", refs=(f"<d{j}@x>",)) for j in range(depth)]
    started = time.process_time()
    out = threaded(messages)
    assert time.process_time() - started < 5
    assert out == "(" + "".join(f"({n})" for n in range(1, len(messages) + 1)) + ")"


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 8), st.lists(st.integers(0, 8), max_size=4), st.sampled_from(["", "A", "B"]),
                  st.booleans(), st.integers(0, 3)),
        max_size=25,
    )
)  # fmt: skip
def test_every_message_appears_once_in_well_formed_threads(
    specs: list[tuple[int, list[int], str, bool, int]],
) -> None:
    messages = [
        ThreadMessage(n, date, subject, reply, f"<{mid}@x>" if mid else "", tuple(f"<{r}@x>" for r in refs))
        for n, (mid, refs, subject, reply, date) in enumerate(specs, 1)
    ]
    for algorithm in (references, ordered_subject):
        out = format_threads(algorithm(messages))
        assert sorted(int(n) for n in re.findall(r"\d+", out)) == list(range(1, len(specs) + 1))
        assert re.fullmatch(r"(\((\d+| |\(|\))*\))*", out) and out.count("(") == out.count(")")
        assert "()" not in out and "( " not in out and " )" not in out


# -- transcripts over a store ----------------------------------------------------------------------------


def _message(subject: str, day: int, mid: str, refs: str = "") -> bytes:
    lines = [f"Subject: {subject}", f"Date: Mon, {day:02d} Mar 2026 10:00:00 +0000", f"Message-ID: {mid}"]
    if refs:
        lines.append(refs)
    return ("\r\n".join(lines) + "\r\n\r\nbody\r\n").encode()


# Shapes of the RFC 5256 example responses: a chain "(205 206 207)", a dummy root "((170)(179))", a reply
# without references under its subject's thread, a parent with several children "(174 (175)(176))".
MAILBOX = [
    _message("apple", 1, "<a@x>"),
    _message("Re: apple", 2, "<b@x>", "References: <a@x>"),
    _message("Re: apple", 3, "<c@x>", "References: <a@x>\r\n <b@x>"),
    _message("orphans", 4, "<d@x>", "In-Reply-To: <missing@x> (lost)"),
    _message("Re: orphans", 5, "<e@x>", "References: <missing@x>"),
    _message("Re: pear", 6, "<f@x>"),
    _message("pear", 7, "<g@x>"),
    _message("plum", 8, "<h@x>"),
    _message("plum", 9, "no id at all"),
    _message("Fwd: fig", 12, "<j@x>", "References: <k@x>"),
    _message("fig", 11, "<k@x>"),
    _message("Re: fig", 10, "<l@x>", "In-Reply-To: <k@x> <j@x>"),
]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "data")
    account = s.accounts.add_account("bob@example.test", "unused")
    s.start()
    for data in MAILBOX:  # one at a time: UIDs in this order
        target = DeliveryTarget(account.id, "INBOX", frozenset())
        s.mail.deliver(Delivery(new_message_id(), data, (target,), 1795687200)).result(10)
    yield s
    s.close()


def selected(store: SQLiteStore) -> Client:
    c = Client(store=store)
    c.login()
    c.select()
    c.greeting = b""
    return c


def test_thread_transcripts(store: SQLiteStore) -> None:
    play(
        lambda: selected(store),
        """
        C: A283 THREAD ORDEREDSUBJECT UTF-8 ALL
        S: * THREAD (1 (2)(3))(4 5)(6 7)(8 9)(12 (11)(10))
        S: A283 OK THREAD completed
        C: A284 THREAD ORDEREDSUBJECT US-ASCII TEXT "gewp"
        S: * THREAD
        S: A284 OK THREAD completed
        C: A285 THREAD REFERENCES UTF-8 ALL
        S: * THREAD (1 2 3)((4)(5))(7 6)((8)(9))(11 (12)(10))
        S: A285 OK THREAD completed
        C: A286 UID THREAD references utf-8 NOT SUBJECT apple
        S: * THREAD ((4)(5))(7 6)((8)(9))(11 (12)(10))
        S: A286 OK UID THREAD completed
        C: A287 THREAD REFERENCES UTF-8 2:3
        S: * THREAD (2 3)
        S: A287 OK THREAD completed
        C: A288 THREAD REFERENCES KOI8-R ALL
        S: A288 NO [BADCHARSET (UTF-8 US-ASCII)] Unsupported charset
        C: A289 THREAD FANCY UTF-8 ALL
        S: A289 BAD unknown thread algorithm FANCY
        """,
        bytewise_too=False,
    )


def test_thread_is_advertised_and_needs_a_selected_mailbox(store: SQLiteStore) -> None:
    c = Client(store=store)
    c.login()
    capabilities = c.command("a CAPABILITY")[0].decode().split()
    assert "THREAD=REFERENCES" in capabilities and "THREAD=ORDEREDSUBJECT" in capabilities
    assert c.command("b THREAD REFERENCES UTF-8 ALL") == [b"b BAD THREAD not allowed now\r\n"]
    command = parse("c UID THREAD references UTF-8 SUBJECT x")
    assert type(command).__name__ == "ThreadCommand" and command.algorithm == "REFERENCES"  # type: ignore[union-attr]
