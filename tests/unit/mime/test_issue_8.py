"""Issue 8 on the MIME side: linear subject normalisation (finding 2), charsets that cannot poison the
index (finding 3), a parser that is bounded and never raises (finding 10), a fallback index, and
messages read from an mmap without whole copies."""

from __future__ import annotations

import base64
import encodings
import mmap
import time
from pathlib import Path

import pytest

from kartero.mime import addresses
from kartero.mime import index as index_module
from kartero.mime.addresses import EnvelopeAddress, parse_address_list
from kartero.mime.headers import (
    SCAN_CHUNK_BYTES,
    decode_body,
    decode_words,
    iter_body_text,
    text_codec,
)
from kartero.mime.imapform import MAX_LIST_ADDRESSES, body_forms
from kartero.mime.index import MessageIndex, base_subject, fallback_index, index_message, structured_index
from kartero.mime.parttree import PartNode
from kartero.mime.structure import MAX_DEPTH, MAX_PARTS, Part, parse_content_type, parse_message
from tests.unit.mime import corpus


def _seconds(call: object, *args: object) -> float:
    """CPU seconds `call(*args)` takes: the work it does, not how busy the test machine is."""
    assert callable(call)
    started = time.process_time()
    call(*args)
    return time.process_time() - started


def _depth(part: Part) -> int:
    depth, stack = 0, [(part, 0)]
    while stack:
        node, level = stack.pop()
        depth = max(depth, level)
        stack.extend((child, level + 1) for child in node.children)
        if node.message is not None:
            stack.append((node.message, level + 1))
    return depth


# Finding 3: charsets, and bodies decoded in bounded pieces


@pytest.mark.parametrize(
    "charset",
    ["rot13", "rot_13", "hex", "hex_codec", "zlib", "base64", "uu", "bz2", "quopri", "punycode", "idna",
     "undefined", "unicode_escape", "raw_unicode_escape", "x-unknown", "\x00", "\u0130", "a" * 300],
)  # fmt: skip
def test_issue_8_unusable_charsets_decode_as_latin1(charset: str) -> None:
    word = b"=?" + charset.encode("utf-8") + b"?q?caf=E9?="
    assert decode_words(word) == "café"
    assert decode_words(b"=?" + charset.encode("utf-8") + b"?b?" + base64.b64encode(b"x\xff") + b"?=") == "x\xff"
    message = (
        b"Subject: " + word + b"\r\nContent-Type: text/plain; charset=" + charset.encode("utf-8") + b"\r\n\r\nx\r\n"
    )
    ix = structured_index(message)
    assert ix.subject == "café" and ix.sort_subject == "CAFÉ"
    assert decode_body(b"caf\xe9", "8bit", charset) == "café"


def test_issue_8_text_charsets_still_decode() -> None:
    assert text_codec("utf-8") == "utf-8"
    assert text_codec("UTF 8") == "utf-8"
    assert text_codec("utf-8*en") == "utf-8"  # RFC 2231 §5 language suffix
    assert text_codec("ISO_8859-1:1987") == "iso8859-1"
    assert text_codec("windows-1252") == "cp1252"
    assert text_codec("ks_c_5601-1987") == "euc_kr"
    assert decode_words(b"=?iso-2022-jp?b?GyRCRnxLXBsoQg==?=") == "日本"
    assert decode_words(b"=?utf-16?b?//7lZSxn?=") == "日本"


def test_issue_8_invented_charset_names_are_not_looked_up() -> None:
    # The stdlib's codec search caches every miss forever: invented names must not reach it.
    before = len(encodings._cache)
    for n in range(2000):
        assert decode_words(b"=?x-invented-%d?q?a?=" % n) == "a"
    assert len(encodings._cache) == before


def test_issue_8_body_decoding_is_bounded_per_call() -> None:
    text = "Grüße aus Köln\r\n".encode() * 400_000  # 7 MB of quoted-printable
    encoded = text.replace(b"\xc3\xbc", b"=C3=BC").replace(b"\xc3\x9f", b"=C3=9F").replace(b"\xc3\xb6", b"=C3=B6")
    first = decode_body(encoded, "quoted-printable", "utf-8", max_bytes=1 << 20)
    assert 0 < len(first) <= 1 << 20 and first.endswith("Grüße aus Köln\r\n")
    pieces = list(iter_body_text(encoded, "quoted-printable", "utf-8", chunk_bytes=1 << 16))
    assert max(len(piece) for piece in pieces) <= 1 << 16
    assert "".join(pieces) == text.decode()


# Finding 2: base_subject


