"""Running scripts: RFC 5228's semantics (implicit keep, stop, duplicates, runtime errors) and the
examples of the RFCs of each extension, on one message (tests/unit/sieve_helpers.py)."""

from __future__ import annotations

import time

from kartero.sieve import FileInto, Limits, Outcome, Redirect, Reject, Vacation
from tests.unit.sieve_helpers import HEADER, context, mailboxes, outcome

KEEP = Outcome((FileInto("INBOX"),))


def test_implicit_keep_rfc_5228_section_2_10_2() -> None:
    assert outcome("") == KEEP
    assert outcome('require "fileinto"; if false { fileinto "x"; }') == KEEP
    assert outcome("discard;") == Outcome(())
    assert outcome('require "fileinto"; fileinto "x";') == Outcome((FileInto("x"),))
    assert outcome('redirect "a@example.net";') == Outcome((Redirect("a@example.net"),))
    assert outcome('require "copy"; redirect :copy "a@example.net";') == Outcome(
        (Redirect("a@example.net"), FileInto("INBOX"))
    )
    assert outcome('require ["copy", "fileinto"]; fileinto :copy "x";') == Outcome((FileInto("x"), FileInto("INBOX")))


def test_keep_and_fileinto_of_one_mailbox_store_once_rfc_5228_section_2_10_3() -> None:
    assert outcome('require "fileinto"; keep; fileinto "inbox"; keep; fileinto "a"; fileinto "a";') == Outcome(
        (FileInto("INBOX"), FileInto("a"))
    )
    assert outcome('redirect "a@example.net"; redirect "A@example.net";') == Outcome((Redirect("a@example.net"),))


def test_stop_ends_the_script() -> None:
    assert outcome('require "fileinto"; fileinto "a"; stop; fileinto "b";') == Outcome((FileInto("a"),))
    assert outcome("stop; discard;") == KEEP


def test_example_of_rfc_5228_section_9() -> None:
    script = """
# Example Sieve Filter
require ["fileinto"];
if header :is "Sender" "owner-ietf-mta-filters@imc.org"
        {
        fileinto "filter";  # move to "filter" mailbox
        }
elsif address :DOMAIN :is ["From", "To"] "example.com"
        {
        keep;               # keep in "In" mailbox
        }
elsif anyof (NOT address :all :contains
               ["To", "Cc", "Bcc"] "me@example.com",
             header :matches "subject"
               ["*make*money*fast*", "*university*dipl*mas*"])
        {
        fileinto "spam";   # move to "spam" mailbox
        }
else
        {
        fileinto "personal";
        }
"""
    assert mailboxes(outcome(script)) == ["spam"]
    to_me = HEADER.replace("Cc: qux@example.com", "Cc: Me <ME@example.com>")
    assert mailboxes(outcome(script, context(to_me))) == ["personal"]
    from_list = "Sender: owner-ietf-mta-filters@imc.org\r\n" + HEADER
    assert mailboxes(outcome(script, context(from_list))) == ["filter"]
    company = HEADER.replace("From: coyote@desert.example.org", "From: boss@Example.COM")
    assert mailboxes(outcome(script, context(company))) == ["INBOX"]
    spam = to_me.replace("I have a present for you", "MAKE MONEY FAST")
    assert mailboxes(outcome(script, context(spam))) == ["spam"]


def test_header_exists_size_and_the_comparators() -> None:
    run = lambda test: mailboxes(outcome(f'require "fileinto"; if {test} {{ fileinto "yes"; }}'))  # noqa: E731
    assert run('header :is "subject" "I HAVE A PRESENT FOR YOU"') == ["yes"]
    assert run('header :is :comparator "i;octet" "subject" "I HAVE A PRESENT FOR YOU"') == ["INBOX"]
    assert run('header :contains "to" "BOB+box"') == ["yes"]
    assert run('header :matches "subject" "I have ? present*"') == ["yes"]
    assert run('exists ["From", "X-Priority"]') == ["yes"]
    assert run('exists ["From", "X-Nothing"]') == ["INBOX"]
    assert run("size :over 100") == ["yes"]
    assert run("size :under 100") == ["INBOX"]
    assert run('header :is "x-missing" ""') == ["INBOX"]  # no such field: nothing to compare


