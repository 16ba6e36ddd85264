"""DKIM keys and signing (RFC 6376, RFC 8463 for Ed25519), on dkimpy.

Keys live in `<data_dir>/dkim/<domain>/<selector>.<algorithm>.key` (RSA: PEM PKCS#8; Ed25519: the
base64 seed, as dkimpy takes it), mode 0600. A domain may hold several keys; each message is signed
once per algorithm with the newest key of that algorithm, so publishing a new selector and generating
its key rotates without a restart (the signer notices new files by the folder's modification time).

What is signed: relaxed/relaxed canonicalisation, the header fields in SIGNED_HEADERS that the message
has, and the ones in OVERSIGNED once more than they occur, so that nobody can add a second From: or
Subject: later without breaking the signature.
"""

from __future__ import annotations

import base64
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from kartero.mime.headers import find_body_start, parse_header_block

ALGORITHMS = ("rsa", "ed25519")
SIGNATURE_ALGORITHM = {"rsa": b"rsa-sha256", "ed25519": b"ed25519-sha256"}
DEFAULT_SELECTOR = "kartero"
RSA_BITS = 2048

SIGNED_HEADERS = (
    "from", "sender", "reply-to", "subject", "date", "message-id", "to", "cc", "in-reply-to", "references",
    "mime-version", "content-type", "content-transfer-encoding", "content-disposition", "list-id",
    "list-help", "list-unsubscribe", "list-unsubscribe-post", "list-subscribe", "list-post", "list-owner",
    "list-archive",
)  # fmt: skip
OVERSIGNED = frozenset({"from", "to", "cc", "subject", "date", "reply-to"})
_SELECTOR_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*")


class DKIMError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class DKIMKey:
    domain: str
    selector: str
    algorithm: str
    private: bytes  # as dkimpy takes it
    path: Path
    created: float

    @property
    def record_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"

    def dns_record(self) -> str:
        """The TXT record value that publishes the public key."""
        if self.algorithm == "rsa":
            key = serialization.load_pem_private_key(self.private, password=None)
            assert isinstance(key, rsa.RSAPrivateKey)
            der = key.public_key().public_bytes(serialization.Encoding.DER,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)  # fmt: skip
            return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"
        seed = base64.b64decode(self.private)
        public = ed25519.Ed25519PrivateKey.from_private_bytes(seed).public_key()
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode()}"


def key_folder(data_dir: Path) -> Path:
    return data_dir / "dkim"


def check_selector(selector: str) -> str:
    selector = selector.strip().lower()
    if not _SELECTOR_RE.fullmatch(selector):
        raise DKIMError(f"not a valid selector: {selector!r} (letters, digits, '-' and '.')")
    return selector


def new_private_key(algorithm: str) -> bytes:
    """A fresh private key as dkimpy takes it (RSA: PEM PKCS#8; Ed25519: the base64 seed)."""
    if algorithm not in ALGORITHMS:
        raise DKIMError(f"unknown algorithm {algorithm!r} (choose from {', '.join(ALGORITHMS)})")
    if algorithm == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    seed = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return base64.b64encode(seed)


def generate(data_dir: Path, domain: str, selector: str, algorithm: str, *, force: bool = False) -> DKIMKey:
    """Make a key and write it (0600); refuses to overwrite one unless `force`."""
    if algorithm not in ALGORITHMS:
        raise DKIMError(f"unknown algorithm {algorithm!r} (choose from {', '.join(ALGORITHMS)})")
    selector = check_selector(selector)
    folder = key_folder(data_dir) / domain
    path = folder / f"{selector}.{algorithm}.key"
    others = [p for p in folder.glob(f"{selector}.*.key") if p != path] if folder.exists() else []
    if others:
        raise DKIMError(f"selector {selector!r} of {domain} already has a key ({others[0].name}): one key per selector")
    if path.exists() and not force:
        raise DKIMError(f"{path} exists; use --force to replace it (and publish the new record)")
    private = new_private_key(algorithm)
    if algorithm == "ed25519":
        private += b"\n"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return _load(path, domain)