@pytest.mark.parametrize(
    ("subject", "base"),
    [
        # RFC 5256 §2.1 steps, one at a time
        ("Hello", "HELLO"),
        ("  Hello \t  world  ", "HELLO WORLD"),  # (1) white space collapsed
        ("Hello (fwd)", "HELLO"),  # (2) trailer
        ("Hello (FWD) (fwd)  ", "HELLO"),
        ("Hello(fwd)", "HELLO"),
        ("Re: Hello", "HELLO"),  # (3) subj-leader: subj-refwd
        ("re:Hello", "HELLO"),
        ("RE : Hello", "HELLO"),
        ("Fw: Hello", "HELLO"),
        ("FWD: Hello", "HELLO"),
        ("Re[2]: Hello", "HELLO"),  # subj-refwd with a blob before the colon
        ("Re [2] : Hello", "HELLO"),
        ("[list] Re: Hello", "HELLO"),  # *subj-blob subj-refwd
        ("[a] [b] Re: Hello", "HELLO"),
        ("[list] Hello", "HELLO"),  # (4) a blob followed by more text
        ("[a] [b] Hello", "HELLO"),
        ("[list]", "[LIST]"),  # (4) removing it would leave nothing
        ("[a][b] Hello", "[A][B] HELLO"),  # a blob followed by a blob, not white space, stays
        ("Re: Re: Fwd: Re: Hello", "HELLO"),  # (5) repeated
        ("[fwd: Hello]", "HELLO"),  # (6) subj-fwd
        ("[Fwd: Re: [list] Hello (fwd)]", "HELLO"),
        ("Re: [fwd: Re: Hello]", "HELLO"),
        ("Re: Fwd: [list] Hello (fwd)", "HELLO"),
        # not markers
        ("Regarding: Hello", "REGARDING: HELLO"),
        ("Reply Hello", "REPLY HELLO"),
        ("fwdd: Hello", "FWDD: HELLO"),
        ("Re Hello", "RE HELLO"),
        ("[a[b] Hello", "[A[B] HELLO"),
        ("Hello (fwd) world", "HELLO (FWD) WORLD"),
        ("", ""),
        ("   ", ""),
        ("(fwd)", ""),
        ("Re:", ""),
        ("[fwd:]", ""),
        ("Café (fwd)", "CAFÉ"),
    ],
)
def test_base_subject_rfc5256_cases(subject: str, base: str) -> None:
    assert base_subject(subject) == base


@pytest.mark.parametrize(
    "subject",
    [
        "[x] " * 300_000 + "y",  # the issue's shape: each tag made the regex rescan all the others
        "[x]" * 400_000 + " y",
        "re: " * 300_000 + "y",
        "Re: [x] " * 150_000 + "y",
        "y" + " (fwd)" * 200_000,
        "[x] " * 100_000 + "re: " * 100_000 + "y" + " (fwd)" * 66_000,
        "[" * 1_200_000,
    ],
    ids=["tags", "tags-no-space", "re", "re-blob", "fwd-trailers", "mixed", "open-brackets"],
)
def test_issue_8_base_subject_is_linear(subject: str) -> None:
    # ~1.2 MB, ten times the issue's 120 KB subject (36 s then; the old code needs hours for this)
    assert _seconds(base_subject, subject) < 1.0


def test_issue_8_hostile_subject_indexes_fast() -> None:
    message = b"Subject: " + b"[list] " * 36_000 + b"\r\n\r\nbody\r\n"  # 252 KB
    assert _seconds(index_message, message) < 1.0
    assert index_message(message).sort_subject == "[LIST]"


# Finding 10 (parser side): bounded and linear


def test_issue_8_nested_comments_are_bounded() -> None:
    deep = b"(" * 1_000_000 + b"x" + b")" * 1_000_000
    assert _seconds(parse_address_list, deep + b" a@b") < 1.0
    assert parse_address_list(deep + b" a@b") == ()  # deeper than 100: the rest is comment
    nested = b"(" * 99 + b"c" + b")" * 99  # within the bound: stripped as before
    assert parse_address_list(b"Ann " + nested + b" <ann@example.org>") == (
        EnvelopeAddress(b"Ann", None, b"ann", b"example.org"),
    )


def test_issue_8_long_address_lists_are_read_lazily_and_not_cached() -> None:
    # The cache kept every value it saw: 4096 hostile 1 MB To fields would have stayed in memory.
    value = b"a@b, " * 200_000
    cached = addresses._parse_cached.cache_info().currsize
    assert parse_address_list(value, 2) == (EnvelopeAddress(None, None, b"a", b"b"),) * 2
    assert _seconds(parse_address_list, value, 1000) < 0.1
    assert len(parse_address_list(value)) == 200_000
    assert addresses._parse_cached.cache_info().currsize == cached


