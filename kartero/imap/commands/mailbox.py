"""Mailbox commands: SELECT/EXAMINE, CREATE, DELETE, RENAME, (UN)SUBSCRIBE, LIST/LSUB, STATUS, APPEND,
CLOSE, UNSELECT, EXPUNGE, UID EXPUNGE, NOOP and CHECK (RFC 9051 §6.3-6.4, RFC 7162, RFC 5258, RFC 6154)."""

from __future__ import annotations

import contextlib
import datetime
from array import array
from collections.abc import Generator, Sequence

from kartero.imap.commands.view import (
    Done,
    Session,
    View,
    chunked,
    expunge_lines,
    fetch_flags_line,
    format_set,
    resolve,
    sync,
)
from kartero.imap.response import Status, astring
from kartero.imap.state import ImapState
from kartero.imap.syntax import (
    Append,
    ListCommand,
    MailboxCommand,
    Rename,
    Select,
    Simple,
    UidExpunge,
)
from kartero.imap.syntax import (
    Status as StatusCommand,
)
from kartero.store.ids import new_message_id
from kartero.store.interface import (
    INBOX,
    Content,
    Delivery,
    DeliveryTarget,
    Mailbox,
    MailboxExists,
    NoSuchMailbox,
    StoreError,
)

SEPARATOR = "/"
SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
SPECIAL_USES = frozenset({"\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Junk", "\\Sent", "\\Trash"})

Handler = Generator[bytes, None, Done]


def _quote(session: Session, name: str) -> str:
    return astring(session.mailbox_name(name), utf8=session.utf8).decode("utf-8")


def select(session: Session, cmd: Select) -> Handler:
    store = session.store
    if session.selected is not None and session.qresync:
        yield b"* OK [CLOSED] Previous mailbox closed\r\n"
    session.selected = None
    mailbox = store.get_mailbox(session.account_id, cmd.mailbox)
    if mailbox is None:
        return Done(Status.NO, "No such mailbox", "NONEXISTENT", ImapState.AUTHENTICATED)
    if cmd.condstore:
        session.condstore = True
    if cmd.qresync is not None and not session.qresync:
        return Done(Status.BAD, "QRESYNC was not enabled", state=ImapState.AUTHENTICATED)
    summary = store.select_summary(mailbox.id)
    view = View(mailbox.id, mailbox.name, cmd.readonly, summary.uidvalidity, array("I", summary.uids),
                summary.highestmodseq)  # fmt: skip
    flags = " ".join((*SYSTEM_FLAGS, *sorted(summary.keywords, key=str.lower)))
    lines = [
        f"* {view.exists} EXISTS\r\n",
        f"* FLAGS ({flags})\r\n",
        "* OK [PERMANENTFLAGS ()] Read-only mailbox\r\n"
        if cmd.readonly
        else f"* OK [PERMANENTFLAGS ({flags} \\*)] Flags permitted\r\n",
        f"* OK [UIDVALIDITY {summary.uidvalidity}] UIDs valid\r\n",
        f"* OK [UIDNEXT {summary.uidnext}] Predicted next UID\r\n",
        f"* OK [HIGHESTMODSEQ {summary.highestmodseq}] Highest\r\n",
        f"* OK [MAILBOXID ({mailbox.objectid})] Ok\r\n",  # RFC 8474 §4.1
    ]
    if not session.rev2:
        lines.insert(1, "* 0 RECENT\r\n")
        if summary.first_unseen is not None:
            lines.append(f"* OK [UNSEEN {summary.first_unseen}] First unseen\r\n")
    yield "".join(lines).encode()
    session.selected = view
    resync = cmd.qresync
    if resync is not None and resync.uidvalidity == mailbox.uidvalidity:
        yield from chunked(_qresync_lines(session, view, resync.modseq, resync.known_uids))
    return Done(Status.OK, "SELECT completed" if not cmd.readonly else "EXAMINE completed",
                "READ-ONLY" if cmd.readonly else "READ-WRITE", ImapState.SELECTED)  # fmt: skip


