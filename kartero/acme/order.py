"""One certificate order (RFC 8555 §7.4) on certbot's `acme` library: blocking, run in a worker thread.

The steps: the CA's directory; the account (registered once per CA and key, its URL kept); a new key
(RSA 2048, which every mail client takes) and a CSR for the names; the order; for each pending
authorization the chosen challenge is put up (`Challenges`) and answered; the CA's validation is
awaited, the order finalized and the chain downloaded (`_finish`); the challenges come down whatever
happened. Every HTTP request has `REQUEST_TIMEOUT_S`, the whole validation and finalization
`ORDER_DEADLINE_S`.
"""

from __future__ import annotations

import importlib.metadata
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from acme import challenges, client, crypto_util, errors, messages
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from josepy.b64 import b64encode
from josepy.jwa import RS256
from josepy.jwk import JWKRSA

from kartero.acme.challenges import Challenges
from kartero.acme.storage import AcmeStorage
from kartero.log import kv

log = logging.getLogger("kartero.acme")

HTTP01 = "http-01"
TLS_ALPN01 = "tls-alpn-01"
REQUEST_TIMEOUT_S = 30
ORDER_DEADLINE_S = 120.0
POLL_FIRST_S = 0.25
POLL_MAX_S = 4.0
MAX_NAMES = 100  # authorizations asked for their errors: an order has one per name, 100 at most


@dataclass(frozen=True, slots=True)
class OrderSettings:
    directory: str
    email: str
    names: tuple[str, ...]
    ca_file: Path | None  # the trust anchor for the CA's HTTPS (a private CA); None: the system's
    challenge: str  # HTTP01 or TLS_ALPN01

    def __post_init__(self) -> None:
        if self.challenge not in (HTTP01, TLS_ALPN01):
            raise ValueError(f"unknown challenge type {self.challenge}")
        if not self.names:
            raise ValueError("no names to order")


@dataclass(frozen=True, slots=True)
class Issued:
    chain_pem: bytes
    key_pem: bytes


class OrderError(Exception):
    """The order failed; the message says where (for the log and `kartero cert status`)."""


class _Ready(challenges.KeyAuthorizationChallengeResponse):
    """The `{}` that tells the CA a challenge is ready (RFC 8555 §7.5.1): acme 5 has no tls-alpn-01
    classes, so this one answers both types. It carries the key authorization only so that it is not
    empty to acme's JWS wrapper, which would send an empty payload (a POST-as-GET) instead; the field is
    left out of the JSON."""

    typ = "ready"


def order_certificate(settings: OrderSettings, files: AcmeStorage, pending: Challenges) -> Issued:
    """Order a certificate for `settings.names`; raises OrderError (with the CA's problem when it sent one)."""
    try:
        return _order(settings, files, pending)
    except messages.Error as exc:
        raise OrderError(f"the CA refused: {exc}") from None
    except (errors.Error, OSError, ValueError) as exc:  # requests' errors are OSErrors
        raise OrderError(f"{type(exc).__name__}: {exc}") from None
    finally:
        pending.clear()


def _order(settings: OrderSettings, files: AcmeStorage, pending: Challenges) -> Issued:
    account_key = JWKRSA(key=files.account_key())
    net = client.ClientNetwork(
        account_key,
        alg=RS256,
        # requests' `verify` takes a CA bundle's path as well as True (acme's annotation says bool only)
        verify_ssl=str(settings.ca_file) if settings.ca_file else True,  # type: ignore[arg-type]
        user_agent=f"kartero/{importlib.metadata.version('kartero')}",
        timeout=REQUEST_TIMEOUT_S,
    )
    acme = client.ClientV2(client.ClientV2.get_directory(settings.directory, net), net)
    _account(acme, settings, files)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())  # fmt: skip
    order = acme.new_order(crypto_util.make_csr(key_pem, list(settings.names)))
    for authorization in order.authorizations:
        if authorization.body.status == messages.STATUS_VALID:
            continue  # validated for this account recently: the CA reuses it
        body = _challenge(authorization, settings.challenge)
        name = authorization.body.identifier.value
        token = _token(body)
        key_authorization = f"{token}.{b64encode(account_key.thumbprint()).decode()}"
        if settings.challenge == HTTP01:
            pending.add_http01(token, key_authorization)
        else:
            pending.add_tls_alpn01(name, key_authorization, files.folder / "scratch")
        log.info("%s", kv(event="acme.challenge", name=name, type=settings.challenge))
        # Posted directly: ClientV2.answer_challenge insists on a Link "up" header, which pebble omits and
        # RFC 8555 §7.5.1 does not require of this response.
        acme.net.post(body.uri, _Ready(key_authorization=key_authorization), new_nonce_url=acme.directory["newNonce"])
    return Issued(_finish(acme, order, time.monotonic() + ORDER_DEADLINE_S), key_pem)


