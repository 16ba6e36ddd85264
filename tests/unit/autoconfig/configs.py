"""Configs for the autoconfiguration tests, made directly (no TLS files needed)."""

from __future__ import annotations

from pathlib import Path

from kartero.config import Config, HttpConfig, ListenAddress, MtaStsConfig, TLSConfig

TLS = TLSConfig(Path("/nonexistent/cert.pem"), Path("/nonexistent/key.pem"))


def make_config(listen: dict[str, int], public_ports: dict[str, int] | None = None, *, tls: bool = True,
                mta_sts: MtaStsConfig | None = None) -> Config:  # fmt: skip
    return Config(
        hostname="mail.example.org",
        domains=("example.org", "example.net"),
        data_dir=Path("/nonexistent"),
        listen={kind: (ListenAddress("0.0.0.0", port), ListenAddress("::", port)) for kind, port in listen.items()},
        tls=TLS if tls else None,
        http=HttpConfig(public_ports=public_ports or {}),
        mta_sts=mta_sts or MtaStsConfig(),
    )
