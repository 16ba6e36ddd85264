"""The milter protocol's wire format (version 6, as sendmail 8.14's libmilter and Postfix speak it).

Every packet is a 4-byte big-endian length, then that many octets: a command byte and its data. Strings
are NUL-terminated; numbers are 32-bit big-endian (the client port of CONNECT is 16-bit). Nothing here
keeps state across packets except `PacketReader`, whose buffer never holds more than one packet.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable, Sequence

from kartero.mail.replies import Reply, make_printable

VERSION = 6  # the newest milter protocol; Postfix's milter_protocol default

# -- commands, MTA to milter (SMFIC_*) ------------------------------------------------------------------
ABORT = ord("A")
BODY = ord("B")
CONNECT = ord("C")
MACRO = ord("D")
END_OF_MESSAGE = ord("E")  # SMFIC_BODYEOB
HELO = ord("H")
HEADER = ord("L")
MAIL = ord("M")
END_OF_HEADER = ord("N")
OPTNEG = ord("O")
QUIT = ord("Q")
RCPT = ord("R")
DATA = ord("T")
QUIT_NC = ord("K")  # quit, but keep the connection for a new session (sendmail 8.14)

COMMAND_NAMES = {ABORT: "abort", BODY: "body", CONNECT: "connect", MACRO: "macro", END_OF_MESSAGE: "eom",
                 HELO: "helo", HEADER: "header", MAIL: "mail", END_OF_HEADER: "eoh", OPTNEG: "optneg",
                 QUIT: "quit", RCPT: "rcpt", DATA: "data", QUIT_NC: "quit_nc"}  # fmt: skip

# -- replies, milter to MTA (SMFIR_*) -------------------------------------------------------------------
R_ADDRCPT = ord("+")
R_DELRCPT = ord("-")
R_ADDRCPT_PAR = ord("2")
R_SHUTDOWN = ord("4")
R_ACCEPT = ord("a")
R_REPLBODY = ord("b")
R_CONTINUE = ord("c")
R_DISCARD = ord("d")
R_CHGFROM = ord("e")
R_CONN_FAIL = ord("f")
R_ADDHEADER = ord("h")
R_INSHEADER = ord("i")
R_SETSYMLIST = ord("l")
R_CHGHEADER = ord("m")
R_PROGRESS = ord("p")
R_QUARANTINE = ord("q")
R_REJECT = ord("r")
R_SKIP = ord("s")
R_TEMPFAIL = ord("t")
R_REPLYCODE = ord("y")

# -- actions the milter may take at the end of a message (SMFIF_*): we allow them all, as Postfix does ---
F_ADDHDRS = 1 << 0
F_CHGBODY = 1 << 1
F_ADDRCPT = 1 << 2
F_DELRCPT = 1 << 3
F_CHGHDRS = 1 << 4
F_QUARANTINE = 1 << 5
F_CHGFROM = 1 << 6
F_ADDRCPT_PAR = 1 << 7
F_SETSYMLIST = 1 << 8
ACTIONS = (F_ADDHDRS | F_CHGBODY | F_ADDRCPT | F_DELRCPT | F_CHGHDRS | F_QUARANTINE | F_CHGFROM | F_ADDRCPT_PAR
           | F_SETSYMLIST)  # fmt: skip

# -- protocol flags (SMFIP_*): events the milter does not want, replies it will not send ---------------
P_NOCONNECT = 1 << 0
P_NOHELO = 1 << 1
P_NOMAIL = 1 << 2
P_NORCPT = 1 << 3
P_NOBODY = 1 << 4
P_NOHDRS = 1 << 5
P_NOEOH = 1 << 6
P_NR_HDR = 1 << 7
P_NOUNKNOWN = 1 << 8
P_NODATA = 1 << 9
P_SKIP = 1 << 10
P_RCPT_REJ = 1 << 11
P_NR_CONN = 1 << 12
P_NR_HELO = 1 << 13
P_NR_MAIL = 1 << 14
P_NR_RCPT = 1 << 15
P_NR_DATA = 1 << 16
P_NR_UNKN = 1 << 17
P_NR_EOH = 1 << 18
P_NR_BODY = 1 << 19
P_HDR_LEADSPC = 1 << 20
# What we offer: everything of version 6 but RCPT_REJ (we only report recipients policy accepted).
PROTOCOL = ((1 << 21) - 1) & ~P_RCPT_REJ

# Which flag suppresses each event, and which one says the milter will not reply to it.
NO_SEND = {CONNECT: P_NOCONNECT, HELO: P_NOHELO, MAIL: P_NOMAIL, RCPT: P_NORCPT, DATA: P_NODATA,
           HEADER: P_NOHDRS, END_OF_HEADER: P_NOEOH, BODY: P_NOBODY}  # fmt: skip
NO_REPLY = {CONNECT: P_NR_CONN, HELO: P_NR_HELO, MAIL: P_NR_MAIL, RCPT: P_NR_RCPT, DATA: P_NR_DATA,
            HEADER: P_NR_HDR, END_OF_HEADER: P_NR_EOH, BODY: P_NR_BODY}  # fmt: skip

# Address families of CONNECT (SMFIA_*).
FAMILY_UNKNOWN = ord("U")
FAMILY_UNIX = ord("L")
FAMILY_INET = ord("4")
FAMILY_INET6 = ord("6")

# -- macros (SMFIM_*): the classes a milter can ask for in its OPTNEG reply, and Postfix's default lists --
MACRO_STAGES = (CONNECT, HELO, MAIL, RCPT, DATA, END_OF_MESSAGE, END_OF_HEADER)  # SMFIM_ 0..6 in order
DEFAULT_MACROS: dict[int, tuple[str, ...]] = {
    # Postfix's milter_*_macros defaults (postconf -d, 3.7), plus the client macros milters often ask
    # sendmail for at connect, and the TLS ones again at MAIL: our HELO phase runs before the session's
    # TLS state reaches the filter (the transaction carries it), and libmilter finds a macro of any
    # earlier stage, so a milter asking for {tls_version} at MAIL or later sees it as with Postfix.
    CONNECT: ("j", "{daemon_name}", "{daemon_addr}", "v", "_", "{client_addr}", "{client_port}",
              "{client_name}", "{client_ptr}", "{client_resolve}", "{client_connections}"),
    HELO: ("{tls_version}", "{cipher}", "{cipher_bits}", "{cert_subject}", "{cert_issuer}"),
    MAIL: ("i", "{auth_type}", "{auth_authen}", "{auth_author}", "{mail_addr}", "{mail_host}", "{mail_mailer}",
           "{tls_version}", "{cipher}", "{cipher_bits}", "{cert_subject}"),
    RCPT: ("i", "{rcpt_addr}", "{rcpt_host}", "{rcpt_mailer}"),
    DATA: ("i",),
    END_OF_HEADER: ("i",),
    END_OF_MESSAGE: ("i",),
}  # fmt: skip
MAX_MACRO_NAMES = 64  # per stage in a milter's own list: more is no milter we know, only a flood
MAX_MACRO_NAME = 64

BODY_CHUNK = 65535  # Postfix's MILTER_CHUNK_SIZE; libmilter refuses bigger BODY packets


class ProtocolError(Exception):
    """The milter sent something this protocol does not allow; the connection is no longer usable."""


# -- building packets -------------------------------------------------------------------------------------


def packet(command: int, data: bytes = b"") -> bytes:
    return struct.pack(">IB", len(data) + 1, command) + data


def cstring(text: str | bytes) -> bytes:
    """`text` NUL-terminated. A NUL inside would end the string early on the milter's side and shift
    every field after it, so it is dropped (a header value or address cannot carry one into a milter)."""
    raw = text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text
    return raw.replace(b"\0", b"") + b"\0"


def optneg(version: int = VERSION, actions: int = ACTIONS, protocol: int = PROTOCOL) -> bytes:
    return packet(OPTNEG, struct.pack(">III", version, actions, protocol))


def macros(stage: int, pairs: Iterable[tuple[str, str]]) -> bytes:
    return packet(MACRO, bytes([stage]) + b"".join(cstring(n) + cstring(v) for n, v in pairs))


def strings(command: int, args: Sequence[str | bytes]) -> bytes:
    return packet(command, b"".join(cstring(a) for a in args))


def connect(hostname: str, family: int, port: int, address: str) -> bytes:
    if family == FAMILY_UNKNOWN:
        return packet(CONNECT, cstring(hostname) + bytes([family]))
    return packet(CONNECT, cstring(hostname) + bytes([family]) + struct.pack(">H", port) + cstring(address))


# -- reading packets ----------------------------------------------------------------------------------------


class PacketReader:
    """Splits the milter's byte stream into (command, data) packets. A length of 0 or over `max_bytes` is
    a protocol error as soon as the 4 length octets are in, so a hostile length never makes us buffer."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._buffer = bytearray()
        self._start = 0  # consumed prefix, dropped in one go (no quadratic re-slicing per packet)

    def feed(self, data: bytes) -> None:
        self._buffer += data

    @property
    def pending(self) -> int:
        return len(self._buffer) - self._start

    def next_packet(self) -> tuple[int, bytes] | None:
        """The next whole packet, or None until more bytes come. Raises ProtocolError."""
        buf, start = self._buffer, self._start
        if len(buf) - start < 4:
            self._compact()
            return None
        (length,) = struct.unpack_from(">I", buf, start)
        if length < 1:
            raise ProtocolError("packet of length 0")
        if length > self.max_bytes:
            raise ProtocolError(f"packet of {length} octets (limit {self.max_bytes})")
        if len(buf) - start < 4 + length:
            self._compact()
            return None
        command = buf[start + 4]
        data = bytes(buf[start + 5 : start + 4 + length])
        self._start = start + 4 + length
        return command, data

    def _compact(self) -> None:
        if self._start:
            del self._buffer[: self._start]
            self._start = 0


