"""Messages Kartero writes itself — delivery status notifications — going to local mailboxes directly
and to remote senders through the queue, always with the null sender, through intake like any other."""

from __future__ import annotations

import asyncio
import logging

from kartero.auth.accounts import DirectoryError, parse_address
from kartero.intake import Incoming, Intake, Refused, Target
from kartero.log import kv
from kartero.mail.envelope import EnvelopeRecipient, EnvelopeRecord, Origin
from kartero.store.interface import StoreError

log = logging.getLogger("kartero.delivery")

# A DSN is small and stored locally or queued; past this the queue runner's thread gives up waiting and
# the failure stays unreported, to be tried again at the next sweep. Longer than intake's own deadlines
# (a directory reload, 60 s, then the commit, 300 s), so intake has answered first: a DSN given up on here
# while its commit could still land would be sent twice.
DSN_DEADLINE_S = 600.0


class DsnSender:
    """The queue's Bouncer: blocking, called from worker threads; the work runs on the event loop."""

    def __init__(self, intake: Intake, loop: asyncio.AbstractEventLoop) -> None:
        self.intake = intake
        self.loop = loop

    def send(self, recipient: str, data: bytes, *, smtputf8: bool) -> str | None:
        return asyncio.run_coroutine_threadsafe(self.deliver(recipient, data, smtputf8=smtputf8), self.loop).result(
            DSN_DEADLINE_S
        )

    async def deliver(self, recipient: str, data: bytes, *, smtputf8: bool) -> str | None:
        """Store or queue one DSN and return its message id (None: nobody to send it to, logged);
        StoreError when it could not be stored."""
        try:
            address = parse_address(recipient)
        except DirectoryError:
            log.warning("%s", kv(event="dsn.bad_recipient", to=recipient))
            return None
        target = await self.intake.resolve(address)
        if target is None:
            log.warning("%s", kv(event="dsn.no_local_recipient", to=address))
            return None
        if target.is_remote:
            # NOTIFY=NEVER: a DSN about a DSN would loop (RFC 3461 §6.2). The recipient as written, unless
            # it was an SRS address of ours (mail we forwarded): then the original sender behind it.
            address = recipient if target.recipient.address == address else target.recipient.address
            target = Target(EnvelopeRecipient(address, ("NEVER",)), is_remote=True)
        envelope = EnvelopeRecord(Origin.DSN, "", (target.recipient,), smtputf8=smtputf8)
        outcome = await self.intake.accept(Incoming(envelope, data, (target,), body_8bit=not data.isascii()))
        if isinstance(outcome, Refused):
            raise StoreError(f"DSN to {recipient} not stored: {outcome.reason}")
        return outcome.message_id