def test_header_values_are_unfolded_and_rfc_2047_decoded() -> None:
    header = "Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n aus Bern\r\n\r\n"
    result = outcome(
        'require "fileinto"; if header :is "subject" "Grüße aus Bern" { fileinto "yes"; }', context(header)
    )
    assert mailboxes(result) == ["yes"]


def test_address_parts_and_subaddress_rfc_5233() -> None:
    script = """require ["envelope", "subaddress", "fileinto"];
if address :user "to" "bob" { fileinto "user"; }
if address :detail "to" "box" { fileinto "detail"; }
if address :localpart "from" "coyote" { fileinto "local"; }
if address :domain "to" "ACME.example.com" { fileinto "domain"; }
if envelope :user "to" "roadrunner" { fileinto "env"; }
if envelope :detail "to" "" { fileinto "never"; }
"""
    assert mailboxes(outcome(script)) == ["user", "detail", "local", "domain", "env"]
    # RFC 5233 §4: "+" with nothing after it is an empty detail, which "" matches.
    ctx = context(envelope_to="ken+@example.org")
    assert "never" in mailboxes(outcome(script, ctx))


def test_envelope_null_sender_and_auth() -> None:
    script = 'require ["envelope", "fileinto"]; if envelope :all :is "from" "" { fileinto "bounce"; }'
    assert mailboxes(outcome(script, context(envelope_from=""))) == ["bounce"]
    assert mailboxes(outcome(script)) == ["INBOX"]


def test_address_groups_and_display_names() -> None:
    header = "To: undisclosed-recipients:;\r\nCc: Team: A <a@x.example>, b@y.example;\r\n\r\n"
    script = 'require "fileinto"; if address :is "cc" ["a@x.example"] { fileinto "a"; }' \
        ' if address :is "to" "undisclosed-recipients" { fileinto "group"; }'  # fmt: skip
    assert mailboxes(outcome(script, context(header))) == ["a"]
    # RFC 5228 §2.7.4: an address without a domain is not valid: :localpart and :domain never match it.
    broken = "To: nodomain\r\n\r\n"
    script = 'require "fileinto"; if address :localpart "to" "nodomain" { fileinto "local"; }'
    assert mailboxes(outcome(script, context(broken))) == ["INBOX"]
    assert mailboxes(outcome(script.replace(":localpart", ":all"), context(broken))) == ["local"]


def test_relational_examples_of_rfc_5231_section_6() -> None:
    header = (
        "Received: ...\r\nReceived: ...\r\nSubject: example\r\n"
        "To: foo@example.com, baz@example.com\r\nCC: qux@example.com\r\n\r\n"
    )
    ctx = context(header)

    def holds(test: str) -> bool:
        script = f'require ["relational", "comparator-i;ascii-numeric", "fileinto"]; if {test} {{ fileinto "t"; }}'
        return mailboxes(outcome(script, ctx)) == ["t"]

    numeric = ':comparator "i;ascii-numeric"'
    assert holds(f'address :count "ge" {numeric} ["to", "cc"] ["3"]')
    assert not holds(f'anyof(address :count "ge" {numeric} ["to"] ["3"], address :count "ge" {numeric} ["cc"] ["3"])')
    assert not holds(f'header :count "ge" {numeric} ["received"] ["3"]')
    assert holds(f'header :count "ge" {numeric} ["received", "subject"] ["3"]')
    assert not holds(f'header :count "ge" {numeric} ["to", "cc"] ["3"]')
    assert holds(f'header :value "lt" {numeric} "x-none" "3"') is False
    assert holds('header :value "gt" "subject" "a"')
    assert holds('header :value "ne" "subject" "other"')
    priority = context(HEADER)
    script = f'require ["relational", "comparator-i;ascii-numeric", "fileinto"]; ' \
        f'if header :value "lt" {numeric} "x-priority" "3" {{ fileinto "urgent"; }}'  # fmt: skip
    assert mailboxes(outcome(script, priority)) == ["urgent"]
    # i;ascii-numeric: a value without leading digits is positive infinity.
    script = f'require ["relational", "comparator-i;ascii-numeric", "fileinto"]; ' \
        f'if header :value "gt" {numeric} "subject" "99999" {{ fileinto "inf"; }}'  # fmt: skip
    assert mailboxes(outcome(script, ctx)) == ["inf"]


