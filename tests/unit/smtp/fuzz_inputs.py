"""Fuzz inputs for the SMTP server and client cores, the adapters that play them, and the checks.

Generators build hostile but grammar-aware input: real verbs in any case, paths with quoted strings,
source routes, address literals, UTF-8 and huge labels, every ESMTP parameter (with xtext), DATA bodies
with dot lines and bare CR/LF, BDAT chunks with right and wrong sizes, AUTH with SASL exchanges,
STARTTLS, overlong lines, NUL and invalid UTF-8. Drivers play the adapter (each decision accepted or
refused at random) and return what came out; `check_*` assert the output is well-formed. Shared by the
hypothesis tests and bench/fuzz_cores.py.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from kartero.mail import replies
from kartero.smtp.client import (
    MAX_REPLY_LINE,
    ClientConnection,
    ClientSettings,
    ClientState,
    Closed,
    MessageResult,
    OutgoingMessage,
    OutgoingRecipient,
    Ready,
    SessionFailed,
    StartTLSReady,
)
from kartero.smtp.commands import MAX_BUFFERED_AUTH_LINE
from kartero.smtp.data import MAX_TEXT_LINE
from kartero.smtp.events import (
    AuthRequested,
    ConnectionClosed,
    MailFrom,
    MessageReceived,
    RcptTo,
    ScramFinished,
    ScramRequested,
    StartTLSRequested,
)
from kartero.smtp.server import ServerConnection, ServerSettings
from tests.unit.auth.sasl_inputs import (
    PASSWORD,
    SCRAM,
    SERVER_NONCE,
    Chooser,
    b64,
    chance,
    choice,
    plain_message,
    scram_exchange,
    user,
    word,
)

MX_SETTINGS = ServerSettings(hostname="mx.example.test", max_message_size=10_000, max_errors=50,
                             is_tls_available=True)  # fmt: skip
SUBMISSION_SETTINGS = ServerSettings(
    hostname="mx.example.test",
    max_message_size=10_000,
    max_errors=50,
    is_tls_available=True,
    auth_mechanisms=("PLAIN", "LOGIN", "SCRAM-SHA-256"),
    is_auth_required=True,
)
# What the client core may hold unprocessed: one partial reply line.
MAX_CLIENT_BUFFER = MAX_REPLY_LINE
# What the core may hold unprocessed once the adapter has answered everything: one partial command line
# (AUTH lines are the longest, RFC 4954 §4), whatever arrived.
MAX_SERVER_BUFFER = MAX_BUFFERED_AUTH_LINE

# -- pieces of the grammar -----------------------------------------------------------------------------

ATEXT = "abcXYZ0189!#$%&'*+/=?^_`{|}~-"
LDH = "abz09-"
UNICODE = "éü例え\u00a0\u2028\u0130\u017f"
NOISE = "<>@:;,.\"\\[] ()\t\0\x7f" + UNICODE
EOLS = [b"\r\n", b"\n", b"\r", b"", b"\r\r\n", b"\n\r", b"\0\r\n"]


def eol(c: Chooser) -> bytes:
    return b"\r\n" if not chance(c, 10) else choice(c, EOLS)


def cased(c: Chooser, text: str) -> str:
    """`text` in any letter case, or with Unicode letters whose upper case is ASCII (\u017f, \u0131)."""
    match c.integer(0, 4):
        case 0 | 1:
            return text
        case 2:
            return text.lower()
        case 3:
            mask = c.integer(0, 2 ** len(text) - 1)
            return "".join(ch.lower() if mask >> i & 1 else ch for i, ch in enumerate(text))
    return text.replace("S", "\u017f").replace("I", "\u0131")


def domain(c: Chooser) -> str:
    match c.integer(0, 10):
        case 0:
            return "example.test"
        case 1:
            return ".".join(word(c, LDH + "é", 8) for _ in range(c.integer(1, 4)))
        case 2:
            return choice(c, ["[192.0.2.1]", "[127.0.0.1]", "[1.2.3]", "[999.1.1.1]", "[1.2.3.4.5]", "[]"])
        case 3:
            addr = choice(c, ["::1", "2001:db8::1", "fe80::1%eth0", "1::2::3", "g::1", "::ffff:1.2.3.4", ""])
            return f"[{cased(c, 'IPv6')}:{addr}]"
        case 4:
            return "a" * c.integer(60, 5000) + choice(c, ["", ".test"])
        case 5:
            return "a." * c.integer(10, 3000) + "test"
        case 6:
            return choice(c, ["bücher.test", "例え.テスト", "xn--bcher-kva.test", "xn--zz.test", "\u017f.test"])
        case 7:
            return choice(c, ["example.test.", "-bad-.test", "a..b", "", ".", "a_b.test", "[x:y]"])
        case 8:
            return "ä" * c.integer(100, 3000)
        case 9:
            return "[" + word(c, "0123456789.:abcdefIPv6[]", 40) + "]"
    return word(c, ATEXT + NOISE, 20)


def local_part(c: Chooser) -> str:
    match c.integer(0, 9):
        case 0:
            return "alice"
        case 1:
            return word(c, ATEXT, 12) or "x"
        case 2:
            inner = "".join(choice(c, ['a', ' ', '\\"', '\\\\', "@", ",", "é", "\\é", "\t", "\\\t"])
                            for _ in range(c.integer(0, 12)))  # fmt: skip
            return f'"{inner}"'
        case 3:
            return "a" * c.integer(60, 3000)
        case 4:
            return choice(c, ["a.b", ".a", "a.", "a..b", "a.b.c.d.e"])
        case 5:
            return choice(c, ["jörg", "例え", "\u017f"])
        case 6:
            return cased(c, "postmaster")
        case 7:
            return choice(c, ["a%b", "a!b", '"a@b"', "a@b"])
        case 8:
            return '"' + "\\" * c.integer(1, 2000) + choice(c, ['"', ""])
    return word(c, ATEXT + NOISE, 16)


VALID_PATHS = ["<alice@example.test>", "<>", "<b@[192.0.2.1]>", '<"a b"@example.test>', "<@a.test:c@d.test>"]


def path(c: Chooser) -> str:
    """A path; valid half of the time, so that the parameters behind it get parsed too."""
    if chance(c, 50):
        return choice(c, VALID_PATHS)
    mailbox = f"{local_part(c)}@{domain(c)}"
    match c.integer(0, 9):
        case 0 | 1:
            return f"<{mailbox}>"
        case 2:
            return "<>"
        case 3:
            return cased(c, "<Postmaster>")
        case 4:
            route = ",".join("@" + domain(c) for _ in range(c.integer(1, 3)))
            return f"<{route}:{mailbox}>"
        case 5:
            return "<" + ",@a" * c.integer(1, 2000) + f":{mailbox}>"
        case 6:
            return mailbox
        case 7:
            return f"<{mailbox}"
        case 8:
            return choice(c, [f"<<{mailbox}>>", f"< {mailbox} >", f"<{mailbox}> ", "<", "<@>", "<@a:>"])
    return "<" + word(c, ATEXT + NOISE, 30) + ">"


def xtext(c: Chooser) -> str:
    """RFC 3461 §4 xtext, right or wrong: +XX escapes (lower case, short, of controls and CRLF)."""
    if chance(c, 5):
        return "+41" * c.integer(1, 600)
    pieces = ["a", "+2B", "+3D", "+20", "+0D+0A", "+00", "+FF", "+7f", "+2", "+", "+G1", "é", "=", "Q", "<>"]
    return "".join(choice(c, pieces) for _ in range(c.integer(0, 8)))


def number(c: Chooser) -> str:
    return choice(c, ["1", "0", "10000", "10001", "9" * 30, "-1", "1e3", "\u0661٢", "²", "", "0x10", " 5", "05"])


def mail_param(c: Chooser) -> str:
    key = cased(c, choice(c, ["SIZE", "BODY", "SMTPUTF8", "RET", "ENVID", "AUTH", "NOTIFY", "ORCPT", "X-Y"]))
    match c.integer(0, 9):
        case 0 | 1:
            return f"{key}={number(c)}"
        case 2 | 3:
            values = ["7BIT", "8BITMIME", "BINARYMIME", "FULL", "HDRS", "8B\u0131TMIME", "HDR\u017f", "É", "x" * 900,
                      "\u00e9", "7bit\u00e9", "\ufb00"]  # fmt: skip
            value = choice(c, values)
            return f"{key}={cased(c, value)}"
        case 4 | 5:
            return f"{key}={xtext(c)}"
        case 6:
            return key
        case 7:
            return choice(c, ["=", "==", f"{key}=", f"{key}==x", "é=1", "-X=1", f"{key}=1 {key}=2", "A" * 1200])
    return f"{word(c, 'AZ09-=é', 10)}={word(c, ATEXT + NOISE, 10)}"


def rcpt_param(c: Chooser) -> str:
    match c.integer(0, 5):
        case 0 | 1:
            words = ["NEVER", "SUCCESS", "FAILURE", "DELAY", "never", "X", "", "\u017fUCCESS"]
            return cased(c, "NOTIFY") + "=" + ",".join(choice(c, words) for _ in range(c.integer(0, 4)))
        case 2 | 3:
            addr_type = choice(c, ["rfc822", "utf-8", "RFC822", "x-y", "", "é", "rfc822;x"])
            separator = choice(c, [";", "", ";;"])
            address = xtext(c) if chance(c, 70) else local_part(c) + "@" + domain(c)
            return f"{cased(c, 'ORCPT')}={addr_type}{separator}{address}"
    return mail_param(c)


VALID_MAIL_PARAMS = ["SIZE=100", "BODY=8BITMIME", "BODY=7BIT", "SMTPUTF8", "RET=HDRS", "ENVID=a+2Bb", "AUTH=<>"]
VALID_RCPT_PARAMS = ["NOTIFY=SUCCESS,FAILURE", "NOTIFY=NEVER", "ORCPT=rfc822;a+2Bb@example.test"]


def params(c: Chooser, *, is_rcpt: bool = False) -> str:
    """Up to four parameters, mostly valid ones around a fuzzed one (so that parsing reaches it)."""
    out = ""
    for _ in range(c.integer(0, 4)):
        if chance(c, 60):
            param = choice(c, VALID_RCPT_PARAMS if is_rcpt else VALID_MAIL_PARAMS)
        else:
            param = rcpt_param(c) if is_rcpt else mail_param(c)
        out += (" " if not chance(c, 10) else choice(c, ["  ", "\t"])) + param
    return out


def body(c: Chooser) -> bytes:
    """A DATA body as sent: dot lines, long lines, bare CR/LF, 8-bit; mostly with its terminator."""
    if chance(c, 3):
        data = b"x" * c.integer(9_000, 25_000)  # around the size limit
    else:
        lines = []
        for _ in range(c.integer(0, 6)):
            line = choice(c, [b"text", b".", b"..", b".x", b"", b"x" * c.integer(990, 1010), b"\xe9\x00\xff",
                              word(c, "ab .\r\n\0", 10).encode(), b"x" * c.integer(1000, 4000)])  # fmt: skip
            lines.append(line + eol(c))
        data = b"".join(lines)
    terminator = b".\r\n" if not chance(c, 20) else choice(c, [b"", b"\n.\n", b"\r.\r", b".\n", b"\r\n.\r\n"])
    return data + terminator


def bdat(c: Chooser) -> bytes:
    chunk = body(c) if chance(c, 50) else c.binary(40)
    size = str(len(chunk)) if chance(c, 70) else choice(c, [str(c.integer(0, 60)), "9" * 19, "-1", "", "x"])
    last = choice(c, ["", " LAST", " last", " LAST extra", "  LAST", " \u013fAST"])
    return f"{cased(c, 'BDAT')} {size}{last}".encode() + eol(c) + chunk


def sasl_response(c: Chooser, mechanism: str) -> list[bytes]:
    """The lines (base64 or not) a client sends after AUTH <mechanism>."""
    match mechanism:
        case "PLAIN":
            messages = [plain_message(c)]
        case "LOGIN":
            messages = [user(c).encode(), choice(c, [PASSWORD, "wrong", ""]).encode()]
        case "SCRAM-SHA-256":
            messages = scram_exchange(c)
        case _:
            messages = [c.binary(20)]
    lines = [b64(m) for m in messages]
    for i in range(len(lines)):
        if chance(c, 10):
            lines[i] = choice(c, [b"*", b"", b"=", b"!!", b64(c.binary(30)), b"QQ==QQ==", b"A" * c.integer(1, 20_000)])
    return lines[: c.integer(0, len(lines))] if chance(c, 20) else lines


def auth(c: Chooser) -> bytes:
    mechanism = choice(c, ["PLAIN", "LOGIN", "SCRAM-SHA-256", "CRAM-MD5", "", "plain", "GSSAPI"])
    lines = sasl_response(c, mechanism.upper())
    command = f"{cased(c, 'AUTH')} {mechanism}".encode()
    if lines and chance(c, 50):  # the first response as the initial response (RFC 4954 §4)
        first = lines.pop(0)
        command += b" " + (first or b"=")
    if chance(c, 5):
        command += b" extra"
    return command + eol(c) + b"".join(line + eol(c) for line in lines)


def command(c: Chooser) -> bytes:
    """One client command (with its data, chunk or SASL lines), right or wrong."""
    match c.integer(0, 16):
        case 0 | 1:
            verb = cased(c, choice(c, ["EHLO", "HELO"]))
            name = choice(c, ["client.example", "[192.0.2.1]", "x", "", "a_b", "bad name", "é.test", "a" * 300])
            line = f"{verb} {name}"
        case 2 | 3:
            # After RSET, so that a MAIL accepted earlier does not stop this one before its parameters.
            reset = "RSET\r\n" if chance(c, 50) else ""
            line = f"{reset}{cased(c, 'MAIL')} {cased(c, 'FROM:')}{choice(c, ['', ' '])}{path(c)}{params(c)}"
        case 4 | 5:
            line = f"{cased(c, 'RCPT')} {cased(c, 'TO:')}{choice(c, ['', ' '])}{path(c)}{params(c, is_rcpt=True)}"
        case 6 | 7:
            return cased(c, "DATA").encode() + choice(c, [b"", b" x"]) + eol(c) + body(c)
        case 8:
            return bdat(c)
        case 9:
            return auth(c)
        case 10:
            line = cased(c, "STARTTLS") + choice(c, ["", " x"])
        case 11:
            verb = choice(c, ["RSET", "NOOP", "QUIT", "VRFY", "EXPN", "HELP"])
            line = cased(c, verb) + choice(c, ["", " x", " <a@b>", " é"])
        case 12:
            line = choice(c, ["GET / HTTP/1.1", "POST /", "CONNECT a:25", "XCLIENT ADDR=1.2.3.4", "LHLO x", "", " "])
        case 13:
            return choice(c, [b"A", b"NOOP ", b"MAIL FROM:<a@b> ", b"\xff"]) * c.integer(500, 20_000) + eol(c)
        case 14:
            return c.binary(60)
        case 15:
            line = word(c, ATEXT + NOISE, 30)
        case _:
            line = choice(c, ["EHLO client.example", "MAIL FROM:<a@example.org>", "RCPT TO:<bob@example.test>"])
    data = line.encode("utf-8", "surrogatepass")
    if chance(c, 3):
        data = data.replace(b"\xc3", b"\xc3\xc3")  # invalid UTF-8
    return data + eol(c)


LOGIN = b"AUTH PLAIN " + b64(f"\0alice@example.test\0{PASSWORD}") + b"\r\n"


def smtp_session(c: Chooser) -> bytes:
    """A whole client side: mostly EHLO and a login first (so that MAIL gets parsed on submission too),
    then some commands."""
    pieces = [b"EHLO client.example\r\n"] if chance(c, 80) else []
    if chance(c, 50):
        pieces.append(LOGIN)
    pieces += [command(c) for _ in range(c.integer(0, 8))]
    return b"".join(pieces)


def parameter_session(c: Chooser) -> bytes:
    """EHLO, a login, then MAIL and RCPT with valid paths and a fuzzed parameter each: the ESMTP
    parameter parsers at a higher rate than whole sessions reach them."""
    mail = f"MAIL FROM:{choice(c, VALID_PATHS[:3])}{params(c)} {mail_param(c)}"
    rcpt = f"RCPT TO:<bob@example.test>{params(c, is_rcpt=True)} {rcpt_param(c)}"
    return b"EHLO client.example\r\n" + LOGIN + f"{mail}\r\n{rcpt}\r\n".encode()


def split(c: Chooser, data: bytes) -> list[bytes]:
    """`data` cut at random points (or byte by byte), as the network may deliver it."""
    if len(data) <= 3000 and chance(c, 3):
        return [data[i : i + 1] for i in range(len(data))]
    cuts = sorted({c.integer(0, len(data)) for _ in range(c.integer(0, 6))})
    return [data[i:j] for i, j in zip([0, *cuts], [*cuts, len(data)], strict=True) if j > i]


# -- the server side -----------------------------------------------------------------------------------


@dataclass
class ServerRun:
    output: bytes
    events: list[object] = field(default_factory=list)
    max_buffered: int = 0


def decide(conn: ServerConnection, event: object, rng: random.Random) -> bool:
    """Answer a decision as the adapter would, at random; True when it asks for the TLS handshake."""
    match event:
        case MailFrom():
            conn.answer(rng.choice([replies.SENDER_OK] * 3 + [replies.LOCAL_ERROR, replies.SENDER_NOT_OWNED]))
        case RcptTo():
            conn.answer(rng.choice([replies.RECIPIENT_OK] * 3 + [replies.NO_SUCH_USER, replies.GREYLISTED]))
        case MessageReceived(data=data):
            # Smuggling defence: whatever was accepted has CRLF line ends only and RFC 5321 line lengths.
            assert data.count(b"\n") == data.count(b"\r\n") == data.count(b"\r"), data[:200]
            assert max(map(len, data.split(b"\r\n"))) <= MAX_TEXT_LINE
            assert len(data) <= conn.settings.max_message_size
            conn.answer(rng.choice([replies.MESSAGE_ACCEPTED] * 3 + [replies.LOCAL_ERROR, replies.DMARC_REJECTED]))
        case AuthRequested(user=name, password=secret):
            ok = secret == PASSWORD and rng.random() < 0.8
            conn.auth_result(name if ok else None, None if rng.random() < 0.8 else replies.AUTH_THROTTLED)
        case ScramRequested():
            conn.scram_credentials(SCRAM)
        case ScramFinished(user=name, ok=ok):
            conn.auth_result(name if ok and rng.random() < 0.9 else None)
        case StartTLSRequested():
            return True
    return False


def drive_server(
    chunks: list[bytes], *, settings: ServerSettings, is_tls: bool, seed: int, defer_tls: bool
) -> ServerRun:
    """Feed `chunks` then EOF to a fresh server core, answering every decision at random (seeded).

    With `defer_tls` the handshake finishes only after all input (bytes meanwhile are dropped), so the
    output cannot depend on where the input was cut; otherwise it finishes at once.
    """
    rng = random.Random(seed)
    conn = ServerConnection(settings, is_tls=is_tls, sasl_nonce=SERVER_NONCE)
    conn.start()
    run = ServerRun(conn.data_to_send())
    out = bytearray(run.output)
    tls_pending = False

    def drain() -> None:
        nonlocal tls_pending
        while (event := conn.next_event()) is not None:
            run.events.append(event)
            if decide(conn, event, rng):
                if defer_tls:
                    tls_pending = True
                else:
                    conn.tls_established()
        run.max_buffered = max(run.max_buffered, conn.buffered_bytes)
        out.extend(conn.data_to_send())

    for chunk in [*chunks, b""]:
        conn.receive_data(chunk)
        drain()
    if tls_pending:
        conn.tls_established()
        drain()
    run.output = bytes(out)
    assert conn.is_closed
    assert [e for e in run.events if isinstance(e, ConnectionClosed)] == run.events[-1:], run.events[-3:]
    return run


_SMTP_LINE = re.compile(rb"([2-5][0-9][0-9])([ -])([\x20-\x7e]*)")
_ENHANCED = re.compile(rb"([245])\.[0-9]{1,3}\.[0-9]{1,3} ")


def check_smtp_replies(output: bytes) -> int:
    """Assert `output` is nothing but SMTP replies (RFC 5321 §4.2): `ddd SP text CRLF`, multi-line as
    `ddd-text` lines of one code, each line at most 512 octets (§4.5.3.1.5), enhanced status codes of the
    reply's class on every reply but the greeting, EHLO/HELO, 334 and 354 (RFC 2034 §3). Returns the
    number of replies."""
    assert output.endswith(b"\r\n"), output[-80:]
    count = 0
    code: bytes | None = None
    for line in output[:-2].split(b"\r\n"):
        m = _SMTP_LINE.fullmatch(line)
        assert m is not None, line[:200]
        assert len(line) + 2 <= 512, line[:80]
        assert code is None or m.group(1) == code, line[:200]
        if m.group(1) not in (b"220", b"250", b"334", b"354"):
            enhanced = _ENHANCED.match(m.group(3))
            assert enhanced is not None and enhanced.group(1) == m.group(1)[:1], line[:200]
        if m.group(1) == b"334":
            assert re.fullmatch(rb"[A-Za-z0-9+/]*={0,2}", m.group(3)), line[:200]
        code = m.group(1) if m.group(2) == b"-" else None
        count += m.group(2) == b" "
    assert code is None, "unfinished multi-line reply"
    return count


@dataclass(frozen=True, slots=True)
class ServerCase:
    """One generated input for the server core and how it is played."""

    data: bytes
    chunks: list[bytes]
    submission: bool
    is_tls: bool
    seed: int  # of the decisions
    defer_tls: bool


def server_case(c: Chooser) -> ServerCase:
    submission = chance(c, 50)
    data = smtp_session(c) if not chance(c, 20) else parameter_session(c)
    chunks = split(c, data)
    return ServerCase(data, chunks, submission, submission and chance(c, 80), c.integer(0, 2**32), chance(c, 50))


def play_server(case: ServerCase) -> ServerRun:
    """Play a case and check the outcome: the fuzz step of the tests and of the bench."""
    settings = SUBMISSION_SETTINGS if case.submission else MX_SETTINGS
    run = drive_server(case.chunks, settings=settings, is_tls=case.is_tls, seed=case.seed, defer_tls=case.defer_tls)
    check_smtp_replies(run.output)
    assert run.max_buffered <= MAX_SERVER_BUFFER, run.max_buffered
    return run


def run_server_input(c: Chooser) -> ServerRun:
    return play_server(server_case(c))


# -- the client side -----------------------------------------------------------------------------------

CLIENT_SETTINGS = ClientSettings(helo="mx.example.test")
EXTENSIONS = ["PIPELINING", "SIZE 10000", "SIZE", "SIZE 1", "SIZE " + "9" * 5000, "SIZE \u0661٢", "SIZE -1", "8BITMIME",
              "SMTPUTF8", "CHUNKING", "DSN", "STARTTLS", "ENHANCEDSTATUSCODES", "AUTH PLAIN", "X" * 300, "",
              "pipelining", "SIZE 99999999999999999999999"]  # fmt: skip
REPLY_TEXTS = ["ok", "2.0.0 ok", "5.1.1 no such user", "4.2.1 later", "2.\u0661.0 digits", "5.0.0", "", "x" * 600,
               "\xe9\x00\x7f", "2.0.0 \u2028 sep", "9.9.9 bad class", "5.7.1"]  # fmt: skip
CODES = ["250", "220", "354", "550", "451", "221", "334", "553", "500", "199", "600", "2500", "25", "abc", "452"]


def reply(c: Chooser, code: str) -> bytes:
    """One server reply: usually `code`, multi-line or not; sometimes malformed."""
    if chance(c, 15):
        code = choice(c, CODES)
    lines = [choice(c, REPLY_TEXTS) for _ in range(c.integer(1, 3) if chance(c, 30) else 1)]
    if chance(c, 2):
        lines = ["x"] * c.integer(150, 260)
    out = b""
    for i, text in enumerate(lines):
        separator = "-" if i < len(lines) - 1 else " "
        if chance(c, 5):
            separator = choice(c, ["", "-", "x", "  "])
        out += f"{code}{separator}{text}".encode("utf-8", "surrogatepass") + eol(c)
    if chance(c, 3):
        out = out.replace(b"\xc3", b"\xff")
    if chance(c, 2):
        out = b"250 " + b"x" * c.integer(4000, 70_000) + b"\r\n"
    return out


def ehlo_reply(c: Chooser) -> bytes:
    extensions = [choice(c, EXTENSIONS) for _ in range(c.integer(0, 7))]
    lines = ["mx.remote.test hello", *extensions]
    code = "250" if chance(c, 85) else choice(c, CODES)
    return b"".join(
        f"{code}{'-' if i < len(lines) - 1 else ' '}{line}\r\n".encode() for i, line in enumerate(lines)
    )


def server_script(c: Chooser) -> bytes:
    """A remote server's whole side: greeting, EHLO reply (again after STARTTLS), then replies to MAIL,
    RCPT, DATA, the body, RSET and QUIT as a pipelining client expects them, or not."""
    out = reply(c, "220")
    out += ehlo_reply(c)
    if chance(c, 20):
        out += reply(c, "220") + ehlo_reply(c)
    for _ in range(c.integer(0, 10)):
        out += reply(c, choice(c, ["250", "250", "354", "550", "451", "221"]))
    if chance(c, 5):
        out += c.binary(60)
    return out


def outgoing(c: Chooser) -> OutgoingMessage:
    recipients = tuple(
        OutgoingRecipient(
            choice(c, ["bob@b.test", "x@b.test", "jörg@b.test"]),
            choice(c, [(), ("SUCCESS", "FAILURE"), ("NEVER",)]),
            choice(c, [None, "rfc822;bob@b.test", "rfc822;a+b=c@b.test", "utf-8;jörg@b.test"]),
        )
        for _ in range(c.integer(1, 3))
    )
    data = choice(c, [b"Subject: hi\r\n\r\nbody\r\n", b".\r\n..\r\n.x", b"", b"x" * 20_000, b"a\r\n.\r\nb"])
    return OutgoingMessage(
        choice(c, ["alice@a.test", "", "josé@a.test"]),
        recipients,
        data,
        needs_smtputf8=chance(c, 20),
        is_8bit=chance(c, 20),
        ret=choice(c, [None, "HDRS", "FULL"]),
        envid=choice(c, [None, "id+1=2", "é x"]),
    )


@dataclass
class ClientRun:
    output: bytes
    events: list[object] = field(default_factory=list)
    max_buffered: int = 0


def drive_client(chunks: list[bytes], messages: list[OutgoingMessage], *, defer_tls: bool) -> ClientRun:
    """Feed a remote server's `chunks` then EOF to a fresh client core, playing the delivery agent:
    on Ready or a result, the next message (or QUIT when none is left)."""
    conn = ClientConnection(CLIENT_SETTINGS)
    queue = list(messages)
    run = ClientRun(b"")
    out = bytearray()
    tls_pending = False
    in_transaction: OutgoingMessage | None = None

    def send_next() -> None:
        nonlocal in_transaction
        in_transaction = None
        while queue:
            message = queue.pop(0)
            result = conn.send_message(message)
            if result is None:
                in_transaction = message
                return
            assert len(result.replies) == len(message.recipients)
            run.events.append(result)
        conn.quit()

    def drain() -> None:
        nonlocal tls_pending
        while (event := conn.next_event()) is not None:
            run.events.append(event)
            match event:
                case StartTLSReady():
                    if defer_tls:
                        tls_pending = True
                    else:
                        conn.tls_established()
                case MessageResult(replies=results):
                    assert in_transaction is not None
                    assert len(results) == len(in_transaction.recipients)
                    send_next()
                case Ready():
                    send_next()
                case SessionFailed() | Closed():
                    pass
            for item in (getattr(event, "replies", ()) or (getattr(event, "reply", None),)):
                if item is not None:
                    item.to_bytes()  # every reply the agent may log, store or put in a DSN is valid
        run.max_buffered = max(run.max_buffered, conn.buffered_bytes)
        out.extend(conn.data_to_send())

    for chunk in [*chunks, b""]:
        conn.receive_data(chunk)
        drain()
    if tls_pending and conn.state is ClientState.AWAITING_TLS:  # else the peer's EOF ended the session
        conn.tls_established()
        drain()
    run.output = bytes(out)
    assert conn.state is ClientState.CLOSED, conn.state
    return run


@dataclass(frozen=True, slots=True)
class ClientCase:
    """One generated remote server for the client core, and the messages the agent has for it."""

    data: bytes
    chunks: list[bytes]
    messages: list[OutgoingMessage]
    defer_tls: bool


def client_case(c: Chooser) -> ClientCase:
    data = server_script(c)
    messages = [outgoing(c) for _ in range(c.integer(0, 3))]
    return ClientCase(data, split(c, data), messages, chance(c, 50))


def play_client(case: ClientCase) -> ClientRun:
    run = drive_client(case.chunks, case.messages, defer_tls=case.defer_tls)
    assert run.max_buffered <= MAX_CLIENT_BUFFER, run.max_buffered
    return run


def run_client_input(c: Chooser) -> ClientRun:
    return play_client(client_case(c))

