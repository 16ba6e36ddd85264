"""The ACME files in data_dir/acme/: the account key and URL, the certificate with its key, the state.

Every file is written whole or not at all (a temporary file in the same folder, fsync, rename, fsync of
the folder), keys with mode 0600 in a 0700 folder. The certificate and its key are two files written
key first: a crash between the two renames leaves a pair that does not match, which `certificate()`
reports as no certificate, so the next start orders a new one rather than serving a broken pair.

    account.key    the ACME account's RSA key (PEM, PKCS#8)
    account.json   {"directory": URL, "uri": account URL}: the account registered with that CA
    key.pem        the certificate's private key
    cert.pem       the certificate and its chain, as the CA sent them (PEM)
    state.json     last attempt: failures in a row, when, the error; last success; the challenge type
"""

from __future__ import annotations

import contextlib
import json
import os
import ssl
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from kartero.acme.schedule import Validity

FOLDER_MODE = 0o700
KEY_MODE = 0o600
PUBLIC_MODE = 0o644
MAX_ERROR = 500  # characters of a CA's error kept for `kartero cert status`
MAX_FILE = 1 << 20  # bytes read from any of these files (a chain is a few KiB)


def write_atomically(path: Path, data: bytes, mode: int) -> None:
    """Replace `path` with `data`: readers see the old file or the new one, never a part, also after
    a crash (fsync of the file before the rename and of the folder after it)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


@dataclass(frozen=True, slots=True)
class State:
    """What `kartero cert status` reports beyond the certificate, and what the backoff counts from."""

    failures: int = 0
    last_failure_at: float = 0.0
    last_error: str = ""
    last_success_at: float = 0.0
    challenge: str = ""  # the challenge type of the last attempt: "http-01" or "tls-alpn-01"


def validity_of(chain_pem: bytes) -> Validity:
    """The first (the server's own) certificate of a PEM chain; ValueError when there is none."""
    first = x509.load_pem_x509_certificates(chain_pem)[0]
    try:
        san = first.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = frozenset(n.lower() for n in san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        names = frozenset()
    return Validity(first.not_valid_before_utc.timestamp(), first.not_valid_after_utc.timestamp(), names)


class AcmeFiles:
    """data_dir/acme/. Blocking file I/O: called from the worker pool or the CLI."""

    is_shared = False

    def __init__(self, data_dir: Path) -> None:
        self.folder = data_dir / "acme"
        self.cert = self.folder / "cert.pem"
        self.key = self.folder / "key.pem"

    def _ensure(self) -> None:
        self.folder.mkdir(mode=FOLDER_MODE, parents=True, exist_ok=True)

    def _read(self, name: str) -> bytes | None:
        try:
            with open(self.folder / name, "rb") as f:
                return f.read(MAX_FILE)
        except FileNotFoundError:
            return None

    # -- the account ---------------------------------------------------------------------------------

    def account_key(self) -> rsa.RSAPrivateKey:
        """The account key, made (RSA 2048: every CA takes RS256) and saved the first time."""
        pem = self._read("account.key")
        if pem is not None:
            key = serialization.load_pem_private_key(pem, password=None)
            if isinstance(key, rsa.RSAPrivateKey):
                return key
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._ensure()
        write_atomically(self.folder / "account.key", private_pem(key), KEY_MODE)
        return key

    def account_uri(self, directory: str) -> str | None:
        """The account URL registered with the CA at `directory`; None for another CA or none yet."""
        raw = self._read("account.json")
        if raw is None:
            return None
        try:
            data = json.loads(raw)
        except ValueError:
            return None
        uri = data.get("uri") if isinstance(data, dict) and data.get("directory") == directory else None
        return uri if isinstance(uri, str) else None

    def save_account(self, directory: str, uri: str) -> None:
        self._ensure()
        write_atomically(self.folder / "account.json", json.dumps({"directory": directory, "uri": uri}).encode(),
                         PUBLIC_MODE)  # fmt: skip

    # -- the certificate -----------------------------------------------------------------------------

    def save_certificate(self, chain_pem: bytes, key_pem: bytes) -> None:
        """Key first: see the module docstring for why."""
        self._ensure()
        write_atomically(self.key, key_pem, KEY_MODE)
        write_atomically(self.cert, chain_pem, PUBLIC_MODE)

    def certificate(self) -> Validity | None:
        """The stored certificate's validity, or None when there is none or its files are unusable (a
        chain that does not parse, a key that does not match it)."""
        chain = self._read("cert.pem")
        if chain is None or not self.key.exists():
            return None
        try:
            validity = validity_of(chain)
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(self.cert, self.key)
        except (ValueError, IndexError, OSError, ssl.SSLError):
            return None
        return validity

    # -- the state -----------------------------------------------------------------------------------

    def state(self) -> State:
        return parse_state(self._read("state.json"))

    def save_state(self, state: State) -> None:
        self._ensure()
        write_atomically(self.folder / "state.json", dump_state(state), PUBLIC_MODE)

    # -- one machine: nothing to share -------------------------------------------------------------------

    def sync(self) -> bool:
        """Whether a certificate another node ordered was just copied here: never, on one machine."""
        return False

    def may_order(self, now: float, lease_s: float) -> bool:
        return True


class AcmeStorage(Protocol):
    """Where the renewal keeps its things: `AcmeFiles` (one machine), `shared.SharedAcme` (a cluster:
    the database, with the certificate mirrored into the local files the listeners load)."""

    is_shared: bool
    folder: Path
    cert: Path
    key: Path

    def account_key(self) -> rsa.RSAPrivateKey: ...
    def account_uri(self, directory: str) -> str | None: ...
    def save_account(self, directory: str, uri: str) -> None: ...
    def save_certificate(self, chain_pem: bytes, key_pem: bytes) -> None: ...
    def certificate(self) -> Validity | None: ...
    def state(self) -> State: ...
    def save_state(self, state: State) -> None: ...
    def sync(self) -> bool: ...
    def may_order(self, now: float, lease_s: float) -> bool: ...


def parse_state(raw: bytes | str | None) -> State:
    """A stored State; a missing or damaged one reads as a fresh start."""
    if raw is None:
        return State()
    try:
        data = json.loads(raw)
        return State(int(data["failures"]), float(data["last_failure_at"]), str(data["last_error"]),
                     float(data["last_success_at"]), str(data["challenge"]))  # fmt: skip
    except (ValueError, KeyError, TypeError):
        return State()


def dump_state(state: State) -> bytes:
    data = asdict(state)
    data["last_error"] = state.last_error[:MAX_ERROR]
    return json.dumps(data).encode()


def private_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())  # fmt: skip
