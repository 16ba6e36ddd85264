"""Sieve (RFC 5228 and extensions): compile a script, run it on a message for one account.

`compile_script(text)` raises `SieveError` (`line:column: message`); `run(script, context)` returns an
`Outcome`. `EXTENSIONS` is what the SIEVE capability of ManageSieve lists.
"""

from __future__ import annotations

from kartero.sieve.model import (
    Action,
    Context,
    DuplicateMark,
    FileInto,
    Limits,
    Outcome,
    Redirect,
    Reject,
    SieveError,
    Vacation,
)

__all__ = ["EXTENSIONS", "Action", "Context", "DuplicateMark", "FileInto", "Limits", "Outcome", "Redirect",
           "Reject", "Script", "SieveError", "Vacation", "compile_script", "run"]  # fmt: skip

EXTENSIONS: tuple[str, ...] = ()


class Script:
    """A compiled script (placeholder until the interpreter lands)."""


def compile_script(text: str) -> Script:
    raise NotImplementedError("the Sieve interpreter is being written")


def run(script: Script, context: Context, limits: Limits | None = None) -> Outcome:
    raise NotImplementedError("the Sieve interpreter is being written")
