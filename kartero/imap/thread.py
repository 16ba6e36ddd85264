"""The THREAD algorithms of RFC 5256 §3: ORDEREDSUBJECT and REFERENCES, and the THREAD response.

Sans-I/O: the handler reads what each message needs (`ThreadMessage`) from the store and hands the list
here. Everything is a loop over explicit stacks, never recursion: a thread is as deep as its senders
make it (References fields name whatever they like).

REFERENCES links a message to its parent unless that would make a loop (§3 step 1). Whether it would
is the question "is the child the root of the parent's tree?", asked once per new link; walking up
parent pointers answers it in the depth of the tree, which crafted References chains make as deep as
they like (a chain of n links then costs n² steps). A link-cut tree (Sleator and Tarjan) answers it
in amortised logarithmic time through link, cut and find-root, so threading is O(n log n) in the
number of messages and references.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

# References read per message, the nearest (last) ones: a References field lists the thread's ancestors
# oldest first, and what lies beyond this many links matters to no display.
MAX_REFERENCES = 1000


@dataclass(frozen=True, slots=True)
class ThreadMessage:
    """One searched message: `number` is what the response shows (sequence number or UID)."""

    number: int
    sent_date: int  # RFC 5256 §2.2: Date: in UTC seconds, else the internal date
    base_subject: str  # RFC 5256 §2.1, in one case
    is_reply: bool = False  # the subject had a reply/forward marker (§2.1 subj-refwd, "(fwd)", "[fwd:")
    message_id: str = ""  # "" when the message has none (it then gets a unique one)
    references: tuple[str, ...] = ()  # References, else the first In-Reply-To id; oldest first


# -- message ids and subjects ------------------------------------------------------------------------------


def message_ids(value: str, limit: int = MAX_REFERENCES) -> list[str]:
    """The msg-ids of a field value (`<left@right>`, RFC 5322 §3.6.4), white space removed, the last
    `limit` of them; what is not one is skipped. One pass over the value."""
    found: list[str] = []
    pos = 0
    while True:
        start = value.find("<", pos)
        if start < 0:
            break
        end = value.find(">", start + 1)
        if end < 0:
            break
        inner = "".join(value[start + 1 : end].split())
        following = value.find("<", start + 1, end)
        if following >= 0:  # "<a <b@c>": only the innermost opening counts
            pos = following
            continue
        if "@" in inner and not inner.startswith("@") and not inner.endswith("@"):
            found.append(f"<{inner}>")
            if len(found) > 2 * limit:
                del found[:-limit]
        pos = end + 1
    return found[-limit:]


def is_reply_or_forward(subject: str) -> bool:
    """Whether a subject carries what RFC 5256 §2.1 strips as a reply or forward: a leading `re:`,
    `fw:` or `fwd:` (after any `[blob]`s, with an optional blob before the colon), a trailing
    `(fwd)`, or a `[fwd: ...]` around it. One pass over the subject."""
    text = " ".join(subject.split()).lower()
    if text.endswith("(fwd)") or text.startswith("[fwd:"):
        return True
    pos, end = 0, len(text)
    while pos < end:
        if text[pos] == " ":
            pos += 1
        elif text[pos] == "[" and (close := text.find("]", pos)) > 0:
            pos = close + 1
        else:
            break
    for marker in ("re", "fwd", "fw"):
        if text.startswith(marker, pos):
            after = pos + len(marker)
            if text.startswith(" ", after):
                after += 1
            if text.startswith("[", after) and (close := text.find("]", after)) > 0:
                after = close + 1
                if text.startswith(" ", after):
                    after += 1
            if text.startswith(":", after):
                return True
    return False


# -- the tree --------------------------------------------------------------------------------------------


@dataclass(eq=False, slots=True)
class _Node:
    message: ThreadMessage | None  # None: a dummy (an id only referenced, or made by subject merging)
    index: int = -1  # in the link-cut tree
    children: list[_Node] = field(default_factory=list)

    def key(self) -> tuple[int, int]:
        """The sort key of §2.2: sent date, then mailbox order; a dummy sorts as its first child."""
        node = self
        while node.message is None:
            if not node.children:
                return (0, 0)
            node = node.children[0]
        return (node.message.sent_date, node.message.number)

    def subject_node(self) -> _Node:
        return self.children[0] if self.message is None and self.children else self


class _LinkCut:
    """A forest of rooted trees with link (a root under a node), cut (a node from its parent) and
    find_root, each in amortised O(log n): link-cut trees without re-rooting. `parent` keeps the
    represented trees' plain parent pointers besides."""

    def __init__(self) -> None:
        self.left: list[int] = []
        self.right: list[int] = []
        self.up: list[int] = []  # splay-tree parent, or path-parent for the root of a splay tree
        self.parent: list[int] = []

    def add(self) -> int:
        for column in (self.left, self.right, self.up, self.parent):
            column.append(-1)
        return len(self.up) - 1

    def _is_splay_root(self, x: int) -> bool:
        p = self.up[x]
        return p < 0 or (self.left[p] != x and self.right[p] != x)

    def _rotate(self, x: int) -> None:
        left, right, up = self.left, self.right, self.up
        p = up[x]
        g = up[p]
        if not self._is_splay_root(p):
            if left[g] == p:
                left[g] = x
            else:
                right[g] = x
        up[x] = g
        if left[p] == x:
            left[p] = right[x]
            if right[x] >= 0:
                up[right[x]] = p
            right[x] = p
        else:
            right[p] = left[x]
            if left[x] >= 0:
                up[left[x]] = p
            left[x] = p
        up[p] = x

    def _splay(self, x: int) -> None:
        up, left = self.up, self.left
        while not self._is_splay_root(x):
            p = up[x]
            if not self._is_splay_root(p):
                g = up[p]
                self._rotate(p if (left[g] == p) == (left[p] == x) else x)
            self._rotate(x)

    def _access(self, x: int) -> None:
        last, y = -1, x
        while y >= 0:
            self._splay(y)
            self.right[y] = last
            last, y = y, self.up[y]
        self._splay(x)

    def find_root(self, x: int) -> int:
        self._access(x)
        while self.left[x] >= 0:
            x = self.left[x]
        self._splay(x)
        return x

    def link(self, child: int, parent: int) -> None:
        """Make `child` (a root) a child of `parent` (in another tree)."""
        self._access(child)
        self.up[child] = parent
        self.parent[child] = parent

    def cut(self, child: int) -> None:
        """Detach `child` from its parent."""
        self._access(child)
        above = self.left[child]
        if above >= 0:
            self.up[above] = -1
            self.left[child] = -1
        self.parent[child] = -1


