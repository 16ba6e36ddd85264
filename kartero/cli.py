"""The `kartero` command: parses arguments and calls the packages; no logic of its own.

Exit codes: 0 ok, 1 runtime error, 2 usage or config error (one line naming the file, key and problem).
"""

from __future__ import annotations

import os
import secrets
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import click

from kartero import config as config_module
from kartero.auth import tokens
from kartero.auth.accounts import Directory, DirectoryError, parse_address
from kartero.config import Config, ConfigError
from kartero.control import nudge_server
from kartero.sieve_scripts import LIMITS, ScriptProblem, check_script, owner, put
from kartero.store.backends import AnyStore, open_store
from kartero.store.interface import (
    MAX_TRACE_RESULTS,
    NoSuchScript,
    ScriptIsActive,
    StoreError,
    TooManyScripts,
    TraceQuery,
)

if TYPE_CHECKING:
    from kartero.mailauth.dkim import DKIMKey


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
    store = _open_store(config)
    ctx.call_on_close(store.close)
    return Directory(store.accounts, config.domains, config.auth.scram_iterations)


def _open_store(config: Config) -> AnyStore:
    try:
        return open_store(config.data_dir, config.store.backend, config.store.url, config.store.node,
                          config.store.lease_s)
    except Exception as exc:  # the database away, or at another schema version
        _fail(f"cannot open the store: {exc}", 1)


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
    # Every file a command makes (the database with password hashes and SCRAM keys, messages, keys, the
    # maildrop) is for Kartero's user only: files 0600, folders 0700 (issue 8).
    os.umask(0o077)
    ctx.obj = config_path


@main.command()
@click.option("--workers", type=click.IntRange(1, 256), default=1, show_default=True,
              help="Serving processes sharing the listeners (PostgreSQL store only).")
@click.option("--worker", type=int, default=0, hidden=True)  # one of --workers' processes
@click.pass_context
def serve(ctx: click.Context, workers: int, worker: int) -> None:
    """Run every configured listener in the foreground until SIGTERM/SIGINT."""
    from kartero.log import configure
    from kartero.server import serve as run_server

    config = _config(ctx)
    configure(config.log_level)
    if workers > 1:
        if not config.store.is_postgresql or config.source is None:
            _fail('--workers needs a config with [store] backend = "postgresql": the embedded store belongs to '
                  "one process (run one `kartero serve`, or move to PostgreSQL: docs/cluster.md)", 2)  # fmt: skip
        from kartero.workers import serve_workers

        sys.exit(serve_workers(config.source, config.data_dir, workers))
    if config.source is None:
        click.echo(f"kartero: no config file, using the embedded default (data in {config.data_dir})", err=True)
    sys.exit(run_server(config, worker))


INIT_TEMPLATE = """\
# Kartero configuration, written by `kartero init` on {date}.
# Reference: docs/configuration.md. Paths are relative to this file's folder.

hostname = "{hostname}"          # EHLO name, Received headers, greeting
domains = ["{domain}"]           # mail for these domains is delivered here
data_dir = "data"

[listen]                         # a key left out turns that listener off
smtp = ["0.0.0.0:25"]            # inbound MX (ports below 1024 need root or CAP_NET_BIND_SERVICE)
submission = ["0.0.0.0:587"]     # users send mail: STARTTLS, then AUTH
submissions = ["0.0.0.0:465"]    # users send mail: implicit TLS, then AUTH
imap = ["0.0.0.0:143"]           # IMAP, STARTTLS
imaps = ["0.0.0.0:993"]          # IMAP, implicit TLS
pop3 = ["0.0.0.0:110"]           # POP3, STLS
pop3s = ["0.0.0.0:995"]          # POP3, implicit TLS
managesieve = ["0.0.0.0:4190"]   # ManageSieve (Sieve scripts), STARTTLS
http = ["0.0.0.0:80"]            # ACME http-01, autoconfig, MTA-STS; other pages asked over plain http go to https
https = ["0.0.0.0:443"]          # web admin /admin/, users' page /, API /api/v1/, /metrics, MTA-STS, autodiscover

[tls]                            # self-signed by `kartero init`; with [acme], used until the CA's arrives
cert = "tls/cert.pem"
key = "tls/key.pem"

# [acme]                         # a certificate from Let's Encrypt, renewed by itself (docs/tls.md); the CA
#                                # reaches port 80 (an http listener there) or else 443 (https) of each name
# directory = "https://acme-v02.api.letsencrypt.org/directory"
# email = "postmaster@{domain}"
# names = ["{hostname}"]

[limits]
message_size = "50MB"
recipients_per_message = 1000

[delivery]                       # the outbound queue
queue_lifetime = "5d"            # then the sender gets a failure notice
# relayhost = "smarthost.example:25"   # send everything through this host instead of MX lookups

# [store]                        # default: the embedded store in data_dir; PostgreSQL for a cluster
# backend = "postgresql"         # then `kartero db init` (docs/cluster.md)
# url = "postgresql://kartero@127.0.0.1:5432/kartero"
# node = "mx1"                   # this node's name (default: the host name)

[srs]                            # forwarding to other providers: the sender is rewritten (SRS)
secret = "{srs_secret}"  # signs the bounce addresses; the same on every node
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
    (directory / "data").chmod(0o700)  # also when --force writes into an older, world-readable folder
    make_self_signed(directory / "tls" / "cert.pem", directory / "tls" / "key.pem", [hostname])
    target.write_text(INIT_TEMPLATE.format(date=datetime.now(UTC).date().isoformat(), hostname=hostname, domain=domain,
                                           srs_secret=secrets.token_hex(32)))  # fmt: skip
    click.echo(f"wrote {target}")
    from kartero.systemd import write_unit

    click.echo(f"wrote {write_unit(directory, target, directory / 'data')} (systemd: docs/systemd.md)")
    click.echo(f"next: kartero -c {target} user add postmaster@{domain} --password-stdin")


# -- accounts ------------------------------------------------------------------------------------------


@main.group()
def user() -> None:
    """Manage accounts."""


@user.command("add")
@click.argument("address")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of stdin.")
@click.option("--admin", "is_admin", is_flag=True, help="May use the web admin (/admin/) and the admin API.")
@click.pass_context
def user_add(ctx: click.Context, address: str, password_stdin: bool, is_admin: bool) -> None:
    """Create an account with INBOX, Sent, Drafts, Trash, Junk and Archive."""
    directory = _directory(ctx)
    try:
        account = directory.add_user(address, _read_password(password_stdin), is_admin=is_admin)
    except DirectoryError as exc:
        _fail(str(exc), 2)
    except StoreError as exc:
        _fail(str(exc), 1)
    click.echo(f"added {account.address}")


@user.command("list")
@click.pass_context
def user_list(ctx: click.Context) -> None:
    """List accounts (admins marked)."""
    for account in _directory(ctx).store.list_accounts():
        click.echo(f"{account.address} (admin)" if account.is_admin else account.address)


@user.command("admin")
@click.argument("address")
@click.argument("state", type=click.Choice(["on", "off"]))
@click.pass_context
def user_admin(ctx: click.Context, address: str, state: str) -> None:
    """Let an account use the web admin and the admin API (on), or no longer (off: signs it out)."""
    try:
        address = _directory(ctx).set_admin(address, state == "on")
    except DirectoryError as exc:
        _fail(str(exc), 2)
    click.echo(f"{address} is {'an admin' if state == 'on' else 'no admin'}")


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


@user.command("quota")
@click.argument("address")
@click.argument("size", required=False)
@click.pass_context
def user_quota(ctx: click.Context, address: str, size: str | None) -> None:
    """Set the storage quota (like 500M or 2G; 0: none; "default": [limits] default_quota), or show
    the usage and limit when SIZE is left out."""
    config = _config(ctx)
    store = _open_store(config)
    ctx.call_on_close(store.close)
    directory = Directory(store.accounts, config.domains, config.auth.scram_iterations)
    try:
        if size is not None:
            limit = None if size.strip().lower() == "default" else config_module.parse_size(size)
            if limit is None and size.strip().lower() != "default":
                _fail(f'not a size: {size!r} (like "500M", "2G", "0" for none, or "default")', 2)
            address = directory.set_quota(address, limit)
        else:
            address = parse_address(address)
        account = store.accounts.get_account(address)
        if account is None:
            raise DirectoryError(f"no account {address}")
    except DirectoryError as exc:
        _fail(str(exc), 2)
    usage = store.mail.quota_usage([account.id])[account.id]
    limit_bytes = usage.effective_limit(config.limits.default_quota)
    origin = " ([limits] default_quota)" if usage.limit_bytes is None else ""
    if limit_bytes:
        share = f" ({100 * usage.used_bytes / limit_bytes:.1f}%)"
        click.echo(f"{address}: {usage.used_bytes} of {limit_bytes} bytes{origin}{share}, {usage.messages} messages")
    else:
        click.echo(f"{address}: {usage.used_bytes} bytes, no limit{origin}, {usage.messages} messages")


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


# -- API tokens ----------------------------------------------------------------------------------------


@main.group()
def token() -> None:
    """Manage the JSON API's bearer tokens (/api/v1/)."""


