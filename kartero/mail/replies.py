"""Every SMTP reply Kartero sends, as named constants.

Codes follow RFC 5321 §4.2-4.3; enhanced status codes follow RFC 3463 and RFC 5248. RFC 2034 exempts
the greeting and the EHLO/HELO reply from enhanced codes, so those carry `enhanced=None`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

_ENHANCED = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")


@dataclass(frozen=True, slots=True)
class Reply:
    """One SMTP reply; `text` may hold several lines separated by "\\n" (a multi-line reply)."""

    code: int
    enhanced: str | None
    text: str

    def __post_init__(self) -> None:
        if not 200 <= self.code <= 599:
            raise ValueError(f"reply code out of range: {self.code}")
        if self.enhanced is not None:
            if not _ENHANCED.fullmatch(self.enhanced):
                raise ValueError(f"bad enhanced status code: {self.enhanced!r}")
            if self.enhanced[0] != str(self.code)[0]:
                raise ValueError(f"enhanced class {self.enhanced} does not match {self.code}")
        if "\r" in self.text or any(not 32 <= ord(c) < 127 for c in self.text.replace("\n", "")):
            # A reply is printable ASCII; this also stops any CRLF injection into replies.
            raise ValueError(f"reply text must be printable ASCII: {self.text!r}")

    @property
    def is_positive(self) -> bool:
        return self.code < 400

    @property
    def is_transient(self) -> bool:
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        return self.code >= 500

    def with_text(self, text: str) -> Reply:
        return replace(self, text=text)

    def with_note(self, note: str) -> Reply:
        """This reply's first line with `note` after it, e.g. where a remote reply came from:
        "550 5.1.1 No such user (from mx.example.org[192.0.2.1])"."""
        line = self.text.split("\n", 1)[0].rstrip()
        return replace(self, text=f"{line} {note}" if line else note)

    def to_line(self) -> str:
        """The first line with its codes and no trailing blank, as a queue listing, a log line or a DSN's
        Diagnostic-Code shows a reply: "550 5.1.1 No such user"."""
        return str(self).rstrip()

    def to_bytes(self) -> bytes:
        lines = self.text.split("\n")
        prefix = f"{self.enhanced} " if self.enhanced else ""
        out = []
        for i, line in enumerate(lines):
            sep = " " if i == len(lines) - 1 else "-"
            out.append(f"{self.code}{sep}{prefix}{line}\r\n")
        return "".join(out).encode("ascii")

    def __str__(self) -> str:
        prefix = f" {self.enhanced}" if self.enhanced else ""
        return f"{self.code}{prefix} {self.text.splitlines()[0] if self.text else ''}"


def make_printable(text: str) -> str:
    """`text` fit for a reply: printable ASCII, any other character (a line end, a U-label, a byte a
    remote server sent) as "?". For details from outside: a remote reply, an exception, a DNS answer."""
    return "".join(ch if 32 <= ord(ch) < 127 else "?" for ch in text)


# 2xx
# The greeting and the HELO/EHLO reply start with our host name (RFC 5321 §4.2): `.with_text(...)`.
GREETING = Reply(220, None, "ESMTP Kartero")
HELLO = Reply(250, None, "Hello")
HELP = Reply(214, "2.0.0", "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS")
CLOSING = Reply(221, "2.0.0", "Bye")
READY_FOR_TLS = Reply(220, "2.0.0", "Ready to start TLS")
OK = Reply(250, "2.0.0", "OK")
SENDER_OK = Reply(250, "2.1.0", "Sender OK")
RECIPIENT_OK = Reply(250, "2.1.5", "Recipient OK")
MESSAGE_ACCEPTED = Reply(250, "2.0.0", "Message accepted")
CHUNK_RECEIVED = Reply(250, "2.0.0", "Chunk received")
CANNOT_VRFY = Reply(252, "2.1.5", "Cannot VRFY user, but will accept message and attempt delivery")
AUTH_OK = Reply(235, "2.7.0", "Authentication successful")

# 3xx: no enhanced code on intermediate replies (RFC 2034 §3 lists 2xx, 4xx and 5xx only).
START_MAIL_INPUT = Reply(354, None, "End data with <CR><LF>.<CR><LF>")
AUTH_CHALLENGE = Reply(334, None, "")  # RFC 4954 §4: the base64 challenge as `.with_text(...)`

# 4xx
SHUTTING_DOWN = Reply(421, "4.3.2", "Service shutting down, closing connection")
TIMEOUT = Reply(421, "4.4.2", "Timeout, closing connection")
FILTERS_FAILED = Reply(421, "4.3.0", "Service temporarily unavailable, closing connection")  # the chain's backstop
TOO_MANY_ERRORS = Reply(421, "4.7.0", "Too many errors, closing connection")
TOO_MANY_CONNECTIONS = Reply(421, "4.7.0", "Too many connections, try again later")
LOCAL_ERROR = Reply(451, "4.3.0", "Local error in processing, try again later")
STORAGE_FULL = Reply(452, "4.3.1", "Insufficient system storage, try again later")
HEADER_TOO_LARGE = Reply(552, "5.3.4", "Message header too large")
MAILBOX_UNAVAILABLE = Reply(450, "4.2.1", "Mailbox temporarily unavailable, try again later")
MAILBOX_FULL = Reply(452, "4.2.2", "Mailbox full")  # RFC 3463 §3.3: over quota; the sender retries
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Too many recipients")
TLS_NOT_AVAILABLE = Reply(454, "4.7.0", "TLS not available")
AUTH_THROTTLED = Reply(454, "4.7.0", "Too many authentication failures, try again later")
AUTH_TEMPORARY = Reply(454, "4.7.0", "Temporary authentication failure")  # RFC 4954 §6: the check failed

# 5xx
UNKNOWN_COMMAND = Reply(500, "5.5.1", "Command unrecognized")
SYNTAX_ERROR = Reply(500, "5.5.2", "Syntax error, command unrecognized")
LINE_TOO_LONG = Reply(500, "5.5.2", "Line too long")
TEXT_LINE_TOO_LONG = Reply(500, "5.5.2", "Message line longer than 1000 octets (RFC 5321 4.5.3.1.6)")
BAD_ARGUMENTS = Reply(501, "5.5.4", "Syntax error in parameters or arguments")
BAD_SENDER_SYNTAX = Reply(501, "5.1.7", "Bad sender address syntax")
BAD_RECIPIENT_SYNTAX = Reply(501, "5.1.3", "Bad recipient address syntax")
BAD_HELO = Reply(501, "5.5.4", "Invalid domain name in HELO/EHLO")
BAD_CHUNK_SIZE = Reply(501, "5.5.4", "Bad BDAT chunk size, closing connection")
NOT_IMPLEMENTED = Reply(502, "5.5.1", "Command not implemented")
EXPN_DISABLED = Reply(502, "5.5.1", "EXPN not available")
BAD_SEQUENCE = Reply(503, "5.5.1", "Bad sequence of commands")
NEED_HELO = Reply(503, "5.5.1", "Send HELO/EHLO first")
NEED_MAIL = Reply(503, "5.5.1", "Need MAIL before RCPT")
NESTED_MAIL = Reply(503, "5.5.1", "Sender already specified")
DATA_AFTER_BDAT = Reply(503, "5.5.1", "DATA not allowed in a BDAT transaction")
TLS_ALREADY_ACTIVE = Reply(503, "5.5.1", "TLS already active")
NO_SUCH_USER = Reply(550, "5.1.1", "No such user here")
RELAY_DENIED = Reply(554, "5.7.1", "Relay access denied")
SIEVE_REJECTED = Reply(550, "5.7.1", "Rejected by the recipient's mail rules")  # the text: the script's reason
SIZE_EXCEEDED = Reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
NEEDS_SMTPUTF8 = Reply(553, "5.6.7", "Non-ASCII address requires the SMTPUTF8 parameter")
NO_VALID_RECIPIENTS = Reply(554, "5.5.1", "No valid recipients")
BARE_LINE_ENDING = Reply(554, "5.6.0", "Message refused: bare CR or LF in message data (RFC 5321 2.3.8), use CRLF")
FORBIDDEN_COMMAND = Reply(500, "5.5.1", "This is an SMTP server, closing connection")
PARAMS_NOT_RECOGNIZED = Reply(555, "5.5.4", "MAIL FROM/RCPT TO parameters not recognized or not implemented")
# RFC 4954 (SMTP AUTH) and RFC 6409 (submission)
AUTH_REQUIRED = Reply(530, "5.7.0", "Authentication required")
AUTH_FAILED = Reply(535, "5.7.8", "Authentication credentials invalid")
AUTH_NEEDS_TLS = Reply(538, "5.7.11", "Encryption required for requested authentication mechanism")
AUTH_UNKNOWN_MECHANISM = Reply(504, "5.5.4", "Unrecognized authentication type")
AUTH_CANCELLED = Reply(501, "5.0.0", "Authentication cancelled")
AUTH_BAD_RESPONSE = Reply(501, "5.5.2", "Cannot decode response")
ALREADY_AUTHENTICATED = Reply(503, "5.5.1", "Already authenticated")
SENDER_NOT_OWNED = Reply(553, "5.7.1", "Sender address not owned by the authenticated user")
FROM_NOT_OWNED = Reply(553, "5.7.1", "From: header address not owned by the authenticated user")
HEADER_MALFORMED = Reply(554, "5.6.0", "Message refused: malformed header")  # submission: From/Sender
NUL_IN_DATA = Reply(554, "5.6.0", "Message refused: NUL in message data")  # submission listeners
DMARC_REJECTED = Reply(550, "5.7.1", "Rejected by DMARC policy")
CLIENT_LIMITED = Reply(421, "4.7.0", "Too many connections from your address")
GREYLISTED = Reply(451, "4.7.1", "Greylisted, please try again later")
DNSBL_LISTED = Reply(554, "5.7.1", "Service unavailable; client blocked")
SENDING_LIMITED = Reply(451, "4.7.1", "Sending rate limit reached, try again later")
# Python hooks (kartero/hooks.py, kartero/filters/hooks.py): what `reject()` and `tempfail()` answer
# when the hook names no enhanced code or text, and a hook that raised, passed [hooks] timeout or
# returned nonsense under on_error = "tempfail" (the client learns nothing of why: that goes to the log).
HOOK_REJECTED = Reply(550, "5.7.1", "Rejected by policy")
HOOK_TEMPFAILED = Reply(451, "4.7.1", "Try again later")
HOOK_FAILED = Reply(451, "4.7.1", "Policy check failed, try again later")
# Forwarding (kartero/mail/srs.py, intake): a bounce to an SRS address we did not sign or that has expired
# (the same reply for both: the peer learns nothing about our secret); a message that already carries a
# Delivered-To field for every one of its recipients.
SRS_INVALID = Reply(550, "5.1.1", "Invalid or expired SRS address")
MAIL_LOOP = Reply(554, "5.4.6", "Mail forwarding loop detected")
# Milters (kartero/milter, kartero/filters/milter.py): the texts Postfix's milter8.c gives a milter's
# reject, tempfail and shutdown, also for a dead milter under on_error = "tempfail" (milter_default_action).
MILTER_REJECTED = Reply(550, "5.7.1", "Command rejected")
MILTER_TEMPFAILED = Reply(451, "4.7.1", "Service unavailable - try again later")
MILTER_SHUTDOWN = Reply(421, "4.7.0", "Server closing connection")

# Outbound delivery (kartero/delivery, kartero/queue, the SMTP client): why a queued recipient was not
# delivered this time. Mostly used `.with_text(...)` to name the host or domain; what a remote server
# answered is its own Reply, parsed by kartero/smtp/client.py.
NO_HOST_REACHABLE = Reply(451, "4.4.1", "No mail server could be reached")
CONNECT_FAILED = Reply(451, "4.4.1", "Cannot connect to the mail server")
REMOTE_TIMEOUT = Reply(451, "4.4.2", "Timeout talking to the mail server")
REMOTE_SESSION_FAILED = Reply(451, "4.4.2", "Session with the mail server failed")
REMOTE_CLOSED_EARLY = Reply(451, "4.4.2", "The mail server closed the session early")
DNS_TEMPORARY = Reply(451, "4.4.3", "DNS lookup failed, try again later")
HOST_HAS_NO_ADDRESS = Reply(451, "4.4.4", "Mail server has no address")
MTASTS_NO_MATCHING_MX = Reply(451, "4.7.5", "No MX host matches the MTA-STS policy")
MTASTS_TLS_FAILED = Reply(451, "4.7.5", "TLS failed, and the MTA-STS policy requires it")
NO_DELIVERY_RESULT = Reply(451, "4.3.0", "No result from the delivery agent")
NO_RCPT_REPLY = Reply(451, "4.4.0", "No reply to RCPT")
DOMAIN_NOT_FOUND = Reply(550, "5.1.2", "Domain does not exist")
NULL_MX = Reply(556, "5.1.10", "Domain accepts no mail (null MX, RFC 7505)")
REMOTE_SIZE_EXCEEDED = Reply(552, "5.3.4", "Message too large for the remote server")
REMOTE_NO_SMTPUTF8 = Reply(553, "5.6.7", "The remote server does not support SMTPUTF8, which this message needs")