def test_variables_examples_of_rfc_5229() -> None:
    script = r"""require ["variables", "fileinto"];
set "honorific"  "Mr";
set "first_name" "Wile";
set "last_name"  "Coyote";
set "vacation" text:
Dear ${HONORIFIC} ${last_name},
I'm out, please leave a message after the meep.
.
;
set "a" "juMBlEd lETteRS";
set :length "b" "${a}";
fileinto "${b}";
set :lower "b" "${a}";
fileinto "${b}";
set :upperfirst "b" "${a}";
fileinto "${b}";
set :upperfirst :lower "b" "${a}";
fileinto "${b}";
set :quotewildcard "b" "Rock*";
fileinto "${b}";
fileinto "${vacation}";
fileinto "${unknown}x ${1} $${a} ${ a} ${a";
"""
    assert mailboxes(outcome(script)) == [
        "15", "jumbled letters", "JuMBlEd lETteRS", "Jumbled letters", "Rock\\*",
        "Dear Mr Coyote,\r\nI'm out, please leave a message after the meep.\r\n",
        "x  $juMBlEd lETteRS ${ a} ${a",
    ]  # fmt: skip


def test_match_variables_rfc_5229_section_3_2() -> None:
    header = (
        "List-ID: <acme-users.lists.example.org>\r\nSubject: [acme-users] [fwd] version 1.0 is out\r\n"
        "To: coyote@ACME.Example.COM\r\n\r\n"
    )
    script = """require ["fileinto", "variables"];
if header :matches "List-ID" "*<*@*" { fileinto "INBOX.lists.${2}"; }
if header :matches "Subject" "[*] *" { fileinto "INBOX.lists.${1}"; fileinto "rest.${2}"; }
if address :matches ["To", "Cc"] ["coyote@**.com", "wile@**.com"] { fileinto "INBOX.business.${2}.${1}.${0}"; }
else { fileinto "unreached ${0}"; }
"""
    # This List-ID has no "@", so the first test fails.
    assert mailboxes(outcome(script, context(header))) == [
        "INBOX.lists.acme-users",
        "rest.[fwd] version 1.0 is out",
        "INBOX.business.ACME.Example..coyote@ACME.Example.COM",
    ]
    # The ${state} example of §5.
    script = """require "variables";
set "state" "${state} pending";
if string :matches " ${state} " "* pending *" { discard; }
"""
    assert outcome(script) == Outcome(())


def test_string_test_counts_non_empty_strings_rfc_5229_section_5() -> None:
    script = """require ["variables", "relational", "fileinto"];
set "a" ""; set "b" "x";
if string :count "eq" ["${a}", "${b}", "y"] "2" { fileinto "two"; }
"""
    assert mailboxes(outcome(script)) == ["two"]


def test_imap4flags_rfc_5232() -> None:
    script = r"""require ["imap4flags", "fileinto", "variables"];
setflag "\\seen \\FLAGGED";
addflag ["$Label1", "\\Seen"];
removeflag "\\Flagged";
fileinto "a";
fileinto :flags "\\Answered junk bad(flag \\Bogus" "b";
addflag "MyFlags" "Big";
addflag "MyFlags" "\\Flagged";
if hasflag :contains "MyFlags" "Big" { fileinto :flags "${MyFlags}" "c"; }
if hasflag :is "\\seen" { keep; }
if hasflag :is "\\Deleted \\Seen" { fileinto "d"; }
"""
    result = outcome(script)
    assert result.actions == (
        FileInto("a", frozenset({"\\Seen", "$Label1"})),
        FileInto("b", frozenset({"\\Answered", "junk"})),
        FileInto("c", frozenset({"Big", "\\Flagged"})),
        FileInto("INBOX", frozenset({"\\Seen", "$Label1"})),
        FileInto("d", frozenset({"\\Seen", "$Label1"})),
    )
    # Implicit keep takes the internal variable's flags at the end (RFC 5232 §3).
    assert outcome('require "imap4flags"; addflag "\\\\Seen";') == Outcome((FileInto("INBOX", frozenset({"\\Seen"})),))


