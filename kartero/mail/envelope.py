"""The envelope record: what Kartero keeps about how a message arrived, beside its bytes.

One type for every way in (SMTP, submission, `kartero sendmail`, the DSNs Kartero writes, IMAP APPEND),
serialised one way (versioned JSON), so the queue, a message trace and later Sieve or forwarding read
the same fields whoever stored the message. `EnvelopeRecord.from_json` also reads the shapes stored
before the record existed (issue 10): the SMTP adapter's, the sendmail pickup's, the DSN sender's and
APPEND's dicts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

VERSION = 1
# A stored record is read back from our own database, yet it holds client-chosen text (addresses, HELO):
# refuse to read anything absurd rather than build a huge object from it.
MAX_RECORD_CHARS = 4 * 1024 * 1024


class Origin(StrEnum):
    SMTP = "smtp"  # the MX listener
    SUBMISSION = "submission"  # submission / submissions, authenticated
    SENDMAIL = "sendmail"  # `kartero sendmail` through the maildrop
    DSN = "dsn"  # a delivery status notification Kartero wrote
    APPEND = "append"  # IMAP APPEND (and CATENATE)
    SIEVE = "sieve"  # a vacation reply or rejection notice a user's Sieve script made Kartero write
    QUOTA = "quota"  # the warning Kartero sends a user whose mailbox is 90 % full
    IMPORT = "import"  # `kartero import` (Maildir, mbox, another IMAP server); the sender from mbox's From_ line
    UNKNOWN = "unknown"  # a stored shape that names none of these


@dataclass(frozen=True, slots=True)
class EnvelopeRecipient:
    address: str  # as given in RCPT TO (or to sendmail), without angle brackets
    notify: tuple[str, ...] = ()  # DSN NOTIFY (RFC 3461 §4.1); empty: the default (FAILURE, DELAY)
    orcpt: str | None = None  # DSN ORCPT (RFC 3461 §4.2), decoded, as "type;address"


@dataclass(frozen=True, slots=True)
class EnvelopeRecord:
    origin: Origin
    sender: str  # MAIL FROM without angle brackets; "" for the null sender
    recipients: tuple[EnvelopeRecipient, ...] = ()
    received_at: int = 0  # unix seconds
    user: str | None = None  # who is responsible: the SMTP AUTH user, the sendmail login, the APPENDer
    helo: str | None = None
    client_ip: str | None = None
    tls: bool = False
    ret: str | None = None  # DSN RET (FULL or HDRS)
    envid: str | None = None  # DSN ENVID
    body: str | None = None  # BODY= (7BIT, 8BITMIME, BINARYMIME) as declared
    smtputf8: bool = False
    size: int | None = None  # SIZE= as declared

    def to_json(self) -> str:
        record: dict[str, Any] = {"v": VERSION, "origin": self.origin.value, "sender": self.sender}
        if self.recipients:
            record["recipients"] = [
                {"address": r.address, "notify": list(r.notify), "orcpt": r.orcpt} for r in self.recipients
            ]
        for name in ("received_at", "user", "helo", "client_ip", "ret", "envid", "body", "size"):
            value = getattr(self, name)
            if value is not None and value != 0:
                record[name] = value
        if self.tls:
            record["tls"] = True
        if self.smtputf8:
            record["smtputf8"] = True
        return json.dumps(record, ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> EnvelopeRecord:
        """The record, from this version's JSON or an older shape. Raises ValueError for text that is
        no JSON object."""
        if len(text) > MAX_RECORD_CHARS:
            raise ValueError("envelope record too large")
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("envelope record is not an object")
        if "v" in data:
            return cls._from_current(data)
        return cls._from_legacy(data)

    @classmethod
    def _from_current(cls, data: dict[str, Any]) -> EnvelopeRecord:
        try:
            origin = Origin(data.get("origin", "unknown"))
        except ValueError:
            origin = Origin.UNKNOWN
        return cls(
            origin=origin,
            sender=_text(data.get("sender")) or "",
            recipients=tuple(_recipient(r) for r in _list(data.get("recipients"))),
            received_at=_int(data.get("received_at")) or 0,
            user=_text(data.get("user")),
            **_session_fields(data),
        )

    @classmethod
    def _from_legacy(cls, data: dict[str, Any]) -> EnvelopeRecord:
        """The dicts stored before version 1 (never written any more)."""
        if "appended_by" in data:
            return cls(Origin.APPEND, "", user=_text(data["appended_by"]))
        sender = _text(data.get("mail_from")) or ""
        if data.get("dsn") is True:
            return cls(Origin.DSN, sender)
        if "rcpt_to" in data or "sendmail_user" in data:
            recipients = tuple(EnvelopeRecipient(a) for r in _list(data.get("rcpt_to")) if (a := _text(r)))
            return cls(Origin.SENDMAIL, sender, recipients, user=_text(data.get("sendmail_user")))
        recipients = tuple(_recipient(r) for r in _list(data.get("recipients")))
        return cls(
            origin=Origin.SMTP if "helo" in data else Origin.UNKNOWN,
            sender=sender,
            recipients=recipients,
            **_session_fields(data),
        )


def _session_fields(data: dict[str, Any]) -> dict[str, Any]:
    """The fields of an SMTP transaction, named alike in version 1 and before it."""
    return {
        "helo": _text(data.get("helo")),
        "client_ip": _text(data.get("client_ip")),
        "tls": data.get("tls") is True,
        "ret": _text(data.get("ret")),
        "envid": _text(data.get("envid")),
        "body": _text(data.get("body")),
        "smtputf8": data.get("smtputf8") is True,
        "size": _int(data.get("size")),
    }


def _recipient(value: Any) -> EnvelopeRecipient:
    if not isinstance(value, dict):
        return EnvelopeRecipient(_text(value) or "")
    orcpt = value.get("orcpt")
    if isinstance(orcpt, list) and len(orcpt) == 2:  # before version 1: [type, address]
        orcpt = f"{orcpt[0]};{orcpt[1]}"
    return EnvelopeRecipient(
        _text(value.get("address")) or "",
        tuple(n for n in _list(value.get("notify")) if isinstance(n, str)),
        _text(orcpt),
    )


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []
