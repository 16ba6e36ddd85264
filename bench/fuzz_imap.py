"""Fuzzing the IMAP core (and a sample through the command handlers over a real store), for a long run by
hand; the test suite runs a short version (tests/unit/imap/test_fuzz.py).

    python bench/fuzz_imap.py                          # 1,000,000 inputs, one in 200 through the handlers
    python bench/fuzz_imap.py --inputs 20000 --seed 3 --handlers-every 10

An input is one session: random bytes, a grammar-aware sequence of commands (real command names, tags,
literals of every kind and wrong sizes, parentheses nested past the limit, huge sequence sets and numbers,
odd mailbox names, SEARCH programs), or such a sequence with bytes flipped, dropped or repeated. Each is fed
to a fresh connection whole, cut at random points, or one byte at a time. Counted: inputs per second,
exceptions (per type and place, with one example each), responses that are not well-formed IMAP, and the
most octets the core held in its input buffer.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import random
import re
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kartero.imap.commands import run  # noqa: E402
from kartero.imap.commands.view import Session  # noqa: E402
from kartero.imap.connection import (  # noqa: E402
    CommandReady,
    IdleDone,
    ImapConnection,
    ImapSettings,
    LoginRequested,
    StartTLSRequested,
)
from kartero.imap.response import Status  # noqa: E402
from kartero.store.ids import new_message_id  # noqa: E402
from kartero.store.interface import Delivery, DeliveryTarget  # noqa: E402
from kartero.store.sqlite import SQLiteStore  # noqa: E402

SETTINGS = ImapSettings(hostname="imap.example.test", append_limit=200_000, is_tls_available=True)
USER, PASSWORD = "bob@example.test", "pw"

TAG = rb"[!#$&',\-./0-9:;<=>?@A-Z\[\]^_`a-z|}~]+"
LINE = re.compile(rb"(\* |\+ ?|" + TAG + rb" (OK|NO|BAD) )[^\x00-\x1f\x7f]*")
TEXT = re.compile(rb"[^\x00-\x1f\x7f]*")
LITERAL_AT_END = re.compile(rb"~?\{(\d+)\}$")

COMMANDS = [
    "CAPABILITY", "NOOP", "LOGOUT", "ID", "ENABLE", "SELECT", "EXAMINE", "CREATE", "DELETE", "RENAME",
    "SUBSCRIBE", "UNSUBSCRIBE", "LIST", "LSUB", "NAMESPACE", "STATUS", "APPEND", "IDLE", "CHECK", "CLOSE",
    "UNSELECT", "EXPUNGE", "SEARCH", "FETCH", "STORE", "COPY", "MOVE", "SORT", "UID FETCH", "UID SEARCH",
    "UID STORE", "UID COPY", "UID MOVE", "UID EXPUNGE", "UID SORT", "LOGIN", "AUTHENTICATE", "COMPRESS",
    "STARTTLS",
]  # fmt: skip
MAILBOXES = [
    "INBOX", "inbox", "Inbox/Sub", "Sent", "Trash", "&AOQ-", "&Jjo-", "&", "&-", "&ZeVnLIqe", "&AOQ", "a/b/c",
    "/", "//", "a//b", "/x", "x/", "*", "%", "*a*a*a*a*a*a*a*b", "%/%/%", '""', '"a b"', '"\\\\"', "NIL",
    "Entw&APw-rfe", '"Entwürfe"', '"&ä-"', '"&AOQ-/&2D3cAQ-"', "n" * 1000, "n" * 1001, "/".join("d" * 100),
    "/".join("d" * 101),
]  # fmt: skip
FETCH_ITEMS = [
    "ALL", "FAST", "FULL", "FLAGS", "UID", "ENVELOPE", "BODYSTRUCTURE", "BODY", "RFC822", "RFC822.SIZE",
    "RFC822.HEADER", "RFC822.TEXT", "INTERNALDATE", "MODSEQ", "BODY[]", "BODY.PEEK[HEADER]", "BODY[1]",
    "BODY[1.2.MIME]", "BODY[2.TEXT]", "BODY[HEADER.FIELDS (FROM TO)]", "BODY[HEADER.FIELDS.NOT (SUBJECT)]",
    "BINARY[1]", "BINARY.PEEK[1]<0.10>", "BINARY.SIZE[2]", "BODY[TEXT]<5.99999999999999999999>",
    "BODY[]<0.1>", "BODY[0]", "BODY[MIME]", "BODY[1.]", "BODY[HEADER.FIELDS (A (B) C)]", "body[]",
    "BODY[4294967296]", "BODY[]<9223372036854775807.1>", "SAVEDATE", "EMAILID",
]  # fmt: skip
SEARCH_KEYS = [
    "ALL", "SEEN", "UNSEEN", "ANSWERED", "DELETED", "FLAGGED", "DRAFT", "NEW", "OLD", "RECENT", "LARGER 100",
    "SMALLER 9223372036854775807", "LARGER 9223372036854775808", "MODSEQ 1", "MODSEQ 99999999999999999999",
    'HEADER X-Spam "yes"', "HEADER Subject \"\"", "FROM alice", "TO bob", "CC x", "BCC y", "SUBJECT hello",
    "BODY body", "TEXT zzz", "KEYWORD $Label", "UNKEYWORD \\Seen", "SINCE 1-Feb-2026", "BEFORE 1-Jan-9999",
    "ON 31-Feb-2026", "SENTSINCE 1-Jan-0001", "UID 1:*", "UID 4294967296", "1:*", "*", "$", "2:1",
    'MODSEQ "/flags/\\\\seen" all 5',
]  # fmt: skip
NUMBERS = ["0", "1", "2", "*", "1:*", "$", "4294967295", "4294967296", "9223372036854775807",
           "9223372036854775808", "99999999999999999999999", "1,2,3:5,*", "2:1", "1:4294967295"]  # fmt: skip


@dataclass
class Tally:
    inputs: int = 0
    handler_inputs: int = 0
    malformed: int = 0
    malformed_example: bytes = b""
    max_buffered: int = 0
    exceptions: collections.Counter[str] = field(default_factory=collections.Counter)
    examples: dict[str, tuple[bytes, str]] = field(default_factory=dict)


class Generator:
    """Session byte streams, from one seeded random source."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def session(self) -> bytes:
        rng = self.rng
        kind = rng.random()
        if kind < 0.1:
            return rng.randbytes(rng.randint(0, 400))
        data = self.commands()
        if kind < 0.35:
            data = self.mutate(data)
        return data

    def commands(self) -> bytes:
        rng = self.rng
        out = []
        if rng.random() < 0.9:
            out.append(f"l LOGIN {USER} {PASSWORD}\r\n".encode())
            if rng.random() < 0.8:
                out.append(b"s SELECT INBOX\r\n")
        for _ in range(rng.randint(1, 8)):
            out.append(self.command())
        return b"".join(out)

    def command(self) -> bytes:
        rng = self.rng
        tag = rng.choice([b"a", b"A1", b"t.2", b"+", b"*", b"", b"x{1}", b"b", b"%", b"a" * 200])
        name = rng.choice(COMMANDS)
        if rng.random() < 0.2:
            name = name.lower()
        args = self.arguments(name)
        end = rng.choice([b"\r\n"] * 8 + [b"\n", b"\r\r\n"])
        line = b" ".join([tag, name.encode(), *args]) + end
        if name == "IDLE":
            line += rng.choice([b"DONE\r\n", b"done\r\n", b"NOPE\r\n", b""])
        if name == "AUTHENTICATE" and not args[1:]:
            line += rng.choice([b"AGJvYkBleGFtcGxlLnRlc3QAcHc=\r\n", b"*\r\n", b"!!!\r\n"])
        return line

    def arguments(self, name: str) -> list[bytes]:
        rng = self.rng
        base = name.removeprefix("UID ")
        args: list[str | bytes]
        match base:
            case "SELECT" | "EXAMINE":
                args = [self.mailbox()] + (["(CONDSTORE)"] if rng.random() < 0.2 else [])
                if rng.random() < 0.1:
                    args.append(f"(QRESYNC ({rng.choice(NUMBERS)} {rng.choice(NUMBERS)} {rng.choice(NUMBERS)}))")
            case "CREATE" | "DELETE" | "SUBSCRIBE" | "UNSUBSCRIBE":
                args = [self.mailbox()] + (["(USE (\\Trash))"] if rng.random() < 0.1 else [])
            case "RENAME":
                args = [self.mailbox(), self.mailbox()]
            case "LIST" | "LSUB":
                args = [rng.choice(['""', "INBOX/", "a/", "(SUBSCRIBED RECURSIVEMATCH) \"\"", "(SPECIAL-USE) \"\""]),
                        rng.choice([self.mailbox(), "(" + " ".join(self.mailbox() for _ in range(3)) + ")"])]
                if rng.random() < 0.3:
                    args.append("RETURN (CHILDREN SUBSCRIBED STATUS (MESSAGES UNSEEN SIZE))")
            case "STATUS":
                args = [self.mailbox(), rng.choice(["(MESSAGES UIDNEXT UNSEEN SIZE HIGHESTMODSEQ DELETED)",
                                                    "()", "(APPENDLIMIT RECENT)", "(BOGUS)"])]
            case "APPEND":
                args = [self.mailbox()]
                if rng.random() < 0.5:
                    args.append("(\\Seen $Label)")
                if rng.random() < 0.5:
                    args.append(rng.choice(['"26-Nov-2026 10:00:00 +0100"', '"01-Jan-0001 00:00:00 +2359"',
                                            '"31-Dec-9999 23:59:59 -2359"', '"01-Jan-2020 00:00:00 +9999"']))
                args.append(self.literal(message=True))
            case "SEARCH" | "SORT":
                args = []
                if base == "SORT":
                    args += [rng.choice(["(REVERSE DATE SUBJECT)", "(ARRIVAL)", "(SIZE FROM TO CC)", "()"]),
                             rng.choice(["UTF-8", "US-ASCII", "KOI8-R"])]
                elif rng.random() < 0.3:
                    args.append(rng.choice(["RETURN (MIN MAX COUNT ALL SAVE)", "RETURN ()", "CHARSET UTF-8"]))
                args.append(self.search_program())
            case "FETCH":
                items = rng.choice([rng.choice(FETCH_ITEMS),
                                    "(" + " ".join(rng.choice(FETCH_ITEMS) for _ in range(rng.randint(0, 5))) + ")"])
                args = [self.sequence_set(), items]
                if rng.random() < 0.1:
                    args.append(f"(CHANGEDSINCE {rng.choice(NUMBERS)} VANISHED)")
            case "STORE":
                args = [self.sequence_set()]
                if rng.random() < 0.2:
                    args.append(f"(UNCHANGEDSINCE {rng.choice(NUMBERS)})")
                args += [rng.choice(["FLAGS", "+FLAGS", "-FLAGS.SILENT", "+FLAGS.SILENT", "BOGUS"]),
                         rng.choice(["(\\Seen)", "(\\Deleted $x)", "\\Flagged", "()", "(\\Bogus)", "(\\*)"])]
            case "COPY" | "MOVE":
                args = [self.sequence_set(), self.mailbox()]
            case "EXPUNGE" if name.startswith("UID"):
                args = [self.sequence_set()]
            case "LOGIN":
                args = [rng.choice([USER, "bob", '"x"', self.literal()]),
                        rng.choice([PASSWORD, "wrong", self.literal()])]
            case "AUTHENTICATE":
                args = ["PLAIN", *rng.choice([[], ["AGJvYkBleGFtcGxlLnRlc3QAcHc="], ["="], ["%%%"]])]
            case "ENABLE":
                args = rng.sample(["CONDSTORE", "QRESYNC", "UTF8=ACCEPT", "IMAP4rev2", "BOGUS"], rng.randint(0, 3))
            case "ID":
                args = [rng.choice(["NIL", '("name" "x" "version" NIL)', "()", '("a")'])]
            case "COMPRESS":
                args = [rng.choice(["DEFLATE", "BOGUS"])]
            case _:
                args = []
        if rng.random() < 0.15:
            args.append(self.noise())
        return [a if isinstance(a, bytes) else a.encode() for a in args]

    def mailbox(self) -> str:
        return self.rng.choice(MAILBOXES)

    def sequence_set(self) -> str:
        rng = self.rng
        if rng.random() < 0.05:
            return ",".join([rng.choice(["1:4294967295", "*:1", "2:*", "5"])] * rng.choice([200, 3000, 5000]))
        return rng.choice(NUMBERS)

    def search_program(self, depth: int = 0) -> str:
        rng = self.rng
        roll = rng.random()
        if roll < 0.05:
            levels = rng.choice([50, 99, 100, 101, 2000])
            return rng.choice(["NOT " * levels + "SEEN", "OR SEEN " * levels + "ALL",
                               "(" * levels + "SEEN" + ")" * levels])
        if roll < 0.08:
            return " ".join(rng.choice(SEARCH_KEYS) for _ in range(rng.choice([999, 1001])))
        if roll < 0.3 and depth < 4:
            match rng.randint(0, 2):
                case 0:
                    return "NOT " + self.search_program(depth + 1)
                case 1:
                    return f"OR {self.search_program(depth + 1)} {self.search_program(depth + 1)}"
                case _:
                    return "(" + " ".join(self.search_program(depth + 1) for _ in range(rng.randint(1, 4))) + ")"
        return " ".join(rng.choice(SEARCH_KEYS) for _ in range(rng.randint(1, 3)))

    def literal(self, *, message: bool = False) -> bytes:
        rng = self.rng
        data = rng.choice([b"Subject: hi\r\n\r\nbody\r\n", b"x", b"", b"\r\n)", b"\xff\x00", b"From: a\r\n"])
        if message and rng.random() < 0.02:
            data = b"Subject: big\r\n\r\n" + b"x" * rng.choice([100_000, 199_990, 300_000])
        size = max(0, len(data) + rng.choice([0, 0, 0, 0, 1, -1, 10**6]))
        marker = rng.choice([b"{%d}", b"{%d+}", b"~{%d}", b"{%d+}"]) % size
        return marker + b"\r\n" + data

    def noise(self) -> bytes:
        rng = self.rng
        return rng.choice([
            rng.randbytes(rng.randint(1, 8)).replace(b"\n", b""),
            b"(" * rng.choice([101, 10_000]),
            b")" * 3,
            b'"unterminated',
            b"{99999999999999999999}",
            b"{18446744073709551616+}",
            b"[[[",
        ])  # fmt: skip

    def mutate(self, data: bytes) -> bytes:
        rng = self.rng
        buf = bytearray(data)
        for _ in range(rng.randint(1, 6)):
            if not buf:
                break
            i = rng.randrange(len(buf))
            match rng.randint(0, 3):
                case 0:
                    buf[i] = rng.randrange(256)
                case 1:
                    del buf[i : i + rng.randint(1, 8)]
                case 2:
                    buf[i:i] = buf[i : i + rng.randint(1, 16)] * rng.randint(1, 4)
                case _:
                    buf[i:i] = rng.choice([b"{", b"}", b"(", b")", b"\r\n", b"\"", b"\\", b"[", b"]", b" ", b"*"])
        return bytes(buf)

    def chunks(self, data: bytes) -> list[bytes]:
        rng = self.rng
        roll = rng.random()
        if roll < 0.5 or not data:
            return [data] if data else []
        if roll < 0.6 and len(data) < 2000:
            return [data[i : i + 1] for i in range(len(data))]
        cuts = sorted({0, len(data), *(rng.randrange(len(data)) for _ in range(rng.randint(1, 8)))})
        return [data[a:b] for a, b in itertools.pairwise(cuts)]


