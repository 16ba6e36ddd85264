"""Mailbox commands: SELECT/EXAMINE, CREATE, DELETE, RENAME, (UN)SUBSCRIBE, LIST/LSUB, STATUS, APPEND,
CLOSE, UNSELECT, EXPUNGE, UID EXPUNGE, NOOP and CHECK (RFC 9051 §6.3-6.4, RFC 7162, RFC 5258, RFC 6154)."""

from __future__ import annotations

import contextlib
import datetime
from array import array
from collections.abc import Generator, Iterator, Sequence

from kartero.imap.commands import catenate, notify, quota
from kartero.imap.commands.metadata import longentries, select_entries
from kartero.imap.commands.view import (
    Done,
    Session,
    View,
    chunked,
    expunge_lines,
    fetch_flags_line,
    flags_lines,
    format_set,
    resolve,
    sync,
)
from kartero.imap.connection import MULTIAPPEND_LIMIT_FACTOR
from kartero.imap.metadata import metadata_response
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
from kartero.mail.envelope import EnvelopeRecord, Origin
from kartero.store.ids import new_message_id
from kartero.store.interface import (
    INBOX,
    Content,
    Delivery,
    DeliveryTarget,
    FileSpan,
    Mailbox,
    MailboxExists,
    NoSuchMailbox,
    StoreError,
)

SEPARATOR = "/"
SPECIAL_USES = frozenset({"\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Junk", "\\Sent", "\\Trash"})

Handler = Generator[bytes, None, Done]


def _quote(session: Session, name: str) -> str:
    return astring(session.mailbox_name(name), utf8=session.utf8).decode("utf-8")


def select(session: Session, cmd: Select) -> Handler:
    store = session.store
    if session.selected is not None:  # RFC 7162 §3.2.11, RFC 9051 §7.1; Dovecot sends it without QRESYNC too
        yield b"* OK [CLOSED] Previous mailbox closed\r\n"
    session.select(None)
    mailbox = store.get_mailbox(session.account_id, cmd.mailbox)
    if mailbox is None:
        return Done(Status.NO, "No such mailbox", "NONEXISTENT", ImapState.AUTHENTICATED)
    if cmd.condstore:
        session.condstore = True
    if cmd.qresync is not None and not session.qresync:
        return Done(Status.BAD, "QRESYNC was not enabled", state=ImapState.AUTHENTICATED)
    # The hold comes before the message list: nothing the list shows can lose its bytes meanwhile.
    hold = store.hold_expunged(mailbox.id, 0)
    try:
        summary = store.select_summary(mailbox.id)
    except BaseException:
        hold.release()
        raise
    view = View(mailbox.id, mailbox.name, cmd.readonly, summary.uidvalidity, array("I", summary.uids),
                summary.highestmodseq, condstore_announced=session.uses_condstore(), hold=hold)  # fmt: skip
    hold.advance(summary.highestmodseq)
    view.keywords = {keyword.lower(): keyword for keyword in summary.keywords}
    lines = [
        f"* {view.exists} EXISTS\r\n",
        flags_lines(view).decode(),
        f"* OK [UIDVALIDITY {summary.uidvalidity}] UIDs valid\r\n",
        f"* OK [UIDNEXT {summary.uidnext}] Predicted next UID\r\n",
        f"* OK [HIGHESTMODSEQ {summary.highestmodseq}] Highest\r\n",
        f"* OK [MAILBOXID ({mailbox.objectid})] Ok\r\n",  # RFC 8474 §4.1
    ]
    if not session.rev2:
        session.claim_recent(view, summary.first_recent_uid, summary.uidnext)
        lines.insert(1, f"* {view.recent_count()} RECENT\r\n")
        if summary.first_unseen is not None:
            lines.append(f"* OK [UNSEEN {summary.first_unseen}] First unseen\r\n")
    session.select(view)
    yield "".join(lines).encode()
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
                notify.note_created(session, store.create_mailbox(session.account_id, parent))
    try:
        created = store.create_mailbox(session.account_id, name, special)
    except MailboxExists:
        return Done(Status.NO, "Mailbox exists", "ALREADYEXISTS")
    notify.note_created(session, created)
    yield from ()
    return Done(Status.OK, "CREATE completed", f"MAILBOXID ({created.objectid})")  # RFC 8474 §4.1