@token.command("create")
@click.argument("name")
@click.option("--user", "address", help="Act as this account (admin rights only if it is an admin).")
@click.pass_context
def token_create(ctx: click.Context, name: str, address: str | None) -> None:
    """Make a token and print it: it is shown this once (only its hash is kept)."""
    if not tokens.valid_token_name(name):
        _fail(f"{name!r}: a token name is 1-{tokens.TOKEN_NAME_MAX} letters, digits, '-', '_' or '.'", 2)
    directory = _directory(ctx)
    account_id = None
    if address is not None:
        account = directory.store.get_account(parse_address(address))
        if account is None:
            _fail(f"no account {address}", 2)
        account_id = account.id
    secret, digest = tokens.new_secret(tokens.TOKEN_PREFIX)
    if not directory.store.add_token(name, digest, account_id):
        _fail(f"a token named {name} exists (revoke it first)", 1)
    click.echo(secret)


@token.command("list")
@click.pass_context
def token_list(ctx: click.Context) -> None:
    """List tokens as NAME, CREATED (UTC) and whom they act for."""
    store = _directory(ctx).store
    owners = {a.id: a.address for a in store.list_accounts()}
    for t in store.list_tokens():
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t.created_at))
        who = "admin" if t.account_id is None else owners.get(t.account_id, "?")
        click.echo(f"{t.name} {created} {who}")


@token.command("revoke")
@click.argument("name")
@click.pass_context
def token_revoke(ctx: click.Context, name: str) -> None:
    """Delete a token: requests carrying it get 401 from now on."""
    if not _directory(ctx).store.delete_token(name):
        _fail(f"no token {name}", 2)
    click.echo(f"revoked {name}")


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


# -- sending and the queue -----------------------------------------------------------------------------


