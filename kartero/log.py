"""Log lines as `key=value` pairs on stderr, one line per event, so they grep and parse easily."""

from __future__ import annotations

import logging
import sys
import time


def kv(**fields: object) -> str:
    """`a=1 b="two words"`: values with spaces, quotes or `=` are quoted; None values are left out."""
    parts = []
    for key, value in fields.items():
        if value is None:
            continue
        text = str(value)
        if not text or any(c in text for c in ' "=\\') or not text.isprintable():
            text = _quote(text)
        parts.append(f"{key}={text}")
    return " ".join(parts)


def _quote(text: str) -> str:
    out = []
    for c in text:
        if c in '"\\':
            out.append("\\" + c)
        elif c.isprintable():
            out.append(c)
        else:  # control characters from a peer must not break the one-line-per-event format
            out.append(c.encode("unicode_escape").decode("ascii"))
    return '"' + "".join(out) + '"'


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line = f"{stamp}.{int(record.msecs):03d}Z level={record.levelname.lower()} {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure(level: str) -> None:
    """Send every `kartero.*` log line to stderr at `level` (debug, info, warning, error)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    root = logging.getLogger("kartero")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
