"""Command lines: verb and argument, and the ESMTP parameters of MAIL and RCPT.

Errors raise `SMTPError(reply)` with the exact reply RFC 5321 §4.2-4.3 (and the extension RFCs) ask for;
the server core turns that into the reply and goes on.
"""

from __future__ import annotations

import re
from enum import StrEnum

from kartero.mail import replies
from kartero.mail.address import AddressError, Path, parse_path
from kartero.mail.replies import Reply
from kartero.smtp.events import Body, MailParams, Notify, RcptParams, Ret


class SMTPError(Exception):
    """Raised inside the core; the dispatcher writes `reply` and the session goes on."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply


class Verb(StrEnum):
    EHLO = "EHLO"
    HELO = "HELO"
    MAIL = "MAIL"
    RCPT = "RCPT"
    DATA = "DATA"
    BDAT = "BDAT"
    RSET = "RSET"
    NOOP = "NOOP"
    QUIT = "QUIT"
    VRFY = "VRFY"
    EXPN = "EXPN"
    HELP = "HELP"
    STARTTLS = "STARTTLS"
    AUTH = "AUTH"


# Words that mean an HTTP client (or a cross-protocol attack through one) is talking to us.
FORBIDDEN_VERBS = frozenset({"GET", "POST", "PUT", "HEAD", "CONNECT", "OPTIONS"})

# RFC 5321 §4.5.3.1.4: 512 octets incl. CRLF. Extensions raise it for MAIL and RCPT: DSN adds 100 to
# MAIL and 500 to RCPT (RFC 3461 §4), SIZE adds 26 (RFC 1870 §3), AUTH= adds 500 (RFC 4954 §5); an AUTH
# command or SASL response line may be 12288 octets (RFC 4954 §4).
DEFAULT_LINE_LIMIT = 512
LINE_LIMITS: dict[str, int] = {Verb.MAIL: 1280, Verb.RCPT: 1024, Verb.AUTH: 12288}
# The longest line the core buffers while looking for CRLF (AUTH lines only where AUTH is offered).
MAX_BUFFERED_LINE = LINE_LIMITS[Verb.MAIL]
MAX_BUFFERED_AUTH_LINE = LINE_LIMITS[Verb.AUTH]

_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9\-]*")
# esmtp-value, RFC 5321 §4.1.2 + RFC 6531 §3.3: %d33-60 / %d62-126 / UTF8-non-ascii, written as "not a
# control, space, '=' or DEL": the same set, but a class range up to U+10FFFF costs `re` ~10 ms to compile.
_VALUE = re.compile(r"[^\x00-\x20=\x7f]+")
_XTEXT = re.compile(r"(?:[!-*,-<>-~]|\+[0-9A-F]{2})*")  # RFC 3461 §4
_NOTIFY_WORDS = frozenset(n.value for n in Notify)
_HELO_NAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_\-.]*[A-Za-z0-9_])?|\[[!-Z^-~]+\]")


def split_command(line: str) -> tuple[str, str]:
    """Split a command line (CRLF removed) into upper-cased verb and argument text.

    Only an ASCII verb is upper-cased: Python turns "\u017f" (long s) into "S", and "\u017fTARTTLS"
    must not pass for STARTTLS.
    """
    verb, _, arg = line.partition(" ")
    return verb.upper() if verb.isascii() else verb, arg


def parse_helo_name(arg: str) -> str:
    """The EHLO/HELO argument: a domain or an address literal (RFC 5321 §4.1.1.1).

    Underscores are tolerated: real clients send them and they cannot harm a Received header.
    """
    name = arg.strip()
    if not _HELO_NAME.fullmatch(name) or len(name) > 255:
        raise SMTPError(replies.BAD_HELO)
    return name


def decode_xtext(text: str) -> str:
    """Decode RFC 3461 §4 xtext; raises SMTPError(501) when malformed.

    Every xtext we take (ENVID, ORCPT, AUTH=) must decode to printable US-ASCII (RFC 3461 §4.2, §4.4;
    RFC 4954 §5), so "+0D+0A" cannot smuggle a line break into the DSN fields built from it.
    """
    if not _XTEXT.fullmatch(text):
        raise SMTPError(replies.BAD_ARGUMENTS.with_text("Malformed xtext value"))
    decoded = re.sub(r"\+([0-9A-F]{2})", lambda m: chr(int(m.group(1), 16)), text)
    if not all(" " <= ch <= "~" or ch == "\t" for ch in decoded):
        raise SMTPError(replies.BAD_ARGUMENTS.with_text("xtext value must decode to printable ASCII"))
    return decoded


def _keyword_value(key: str, value: str | None, allowed: tuple[str, ...]) -> str:
    """The upper-cased value of a parameter whose values are keywords. ASCII only: "8B\u0131TMIME"
    (dotless i) is no 8BITMIME, even though Python upper-cases it to one."""
    text = _require_value(key, value)
    if not text.isascii() or text.upper() not in allowed:
        # Echo only a short keyword: replies are printable ASCII, lines at most 512 octets (RFC 5321
        # §4.5.3.1.5).
        shown = f"{key}={text.upper()}" if len(text) <= 20 and _KEYWORD.fullmatch(text) else f"{key} value"
        raise SMTPError(replies.PARAMS_NOT_RECOGNIZED.with_text(f"{shown} not supported"))
    return text.upper()


def _split_params(text: str, *, is_esmtp: bool) -> dict[str, str | None]:
    params: dict[str, str | None] = {}
    words = text.split(" ")
    for word in words:
        if not word:
            continue
        if not is_esmtp:
            # Parameters are an ESMTP feature: a HELO client may not use them (RFC 5321 §4.1.1.11).
            raise SMTPError(replies.PARAMS_NOT_RECOGNIZED)
        key, eq, value = word.partition("=")
        if not _KEYWORD.fullmatch(key) or (eq and not _VALUE.fullmatch(value)):
            raise SMTPError(replies.BAD_ARGUMENTS)
        key = key.upper()
        if key in params:
            shown = f" {key}" if len(key) <= 20 else ""  # replies stay short (RFC 5321 §4.5.3.1.5)
            raise SMTPError(replies.BAD_ARGUMENTS.with_text(f"Duplicate parameter{shown}"))
        params[key] = value if eq else None
    return params


def _split_path(arg: str, prefix: str, *, bad: Reply, **kwargs: bool) -> tuple[Path, str]:
    if arg[: len(prefix)].upper() != prefix:
        raise SMTPError(bad.with_text(f"Syntax: {prefix}<address>"))
    # RFC 5321 has no space after the colon, but many clients send one; it is harmless to accept.
    rest = arg[len(prefix) :].lstrip(" ")
    try:
        path, params = parse_path(rest, **kwargs)
    except AddressError:
        raise SMTPError(bad) from None
    if params and not params.startswith(" "):
        raise SMTPError(bad)
    return path, params


def _require_value(key: str, value: str | None) -> str:
    if value is None:
        raise SMTPError(replies.BAD_ARGUMENTS.with_text(f"{key} needs a value"))
    return value


def _require_ascii_unless_utf8(path: Path, smtputf8: bool) -> None:
    # RFC 6531 §3.4: non-ASCII addresses only in an SMTPUTF8 transaction.
    if path.mailbox is not None and not path.mailbox.is_ascii and not smtputf8:
        raise SMTPError(replies.NEEDS_SMTPUTF8)


def parse_mail(arg: str, *, is_esmtp: bool, max_size: int, has_auth: bool = False) -> tuple[Path, MailParams]:
    """Parse `FROM:<path> [params]` with SIZE, BODY, SMTPUTF8, RET, ENVID (and AUTH=, ignored, when AUTH
    is offered: RFC 4954 §5)."""
    path, rest = _split_path(arg, "FROM:", bad=replies.BAD_SENDER_SYNTAX, allow_null=True)
    raw = _split_params(rest, is_esmtp=is_esmtp)
    size: int | None = None
    body: Body | None = None
    ret: Ret | None = None
    envid: str | None = None
    smtputf8 = False
    for key, value in raw.items():
        match key:
            case "SIZE":
                text = _require_value(key, value)
                if not text.isascii() or not text.isdigit() or len(text) > 20:
                    raise SMTPError(replies.BAD_ARGUMENTS.with_text("SIZE must be a number"))
                size = int(text)
                if size > max_size:  # RFC 1870 §6.1
                    raise SMTPError(replies.SIZE_EXCEEDED)
            case "BODY":
                body = Body(_keyword_value(key, value, ("7BIT", "8BITMIME")))
            case "SMTPUTF8":
                if value is not None:
                    raise SMTPError(replies.BAD_ARGUMENTS.with_text("SMTPUTF8 takes no value"))
                smtputf8 = True
            case "RET":
                text = _require_value(key, value)
                if not text.isascii() or text.upper() not in ("FULL", "HDRS"):
                    raise SMTPError(replies.BAD_ARGUMENTS.with_text("RET must be FULL or HDRS"))
                ret = Ret(text.upper())
            case "ENVID":
                text = _require_value(key, value)
                if len(text) > 100:  # RFC 3461 §4.4
                    raise SMTPError(replies.BAD_ARGUMENTS.with_text("ENVID longer than 100 characters"))
                envid = decode_xtext(text)
            case "AUTH" if has_auth:
                decode_xtext(_require_value(key, value))
            case _:
                raise SMTPError(replies.PARAMS_NOT_RECOGNIZED)
    _require_ascii_unless_utf8(path, smtputf8)
    return path, MailParams(size=size, body=body, smtputf8=smtputf8, ret=ret, envid=envid)


def parse_rcpt(arg: str, *, is_esmtp: bool, smtputf8: bool) -> tuple[Path, RcptParams]:
    """Parse `TO:<path> [params]` with NOTIFY and ORCPT."""
    path, rest = _split_path(arg, "TO:", bad=replies.BAD_RECIPIENT_SYNTAX, allow_postmaster=True)
    raw = _split_params(rest, is_esmtp=is_esmtp)
    notify: frozenset[Notify] = frozenset()
    orcpt: tuple[str, str] | None = None
    for key, value in raw.items():
        match key:
            case "NOTIFY":
                text = _require_value(key, value)
                words = text.upper().split(",")
                if not text.isascii() or any(w not in _NOTIFY_WORDS for w in words) or len(set(words)) != len(words):
                    raise SMTPError(replies.BAD_ARGUMENTS.with_text("Bad NOTIFY value"))
                notify = frozenset(Notify(w) for w in words)
                if Notify.NEVER in notify and len(notify) > 1:  # RFC 3461 §4.1
                    raise SMTPError(replies.BAD_ARGUMENTS.with_text("NOTIFY=NEVER cannot be combined"))
            case "ORCPT":
                addr_type, semi, xtext = _require_value(key, value).partition(";")
                if not semi or not _KEYWORD.fullmatch(addr_type) or not xtext:
                    raise SMTPError(replies.BAD_ARGUMENTS.with_text("Bad ORCPT value"))
                # RFC 6533 §3: a utf-8 ORCPT (utf-8-addr-xtext / unitext) is kept as sent.
                decoded = xtext if addr_type.lower() == "utf-8" else decode_xtext(xtext)
                orcpt = (addr_type.lower(), decoded)
            case _:
                raise SMTPError(replies.PARAMS_NOT_RECOGNIZED)
    if path.is_null:
        raise SMTPError(replies.BAD_RECIPIENT_SYNTAX)
    _require_ascii_unless_utf8(path, smtputf8)
    return path, RcptParams(notify=notify, orcpt=orcpt)


def parse_bdat(arg: str) -> tuple[int, bool]:
    """Parse `chunk-size [LAST]` (RFC 3030 §2); raises SMTPError(BAD_CHUNK_SIZE)."""
    words = arg.split(" ")
    if not 1 <= len(words) <= 2 or not words[0].isascii() or not words[0].isdigit() or len(words[0]) > 18:
        raise SMTPError(replies.BAD_CHUNK_SIZE)
    if len(words) == 2 and words[1].upper() != "LAST":
        raise SMTPError(replies.BAD_CHUNK_SIZE)
    return int(words[0]), len(words) == 2