def _load(path: Path, domain: str) -> DKIMKey:
    selector, algorithm, _ = path.name.rsplit(".", 2)
    data = path.read_bytes()
    if algorithm == "ed25519":
        data = data.strip()
    return DKIMKey(domain, selector, algorithm, data, path, path.stat().st_mtime)


def load_keys(data_dir: Path) -> dict[str, list[DKIMKey]]:
    """Every key, per domain, newest first."""
    keys: dict[str, list[DKIMKey]] = {}
    root = key_folder(data_dir)
    if not root.is_dir():
        return keys
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        found = []
        for path in folder.glob("*.key"):
            parts = path.name.rsplit(".", 2)
            if len(parts) == 3 and parts[1] in ALGORITHMS:
                found.append(_load(path, folder.name))
        if found:
            keys[folder.name] = sorted(found, key=lambda k: (k.created, k.selector), reverse=True)
    return keys


def signed_header_names(header_block: bytes) -> list[bytes]:
    """The h= list for a message: what it has of SIGNED_HEADERS, plus one more of each OVERSIGNED."""
    header = parse_header_block(header_block)
    names: list[bytes] = []
    for name in SIGNED_HEADERS:
        count = len(header.get_all(name))
        names.extend([name.encode()] * (count + (1 if name in OVERSIGNED else 0)))
    return names


def sign(message: bytes, keys: list[DKIMKey]) -> bytes:
    """DKIM-Signature header fields (CRLF-terminated) for `message`: one per algorithm, newest key."""
    header_end, _ = find_body_start(message)
    names = signed_header_names(message[:header_end])
    chosen: dict[str, DKIMKey] = {}
    for key in keys:
        chosen.setdefault(key.algorithm, key)
    out = b""
    for algorithm in ALGORITHMS:  # RSA first: verifiers that stop at the first signature know RSA
        if algorithm not in chosen:
            continue
        key = chosen[algorithm]
        try:
            signature = dkim.sign(
                message, key.selector.encode(), key.domain.encode(), key.private,
                canonicalize=(b"relaxed", b"relaxed"), signature_algorithm=SIGNATURE_ALGORITHM[algorithm],
                include_headers=names,
            )  # fmt: skip
        except dkim.DKIMException as exc:
            raise DKIMError(f"signing with {key.path.name} of {key.domain} failed: {exc}") from None
        out += signature.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        if not out.endswith(b"\r\n"):
            out += b"\r\n"
    return out


class KeySource(Protocol):
    """Where a server's keys are: files under data_dir (`FileKeys`), or the PostgreSQL store."""

    def stamp(self) -> object:
        """Changes whenever a key is added, replaced or removed (cheap: called for every signing)."""
        ...

    def load(self) -> dict[str, list[DKIMKey]]:
        """Every key, per domain, newest first."""
        ...


class FileKeys:
    """The keys of the embedded store's server: files, reloaded when a folder changes (checked by stat)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir

    def stamp(self) -> object:
        root = key_folder(self.data_dir)
        try:
            stamps = [root.stat().st_mtime]
            stamps += [p.stat().st_mtime for p in sorted(root.iterdir()) if p.is_dir()]
        except FileNotFoundError:
            return ()
        return tuple(stamps)

    def load(self) -> dict[str, list[DKIMKey]]:
        return load_keys(self.data_dir)


def keys_from_rows(rows: list[tuple[str, str, str, bytes, float]]) -> dict[str, list[DKIMKey]]:
    """Keys as a database holds them (domain, selector, algorithm, private key, created), per domain,
    newest first."""
    keys: dict[str, list[DKIMKey]] = {}
    for domain, selector, algorithm, private, created in rows:
        if algorithm in ALGORITHMS:
            key = DKIMKey(domain, selector, algorithm, private.strip() if algorithm == "ed25519" else private,
                          Path(domain) / f"{selector}.{algorithm}.key", created)  # fmt: skip
            keys.setdefault(domain, []).append(key)
    return {d: sorted(k, key=lambda key: (key.created, key.selector), reverse=True) for d, k in keys.items()}


class Signer:
    """The keys of a running server, reloaded when its source says they changed."""

    def __init__(self, source: KeySource | Path) -> None:
        self.source: KeySource = FileKeys(source) if isinstance(source, Path) else source
        self._lock = threading.Lock()
        self._stamp: object = None
        self._loaded = False
        self._keys: dict[str, list[DKIMKey]] = {}

    def keys_for(self, domain: str) -> list[DKIMKey]:
        stamp = self.source.stamp()
        with self._lock:
            if stamp != self._stamp or not self._loaded:
                self._keys = self.source.load()
                self._stamp, self._loaded = stamp, True
            return self._keys.get(domain, [])

    def sign(self, domain: str, message: bytes) -> bytes:
        """The signature fields for a message from `domain`; b"" when the domain has no key."""
        keys = self.keys_for(domain)
        return sign(message, keys) if keys else b""


# -- verification --------------------------------------------------------------------------------------

MAX_VERIFIED_SIGNATURES = 5  # more is a denial-of-service vector, not a better answer


class KeyLookupFailed(Exception):
    """A DNS failure that is not "no such key": the signature's result is temperror."""