# -- REFERENCES ------------------------------------------------------------------------------------------


def references(messages: Sequence[ThreadMessage]) -> list[_Node]:
    """RFC 5256 §3 REFERENCES: the top-level threads, in order. `messages` in mailbox order."""
    forest = _LinkCut()
    nodes: list[_Node] = []
    by_id: dict[str, _Node] = {}

    def node_for(message_id: str) -> _Node:
        node = by_id.get(message_id)
        if node is None:
            node = by_id[message_id] = _Node(None, forest.add())
            nodes.append(node)
        return node

    def link(parent: _Node, child: _Node) -> None:
        """Link unless the child is the parent or above it (a loop): then child would be parent's root."""
        if forest.find_root(parent.index) != child.index:
            forest.link(child.index, parent.index)

    for message in messages:
        own = by_id.get(message.message_id) if message.message_id else None
        if own is not None and own.message is None:
            own.message = message  # an id referenced before arrives
        else:
            # (1) no or a duplicate Message-ID: a unique one, which no reference can name
            own = _Node(message, forest.add())
            nodes.append(own)
            if message.message_id and message.message_id not in by_id:
                by_id[message.message_id] = own
        refs = [node_for(ref) for ref in message.references[-MAX_REFERENCES:]]
        for parent, child in itertools.pairwise(refs):  # (1A)
            if forest.parent[child.index] < 0:
                link(parent, child)
        if forest.parent[own.index] >= 0:  # (1B): a link from a truncated References is replaced
            forest.cut(own.index)
        if refs:
            link(refs[-1], own)

    # The tree as children lists, in the order the nodes were made (nodes[i].index == i).
    root = _Node(None)
    for node in nodes:
        parent_index = forest.parent[node.index]
        (nodes[parent_index] if parent_index >= 0 else root).children.append(node)
    _prune(root)  # (3)
    _sort_siblings(root, top_only=True)  # (4)
    _merge_subjects(root)  # (5)
    _sort_siblings(root, top_only=False)  # (6)
    return root.children