def _qresync_lines(session: Session, view: View, modseq: int, known: object) -> Generator[bytes, None, None]:
    """RFC 7162 §3.2.5.2: VANISHED (EARLIER) for known UIDs expunged since `modseq`, then FETCH for the
    messages changed since."""
    vanished = session.store.vanished_since(view.mailbox_id, modseq)
    if vanished:
        yield f"* VANISHED (EARLIER) {format_set(vanished)}\r\n".encode()
    for row in session.store.changes_since(view.mailbox_id, modseq).changed:
        seq = view.seq_of(row.uid)
        if seq is not None:
            yield fetch_flags_line(session, seq, row, with_uid=True)


def _valid_name(name: str) -> bool:
    return (
        bool(name)
        and not name.startswith(SEPARATOR)
        and SEPARATOR * 2 not in name
        and "*" not in name
        and "%" not in name
    )


def create(session: Session, cmd: MailboxCommand) -> Handler:
    name = cmd.mailbox.rstrip(SEPARATOR)
    if not _valid_name(name):
        return Done(Status.NO, "Invalid mailbox name", "CANNOT")
    if name == INBOX:
        return Done(Status.NO, "INBOX exists", "ALREADYEXISTS")
    special = None
    if cmd.special_use:
        canonical = {u.lower(): u for u in SPECIAL_USES}
        uses = [canonical.get(u.lower()) for u in cmd.special_use]
        if None in uses or len(uses) > 1:
            return Done(Status.NO, "Unsupported special-use attribute", "USEATTR")
        special = uses[0]
    store = session.store
    parts = name.split(SEPARATOR)
    for depth in range(1, len(parts)):  # RFC 9051 §6.3.4: create the superiors that are missing
        parent = SEPARATOR.join(parts[:depth])
        if parent != INBOX and store.get_mailbox(session.account_id, parent) is None:
            with contextlib.suppress(MailboxExists):
                store.create_mailbox(session.account_id, parent)
    try:
        created = store.create_mailbox(session.account_id, name, special)
    except MailboxExists:
        return Done(Status.NO, "Mailbox exists", "ALREADYEXISTS")
    yield from ()
    return Done(Status.OK, "CREATE completed", f"MAILBOXID ({created.objectid})")  # RFC 8474 §4.1


def delete(session: Session, cmd: MailboxCommand) -> Handler:
    if cmd.mailbox == INBOX:
        return Done(Status.NO, "INBOX cannot be deleted", "CANNOT")
    try:
        session.store.delete_mailbox(session.account_id, cmd.mailbox)
    except NoSuchMailbox:
        return Done(Status.NO, "No such mailbox", "NONEXISTENT")
    state = None
    if session.selected is not None and session.selected.name == cmd.mailbox:
        session.selected = None
        state = ImapState.AUTHENTICATED
        yield b"* OK [CLOSED] Selected mailbox deleted\r\n"
    return Done(Status.OK, "DELETE completed", state=state)


def rename(session: Session, cmd: Rename) -> Handler:
    new = cmd.new.rstrip(SEPARATOR)
    if not _valid_name(new) or new == INBOX:
        return Done(Status.NO, "Invalid target name", "CANNOT")
    if cmd.old == new:
        return Done(Status.NO, "Same name", "ALREADYEXISTS")
    if cmd.old != INBOX and new.startswith(cmd.old + SEPARATOR):
        return Done(Status.NO, "Cannot move a mailbox below itself", "CANNOT")
    try:
        session.store.rename_mailbox(session.account_id, cmd.old, new, SEPARATOR)
    except NoSuchMailbox:
        return Done(Status.NO, "No such mailbox", "NONEXISTENT")
    except MailboxExists:
        return Done(Status.NO, "Target exists", "ALREADYEXISTS")
    view = session.selected
    renamed_view = view is not None and (view.name == cmd.old or view.name.startswith(cmd.old + SEPARATOR))
    if view is not None and renamed_view and cmd.old != INBOX:
        view.name = new + view.name[len(cmd.old) :]
    yield from ()
    return Done(Status.OK, "RENAME completed")


