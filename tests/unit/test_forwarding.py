"""Forwarding (issue 12): aliases to remote addresses, the SRS sender of the forwarded copy, bounces to
SRS addresses at RCPT and in intake, Delivered-To loops, the fan-out cap, and where the secret lives."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kartero.auth.accounts import Directory, DirectoryCache, DirectoryError
from kartero.concurrency import Blocking
from kartero.config import ConfigError, SRSConfig, load
from kartero.intake import MAX_FORWARDS, Incoming, Intake, Refused, SmtpArrival, Stored, Target, delivered_to
from kartero.mail import replies
from kartero.mail.address import Address
from kartero.mail.address import Path as SmtpPath
from kartero.mail.envelope import EnvelopeRecipient, EnvelopeRecord, Origin
from kartero.mail.srs import SRS
from kartero.policy.decisions import Accept, Reject
from kartero.policy.inbound import InboundPolicy
from kartero.server import srs_keys
from kartero.store.sqlite import SQLiteStore

ARRIVAL = SmtpArrival("client.example", "192.0.2.7", "ESMTP", None, None)
SRS_ = SRS((b"a secret for the tests",))
DAY = 86400.0


@pytest.fixture
def sqlite(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "data")
    s.accounts.add_account("bob@example.test", "h")
    s.accounts.add_account("carol@example.test", "h")
    s.start()
    yield s
    s.close()


def cache(store: SQLiteStore) -> DirectoryCache:
    directory = DirectoryCache(store.accounts, ("example.test", "other.test"))
    directory.prime()
    return directory


def intake(store: SQLiteStore) -> Intake:
    return Intake(store.mail, cache(store), hostname="mx.example.test", queue_lifetime_s=3600.0, blocking=Blocking(),
                  srs=SRS_)  # fmt: skip


def target(store: SQLiteStore, address: str) -> Target:
    """What the MX policy hands intake for a RCPT of `address`."""
    resolution = cache(store).current().resolve(address)
    return Target(EnvelopeRecipient(address), resolution.account_ids, forward_to=resolution.forward_to)


def accept(store: SQLiteStore, sender: str, targets: tuple[Target, ...], data: bytes) -> Stored | Refused:
    envelope = EnvelopeRecord(Origin.SMTP, sender, tuple(t.recipient for t in targets))
    return asyncio.run(intake(store).accept(Incoming(envelope, data, targets, ARRIVAL)))


def inbox(store: SQLiteStore, address: str) -> list[bytes]:
    account = store.accounts.get_account(address)
    assert account is not None
    mailbox = store.mail.get_mailbox(account.id, "INBOX")
    assert mailbox is not None
    return [store.mail.read_message(r.blob_id) for r in store.mail.message_rows(mailbox.id)]


# -- aliases to remote addresses ------------------------------------------------------------------------


def test_issue_12_aliases_reach_remote_addresses_through_chains_with_loops_cut(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "data")
    try:
        directory = Directory(store.accounts, ("example.test",))
        bob = directory.add_user("bob@example.test", "pw").id
        directory.add_alias("fwd@example.test", "Alice@Remote.example")  # remote only
        directory.add_alias("team@example.test", "bob@example.test")  # mixed, and through a chain
        directory.add_alias("team@example.test", "fwd@example.test")
        directory.add_alias("team@example.test", "dave@elsewhere.example")
        directory.add_alias("loop@example.test", "team@example.test")
        directory.add_alias("team@example.test", "loop@example.test")  # a loop, cut as before
        directory.add_alias("@example.test", "catch@remote.example")
        r = directory.resolve
        assert r("fwd@example.test").account_ids == () and r("fwd@example.test").forward_to == ("Alice@remote.example",)
        assert r("fwd+tag@example.test").forward_to == ("Alice@remote.example",)  # plus-addressing
        team = r("loop@example.test")
        assert team.account_ids == (bob,)
        assert team.forward_to == ("dave@elsewhere.example", "Alice@remote.example")  # each once, as found
        assert r("nobody@example.test").forward_to == ("catch@remote.example",)  # catch-all
        assert r("x@remote.example").forward_to == ()  # a remote address itself is no alias
        assert [a for a in store.accounts.list_aliases() if a[0] == "fwd@example.test"] == [
            ("fwd@example.test", "Alice@remote.example")
        ]
        with pytest.raises(DirectoryError, match="not one of the local domains"):
            directory.add_alias("x@remote.example", "bob@example.test")  # the source stays local
    finally:
        store.close()


# -- the forwarded copy ---------------------------------------------------------------------------------


def test_issue_12_mixed_alias_stores_the_local_copy_and_queues_an_srs_copy_in_one_group(sqlite: SQLiteStore) -> None:
    sqlite.accounts.add_alias("team@example.test", "bob@example.test")
    sqlite.accounts.add_alias("team@example.test", "Alice@remote.example")
    data = b"Subject: hi\r\n\r\nbody\r\n"
    outcome = accept(sqlite, "sender@origin.example", (target(sqlite, "team@example.test"),), data)
    assert isinstance(outcome, Stored) and outcome.queue_id not in (None, outcome.message_id)
    (local,) = inbox(sqlite, "bob@example.test")
    assert local.startswith(b"Return-Path: <sender@origin.example>\r\nReceived: ") and local.endswith(data)
    assert b"Delivered-To" not in local
    (entry,) = sqlite.queue.queue_entries()
    assert entry.id == outcome.queue_id
    assert [r.address for r in entry.recipients] == ["Alice@remote.example"]
    assert entry.sender.startswith("SRS0=") and entry.sender.endswith("=origin.example=sender@example.test")
    assert SRS_.reverse(entry.sender, time.time()) == "sender@origin.example"
    queued = sqlite.mail.read_message(entry.id)
    assert queued.startswith(b"Delivered-To: team@example.test\r\nReceived: from client.example")
    assert queued.endswith(data) and b"Return-Path" not in queued


def test_issue_12_the_forwarder_domain_is_the_alias_domain_and_each_alias_gets_its_copy(sqlite: SQLiteStore) -> None:
    sqlite.accounts.add_alias("a@example.test", "x@remote.example")
    sqlite.accounts.add_alias("b@other.test", "y@remote.example")
    targets = (target(sqlite, "a@example.test"), target(sqlite, "b@other.test"))
    outcome = accept(sqlite, "s@origin.example", targets, b"Subject: two\r\n\r\n.\r\n")
    assert isinstance(outcome, Stored)
    entries = {e.recipients[0].address: e for e in sqlite.queue.queue_entries()}
    assert entries["x@remote.example"].sender.endswith("@example.test")
    assert entries["y@remote.example"].sender.endswith("@other.test")
    assert sqlite.mail.read_message(entries["y@remote.example"].id).startswith(b"Delivered-To: b@other.test\r\n")


@pytest.mark.parametrize(
    ("sender", "queued_sender"),
    [
        ("", ""),  # a bounce is never bounced: the null sender stays null
        ("bob@example.test", "bob@example.test"),  # ours: our SPF covers us, bounces come home anyway
        ("carol@Other.TEST", "carol@Other.TEST"),
        ('"john doe"@origin.example', ""),  # SRS cannot carry it: forwarded with the null sender, logged
        ("x" * 50 + "@origin.example", ""),  # the SRS local part would pass 64 octets
    ],
)
def test_issue_12_which_senders_are_rewritten(sqlite: SQLiteStore, sender: str, queued_sender: str) -> None:
    sqlite.accounts.add_alias("fwd@example.test", "x@remote.example")
    outcome = accept(sqlite, sender, (target(sqlite, "fwd@example.test"),), b"Subject: s\r\n\r\n.\r\n")
    assert isinstance(outcome, Stored)
    (entry,) = sqlite.queue.queue_entries()
    assert entry.sender == queued_sender


def test_issue_12_an_srs_sender_of_another_forwarder_becomes_srs1(sqlite: SQLiteStore) -> None:
    sqlite.accounts.add_alias("fwd@example.test", "x@remote.example")
    first = SRS((b"theirs",)).forward("alice@origin.example", "first.example", time.time())
    outcome = accept(sqlite, first, (target(sqlite, "fwd@example.test"),), b"Subject: s\r\n\r\n.\r\n")
    assert isinstance(outcome, Stored)
    (entry,) = sqlite.queue.queue_entries()
    assert entry.sender.startswith("SRS1=") and "=first.example==" in entry.sender
    assert SRS_.reverse(entry.sender, time.time()) == first


def test_issue_12_each_remote_address_gets_one_copy_per_message(sqlite: SQLiteStore) -> None:
    sqlite.accounts.add_alias("a@example.test", "x@remote.example")
    sqlite.accounts.add_alias("b@example.test", "X@remote.example")
    sqlite.accounts.add_alias("b@example.test", "y@remote.example")
    direct = Target(EnvelopeRecipient("y@remote.example"), is_remote=True)
    targets = (target(sqlite, "a@example.test"), target(sqlite, "b@example.test"), direct)
    assert isinstance(accept(sqlite, "s@origin.example", targets, b"Subject: s\r\n\r\n.\r\n"), Stored)
    queued = sqlite.queue.queue_entries()
    entries = sorted((e.sender.startswith("SRS0="), [r.address for r in e.recipients]) for e in queued)
    assert entries == [(False, ["y@remote.example"]), (True, ["x@remote.example"])]


def test_issue_12_forwarding_fan_out_is_capped_per_message(
    sqlite: SQLiteStore, caplog: pytest.LogCaptureFixture
) -> None:
    for n in range(MAX_FORWARDS + 50):
        sqlite.accounts.add_alias("list@example.test", f"m{n:03}@remote.example")
    outcome = accept(sqlite, "s@origin.example", (target(sqlite, "list@example.test"),), b"Subject: s\r\n\r\n.\r\n")
    assert isinstance(outcome, Stored)
    (entry,) = sqlite.queue.queue_entries()
    assert len(entry.recipients) == MAX_FORWARDS
    assert "event=intake.forward_limit" in caplog.text and "m149@remote.example" in caplog.text


def test_issue_12_forwarded_callable_for_sieve_redirect(sqlite: SQLiteStore) -> None:
    """What the Sieve side calls for `redirect`: one Delivery for the same deliver_group."""
    envelope = EnvelopeRecord(Origin.SMTP, "s@origin.example", (EnvelopeRecipient("bob@example.test"),),
                              received_at=int(time.time()))  # fmt: skip
    copy = intake(sqlite).forwarded(envelope, b"Received: x\r\n\r\nbody\r\n", ["r@remote.example"], "bob@example.test")
    assert copy.outbound is not None and copy.targets == ()
    assert copy.outbound.sender.startswith("SRS0=") and copy.outbound.sender.endswith("@example.test")
    assert [r.address for r in copy.outbound.recipients] == ["r@remote.example"]
    assert copy.data == b"Delivered-To: bob@example.test\r\nReceived: x\r\n\r\nbody\r\n"


# -- loops --------------------------------------------------------------------------------------------


def test_issue_12_delivered_to_loop_stops_that_recipient_only(
    sqlite: SQLiteStore, caplog: pytest.LogCaptureFixture
) -> None:
    sqlite.accounts.add_alias("fwd@example.test", "x@remote.example")
    data = b"Delivered-To: <FWD@example.test>\r\nSubject: back again\r\n\r\n.\r\n"
    targets = (target(sqlite, "fwd@example.test"), target(sqlite, "bob@example.test"))
    outcome = accept(sqlite, "s@origin.example", targets, data)
    assert isinstance(outcome, Stored)
    assert sqlite.queue.queue_entries() == []  # not forwarded again
    (stored,) = inbox(sqlite, "bob@example.test")  # the other recipient still gets it
    assert stored.endswith(data)
    assert "event=intake.loop" in caplog.text and "rcpt=fwd@example.test" in caplog.text


def test_issue_12_a_message_looping_for_every_recipient_is_refused(sqlite: SQLiteStore) -> None:
    data = b"Subject: x\r\nDelivered-To: bob@example.test\r\n\r\n.\r\n"
    outcome = accept(sqlite, "s@origin.example", (target(sqlite, "bob@example.test"),), data)
    assert isinstance(outcome, Refused) and outcome.reply == replies.MAIL_LOOP
    assert outcome.reply.to_bytes() == b"554 5.4.6 Mail forwarding loop detected\r\n"
    assert inbox(sqlite, "bob@example.test") == []


def test_issue_12_delivered_to_is_read_from_the_header_only() -> None:
    assert delivered_to(b"Subject: x\r\n\r\nDelivered-To: bob@example.test\r\n") == frozenset()
    head = b"delivered-to: A@B.example\r\nDELIVERED-TO:\r\n <c@d.example>\r\n\r\n"
    assert delivered_to(head) == {"a@b.example", "c@d.example"}
    start = time.process_time()
    assert delivered_to(b"X-A: " + b"delivered-to:" * 200_000 + b"\r\n\r\n") == frozenset()
    assert time.process_time() - start < 5


# -- bounces to SRS addresses -------------------------------------------------------------------------


def policy(store: SQLiteStore, srs: SRS | None = SRS_) -> InboundPolicy:
    return InboundPolicy(cache(store), "example.test", srs=srs)


def rcpt(p: InboundPolicy, address: str) -> Accept | Reject:
    local, _, domain = address.rpartition("@")
    return asyncio.run(p.check_local(SmtpPath(Address(local, domain))))


def test_issue_12_a_valid_srs_address_routes_the_bounce_to_the_original_sender(sqlite: SQLiteStore) -> None:
    address = SRS_.forward("Alice@Origin.example", "example.test", time.time())
    decision = rcpt(policy(sqlite), address)
    assert decision == Accept(replies.RECIPIENT_OK, address="Alice@origin.example", is_remote=True)
    assert rcpt(policy(sqlite), address.upper()) == Accept(replies.RECIPIENT_OK, address="ALICE@origin.example",
                                                           is_remote=True)  # fmt: skip
    local = SRS_.forward("carol@example.test", "other.test", time.time())  # from before example.test was ours
    assert rcpt(policy(sqlite), local) == Accept(replies.RECIPIENT_OK, (2,), "carol@example.test")


def test_issue_12_forged_and_expired_srs_addresses_are_refused_at_rcpt(sqlite: SQLiteStore) -> None:
    valid = SRS_.forward("alice@origin.example", "example.test", time.time())
    forged = valid[:5] + ("A" if valid[5] not in "aA" else "B") + valid[6:]
    expired = SRS_.forward("alice@origin.example", "example.test", time.time() - 22 * DAY)
    other_secret = SRS((b"someone else's secret",)).forward("alice@origin.example", "example.test", time.time())
    for address in (forged, expired, other_secret, "SRS0=xxxx=AA=origin.example=alice@example.test",
                    "srs0=broken@example.test"):  # fmt: skip
        decision = rcpt(policy(sqlite), address)
        assert decision == Reject(replies.SRS_INVALID), address
        assert decision.reply.to_bytes() == b"550 5.1.1 Invalid or expired SRS address\r\n"
    # A remote-domain SRS address is someone else's: relaying is still denied, whatever the hash.
    assert rcpt(policy(sqlite), valid.replace("@example.test", "@remote.example")) == Reject(replies.RELAY_DENIED)


def test_issue_12_intake_resolves_srs_addresses_for_dsns(sqlite: SQLiteStore) -> None:
    """A DSN about a forwarded copy goes to its SRS sender: intake reverses it."""
    valid = SRS_.forward("alice@origin.example", "example.test", time.time())

    async def resolve() -> list[Target | None]:
        i = intake(sqlite)
        return [await i.resolve(valid.lower()), await i.resolve("srs0=abcd=aa=origin.example=alice@example.test")]

    found, forged = asyncio.run(resolve())
    assert found == Target(EnvelopeRecipient("alice@origin.example"), is_remote=True)
    assert forged is None


# -- the secret ------------------------------------------------------------------------------------------


def test_issue_12_the_srs_secret_is_made_once_and_kept_in_the_store(store: SQLiteStore) -> None:
    """Both backends: the first process to ask stores its candidate; every later one gets that."""
    assert store.accounts.server_secret("srs", "first") == "first"
    assert store.accounts.server_secret("srs", "second") == "first"
    assert store.accounts.server_secret("other", "x") == "x"


def test_issue_12_srs_keys_come_from_the_config_or_the_store(tmp_path: Path, sqlite: SQLiteStore) -> None:
    base = 'domains = ["example.test"]\n'
    (tmp_path / "a.toml").write_text(base)
    made = srs_keys(load(tmp_path / "a.toml", env={}), sqlite)
    assert made == srs_keys(load(tmp_path / "a.toml", env={}), sqlite)  # kept: restarts keep bounces valid
    (tmp_path / "b.toml").write_text(
        base + '[srs]\nsecret = "0123456789abcdef0123"\nold_secrets = ["x' + "y" * 20 + '"]\n'
    )
    config = load(tmp_path / "b.toml", env={})
    assert config.srs == SRSConfig("0123456789abcdef0123", ("x" + "y" * 20,))
    assert srs_keys(config, sqlite).secrets == (b"0123456789abcdef0123", b"x" + b"y" * 20)
    (tmp_path / "c.toml").write_text(base + '[srs]\nsecret = "short"\n')
    with pytest.raises(ConfigError, match=r"\[srs\] secret: at least 16 characters"):
        load(tmp_path / "c.toml", env={})
