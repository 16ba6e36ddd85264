"""Abuse limits with a clock the test moves: what is refused at the limit is allowed again after."""

from __future__ import annotations

from kartero.policy.limits import (
    MAX_KEYS,
    Admission,
    ConnectionLimits,
    Greylist,
    Refusal,
    ServiceLimits,
    SlidingWindow,
    client_key,
    parse_networks,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_sliding_window_forgets_old_events() -> None:
    clock = Clock()
    window = SlidingWindow(60.0, clock)
    for _ in range(3):
        window.record("u")
        clock.now += 10
    assert window.count("u") == 3 and window.retry_after("u") == 30.0
    clock.now += 31
    assert window.count("u") == 2
    clock.now += 60
    assert window.count("u") == 0 and window.retry_after("u") == 0.0


def test_connection_limits_at_once_and_per_minute() -> None:
    clock = Clock()
    limits = ConnectionLimits(concurrent=2, per_minute=3, exempt=parse_networks(["127.0.0.0/8"]), clock=clock)
    assert [limits.open("192.0.2.1") for _ in range(3)] == [None, None, "more than 2 connections at once"]
    limits.close("192.0.2.1")
    limits.close("192.0.2.1")
    assert limits.open("192.0.2.1") == "more than 3 connections a minute"  # two counted + the refused one
    limits.close("192.0.2.1")
    limits.close("192.0.2.1")
    clock.now += 61
    assert limits.open("192.0.2.1") is None
    assert all(limits.open("127.0.0.1") is None for _ in range(10))  # exempt
    assert limits.open("192.0.2.2") is None  # per address


def test_greylist_triplets() -> None:
    clock = Clock()
    grey = Greylist(delay_s=300, retry_window_s=3600, pass_s=86400, clock=clock)
    assert grey.wait("192.0.2.1", "a@x.test", "b@y.test") == 300
    clock.now += 100
    assert grey.wait("192.0.2.1", "a@x.test", "b@y.test") == 200  # too early
    clock.now += 200
    assert grey.wait("192.0.2.9", "A@x.test", "b@y.test") == 0  # same /24, case-insensitive: passes
    clock.now += 80000
    assert grey.wait("192.0.2.1", "a@x.test", "b@y.test") == 0  # remembered, and refreshed
    assert grey.wait("198.51.100.1", "a@x.test", "b@y.test") == 300  # another network
    clock.now += 4000
    assert grey.wait("198.51.100.1", "a@x.test", "b@y.test") == 300  # retried too late: starts over
    assert grey.wait("2001:db8:1:2::5", "a@x.test", "b@y.test") == 300
    clock.now += 300
    assert grey.wait("2001:db8:1:2::99", "a@x.test", "b@y.test") == 0  # same /64


def test_client_key_counts_ipv6_by_64_and_mapped_ipv4_as_ipv4() -> None:
    assert client_key("192.0.2.7") == "192.0.2.7"
    assert client_key("2001:db8:1:2::5") == client_key("2001:db8:1:2:ffff::1") == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:3::5") != client_key("2001:db8:1:2::5")
    assert client_key("::ffff:192.0.2.7") == "192.0.2.7"


def test_connection_limits_key_ipv6_by_64() -> None:
    limits = ConnectionLimits(concurrent=2, per_minute=0)
    assert limits.open("2001:db8::1") is None and limits.open("2001:db8::2") is None
    assert limits.open("2001:db8::ffff:3") == "more than 2 connections at once"  # a third host of the /64
    assert limits.open("2001:db8:0:1::1") is None  # another /64


def test_sliding_window_evicts_the_least_recent_key_not_everyone() -> None:
    window = SlidingWindow(60.0, Clock())
    window.record("victim")
    window.record("victim")
    for i in range(MAX_KEYS):  # a spray of new keys
        window.record(f"k{i}")
        if i == 10:
            window.record("victim")  # seen recently: kept
    assert window.count("victim") == 3
    assert window.count("k0") == 0  # the oldest were forgotten


SERVICES = {
    "smtp": ServiceLimits(sessions=3, per_ip=2),
    "imap": ServiceLimits(sessions=4, per_ip=2, per_user_ip=1),
}


def test_issue_8_admission_gives_each_service_its_own_room() -> None:
    admission = Admission(total=10, services=SERVICES)
    imap = [admission.open("imap", f"192.0.2.{i}") for i in range(5)]
    assert [t.refusal for t in imap[:4]] == [None] * 4
    assert imap[4].refusal == Refusal("too many connections", is_per_address=False)  # the IMAP pool is full
    assert admission.open("smtp", "198.51.100.1").refusal is None  # SMTP still has its own
    admission.close(imap[0])
    admission.close(imap[0])  # a second close counts nothing
    assert admission.count("imap") == 3 and admission.count() == 4
    assert admission.open("imap", "192.0.2.9").refusal is None


def test_issue_8_admission_total_cap() -> None:
    admission = Admission(total=2, services=SERVICES)
    assert admission.open("smtp", "192.0.2.1").refusal is None
    assert admission.open("imap", "192.0.2.2").refusal is None
    assert admission.open("imap", "192.0.2.3").refusal == Refusal("too many connections", is_per_address=False)


def test_issue_8_admission_per_address_before_login_and_per_account_after() -> None:
    admission = Admission(total=100, services={"imap": ServiceLimits(sessions=50, per_ip=2, per_user_ip=2)})
    first, second = admission.open("imap", "192.0.2.1"), admission.open("imap", "192.0.2.1")
    third = admission.open("imap", "192.0.2.1")
    assert third.refusal == Refusal("more than 2 connections at once", is_per_address=True)
    assert admission.log_in(first, "bob@example.test") is None  # moves to bob's count: room for another
    fourth = admission.open("imap", "192.0.2.1")
    assert fourth.refusal is None
    assert admission.log_in(second, "BOB@example.test") is None
    assert admission.log_in(fourth, "bob@example.test") == Refusal("more than 2 connections at once", True)
    assert admission.log_in(fourth, "carol@example.test") is None  # another account from the same address
    for ticket in (first, second, fourth):
        admission.close(ticket)
    assert admission.count() == 0
    assert admission.open("imap", "192.0.2.1").refusal is None


def test_admission_exempt_addresses_and_refused_tickets() -> None:
    admission = Admission(total=100, services=SERVICES, exempt=parse_networks(["127.0.0.0/8"]))
    assert all(admission.open("smtp", "127.0.0.1").refusal is None for _ in range(3))
    refused = admission.open("smtp", "127.0.0.1")
    assert refused.refusal is not None and not refused.refusal.is_per_address  # the service cap still holds
    admission.close(refused)  # counts nothing
    assert admission.count("smtp") == 3