def _prune(root: _Node) -> None:
    """(3): drop dummies without children and put the children of the others in their place, except at
    the top, where a dummy with several children stays. Top-down with explicit stacks; each dummy is
    looked through once, so the work is linear however dummies nest (splicing lists level by level
    would copy a long list once per level of a dummy chain)."""
    top: list[_Node] = []
    for child in root.children:
        if child.message is not None:
            top.append(child)
            continue
        kids = _through_dummies(child.children)
        if len(kids) == 1:
            top.append(kids[0])
        elif kids:
            child.children = kids
            top.append(child)
    root.children = top
    pending = list(top)
    while pending:
        node = pending.pop()
        if node.message is not None:
            node.children = _through_dummies(node.children)
        pending.extend(node.children)


def _through_dummies(children: list[_Node]) -> list[_Node]:
    """The messages among `children`, each dummy replaced by what it holds, in order."""
    if all(child.message is not None for child in children):
        return children
    found: list[_Node] = []
    stack = list(reversed(children))
    while stack:
        node = stack.pop()
        if node.message is None:
            stack.extend(reversed(node.children))
        else:
            found.append(node)
    return found


def _sort_siblings(root: _Node, *, top_only: bool) -> None:
    """(4) and (6): siblings by sent date, the deepest first, so a dummy sorts by its sorted first child."""
    if top_only:
        for child in root.children:
            if child.message is None:
                child.children.sort(key=_Node.key)
        root.children.sort(key=_Node.key)
        return
    order: list[_Node] = []
    stack = [root]
    while stack:
        node = stack.pop()
        order.append(node)
        stack.extend(node.children)
    for node in reversed(order):
        node.children.sort(key=_Node.key)


def _merge_subjects(root: _Node) -> None:
    """(5): threads whose subject is the same are gathered under one message or dummy."""
    table: dict[str, _Node] = {}
    for node in root.children:  # (5B)
        subject = node.subject_node().message
        if subject is None or not subject.base_subject:
            continue
        held = table.get(subject.base_subject)
        # The table keeps a dummy over a message, and a message that is no reply over one that is.
        replaces = (
            held is not None
            and held.message is not None
            and (node.message is None or (held.message.is_reply and not subject.is_reply))
        )
        if held is None or replaces:
            table[subject.base_subject] = node
    top: list[_Node | None] = list(root.children)
    position = {id(node): i for i, node in enumerate(top)}
    for i, current in enumerate(list(top)):  # (5C)
        if current is None or top[i] is not current:
            continue
        node = current
        subject = node.subject_node().message
        if subject is None or not subject.base_subject:
            continue
        held = table[subject.base_subject]
        if held is node:
            continue
        if held.message is None and node.message is None:
            held.children.extend(node.children)
            top[i] = None
        elif held.message is None or (node.message is not None and node.message.is_reply
                                      and held.message is not None and not held.message.is_reply):  # fmt: skip
            held.children.append(node)
            top[i] = None
        else:
            dummy = _Node(None, children=[held, node])
            top[position[id(held)]] = dummy
            position[id(dummy)] = position[id(held)]
            table[subject.base_subject] = dummy
            top[i] = None
    root.children = [node for node in top if node is not None]


# -- ORDEREDSUBJECT --------------------------------------------------------------------------------------


def ordered_subject(messages: Sequence[ThreadMessage]) -> list[_Node]:
    """RFC 5256 §3 ORDEREDSUBJECT: messages grouped by base subject, each group in sent-date order under
    its first message, the groups in the order of their first messages."""
    groups: dict[str, list[ThreadMessage]] = {}
    for message in sorted(messages, key=lambda m: (m.base_subject, m.sent_date, m.number)):
        groups.setdefault(message.base_subject, []).append(message)
    threads = []
    for group in groups.values():
        first = _Node(group[0])
        first.children = [_Node(message) for message in group[1:]]
        threads.append(first)
    threads.sort(key=_Node.key)
    return threads


# -- the response -----------------------------------------------------------------------------------------


def format_threads(threads: Iterable[_Node]) -> str:
    """`(1 2 (3)(4 5))...` (RFC 5256 §4 thread-list): a run of only children as numbers, then the
    children of a node with several, each as its own list. An explicit stack: no recursion."""
    parts: list[str] = []
    stack: list[_Node | str] = list(reversed(list(threads)))
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            parts.append(item)
            continue
        parts.append("(")
        numbers: list[str] = []
        node = item
        while True:
            if node.message is not None:
                numbers.append(str(node.message.number))
            if len(node.children) != 1:
                break
            node = node.children[0]
        parts.append(" ".join(numbers))
        if not node.children:
            parts.append(")")
            continue
        if numbers:
            parts.append(" ")
        stack.append(")")
        stack.extend(reversed(node.children))
    return "".join(parts)