def well_formed(out: bytes) -> bool:
    """Every response starts like a response; a literal in it is skipped by its length, and what follows it
    continues the same response."""
    pos = 0
    continued = False
    while pos < len(out):
        end = out.find(b"\r\n", pos)
        if end < 0:
            return False
        line = out[pos:end]
        if not (TEXT if continued else LINE).fullmatch(line):
            return False
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            return False
        pos = end + 2
        literal = LITERAL_AT_END.search(line)
        continued = literal is not None
        if literal is not None:
            pos += int(literal.group(1))
    return pos == len(out) and not continued


def feed(chunks: list[bytes], store: SQLiteStore | None, tally: Tally) -> bytes:
    """One session: the core alone (commands answered OK at once), or with the handlers over `store`."""
    conn = ImapConnection(SETTINGS, is_loopback=True)
    conn.start()
    out = bytearray(conn.data_to_send())
    session: Session | None = None
    for chunk in [*chunks, b""]:
        conn.receive_data(chunk)
        while (event := conn.next_event()) is not None:
            match event:
                case LoginRequested(tag=tag, user=user, password=password):
                    account = store.accounts.get_account(user) if store is not None else None
                    if password != PASSWORD or (store is not None and account is None):
                        conn.login_result(tag, None)
                        continue
                    if store is not None and account is not None:
                        session = Session(store.mail, account.id, account.address, conn.enabled)
                    conn.login_result(tag, user)
                case CommandReady(tag=tag, command=command):
                    if session is None:
                        conn.finish(tag, Status.OK, "done")
                        continue
                    handler = run(session, tag, command, append_limit=SETTINGS.append_limit)
                    while True:
                        try:
                            conn.send(next(handler))
                        except StopIteration as stop:
                            done = stop.value
                            break
                    conn.finish(tag, done.status, done.text, done.code, done.state)
                case StartTLSRequested():
                    conn.tls_established()
                case IdleDone(tag=tag):
                    conn.finish(tag, Status.OK, "IDLE terminated")
        tally.max_buffered = max(tally.max_buffered, conn.buffered_bytes)
        out += conn.data_to_send()
    return bytes(out)


