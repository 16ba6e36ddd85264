"""The `kartero` command: parses arguments and calls the packages; no logic of its own.

Exit codes: 0 ok, 1 runtime error, 2 usage or config error (one line naming the file, key and problem).
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import NoReturn

import click

from kartero import config as config_module
from kartero.auth.accounts import Directory, DirectoryError
from kartero.config import Config, ConfigError
from kartero.store.interface import StoreError
from kartero.store.sqlite import SQLiteStore


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"kartero: {message}", err=True)
    sys.exit(code)


def _config(ctx: click.Context) -> Config:
    try:
        return config_module.load(ctx.obj)
    except ConfigError as exc:
        _fail(str(exc), 2)


def _directory(ctx: click.Context) -> Directory:
    config = _config(ctx)
    store = SQLiteStore(config.data_dir)
    ctx.call_on_close(store.close)
    return Directory(store, config.domains)


def _read_password(password_stdin: bool) -> str:
    if password_stdin:
        line = sys.stdin.readline()
        return line.rstrip("\r\n")
    value: str = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    return value


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-c",
    "--config",
    "config_path",
    metavar="FILE",
    help="Config file (default: ./kartero.toml or $KARTERO_CONFIG; none: the embedded default).",
)
@click.version_option(package_name="kartero")
@click.pass_context
def main(ctx: click.Context, config_path: str | None) -> None:
    """Kartero, a complete mail server."""
    ctx.obj = config_path


@main.command()
@click.pass_context
def serve(ctx: click.Context) -> None:
    """Run every configured listener in the foreground until SIGTERM/SIGINT."""
    from kartero.log import configure
    from kartero.server import serve as run_server

    config = _config(ctx)
    configure(config.log_level)
    if config.source is None:
        click.echo(f"kartero: no config file, using the embedded default (data in {config.data_dir})", err=True)
    sys.exit(run_server(config))


INIT_TEMPLATE = """\
# Kartero configuration, written by `kartero init` on {date}.
# Reference: docs/configuration.md. Paths are relative to this file's folder.

hostname = "{hostname}"          # EHLO name, Received headers, greeting
domains = ["{domain}"]           # mail for these domains is delivered here
data_dir = "data"

[listen]                         # a key left out turns that listener off
smtp = ["0.0.0.0:25"]            # inbound MX (ports below 1024 need root or CAP_NET_BIND_SERVICE)
imap = ["0.0.0.0:143"]           # IMAP, STARTTLS
imaps = ["0.0.0.0:993"]          # IMAP, implicit TLS
pop3 = ["0.0.0.0:110"]           # POP3, STLS
pop3s = ["0.0.0.0:995"]          # POP3, implicit TLS

[tls]
cert = "tls/cert.pem"
key = "tls/key.pem"

[limits]
message_size = "50MB"
recipients_per_message = 1000
"""


@main.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--domain", required=True, help="The mail domain, e.g. example.org.")
@click.option("--hostname", help="This server's host name (default: mail.DOMAIN).")
@click.option("--force", is_flag=True, help="Overwrite an existing config.")
def init(directory: Path, domain: str, hostname: str | None, force: bool) -> None:
    """Write DIRECTORY/kartero.toml, a self-signed certificate and the data folder."""
    from kartero.dns.names import DomainError, canonical_domain
    from kartero.tls import make_self_signed

    try:
        domain = canonical_domain(domain)
        hostname = canonical_domain(hostname) if hostname else f"mail.{domain}"
    except DomainError as exc:
        _fail(str(exc), 2)
    target = directory / config_module.DEFAULT_CONFIG_NAME
    if directory.exists() and any(directory.iterdir()) and not force:
        if target.exists():
            _fail(f"{target} exists; use --force to overwrite it", 1)
        _fail(f"{directory} is not empty; use --force to write into it", 1)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "data").mkdir(exist_ok=True)
    make_self_signed(directory / "tls" / "cert.pem", directory / "tls" / "key.pem", [hostname])
    target.write_text(INIT_TEMPLATE.format(date=datetime.now(UTC).date().isoformat(), hostname=hostname, domain=domain))
    click.echo(f"wrote {target}")
    click.echo(f"next: kartero -c {target} user add postmaster@{domain} --password-stdin")


# -- accounts ------------------------------------------------------------------------------------------


@main.group()
def user() -> None:
    """Manage accounts."""


@user.command("add")
@click.argument("address")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of stdin.")
@click.pass_context
def user_add(ctx: click.Context, address: str, password_stdin: bool) -> None:
    """Create an account with INBOX, Sent, Drafts, Trash, Junk and Archive."""
    directory = _directory(ctx)
    try:
        account = directory.add_user(address, _read_password(password_stdin))
    except DirectoryError as exc:
        _fail(str(exc), 2)
    except StoreError as exc:
        _fail(str(exc), 1)
    click.echo(f"added {account.address}")


@user.command("list")
@click.pass_context
def user_list(ctx: click.Context) -> None:
    """List accounts."""
    for account in _directory(ctx).store.list_accounts():
        click.echo(account.address)


@user.command("passwd")
@click.argument("address")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of stdin.")
@click.pass_context
def user_passwd(ctx: click.Context, address: str, password_stdin: bool) -> None:
    """Set a new password."""
    directory = _directory(ctx)
    try:
        directory.set_password(address, _read_password(password_stdin))
    except DirectoryError as exc:
        _fail(str(exc), 2)
    click.echo(f"password changed for {address}")


@user.command("del")
@click.argument("address")
@click.pass_context
def user_del(ctx: click.Context, address: str) -> None:
    """Delete an account and all its mail."""
    try:
        _directory(ctx).delete_user(address)
    except DirectoryError as exc:
        _fail(str(exc), 2)
    click.echo(f"deleted {address}")


# -- aliases -------------------------------------------------------------------------------------------


@main.group()
def alias() -> None:
    """Manage aliases (SOURCE may be @domain: a catch-all)."""


@alias.command("add")
@click.argument("source")
@click.argument("destination")
@click.pass_context
def alias_add(ctx: click.Context, source: str, destination: str) -> None:
    """Deliver mail for SOURCE to DESTINATION (add several for a list)."""
    try:
        src, dst = _directory(ctx).add_alias(source, destination)
    except DirectoryError as exc:
        _fail(str(exc), 2)
    click.echo(f"added {src} -> {dst}")


@alias.command("list")
@click.pass_context
def alias_list(ctx: click.Context) -> None:
    """List aliases as SOURCE DESTINATION."""
    for source, destination in _directory(ctx).store.list_aliases():
        click.echo(f"{source} {destination}")


@alias.command("del")
@click.argument("source")
@click.pass_context
def alias_del(ctx: click.Context, source: str) -> None:
    """Remove every destination of SOURCE."""
    try:
        count = _directory(ctx).delete_alias(source)
    except DirectoryError as exc:
        _fail(str(exc), 2)
    click.echo(f"deleted {count} alias{'es' if count != 1 else ''} of {source}")
