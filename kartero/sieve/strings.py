"""String arguments after compilation: encoded characters decoded (RFC 5228 §2.4.2.4) and variable
references (RFC 5229 §3) split out, so a run only concatenates.

Both scans are single passes: a candidate `${` is read only as far as the characters it may hold, so a
script full of unterminated `${hex:` costs linear time.
"""

from __future__ import annotations

from dataclasses import dataclass

from kartero.sieve.grammar import Position

_HEX = frozenset("0123456789abcdefABCDEF")
_BLANK = frozenset(" \t\r\n")
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.")
MAX_NAME = 128  # characters of a variable name


@dataclass(frozen=True, slots=True)
class VariableRef:
    name: str  # lower-case; a number for match variables; "global.x" for the include namespace


@dataclass(frozen=True, slots=True)
class Template:
    parts: tuple[str | VariableRef, ...]

    @property
    def constant(self) -> str | None:
        """The text, when no variable is referenced."""
        if not self.parts:
            return ""
        if len(self.parts) == 1 and isinstance(self.parts[0], str):
            return self.parts[0]
        return None


def literal(text: str) -> Template:
    return Template((text,) if text else ())


def is_identifier(name: str) -> bool:
    return (
        bool(name)
        and len(name) <= MAX_NAME
        and (name[0] == "_" or (name[0].isascii() and name[0].isalpha()))
        and all(c == "_" or (c.isascii() and c.isalnum()) for c in name)
    )


def is_variable_name(name: str, namespaces: frozenset[str]) -> bool:
    """RFC 5229 §3 variable-name for `set`: an identifier, or `namespace.identifier` for a known namespace."""
    if "." in name:
        namespace, _, rest = name.partition(".")
        return namespace.lower() in namespaces and is_identifier(rest)
    return is_identifier(name)


def decode_encoded(text: str, position: Position) -> str:
    """Replace `${hex:..}` and `${unicode:..}`; malformed ones stay as written (RFC 5228 §2.4.2.4)."""
    if "${" not in text:
        return text
    out: list[str] = []
    i = 0
    n = len(text)
    while True:
        start = text.find("${", i)
        if start < 0:
            out.append(text[i:])
            return "".join(out)
        head = text[start + 2 : start + 10].lower()
        if head.startswith("hex:"):
            kind, body = "hex", start + 6
        elif head.startswith("unicode:"):
            kind, body = "unicode", start + 10
        else:
            out.append(text[i : start + 2])
            i = start + 2
            continue
        j = body
        while j < n and (text[j] in _HEX or text[j] in _BLANK):
            j += 1
        if j >= n or text[j] != "}":
            out.append(text[i : start + 2])
            i = start + 2
            continue
        items = text[body:j].split()
        if not items or any(len(item) > (2 if kind == "hex" else 6) for item in items):
            out.append(text[i : start + 2])
            i = start + 2
            continue
        out.append(text[i:start])
        if kind == "hex":
            try:
                out.append(bytes(int(item, 16) for item in items).decode("utf-8"))
            except UnicodeDecodeError:
                raise position.error("${hex:...} does not encode UTF-8") from None
        else:
            for item in items:
                code = int(item, 16)
                if 0xD800 <= code <= 0xDFFF or code > 0x10FFFF:
                    raise position.error(f"${{unicode:{item}}} is not a Unicode scalar value")
                out.append(chr(code))
        i = j + 1


def parse_template(text: str, namespaces: frozenset[str], position: Position) -> Template:
    """Split `text` at its variable references. A `${` that does not start a valid reference is literal
    text (RFC 5229 §3); a reference into a namespace no extension provides is an error."""
    if "${" not in text:
        return literal(text)
    parts: list[str | VariableRef] = []
    pending: list[str] = []
    i = 0
    n = len(text)
    while True:
        start = text.find("${", i)
        if start < 0:
            pending.append(text[i:])
            break
        j = start + 2
        while j < n and text[j] in _NAME_CHARS and j - start <= MAX_NAME + 2:
            j += 1
        name = text[start + 2 : j]
        if j < n and text[j] == "}" and _is_reference(name):
            if "." in name and name.partition(".")[0].lower() not in namespaces:
                raise position.error(f"unknown variable namespace in ${{{name}}}")
            pending.append(text[i:start])
            if pending:
                joined = "".join(pending)
                if joined:
                    parts.append(joined)
                pending = []
            parts.append(VariableRef(str(int(name)) if name.isdigit() else name.lower()))
            i = j + 1
        else:
            pending.append(text[i : start + 1])
            i = start + 1
    joined = "".join(pending)
    if joined:
        parts.append(joined)
    return Template(tuple(parts))


def _is_reference(name: str) -> bool:
    if not name:
        return False
    *spaces, last = name.split(".")
    return all(is_identifier(space) for space in spaces) and (last.isdigit() or is_identifier(last))
