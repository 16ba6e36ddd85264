"""Sieve scripts by address, as `kartero sieve` manages them: the same rules as ManageSieve (names,
size, count, a script that does not compile is refused with its `line:column: message`), over the
store's SieveStore. `address` None means the global scripts (`include :global`, RFC 6609)."""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass

from kartero.auth.accounts import DirectoryError, parse_address
from kartero.managesieve.connection import ManageSieveSettings
from kartero.managesieve.syntax import check_name
from kartero.sieve import SieveError, compile_script
from kartero.store.interface import AccountStore, SieveStore

# What `kartero sieve` allows: ManageSieve's defaults (server.py builds the listener with the same).
LIMITS = ManageSieveSettings()


class ScriptProblem(Exception):
    """The command cannot be done; the text is for the admin. `is_usage`: a wrong address or name
    (exit 2), else the script or the store said no (exit 1)."""

    def __init__(self, text: str, *, is_usage: bool = False) -> None:
        super().__init__(text)
        self.is_usage = is_usage


def check_script(text: str) -> str | None:
    """Why a script does not compile (`line:column: message`), or None (ManageSieve's checker too)."""
    try:
        compile_script(text)
    except SieveError as exc:
        return str(exc)
    return None


def owner(accounts: AccountStore, address: str | None) -> int | None:
    """The account id the scripts of `address` belong to (None: the globals). Raises ScriptProblem."""
    if address is None:
        return None
    try:
        account = accounts.get_account(parse_address(address))
    except DirectoryError as exc:
        raise ScriptProblem(str(exc), is_usage=True) from None
    if account is None:
        raise ScriptProblem(f"no account {address}", is_usage=True)
    return account.id


def valid_name(name: str) -> str:
    if check_name(name.encode("utf-8", "surrogateescape")) is None:
        raise ScriptProblem(f"invalid script name {name!r} (1 to 512 octets of UTF-8, no controls, NFC)",
                            is_usage=True)  # fmt: skip
    return name


def put(sieve: SieveStore, owner_id: int | None, name: str, data: bytes) -> None:
    """Check and store a script (create or replace). Raises ScriptProblem: the compile error as
    `line:column: message`, a script too big, not UTF-8, or one too many."""
    valid_name(name)
    if len(data) > LIMITS.max_script_size:
        raise ScriptProblem(f"script too big: {len(data)} octets, at most {LIMITS.max_script_size}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ScriptProblem("script is not UTF-8") from None
    problem = check_script(text)
    if problem is not None:
        raise ScriptProblem(problem)
    sieve.put_script(owner_id, name, text, LIMITS.max_scripts if owner_id is not None else 0)


# -- the vacation reply a user sets on their web page ---------------------------------------------------

VACATION_SCRIPT = "kartero-vacation"  # the script the web page writes; other scripts are the user's own
_VACATION_MARK = "# kartero-vacation "  # first line: the form's values as JSON, read back by `read_vacation`
MAX_VACATION_SUBJECT = 200
MAX_VACATION_BODY = 10_000
MAX_VACATION_DAYS = 90


@dataclass(frozen=True, slots=True)
class Vacation:
    """What the vacation form asks: the reply's subject and text, and how often one sender gets it."""

    subject: str = ""
    body: str = ""
    days: int = 7

    def problem(self) -> str | None:
        """Why the form cannot be saved, in words, or None."""
        if not self.body.strip():
            return "the reply's text is empty"
        if len(self.subject) > MAX_VACATION_SUBJECT or len(self.body) > MAX_VACATION_BODY:
            return f"the subject may have {MAX_VACATION_SUBJECT} characters, the text {MAX_VACATION_BODY}"
        if not 1 <= self.days <= MAX_VACATION_DAYS:
            return f"days must be 1 to {MAX_VACATION_DAYS}"
        if any(c in self.subject for c in "\r\n") or _has_controls(self.subject) or _has_controls(self.body):
            return "the subject is one line, and neither may hold control characters"
        return None


def vacation_script(vacation: Vacation) -> str:
    """The Sieve script (RFC 5230) for `vacation`, the values kept as JSON in its first line."""
    text = vacation.body.replace("\r\n", "\n").replace("\n", "\r\n")
    values = json.dumps({"subject": vacation.subject, "body": vacation.body, "days": vacation.days},
                        ensure_ascii=False)  # fmt: skip
    subject = f' :subject "{_quoted(vacation.subject)}"' if vacation.subject.strip() else ""
    return (f"{_VACATION_MARK}{values}\r\nrequire [\"vacation\"];\r\n"
            f"vacation :days {vacation.days}{subject} \"{_quoted(text)}\";\r\n")  # fmt: skip


def read_vacation(script: str) -> Vacation | None:
    """The form's values from a script `vacation_script` wrote (None for any other script)."""
    first, _, _ = script.partition("\r\n")
    # JSON at most doubles a text without control characters (\n, \", \\), plus the names and days.
    if not first.startswith(_VACATION_MARK) or len(first) > 2 * (MAX_VACATION_BODY + MAX_VACATION_SUBJECT) + 200:
        return None
    try:
        values = json.loads(first[len(_VACATION_MARK) :])
        return Vacation(str(values["subject"]), str(values["body"]), int(values["days"]))
    except (ValueError, KeyError, TypeError):
        return None


def _has_controls(text: str) -> bool:
    """Control characters (Cc but tab, CR and LF) or lone surrogates: never typed, refused. Format
    characters (a Persian ZWNJ, a soft hyphen, an emoji's joiner) are text and pass."""
    return any(unicodedata.category(c) in ("Cc", "Cs") and c not in "\t\r\n" for c in text)


def _quoted(text: str) -> str:
    """A Sieve quoted string's content (RFC 5228 §2.4.2): backslash and double quote escaped."""
    return text.replace("\\", "\\\\").replace('"', '\\"')