@main.command(context_settings={"ignore_unknown_options": False})
@click.option("-t", "from_headers", is_flag=True, help="Also send to the To:, Cc: and Bcc: addresses (Bcc: removed).")
@click.option("-f", "sender", metavar="SENDER", help='Envelope sender ("" or "<>": the null sender).')
@click.option("-F", "full_name", metavar="NAME", help="Full name for a From: header the message lacks.")
@click.option("-i", "ignore_dots", is_flag=True, help='A line of one "." does not end the message.')
@click.option("-o", "options", multiple=True, metavar="OPT", help="Sendmail options: -oi is -i, others are ignored.")
@click.option("-N", "notify", metavar="NOTIFY", help="DSN NOTIFY: never, or a list of success,delay,failure.")
@click.option("-R", "ret", type=click.Choice(["full", "hdrs"], case_sensitive=False), help="DSN RET.")
@click.option("-V", "envid", metavar="ENVID", help="DSN ENVID.")
@click.option("-B", "body_type", metavar="TYPE", help="Ignored (the body type is detected).")
@click.argument("recipients", nargs=-1)
@click.pass_context
def sendmail(ctx: click.Context, from_headers: bool, sender: str | None, full_name: str | None, ignore_dots: bool,
             options: tuple[str, ...], notify: str | None, ret: str | None, envid: str | None,
             body_type: str | None, recipients: tuple[str, ...]) -> None:  # fmt: skip
    """Queue the message on stdin for RECIPIENTS (the sendmail(8) interface, for cron and scripts).

    Exit codes follow sysexits.h: 0 queued, 64 bad usage, 65 bad message, 67 unknown local user,
    75 try again later.
    """
    import getpass
    import time

    from kartero.delivery import maildrop
    from kartero.delivery import sendmail as sm

    config = _config(ctx)
    directory = _directory(ctx)
    snapshot = directory.snapshot()
    primary = config.primary_domain
    data = sm.read_message(sys.stdin.buffer.read(), ignore_dots=ignore_dots or "i" in options)
    try:
        wanted = [sm.qualify(r, primary) for arg in recipients for r in arg.split(",") if r.strip()]
        if from_headers:
            wanted += [sm.qualify(r, primary) for r in sm.header_recipients(data)]
            data = sm.strip_bcc(data)
        wanted = list(dict.fromkeys(wanted))
        if not wanted:
            raise sm.SendmailError("no recipients (give addresses, or -t to read them from the message)", sm.EX_USAGE)
        if not data:
            raise sm.SendmailError("empty message on stdin", sm.EX_DATAERR)
        if len(data) > config.limits.message_size:
            raise sm.SendmailError(f"message of {len(data)} bytes exceeds the limit of {config.limits.message_size}",
                                   sm.EX_DATAERR)  # fmt: skip
        sm.check_local(wanted, snapshot)
        login = getpass.getuser()
        if sender is None:
            envelope_sender = sm.default_sender(login, primary, snapshot)
        elif sender.strip() in ("", "<>"):
            envelope_sender = ""
        else:
            envelope_sender = sm.qualify(sender, primary)
        notify_list: tuple[str, ...] = ()
        if notify:
            notify_list = tuple(sorted({n.strip().upper() for n in notify.split(",") if n.strip()}))
            if not set(notify_list) <= {"NEVER", "SUCCESS", "DELAY", "FAILURE"} or (
                "NEVER" in notify_list and len(notify_list) > 1
            ):
                raise sm.SendmailError(f"bad -N {notify!r}: never, or success,delay,failure", sm.EX_USAGE)
        if full_name and envelope_sender:
            data = sm.add_from(data, full_name, envelope_sender)
        maildrop.write(config.data_dir, maildrop.Dropped(
            sender=envelope_sender, recipients=tuple(wanted), data=data, user=login, submitted_at=time.time(),
            notify=notify_list, ret=ret.upper() if ret else None, envid=envid,
        ))  # fmt: skip
    except sm.SendmailError as exc:
        _fail(str(exc), exc.code)
    except OSError as exc:
        _fail(f"cannot write to the maildrop: {exc}", sm.EX_TEMPFAIL)
    nudge_server(config.data_dir)


@main.group()
def queue() -> None:
    """Look at and manage the outbound queue (the server delivers it)."""


def _queue_store(ctx: click.Context) -> AnyStore:
    store = _open_store(_config(ctx))
    ctx.call_on_close(store.close)
    return store


def _when(timestamp: int) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S")


@queue.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per message, for scripts.")
@click.pass_context
def queue_list(ctx: click.Context, as_json: bool) -> None:
    """Every queued message with each recipient's state, attempts, next try and last reply."""
    import json

    entries = _queue_store(ctx).queue.queue_entries()
    if as_json:
        for e in entries:
            click.echo(json.dumps({
                "id": e.id, "sender": e.sender, "size": e.size, "created_at": e.created_at,
                "expires_at": e.expires_at,
                "recipients": [{"address": r.address, "state": r.state.value, "attempts": r.attempts,
                                "next_attempt_at": r.next_attempt_at, "last_reply": r.last_reply}
                               for r in e.recipients],
            }))  # fmt: skip
        return
    if not entries:
        click.echo("queue is empty")
        return
    click.echo(f"{'ID':<24}  {'SIZE':>9}  {'ARRIVED (UTC)':<19}  SENDER")
    for e in entries:
        click.echo(f"{e.id:<24}  {e.size:>9}  {_when(e.created_at):<19}  <{e.sender}>")
        for r in e.recipients:
            line = f"    {r.state.value:<9} {r.address}  attempts={r.attempts}"
            if r.state.value in ("pending", "deferred"):
                line += f"  next={_when(r.next_attempt_at)}"
            if r.last_reply:
                line += f"  {r.last_reply}"
            click.echo(line)
    recipients = sum(len(e.recipients) for e in entries)
    click.echo(f"{len(entries)} message{'s' if len(entries) != 1 else ''}, {recipients} recipient"
               f"{'s' if recipients != 1 else ''}")  # fmt: skip


@queue.command("show")
@click.argument("queue_id")
@click.option("--full", is_flag=True, help="Print the whole message, not only its header.")
@click.pass_context
def queue_show(ctx: click.Context, queue_id: str, full: bool) -> None:
    """One queued message: envelope, recipients, and its header (or all of it)."""
    store = _queue_store(ctx)
    entry = next((e for e in store.queue.queue_entries() if e.id == queue_id), None)
    if entry is None:
        _fail(f"no queued message {queue_id}", 1)
    click.echo(f"id: {entry.id}\nsender: <{entry.sender}>\nsize: {entry.size}\narrived: {_when(entry.created_at)}"
               f"\nexpires: {_when(entry.expires_at)}")  # fmt: skip
    for r in entry.recipients:
        click.echo(f"recipient: <{r.address}> {r.state.value} attempts={r.attempts}"
                   + (f" last_reply={r.last_reply!r}" if r.last_reply else ""))  # fmt: skip
    data = store.mail.read_message(queue_id)
    if not full:
        end = data.find(b"\r\n\r\n")
        data = data[: end + 2] if end >= 0 else data
    click.echo("")
    sys.stdout.flush()
    sys.stdout.buffer.write(data.replace(b"\r\n", b"\n"))


@queue.command("flush")
@click.pass_context
def queue_flush(ctx: click.Context) -> None:
    """Make every deferred recipient due now (the server tries them within seconds)."""
    count = _queue_store(ctx).queue.queue_flush()
    nudge_server(_config(ctx).data_dir)
    click.echo(f"{count} recipient{'s' if count != 1 else ''} due now")


