"""The extensions beyond the core: body (RFC 5173), date and index (RFC 5260), include (RFC 6609),
editheader (RFC 5293), duplicate (RFC 7352), environment (RFC 5183), with the RFCs' examples."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from kartero.sieve import DuplicateMark, FileInto, Outcome, Redirect
from tests.unit.sieve_helpers import HEADER, context, mailboxes, outcome

MULTIPART_HEADER = (
    "From: coyote@desert.example.org\r\n"
    "Subject: plans\r\n"
    "MIME-Version: 1.0\r\n"
    'Content-Type: multipart/mixed; boundary="b1"\r\n'
    "\r\n"
)
MULTIPART_BODY = (
    "--b1\r\n"
    "Content-Type: text/plain; charset=utf-8\r\n"
    "Content-Transfer-Encoding: quoted-printable\r\n"
    "\r\n"
    "The missile is r=C3=A9ady.\r\n"
    "--b1\r\n"
    "Content-Type: text/html\r\n"
    "\r\n"
    "<p>launch <b>codes</b></p>\r\n"
    "--b1\r\n"
    "Content-Type: application/octet-stream\r\n"
    "Content-Transfer-Encoding: base64\r\n"
    "\r\n"
    "c2VjcmV0IGJsdWVwcmludHM=\r\n"
    "--b1--\r\n"
)


def test_body_transforms_rfc_5173() -> None:
    ctx = context(MULTIPART_HEADER, MULTIPART_BODY)

    def found(test: str) -> bool:
        return mailboxes(outcome(f'require ["body", "fileinto"]; if {test} {{ fileinto "hit"; }}', ctx)) == ["hit"]

    assert found('body :raw :contains "r=C3=A9ady"')  # :raw is the body as it is on the wire
    assert not found('body :raw :contains "réady"')
    assert found('body :contains "réady"')  # :text decodes the text parts
    assert found('body :text :contains "<b>codes</b>"')
    assert not found('body :text :contains "blueprints"')  # not a text part
    assert found('body :content "application/octet-stream" :contains "secret blueprints"')
    assert found('body :content "text" :contains "missile"')
    assert not found('body :content "text/html" :contains "missile"')
    assert found('body :content "" :contains "blueprints"')
    assert found('body :matches "*launch*"')
    plain = context(HEADER)
    script = 'require ["body", "fileinto"]; if body :contains "anvil" { fileinto "anvil"; }'
    assert mailboxes(outcome(script, plain)) == ["anvil"]


def test_date_examples_of_rfc_5260() -> None:
    script = """require ["date", "relational", "fileinto"];
if allof(header :contains "from" "coyote",
         date :value "ge" :originalzone "date" "hour" "09",
         date :value "lt" :originalzone "date" "hour" "17")
{ fileinto "urgent"; }"""
    assert mailboxes(outcome(script)) == ["urgent"]
    parts = ["year", "month", "day", "date", "julian", "hour", "minute", "second", "time", "iso8601", "std11", "zone",
             "weekday"]  # fmt: skip
    script = 'require ["date", "variables", "fileinto"];' + "".join(
        f'if date :matches :zone "+0200" "date" "{p}" "*" {{ fileinto "{p}=${{0}}"; }}' for p in parts
    )
    assert mailboxes(outcome(script)) == [
        "year=1997", "month=04", "day=01", "date=1997-04-01", "julian=50539", "hour=19", "minute=06",
        "second=31", "time=19:06:31", "iso8601=1997-04-01T19:06:31+02:00",
        "std11=Tue, 01 Apr 1997 19:06:31 +0200", "zone=+0200", "weekday=2",
    ]  # fmt: skip
    original = 'require ["date", "variables", "fileinto"]; if date :matches :originalzone "date" "zone" "*" {'
    original += ' fileinto "${0}"; }'
    assert mailboxes(outcome(original)) == ["-0800"]
    # Without :zone the date is in the zone of Context.now.
    east = context(now=datetime(2026, 11, 29, 12, 0, tzinfo=timezone(timedelta(hours=5, minutes=30))))
    local = 'require ["date", "variables", "fileinto"]; if date :matches "date" "time" "*" { fileinto "${0}"; }'
    assert mailboxes(outcome(local, east)) == ["22:36:31"]


def test_currentdate_rfc_5260_section_5() -> None:
    script = """require ["date", "relational", "vacation"];
if allof(currentdate :value "ge" "date" "2026-11-01", currentdate :value "le" "date" "2026-12-31") {
    vacation :days 7 "I'm away during November.";
}"""
    assert outcome(script).actions[0].reason == "I'm away during November."  # type: ignore[union-attr]
    late = context(now=datetime(2027, 1, 2, tzinfo=UTC))
    assert outcome(script, late) == Outcome((FileInto("INBOX"),))
    weekday = 'require ["date", "fileinto"]; if currentdate :zone "-0100" "weekday" "0" { fileinto "sunday"; }'
    assert mailboxes(outcome(weekday)) == ["sunday"]  # 2026-11-29 23:00 UTC is a Sunday, 22:00 at -0100


def test_index_rfc_5260_section_7() -> None:
    script = """require ["date", "relational", "index", "variables", "fileinto"];
