"""Messages Kartero writes itself — delivery status notifications — going to local mailboxes directly
and to remote senders through the queue, always with the null sender."""

from __future__ import annotations

import logging
import time

from kartero.auth.accounts import DirectoryCache, DirectoryError, parse_address
from kartero.log import kv
from kartero.smtp.received import format_return_path
from kartero.store.ids import new_message_id
from kartero.store.interface import Delivery, Outbound, OutboundRecipient, Store, as_targets

log = logging.getLogger("kartero.delivery")


class DsnSender:
    """The queue's Bouncer: blocking, called from worker threads."""

    def __init__(self, store: Store, directory: DirectoryCache, queue_lifetime_s: float) -> None:
        self.store = store
        self.directory = directory
        self.queue_lifetime_s = queue_lifetime_s

    def send(self, recipient: str, data: bytes, *, smtputf8: bool) -> None:
        now = int(time.time())
        try:
            address = parse_address(recipient)
        except DirectoryError:
            log.warning("%s", kv(event="dsn.bad_recipient", to=recipient))
            return
        if address.rpartition("@")[2] in self.directory.domains:
            account_ids = self.directory.current().resolve(address).account_ids
            if not account_ids:
                log.warning("%s", kv(event="dsn.no_local_recipient", to=address))
                return
            delivery = Delivery(new_message_id(), format_return_path("") + data, as_targets(account_ids), now,
                                {"mail_from": "", "dsn": True})  # fmt: skip
        else:
            # NOTIFY=NEVER: a DSN about a DSN would loop (RFC 3461 §6.2).
            outbound = Outbound("", (OutboundRecipient(recipient, ("NEVER",)),), now + int(self.queue_lifetime_s),
                                smtputf8=smtputf8, body_8bit=not data.isascii())  # fmt: skip
            delivery = Delivery(new_message_id(), data, (), now, {"mail_from": "", "dsn": True}, outbound)
        self.store.mail.deliver(delivery).result()