def make_store(folder: Path) -> SQLiteStore:
    store = SQLiteStore(folder / "data")
    account = store.accounts.add_account(USER, "unused")
    store.start()
    samples = [
        b"From: Alice <alice@example.org>\r\nTo: Bob <bob@example.test>\r\nSubject: hello\r\n\r\nbody zzz\r\n",
        b"Subject: =?utf-8?q?caf=C3=A9?=\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
        b"Content-Type: text/plain\r\n\r\none\r\n--b\r\nContent-Type: message/rfc822\r\n\r\nSubject: in\r\n\r\n"
        b"two\r\n--b--\r\n",
        b"Subject: no body",
    ]
    for i, data in enumerate(samples * 3):
        flags = frozenset({"\\Seen"} if i % 2 else {"$Label"})
        store.mail.deliver(Delivery(new_message_id(), data, (DeliveryTarget(account.id, "INBOX", flags),),
                               1795687200 + i)).result(10)  # fmt: skip
    return store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--handlers-every", type=int, default=200, help="every Nth input also runs the handlers")
    parser.add_argument("--report-every", type=int, default=100_000)
    args = parser.parse_args()
    gen = Generator(args.seed)
    tally = Tally()
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as folder:
        store = make_store(Path(folder))
        try:
            for i in range(1, args.inputs + 1):
                data = gen.session()
                chunks = gen.chunks(data)
                with_store = store if i % args.handlers_every == 0 else None
                tally.inputs += 1
                tally.handler_inputs += with_store is not None
                try:
                    out = feed(chunks, with_store, tally)
                except Exception as exc:  # what the fuzzing is for: count it, keep one example
                    frame = traceback.extract_tb(exc.__traceback__)[-1]
                    where = f"{type(exc).__name__} at {Path(frame.filename).name}:{frame.lineno}"
                    tally.exceptions[where] += 1
                    tally.examples.setdefault(where, (data, "".join(traceback.format_exception(exc))[-1500:]))
                    continue
                if not well_formed(out):
                    tally.malformed += 1
                    tally.malformed_example = tally.malformed_example or data
                if i % args.report_every == 0:
                    rate = i / (time.monotonic() - started)
                    print(f"{i} inputs, {rate:.0f}/s, {sum(tally.exceptions.values())} exceptions", flush=True)
        finally:
            store.close()
    elapsed = time.monotonic() - started
    print(f"inputs: {tally.inputs} ({tally.handler_inputs} through the handlers), seed {args.seed}")
    print(f"time: {elapsed:.0f} s, {tally.inputs / elapsed:.0f} inputs/s")
    print(f"max buffered: {tally.max_buffered} octets")
    print(f"malformed outputs: {tally.malformed}")
    if tally.malformed:
        print(f"  example input: {tally.malformed_example[:300]!r}")
    print(f"exceptions: {sum(tally.exceptions.values())}")
    for where, count in tally.exceptions.most_common():
        data, trace = tally.examples[where]
        print(f"  {count} x {where}\n    input: {data[:300]!r}\n{trace}")


if __name__ == "__main__":
    main()