def delete(session: Session, cmd: MailboxCommand) -> Handler:
    if cmd.mailbox == INBOX:
        return Done(Status.NO, "INBOX cannot be deleted", "CANNOT")
    try:
        deleted = session.store.delete_mailbox(session.account_id, cmd.mailbox)
    except NoSuchMailbox:
        return Done(Status.NO, "No such mailbox", "NONEXISTENT")
    notify.note_deleted(session, deleted)
    state = None
    if session.selected is not None and session.selected.mailbox_id == deleted:
        session.select(None)
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
        renamed = session.store.rename_mailbox(session.account_id, cmd.old, new, SEPARATOR)
    except NoSuchMailbox:
        return Done(Status.NO, "No such mailbox", "NONEXISTENT")
    except MailboxExists:
        return Done(Status.NO, "Target exists", "ALREADYEXISTS")
    notify.note_renamed(session, renamed)
    view = session.selected
    if view is not None and view.mailbox_id in renamed:
        view.name = renamed[view.mailbox_id]
    yield from ()
    return Done(Status.OK, "RENAME completed")


def subscribe(session: Session, cmd: MailboxCommand) -> Handler:
    session.store.set_subscribed(session.account_id, cmd.mailbox, cmd.name == "SUBSCRIBE")
    notify.note_subscribed(session, cmd.mailbox, cmd.name == "SUBSCRIBE")
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
        self._name_lengths = {len(p) for p in self._names}
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

    def nearest_matching_superior(self, name: str) -> str | None:
        """The nearest superior of `name` that matches (`a` for `a/b/c` under `%`), or None. The NFA reads
        the name once for all its superiors, not once per superior."""
        ends = self._exact.matching_prefixes(name)
        if name.startswith(INBOX):
            ends |= self._folded.matching_prefixes(name)
        end = name.rfind(SEPARATOR)
        while end > 0:
            if self._is_everything or end in ends:
                return name[:end]
            if end in self._name_lengths:
                prefix = name[:end]
                if prefix in self._names or (prefix.startswith(INBOX) and _fold_text(prefix) in self._folded_names):
                    return prefix
            end = name.rfind(SEPARATOR, 0, end)
        return None


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

    def _step(self, live: int, ch: str) -> int:
        if self._fold:
            ch = _fold(ch)
        stay = self._any if ch == SEPARATOR else self._any | self._nonseparator
        return self._close((live & self._literals.get(ch, 0)) << 1 | live & stay)

    def matches(self, name: str) -> bool:
        live = self._start
        for ch in name:
            if not live:
                return False
            live = self._step(live, ch)
        return bool(live & self._accept)

    def matching_prefixes(self, name: str) -> set[int]:
        """The positions of the separators in `name` whose prefix (a superior of the name) matches."""
        found: set[int] = set()
        live = self._start
        for i, ch in enumerate(name):
            if not live:
                break
            if ch == SEPARATOR and live & self._accept:
                found.add(i)
            live = self._step(live, ch)
        return found


def _iter_superiors(name: str) -> Iterator[str]:
    """The names above `name` in the hierarchy, nearest first (`a/b/c` -> `a/b`, `a`)."""
    end = name.rfind(SEPARATOR)
    while end > 0:
        yield name[:end]
        end = name.rfind(SEPARATOR, 0, end)


