"""Issue 11: the abuse state is the cluster's. Two Kartero nodes (127.0.0.2 and 127.0.0.3) on one
PostgreSQL database: failed logins, messages sent and greylisted triplets count at both together, so
spreading attempts over the nodes gives no more than one node allows."""

from __future__ import annotations

import base64
import smtplib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import KarteroServer, tls_context, two_nodes
from tests.pgserver import PrivatePostgres

PASSWORD = "alice's password"
THROTTLED = (454, b"4.7.0 Too many authentication failures, try again later")
WRONG = (535, b"5.7.8 Authentication credentials invalid")
SYNCED_S = 1.5  # three exchanges of policy/shared.py (SYNC_S = 0.5): each node has the other's events
CONFIG = '[auth]\nfailures_per_address_and_account = 4\n[greylisting]\nenabled = true\ndelay = "2s"\nexempt = []\n'


@pytest.fixture
def nodes(tmp_path: Path, postgres: PrivatePostgres) -> Iterator[tuple[KarteroServer, KarteroServer]]:
    users = {"alice@example.test": PASSWORD, "bob@example.test": "secret-password"}
    with two_nodes(tmp_path, postgres.migrated_database(), users, extra_config=CONFIG,
                   limits="messages_per_user_per_hour = 3") as pair:  # fmt: skip
        yield pair


def submission(node: KarteroServer) -> smtplib.SMTP:
    client = smtplib.SMTP(node.host, node.submission_port, local_hostname="laptop.example", timeout=30,
                          source_address=("127.0.0.31", 0))  # fmt: skip
    client.starttls(context=tls_context())
    client.ehlo("laptop.example")
    return client


def plain(node: KarteroServer, password: str) -> tuple[int, bytes]:
    with submission(node) as client:
        return client.docmd("AUTH", "PLAIN " + base64.b64encode(f"\0alice@example.test\0{password}".encode()).decode())


def test_issue_11_failed_logins_spread_over_two_nodes_lock_out_as_fast_as_at_one(
    nodes: tuple[KarteroServer, KarteroServer],
) -> None:
    """`failures_per_address_and_account = 4`: two wrong passwords at A and two at B, and the next login
    is refused unchecked at either node, the right password too (per node, it took four at each)."""
    a, b = nodes
    assert [plain(a, "guess 1"), plain(a, "guess 2")] == [WRONG, WRONG]
    assert [plain(b, "guess 3"), plain(b, "guess 4")] == [WRONG, WRONG]
    # B counted A's two: its failures were the pair's third and fourth, answered after 2 and 4 s.
    assert [line.split("delay_s=")[1].split()[0] for line in b.wait_events("smtp.auth_failed", 2)] == ["2.0", "4.0"]
    assert plain(a, PASSWORD) == THROTTLED  # B's were published before their delays: A has them
    assert plain(b, PASSWORD) == THROTTLED
    assert len(a.wait_events("smtp.auth_throttled", 1)) == len(b.wait_events("smtp.auth_throttled", 1)) == 1


def test_issue_11_the_sending_limit_counts_submissions_at_both_nodes(
    nodes: tuple[KarteroServer, KarteroServer],
) -> None:
    def submit(node: KarteroServer) -> tuple[int, bytes]:
        with submission(node) as client:
            client.login("alice@example.test", PASSWORD)
            code, reply = client.mail("alice@example.test")
            if code != 250:
                return code, reply
            client.rcpt("bob@example.test")
            return client.data(b"From: alice@example.test\r\nSubject: n\r\n\r\nhi\r\n")

    a, b = nodes
    assert [submit(a)[0], submit(b)[0]] == [250, 250]
    time.sleep(SYNCED_S)
    assert submit(a)[0] == 250  # the third of the hour, whichever node
    time.sleep(SYNCED_S)
    limited = (451, b"4.7.1 Sending limit of 3 messages an hour reached, try again in 60 minutes")
    assert submit(b) == limited
    assert submit(a) == limited
    assert len(a.messages("bob@example.test")) == 3


def test_issue_11_a_triplet_greylisted_at_one_node_passes_when_retried_at_the_other(
    nodes: tuple[KarteroServer, KarteroServer],
) -> None:
    """An MX round robin: the retry after the delay goes to the other node, and passes there."""

    def attempt(node: KarteroServer, sender: str = "a@sender.example") -> tuple[int, bytes]:
        with smtplib.SMTP(node.host, node.port, timeout=30, source_address=("127.0.0.41", 0)) as client:
            client.ehlo()
            client.mail(sender)
            code, reply = client.rcpt("bob@example.test")
            if code == 250:
                code, reply = client.data(b"Subject: grey\r\n\r\nhi\r\n")
            return code, reply

    a, b = nodes
    assert attempt(a) == (451, b"4.7.1 Greylisted, please try again in 2 seconds")
    time.sleep(SYNCED_S)
    assert attempt(b)[0] == 451  # too soon, at B too: the delay runs from the first attempt at A
    time.sleep(2.1 - SYNCED_S)
    assert attempt(b)[0] == 250
    time.sleep(SYNCED_S)
    assert attempt(a)[0] == 250  # passed at B, known at A
    assert attempt(b, "other@sender.example")[0] == 451
    assert len(a.messages("bob@example.test")) == 2
