"""The peer for bench/smtp_accept.py: aiosmtpd that writes and fsyncs every message before its 250.

Equal durability with Kartero: a message file per message, fsynced (in a worker thread, so the event loop
keeps serving other sessions), and its folder entry fsynced, before the reply.

    python bench/aiosmtpd_fsync.py --port 2600 --dir /tmp/aiosmtpd-spool
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP


class FsyncHandler:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)

    def _write(self, data: bytes) -> None:
        fd = os.open(self.folder / secrets.token_hex(8), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.fsync(self.dir_fd)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        await asyncio.get_running_loop().run_in_executor(None, self._write, envelope.original_content)
        return "250 2.0.0 OK"


async def main(host: str, port: int, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    handler = FsyncHandler(folder)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="aiosmtpd.bench", data_size_limit=50_000_000), host, port, backlog=512
    )
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", type=Path, required=True)
    args = parser.parse_args()
    asyncio.run(main(args.host, args.port, args.dir))
