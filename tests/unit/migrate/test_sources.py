"""Issue 15: which reader a path gets (kartero/migrate/sources.py), and the folders of a directory of
mbox files."""

from __future__ import annotations

from pathlib import Path

import pytest

from kartero.migrate.maildir import MaildirSource
from kartero.migrate.mbox import MboxSource
from kartero.migrate.sources import open_path

FROM = b"From a@x Sun Nov 29 10:00:00 2026\n\n"


def test_issue_15_a_maildir_an_mbox_file_and_a_directory_of_them(tmp_path: Path) -> None:
    for sub in ("cur", "new"):
        (tmp_path / "Maildir" / sub).mkdir(parents=True)
    assert isinstance(open_path(tmp_path / "Maildir", tmp_path / "w"), MaildirSource)
    mail = tmp_path / "mail"
    for name in ("INBOX", "sent-mail", "Archive/2024.mbox", "Old.sbd/Projects", ".hidden", "Old.msf"):
        (mail / name).parent.mkdir(parents=True, exist_ok=True)
        (mail / name).write_bytes(FROM)
    source = open_path(mail, tmp_path / "w")
    assert isinstance(source, MboxSource)
    assert [folder for folder, _ in source.files] == ["INBOX", "Archive/2024", "Old/Projects", "sent-mail"]
    single = open_path(mail / "sent-mail", tmp_path / "w", "Sent")
    assert isinstance(single, MboxSource) and single.files == [("Sent", (mail / "sent-mail").resolve())]


@pytest.mark.parametrize(("folder", "problem"), [("Sent", "a single mbox file"), (None, "neither a Maildir")])
def test_issue_15_paths_that_are_none_of_them(tmp_path: Path, folder: str | None, problem: str) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=problem):
        open_path(tmp_path / "empty", tmp_path / "w", folder)


def test_issue_15_folder_names_are_checked(tmp_path: Path) -> None:
    (tmp_path / "box").write_bytes(FROM)
    with pytest.raises(ValueError, match="wildcard"):
        open_path(tmp_path / "box", tmp_path / "w", "Old/*")
    with pytest.raises(ValueError, match="no such file"):
        open_path(tmp_path / "missing", tmp_path / "w")