def test_reject_and_ereject_rfc_5429() -> None:
    script = """require ["reject"];
if header :contains "from" "coyote@desert.example.org" {
    reject text:
I am not taking mail from you, and I don't
want your birdseed, either!
.
    ;
}"""
    reason = "I am not taking mail from you, and I don't\r\nwant your birdseed, either!\r\n"
    assert outcome(script) == Outcome((Reject(reason),))
    assert outcome('require "ereject"; ereject "spam";') == Outcome((Reject("spam", extended=True),))


def test_reject_conflicts_are_runtime_errors_rfc_5429_section_2_4() -> None:
    for script in (
        'require ["reject", "fileinto"]; fileinto "a"; reject "no";',
        'require ["reject"]; reject "no"; keep;',
        'require ["reject"]; redirect "a@example.net"; reject "no";',
        'require ["reject", "vacation"]; vacation "away"; reject "no";',
        'require ["reject", "ereject"]; reject "no"; ereject "no";',
    ):
        result = outcome(script)
        assert result.actions == (FileInto("INBOX"),)
        assert result.error is not None and "reject" in result.error
    assert outcome('require "reject"; reject "no"; discard;') == Outcome((Reject("no"),))


def test_vacation_rfc_5230_and_seconds_rfc_6131() -> None:
    script = """require "vacation";
if header :contains "subject" "cyrus" {
    vacation "I'm out -- send mail to cyrus-bugs";
} else {
    vacation "I'm out -- call me at +1 304 555 0123";
}"""
    (vacation, keep) = outcome(script).actions
    assert keep == FileInto("INBOX")
    assert isinstance(vacation, Vacation)
    assert (vacation.reason, vacation.seconds, vacation.subject, vacation.mime) == (
        "I'm out -- call me at +1 304 555 0123", 7 * 86400, None, False,
    )  # fmt: skip
    other = outcome(script, context(HEADER.replace("a present", "cyrus"))).actions[0]
    assert isinstance(other, Vacation) and other.handle != vacation.handle  # §4.2: a handle per reason
    script = """require "vacation";
vacation :days 23 :addresses ["tjs@example.edu", "ts4z@landru.example.edu"] :subject "Away"
  :from "Tim <tjs@example.edu>" :handle "h1" :mime "I'm away until October 19.";"""
    assert outcome(script).actions[0] == Vacation(
        "I'm away until October 19.", "h1", 23 * 86400, "Away", "Tim <tjs@example.edu>",
        ("tjs@example.edu", "ts4z@landru.example.edu"), True,
    )  # fmt: skip
    periods = []
    for tag in (":days 0", ":days 365", ":seconds 0", ":seconds 1800", ":seconds 7200"):
        action = outcome(f'require "vacation-seconds"; vacation {tag} "x";').actions[0]
        assert isinstance(action, Vacation)
        periods.append(action.seconds)
    assert periods == [86400, 30 * 86400, 0, 3600, 7200]
    twice = outcome('require "vacation"; vacation "a"; vacation "b";')
    assert twice.actions == (FileInto("INBOX"),) and twice.error is not None


def test_runtime_error_gives_keep_with_the_error() -> None:
    script = 'require "variables"; set "to" "not an address"; redirect "${to}";'
    assert outcome(script) == Outcome(
        (FileInto("INBOX"),), error='1:49: redirect: "not an address" is not a valid address'
    )
    script = 'require ["fileinto", "variables"]; fileinto "a"; set "x" ""; fileinto "${x}";'
    assert outcome(script) == Outcome((FileInto("INBOX"),), error="1:62: fileinto: the mailbox name is empty")


def test_limits_are_runtime_errors() -> None:
    redirects = "".join(f'redirect "u{i}@example.net";' for i in range(6))
    assert outcome(redirects).error == "1:131: more than 5 redirects"
    assert outcome(redirects.replace("u5", "u4")).error is None  # the same address twice counts once
    actions = 'require "fileinto";' + "".join(f'fileinto "m{i}";' for i in range(101))
    assert outcome(actions).error == "1:1510: more than 100 actions"
    strings = 'require "variables"; set "a" "0123456789";' + 'set "a" "${a}${a}";' * 20
    assert outcome(strings).error == "1:271: string longer than 65536 characters"
    variables = 'require "variables";' + "".join(f'set "v{i}" "";' for i in range(257))
    assert outcome(variables).error is not None and "more than 256 variables" in outcome(variables).error  # type: ignore[operator]
    assert outcome("keep;" * 20, limits=Limits(max_steps=10)).error == "1:51: more than 10 steps"
    edits = 'require "editheader";' + 'addheader "X-A" "b";' * 101
    assert outcome(edits).error == "1:2022: more than 100 header edits"