def list_mailboxes(session: Session, cmd: ListCommand) -> Handler:
    """LIST and LSUB (RFC 9051 §6.3.9, RFC 3501 §6.3.9, RFC 5258, RFC 6154, RFC 5819).

    A name is listed when it matches a pattern and meets the selection criteria (subscribed, has a
    special use; every name when there are none). With RECURSIVEMATCH (RFC 5258 §3.5), and for LSUB
    (RFC 3501 §6.3.9), a name that meets the criteria but matches no pattern lists its nearest matching
    superior instead: with CHILDINFO in LIST, with \\Noselect in LSUB unless it meets the criteria
    itself. A listed name that meets the criteria gets CHILDINFO too when a name below it does (the RFC
    5258 §3.5 table); one whose matching children are all listed themselves is not listed for them (the
    §3.5 SHOULD, example 9)."""
    store = session.store
    if not cmd.is_lsub and cmd.patterns == ("",):
        yield b'* LIST (\\Noselect) "/" ""\r\n'
        return Done(Status.OK, "LIST completed")
    boxes = {m.name: m for m in store.list_mailboxes(session.account_id)}
    subscribed = store.subscriptions(session.account_id)
    patterns = ListPatterns(cmd.reference, cmd.patterns)

    # Every name that exists, plus the superiors implied by deeper names (shown \NonExistent/\Noselect).
    # The walk up from a name stops at the first superior already seen, so this is linear in the total
    # length of the names.
    names: set[str] = set(boxes)
    has_children: set[str] = set()  # names with an existing mailbox somewhere below them
    for name in boxes:
        for superior in _iter_superiors(name):
            if superior in has_children:
                break
            has_children.add(superior)
    names |= has_children
    only_subscribed = cmd.is_lsub or "SUBSCRIBED" in cmd.selection
    only_special = "SPECIAL-USE" in cmd.selection
    recursive = cmd.is_lsub or ("RECURSIVEMATCH" in cmd.selection and (only_subscribed or only_special))

    def meets_criteria(name: str) -> bool:
        if only_subscribed and name not in subscribed:
            return False
        return not only_special or (name in boxes and boxes[name].special_use is not None)

    chosen = [name for name in (subscribed if only_subscribed else names) if meets_criteria(name)]
    listed = {name for name in chosen if patterns.matches(name)}
    for_children: set[str] = set()  # listed only because a name below meets the criteria
    above_chosen: set[str] = set()  # superiors of names that meet the criteria
    if recursive:
        for name in chosen:
            if name not in listed:
                nearest = patterns.nearest_matching_superior(name)
                if nearest is not None and nearest not in listed:
                    for_children.add(nearest)
            if not cmd.is_lsub:
                for superior in _iter_superiors(name):
                    if superior in above_chosen:
                        break
                    above_chosen.add(superior)
    childinfo = ""
    if recursive and not cmd.is_lsub:
        criteria = " ".join(f'"{c}"' for c in ("SUBSCRIBED", "SPECIAL-USE") if c in cmd.selection)
        childinfo = f' ("CHILDINFO" ({criteria}))'
    want_subscribed = only_subscribed or "SUBSCRIBED" in cmd.returns
    lines: list[bytes] = []
    longest_left_out = 0  # the largest value MAXSIZE left out of RETURN (METADATA ...)
    verb = "LSUB" if cmd.is_lsub else "LIST"
    for name in sorted(listed | for_children, key=lambda n: (n != INBOX, n)):
        mailbox = boxes.get(name)
        attributes: list[str] = []
        if mailbox is None:
            attributes.append("\\NonExistent" if cmd.is_extended else "\\Noselect")
        elif cmd.is_lsub and name in for_children:
            attributes.append("\\Noselect")  # RFC 3501 §6.3.9: not subscribed itself, a child is
        if not cmd.is_lsub:
            attributes.append("\\HasChildren" if name in has_children else "\\HasNoChildren")
            if want_subscribed and name in subscribed:
                attributes.append("\\Subscribed")
            if mailbox is not None and mailbox.special_use:
                attributes.append(mailbox.special_use)
        extra = childinfo if name in above_chosen else ""
        lines.append(f'* {verb} ({" ".join(attributes)}) "/" {_quote(session, name)}{extra}\r\n'.encode())
        if cmd.status_items and mailbox is not None and name in listed:
            lines.append(_status_line(session, mailbox, cmd.status_items))
        if cmd.metadata is not None and mailbox is not None and name in listed:  # RFC 9590
            found, longest = select_entries(store.metadata(session.account_id, mailbox.id), cmd.metadata)
            longest_left_out = max(longest_left_out, longest)
            if found:
                lines.append(metadata_response(_quote(session, name).encode(), found.items()))
    yield from chunked(lines)
    return Done(Status.OK, f"{verb} completed", longentries(longest_left_out))


