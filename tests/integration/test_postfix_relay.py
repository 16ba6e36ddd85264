"""Postfix on 127.0.0.1 relays to Kartero on 127.0.0.2: a real MTA delivering to us, STARTTLS included."""

from __future__ import annotations

import shutil
import smtplib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import KarteroServer, free_port, wait_for
from tests.integration.postfix import PostfixInstance, is_available


@pytest.fixture
def relay_pair() -> Iterator[tuple[PostfixInstance, KarteroServer]]:
    reason = is_available()
    if reason:
        pytest.fail(reason)
    # Postfix daemons run as the postfix user: its folders must not sit under pytest's 0700 tmp folder.
    root = Path(tempfile.mkdtemp(prefix="kartero-postfix-"))
    root.chmod(0o755)
    mx = KarteroServer(root / "kartero", host="127.0.0.2")
    mx.add_user("bob@example.test")
    mx.start()
    postfix = PostfixInstance(
        root / "postfix", "127.0.0.1", free_port("127.0.0.1"), main_cf={"relayhost": f"[127.0.0.2]:{mx.port}"}
    )
    try:
        postfix.start()
        yield postfix, mx
    finally:
        postfix.stop()
        assert mx.stop() == 0, mx.log
        shutil.rmtree(root, ignore_errors=True)


def test_postfix_relays_to_kartero(relay_pair: tuple[PostfixInstance, KarteroServer]) -> None:
    postfix, mx = relay_pair
    body = "Subject: via Postfix\r\nFrom: alice@client.test\r\n\r\nGr\u00fc\u00dfe from Postfix\r\n".encode()
    with smtplib.SMTP(postfix.host, postfix.port) as s:
        assert s.sendmail("alice@client.test", ["bob@example.test"], body, mail_options=["BODY=8BITMIME"]) == {}
    wait_for(lambda: mx.messages("bob@example.test"), timeout_s=30)
    (stored,) = mx.messages("bob@example.test")
    assert stored.startswith(
        b"Return-Path: <alice@client.test>\r\n"
        b"Received: from postfix.test ([127.0.0.1])\r\n"
        b"\tby mx.example.test (Kartero) with ESMTPS (version=TLSv1."
    )
    assert b"by postfix.test (Postfix) with ESMTP" in stored
    assert stored.endswith("\r\n\r\nGr\u00fc\u00dfe from Postfix\r\n".encode())
    assert "status=sent (250 2.0.0 Message accepted as " in postfix.log()


def test_postfix_gets_a_permanent_refusal_for_unknown_user(relay_pair: tuple[PostfixInstance, KarteroServer]) -> None:
    postfix, mx = relay_pair
    with smtplib.SMTP(postfix.host, postfix.port) as s:
        s.sendmail("alice@client.test", ["nobody@example.test"], b"Subject: x\r\n\r\nx\r\n")
    wait_for(lambda: "status=bounced" in postfix.log(), timeout_s=30)
    assert "said: 550 5.1.1 No such user here" in postfix.log()
    assert mx.messages("bob@example.test") == []
