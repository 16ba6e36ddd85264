"""The vacation reply a user sets on their web page (issue 14): the Sieve script it becomes, read back."""

from __future__ import annotations

import pytest

from kartero.sieve import compile_script
from kartero.sieve_scripts import Vacation, read_vacation, vacation_script

INJECTION = 'x";\r\nredirect "evil@attacker.test";\r\nkeep;\r\n#'


@pytest.mark.parametrize("vacation", [
    Vacation("Away", "Back on Monday.\nAsk anna@example.org meanwhile.", 3),
    Vacation("Ж" * 200, "Ж" * 10_000, 7),  # the longest, non-ASCII: read back whole
    Vacation("a\tb", "x\u200cy\u00ad😀\u200d👩", 90),  # tab and format characters are text
    Vacation('q"\\', '"\\\n"\\' * 2000, 1),  # every character Sieve and JSON escape
    Vacation(INJECTION.replace("\r\n", " "), INJECTION, 5),
])  # fmt: skip
def test_issue_14_a_vacation_is_one_vacation_action_and_reads_back(vacation: Vacation) -> None:
    assert vacation.problem() is None
    script = vacation_script(vacation)
    (command,) = compile_script(script).commands  # nothing typed becomes a command of its own
    assert command.name == "vacation" and command.tags["days"] == vacation.days
    assert command.args[0].parts == (vacation.body.replace("\r\n", "\n").replace("\n", "\r\n"),)
    assert read_vacation(script) == vacation


@pytest.mark.parametrize(("vacation", "problem"), [
    (Vacation("x", "  \n "), "the reply's text is empty"),
    (Vacation("x", "b", 0), "days must be 1 to 90"),
    (Vacation("x", "b", 91), "days must be 1 to 90"),
    (Vacation("x" * 201, "b"), "the subject may have 200 characters, the text 10000"),
    (Vacation("x", "b" * 10_001), "the subject may have 200 characters, the text 10000"),
    (Vacation("two\nlines", "b"), "the subject is one line, and neither may hold control characters"),
    (Vacation("x", "nul\x00"), "the subject is one line, and neither may hold control characters"),
    (Vacation("x", "lone \ud800"), "the subject is one line, and neither may hold control characters"),
])  # fmt: skip
def test_issue_14_a_vacation_form_is_refused_with_a_reason(vacation: Vacation, problem: str) -> None:
    assert vacation.problem() == problem


def test_issue_14_only_the_pages_own_script_reads_as_a_vacation() -> None:
    assert read_vacation('require ["vacation"];\r\nvacation "hi";\r\n') is None
    assert read_vacation('# kartero-vacation {"subject": 1}\r\nkeep;\r\n') is None
    assert read_vacation("# kartero-vacation " + "[" * 30_000 + "\r\nkeep;\r\n") is None