def test_issue_8_nested_comments_in_content_type_are_bounded() -> None:
    deep = b"(" * 1_000_000 + b"x" + b")" * 1_000_000
    nested = b"(" * 99 + b"c" + b")" * 99
    assert parse_content_type(b"text/plain " + nested + b"; charset=utf-8").params == ((b"charset", b"utf-8"),)
    assert _seconds(parse_content_type, b"text/plain; " + deep) < 1.0
    assert parse_content_type(b"text/plain; a=b" + deep + b"; c=d").params == ((b"a", b"b"),)


def test_issue_8_mime_nesting_and_part_count_are_bounded() -> None:
    nested = b"".join(b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i) for i in range(150))
    root = parse_message(nested + b"\r\nbody\r\n")
    assert _depth(root) == MAX_DEPTH
    rfc822 = b"Content-Type: message/rfc822\r\n\r\n" * 150 + b"\r\nbody\r\n"
    assert _depth(parse_message(rfc822)) == MAX_DEPTH
    many = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + b"--b\r\n\r\nx\r\n" * 30_000 + b"--b--\r\n"
    root = parse_message(many)
    assert len(root.children) == MAX_PARTS - 1  # the root is a part too


_HOSTILE_MIME = {
    # every level searches the whole rest for its delimiter: 40 levels read 1.2 GB before, the scan budget
    # now stops the descent
    "nested-multiparts": lambda: (
        b"".join(b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i) for i in range(150))
        + (b"A" * 76 + b"\r\n") * 400_000
    ),
    # lines that start like a delimiter but are not one, each a Python step
    "near-delimiters": lambda: b"Content-Type: multipart/mixed; boundary=B\r\n\r\n" + b"--BX\r\n" * 1_700_000,
    "delimiters": lambda: b"Content-Type: multipart/mixed; boundary=B\r\n\r\n" + b"--B\r\n" * 2_000_000,
    # no blank line: 10 MB of header
    "no-blank-line": lambda: b"Subject: x\r\n" + b"X-A: b\r\n" * 1_250_000,
    # header blocks with many lines and parameters in many parts
    "big-headers": lambda: (
        b"Content-Type: multipart/mixed; boundary=B\r\n\r\n"
        + (b"--B\r\nContent-Type: text/plain" + b"; a=b" * 20_000 + b"\r\n" + b"X:\r\n" * 20_000 + b"\r\nx\r\n") * 40
    ),
    "addresses": lambda: b"To: " + b"a@b," * 60_000 + b"\r\nCc: " + b"g:;" * 60_000 + b"\r\n\r\nbody\r\n",
    # quoted strings of backslash pairs in addresses and parameters of many embedded messages
    "quoted-pairs": lambda: (
        b"Content-Type: multipart/mixed; boundary=B\r\n\r\n"
        + (
            b"--B\r\nContent-Type: message/rfc822\r\n\r\nTo: " + b'"' + b"\\\\" * 60_000 + b'" <a@b>\r\n'
            b"Content-Type: text/plain; name=" + b'"' + b"\\\\" * 60_000 + b'"\r\n\r\nx\r\n'
        )
        * 40
    ),
}


@pytest.mark.parametrize("name", _HOSTILE_MIME)
def test_issue_8_hostile_mime_indexes_fast(name: str) -> None:
    message = _HOSTILE_MIME[name]()
    assert _seconds(structured_index, message) < 1.5  # 10-30 MB; the old code took 2-20 s on each


def test_issue_8_envelope_address_lists_are_bounded() -> None:
    ix = structured_index(b"To: " + b"a@b," * 60_000 + b"\r\n\r\nbody\r\n")
    assert ix.envelope.count(b'(NIL NIL "a" "b")') == MAX_LIST_ADDRESSES
    assert ix.sort_to == "a" and ix.to.count("a@b") == 60_000  # SEARCH still sees every address


def test_message_line_counts_are_summed_not_rescanned() -> None:
    inner = corpus.FORWARDED
    message = b"Content-Type: message/rfc822\r\n\r\n" * 3 + inner
    structure = structured_index(message).bodystructure
    # each message/rfc822 level counts every line below it, as data.count(b"\n") would
    for level in range(3):
        start = len(b"Content-Type: message/rfc822\r\n\r\n") * (level + 1)
        assert b" %d NIL NIL NIL NIL)" % message.count(b"\n", start) in structure


# Finding 4: the fallback index