@dataclass(frozen=True, slots=True)
class DKIMVerdict:
    result: str  # pass, fail, neutral, temperror, permerror (RFC 8601 §2.7.1)
    domain: str  # d=
    selector: str  # s=
    signature_prefix: str  # the first characters of b=, to tell signatures apart (RFC 6008)
    reason: str = ""


def verify(message: bytes, txt_lookup: Callable[[str], bytes | None]) -> list[DKIMVerdict]:
    """Every DKIM signature of `message` (up to MAX_VERIFIED_SIGNATURES), checked against DNS.
    `txt_lookup(name)` gives the key record, None when there is none, or raises KeyLookupFailed."""

    missing: set[str] = set()

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        text = name.decode("ascii", "replace").rstrip(".")
        record = txt_lookup(text)
        if record is None:
            missing.add(text)
        return record

    try:
        checker = dkim.DKIM(message, minkey=1024)
    except dkim.DKIMException as exc:
        return [DKIMVerdict("permerror", "", "", "", f"unparsable message: {exc}")]
    signatures = [value for name, value in checker.headers if name.lower() == b"dkim-signature"]
    verdicts = []
    for index, value in enumerate(signatures[:MAX_VERIFIED_SIGNATURES]):
        try:
            tags = dkim.util.parse_tag_value(value)
        except Exception:  # dkimpy raises its own InvalidTagSpec, not a DKIMException, for garbage
            verdicts.append(DKIMVerdict("permerror", "", "", "", "unparsable DKIM-Signature"))
            continue
        domain = tags.get(b"d", b"").decode("ascii", "replace").lower()
        selector = tags.get(b"s", b"").decode("ascii", "replace")
        prefix = b"".join(tags.get(b"b", b"").split())[:8].decode("ascii", "replace")
        key_name = f"{selector}._domainkey.{domain}"
        try:
            ok = checker.verify(idx=index, dnsfunc=dnsfunc)
            if not ok and key_name in missing:
                verdicts.append(DKIMVerdict("permerror", domain, selector, prefix, f"no key at {key_name}"))
            else:
                verdicts.append(DKIMVerdict("pass" if ok else "fail", domain, selector, prefix,
                                            "" if ok else "signature did not verify"))  # fmt: skip
        except KeyLookupFailed as exc:
            verdicts.append(DKIMVerdict("temperror", domain, selector, prefix, str(exc)))
        except dkim.ValidationError as exc:
            # A wrong body hash or signature is a failure; a missing or unusable key a permanent error.
            text = str(exc)
            result = "permerror" if "key" in text.lower() and "hash" not in text.lower() else "fail"
            verdicts.append(DKIMVerdict(result, domain, selector, prefix, text))
        except (dkim.DKIMException, ValueError) as exc:
            verdicts.append(DKIMVerdict("permerror", domain, selector, prefix, str(exc)))
    return verdicts