@queue.command("delete")
@click.argument("queue_ids", nargs=-1)
@click.option("--all", "delete_all", is_flag=True, help="Delete every queued message.")
@click.pass_context
def queue_delete(ctx: click.Context, queue_ids: tuple[str, ...], delete_all: bool) -> None:
    """Delete queued messages without sending a bounce."""
    store = _queue_store(ctx)
    if delete_all:
        queue_ids = tuple(e.id for e in store.queue.queue_entries())
    elif not queue_ids:
        _fail("give queue IDs, or --all", 2)
    missing = [q for q in queue_ids if not store.queue.queue_delete(q)]
    for q in queue_ids:
        if q not in missing:
            click.echo(f"deleted {q}")
    if missing:
        _fail(f"not in the queue: {', '.join(missing)}", 1)


# -- message trace -------------------------------------------------------------------------------------


def _moment(option: str, text: str | None) -> float | None:
    """`--since`/`--until`: an ISO 8601 date or time (UTC unless it says otherwise), or a duration ago."""
    if text is None:
        return None
    ago = config_module.parse_duration(text)
    if ago is not None:
        return datetime.now(UTC).timestamp() - ago
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        _fail(f"{option}: expected a time like 2026-11-29T18:00 or a duration like 2h, got {text!r}", 2)
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


