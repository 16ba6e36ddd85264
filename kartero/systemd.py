"""The systemd unit `kartero init` writes beside the config: `kartero.service` (docs/systemd.md).

The server runs as its own user with the least the kernel can take away while it still serves: the whole
file system read-only but the data folder (`ProtectSystem=strict`, `ReadWritePaths=`), no capabilities
but binding ports below 1024 (`AmbientCapabilities=CAP_NET_BIND_SERVICE`: 25, 465, 587, 993, 995, 80, 443
without root), no new privileges, only the system calls of an ordinary service and the address families
it uses (IPv4, IPv6; Unix sockets for milters). `serve` reloads its certificate and hooks on SIGHUP, so
`systemctl reload` sends one. It tells systemd nothing (no sd_notify), hence `Type=exec`: started means
the process runs, and the listeners follow within the second.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

UNIT_NAME = "kartero.service"
# Where ProtectHome= reaches: a path under one of these needs it read-only, not hidden.
HOME_ROOTS = (Path("/home"), Path("/root"), Path("/run/user"))


def server_command(config: Path) -> list[str]:
    """How the unit starts the server: this interpreter (a virtualenv's own, when Kartero lives in one)
    running the kartero package, with the config by absolute path."""
    return [str(Path(sys.executable).absolute()), "-m", "kartero", "--config", str(config.absolute()), "serve"]


def render_unit(command: Sequence[str], data_dir: Path, *, user: str = "kartero") -> str:
    """The text of `kartero.service` for the server started by `command` on `data_dir`. Raises
    ValueError for a path systemd cannot take (a newline or a control character in it)."""
    data_dir = data_dir.absolute()
    under_home = [p for p in [Path(command[0]), data_dir, *map(Path, command[1:])]
                  if p.is_absolute() and any(p.is_relative_to(h) for h in HOME_ROOTS)]  # fmt: skip
    protect_home = (
        "# Kartero's files are under a home folder: read-only rather than hidden\nProtectHome=read-only"
        if under_home
        else "ProtectHome=yes"
    )
    return f"""\
# Kartero mail server. Install: docs/systemd.md (a system user `{user}`, this file in /etc/systemd/system/,
# `systemctl enable --now kartero`). Written by `kartero init`; edit ExecStart if Kartero moves.
[Unit]
Description=Kartero mail server
After=network-online.target
Wants=network-online.target

[Service]
Type=exec
User={user}
Group={user}
ExecStart={" ".join(_quote(word) for word in command)}
# SIGHUP: the TLS certificate and the [hooks] module are loaded again, connections stay.
ExecReload=/bin/kill -HUP $MAINPID
Restart=on-failure
RestartSec=5s
# serve stops accepting, lets sessions finish (SMTP 421, IMAP BYE) and exits.
TimeoutStopSec=90s
LimitNOFILE=65536
UMask=0077

# Ports below 1024 (25, 465, 587, 993, 995, 80, 443) without root, and no other capability.
AmbientCapabilities=CAP_NET_BIND_SERVICE
CapabilityBoundingSet=CAP_NET_BIND_SERVICE
NoNewPrivileges=yes

# Everything read-only but the data folder.
ProtectSystem=strict
ReadWritePaths={_quote(str(data_dir), is_command=False)}
{protect_home}
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallErrorNumber=EPERM

[Install]
WantedBy=multi-user.target
"""


def _quote(word: str, *, is_command: bool = True) -> str:
    """One word of a unit file's command line or path list: `%` escaped (systemd.unit(5) specifiers),
    `$` too on a command line (systemd.service(5) variables; a path list such as ReadWritePaths= expands
    none, so `$$` there would name another folder), double-quoted when it holds a space or a quote."""
    if any(ord(c) < 32 or ord(c) == 127 for c in word):
        raise ValueError(f"a path systemd cannot take: {word!r}")
    word = word.replace("%", "%%")
    if is_command:
        word = word.replace("$", "$$")
    if any(c in word for c in " \t\"'\\;"):
        return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return word


def write_unit(directory: Path, config: Path, data_dir: Path) -> Path:
    """Write `directory/kartero.service` for the config at `config` and return its path."""
    path = directory / UNIT_NAME
    path.write_text(render_unit(server_command(config), data_dir))
    path.chmod(0o644)  # systemd reads it as root; it holds no secret
    return path
