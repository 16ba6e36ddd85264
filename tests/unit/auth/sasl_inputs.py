"""Fuzz inputs for the SASL cores, and the Chooser every fuzz generator of the protocol cores draws from.

A generator takes a `Chooser` and returns bytes. The hypothesis tests pass one backed by `st.data()`, so a
failing input shrinks; bench/fuzz_cores.py passes one backed by `random.Random`, fast enough for 10^6
inputs. Options are listed simplest first: hypothesis shrinks an index towards 0.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from hypothesis import strategies as st

from kartero.auth.sasl import SASLError, ScramServer, decode_base64, parse_plain, scram_credentials

T = TypeVar("T")

# The one password of the fuzz accounts, its SCRAM keys (fixed salt, RFC 7677's minimum iterations: the
# fuzz exercises the protocol, not the key derivation) and the server's part of every SCRAM nonce.
PASSWORD = "pencil"
SCRAM_SALT = b"fuzz-salt-16byte"
SCRAM = scram_credentials(PASSWORD, SCRAM_SALT, 4096)
SERVER_NONCE = "srvnonce"
_SALTED = hashlib.pbkdf2_hmac("sha256", PASSWORD.encode(), SCRAM_SALT, 4096)


class Chooser(Protocol):
    def integer(self, lo: int, hi: int) -> int:
        """A number in [lo, hi]."""
        ...

    def binary(self, max_size: int) -> bytes:
        """Random bytes, at most `max_size` of them."""
        ...


class RandomChooser:
    """Draws from `random.Random`: for the long runs of bench/fuzz_cores.py."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def integer(self, lo: int, hi: int) -> int:
        span = hi - lo + 1
        if span > 2**50:
            return self.rng.randrange(lo, hi + 1)
        return lo + int(self.rng.random() * span)  # a third of randint's cost: most of a run's draws

    def binary(self, max_size: int) -> bytes:
        return self.rng.randbytes(self.rng.randint(0, max_size))


class HypothesisChooser:
    """Draws from hypothesis (`st.data()`), so a failing input shrinks to a small one."""

    def __init__(self, data: st.DataObject) -> None:
        self.data = data

    def integer(self, lo: int, hi: int) -> int:
        return self.data.draw(st.integers(lo, hi))

    def binary(self, max_size: int) -> bytes:
        return self.data.draw(st.binary(max_size=max_size))


def choice(c: Chooser, options: Sequence[T]) -> T:
    return options[c.integer(0, len(options) - 1)]


def chance(c: Chooser, percent: int) -> bool:
    """True `percent` times in 100 (False is the simple case hypothesis shrinks to)."""
    return c.integer(0, 99) >= 100 - percent


def word(c: Chooser, alphabet: str, max_len: int) -> str:
    return "".join(choice(c, alphabet) for _ in range(c.integer(0, max_len)))


def b64(data: bytes | str) -> bytes:
    return base64.b64encode(data.encode() if isinstance(data, str) else data)


USERS = ("alice@example.test", "bob@example.test", "", "a" * 300, "jörg@例え.test", "x,y=z")
# Text with everything SASL and SCRAM treat specially: separators, escapes, NUL, non-ASCII, controls.
SASL_ALPHABET = "abcAZ09@.,=\0 \t\r\n~é例\x7f\u2028+/"


def user(c: Chooser) -> str:
    if chance(c, 20):
        return word(c, SASL_ALPHABET, 20)
    return choice(c, USERS)


def password(c: Chooser) -> str:
    return choice(c, [PASSWORD, "wrong", "", PASSWORD + "\0", word(c, SASL_ALPHABET, 12)])


def plain_message(c: Chooser) -> bytes:
    """A decoded PLAIN message (RFC 4616): `authzid NUL authcid NUL passwd`, well-formed or not."""
    name = user(c)
    authzid = choice(c, ["", name, "other@example.test"])
    parts = [authzid.encode(), name.encode(), password(c).encode()]
    match c.integer(0, 5):
        case 1:
            parts.append(b"extra")
        case 2:
            parts = parts[1:]
        case 3:
            parts[c.integer(0, 2)] = b"\xff\xfe"
        case 4:
            return c.binary(40)
    return b"\0".join(parts)


def _saslname(name: str) -> str:
    return name.replace("=", "=3D").replace(",", "=2C")


def _gs2_header(c: Chooser, name: str) -> str:
    return choice(c, ["n,,", "y,,", f"n,a={_saslname(name)},", "p=tls-unique,,", "n,a=other,", "x,,", "n,", ""])


