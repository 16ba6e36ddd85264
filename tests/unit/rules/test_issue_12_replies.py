"""Issue 12: the vacation rules of RFC 5230 §4.5-§4.6, the reply of §5, the rejection notice of RFC 5429
§2.1.1, the names and flags a script may give a stored copy, and the store's memory for them."""

from __future__ import annotations

import email
import email.policy
from datetime import UTC, datetime

import pytest

from kartero.mime.headers import parse_header_block
from kartero.rules.engine import _valid_flags, mailbox_name
from kartero.rules.reject import build_rejection
from kartero.rules.vacation import build_reply, skip_reason
from kartero.store.sqlite import SQLiteStore

OWN = frozenset({"bob@example.test"})
NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def header(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode() + b"\r\n"


PLAIN = "From: Alice <alice@remote.test>\nTo: Bob <bob@example.test>\nSubject: Lunch?\nMessage-ID: <m1@remote.test>\n"


@pytest.mark.parametrize(
    ("fields", "sender", "reason"),
    [
        (PLAIN, "alice@remote.test", None),
        (PLAIN.replace("To: Bob <bob@example.test>", "To: team@example.test\nCc: BOB@example.test"),
         "alice@remote.test", None),
        (PLAIN, "", "null sender"),
        (PLAIN, "MAILER-DAEMON@remote.test", "sender is a list or daemon address"),
        (PLAIN, "owner-list@remote.test", "sender is a list or daemon address"),
        (PLAIN, "list-request@remote.test", "sender is a list or daemon address"),
        (PLAIN, "bob@example.test", "sender is the user"),
        (PLAIN + "Auto-Submitted: auto-replied\n", "alice@remote.test", "Auto-Submitted message"),
        (PLAIN + "Auto-Submitted: no\n", "alice@remote.test", None),
        (PLAIN + "Precedence: bulk\n", "alice@remote.test", "bulk or list Precedence"),
        (PLAIN + "Precedence: JUNK\n", "alice@remote.test", "bulk or list Precedence"),
        (PLAIN + "List-Id: <news.remote.test>\n", "alice@remote.test", "mailing list message"),
        (PLAIN + "List-Unsubscribe: <mailto:x@remote.test>\n", "alice@remote.test", "mailing list message"),
        (PLAIN.replace("bob@example.test", "someone@example.test"), "alice@remote.test", "user not in To/Cc/Bcc"),
    ],
)
def test_issue_12_vacation_answers_only_personal_mail(fields: str, sender: str, reason: str | None) -> None:
    assert skip_reason(parse_header_block(header(fields)), sender, OWN) == reason


def test_issue_12_vacation_reply_threads_and_is_marked_automatic() -> None:
    original = header(PLAIN + "References: <m0@remote.test>\n")
    reply = build_reply(header=parse_header_block(original), sender="alice@remote.test",
                        from_address="bob@example.test", reason="Away until Monday.\nÜrgent? Call.", subject=None,
                        mime=False, now=NOW, hostname="mx.example.test")  # fmt: skip
    assert reply.recipient == "alice@remote.test"
    parsed = email.message_from_bytes(reply.data, policy=email.policy.default)
    assert b"\r\nFrom: <bob@example.test>\r\n" in b"\r\n" + reply.data
    assert b"\r\nTo: <alice@remote.test>\r\n" in reply.data
    assert parsed["Subject"] == "Auto: Lunch?"
    assert parsed["Auto-Submitted"] == "auto-replied (vacation)"
    assert parsed["In-Reply-To"] == "<m1@remote.test>"
    assert parsed["References"] == "<m0@remote.test> <m1@remote.test>"
    assert parsed.get_content() == "Away until Monday.\r\nÜrgent? Call.\r\n"
    assert b"\r\n\r\nAway until Monday.\r\n" in reply.data


def test_issue_12_vacation_subject_from_the_script_is_one_encoded_line() -> None:
    reply = build_reply(header=parse_header_block(header(PLAIN)), sender="alice@remote.test",
                        from_address="bob@example.test", reason="x", subject="Fort bis\r\nBcc: evil@x Montag ✈",
                        mime=False, now=NOW, hostname="mx.example.test")  # fmt: skip
    head = reply.data.split(b"\r\n\r\n")[0]
    assert b"Bcc:" not in head.replace(b"=?utf-8?", b"")
    parsed = email.message_from_bytes(reply.data, policy=email.policy.default)
    assert parsed["Subject"] == "Fort bis Bcc: evil@x Montag ✈"


def test_issue_12_rejection_notice_is_an_mdn_with_the_original_header() -> None:
    original = header(PLAIN)
    notice = build_rejection(original_header=original, header=parse_header_block(original),
                             sender="alice@remote.test", recipient="bob@example.test",
                             original_recipient="bob@example.test", reason="No thanks.", now=NOW,
                             hostname="mx.example.test")  # fmt: skip
    parsed = email.message_from_bytes(notice, policy=email.policy.default)
    assert parsed.get_content_type() == "multipart/report"
    assert parsed.get_param("report-type") == "disposition-notification"
    assert parsed["Auto-Submitted"] == "auto-replied (rejected)"
    text, mdn, returned = parsed.iter_parts()
    assert "No thanks." in text.get_content()
    report = mdn.as_bytes()
    assert b"Final-Recipient: rfc822; bob@example.test" in report
    assert b"Disposition: automatic-action/MDN-sent-automatically; deleted" in report
    assert b"Original-Message-ID: <m1@remote.test>" in report
    assert returned.get_content_type() == "text/rfc822-headers"
    assert b"Subject: Lunch?" in returned.as_bytes()


@pytest.mark.parametrize(
    ("name", "stored"),
    [("INBOX", "INBOX"), ("inbox", "INBOX"), ("Inbox/Lists", "INBOX/Lists"), ("Lists/kartero/", "Lists/kartero"),
     ("Ärger", "Ärger"), ("", None), ("/abs", None), ("a//b", None), ("a*", None), ("50%", None),
     ("tab\there", None), ("x" * 1001, None), ("a/" * 100 + "a", None)],
)  # fmt: skip
def test_issue_12_fileinto_names_are_those_imap_could_create(name: str, stored: str | None) -> None:
    assert mailbox_name(name) == stored


def test_issue_12_imap4flags_keep_system_flags_and_atoms_only() -> None:
    notes: list[str] = []
    flags = frozenset({"\\seen", "\\Recent", "\\Bogus", "$Label1", "Junk", "has space", "par(en", "", "x" * 101})
    assert _valid_flags(flags, notes) == {"\\Seen", "$Label1", "Junk"}
    many = frozenset(f"k{i}" for i in range(500))
    assert len(_valid_flags(many, notes)) == 64
    assert notes


def test_issue_12_store_remembers_once_per_period(store: SQLiteStore) -> None:
    account = store.accounts.get_account("bob@example.test")
    assert account is not None
    mail = store.mail
    assert not mail.sieve_recalls(account.id, "k", 1000)
    assert mail.sieve_remember(account.id, "k", 2000, 1000, only_if_new=True)
    assert mail.sieve_recalls(account.id, "k", 1999)
    assert not mail.sieve_recalls(account.id, "k", 2000)
    assert not mail.sieve_remember(account.id, "k", 3000, 1500, only_if_new=True)  # within the period
    assert mail.sieve_remember(account.id, "k", 3000, 2000, only_if_new=True)  # expired: again
    assert mail.sieve_remember(account.id, "k", 9000, 2100, only_if_new=False)  # refreshed
    assert mail.sieve_recalls(account.id, "k", 8999)
    assert not mail.sieve_remember(account.id + 999, "k", 3000, 2000, only_if_new=True)  # no such account
