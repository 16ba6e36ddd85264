"""Policy of the MX listener: mail for local users only, no relaying for anyone (loopback included)."""

from __future__ import annotations

import logging
import threading
import time

from kartero.auth.accounts import DirectoryCache, DirectoryError, Resolution, canonical_address
from kartero.concurrency import Blocking
from kartero.dns.names import DomainError, canonical_domain
from kartero.log import kv
from kartero.mail import replies
from kartero.mail.address import Address, AddressError, Path, parse_mailbox
from kartero.mail.srs import SRS, SRSError, is_srs
from kartero.mailauth.inbound import InboundChecker
from kartero.policy.decisions import Accept, AcceptMessage, Decision, MessageDecision, RcptContext, Reject
from kartero.policy.dnsbl import DNSBL
from kartero.policy.limits import Greylist
from kartero.policy.quota import QuotaBook
from kartero.smtp.events import Envelope
from kartero.store.interface import INBOX, Content
from kartero.store.spool import read_whole

JUNK = "Junk"  # the special-use \\Junk mailbox every account has

log = logging.getLogger("kartero.policy")

# Characters that route mail onward in old syntaxes: `user%other@local` (percent hack), `other!user@local`
# (UUCP bang path), `"user@other"@local` (quoted at-sign). RFC 5321 §3.6.1 and §C; refused outright.
_ROUTING_CHARACTERS = frozenset("%!@")


