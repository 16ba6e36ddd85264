"""Shared helpers of the Sieve unit tests: a message, a context, a compile-and-run."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from kartero.sieve import Context, Limits, Outcome, compile_script, run

NOW = datetime(2026, 11, 29, 23, 0, 0, tzinfo=UTC)

HEADER = (
    "Return-Path: <coyote@desert.example.org>\r\n"
    "Received: from a.example by mx.example; Tue, 1 Apr 1997 09:06:31 -0800\r\n"
    "Received: from b.example by a.example; Tue, 1 Apr 1997 08:06:31 -0800\r\n"
    "Date: Tue, 1 Apr 1997 09:06:31 -0800\r\n"
    "From: coyote@desert.example.org\r\n"
    "To: roadrunner@acme.example.com, bob+box@acme.example.com\r\n"
    "Cc: qux@example.com\r\n"
    "Subject: I have a present for you\r\n"
    "Message-ID: <one@desert.example.org>\r\n"
    "X-Priority: 2\r\n"
    "\r\n"
)
BODY = "Look, I'm sorry about the whole anvil thing, and I really\r\ndidn't mean to try and drop it on you.\r\n"


def context(
    header: str = HEADER,
    body: str = BODY,
    *,
    envelope_from: str = "coyote@desert.example.org",
    envelope_to: str = "roadrunner@acme.example.com",
    mailboxes: tuple[str, ...] = (),
    seen: tuple[str, ...] = (),
    scripts: dict[tuple[bool, str], str] | None = None,
    environment: dict[str, str] | None = None,
    now: datetime = NOW,
) -> Context:
    stored = scripts or {}
    exists: Callable[[str], bool] = lambda name: name in mailboxes  # noqa: E731
    seen_before: Callable[[str], bool] = lambda key: key in seen  # noqa: E731
    return Context(
        header=header.encode(),
        body=body.encode(),
        envelope_from=envelope_from,
        envelope_to=envelope_to,
        now=now,
        environment=environment or {},
        mailbox_exists=exists,
        duplicate_seen=seen_before,
        load_script=lambda is_global, name: stored.get((is_global, name)),
    )


def outcome(script: str, ctx: Context | None = None, limits: Limits | None = None) -> Outcome:
    return run(compile_script(script), ctx or context(), limits)


def mailboxes(result: Outcome) -> list[str]:
    from kartero.sieve import FileInto

    return [a.mailbox for a in result.actions if isinstance(a, FileInto)]
