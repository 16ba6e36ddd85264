"""Which reader a path needs: a Maildir (it has cur/ and new/), an mbox file, or a directory of them."""

from __future__ import annotations

from pathlib import Path

from kartero.migrate.maildir import MaildirSource, is_maildir
from kartero.migrate.mbox import MboxSource
from kartero.migrate.model import Source, check_folder_name


def open_path(path: Path, work_dir: Path, folder: str | None = None) -> Source:
    """The source at `path`; `folder`: where a single mbox file goes (INBOX when None). Raises
    ValueError when `path` is none of them."""
    if path.is_dir() and is_maildir(path):
        if folder is not None:
            raise ValueError("--folder is for a single mbox file (a Maildir brings its own folders)")
        return MaildirSource(path, work_dir)
    if path.is_dir():
        if folder is not None:
            raise ValueError("--folder is for a single mbox file (each file of a directory is a folder)")
        source = MboxSource(path, work_dir)
        if not source.files:
            raise ValueError(f"{path}: neither a Maildir (no cur/ and new/) nor a directory of mbox files")
        return source
    if path.is_file():
        if folder is not None and (problem := check_folder_name(folder)) is not None:
            raise ValueError(f"--folder: {problem}")
        return MboxSource(path, work_dir, folder)
    raise ValueError(f"{path}: no such file or directory")