@main.command("trace")
@click.option("--address", metavar="ADDR", help="Sent from or to this address (or an account it reached).")
@click.option("--message-id", metavar="ID", help="The Message-ID field, angle brackets or not.")
@click.option("--id", "--queue-id", "id_", metavar="ID", help="Kartero's id of the message or a queue entry.")
@click.option("--since", metavar="WHEN", help="Received at or after: 2026-11-29T18:00 (UTC), or 2h, 7d (ago).")
@click.option("--until", metavar="WHEN", help="Received before (as --since).")
@click.option("--limit", type=click.IntRange(1, MAX_TRACE_RESULTS), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per message, for scripts.")
@click.pass_context
def trace(ctx: click.Context, address: str | None, message_id: str | None, id_: str | None, since: str | None,
          until: str | None, limit: int, as_json: bool) -> None:  # fmt: skip
    """Where messages went: each one's path (received, stored, queued, every delivery attempt with the
    remote reply, bounced, notices sent), newest first. Kept for [trace] keep (docs/trace.md)."""
    import json

    from kartero.mail.trace import event_summary, format_at, message_dict

    query = TraceQuery(address, message_id, id_, _moment("--since", since), _moment("--until", until), limit)
    store = _open_store(_config(ctx))
    ctx.call_on_close(store.close)
    result = store.trace.search(query)
    for message in result.messages:
        if as_json:
            click.echo(json.dumps(message_dict(message), ensure_ascii=False))
            continue
        header = f" <{message.header_id}>" if message.header_id else ""
        click.echo(f"{format_at(message.first.at)}  {message.message_id}{header}")
        for event in message.events:
            click.echo(f"  {format_at(event.at)[11:]}  {event.kind.value:<9}  {event_summary(event)}")
    if not as_json:
        if not result.messages:
            click.echo("no traced message matches")
        elif result.more:
            click.echo(f"(the {limit} newest shown: narrow the search, or raise --limit)")


# -- DKIM ----------------------------------------------------------------------------------------------


@main.group()
def dkim() -> None:
    """DKIM keys: mail submitted from a domain with a key is signed."""


@dkim.command("keygen")
@click.argument("domain")
@click.option("--selector", default=None, help="Selector (default: kartero, or kartero-ed for --algorithm ed25519).")
@click.option(
    "--algorithm", type=click.Choice(["rsa", "ed25519"]), default="rsa", show_default=True,
    help="rsa is RSA-2048; an ed25519 key (RFC 8463) next to an rsa one signs with both.",
)  # fmt: skip
@click.option("--force", is_flag=True, help="Replace the key of this selector.")
@click.pass_context
def dkim_keygen(ctx: click.Context, domain: str, selector: str | None, algorithm: str, force: bool) -> None:
    """Make a signing key for DOMAIN and print the DNS record to publish."""
    from kartero.dns.names import DomainError, canonical_domain
    from kartero.mailauth.dkim import DEFAULT_SELECTOR, DKIMError, check_selector, generate

    config = _config(ctx)
    try:
        domain = canonical_domain(domain)
    except DomainError as exc:
        _fail(str(exc), 2)
    if domain not in config.domains:
        _fail(f"{domain} is not one of the local domains ({', '.join(config.domains)})", 2)
    default = DEFAULT_SELECTOR if algorithm == "rsa" else f"{DEFAULT_SELECTOR}-ed"
    try:
        if config.store.is_postgresql:
            key = _store_new_key(ctx, config, domain, check_selector(selector or default), algorithm, force)
            click.echo(f"stored {key.path} in the database (every node signs with it)")
        else:
            key = generate(config.data_dir, domain, selector or default, algorithm, force=force)
            click.echo(f"wrote {key.path}")
    except DKIMError as exc:
        _fail(str(exc), 1)
    click.echo("publish this TXT record (mail is signed with the key from now on):")
    click.echo(f'{key.record_name}. IN TXT "{key.dns_record()}"')


def _store_new_key(ctx: click.Context, config: Config, domain: str, selector: str, algorithm: str,
                   force: bool) -> DKIMKey:  # fmt: skip
    """A new key in the PostgreSQL store (shared by the nodes); DKIMError when the selector has one."""
    import time

    from kartero.mailauth.dkim import DKIMError, keys_from_rows, new_private_key
    from kartero.store.postgres import PgStore

    store = _open_store(config)
    ctx.call_on_close(store.close)
    assert isinstance(store, PgStore)
    private, created = new_private_key(algorithm), time.time()
    if not store.put_dkim_key(domain, selector, algorithm, private, created, replace=force):
        raise DKIMError(f"selector {selector!r} of {domain} already has a key: use --force to replace it (and "
                        "publish the new record), or another selector; one key per selector")  # fmt: skip
    return keys_from_rows([(domain, selector, algorithm, private, created)])[domain][0]


def _dkim_keys(ctx: click.Context, config: Config) -> dict[str, list[DKIMKey]]:
    """The keys the server signs with: files under data_dir, or rows of the PostgreSQL store."""
    from kartero.mailauth.dkim import keys_from_rows, load_keys
    from kartero.store.postgres import PgStore

    if not config.store.is_postgresql:
        return load_keys(config.data_dir)
    store = _open_store(config)
    ctx.call_on_close(store.close)
    assert isinstance(store, PgStore)
    return keys_from_rows(store.dkim_keys())


@dkim.command("list")
@click.pass_context
def dkim_list(ctx: click.Context) -> None:
    """Every key: domain, selector, algorithm, and its DNS record."""
    keys = _dkim_keys(ctx, _config(ctx))
    if not keys:
        click.echo("no DKIM keys (make one with: kartero dkim keygen DOMAIN)")
    for domain_keys in keys.values():
        for key in domain_keys:
            click.echo(f'{key.domain} {key.selector} {key.algorithm} {key.record_name}. IN TXT "{key.dns_record()}"')


# -- DNS setup check -----------------------------------------------------------------------------------


@main.command("dns")
@click.argument("domain")
@click.pass_context
def dns_check(ctx: click.Context, domain: str) -> None:
    """Check the DNS records DOMAIN needs (MX, SPF, DKIM, DMARC, MTA-STS, TLS-RPT, the autoconfiguration
    names and SRV records, PTR) and print the fix for each one missing or wrong. Exit 0 when every
    required record is right, else 1."""
    from kartero.autoconfig.records import client_records
    from kartero.dns.names import DomainError, canonical_domain
    from kartero.dns.resolver import blocking_resolver
    from kartero.mailauth.dnscheck import check_domain

    config = _config(ctx)
    try:
        domain = canonical_domain(domain)
    except DomainError as exc:
        _fail(str(exc), 2)
    if domain not in config.domains:
        _fail(f"{domain} is not one of the local domains ({', '.join(config.domains)})", 2)
    servers = [(n.host, n.port) for n in config.dns.nameservers]
    resolver = blocking_resolver(servers, timeout_s=config.dns.timeout_s)
    where = ", ".join(str(n) for n in config.dns.nameservers) or "the system resolver"
    click.echo(f"DNS records for {domain} (mail host {config.hostname}), looked up through {where}:")
    checks = check_domain(domain, config.hostname, _dkim_keys(ctx, config).get(domain, []), resolver,
                          client_records(config, domain))
    width = max(len(check.name) for check in checks)
    for check in checks:
        label = check.status if check.required or check.status == "ok" else f"{check.status}*"
        click.echo(f"{label:<9} {check.name:<{width}} {check.detail}")
    if any(not c.required and c.status != "ok" for c in checks):
        click.echo("* recommended, not required")
    sys.exit(0 if all(c.status == "ok" for c in checks if c.required) else 1)


# -- the database (PostgreSQL cluster) -----------------------------------------------------------------


@main.group()
def db() -> None:
    """The store's database: create or upgrade the PostgreSQL schema."""


@db.command("init")
@click.pass_context
def db_init(ctx: click.Context) -> None:
    """Create or upgrade the schema of the PostgreSQL database `[store] url` names (idempotent: run it
    after every upgrade of Kartero, from one node). The embedded store upgrades itself when opened."""
    config = _config(ctx)
    if not config.store.is_postgresql:
        store = _open_store(config)
        store.close()
        click.echo(f"embedded store at {config.data_dir}: up to date (it upgrades itself when opened)")
        return
    from kartero.store.pg_db import SchemaError, migrate

    try:
        before, after = migrate(config.store.url)
    except SchemaError as exc:
        _fail(str(exc), 1)
    except Exception as exc:  # psycopg.Error: unreachable, refused, no such database
        _fail(f"cannot reach the database: {exc}", 1)
    if before == after:
        click.echo(f"schema at version {after}: nothing to do")
    else:
        click.echo(f"schema upgraded from version {before} to {after}")


@db.command("copy")
@click.option("--from", "source", required=True, metavar="DATA_DIR",
              type=click.Path(file_okay=False, path_type=Path), help="The data_dir of the embedded store.")  # fmt: skip
@click.pass_context
def db_copy(ctx: click.Context, source: Path) -> None:
    """Copy an embedded store (accounts, aliases, mailboxes, messages with their UIDVALIDITY, UIDs, flags
    and MODSEQs, the queue) into the PostgreSQL database `[store] url` names. Stop its server first.
    Resumable: a second run copies only what is missing."""
    config = _config(ctx)
    if not config.store.is_postgresql:
        _fail('db copy copies into PostgreSQL: set [store] backend = "postgresql" and url in the config', 2)
    if not (source / "kartero.db").is_file():
        _fail(f"no embedded store at {source} (no kartero.db there)", 2)
    from kartero.control import server_pid

    pid = server_pid(source)
    if pid is not None:
        _fail(f"a Kartero server (pid {pid}) runs on {source}: stop it first, so nothing changes during the copy", 1)
    import psycopg

    from kartero.store.copy import CopyConflict, copy_store, work_total
    from kartero.store.pg_db import SchemaError, check_schema
    from kartero.store.sqlite import SQLiteStore

    try:
        check_schema(config.store.url)
    except SchemaError as exc:
        _fail(str(exc), 1)
    except psycopg.Error as exc:
        _fail(f"cannot reach the database: {exc}", 1)
    store = SQLiteStore(source)
    try:
        with click.progressbar(length=work_total(store), label="copying", file=sys.stderr) as bar:
            counts = copy_store(store, config.store.url, bar.update)
    except CopyConflict as exc:
        _fail(f"{exc}; nothing was copied", 1)
    except (psycopg.Error, OSError, StoreError) as exc:
        _fail(f"the copy stopped: {exc} (run it again to continue where it stopped)", 1)
    finally:
        store.close()
    click.echo(counts.summary())
    _copy_dkim_keys(ctx, config, source)


def _copy_dkim_keys(ctx: click.Context, config: Config, source: Path) -> None:
    """The embedded server's DKIM keys (files) into the database, where every node finds them; a selector
    the database has a key for already is left as it is."""
    from kartero.mailauth.dkim import load_keys
    from kartero.store.postgres import PgStore

    keys = [key for domain_keys in load_keys(source).values() for key in domain_keys]
    if not keys:
        return
    store = _open_store(config)
    ctx.call_on_close(store.close)
    assert isinstance(store, PgStore)
    copied = sum(store.put_dkim_key(k.domain, k.selector, k.algorithm, k.private, k.created) for k in keys)
    click.echo(f"DKIM keys: copied {copied}, skipped {len(keys) - copied} already there")


@main.group()
def cluster() -> None:
    """The Kartero processes sharing a PostgreSQL store."""


@cluster.command("status")
@click.pass_context
def cluster_status(ctx: click.Context) -> None:
    """Every node: name, listeners, version, pid, last heartbeat, alive or stale (silent for longer than
    `[store] lease`), and what it is delivering now."""
    config = _config(ctx)
    if not config.store.is_postgresql:
        click.echo(f"embedded store at {config.data_dir}: one process, no cluster")
        return
    from kartero.store.postgres import PgStore

    store = _open_store(config)
    ctx.call_on_close(store.close)
    assert isinstance(store, PgStore)
    nodes = store.nodes()
    if not nodes:
        click.echo("no node has reported in the last day")
        return
    now = datetime.now(UTC).timestamp()
    for node in nodes:
        state = "alive" if node.alive else "stale"
        delivering = ", ".join(f"{d} x{n}" for d, n in sorted(Counter(node.delivering).items())) or "-"
        click.echo(f"{node.name}  {state}  heartbeat {round(now - node.heartbeat_at)}s ago  version {node.version}"
                   f"  pid {node.pid}  since {_when(node.started_at)}  listeners {node.address}"
                   f"  delivering {len(node.delivering)}: {delivering}")  # fmt: skip


# -- Sieve scripts -------------------------------------------------------------------------------------


@main.group()
def sieve() -> None:
    """Manage Sieve scripts (what ManageSieve does, from the shell)."""


_GLOBAL = click.option("--global", "is_global", is_flag=True, help="The global scripts (include :global).")


def _sieve_owner(ctx: click.Context, address: str | None) -> tuple[AnyStore, int | None]:
    store = _open_store(_config(ctx))
    ctx.call_on_close(store.close)
    try:
        return store, owner(store.accounts, address)
    except ScriptProblem as exc:
        _fail(str(exc), 2)


def _split_owner(is_global: bool, words: tuple[str, ...], usage: str) -> tuple[str | None, tuple[str, ...]]:
    """ADDR and the other arguments (`usage` names them), or with --global no ADDR."""
    wanted = len(usage.split())
    if len(words) != wanted + (0 if is_global else 1):
        _fail(f"expected {usage} with --global, else ADDR {usage}", 2)
    return (None, words) if is_global else (words[0], words[1:])


def _script_problem(exc: ScriptProblem) -> NoReturn:
    """A wrong address or name: exit 2; a script refused (`line:column: message` as it is): exit 1."""
    if exc.is_usage:
        _fail(str(exc), 2)
    click.echo(str(exc), err=True)
    sys.exit(1)


@sieve.command("put", context_settings={"ignore_unknown_options": True})
@_GLOBAL
@click.argument("words", nargs=-1, metavar="[ADDR] NAME FILE|-")
@click.pass_context
def sieve_put(ctx: click.Context, is_global: bool, words: tuple[str, ...]) -> None:
    """Upload a script (create or replace); a syntax error: exit 1, `line:column: message`."""
    address, (name, path) = _split_owner(is_global, words, "NAME FILE|-")
    try:
        data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        _fail(f"cannot read {path}: {exc.strerror}", 1)
    store, owner_id = _sieve_owner(ctx, address)
    try:
        put(store.sieve, owner_id, name, data)
    except ScriptProblem as exc:
        _script_problem(exc)
    except TooManyScripts:
        _fail(f"{address} has as many scripts as allowed ({LIMITS.max_scripts}): delete one first", 1)
    click.echo(f"stored {name}")


@sieve.command("activate")
@click.argument("address")
@click.argument("name")
@click.pass_context
def sieve_activate(ctx: click.Context, address: str, name: str) -> None:
    """Make NAME the script that runs at delivery to ADDR."""
    store, owner_id = _sieve_owner(ctx, address)
    assert owner_id is not None
    try:
        store.sieve.set_active(owner_id, name)
    except NoSuchScript:
        _fail(f"no script {name} for {address}", 1)
    click.echo(f"activated {name}")


@sieve.command("deactivate")
@click.argument("address")
@click.pass_context
def sieve_deactivate(ctx: click.Context, address: str) -> None:
    """No script runs at delivery to ADDR any more (the scripts stay)."""
    store, owner_id = _sieve_owner(ctx, address)
    assert owner_id is not None
    store.sieve.set_active(owner_id, None)
    click.echo(f"no active script for {address}")


@sieve.command("list")
@_GLOBAL
@click.argument("address", required=False)
@click.pass_context
def sieve_list(ctx: click.Context, is_global: bool, address: str | None) -> None:
    """The scripts of ADDR (or the global ones), the active one marked."""
    if is_global == (address is not None):
        _fail("expected ADDR, or --global", 2)
    store, owner_id = _sieve_owner(ctx, address)
    for script in store.sieve.list_scripts(owner_id):
        click.echo(f"{script.name}{'  (active)' if script.active else ''}")


@sieve.command("get", context_settings={"ignore_unknown_options": True})
@_GLOBAL
@click.argument("words", nargs=-1, metavar="[ADDR] NAME")
@click.pass_context
def sieve_get(ctx: click.Context, is_global: bool, words: tuple[str, ...]) -> None:
    """Print a script as stored."""
    address, (name,) = _split_owner(is_global, words, "NAME")
    store, owner_id = _sieve_owner(ctx, address)
    text = store.sieve.get_script(owner_id, name)
    if text is None:
        _fail(f"no script {name}" + (f" for {address}" if address else " among the global scripts"), 1)
    sys.stdout.buffer.write(text.encode())
    sys.stdout.buffer.flush()


@sieve.command("del", context_settings={"ignore_unknown_options": True})
@_GLOBAL
@click.argument("words", nargs=-1, metavar="[ADDR] NAME")
@click.pass_context
def sieve_del(ctx: click.Context, is_global: bool, words: tuple[str, ...]) -> None:
    """Delete a script (not the active one: deactivate it first)."""
    address, (name,) = _split_owner(is_global, words, "NAME")
    store, owner_id = _sieve_owner(ctx, address)
    try:
        store.sieve.delete_script(owner_id, name)
    except ScriptIsActive:
        _fail(f"{name} is the active script of {address}: `kartero sieve deactivate {address}` first", 1)
    except NoSuchScript:
        _fail(f"no script {name}" + (f" for {address}" if address else " among the global scripts"), 1)
    click.echo(f"deleted {name}")


@sieve.command("check")
@click.argument("path", metavar="FILE|-")
def sieve_check(path: str) -> None:
    """Compile a script without storing it: a syntax error: exit 1, `line:column: message`."""
    try:
        data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
        problem = check_script(data.decode("utf-8"))
    except OSError as exc:
        _fail(f"cannot read {path}: {exc.strerror}", 1)
    except UnicodeDecodeError:
        _fail("script is not UTF-8", 1)
    if problem is not None:
        _script_problem(ScriptProblem(problem))
    click.echo("ok")


# -- backup and restore (the embedded store) -----------------------------------------------------------


@main.command()
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option("--verify", "verify_only", is_flag=True,
              help="Check the backup in FOLDER against its manifest (sizes, SHA-256); change nothing.")  # fmt: skip
@click.pass_context
def backup(ctx: click.Context, folder: Path, verify_only: bool) -> None:
    """Back up the embedded store into FOLDER (new or empty): consistent while the server runs."""
    from kartero.backup.manifest import BackupCorrupt, BackupError, verify_backup

    if verify_only:
        try:
            manifest = verify_backup(folder)
        except BackupCorrupt as exc:
            _fail(f"the backup in {folder} is damaged: {exc}", 1)
        except BackupError as exc:
            _fail(str(exc), 1)
        click.echo(f"backup of {manifest.source} taken {manifest.created_at}: {len(manifest.files)} files, "
                   f"{manifest.total_bytes} bytes, every checksum matches")  # fmt: skip
        return
    from importlib.metadata import version

    from kartero.backup.take import files_to_copy, take_backup

    config = _config(ctx)
    if config.store.is_postgresql:
        beside = files_to_copy(config.data_dir) if config.data_dir.is_dir() else []
        _fail("the store is PostgreSQL ([store] backend): back it up with pg_dump (one database) or pg_basebackup "
              "(the whole cluster), see docs/backup.md"
              + (f"; copy these files of {config.data_dir} too: {', '.join(beside[:10])}"
                 f"{' ...' if len(beside) > 10 else ''}" if beside else ""), 2)  # fmt: skip
    try:
        report = take_backup(config.data_dir, folder, version("kartero"))
    except BackupError as exc:
        _fail(str(exc), 1)
    except OSError as exc:
        _fail(f"the backup failed: {exc}", 1)
    click.echo(report.summary())
    if report.unreferenced_segments:
        click.echo(f"left out {report.unreferenced_segments} segment files nothing points into")
    if report.skipped:
        click.echo(f"not copied (links, special files, names a manifest cannot hold): {', '.join(report.skipped)}")
    outside = [p for p in (config.source, *((config.tls.cert, config.tls.key) if config.tls else ()))
               if p is not None and not p.resolve().is_relative_to(config.data_dir.resolve())]  # fmt: skip
    if outside:
        named = ", ".join(map(str, outside))
        click.echo(f"not in the backup (outside the data folder; keep copies of them too): {named}")


@main.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--keep-uidvalidity", is_flag=True,
              help="Keep the mailboxes' UIDVALIDITY (only for a backup taken with the server stopped).")  # fmt: skip