def subscribe(session: Session, cmd: MailboxCommand) -> Handler:
    session.store.set_subscribed(session.account_id, cmd.mailbox, cmd.name == "SUBSCRIBE")
    yield from ()
    return Done(Status.OK, f"{cmd.name} completed")


class ListPatterns:
    """The LIST/LSUB reference joined to each pattern (RFC 9051 §6.3.9: `*` matches anything, `%` anything
    but the separator); a name matches when one of the patterns does. INBOX is case-insensitive (RFC 9051
    §5.1), so names starting with INBOX also match without regard to case.

    The wildcard patterns run together as one NFA, the set of live pattern positions being one int used
    as a bit set: a match is one pass over the name, never backtracking (a regex took 16 s on
    `*a*a*a...*b` against a 34-character name, holding the GIL and so stopping every protocol).
    """

    def __init__(self, reference: str, patterns: Sequence[str]) -> None:
        joined = [p if p.startswith(SEPARATOR) or not reference else reference + p for p in patterns]
        self._is_everything = "*" in joined
        self._names = {p for p in joined if "*" not in p and "%" not in p}
        self._folded_names = {_fold_text(p) for p in self._names}
        wild = [p for p in joined if p not in self._names]
        self._exact = _Wildcards(wild, fold=False)
        self._folded = _Wildcards(wild, fold=True)

    def matches(self, name: str) -> bool:
        if self._is_everything or name in self._names or self._exact.matches(name):
            return True
        if not name.startswith(INBOX):
            return False
        return _fold_text(name) in self._folded_names or self._folded.matches(name)


def _fold(ch: str) -> str:
    lower = ch.lower()
    return lower if len(lower) == 1 else ch


def _fold_text(text: str) -> str:
    return "".join(map(_fold, text))


class _Wildcards:
    """Patterns as bit masks over their positions, one pattern after the other: bit i is live when the name
    read so far matches the pattern holding position i up to i. A pattern of n items takes n + 1 bits,
    the last one (never a literal or wildcard position) meaning "matched it all"."""

    def __init__(self, patterns: Sequence[str], *, fold: bool) -> None:
        self._fold = fold
        self._literals: dict[str, int] = {}
        self._any = self._nonseparator = self._start = self._accept = 0
        offset = 0
        for pattern in patterns:
            # A run of wildcards is one wildcard (`*` if it holds one, else `%`), so that letting a
            # wildcard match nothing never takes more than one step.
            items: list[str] = []
            for ch in pattern:
                if ch in "*%" and items and items[-1] in "*%":
                    items[-1] = "*" if "*" in (ch, items[-1]) else "%"
                else:
                    items.append(_fold(ch) if fold and ch not in "*%" else ch)
            for i, ch in enumerate(items, offset):
                if ch == "*":
                    self._any |= 1 << i
                elif ch == "%":
                    self._nonseparator |= 1 << i
                else:
                    self._literals[ch] = self._literals.get(ch, 0) | 1 << i
            self._start |= 1 << offset
            offset += len(items)
            self._accept |= 1 << offset
            offset += 1
        self._wild = self._any | self._nonseparator
        self._start = self._close(self._start)

    def _close(self, live: int) -> int:
        """Add the positions reached by letting a wildcard match nothing."""
        return live | (live & self._wild) << 1

    def matches(self, name: str) -> bool:
        live = self._start
        if not live:
            return False
        stay_any, stay_nonseparator = self._any, self._any | self._nonseparator
        for ch in name:
            if self._fold:
                ch = _fold(ch)
            stay = stay_any if ch == SEPARATOR else stay_nonseparator
            live = self._close((live & self._literals.get(ch, 0)) << 1 | live & stay)
            if not live:
                return False
        return bool(live & self._accept)