class Fields:
    """Reads the typed fields of one reply's data, in order; any shortfall is a ProtocolError."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def uint32(self) -> int:
        if len(self.data) - self.pos < 4:
            raise ProtocolError("reply too short for a number")
        (value,) = struct.unpack_from(">I", self.data, self.pos)
        self.pos += 4
        return int(value)

    def string(self) -> bytes:
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise ProtocolError("string without its NUL terminator")
        value = self.data[self.pos : end]
        self.pos = end + 1
        return value

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos

    def end(self) -> None:
        if self.pos != len(self.data):
            raise ProtocolError(f"{len(self.data) - self.pos} octets left over in a reply")


def parse_macro_lists(fields: Fields) -> dict[int, tuple[str, ...]]:
    """The macro lists after an OPTNEG reply (SMFIF_SETSYMLIST): (class, "name name ...") pairs. Classes we
    do not know are ignored, as Postfix does."""
    lists: dict[int, tuple[str, ...]] = {}
    while fields.remaining:
        stage_index = fields.uint32()
        raw = fields.string()
        names = tuple(raw.decode("ascii", "replace").replace(",", " ").split())
        if len(names) > MAX_MACRO_NAMES or any(len(n) > MAX_MACRO_NAME for n in names):
            raise ProtocolError("macro list too long")
        if stage_index < len(MACRO_STAGES):
            lists[MACRO_STAGES[stage_index]] = names
    return lists


_REPLY_LINE = re.compile(r"([45]\d\d)([ -])(?:([45]\.\d{1,3}\.\d{1,3})(?: |$))?(.*)", re.DOTALL)
MAX_REPLY_BYTES = 4096  # SMFIR_REPLYCODE text; an SMTP reply of more is no reply a client reads


def parse_replycode(data: bytes) -> Reply:
    """The reply of SMFIR_REPLYCODE ("550 5.7.1 text", lines joined by CRLF) as a Reply. Postfix's checks:
    a 4xx or 5xx code, then a space or hyphen, then the same class digit (an enhanced code); "%%" is a
    literal "%" (sendmail uses the text as a format string) and any other "%" is dropped."""
    if data.endswith(b"\0"):
        data = data[:-1]
    if len(data) > MAX_REPLY_BYTES or b"\0" in data:
        raise ProtocolError("reply code text too long or with a NUL")
    text = data.decode("ascii", "replace")
    # An enhanced code is optional (libmilter's smfi_setreply with none sends "550 text"); one that is
    # there must be of the reply's class, as Postfix checks it.
    if len(text) < 4 or text[0] not in "45" or (len(text) > 4 and text[4].isdigit() and text[4] != text[0]):
        raise ProtocolError(f"malformed reply {make_printable(text[:80])!r}")
    code: int | None = None
    enhanced: str | None = None
    lines: list[str] = []
    for line in text.rstrip("\r\n").split("\r\n"):
        match = _REPLY_LINE.fullmatch(line)
        if match is None or (code is not None and int(match[1]) != code):
            raise ProtocolError(f"malformed reply line {make_printable(line[:80])!r}")
        if code is None:
            code, enhanced = int(match[1]), match[3]
        lines.append(make_printable(_unpercent(match[4])))
    assert code is not None
    if enhanced is not None and enhanced[0] != str(code)[0]:
        raise ProtocolError(f"enhanced code {enhanced} does not match {code}")
    # Our replies always carry an enhanced code (RFC 2034 §3): the class's "policy" one when the milter
    # gave none; an empty text gets Postfix's default for the class.
    text = "\n".join(lines) if any(lines) else DEFAULT_TEXTS[code // 100]
    return Reply(code, enhanced or f"{code // 100}.7.1", text)


DEFAULT_TEXTS = {4: "Service unavailable - try again later", 5: "Command rejected"}


def _unpercent(text: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "%":  # Postfix keeps the character after a "%": "%%" -> "%", "%s" -> "s"
            out.append(text[i + 1 : i + 2])
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out)
