"""Modified UTF-7 mailbox names (RFC 3501 §5.1.3): `&` starts a base64 (`,` for `/`) UTF-16 run."""

from __future__ import annotations

import base64


class MUTF7Error(ValueError):
    pass


def encode(name: str) -> str:
    if name.isascii() and name.isprintable() and "&" not in name:
        return name  # the common case, without a loop per character (LIST sends every name)
    out: list[str] = []
    run: list[str] = []

    def flush() -> None:
        if run:
            data = "".join(run).encode("utf-16-be")
            out.append("&" + base64.b64encode(data).decode("ascii").rstrip("=").replace("/", ",") + "-")
            run.clear()

    for ch in name:
        if 0x20 <= ord(ch) <= 0x7E:
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            run.append(ch)
    flush()
    return "".join(out)


def decode(name: str) -> str:
    """Decode; raises MUTF7Error for malformed shifts (so a client's bad name gets a clear NO/BAD)."""
    if "&" not in name:
        return name
    out: list[str] = []
    i = 0
    while i < len(name):
        ch = name[i]
        if ch != "&":
            if not 0x20 <= ord(ch) <= 0x7E:
                raise MUTF7Error("non-ASCII character outside a modified UTF-7 run")
            out.append(ch)
            i += 1
            continue
        end = name.find("-", i + 1)
        if end < 0:
            raise MUTF7Error("unterminated modified UTF-7 run")
        chunk = name[i + 1 : end]
        if not chunk:
            out.append("&")
        else:
            b64 = chunk.replace(",", "/")
            try:
                data = base64.b64decode(b64 + "=" * (-len(b64) % 4), validate=True)
                out.append(data.decode("utf-16-be"))
            except ValueError:  # binascii.Error, UnicodeDecodeError, or non-ASCII inside the run
                raise MUTF7Error(f"bad modified UTF-7 run {chunk!r}") from None
        i = end + 1
    return "".join(out)
