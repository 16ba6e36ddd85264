"""Issue 8 on the MIME side: linear subject normalisation (finding 2), charsets that cannot poison the
index (finding 3), a parser that is bounded and never raises (finding 10), a fallback index, and
messages read from an mmap without whole copies."""

from __future__ import annotations

import base64
import encodings
import time

import pytest

from kartero.mime import addresses
from kartero.mime.addresses import EnvelopeAddress, parse_address_list
from kartero.mime.headers import decode_body, decode_words, iter_body_text, text_codec
from kartero.mime.index import base_subject, index_message


def _seconds(call: object, *args: object) -> float:
    """CPU seconds `call(*args)` takes: the work it does, not how busy the test machine is."""
    assert callable(call)
    started = time.process_time()
    call(*args)
    return time.process_time() - started


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
    ix = index_message(message)
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
