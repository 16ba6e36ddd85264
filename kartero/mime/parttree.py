"""The part tree kept with each stored message: where every MIME part's header and body lie in its bytes.

FETCH sections, BINARY, SEARCH BODY/TEXT and PREVIEW read a message through this tree instead of parsing
it again. It is made once, at delivery, from the parse (`node_of`), stored as JSON (`encode_parts`) and
read back by `decode_parts`; nothing else knows the stored form.

The stored form is the one Kartero has written since the tree was first kept (so mail stored by any
earlier version reads the same): each node is the list
`[header_start, body_start, end, encoding, [children...], embedded message or null]`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from kartero.mime.structure import MAX_DEPTH, Part


@dataclass(frozen=True, slots=True)
class PartNode:
    """One MIME part: its header block is octets [header_start, body_start) of the message, its body
    [body_start, end). A multipart has `children`; a message/rfc822 part (and the default part of a
    multipart/digest) has the encapsulated message as `message`; a leaf has neither."""

    header_start: int
    body_start: int
    end: int
    encoding: str  # Content-Transfer-Encoding, lower-case; "7bit" when the part has none
    children: tuple[PartNode, ...] = ()
    message: PartNode | None = None

    @property
    def is_leaf(self) -> bool:
        return not self.children and self.message is None


def node_of(part: Part) -> PartNode:
    """The tree of a parsed part (kartero.mime.structure bounds its depth by MAX_DEPTH)."""
    return PartNode(
        part.header_start,
        part.body_start,
        part.end,
        part.encoding.decode("latin-1").lower(),
        tuple(node_of(child) for child in part.children),
        node_of(part.message) if part.message is not None else None,
    )


def encode_parts(node: PartNode) -> str:
    """The stored (JSON) form of a tree."""
    return json.dumps(_as_list(node), separators=(",", ":"))


def _as_list(node: PartNode) -> list[object]:
    return [
        node.header_start,
        node.body_start,
        node.end,
        node.encoding,
        [_as_list(child) for child in node.children],
        _as_list(node.message) if node.message is not None else None,
    ]


# A stored tree nests at most this deep: a part and, below it, a child or an embedded message per level.
_MAX_LEVELS = 2 * MAX_DEPTH + 2


def decode_parts(text: str) -> PartNode:
    """The tree of a stored JSON form. Raises ValueError for anything the encoder never wrote."""
    return _from_list(json.loads(text), 0)


def _from_list(value: object, level: int) -> PartNode:
    if level > _MAX_LEVELS:
        raise ValueError("part tree nested too deep")
    if not isinstance(value, list) or len(value) != 6:
        raise ValueError(f"not a stored part: {value!r:.80}")
    header_start, body_start, end, encoding, children, message = value
    if not all(isinstance(n, int) for n in (header_start, body_start, end)) or not isinstance(encoding, str):
        raise ValueError(f"not a stored part: {value!r:.80}")
    if not isinstance(children, list):
        raise ValueError(f"not a stored part: {value!r:.80}")
    return PartNode(
        header_start,
        body_start,
        end,
        encoding,
        tuple(_from_list(child, level + 1) for child in children),
        _from_list(message, level + 1) if message is not None else None,
    )
