"""Policy of the MX listener: mail for local users only, no relaying for anyone (loopback included)."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Executor, Future

from kartero.auth.accounts import DirectoryCache, DirectoryError, Resolution, canonical_address
from kartero.log import kv
from kartero.mail import replies
from kartero.mail.address import Address, Path
from kartero.mailauth.inbound import InboundChecker
from kartero.policy.decisions import Accept, AcceptMessage, Decision, MessageDecision, RcptContext, Reject
from kartero.policy.dnsbl import DNSBL
from kartero.policy.limits import Greylist
from kartero.smtp.events import Envelope
from kartero.store.interface import INBOX, Content
from kartero.store.spool import read_whole

JUNK = "Junk"  # the special-use \\Junk mailbox every account has

log = logging.getLogger("kartero.policy")

# Characters that route mail onward in old syntaxes: `user%other@local` (percent hack), `other!user@local`
# (UUCP bang path), `"user@other"@local` (quoted at-sign). RFC 5321 §3.6.1 and §C; refused outright.
_ROUTING_CHARACTERS = frozenset("%!@")


class InboundPolicy:
    """Decisions for MAIL and RCPT. Both answer at once from memory; only after an admin change to
    accounts or aliases does check_rcpt return a Future (the directory reloads in a worker thread)."""

    def __init__(self, directory: DirectoryCache, primary_domain: str, checker: InboundChecker | None = None,
                 executor: Executor | None = None, greylist: Greylist | None = None,
                 dnsbl: DNSBL | None = None) -> None:  # fmt: skip
        self.greylist = greylist
        self.dnsbl = dnsbl
        self.directory = directory
        self.primary_domain = primary_domain
        self.checker = checker
        self.executor = executor
        # DKIM verification holds a message in memory several times over (dkimpy): one spooled (large)
        # message is checked at a time, so a flood of large messages cannot multiply that.
        self._large = threading.Lock()

    def check_mail(self, path: Path, user: str | None = None) -> Decision:
        """Any syntactically valid sender, the null sender included: bounces must get through."""
        return Accept(replies.SENDER_OK)

    def check_message(
        self, envelope: Envelope, data: bytes | Content, client_ip: str = ""
    ) -> MessageDecision | Future[MessageDecision]:
        """SPF, DKIM and DMARC in a worker thread (they wait for DNS); without a checker, as it came."""
        if self.checker is None:
            return AcceptMessage(data)
        if self.executor is None:
            return self._checked(envelope, data, client_ip)
        return self.executor.submit(self._checked, envelope, data, client_ip)

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
            return Reject(replies.DMARC_REJECTED.with_text(f"Rejected by the {verdict.reason}"))
        mailbox = JUNK if verdict.action == "junk" else INBOX
        if isinstance(stripped, Content):
            return AcceptMessage(Content(verdict.header + stripped.head, stripped.tail), mailbox)
        return AcceptMessage(verdict.header + stripped, mailbox)

    def check_rcpt(self, path: Path, context: RcptContext | None = None) -> Decision | Future[Decision]:
        if self.dnsbl is not None and context is not None:
            known, zone = self.dnsbl.cached(context.client_ip)
            if zone is not None:
                return self._blocked(context, zone)
            if not known and self.executor is not None:  # a DNS lookup: off the event loop
                return self._after_dnsbl(path, context)
        return self._check_rcpt(path, context)

    def _after_dnsbl(self, path: Path, context: RcptContext) -> Future[Decision]:
        """Look the client up in a worker thread, then decide as usual, chained by callbacks: a worker
        never blocks waiting for another task of the same pool (the directory reloads there too)."""
        assert self.dnsbl is not None and self.executor is not None
        decided: Future[Decision] = Future()

        def settle(decision: Decision | Future[Decision]) -> None:
            if isinstance(decision, Future):
                decision.add_done_callback(lambda done: settle(done.result()))
            else:
                decided.set_result(decision)

        def looked_up(lookup: Future[str | None]) -> None:
            try:
                zone = lookup.result()
                settle(self._blocked(context, zone) if zone is not None else self._check_rcpt(path, context))
            except Exception as exc:
                log.exception("event=policy.rcpt_failed")
                decided.set_exception(exc)

        self.executor.submit(self.dnsbl.listed, context.client_ip).add_done_callback(looked_up)
        return decided

    def _blocked(self, context: RcptContext, zone: str) -> Decision:
        log.info("%s", kv(event="policy.dnsbl", client=context.client_ip, zone=zone))
        return Reject(replies.DNSBL_LISTED.with_text(
            f"Service unavailable; client [{context.client_ip}] blocked using {zone}"
        ))  # fmt: skip

    def _check_rcpt(self, path: Path, context: RcptContext | None) -> Decision | Future[Decision]:
        decision = self._check_local(path)
        if self.greylist is None or context is None:
            return decision
        if isinstance(decision, Future):
            greylisted: Future[Decision] = Future()
            decision.add_done_callback(lambda done: greylisted.set_result(self._greylist(done.result(), context)))
            return greylisted
        return self._greylist(decision, context)

    def _greylist(self, decision: Decision, context: RcptContext) -> Decision:
        """Only recipients that exist are greylisted (the others get their 550 at once)."""
        if not isinstance(decision, Accept) or self.greylist is None:
            return decision
        wait = self.greylist.wait(context.client_ip, context.mail_from, decision.address)
        if wait <= 0:
            return decision
        log.info("%s", kv(event="policy.greylisted", client=context.client_ip, mail_from=f"<{context.mail_from}>",
                          rcpt=decision.address, wait_s=round(wait)))  # fmt: skip
        return Reject(replies.GREYLISTED.with_text(f"Greylisted, please try again in {max(1, round(wait))} seconds"))

    def _check_local(self, path: Path) -> Decision | Future[Decision]:
        mailbox = path.mailbox
        if mailbox is None:
            return Reject(replies.BAD_RECIPIENT_SYNTAX)
        if not mailbox.domain:  # RFC 5321 §4.1.1.3 <Postmaster>
            mailbox = Address(mailbox.local_part, self.primary_domain)
        if mailbox.is_literal:
            return Reject(replies.RELAY_DENIED)
        try:
            address = canonical_address(mailbox)
        except DirectoryError:
            return Reject(replies.RELAY_DENIED)
        local, _, domain = address.rpartition("@")
        if domain not in self.directory.domains:
            return Reject(replies.RELAY_DENIED)
        if _ROUTING_CHARACTERS & set(local):
            return Reject(replies.RELAY_DENIED)
        resolution = self.directory.lookup(address)
        if isinstance(resolution, Resolution):
            return _decide(address, resolution)
        decision: Future[Decision] = Future()
        resolution.add_done_callback(lambda done: _settle(decision, address, done))
        return decision


def _decide(address: str, resolution: Resolution) -> Decision:
    if resolution.account_ids:
        return Accept(replies.RECIPIENT_OK, resolution.account_ids, address)
    if resolution.is_postmaster_fallback:
        log.warning("event=policy.no_postmaster address=%s detail=no account exists yet", address)
        return Reject(replies.MAILBOX_UNAVAILABLE)
    return Reject(replies.NO_SUCH_USER)


def _settle(decision: Future[Decision], address: str, done: Future[Resolution]) -> None:
    try:
        decision.set_result(_decide(address, done.result()))
    except Exception:
        log.exception("event=policy.lookup_failed address=%s", address)
        decision.set_result(Reject(replies.LOCAL_ERROR))
