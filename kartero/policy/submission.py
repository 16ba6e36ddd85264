"""Policy of the submission listeners (RFC 6409): authenticated users send to anyone, as themselves.

- The envelope sender must be the user's address or one that reaches the user (an alias of theirs,
  their plus-addresses; the catch-all of a domain makes its owner the owner of the whole domain);
  the null sender is not for users. Else `553 5.7.1`.
- Every From: address of the message must belong to the user in the same way. Else `553 5.7.1`.
- Recipients in a local domain must exist (`550 5.1.1`); any other recipient is queued for delivery.
- A message without Date: or Message-ID: gets them (RFC 6409 §8.2, §8.3).
- A message whose From: domain has DKIM keys is signed (in a worker thread: RSA costs a millisecond).
"""

from __future__ import annotations

import logging
import secrets
import threading
from concurrent.futures import Executor, Future
from datetime import UTC, datetime
from email.utils import format_datetime

from kartero.auth.accounts import DirectoryCache, DirectoryError, canonical_address
from kartero.dns.names import DomainError, canonical_domain
from kartero.log import kv
from kartero.mailauth.dkim import DKIMError, Signer
from kartero.mime.addresses import parse_address_list
from kartero.mime.headers import find_body_start, parse_header_block
from kartero.policy.decisions import Accept, AcceptMessage, Decision, MessageDecision, RcptContext, Reject
from kartero.policy.inbound import InboundPolicy
from kartero.policy.limits import SlidingWindow
from kartero.smtp import replies
from kartero.smtp.address import Address, AddressError, Path, parse_mailbox
from kartero.smtp.events import Envelope
from kartero.store.interface import Content
from kartero.store.spool import read_whole

log = logging.getLogger("kartero.policy")


class SubmissionPolicy:
    def __init__(self, directory: DirectoryCache, primary_domain: str, hostname: str,
                 signer: Signer | None = None, executor: Executor | None = None,
                 messages_per_hour: int = 0) -> None:  # fmt: skip
        self.messages_per_hour = messages_per_hour
        self._sent = SlidingWindow(3600.0)
        self.directory = directory
        self.primary_domain = primary_domain
        self.hostname = hostname
        self.signer = signer
        self.executor = executor
        self._local = InboundPolicy(directory, primary_domain)
        self._large = threading.Lock()  # one large (spooled) message signed at a time: dkimpy copies it

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

    def check_mail(self, path: Path, user: str | None) -> Decision:
        if user is None:
            return Reject(replies.AUTH_REQUIRED)
        if self.messages_per_hour and self._sent.count(user) >= self.messages_per_hour:
            minutes = max(1, round(self._sent.retry_after(user) / 60))
            log.info("%s", kv(event="policy.sending_limited", user=user, limit=self.messages_per_hour))
            return Reject(replies.SENDING_LIMITED.with_text(
                f"Sending limit of {self.messages_per_hour} messages an hour reached, try again in {minutes} minutes"
            ))  # fmt: skip
        if path.mailbox is None:
            return Reject(replies.SENDER_NOT_OWNED)
        try:
            address = canonical_address(path.mailbox)
        except DirectoryError:
            return Reject(replies.SENDER_NOT_OWNED)
        return Accept(replies.SENDER_OK) if self.owns(user, address) else Reject(replies.SENDER_NOT_OWNED)

    def check_rcpt(self, path: Path, context: RcptContext | None = None) -> Decision | Future[Decision]:
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
            return self._local.check_rcpt(path)  # no greylisting for our own users
        # Remote: kept as written (the local part is the remote domain's business), domain canonical.
        return Accept(replies.RECIPIENT_OK, address=f"{mailbox.quoted_local_part()}@{domain}", is_remote=True)

    def check_message(
        self, envelope: Envelope, data: bytes | Content, client_ip: str = ""
    ) -> MessageDecision | Future[MessageDecision]:
        user = envelope.authenticated_as
        if user is None:
            return Reject(replies.AUTH_REQUIRED)
        head = data.head if isinstance(data, Content) else data
        header_end, _ = find_body_start(head)
        header = parse_header_block(head[:header_end])
        from_domain = None
        for value in header.get_all("from"):
            for entry in parse_address_list(value):
                if entry.host is None or entry.mailbox is None:
                    continue  # a group name, not an address
                text = f"{entry.mailbox.decode('utf-8', 'replace')}@{entry.host.decode('utf-8', 'replace')}"
                try:
                    address = canonical_address(parse_mailbox(text))
                except (AddressError, DirectoryError):
                    return Reject(replies.FROM_NOT_OWNED)
                if not self.owns(user, address):
                    return Reject(replies.FROM_NOT_OWNED)
                from_domain = from_domain or address.rpartition("@")[2]
        added = b""
        if header.get("date") is None:
            added += f"Date: {format_datetime(datetime.now(UTC))}\r\n".encode()
        if header.get("message-id") is None:
            added += f"Message-ID: <{secrets.token_hex(12)}@{self.hostname}>\r\n".encode()
        message = Content(added + data.head, data.tail) if isinstance(data, Content) else added + data
        self._sent.record(user)
        signer = self.signer
        if signer is None or from_domain is None:
            return AcceptMessage(message)
        if self.executor is None:
            return self._signed(signer, from_domain, message)
        return self.executor.submit(self._signed, signer, from_domain, message)

    def _signed(self, signer: Signer, domain: str, message: bytes | Content) -> MessageDecision:
        """The message with its DKIM signatures; unsigned (logged) if signing fails: mail still goes out."""
        try:
            if isinstance(message, Content):
                with self._large:
                    signature = signer.sign(domain, read_whole(message))
                return AcceptMessage(Content(signature + message.head, message.tail))
            return AcceptMessage(signer.sign(domain, message) + message)
        except DKIMError as exc:
            log.error("%s", kv(event="dkim.sign_failed", domain=domain, detail=str(exc)))
            return AcceptMessage(message)