def test_issue_8_index_falls_back_when_the_parser_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(data: object) -> Part:
        raise RuntimeError("parser bug")

    monkeypatch.setattr(index_module, "parse_message", broken)
    message = corpus.ALTERNATIVE
    body_start = message.index(b"\r\n\r\n") + 4
    ix = index_message(message)
    assert ix == fallback_index(message)
    assert ix.envelope == (
        b'("Tue, 03 Nov 2026 18:00:00 +0000" "=?utf-8?b?R3LDvMOfZSBhdXMgS8O2bG4=?="'
        b' (("=?utf-8?q?J=C3=B6rg_M=C3=BCller?=" NIL "joerg" "example.de"))'
        b' (("=?utf-8?q?J=C3=B6rg_M=C3=BCller?=" NIL "joerg" "example.de"))'
        b' (("=?utf-8?q?J=C3=B6rg_M=C3=BCller?=" NIL "joerg" "example.de"))'
        b' ((NIL NIL "bob" "example.test")) NIL NIL NIL NIL)'
    )
    size, lines = len(message) - body_start, message.count(b"\n", body_start)
    plain = b'"text" "plain" ("charset" "us-ascii") NIL NIL "7bit" %d %d' % (size, lines)
    assert (ix.body, ix.bodystructure) == (b"(" + plain + b")", b"(" + plain + b" NIL NIL NIL NIL)")
    assert ix.parts == PartNode(0, body_start, len(message), "7bit")
    assert (ix.subject, ix.from_, ix.sort_subject, ix.sort_from) == (
        "grüsse aus köln",
        "jörg müller <joerg@example.de>",
        "GRÜSSE AUS KÖLN",
        "joerg",
    )
    assert ix.sent_date == 1793728800


def test_issue_8_fallback_survives_every_helper_failing(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("bug")

    for name in ("parse_message", "decode_words", "envelope", "body_forms", "base_subject", "parse_address_list"):
        monkeypatch.setattr(index_module, name, broken)
    message = b"Subject: =?utf-8?q?caf=C3=A9?=\r\nDate: x\r\nMessage-ID: <m@x>\r\nFrom: a@b\r\n\r\nhi\r\n"
    ix = index_message(message)
    assert ix.envelope == b'("x" "=?utf-8?q?caf=C3=A9?=" NIL NIL NIL NIL NIL NIL NIL "<m@x>")'
    assert ix.bodystructure == b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 4 0 NIL NIL NIL NIL)'
    assert (ix.subject, ix.from_, ix.message_id, ix.sort_subject, ix.sort_from) == (
        "=?utf-8?q?caf=c3=a9?=",
        "a@b",
        "<m@x>",
        "",
        "",
    )


@pytest.mark.parametrize("message", [b"", b"\r\n", b"no header at all", b"Subject: x", b"\xff" * 300_000])
def test_issue_8_fallback_of_odd_messages(message: bytes) -> None:
    ix = fallback_index(message)
    assert isinstance(ix, MessageIndex)
    assert ix.parts.end == len(message) and 0 <= ix.parts.body_start <= len(message)


# Finding 6 groundwork: an mmap of a spool file, never copied whole


class _BoundedView:
    """A message that only supports what MessageData promises, and refuses slices over 1 MiB."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.largest_slice = 0

    def __len__(self) -> int:
        return len(self._data)

    def __getitem__(self, key: slice) -> bytes:
        assert isinstance(key, slice)
        piece = self._data[key]
        self.largest_slice = max(self.largest_slice, len(piece))
        assert len(piece) <= SCAN_CHUNK_BYTES, "a slice of the whole message"
        return piece

    def find(self, sub: bytes, start: int = 0, end: int | None = None) -> int:
        return self._data.find(sub, start, len(self._data) if end is None else end)

    def rfind(self, sub: bytes, start: int = 0, end: int | None = None) -> int:
        return self._data.rfind(sub, start, len(self._data) if end is None else end)


def _big_message() -> bytes:
    attachment = base64.encodebytes(bytes(range(256)) * 12_000).replace(b"\n", b"\r\n")  # 4 MB
    text = b"line of text\r\n" * 300_000  # 4 MB
    return (
        b"From: a@example.org\r\nSubject: big\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
        b"--b\r\nContent-Type: text/plain\r\n\r\n" + text + b"\r\n--b\r\nContent-Type: message/rfc822\r\n\r\n"
        + corpus.MIXED + b"\r\n--b\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + attachment + b"--b--\r\n"
    )  # fmt: skip


@pytest.mark.parametrize("message", [*corpus.ALL, _big_message()], ids=[*map(str, range(len(corpus.ALL))), "big"])
def test_issue_8_index_of_an_mmap_equals_index_of_bytes(tmp_path: Path, message: bytes) -> None:
    path = tmp_path / "spool"
    path.write_bytes(message)
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        assert structured_index(mapped) == structured_index(message)
        assert fallback_index(mapped) == fallback_index(message)


def test_issue_8_index_takes_only_bounded_slices() -> None:
    message = _big_message()
    view = _BoundedView(message)
    assert structured_index(view) == structured_index(message)
    assert fallback_index(view) == fallback_index(message)
    assert view.largest_slice <= SCAN_CHUNK_BYTES
    root = parse_message(view)
    assert body_forms(root, view) == body_forms(root, message)