def _superiors(name: str) -> list[str]:
    """The names above `name` in the hierarchy, nearest first (`a/b/c` -> `a/b`, `a`)."""
    found = []
    end = name.rfind(SEPARATOR)
    while end > 0:
        found.append(name[:end])
        end = name.rfind(SEPARATOR, 0, end)
    return found


def list_mailboxes(session: Session, cmd: ListCommand) -> Handler:
    store = session.store
    if not cmd.is_lsub and cmd.patterns == ("",):
        yield b'* LIST (\\Noselect) "/" ""\r\n'
        return Done(Status.OK, "LIST completed")
    boxes = {m.name: m for m in store.list_mailboxes(session.account_id)}
    subscribed = store.subscriptions(session.account_id)
    matches = ListPatterns(cmd.reference, cmd.patterns).matches

    # Every name that exists, plus the superiors implied by deeper names (shown \NonExistent/\Noselect).
    # Each name is visited once, so this is linear in the total length of the names.
    names: set[str] = set(boxes)
    has_children: set[str] = set()  # names with an existing mailbox somewhere below them
    for name in boxes:
        superiors = _superiors(name)
        names.update(superiors)
        has_children.update(superiors)
    only_subscribed = cmd.is_lsub or "SUBSCRIBED" in cmd.selection
    if only_subscribed:
        names |= subscribed
    recursive = "RECURSIVEMATCH" in cmd.selection and only_subscribed
    # RECURSIVEMATCH (RFC 5258 §3.5): a parent that does not match itself is listed when one of its
    # subscribed children matches.
    has_matching_child: set[str] = set()
    if recursive:
        for name in subscribed:
            if matches(name):
                has_matching_child.update(s for s in _superiors(name) if s in names)
    want_subscribed = only_subscribed or "SUBSCRIBED" in cmd.returns
    lines: list[bytes] = []
    verb = "LSUB" if cmd.is_lsub else "LIST"
    for name in sorted(names, key=lambda n: (n != INBOX, n)):
        matched = matches(name)
        if not matched and name not in has_matching_child:
            continue
        mailbox = boxes.get(name)
        is_subscribed = name in subscribed
        if only_subscribed and not is_subscribed and "RECURSIVEMATCH" not in cmd.selection:
            continue
        if "SPECIAL-USE" in cmd.selection and (mailbox is None or mailbox.special_use is None):
            continue
        attributes: list[str] = []
        if mailbox is None:
            attributes.append("\\NonExistent" if cmd.is_extended else "\\Noselect")
        if not cmd.is_lsub:
            attributes.append("\\HasChildren" if name in has_children else "\\HasNoChildren")
        if want_subscribed and is_subscribed and not cmd.is_lsub:
            attributes.append("\\Subscribed")
        if mailbox is not None and mailbox.special_use and not cmd.is_lsub:
            attributes.append(mailbox.special_use)
        extra = ""
        if not matched:
            extra = ' ("CHILDINFO" ("SUBSCRIBED"))'
        lines.append(f'* {verb} ({" ".join(attributes)}) "/" {_quote(session, name)}{extra}\r\n'.encode())
        if cmd.status_items and mailbox is not None and matched:
            lines.append(_status_line(session, mailbox, cmd.status_items))
    yield from chunked(lines)
    return Done(Status.OK, f"{verb} completed")


