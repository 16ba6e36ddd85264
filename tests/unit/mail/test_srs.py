"""SRS (kartero/mail/srs.py): the address format of libsrs2/postsrsd, round trips, and refusals."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kartero.mail.srs import SRS, Failure, SRSError, is_srs, timestamp

SECRET = b"s3cret"
SRS_ = SRS((SECRET,))
DAY = 86400.0
NOW = 20_000 * DAY + 3600.0  # day 20000: 20000 % 1024 = 544 = 17 * 32 + 0 -> "RA"


def _hash(*fields: str, secret: bytes = SECRET) -> str:
    mac = hmac.new(secret, digestmod=hashlib.sha1)
    for field in fields:
        mac.update(field.lower().encode())
    return base64.b64encode(mac.digest()).decode()[:4]


def test_issue_12_srs0_is_the_libsrs2_format() -> None:
    """SRS0=HHHH=TT=domain=local@forwarder, HHHH = base64(HMAC-SHA1(secret, TT+domain+local))[:4]."""
    assert timestamp(NOW) == "RA"
    expected = f"SRS0={_hash('RA', 'example.org', 'alice')}=RA=example.org=alice@fwd.test"
    assert SRS_.forward("alice@example.org", "fwd.test", NOW) == expected
    assert SRS_.reverse(expected, NOW) == "alice@example.org"


def test_issue_12_srs1_points_back_at_the_first_forwarder() -> None:
    first = SRS((b"other",)).forward("alice@example.org", "first.test", NOW)
    opaque = first.partition("@")[0][4:]  # "=HHHH=RA=example.org=alice", its separator kept
    second = SRS_.forward(first, "fwd.test", NOW)
    assert second == f"SRS1={_hash('first.test', opaque)}=first.test=={opaque[1:]}@fwd.test"
    third = SRS((b"third",)).forward(second, "third.test", NOW)  # still points at first.test
    assert third.startswith("SRS1=") and "=first.test==" in third
    assert SRS_.reverse(second, NOW) == first
    assert SRS((b"third",)).reverse(third, NOW) == first


def test_issue_12_srs_tag_separator_and_case() -> None:
    """libsrs2 accepts `=`, `+` or `-` after the tag, any case of the tag, and compares hashes
    case-insensitively (a relay may change the case of a local part)."""
    address = SRS_.forward("alice@example.org", "fwd.test", NOW)
    assert SRS_.reverse(address.upper(), NOW) == "ALICE@EXAMPLE.ORG"
    assert SRS_.reverse("srs0+" + address[5:], NOW) == "alice@example.org"
    assert is_srs("srs1-x") and not is_srs("srs2=x") and not is_srs("srs0")
    assert not is_srs("\u017frs0=x")  # long s, whose upper() is S


def test_issue_12_srs_expiry_after_21_days() -> None:
    address = SRS_.forward("alice@example.org", "fwd.test", NOW)
    assert SRS_.reverse(address, NOW + 21 * DAY) == "alice@example.org"
    with pytest.raises(SRSError) as expired:
        SRS_.reverse(address, NOW + 22 * DAY)
    assert expired.value.failure is Failure.EXPIRED
    with pytest.raises(SRSError) as future:  # from tomorrow: ~1023 days old, as libsrs2 counts
        SRS_.reverse(address, NOW - DAY)
    assert future.value.failure is Failure.EXPIRED
    assert SRS_.reverse(address, NOW + 1024 * DAY) == "alice@example.org"  # the stamp wraps (libsrs2 too)


def test_issue_12_srs_secret_rotation() -> None:
    old = SRS((b"old",)).forward("alice@example.org", "fwd.test", NOW)
    rotated = SRS((b"new", b"old"))
    assert rotated.reverse(old, NOW) == "alice@example.org"
    assert rotated.forward("alice@example.org", "fwd.test", NOW) == SRS((b"new",)).forward(
        "alice@example.org", "fwd.test", NOW
    )
    with pytest.raises(SRSError) as forged:
        SRS((b"new",)).reverse(old, NOW)
    assert forged.value.failure is Failure.FORGED


@pytest.mark.parametrize(
    ("address", "failure"),
    [
        ("alice@example.org", Failure.MALFORMED),
        ("SRS0=abcd=RA=example.org@fwd.test", Failure.MALFORMED),  # no local part
        ("SRS0=abc=RA=example.org=alice@fwd.test", Failure.MALFORMED),  # 3-character hash
        ("SRS0=abcd=R=example.org=alice@fwd.test", Failure.MALFORMED),
        ("SRS0=abcd=RA=example.org=alice@fwd.test", Failure.FORGED),
        ("SRS1=abcd=first.test==x=RA=example.org=alice@fwd.test", Failure.FORGED),
        ("SRS1=abcd=first.test@fwd.test", Failure.MALFORMED),
        ("SRS0=abcd=RA=example.org=alice", Failure.MALFORMED),  # no @
        ("SRS0=" + "a" * 300 + "@fwd.test", Failure.MALFORMED),
    ],
)
def test_issue_12_srs_refusals(address: str, failure: Failure) -> None:
    with pytest.raises(SRSError) as refused:
        SRS_.reverse(address, NOW)
    assert refused.value.failure is failure


def test_issue_12_srs_timestamp_checked_after_the_hash() -> None:
    """A bad timestamp character under a valid hash is malformed; an expired stamp with a forged hash is
    forged (only our own hash makes an address "expired")."""
    bad = f"SRS0={_hash('R!', 'example.org', 'alice')}=R!=example.org=alice@fwd.test"
    with pytest.raises(SRSError) as malformed:
        SRS_.reverse(bad, NOW)
    assert malformed.value.failure is Failure.MALFORMED
    with pytest.raises(SRSError) as forged:
        SRS_.reverse("SRS0=abcd=AA=example.org=alice@fwd.test", NOW)
    assert forged.value.failure is Failure.FORGED


@pytest.mark.parametrize(
    "sender",
    ["nodomain", "@example.org", "alice@", '"john doe"@example.org', "a..b@example.org", "x" * 50 + "@example.org"],
)
def test_issue_12_srs_unrewritable_senders(sender: str) -> None:
    with pytest.raises(SRSError) as refused:
        SRS_.forward(sender, "fwd.test", NOW)
    assert refused.value.failure is Failure.UNREWRITABLE


_ATOM = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+/=?^_`{|}~-é",
                min_size=1, max_size=8)  # fmt: skip
_LOCAL = st.lists(_ATOM, min_size=1, max_size=3).map(".".join)
_DOMAIN = st.lists(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=8),
                   min_size=1, max_size=3).map(".".join)  # fmt: skip
_SECRETS = st.binary(min_size=1, max_size=32)


@settings(max_examples=300, deadline=None)
@given(local=_LOCAL, domain=_DOMAIN, secret=_SECRETS, days=st.integers(0, 100_000), age=st.integers(0, 21))
def test_issue_12_srs_round_trip(local: str, domain: str, secret: bytes, days: int, age: int) -> None:
    srs = SRS((secret,))
    now = days * DAY + 7.0
    sender = f"{local}@{domain}"
    try:
        address = srs.forward(sender, "fwd.test", now)
    except SRSError as exc:
        assert exc.failure is Failure.UNREWRITABLE  # too long for 64 octets
        return
    assert len(address.rpartition("@")[0].encode()) <= 64
    assert srs.reverse(address, now + age * DAY) == sender
    if is_srs(local):
        return
    second = SRS((secret + b"2",))
    try:
        twice = second.forward(address, "second.test", now)
    except SRSError:
        return
    assert second.reverse(twice, now) == address


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=300))
def test_issue_12_srs_reverse_any_string(text: str) -> None:
    """Whatever arrives at RCPT: an address or the typed error, nothing else."""
    with contextlib.suppress(SRSError):
        SRS_.reverse(text, NOW)
    with contextlib.suppress(SRSError):
        SRS_.reverse("SRS0=" + text, NOW)


@settings(max_examples=300, deadline=None)
@given(local=_LOCAL, domain=_DOMAIN, position=st.integers(0, 3),
       replacement=st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/"))  # fmt: skip
def test_issue_12_srs_every_tampered_hash_is_refused(local: str, domain: str, position: int,
                                                     replacement: str) -> None:  # fmt: skip
    try:
        address = SRS_.forward(f"{local}@{domain}", "fwd.test", NOW)
    except SRSError:
        return
    tag, hashed = address[:5], address[5:9]
    if hashed[position].lower() == replacement.lower():
        return  # not a change: the comparison ignores case
    tampered = tag + hashed[:position] + replacement + hashed[position + 1 :] + address[9:]
    with pytest.raises(SRSError) as refused:
        SRS_.reverse(tampered, NOW)
    assert refused.value.failure is Failure.FORGED


def test_issue_12_srs_matches_the_reference_implementation() -> None:
    """Vectors made by Shevek's Mail::SRS 0.31 (Debian's libmail-srs-perl), on day 20786 (stamp JS):
    `Mail::SRS->new(Secret => "s3cret", AlwaysRewrite => 1)->forward('Alice.Smith@Example.org',
    'fwd.test')`, then that address forwarded again with Secret "other" to second.test."""
    now = 20786 * DAY + 1.0
    first = "SRS0=6P6q=JS=Example.org=Alice.Smith@fwd.test"
    second = "SRS1=NmkJ=fwd.test==6P6q=JS=Example.org=Alice.Smith@second.test"
    assert SRS((b"s3cret",)).forward("Alice.Smith@Example.org", "fwd.test", now) == first
    assert SRS((b"other",)).forward(first, "second.test", now) == second
    assert SRS((b"other",)).reverse(second, now) == first
    assert SRS((b"s3cret",)).reverse(first, now) == "Alice.Smith@Example.org"
