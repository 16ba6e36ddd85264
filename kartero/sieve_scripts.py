"""Sieve scripts by address, as `kartero sieve` manages them: the same rules as ManageSieve (names,
size, count, a script that does not compile is refused with its `line:column: message`), over the
store's SieveStore. `address` None means the global scripts (`include :global`, RFC 6609)."""

from __future__ import annotations

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