if header :index 2 :matches "received" "from *.example by*" { fileinto "second=${1}"; }
if header :index 1 :last :matches "received" "from *.example by*" { fileinto "last=${1}"; }
if header :index 3 :contains "received" "" { fileinto "none"; }
if date :index 1 :zone "+0000" "received" "hour" "17" { fileinto "first-received-17"; }
if address :index 2 :all "to" "bob+box@acme.example.com" { fileinto "second-to-field"; }
"""
    assert mailboxes(outcome(script)) == ["second=b", "last=b", "first-received-17"]


def test_include_rfc_6609() -> None:
    scripts = {
        (False, "always_allow"): 'require "fileinto"; if address :is "from" "boss@example.com" { keep; stop; }',
        (True, "spam_tests"): 'require "fileinto"; if header :contains "subject" "present" { fileinto "Spam"; }',
        (False, "spam_tests"): "keep;",
        (False, "mailing_lists"): 'require ["include", "fileinto"]; fileinto "lists"; return; fileinto "never";',
    }
    script = """require ["include"];
include :personal "always_allow";
include :global "spam_tests";
include :personal "spam_tests";
include :personal "mailing_lists";
"""
    assert mailboxes(outcome(script, context(scripts=scripts))) == ["Spam", "INBOX", "lists"]
    boss = context(HEADER.replace("coyote@desert.example.org\r\nTo", "boss@example.com\r\nTo"), scripts=scripts)
    assert mailboxes(outcome(script, boss)) == ["INBOX"]  # stop in an included script stops everything


def test_include_once_optional_missing_and_recursion() -> None:
    scripts = {
        (False, "a"): 'require "fileinto"; fileinto "a";',
        (False, "loop"): 'require "include"; include "loop";',
        (False, "broken"): "fileinto ;",
    }
    ctx = context(scripts=scripts)
    script = 'require "include"; include :once "a"; include :once "a"; include "a";'
    assert mailboxes(outcome(script, ctx)) == ["a"]
    assert outcome('require "include"; include :optional "missing";', ctx) == Outcome((FileInto("INBOX"),))
    missing = outcome('require "include"; include "missing";', ctx)
    assert missing == Outcome((FileInto("INBOX"),), error='1:20: include: no personal script "missing"')
    loop = outcome('require "include"; include "loop";', ctx)
    assert loop.error == '1:20: include: "loop" includes itself'
    broken = outcome('require "include"; include "broken";', ctx)
    assert broken.error == '1:20: include: "broken" does not compile: 1:1: fileinto requires "fileinto" in require'
    many = 'require "include";' + 'include "a";' * 101
    assert outcome(many, ctx).error is not None


def test_include_global_variables_rfc_6609_section_3_3() -> None:
    scripts = {
        (False, "sub"): 'require ["include", "variables"]; global "test"; set "test" "${test}-sub"; set "local" "x";',
        (False, "reader"): 'require ["include", "variables", "fileinto"]; fileinto "${global.test}|${local}";',
    }
    script = """require ["include", "variables", "fileinto"];
global "test";
set "test" "top";
set "local" "mine";
include "sub";
include "reader";
fileinto "${test}|${local}";
"""
    assert mailboxes(outcome(script, context(scripts=scripts))) == ["top-sub|", "top-sub|mine"]


def test_editheader_rfc_5293() -> None:
    script = """require ["editheader", "fileinto", "copy"];
addheader "X-Hello" "World";
addheader :last "X-Spam-Information" "Spam score is 12.5";
fileinto :copy "edited";
if header :is "x-hello" "world" { deleteheader "Subject"; }
deleteheader :matches "X-Spam-Information" "*score*";
redirect "archive@example.net";
"""
    result = outcome(script)
    first, second = result.actions
    assert isinstance(first, FileInto) and isinstance(second, Redirect)
    assert first.header == (
        b"X-Hello: World\r\n" + HEADER[:-2].encode() + b"X-Spam-Information: Spam score is 12.5\r\n\r\n"
    )
    assert second.header == b"X-Hello: World\r\n" + HEADER.replace("Subject: I have a present for you\r\n", "").encode()
    assert outcome('require "editheader"; deleteheader "X-None";') == Outcome((FileInto("INBOX"),))
    # deleteheader's :index is editheader's own (RFC 5293 §5): no "index" in require needed.
    own_index = outcome('require "editheader"; deleteheader :index 1 :last "Subject";')
    assert own_index.actions[0].header == HEADER.replace("Subject: I have a present for you\r\n", "").encode()  # type: ignore[union-attr]


def test_editheader_index_and_encoding() -> None:
    header = "X-A: one\r\nX-B: b\r\nX-A: two\r\nX-A: three\r\n\r\n"
    script = """require ["editheader", "index"];
