"""`kartero sendmail`: the sendmail(8) interface that cron, scripts and web applications expect.

What it does with its input follows Postfix's and Sendmail's command: a line holding only "." ends the
message unless -i is given; -t takes the recipients from To:, Cc: and Bcc: (and removes Bcc:); addresses
without a domain get the primary domain. Local recipients are checked at once (a typo fails the command,
exit 67, rather than bouncing later); the message then goes into the maildrop for the server.
"""

from __future__ import annotations

from collections.abc import Iterable
from email.utils import formataddr, getaddresses

from kartero.auth.accounts import DirectoryError, DirectorySnapshot, parse_address
from kartero.dns.names import DomainError, canonical_domain
from kartero.mail.address import AddressError, parse_mailbox
from kartero.mime.headers import find_body_start, parse_header_block, remove_fields

# sysexits.h, the exit codes callers of sendmail(8) understand.
EX_USAGE = 64
EX_DATAERR = 65
EX_NOUSER = 67
EX_TEMPFAIL = 75


class SendmailError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def read_message(raw: bytes, *, ignore_dots: bool) -> bytes:
    """The message from stdin: CRLF line endings; without -i, a line of one "." ends it."""
    data = raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    if not ignore_dots:
        if data.startswith(b".\n") or data == b".":
            data = b""
        else:
            end = data.find(b"\n.\n")
            if end >= 0:
                data = data[: end + 1]
            elif data.endswith(b"\n."):
                data = data[:-1]
    if data and not data.endswith(b"\n"):
        data += b"\n"
    return data.replace(b"\n", b"\r\n")


def header_recipients(data: bytes) -> list[str]:
    """The addresses in To:, Cc: and Bcc: (for -t), in order; groups contribute their members."""
    header_end, _ = find_body_start(data)
    header = parse_header_block(data[:header_end])
    values = [v.decode("utf-8", "replace") for name in ("to", "cc", "bcc") for v in header.get_all(name)]
    return [address for _, address in getaddresses(values) if address]


def strip_bcc(data: bytes) -> bytes:
    """The message without its Bcc: fields (continuation lines included)."""
    return remove_fields(data, lambda name, _value: name == b"bcc")


def add_from(data: bytes, full_name: str, sender: str) -> bytes:
    """-F: a From: with the full name, for a message that has none."""
    header_end, _ = find_body_start(data)
    if parse_header_block(data[:header_end]).get("from") is not None:
        return data
    return f"From: {formataddr((full_name, sender))}\r\n".encode() + data


def qualify(address: str, primary_domain: str) -> str:
    """`bob` -> `bob@primary`; the domain canonical, the local part as written (a remote domain's
    business). Raises SendmailError (exit 64) when it is not an address."""
    text = address.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    if "@" not in text:
        text = f"{text}@{primary_domain}"
    try:
        return normalize(text)
    except (AddressError, DomainError) as exc:
        raise SendmailError(f"not a valid address: {address!r} ({exc})", EX_USAGE) from None


def normalize(text: str) -> str:
    """`Local@Example.ORG` -> `Local@example.org`; raises AddressError or DomainError."""
    mailbox = parse_mailbox(text)
    return f"{mailbox.quoted_local_part()}@{canonical_domain(mailbox.domain)}"


def check_local(recipients: Iterable[str], snapshot: DirectorySnapshot) -> None:
    """Refuse recipients in a local domain that reach nobody (exit 67)."""
    for address in recipients:
        if address.rpartition("@")[2] not in snapshot.domains:
            continue
        try:
            found = snapshot.resolve(parse_address(address)).account_ids
        except DirectoryError:
            found = ()
        if not found:
            raise SendmailError(f"{address}: no such local user or alias", EX_NOUSER)


def default_sender(login: str, primary_domain: str, snapshot: DirectorySnapshot) -> str:
    """`login@primary` when that reaches an account, else `postmaster@primary` (someone reads it)."""
    try:
        candidate = parse_address(f"{login}@{primary_domain}")
    except DirectoryError:
        candidate = ""
    if candidate and snapshot.resolve(candidate).account_ids:
        return candidate
    return f"postmaster@{primary_domain}"