def _status_line(session: Session, mailbox: Mailbox, items: tuple[str, ...]) -> bytes:
    st = session.store.mailbox_status(mailbox.id)
    values: dict[str, object] = {
        "MESSAGES": st.messages, "UIDNEXT": st.uidnext, "UIDVALIDITY": st.uidvalidity, "UNSEEN": st.unseen,
        "DELETED": st.deleted, "SIZE": st.size, "HIGHESTMODSEQ": st.highestmodseq, "RECENT": 0,
    }  # fmt: skip
    values["MAILBOXID"] = f"({mailbox.objectid})"  # RFC 8474 §4.1
    parts = [f"{item} {values[item]}" for item in items if item in values]
    return f"* STATUS {_quote(session, mailbox.name)} ({' '.join(parts)})\r\n".encode()


def status(session: Session, cmd: StatusCommand) -> Handler:
    mailbox = session.store.get_mailbox(session.account_id, cmd.mailbox)
    if mailbox is None:
        return Done(Status.NO, "No such mailbox", "NONEXISTENT")
    if "HIGHESTMODSEQ" in cmd.items:
        session.condstore = True
    line = _status_line(session, mailbox, cmd.items)
    if "APPENDLIMIT" in cmd.items:
        line = line[:-3] + b" APPENDLIMIT NIL)\r\n"
    yield line
    return Done(Status.OK, "STATUS completed")


def append(session: Session, cmd: Append, append_limit: int) -> Handler:
    store = session.store
    mailbox = store.get_mailbox(session.account_id, cmd.mailbox)
    if mailbox is None:
        return Done(Status.NO, "No such mailbox", "TRYCREATE")
    if max(len(cmd.data), cmd.spooled) > append_limit:
        return Done(Status.NO, "Message too large", "TOOBIG")
    data: bytes | Content = cmd.data
    if cmd.spooled:  # a large message: the adapter wrote it to a spool file as it arrived
        if session.spooled_message is None or session.spooled_message.length != cmd.spooled:
            return Done(Status.NO, "Could not store the message, try again", "SERVERBUG")
        data = Content(b"", session.spooled_message)
    date = cmd.date or datetime.datetime.now(datetime.UTC)
    delivery = Delivery(
        blob_id=new_message_id(),
        data=data,
        targets=(DeliveryTarget(session.account_id, mailbox.name, cmd.flags),),
        internal_date=int(date.timestamp()),
        envelope={"appended_by": session.user},
    )
    try:
        (stored,) = store.deliver(delivery).result()
    except StoreError:
        return Done(Status.NO, "Could not store the message, try again", "SERVERBUG")
    yield from ()
    return Done(Status.OK, "APPEND completed", f"APPENDUID {mailbox.uidvalidity} {stored.uid}")


def close(session: Session, cmd: Simple) -> Handler:
    view = session.selected
    session.selected = None
    if cmd.name == "CLOSE" and view is not None and not view.readonly:
        session.store.expunge(view.mailbox_id)  # silently: CLOSE sends no EXPUNGE responses
    yield from ()
    return Done(Status.OK, f"{cmd.name} completed", state=ImapState.AUTHENTICATED)


def expunge(session: Session, cmd: Simple | UidExpunge) -> Handler:
    view = session.selected
    assert view is not None
    if view.readonly:
        return Done(Status.NO, "Mailbox is read-only", "READ-ONLY")
    uids = None
    if isinstance(cmd, UidExpunge):
        uids = [uid for _, uid in resolve(view, cmd.numbers, is_uid=True, saved=session.saved)]
        if not uids:
            yield from chunked(sync(session, allow_expunge=True))
            return Done(Status.OK, "UID EXPUNGE completed")
    gone = session.store.expunge(view.mailbox_id, uids)
    yield from chunked(expunge_lines(session, view, gone))
    yield from chunked(sync(session, allow_expunge=True))
    code = None
    if session.uses_condstore():
        code = f"HIGHESTMODSEQ {view.modseq}"
    return Done(Status.OK, "EXPUNGE completed", code)


def noop(session: Session, cmd: Simple) -> Handler:
    yield from chunked(sync(session, allow_expunge=True))
    return Done(Status.OK, f"{cmd.name} completed")