def scram_exchange(c: Chooser) -> list[bytes]:
    """The decoded client messages of one SCRAM-SHA-256 exchange (RFC 5802 §5) against SCRAM and
    SERVER_NONCE: a correct client-first and client-final (the proof computed for the password tried),
    or one with a fault in any attribute; then the client's empty acknowledgement of server-final."""
    name = user(c)
    gs2 = _gs2_header(c, name)
    client_nonce = choice(c, ["cnonce", "", "c\0n", "é", "x" * 200, word(c, SASL_ALPHABET, 10)])
    bare = choice(
        c,
        [
            f"n={_saslname(name)},r={client_nonce}",
            f"n={name},r={client_nonce}",  # unescaped "," and "=" in the name
            f"m=ext,n={_saslname(name)},r={client_nonce}",
            f"n={_saslname(name)},r={client_nonce},x=1",
            f"r={client_nonce}",
            f"n={_saslname(name)}",
            f"n=a=2,r={client_nonce}",  # "=" not followed by 2C or 3D
            f"n={_saslname(name)},,r={client_nonce}",
            word(c, SASL_ALPHABET, 30),
        ],
    )
    first = (gs2 + bare).encode()
    if chance(c, 5):
        first = first[: c.integer(0, len(first))] + b"\xff" + first[c.integer(0, len(first)) :]
    nonce = client_nonce + SERVER_NONCE
    server_first = f"r={nonce},s={base64.b64encode(SCRAM.salt).decode()},i={SCRAM.iterations}"
    channel = b64(gs2).decode()
    without_proof = choice(
        c,
        [
            f"c={channel},r={nonce}",
            f"c={channel},r={client_nonce}",  # the server's half of the nonce missing
            f"c=biws,r={nonce}",
            f"r={nonce},c={channel}",
            f"c={channel},r={nonce},e=x",
            f"c={channel}",
            word(c, SASL_ALPHABET, 20),
        ],
    )
    salted = _SALTED if chance(c, 70) else hashlib.sha256(password(c).encode()).digest()
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    auth_message = f"{bare},{server_first},{without_proof}".encode()
    signature = hmac.new(stored_key, auth_message, hashlib.sha256).digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    proof_text = choice(
        c, [b64(proof).decode(), b64(proof[:16]).decode(), "", "!!!!", "é", b64(proof).decode() + "="]
    )
    final = choice(c, [f"{without_proof},p={proof_text}", without_proof, f"p={proof_text},{without_proof}"])
    return [first, final.encode(), choice(c, [b"", b"v=x", c.binary(8)])]



# -- drivers -------------------------------------------------------------------------------------------

_SCRAM_TEXT = re.compile(rb"[\x21-\x7e]+")  # RFC 5802 §7: printable ASCII
_SERVER_FINAL = re.compile(rb"v=[A-Za-z0-9+/]{43}=")


def run_plain(response: bytes) -> str | None:
    """A PLAIN response as the protocols take it (base64): the user, or None after SASLError."""
    try:
        credentials = parse_plain(decode_base64(response))
    except SASLError:
        return None
    assert credentials.authcid and credentials.password
    return credentials.authcid


def run_scram(messages: list[bytes]) -> bool:
    """One server-side SCRAM-SHA-256 exchange over `messages` (client-first, client-final); True when it
    authenticated. Only SASLError may come out, and every server message is well-formed ASCII."""
    server = ScramServer(SERVER_NONCE)
    try:
        name = server.client_first(messages[0] if messages else b"")
    except SASLError:
        return False
    assert name, "an empty user name passed"
    server_first = server.server_first(SCRAM)
    assert _SCRAM_TEXT.fullmatch(server_first), server_first
    try:
        server_final = server.client_final(messages[1] if len(messages) > 1 else b"")
    except SASLError:
        return False
    assert _SERVER_FINAL.fullmatch(server_final), server_final
    return True


@dataclass(frozen=True, slots=True)
class SaslCase:
    """A PLAIN response (base64, or raw by mistake) and the client messages of a SCRAM exchange."""

    plain: bytes
    scram: list[bytes]

    @property
    def data(self) -> bytes:
        return b"\n".join([self.plain, *self.scram])


def sasl_case(c: Chooser) -> SaslCase:
    plain = plain_message(c)
    messages = scram_exchange(c)
    if chance(c, 10):  # one byte of the exchange changed
        i = c.integer(0, 1)
        data = bytearray(messages[i])
        if data:
            data[c.integer(0, len(data) - 1)] = c.integer(0, 255)
        messages[i] = bytes(data)
    return SaslCase(b64(plain) if not chance(c, 10) else plain, messages)


def play_sasl(case: SaslCase) -> bool:
    """Play a case through the cores; True when the SCRAM exchange authenticated."""
    run_plain(case.plain)
    return run_scram(case.scram)


def run_sasl_input(c: Chooser) -> bool:
    return play_sasl(sasl_case(c))
