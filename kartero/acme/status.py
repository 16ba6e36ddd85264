"""Which certificate the TLS listeners use, and `kartero cert status`.

The choice, made at start, at each SIGHUP and after each ACME order: with `[acme]`, its certificate
(data_dir/acme/cert.pem) as soon as a usable one is stored (it parses and its key matches), else the
`[tls]` files, self-signed until then when `[tls]` is not configured.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path

from cryptography import x509

from kartero.acme.storage import AcmeFiles, State
from kartero.config import Config

MAX_NAMES_SHOWN = 20


class Source(StrEnum):
    ACME = "acme"
    SELF_SIGNED = "self-signed"
    FILES = "configured files"


@dataclass(frozen=True, slots=True)
class InUse:
    cert: Path
    key: Path
    source: Source


def certificate_in_use(config: Config) -> InUse | None:
    """The certificate files the listeners load (blocking: reads and checks the ACME pair); None
    without TLS. The [tls] pair's source is told by `describe_certificate` (self-signed or not)."""
    if config.acme is not None:
        files = AcmeFiles(config.data_dir)
        if files.certificate() is not None:
            return InUse(files.cert, files.key, Source.ACME)
    if config.tls is None:
        return None
    return InUse(config.tls.cert, config.tls.key, Source.FILES)


@dataclass(frozen=True, slots=True)
class Report:
    """What `kartero cert status` prints."""

    source: Source | None  # None: no TLS configured
    path: Path | None = None
    names: tuple[str, ...] = ()
    issuer: str = ""
    serial: str = ""
    not_before: float = 0.0
    not_after: float = 0.0
    error: str = ""  # the certificate file could not be read
    acme_directory: str = ""
    acme_names: tuple[str, ...] = ()
    acme_state: State | None = None


def read_report(config: Config, acme_state: State | None = None) -> Report:
    """The report for `config` (blocking: reads the files); `acme_state` is the cluster's (from the
    database) on PostgreSQL, else read from data_dir/acme/."""
    use = certificate_in_use(config)
    acme = config.acme
    if acme is not None and acme_state is None:
        acme_state = AcmeFiles(config.data_dir).state()
    base = Report(None) if acme is None else Report(
        None, acme_directory=acme.directory, acme_names=acme.names, acme_state=acme_state)
    if use is None:
        return base
    try:
        first = x509.load_pem_x509_certificates(use.cert.read_bytes())[0]
    except (OSError, ValueError, IndexError) as exc:
        return replace(base, source=use.source, path=use.cert, error=str(exc))
    source = Source.SELF_SIGNED if use.source is Source.FILES and first.issuer == first.subject else use.source
    try:
        san = first.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = tuple(str(v) for v in san.get_values_for_type(x509.DNSName)) + tuple(
            str(v) for v in san.get_values_for_type(x509.IPAddress))
    except x509.ExtensionNotFound:
        names = ()
    return replace(base, source=source, path=use.cert, names=names, issuer=first.issuer.rfc4514_string(),
                   serial=f"{first.serial_number:x}", not_before=first.not_valid_before_utc.timestamp(),
                   not_after=first.not_valid_after_utc.timestamp())  # fmt: skip


def _when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(timestamp))


def format_report(report: Report, now: float) -> str:
    """The text of `kartero cert status`: one `key: value` line each, for people and for grep."""
    if report.source is None:
        return "source: none (no [tls] and no [acme]: the TLS listeners are off)\n"
    lines = [f"source: {report.source}", f"file: {report.path}"]
    if report.error:
        lines.append(f"error: cannot read the certificate: {report.error}")
    else:
        shown = ", ".join(report.names[:MAX_NAMES_SHOWN]) + (" ..." if len(report.names) > MAX_NAMES_SHOWN else "")
        left = (report.not_after - now) / 86400
        lines += [
            f"names: {shown or '(none)'}",
            f"issuer: {report.issuer}",
            f"serial: {report.serial}",
            f"not before: {_when(report.not_before)}",
            f"not after: {_when(report.not_after)}",
            f"days left: {left:.1f}" + (" (EXPIRED)" if left < 0 else ""),
        ]
    if report.acme_directory:
        state = report.acme_state or State()
        lines += [f"acme directory: {report.acme_directory}", f"acme names: {', '.join(report.acme_names)}"]
        if state.challenge:
            lines.append(f"acme challenge: {state.challenge}")
        if state.last_success_at:
            lines.append(f"last renewal: {_when(state.last_success_at)}")
        if state.failures:
            lines.append(f"last renewal error: {_when(state.last_failure_at)} ({state.failures} in a row): "
                         f"{state.last_error}")  # fmt: skip
        else:
            lines.append("last renewal error: none")
    return "\n".join(lines) + "\n"
