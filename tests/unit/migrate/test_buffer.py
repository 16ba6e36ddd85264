"""Issue 15: the message buffer (kartero/migrate/buffer.py): LF to CRLF however the bytes are split,
SHA-256 of what is stored, memory up to MEMORY_LIMIT then a file."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kartero.migrate.buffer import MEMORY_LIMIT, MessageBuffer
from kartero.store.interface import Content, FileSpan


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=60).map(lambda b: b.replace(b"x", b"\r").replace(b"y", b"\n")), st.data())
def test_issue_15_crlf_whatever_the_split(tmp_path_factory: pytest.TempPathFactory, data: bytes,
                                          draw: st.DataObject) -> None:  # fmt: skip
    cuts = sorted(draw.draw(st.lists(st.integers(0, len(data)), max_size=5)))
    buffer = MessageBuffer(tmp_path_factory.mktemp("b"), crlf=True)
    for start, end in zip([0, *cuts], [*cuts, len(data)], strict=True):
        buffer.write(data[start:end])
    captured = buffer.finish()
    expected = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    assert captured.data == expected
    assert captured.digest == hashlib.sha256(expected).hexdigest() and captured.size == len(expected)


def test_issue_15_a_large_message_is_kept_in_a_file(tmp_path: Path) -> None:
    buffer = MessageBuffer(tmp_path, crlf=False)
    piece = b"z" * 100_000
    for _ in range(MEMORY_LIMIT // len(piece) + 2):
        buffer.write(piece)
    captured = buffer.finish()
    size = len(piece) * (MEMORY_LIMIT // len(piece) + 2)
    assert isinstance(captured.data, Content) and captured.data.tail == FileSpan(captured.path, 0, size)  # type: ignore[arg-type]
    assert captured.path is not None and captured.path.read_bytes() == piece * (size // len(piece))
    captured.discard()
    assert list(tmp_path.iterdir()) == []


def test_issue_15_a_discarded_buffer_leaves_no_file(tmp_path: Path) -> None:
    buffer = MessageBuffer(tmp_path, crlf=False)
    buffer.write(b"a" * (MEMORY_LIMIT + 70_000))
    buffer.write(b"b" * 70_000)
    buffer.discard()
    assert list(tmp_path.iterdir()) == []