@click.pass_context
def restore(ctx: click.Context, folder: Path, keep_uidvalidity: bool) -> None:
    """Restore the backup in FOLDER into the config's data folder, which must be empty (stop the server
    first). Every file is checked against the manifest before anything is written; every mailbox gets a
    new UIDVALIDITY, so IMAP clients drop what they cached after the backup was taken."""
    from kartero.backup.manifest import BackupCorrupt, BackupError
    from kartero.backup.restore import restore_backup

    config = _config(ctx)
    if config.store.is_postgresql:
        _fail("the store is PostgreSQL ([store] backend): restore it with pg_restore or from pg_basebackup, "
              "see docs/backup.md", 2)  # fmt: skip
    try:
        report = restore_backup(folder, config.data_dir, keep_uidvalidity=keep_uidvalidity)
    except BackupCorrupt as exc:
        _fail(f"the backup in {folder} is damaged, nothing was restored: {exc}", 1)
    except BackupError as exc:
        _fail(str(exc), 1)
    except OSError as exc:
        _fail(f"the restore failed, nothing was restored: {exc}", 1)
    click.echo(report.summary())


# -- certificates --------------------------------------------------------------------------------------


@main.group()
def cert() -> None:
    """The TLS certificate: which one the listeners use, and its ACME renewal."""