def _finish(acme: client.ClientV2, order: messages.OrderResource, deadline: float) -> bytes:
    """Poll the order (RFC 8555 §7.4) until its authorizations are valid ("ready"), finalize it with the
    CSR, poll until "valid" and download the chain. Polls start at POLL_FIRST_S and double up to
    POLL_MAX_S (or the CA's Retry-After, at most 60 s): a CA that validates at once (pebble, often
    Let's Encrypt) is done in well under a second, a slow one is not asked more than every few seconds.
    acme's own poll_and_finalize sleeps a whole second before each look."""
    nonce = acme.directory["newNonce"]
    delay, finalized = POLL_FIRST_S, False
    while True:
        response = acme.net.post(order.uri, None, new_nonce_url=nonce)  # POST-as-GET
        body = messages.Order.from_json(response.json())
        if body.status == messages.STATUS_INVALID:
            raise OrderError(f"the CA gave up the order: {body.error or _problems(acme, body)}")
        if body.status == messages.STATUS_VALID and body.certificate:
            chain = acme.net.post(body.certificate, None, new_nonce_url=nonce).text
            if "-----BEGIN CERTIFICATE-----" not in chain:
                raise OrderError("the CA sent no certificate")
            return chain.encode("ascii")
        if body.status == messages.STATUS_READY and not finalized:
            csr = x509.load_pem_x509_csr(order.csr_pem)
            acme.net.post(body.finalize, messages.CertificateRequest(csr=csr), new_nonce_url=nonce)
            finalized = True
            continue
        retry_after = response.headers.get("Retry-After", "")
        wait = min(max(delay, float(retry_after)), 60.0) if retry_after.isdigit() else delay
        if time.monotonic() + wait > deadline:
            raise OrderError(f"the CA did not finish within {ORDER_DEADLINE_S:.0f}s (order {body.status})")
        time.sleep(wait)
        delay = min(delay * 2, POLL_MAX_S)


def _problems(acme: client.ClientV2, body: messages.Order) -> str:
    """Why the CA refused: the errors of the failed challenges (RFC 8555 §7.1.4), for the log."""
    problems = []
    for url in body.authorizations[:MAX_NAMES]:
        response = acme.net.post(url, None, new_nonce_url=acme.directory["newNonce"])
        authorization = messages.Authorization.from_json(response.json())
        problems += [f"{authorization.identifier.value}: {c.error}" for c in authorization.challenges
                     if c.error is not None]  # fmt: skip
    return "; ".join(problems) or "no reason given"


def _account(acme: client.ClientV2, settings: OrderSettings, files: AcmeStorage) -> None:
    uri = files.account_uri(settings.directory)
    if uri is not None:
        acme.net.account = messages.RegistrationResource(uri=uri, body=messages.Registration())
        return
    contact = messages.NewRegistration.from_data(email=settings.email or None, terms_of_service_agreed=True)
    try:
        uri = acme.new_account(contact).uri
    except errors.ConflictError as exc:  # this key has an account there already (its URL in the error)
        uri = exc.location
        acme.net.account = messages.RegistrationResource(uri=uri, body=messages.Registration())
    if not uri:
        raise OrderError("the CA sent no account URL")
    files.save_account(settings.directory, uri)
    log.info("%s", kv(event="acme.account_registered", directory=settings.directory, account=uri))


def _challenge(authorization: messages.AuthorizationResource, kind: str) -> messages.ChallengeBody:
    for body in authorization.body.challenges:
        if body.chall.typ == kind or getattr(body.chall, "jobj", {}).get("type") == kind:
            return body
    raise OrderError(f"the CA offers no {kind} challenge for {authorization.body.identifier.value}")


def _token(body: messages.ChallengeBody) -> str:
    """The challenge's token as sent (base64url): from the parsed http-01 challenge, or from the JSON of
    a type this version of `acme` does not know (tls-alpn-01)."""
    chall = body.chall
    if isinstance(chall, challenges.HTTP01):
        return str(chall.encode("token"))
    token = getattr(chall, "jobj", {}).get("token")
    if not isinstance(token, str) or not token or len(token) > 256:
        raise OrderError("the CA sent a challenge without a usable token")
    return token