def _status_line(session: Session, mailbox: Mailbox, items: tuple[str, ...]) -> bytes:
    st = session.store.mailbox_status(mailbox.id)
    values: dict[str, object] = {
        "MESSAGES": st.messages, "UIDNEXT": st.uidnext, "UIDVALIDITY": st.uidvalidity, "UNSEEN": st.unseen,
        "DELETED": st.deleted, "SIZE": st.size, "HIGHESTMODSEQ": st.highestmodseq, "RECENT": st.recent,
    }  # fmt: skip
    values["MAILBOXID"] = f"({mailbox.objectid})"  # RFC 8474 §4.1
    values["DELETED-STORAGE"] = quota.kib_up(st.deleted_size)  # RFC 9208 §4.4: in STORAGE's units
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
    if any(max(len(m.data), m.spooled) > append_limit for m in cmd.messages):
        return Done(Status.NO, "Message too large", "TOOBIG")
    spool = session.spooled_message  # large messages: the adapter wrote them to one file as they arrived
    if cmd.spooled and (spool is None or spool.length != cmd.spooled):
        return Done(Status.NO, "Could not store the message, try again", "SERVERBUG")
    # Each message is its literal, spooled or not, or (CATENATE) pieces to copy; spooled literals lie back
    # to back in `spool`, in command order.
    sources: list[bytes | Content | list[catenate.Piece]] = []
    offset = 0
    try:
        for message in cmd.messages:
            if message.parts:
                sources.append(catenate.resolve(session, message.parts, spool, offset, append_limit))
                offset += sum(part.spooled for part in message.parts)
            elif message.spooled:
                assert spool is not None
                sources.append(Content(b"", FileSpan(spool.path, spool.offset + offset, message.spooled)))
                offset += message.spooled
            else:
                sources.append(message.data)
    except catenate.BadUrl as exc:
        return Done(Status.NO, "Bad URL", exc.code)  # RFC 4469 §4.1: the first URL that failed
    except catenate.TooBig:
        return Done(Status.NO, "Message too large", "TOOBIG")
    catenated = [sum(piece.size for piece in source) for source in sources if isinstance(source, list)]
    # A catenated message is bounded like any other, and all of them together like the literals of one
    # MULTIAPPEND (their octets come from the store, not from the command, so the core cannot bound them).
    if any(size > append_limit for size in catenated) or sum(catenated) > MULTIAPPEND_LIMIT_FACTOR * append_limit:
        return Done(Status.NO, "Message too large", "TOOBIG")
    assembler = None
    try:
        if catenated:
            assembler = catenate.Assembler(session, sum(catenated))
        datas: list[bytes | Content] = []
        for source in sources:
            if isinstance(source, list):
                assert assembler is not None
                datas.append(assembler.build(source))
            else:
                datas.append(source)
        if (left := quota.room(session)) is not None and sum(len(data) for data in datas) > left:
            return quota.OVERQUOTA
        now = datetime.datetime.now(datetime.UTC)
        deliveries = [
            Delivery(
                blob_id=new_message_id(),
                data=data,
                targets=(DeliveryTarget(session.account_id, mailbox.name, message.flags),),
                internal_date=int((message.date or now).timestamp()),
                envelope=EnvelopeRecord(Origin.APPEND, "", received_at=int(now.timestamp()), user=session.user),
            )
            for message, data in zip(cmd.messages, datas, strict=True)
        ]
        # MULTIAPPEND (RFC 3502 §6.3.11): one delivery group, so every message is stored or none is.
        stored = store.deliver_group(deliveries).result()
    except catenate.BadUrl as exc:  # a message a URL named was expunged while it was being copied
        return Done(Status.NO, "Bad URL", exc.code)
    except (StoreError, OSError):
        return Done(Status.NO, "Could not store the message, try again", "SERVERBUG")
    finally:
        if assembler is not None:
            assembler.close()  # the store has its own copy (or failed): the Future is done
    notify.note_written(session, mailbox.id, [m.modseq for messages in stored for m in messages])
    # Into the selected mailbox: EXISTS before the tagged OK, so the next command may use the message.
    yield from chunked(sync(session, allow_expunge=True))
    uids = format_set(m.uid for messages in stored for m in messages)
    return Done(Status.OK, "APPEND completed", f"APPENDUID {mailbox.uidvalidity} {uids}")


def close(session: Session, cmd: Simple) -> Handler:
    view = session.selected
    session.select(None)
    # Silently: CLOSE sends no EXPUNGE responses.
    if cmd.name == "CLOSE" and view is not None and not view.readonly and session.store.expunge(view.mailbox_id):
        notify.note_expunged(session, view.mailbox_id)
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
