"""Sieve (RFC 5228 and extensions): compile a script, run it on a message for one account.

`compile_script(text)` raises `SieveError` (`line:column: message`) and nothing else, whatever the text;
`run(script, context)` returns an `Outcome` and raises only what a `Context` callback raises (their I/O
failures are the caller's to handle): a runtime error or a limit (`Limits`) reached gives keep in INBOX
with the error (RFC 5228 §2.10.6). `EXTENSIONS` is what the SIEVE capability of ManageSieve lists.

A sans-I/O core: it imports only the stdlib, `kartero.mime` and `kartero.mail`; no sockets, files, asyncio
or clock (the time of a run is `Context.now`). Scripts and messages are both hostile input: compiling and
running are linear in their sizes and bounded (see grammar.py, match.py, regex.py and Limits).
"""

from __future__ import annotations

from kartero.sieve.compiler import EXTENSIONS, Script, compile_script
from kartero.sieve.interpreter import run_script
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



def run(script: Script, context: Context, limits: Limits | None = None) -> Outcome:
    """Run a compiled script on one message for one account. Never raises: a runtime error (RFC 5228
    §2.10.6) gives `Outcome((FileInto("INBOX", keep=True),), error=...)`."""
    return run_script(script, context, limits or Limits())