@cert.command("status")
@click.pass_context
def cert_status(ctx: click.Context) -> None:
    """Names, issuer, validity and days left of the certificate in use, its source (acme, self-signed,
    configured files) and, with [acme], the last renewal and its error if any (a cluster's from the
    database; the certificate is the one this node's data_dir holds)."""
    from kartero.acme.status import format_report, read_report
    from kartero.acme.storage import State, parse_state

    config = _config(ctx)
    state: State | None = None
    if config.acme is not None and config.store.backend == "postgresql":
        from kartero.store.acme_sql import SqlAcmeRows
        from kartero.store.postgres import PgStore

        store = _open_store(config)
        try:
            assert isinstance(store, PgStore)
            state = parse_state(SqlAcmeRows(store.database).get("state"))
        finally:
            store.close()
    click.echo(format_report(read_report(config, state), time.time()), nl=False)


# -- migration: kartero import / export (issue 15) -----------------------------------------------------


def _migration_account(ctx: click.Context, config: Config, address: str) -> tuple[AnyStore, int]:
    """The store and the account's id; exit 2 for an address that is no account."""
    try:
        canonical = parse_address(address)
    except DirectoryError as exc:
        _fail(str(exc), 2)
    store = _open_store(config)
    ctx.call_on_close(store.close)
    account = store.accounts.get_account(canonical)
    if account is None:
        _fail(f"no account {canonical} (add it first: kartero user add {canonical})", 2)
    return store, account.id


