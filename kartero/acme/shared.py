"""ACME in a cluster (`[store] backend = "postgresql"`): the account, the certificate, the renewal state
and the pending http-01 answers live in the database (`Rows`, served by store/acme_sql.py), so every
node serves the same certificate and whichever node the CA's request reaches answers it. One node at a
time orders: the one holding the `lead` row, which it renews at each look (every SYNC_S) and which
another node takes over LEAD_S after its holder stopped looking (a dead node). The other nodes copy a
new certificate from the database into their data_dir/acme/ within SYNC_S and load it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from kartero.acme.schedule import Validity
from kartero.acme.storage import AcmeFiles, State, dump_state, parse_state, private_pem

SYNC_S = 60.0  # how often a node looks for a certificate another ordered, and renews its lead
LEAD_S = 300.0  # a leader silent this long is taken over


class Rows(Protocol):
    def get(self, key: str) -> str | None: ...
    def put(self, items: Mapping[str, str]) -> None: ...
    def put_if_absent(self, key: str, value: str) -> str: ...
    def delete(self, key: str) -> None: ...
    def try_lead(self, node: str, now: float, lease_s: float) -> bool: ...


class SharedAcme:
    """`AcmeStorage` over the database, with the certificate mirrored into `files` (ssl loads files).
    Blocking: called in worker threads."""

    is_shared = True

    def __init__(self, rows: Rows, files: AcmeFiles, node: str) -> None:
        self.rows = rows
        self.files = files
        self.node = node
        self.folder, self.cert, self.key = files.folder, files.cert, files.key

    def account_key(self) -> rsa.RSAPrivateKey:
        """One account for the cluster: the first node's key wins."""
        pem = self.rows.get("account.key")
        if pem is None:
            made = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            pem = self.rows.put_if_absent("account.key", private_pem(made).decode("ascii"))
        key = serialization.load_pem_private_key(pem.encode("ascii"), password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError("the stored ACME account key is not RSA")
        return key

    def account_uri(self, directory: str) -> str | None:
        return self.rows.get(f"account:{directory}")

    def save_account(self, directory: str, uri: str) -> None:
        self.rows.put({f"account:{directory}": uri})

    def save_certificate(self, chain_pem: bytes, key_pem: bytes) -> None:
        """The database first (the pair in one row, so no node reads half a renewal), then this node's files."""
        pair = {"chain": chain_pem.decode("ascii"), "key": key_pem.decode("ascii")}
        self.rows.put({"certificate": json.dumps(pair)})
        self.files.save_certificate(chain_pem, key_pem)

    def sync(self) -> bool:
        """Copy the cluster's certificate into this node's files when it differs; True when it did."""
        raw = self.rows.get("certificate")
        if raw is None:
            return False
        try:
            pair = json.loads(raw)
            chain, key = pair["chain"].encode("ascii"), pair["key"].encode("ascii")
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeEncodeError):
            return False
        try:
            if self.files.cert.read_bytes() == chain:
                return False
        except FileNotFoundError:
            pass
        self.files.save_certificate(chain, key)
        return True

    def certificate(self) -> Validity | None:
        return self.files.certificate()

    def state(self) -> State:
        return parse_state(self.rows.get("state"))

    def save_state(self, state: State) -> None:
        self.rows.put({"state": dump_state(state).decode()})

    def may_order(self, now: float, lease_s: float) -> bool:
        return self.rows.try_lead(self.node, now, lease_s)


class RowTokens:
    """http-01 answers in the database, for `challenges.Challenges`: any node answers the CA."""

    def __init__(self, rows: Rows) -> None:
        self.rows = rows

    def put(self, token: str, key_authorization: str) -> None:
        self.rows.put({f"http01:{token}": key_authorization})

    def get(self, token: str) -> str | None:
        return self.rows.get(f"http01:{token}")

    def delete(self, token: str) -> None:
        self.rows.delete(f"http01:{token}")