deleteheader :index 2 "X-A";
deleteheader :index 1 :last :contains "X-A" "nothing";
addheader :last "X-Greeting" "Grüße aus Bern";
"""
    keep = outcome(script, context(header)).actions[0]
    assert isinstance(keep, FileInto)
    assert keep.header == (
        b"X-A: one\r\nX-B: b\r\nX-A: three\r\nX-Greeting: =?utf-8?q?Gr=C3=BC=C3=9Fe_aus_Bern?=\r\n\r\n"
    )


def test_editheader_protected_fields_at_run_time() -> None:
    script = """require ["editheader", "variables"];
set "name" "received";
deleteheader "${name}";
addheader "${name}" "forged";
set "name" "Auto-Submitted";
addheader "${name}" "no";
"""
    assert outcome(script) == Outcome((FileInto("INBOX"),))


def test_duplicate_rfc_7352() -> None:
    script = """require ["duplicate", "fileinto", "mailbox"];
if duplicate { fileinto :create "Trash/Duplicate"; }
"""
    first = outcome(script)
    assert first.actions == (FileInto("INBOX"),)
    (mark,) = first.duplicates
    assert mark.seconds == 7 * 86400 and mark.key.startswith("sieve-duplicate:")
    again = outcome(script, context(seen=(mark.key,)))
    assert again == Outcome((FileInto("Trash/Duplicate", create=True),))  # seen: nothing tracked again
    last = outcome('require "duplicate"; if duplicate :last :seconds 60 { discard; }', context(seen=(mark.key,)))
    assert last == Outcome((), (DuplicateMark(mark.key, 60),))  # :last renews the record
    script = """require ["duplicate", "variables"];
if header :matches "subject" "I have *" {
    if duplicate :uniqueid "${1}" :handle "notifier" :seconds 9999999 { discard; }
}
if duplicate :header "X-Event-ID" { discard; }
"""
    result = outcome(script)
    assert result.actions == (FileInto("INBOX"),)
    assert [d.seconds for d in result.duplicates] == [30 * 86400]  # no X-Event-ID: nothing to track
    assert result.duplicates[0].key != mark.key  # a handle gets its own record
    # The value is tracked whatever its source; within one run every test gives the same answer.
    same = """require ["duplicate", "variables", "fileinto"];
if header :matches "message-id" "*" { if duplicate :uniqueid "${0}" { fileinto "dup"; } }
if duplicate :header "Message-ID" { fileinto "dup2"; }
if duplicate { fileinto "dup3"; }
if duplicate :seconds 0 { fileinto "never"; }
if duplicate :header "bad name" { fileinto "never"; }
"""
    assert outcome(same) == Outcome((FileInto("INBOX"),), (mark,))
    assert mailboxes(outcome(same, context(seen=(mark.key,)))) == ["dup", "dup2", "dup3"]


def test_environment_rfc_5183() -> None:
    script = """require ["environment", "variables", "fileinto"];
if environment :matches "name" "*" { fileinto "${0}"; }
if environment "phase" "during" { fileinto "during"; }
if environment "location" "MDA" { fileinto "mda"; }
if environment :contains "domain" "example" { fileinto "domain"; }
if environment :contains "unknown" "" { fileinto "never"; }
"""
    ctx = context(environment={"domain": "acme.example.com", "host": "mx.acme.example.com"})
    assert mailboxes(outcome(script, ctx)) == ["Kartero", "during", "mda", "domain"]


def test_duplicate_example_2_of_rfc_7352() -> None:
    script = r"""require ["duplicate", "variables", "imap4flags", "fileinto"];
if header :matches "subject" "ALERT: *" {
  if duplicate :seconds 60 :uniqueid "${1}" {
    setflag "\\seen";
  }
  fileinto "Alerts";
}"""
    alert = context(HEADER.replace("Subject: I have a present for you", "Subject: ALERT: disk full"))
    first = outcome(script, alert)
    assert first.actions == (FileInto("Alerts"),)
    (mark,) = first.duplicates
    assert mark.seconds == 60
    again = outcome(script, context(alert.header.decode(), seen=(mark.key,)))
    assert again == Outcome((FileInto("Alerts", frozenset({"\\Seen"})),))


def test_issue_12_an_included_script_is_compiled_once_for_every_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """A global script included by every user at every delivery (review: a 2,400-rule list cost 0.44 s
    of compiling per recipient and message)."""
    from kartero.sieve import interpreter

    compiled: list[str] = []
    real = interpreter.compile_script

    def counting(text: str) -> interpreter.Script:
        compiled.append(text)
        return real(text)

    monkeypatch.setattr(interpreter, "compile_script", counting)
    rules = 'require "fileinto"; if header :contains "subject" "zzz-once" { fileinto "x"; }'
    ctx = context(scripts={(True, "shared"): rules})
    for _ in range(3):
        assert outcome('require "include"; include :global "shared";', ctx) == Outcome((FileInto("INBOX"),))
    assert compiled == [rules]