@main.command("import")
@click.argument("address")
@click.argument("path", required=False, type=click.Path(exists=True, path_type=Path))
@click.option("--imap", "imap_url", metavar="URL", help="Copy a whole IMAP account: imaps://USER@HOST[:993] or "
              "imap://USER@HOST[:143] (STARTTLS); the password is read from stdin.")  # fmt: skip
@click.option("--insecure", is_flag=True, help="--imap: accept any certificate (a test server), or no STARTTLS.")
@click.option("--ca-file", type=click.Path(exists=True, dir_okay=False), help="--imap: trust this CA's certificates.")
@click.option("--folder", help="The folder a single mbox file goes into (default INBOX).")
@click.pass_context
def import_mail(ctx: click.Context, address: str, path: Path | None, imap_url: str | None, insecure: bool,
                ca_file: str | None, folder: str | None) -> None:  # fmt: skip
    """Import mail into ADDR's account from PATH (a Maildir with Maildir++ folders, as Dovecot keeps it; an
    mbox file; a directory of mbox files) or from an IMAP account (--imap), with flags and internal dates.

    Resumable: a rerun, or a run after an interruption, stores only what is missing. Runs while the server
    serves (on the embedded store it hands the mail to the server in batches). Exit 0 when every message
    is there, 1 when some failed (listed; run it again once fixed), 2 for bad usage."""
    import shutil
    from functools import partial

    from kartero.control import nudge_server, server_pid
    from kartero.migrate import imap_source
    from kartero.migrate.importdrop import DropError, DropWriter
    from kartero.migrate.importer import Importer
    from kartero.migrate.model import Source
    from kartero.migrate.sources import open_path
    from kartero.store.imports_sql import SqlImportLedger

    if (path is None) == (imap_url is None):
        _fail("give PATH (a Maildir, an mbox file or a directory of them) or --imap URL", 2)
    config = _config(ctx)
    # The embedded store takes mail from its server's committer alone: with a server running, the batches
    # go through its import drop (migrate/importdrop.py); without one, this process stores them.
    is_live = not config.store.is_postgresql and server_pid(config.data_dir) is not None
    work_dir = config.data_dir / f"import-{os.getpid()}"
    source: Source
    if imap_url is not None:
        try:
            url = imap_source.parse_imap_url(imap_url)
        except ValueError as exc:
            _fail(str(exc), 2)
        password = (click.prompt("Password", hide_input=True, err=True) if sys.stdin.isatty()
                    else sys.stdin.readline().rstrip("\r\n"))  # fmt: skip
    store, account_id = _migration_account(ctx, config, address)
    try:
        if imap_url is not None:
            context = imap_source.tls_context(insecure=insecure, ca_file=ca_file)
            conn = imap_source.connect(url, password, context, insecure=insecure)
            ctx.call_on_close(conn.shutdown)
            source = imap_source.ImapSource(conn, url, work_dir)
        else:
            assert path is not None
            source = open_path(path, work_dir, folder)
    except imap_source.ImapSourceError as exc:
        _fail(str(exc), 1)
    except ValueError as exc:
        _fail(str(exc), 2)
    ledger = SqlImportLedger(store.database)
    handover: DropWriter | None = None
    if is_live:
        handover = DropWriter(config.data_dir, account_id, source.identity, ledger,
                              partial(nudge_server, config.data_dir),
                              lambda: server_pid(config.data_dir) is not None)  # fmt: skip
    else:
        if not config.store.is_postgresql:
            store.recover()  # no server runs: this process delivers (bytes an interrupted run left are cut off)
        store.start()
    importer = Importer(store.mail, ledger, account_id, source.identity, handover=handover)
    done = importer.outcome

    def counts(_: int | None) -> str:
        return f"{done.imported} new, {done.skipped} present, {done.failed} failed"

    try:
        with click.progressbar(length=max(source.total, 1), label=f"importing {source.identity}", file=sys.stderr,
                               item_show_func=counts) as bar:  # fmt: skip
            importer.progress = bar.update
            importer.run(source.items())
    except imap_source.ImapSourceError as exc:
        done.failed += 1
        done.note(f"the import stopped: {exc} (run it again to go on)")
    except (OSError, StoreError) as exc:
        done.failed += 1
        done.note(f"the import stopped: {exc} (run it again to go on)")
    except DropError as exc:
        done.note(f"the import stopped: {exc}")
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    for problem in done.problems:
        click.echo(f"kartero: {problem}", err=True)
    usage = store.mail.quota_usage([account_id]).get(account_id)
    if usage is not None and 0 < usage.effective_limit(config.limits.default_quota) < usage.used_bytes:
        click.echo(f"kartero: warning: {address} is over its quota now ({usage.used_bytes} of "
                   f"{usage.effective_limit(config.limits.default_quota)} bytes): new mail will be refused "
                   "until it is below (kartero user quota)", err=True)  # fmt: skip
    click.echo(done.summary())
    if done.failed:
        sys.exit(1)


@main.command("export")
@click.argument("address")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["maildir", "mbox"]), default="maildir", show_default=True,
              help="maildir: a Maildir++ tree (Dovecot); mbox: one mbox file per folder (mutt).")  # fmt: skip
@click.pass_context
def export_mail(ctx: click.Context, address: str, directory: Path, fmt: str) -> None:
    """Write ADDR's folders into DIRECTORY (new or empty) with their flags and internal dates. Safe while the
    server runs (it only reads)."""
    from kartero.migrate.exporter import count_messages, export_account

    if directory.exists() and any(directory.iterdir()):
        _fail(f"{directory} is not empty: export into a new directory", 2)
    config = _config(ctx)
    store, account_id = _migration_account(ctx, config, address)
    try:
        with click.progressbar(length=max(count_messages(store.mail, account_id), 1), label=f"exporting {address}",
                               file=sys.stderr) as bar:  # fmt: skip
            outcome = export_account(store.mail, account_id, directory, fmt, bar.update)
    except (OSError, StoreError) as exc:
        _fail(f"the export stopped: {exc}", 1)
    for problem in outcome.problems:
        click.echo(f"kartero: {problem}", err=True)
    click.echo(outcome.summary())
    if outcome.failed:
        sys.exit(1)