def test_mailbox_rfc_5490() -> None:
    script = """require ["fileinto", "mailbox"];
if mailboxexists ["Partners", "Lists"] { fileinto "Partners"; } else { fileinto :create "Partners"; }"""
    assert outcome(script).actions == (FileInto("Partners", create=True),)
    assert outcome(script, context(mailboxes=("Partners", "Lists"))).actions == (FileInto("Partners"),)


def test_subaddress_example_of_rfc_5233_section_5() -> None:
    script = """require ["envelope", "subaddress", "fileinto"];
if envelope :user "to" "postmaster" {
    fileinto "inbox.postmaster";
    stop;
}
if envelope :detail "to" "mta-filters" {
    fileinto "inbox.ietf-mta-filters";
}
if envelope :detail "to" "foo" {
    redirect "ken@example.net";
}
"""
    assert mailboxes(outcome(script, context(envelope_to="postmaster+x@example.com"))) == ["inbox.postmaster"]
    assert mailboxes(outcome(script, context(envelope_to="ken+mta-filters@example.com"))) == ["inbox.ietf-mta-filters"]
    assert outcome(script, context(envelope_to="ken+foo@example.com")) == Outcome((Redirect("ken@example.net"),))
    assert outcome(script, context(envelope_to="ken@example.com")) == KEEP


def test_imap4flags_examples_of_rfc_5232_section_7() -> None:
    script = r"""require ["imap4flags", "fileinto", "variables"];
if size :over 500 {
    setflag "\\Deleted";
}
if header :contains "from" "coyote@desert.example.org" {
    setflag "flagvar" "\\Flagged";
    fileinto :flags "${flagvar}" "INBOX.From Boss";
}
"""
    assert outcome(script).actions == (FileInto("INBOX.From Boss", frozenset({"\\Flagged"})),)
    assert outcome(script.replace("500", "50")).actions == (FileInto("INBOX.From Boss", frozenset({"\\Flagged"})),)
    big = outcome(script.replace("500", "50").replace("coyote@", "nobody@"))
    assert big.actions == (FileInto("INBOX", frozenset({"\\Deleted"})),)


def test_addheader_values_are_bounded() -> None:
    script = 'require ["editheader", "variables"]; set "v" "' + "x" * 8193 + '"; addheader "X-A" "${v}";'
    assert outcome(script).error == "1:8243: addheader: value longer than 8192 characters"


def test_issue_12_copying_big_strings_is_charged() -> None:
    script = 'require "variables"; set "a" "' + "x" * 65_000 + '";' + 'set "b" "${a}";' * 9_990
    started = time.process_time()
    result = outcome(script)
    assert time.process_time() - started < 5
    assert result.error == "more than 1000000 steps of matching and copying strings"


def test_issue_12_keep_is_told_from_fileinto_inbox() -> None:
    """Delivery stores a keep where the message would have gone without a script (Junk for spam), an
    explicit fileinto "INBOX" in INBOX: the actions say which."""
    (implicit,) = outcome("").actions
    (explicit_keep,) = outcome("keep;").actions
    (into,) = outcome('require "fileinto"; fileinto "inbox";').actions
    (both,) = outcome('require "fileinto"; keep; fileinto "INBOX";').actions
    failure = outcome('require "variables"; set "a" "not an address"; redirect "${a}";')
    assert failure.error is not None
    (failed,) = failure.actions
    assert isinstance(implicit, FileInto) and implicit.keep
    assert isinstance(explicit_keep, FileInto) and explicit_keep.keep
    assert isinstance(into, FileInto) and not into.keep and into.mailbox == "INBOX"
    assert isinstance(both, FileInto) and not both.keep
    assert isinstance(failed, FileInto) and failed.keep
