"""FileBuffer answers like the bytes it stands for, across window boundaries (issue 8, finding 6)."""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from kartero.store import spool
from kartero.store.spool import FileBuffer, SpoolFile


def buffer_of(tmp_path: Path, data: bytes, prefix: bytes = b"") -> tuple[FileBuffer, int]:
    target = SpoolFile(tmp_path)
    target.write(prefix + data)
    fd = os.open(target.path, os.O_RDONLY)
    return FileBuffer(fd, len(prefix), len(data)), fd


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=64), needle=st.binary(min_size=1, max_size=4), bounds=st.tuples(
    st.integers(-70, 70) | st.none(), st.integers(-70, 70) | st.none()), prefix=st.binary(max_size=5))  # fmt: skip
def test_file_buffer_matches_bytes(
    tmp_path_factory: object, data: bytes, needle: bytes, bounds: tuple[int | None, int | None], prefix: bytes
) -> None:
    folder = tmp_path_factory.mktemp("spool")  # type: ignore[attr-defined]
    old_window = spool.WINDOW
    spool.WINDOW = 3  # tiny windows, so that matches straddle them
    old_first, spool.FIRST_WINDOW = spool.FIRST_WINDOW, 1
    try:
        buf, fd = buffer_of(folder, data, prefix)
        start, end = bounds
        assert len(buf) == len(data)
        assert buf[start:end] == data[start:end]
        assert buf.find(needle, start, end) == data.find(needle, start, end)
        assert buf.rfind(needle, start, end) == data.rfind(needle, start, end)
        assert buf.count(needle, start, end) == data.count(needle, start, end)
        assert buf.startswith(needle, start, end) == data.startswith(needle, start, end)
        if data:
            assert buf[0] == data[0] and buf[-1] == data[-1]
        os.close(fd)
    finally:
        spool.WINDOW, spool.FIRST_WINDOW = old_window, old_first


def test_spool_file_write_discard_and_clear(tmp_path: Path) -> None:
    folder = spool.spool_dir(tmp_path)
    first = SpoolFile(folder)
    first.write(b"x" * 10)
    first.write(b"y")
    assert first.size == 11 and first.path.read_bytes() == b"x" * 10 + b"y"
    assert oct(folder.stat().st_mode & 0o777) == "0o700" and oct(first.path.stat().st_mode & 0o777) == "0o600"
    first.discard()
    assert not first.path.exists()
    SpoolFile(folder).close()
    assert spool.clear_spool(tmp_path) == 1 and list(folder.iterdir()) == []


def test_incoming_spool_latches_a_failure_until_reset(tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the spool folder should be")
    spool_ = spool.IncomingSpool(blocked)
    assert not spool_.write(b"piece") and spool_.error is not None
    assert not spool_.write(b"more") and spool_.finish() is None  # nothing half-written is handed on
    spool_.reset()
    assert spool_.error is None
    good = spool.IncomingSpool(tmp_path / "spool")
    assert good.write(b"one ") and good.write(b"two")
    whole = good.finish()
    assert whole is not None and whole.path.read_bytes() == b"one two" and (whole.offset, whole.length) == (0, 7)
    good.reset()
    assert not whole.path.exists()
