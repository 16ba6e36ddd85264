"""Policy of the submission listeners (RFC 6409): authenticated users send to anyone, as themselves.

- The envelope sender must be the user's address or one that reaches the user (an alias of theirs,
  their plus-addresses; the catch-all of a domain makes its owner the owner of the whole domain);
  the null sender is not for users. Else `553 5.7.1`.
- The author fields are read strictly (policy/authorship.py) and must name only the user: exactly one
  From: and at most one Sender:, each a valid mailbox list (Sender: and Resent-Sender: one mailbox)
  whose every address belongs to the user in the same way, with no display name or comment showing
  any other address (`"boss@example.org" <me@example.org>` reads as the boss in many clients);
  Resent-From: and Resent-Sender: likewise. Not the user's: `553 5.7.1`. Malformed (a header line
  that is not `name: value`, a name with control bytes, an unparsable or empty From:, group syntax,
  a missing or repeated From:) and NUL anywhere in the message: `554 5.6.0`.
- Recipients in a local domain must exist (`550 5.1.1`); any other recipient is queued for delivery.
- Intake (kartero/intake.py) then adds Date: and Message-ID: when missing (RFC 6409 §8.2, §8.3) and
  signs a message whose From: domain has DKIM keys.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from kartero.auth.accounts import DirectoryCache, DirectoryError, canonical_address
from kartero.dns.names import DomainError, canonical_domain
from kartero.log import kv
from kartero.mail import replies
from kartero.mail.address import Address, AddressError, Path, parse_mailbox
from kartero.mail.replies import Reply
from kartero.mime.headers import find_body_start
from kartero.policy.authorship import (
    MAX_ADDRESS_CHARS,
    HeaderError,
    MailboxListError,
    find_addresses,
    parse_mailbox_list,
    split_fields,
)
from kartero.policy.decisions import Accept, AcceptMessage, Decision, MessageDecision, RcptContext, Reject
from kartero.policy.inbound import InboundPolicy
from kartero.policy.limits import SlidingWindow
from kartero.policy.quota import QuotaBook
from kartero.smtp.events import Envelope
from kartero.store.interface import AbuseKind, Content

log = logging.getLogger("kartero.policy")

# The fields that say who wrote or sent a message (RFC 5322 §3.6.2, §3.6.6), as the client names them.
AUTHOR_FIELDS = {"from": "From:", "sender": "Sender:", "resent-from": "Resent-From:",
                 "resent-sender": "Resent-Sender:"}  # fmt: skip
SINGLE_MAILBOX_FIELDS = frozenset({"sender", "resent-sender"})


class SubmissionPolicy:
    def __init__(self, directory: DirectoryCache, primary_domain: str, messages_per_hour: int = 0) -> None:
        self.messages_per_hour = messages_per_hour
        self.sent = SlidingWindow(3600.0)  # messages per user in the last hour (the cluster's: shared.py)
        # Tells the cluster of each message sent (policy/shared.py); None: one process counts alone.
        self.publish: Callable[[AbuseKind, tuple[str, ...]], None] | None = None
        self.directory = directory
        self.primary_domain = primary_domain
        self._local = InboundPolicy(directory, primary_domain)

    @property
    def quota(self) -> QuotaBook | None:
        """Local recipients' quotas (policy/quota.py), as the MX checks them."""
        return self._local.quota

    @quota.setter
    def quota(self, book: QuotaBook | None) -> None:
        self._local.quota = book

    def owns(self, user: str, address: str) -> bool:
        """Whether mail for `address` (canonical) reaches the account `user` (canonical)."""
        snapshot = self.directory.current()
        account = snapshot.accounts.get(user)
        if account is None:
            return False
        if address == user:
            return True
        domain = address.rpartition("@")[2]
        if domain not in self.directory.domains:
            return False
        return account in snapshot.resolve(address).account_ids

    async def check_mail(self, path: Path, user: str | None) -> Decision:
        if user is None:
            return Reject(replies.AUTH_REQUIRED, "auth")
        if self.messages_per_hour and self.sent.count(user) >= self.messages_per_hour:
            minutes = max(1, round(self.sent.retry_after(user) / 60))
            log.info("%s", kv(event="policy.sending_limited", user=user, limit=self.messages_per_hour))
            return Reject(replies.SENDING_LIMITED.with_text(
                f"Sending limit of {self.messages_per_hour} messages an hour reached, try again in {minutes} minutes"
            ), "rate_limit")  # fmt: skip
        if path.mailbox is None:
            return Reject(replies.SENDER_NOT_OWNED, "auth")
        try:
            address = canonical_address(path.mailbox)
        except DirectoryError:
            return Reject(replies.SENDER_NOT_OWNED, "auth")
        return Accept(replies.SENDER_OK) if self.owns(user, address) else Reject(replies.SENDER_NOT_OWNED, "auth")

    async def check_rcpt(self, path: Path, context: RcptContext | None = None) -> Decision:
        mailbox = path.mailbox
        if mailbox is None:
            return Reject(replies.BAD_RECIPIENT_SYNTAX)
        if not mailbox.domain:
            mailbox = Address(mailbox.local_part, self.primary_domain)
        if mailbox.is_literal:
            return Reject(replies.BAD_RECIPIENT_SYNTAX.with_text("Address literals are not routed"))
        try:
            domain = canonical_domain(mailbox.domain)
        except DomainError:
            return Reject(replies.BAD_RECIPIENT_SYNTAX)
        if domain in self.directory.domains:
            # No greylisting or DNSBL for our own users; the quota check as on the MX.
            return await self._local.check_local(path, context.size if context is not None else None)
        # Remote: kept as written (the local part is the remote domain's business), domain canonical.
        return Accept(replies.RECIPIENT_OK, address=f"{mailbox.quoted_local_part()}@{domain}", is_remote=True)

    async def check_message(self, envelope: Envelope, data: bytes | Content, client_ip: str = "") -> MessageDecision:
        """The author fields (see the module docstring) and the sending limit; intake then adds Date: and
        Message-ID: when missing and signs."""
        user = envelope.authenticated_as
        if user is None:
            return Reject(replies.AUTH_REQUIRED, "auth")
        # NUL in the message is refused by the SMTP core on submission listeners (ServerSettings.refuse_nul).
        head = data.head if isinstance(data, Content) else data
        header_end, _ = find_body_start(head)
        try:
            fields = split_fields(head[:header_end])
        except HeaderError as exc:
            return self._refused(user, replies.HEADER_MALFORMED.with_text("Message refused: malformed header field"),
                                 str(exc))  # fmt: skip
        checked = self._check_authors(user, fields)
        if isinstance(checked, Reject):
            return checked
        self.sent.record(user)
        if self.publish is not None and self.messages_per_hour:
            self.publish(AbuseKind.SENT, (user,))
        return AcceptMessage(data)

    def _check_authors(self, user: str, fields: list[tuple[str, bytes]]) -> Reject | None:
        """The refusal, if any (see the module docstring)."""
        count = {name: 0 for name in AUTHOR_FIELDS}
        for name, _ in fields:
            if name in count:
                count[name] += 1
        if count["from"] != 1 or count["sender"] > 1:
            problem = "no From: field" if not count["from"] else "more than one From: or Sender: field"
            return self._refused(user, replies.HEADER_MALFORMED.with_text(
                "Message refused: one From: field and at most one Sender: field are required (RFC 5322 3.6)"
            ), problem)  # fmt: skip
        for name, value in fields:
            label = AUTHOR_FIELDS.get(name)
            if label is None:
                continue
            try:
                parsed = parse_mailbox_list(value)
            except MailboxListError as exc:
                return self._refused(user, replies.HEADER_MALFORMED.with_text(
                    f"Message refused: {label} is not a valid mailbox list"), f"{label} {exc}")  # fmt: skip
            if name in SINGLE_MAILBOX_FIELDS and len(parsed.mailboxes) != 1:
                return self._refused(user, replies.HEADER_MALFORMED.with_text(
                    f"Message refused: {label} must hold one mailbox"), f"{label} holds several")  # fmt: skip
            for mailbox in parsed.mailboxes:
                address = self._owned_mailbox(user, mailbox.local_part, mailbox.domain)
                if address is None:
                    return self._refused(user, replies.FROM_NOT_OWNED.with_text(
                        f"{label} header address not owned by the authenticated user"), f"{label} address")  # fmt: skip
            shown = [mailbox.display_name for mailbox in parsed.mailboxes] + list(parsed.comments)
            for text in shown:
                for candidate in find_addresses(text):
                    if not self._owns_shown(user, candidate):
                        return self._refused(user, replies.FROM_NOT_OWNED.with_text(
                            f"{label} header display name shows an address not owned by the authenticated user"
                        ), f"{label} display name or comment shows another address")  # fmt: skip
        return None

    def _owned_mailbox(self, user: str, local_part: str, domain: str) -> str | None:
        """The canonical address if it belongs to `user`, else None (also for a domain literal)."""
        try:
            address = canonical_address(Address(local_part, domain))
        except (AddressError, DirectoryError):
            return None
        return address if self.owns(user, address) else None

    def _owns_shown(self, user: str, text: str) -> bool:
        """Whether an address shown in a display name or comment belongs to `user` (False if it is not
        a valid address at all: a client shows it anyway)."""
        if len(text) > MAX_ADDRESS_CHARS:
            return False
        try:
            mailbox = parse_mailbox(text)
        except AddressError:
            return False
        return self._owned_mailbox(user, mailbox.local_part, mailbox.domain) is not None

    @staticmethod
    def _refused(user: str, reply: Reply, detail: str) -> Reject:
        log.info("%s", kv(event="policy.header_refused", user=user, reply=reply.code, detail=detail))
        return Reject(reply)