class InboundPolicy:
    """Decisions for MAIL and RCPT, answered from memory; only a DNSBL lookup of a new client, or a
    directory reload after an admin change to accounts or aliases, waits (in the worker pool)."""

    def __init__(self, directory: DirectoryCache, primary_domain: str, checker: InboundChecker | None = None,
                 blocking: Blocking | None = None, greylist: Greylist | None = None,
                 dnsbl: DNSBL | None = None, check_deadline_s: float = 120.0,
                 srs: SRS | None = None) -> None:  # fmt: skip
        self.greylist = greylist
        self.srs = srs
        self.dnsbl = dnsbl
        self.directory = directory
        self.primary_domain = primary_domain
        self.checker = checker
        self.blocking = blocking or Blocking()
        self.check_deadline_s = check_deadline_s
        self.quota: QuotaBook | None = None  # set by the server: RCPT refuses full mailboxes
        # DKIM verification holds a message in memory several times over (dkimpy): one spooled (large)
        # message is checked at a time, so a flood of large messages cannot multiply that.
        self._large = threading.Lock()

    async def check_mail(self, path: Path, user: str | None = None) -> Decision:
        """Any syntactically valid sender, the null sender included: bounces must get through."""
        return Accept(replies.SENDER_OK)

    async def check_message(self, envelope: Envelope, data: bytes | Content, client_ip: str = "") -> MessageDecision:
        """SPF, DKIM and DMARC in a worker thread (they wait for DNS); without a checker, as it came."""
        if self.checker is None:
            return AcceptMessage(data)
        return await self.blocking(self.check_deadline_s, self._checked, envelope, data, client_ip)

    def _checked(self, envelope: Envelope, data: bytes | Content, client_ip: str) -> MessageDecision:
        checker = self.checker
        assert checker is not None
        mail_from = str(envelope.mail_from)[1:-1]
        # Forged fields go from the header alone: a large message's body stays in its spool file.
        if isinstance(data, Content):
            stripped: bytes | Content = Content(checker.strip_forged(data.head), data.tail)
        else:
            stripped = checker.strip_forged(data)
        try:
            if isinstance(data, Content):
                with self._large:
                    verdict = checker.check(client_ip, envelope.helo, mail_from, read_whole(data))
            else:
                verdict = checker.check(client_ip, envelope.helo, mail_from, data)
        except Exception:  # a bug in a check must not make mail undeliverable: store it unlabelled
            log.exception("%s", kv(event="mailauth.check_failed", client=client_ip, mail_from=f"<{mail_from}>"))
            return AcceptMessage(stripped)
        if verdict.action == "reject":
            return Reject(replies.DMARC_REJECTED.with_text(f"Rejected by the {verdict.reason}"), "dmarc")
        mailbox = JUNK if verdict.action == "junk" else INBOX
        if isinstance(stripped, Content):
            return AcceptMessage(Content(verdict.header + stripped.head, stripped.tail), mailbox, verdict.summary)
        return AcceptMessage(verdict.header + stripped, mailbox, verdict.summary)

    async def check_rcpt(self, path: Path, context: RcptContext | None = None) -> Decision:
        if self.dnsbl is not None and context is not None:
            known, zone = self.dnsbl.cached(context.client_ip)
            if not known:  # a DNS lookup: off the event loop
                zone = await self.blocking(self.check_deadline_s, self.dnsbl.listed, context.client_ip)
            if zone is not None:
                return self._blocked(context, zone)
        decision = await self.check_local(path, context.size if context is not None else None)
        if self.greylist is None or context is None:
            return decision
        return self._greylist(decision, context)

    def _blocked(self, context: RcptContext, zone: str) -> Decision:
        log.info("%s", kv(event="policy.dnsbl", client=context.client_ip, zone=zone))
        return Reject(replies.DNSBL_LISTED.with_text(
            f"Service unavailable; client [{context.client_ip}] blocked using {zone}"
        ), "blocklisted")  # fmt: skip

    def _greylist(self, decision: Decision, context: RcptContext) -> Decision:
        """Only recipients that exist are greylisted (the others get their 550 at once)."""
        if not isinstance(decision, Accept) or self.greylist is None:
            return decision
        wait = self.greylist.wait(context.client_ip, context.mail_from, decision.address)
        if wait <= 0:
            return decision
        log.info("%s", kv(event="policy.greylisted", client=context.client_ip, mail_from=f"<{context.mail_from}>",
                          rcpt=decision.address, wait_s=round(wait)))  # fmt: skip
        return Reject(replies.GREYLISTED.with_text(f"Greylisted, please try again in {max(1, round(wait))} seconds"),
                      "greylisted")

    async def check_local(self, path: Path, size: int | None = None) -> Decision:
        """A recipient in one of our domains: the accounts it reaches, or why not (452 4.2.2 when they
        are all full, or have less room than the `size` MAIL FROM declared: see policy/quota.py)."""
        mailbox = path.mailbox
        if mailbox is None:
            return Reject(replies.BAD_RECIPIENT_SYNTAX)
        if not mailbox.domain:  # RFC 5321 §4.1.1.3 <Postmaster>
            mailbox = Address(mailbox.local_part, self.primary_domain)
        if mailbox.is_literal:
            return Reject(replies.RELAY_DENIED, "relay")
        try:
            address = canonical_address(mailbox)
        except DirectoryError:
            return Reject(replies.RELAY_DENIED, "relay")
        local, _, domain = address.rpartition("@")
        if domain not in self.directory.domains:
            return Reject(replies.RELAY_DENIED, "relay")
        if self.srs is not None and is_srs(local):
            return await self._bounce(self.srs, f"{mailbox.local_part}@{domain}")
        if _ROUTING_CHARACTERS & set(local):
            return Reject(replies.RELAY_DENIED, "relay")
        decision = _decide(address, await self.directory.resolve(address))
        if self.quota is not None and isinstance(decision, Accept) and self.quota.is_full(decision.account_ids, size):
            log.info("%s", kv(event="policy.mailbox_full", rcpt=address, size=size))
            return Reject(replies.MAILBOX_FULL, "quota")
        return decision

    async def _bounce(self, srs: SRS, address: str) -> Decision:
        """RCPT of an SRS address of ours: the reply path of mail we forwarded (RFC 5321 §4.5.5 bounces,
        or replies to it; any MAIL FROM). Only the hash decides, so it is no open relay: a valid one
        goes to the original sender (queued, or local), anything else is refused."""
        original = srs_original(srs, address, time.time())
        if original is None:
            return Reject(replies.SRS_INVALID, "unknown_recipient")
        if original.rpartition("@")[2] not in self.directory.domains:
            return Accept(replies.RECIPIENT_OK, address=original, is_remote=True)
        try:  # ours: a sender from before its domain became local (ours are not rewritten)
            local_address = canonical_address(parse_mailbox(original))
        except (AddressError, DirectoryError):
            return Reject(replies.SRS_INVALID, "unknown_recipient")
        return _decide(local_address, await self.directory.resolve(local_address))


def srs_original(srs: SRS, address: str, now: float) -> str | None:
    """The address a bounce to our SRS `address` goes to, its domain canonical; None (logged) when the
    address is forged, expired or broken."""
    try:
        original = srs.reverse(address, now)
        local, _, domain = original.rpartition("@")
        return f"{local}@{canonical_domain(domain)}"
    except (SRSError, DomainError) as exc:
        log.info("%s", kv(event="policy.srs_refused", rcpt=address, detail=str(exc)))
        return None


def _decide(address: str, resolution: Resolution) -> Decision:
    if resolution.has_destinations:
        return Accept(replies.RECIPIENT_OK, resolution.account_ids, address, forward_to=resolution.forward_to)
    if resolution.is_postmaster_fallback:
        log.warning("event=policy.no_postmaster address=%s detail=no account exists yet", address)
        return Reject(replies.MAILBOX_UNAVAILABLE, "unavailable")
    return Reject(replies.NO_SUCH_USER, "unknown_recipient")

