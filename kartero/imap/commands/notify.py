"""NOTIFY (RFC 5465): which events a session wants for which mailboxes, and the untagged responses that
tell it, sent between commands and during IDLE (the adapter pushes `updates` when the store announces a
change), not only at the end of the next command.

- The selected mailbox (SELECTED, SELECTED-DELAYED): new mail, flag changes and (SELECTED only)
  expunges are reported as they happen, through the same `sync` as at the end of a command; MessageNew
  with fetch attributes adds a FETCH of the new messages. Without such a group the selected mailbox is
  reported only at the end of commands, as without NOTIFY (§3.1: the same as SELECTED NONE).
- Other mailboxes (INBOXES, PERSONAL, SUBSCRIBED, SUBTREE, MAILBOXES): message events become STATUS
  responses, sent when what STATUS says changed; MailboxName and SubscriptionChange become LIST
  responses, found by comparing the account's mailboxes and subscriptions with the last ones seen.
- METADATA (RFC 5464): MailboxMetadataChange (for the mailboxes of its filter) and ServerMetadataChange
  (in any group) become unsolicited `* METADATA mailbox entry ...` responses naming the entries another
  session set or removed, without their values (RFC 5465 §5.7, §5.8; RFC 5464 §4.4.2).
Changes this session made itself (CREATE, RENAME, APPEND, ...) are not reported back to it (§5).

What the store announced and the client has not heard yet waits in `PendingChanges`: the ids of the
changed mailboxes (coalesced, so a busy mailbox costs one entry and one STATUS read however often it
changes), bounded by `MAX_PENDING_MAILBOXES`. A session that falls further behind (a long command, or a
client that reads nothing while the adapter waits to write) gets `* OK [NOTIFICATIONOVERFLOW]` and from
then on behaves as after NOTIFY NONE (§5.8).
"""

from __future__ import annotations

import bisect
from collections.abc import Collection, Generator, Iterable, Iterator
from dataclasses import dataclass, field

from kartero.imap.commands import fetch
from kartero.imap.commands.view import Done, Session, chunked, sync
from kartero.imap.metadata import entry_name
from kartero.imap.response import Status, astring
from kartero.imap.syntax import Fetch, Notify, NotifyGroup, SequenceSet
from kartero.store.interface import INBOX, Mailbox, MailboxStatus, MailStore, MetadataChange, NoSuchMailbox

Handler = Generator[bytes, None, Done]
SUPPORTED_EVENTS = ("MessageNew", "MessageExpunge", "FlagChange", "MailboxName", "SubscriptionChange",
                    "MailboxMetadataChange", "ServerMetadataChange")
# Events reported by a STATUS of a mailbox that is not selected.
STATUS_EVENTS = frozenset({"MessageNew", "MessageExpunge", "FlagChange"})
# INBOXES (RFC 5465 §6.3): the mailboxes Kartero delivers to.
INBOXES = frozenset({INBOX, "Junk"})
SEPARATOR = "/"
# Watched mailboxes with changes the client has not heard of yet; past this many the session's NOTIFY is
# dropped (§5.8), so neither its memory nor the STATUS reads of one push grow with what others do.
MAX_PENDING_MAILBOXES = 1000
# METADATA entries changed elsewhere and not yet reported (each name up to 1,024 octets): past this many,
# the same overflow (§5.8), so a client reading nothing cannot make the server keep its peers' names.
MAX_PENDING_METADATA = 1000


@dataclass(slots=True)
class PendingChanges:
    """What the store announced for a NOTIFY session since its last push (kept by the adapter, on the
    event loop)."""

    mailboxes: set[int] = field(default_factory=set)  # watched mailboxes whose messages changed
    names: bool = False  # the account's mailboxes or subscriptions changed
    overflowed: bool = False  # more than MAX_PENDING_MAILBOXES mailboxes (or MAX_PENDING_METADATA) changed
    # METADATA entry names changed elsewhere, by mailbox id (None: the server's), and how many in all.
    metadata: dict[int | None, set[str]] = field(default_factory=dict)
    metadata_count: int = 0

    def add(self, mailbox_ids: Iterable[int]) -> None:
        if self.overflowed:
            return
        self.mailboxes.update(mailbox_ids)
        if len(self.mailboxes) > MAX_PENDING_MAILBOXES:
            self._overflow()

    def add_metadata(self, mailbox_id: int | None, names: Iterable[str]) -> None:
        if self.overflowed:
            return
        entries = self.metadata.setdefault(mailbox_id, set())
        before = len(entries)
        entries.update(names)
        self.metadata_count += len(entries) - before
        if self.metadata_count > MAX_PENDING_METADATA:
            self._overflow()

    def _overflow(self) -> None:
        self.mailboxes.clear()
        self.metadata.clear()
        self.overflowed = True

    def take(self) -> PendingChanges:
        """What is pending now; this object starts again empty."""
        taken = PendingChanges(self.mailboxes, self.names, self.overflowed, self.metadata, self.metadata_count)
        self.mailboxes, self.names, self.overflowed, self.metadata, self.metadata_count = set(), False, False, {}, 0
        return taken


@dataclass(slots=True)
class NotifyState:
    """A session's NOTIFY SET and what it has told the client so far."""

    groups: tuple[NotifyGroup, ...]
    selected: NotifyGroup | None  # the SELECTED or SELECTED-DELAYED group
    names: dict[int, str] = field(default_factory=dict)  # the account's mailboxes, id -> name
    subscribed: set[str] = field(default_factory=set)
    # Mailboxes (not selected) with message events, and the STATUS last reported or read for each; None
    # for one created since NOTIFY SET whose messages the client has not heard of yet.
    statuses: dict[int, MailboxStatus | None] = field(default_factory=dict)
    # Their ids, read on the event loop by the server to decide whom to wake (replaced, never changed).
    watched: frozenset[int] = frozenset()

    @property
    def follows_names(self) -> bool:
        """Whether changes to the account's mailboxes and subscriptions concern this session: for
        MailboxName and SubscriptionChange, and because a new, renamed or (un)subscribed mailbox may come
        under a filter with message events (PERSONAL, SUBTREE, SUBSCRIBED, ...)."""
        return any(g.events and not g.filter.startswith("SELECTED") for g in self.groups)

    @property
    def wants_metadata(self) -> bool:
        """Whether METADATA changes concern this session (the adapter passes them on then)."""
        return any(g.events & {"MailboxMetadataChange", "ServerMetadataChange"} for g in self.groups)

    def deselected(self, store: MailStore, mailbox_id: int, modseq: int) -> None:
        """The session leaves `mailbox_id`, having told the client every change up to `modseq` (its own
        STOREs and EXPUNGEs among them): a STATUS with nothing after that is known, so the session's own
        changes there are not reported back once it is no longer selected (§5)."""
        if mailbox_id not in self.statuses:
            return
        try:
            now = store.mailbox_status(mailbox_id)
        except NoSuchMailbox:
            return
        if now.highestmodseq == modseq:
            self.statuses[mailbox_id] = now

    def events_for(self, name: str) -> frozenset[str]:
        """The events of every non-selected group whose filter takes `name`."""
        found: set[str] = set()
        for group in self.groups:
            if not group.filter.startswith("SELECTED") and _matches(group, name, self.subscribed):
                found |= group.events
        return frozenset(found)


def _matches(group: NotifyGroup, name: str, subscribed: set[str]) -> bool:
    match group.filter:
        case "PERSONAL":
            return True
        case "INBOXES":
            return name in INBOXES
        case "SUBSCRIBED":
            return name in subscribed
        case "SUBTREE":  # the name or one of its superiors: set lookups, however many names SUBTREE has
            if name in group.mailboxes:
                return True
            end = name.find(SEPARATOR)
            while end != -1:
                if name[:end] in group.mailboxes:
                    return True
                end = name.find(SEPARATOR, end + 1)
            return False
        case "MAILBOXES":
            return name in group.mailboxes
    return False


def set_notify(session: Session, cmd: Notify) -> Handler:
    """NOTIFY NONE / NOTIFY SET [STATUS] (RFC 5465 §3.1)."""
    unsupported = {event for group in cmd.groups for event in group.events} - set(SUPPORTED_EVENTS)
    if unsupported:
        return Done(Status.NO, "Unsupported event", f"BADEVENT ({' '.join(SUPPORTED_EVENTS)})")
    if not cmd.groups:
        session.notify = None
        yield from ()
        return Done(Status.OK, "NOTIFY completed")
    selected = next((g for g in cmd.groups if g.filter.startswith("SELECTED")), None)
    state = NotifyState(cmd.groups, selected)
    _read_names(session, state)
    for mailbox_id, status in state.statuses.items():
        if cmd.status and status is not None and (session.selected is None
                                                  or session.selected.mailbox_id != mailbox_id):  # fmt: skip
            yield _status_line(session, state.names[mailbox_id], status, flags_only=False)
    session.notify = state
    yield from chunked(sync(session, allow_expunge=True))  # §3.1: NOTIFY SET implies a NOOP
    return Done(Status.OK, "NOTIFY completed")


def _read_names(session: Session, state: NotifyState, *, created: bool = False) -> list[int]:
    """Read the account's mailboxes and subscriptions, and the STATUS of each mailbox with message
    events that was not watched before; with `created`, a mailbox created by another session since the
    last read is taken as unknown to the client (its STATUS is to be sent once it holds anything).
    Returns the ids of those."""
    old_names = state.names
    state.names = {m.id: m.name for m in session.store.list_mailboxes(session.account_id)}
    state.subscribed = session.store.subscriptions(session.account_id)
    return _watch(session, state, old_names if created else None)


def _watch(session: Session, state: NotifyState, old_names: dict[int, str] | None = None) -> list[int]:
    """Watch the mailboxes of `state.names` that have message events: the STATUS known for each is kept,
    read for one not watched before, or (a mailbox not in `old_names`) None. Returns the ids of those."""
    statuses: dict[int, MailboxStatus | None] = {}
    new: list[int] = []
    for mailbox_id, name in state.names.items():
        if state.events_for(name) & STATUS_EVENTS:
            if mailbox_id in state.statuses:
                statuses[mailbox_id] = state.statuses[mailbox_id]
            elif old_names is not None and mailbox_id not in old_names:
                statuses[mailbox_id] = None
                new.append(mailbox_id)
            else:
                try:
                    statuses[mailbox_id] = session.store.mailbox_status(mailbox_id)
                except NoSuchMailbox:
                    continue
    state.statuses = statuses
    state.watched = frozenset(statuses)
    return new


def updates(session: Session, pending: PendingChanges, *, is_idling: bool = False) -> Iterator[bytes]:
    """What the client is to hear now of the changes the store announced since the last call (the
    selected mailbox's are read from the store, the others' are `pending`), between commands or during
    IDLE (`is_idling`)."""
    state = session.notify
    if state is None:
        return
    if pending.overflowed:  # §5.8: say so, then behave as after NOTIFY NONE
        session.notify = None
        yield b"* OK [NOTIFICATIONOVERFLOW] Too many changes to report, NOTIFY is off\r\n"
        return
    view = session.selected
    group = state.selected
    if view is not None and group is not None and group.events:
        top = view.uids[-1] if view.uids else 0
        # SELECTED-DELAYED holds expunges back until a command that may report them (§6.1), IDLE being one.
        yield from sync(session, allow_expunge=group.filter == "SELECTED" or is_idling)
        new = view.uids[bisect.bisect_right(view.uids, top) :]
        if new and group.fetch_items:  # §5.2: EXISTS, then FETCH of what MessageNew asked for
            items = tuple(dict.fromkeys(("UID", *group.fetch_items)))
            yield from fetch.fetch(session, Fetch(True, SequenceSet(((new[0], new[-1]),)), items))
    if pending.names:
        yield from _name_changes(session, state)
    if pending.metadata:
        yield from _metadata_changes(session, state, pending.metadata)
    for mailbox_id in sorted(pending.mailboxes & state.watched):
        if view is not None and view.mailbox_id == mailbox_id:
            continue  # the selected mailbox is reported as such, never by STATUS
        yield from _status_change(session, state, mailbox_id)


def _status_change(session: Session, state: NotifyState, mailbox_id: int) -> Iterator[bytes]:
    """§5.1-5.3: STATUS for a watched mailbox when messages came (MessageNew) or went (MessageExpunge), or
    only its flags changed (FlagChange), since the client last heard; each event counts on its own (a
    filter other than SELECTED may name one without the others, as Dovecot 2.3 allows)."""
    old = state.statuses[mailbox_id]
    try:
        new = session.store.mailbox_status(mailbox_id)
    except NoSuchMailbox:
        return
    state.statuses[mailbox_id] = new
    events = state.events_for(state.names[mailbox_id])
    if old is None:  # created since NOTIFY SET: news once anything came in
        came = new.uidnext > 1
        went = came and new.messages < new.uidnext - 1
    elif new.uidvalidity != old.uidvalidity:
        came = went = True
    else:
        came = new.uidnext > old.uidnext
        went = new.messages < old.messages + (new.uidnext - old.uidnext)
    if (came and "MessageNew" in events) or (went and "MessageExpunge" in events):
        yield _status_line(session, state.names[mailbox_id], new, flags_only=False)
    elif old is not None and not (came or went) and new.highestmodseq != old.highestmodseq and "FlagChange" in events:
        # Flags only: while messages came or went, the MODSEQ moved for them, and FlagChange alone cannot
        # tell whether a flag changed too (it does with MessageNew/MessageExpunge, whose STATUS says all).
        yield _status_line(session, state.names[mailbox_id], new, flags_only=True)


def _status_line(session: Session, name: str, st: MailboxStatus, *, flags_only: bool) -> bytes:
    items = [] if flags_only else [f"MESSAGES {st.messages}", f"UIDNEXT {st.uidnext}"]
    items += [f"UIDVALIDITY {st.uidvalidity}", f"UNSEEN {st.unseen}"]
    if session.uses_condstore():
        items.append(f"HIGHESTMODSEQ {st.highestmodseq}")
    return f"* STATUS {_quote(session, name)} ({' '.join(items)})\r\n".encode()


def _quote(session: Session, name: str) -> str:
    return astring(session.mailbox_name(name), utf8=session.utf8).decode("utf-8")


def metadata_concerns(session: Session, change: MetadataChange) -> bool:
    """Whether a METADATA change is news for this session: its account's, another session's doing (§5),
    and NOTIFY asked for metadata events."""
    state = session.notify
    return (state is not None and state.wants_metadata and session.account_id == change.account_id
            and change.origin is not session)  # fmt: skip


def _metadata_changes(session: Session, state: NotifyState, changes: dict[int | None, set[str]]) -> Iterator[bytes]:
    """§5.7 MailboxMetadataChange and §5.8 ServerMetadataChange: `* METADATA mailbox entry ...` with the
    names of the entries another session set or removed (RFC 5464 §4.4.2: no values; the client asks
    with GETMETADATA if it wants them)."""
    server = any("ServerMetadataChange" in g.events for g in state.groups)
    for mailbox_id, names in sorted(changes.items(), key=lambda item: -1 if item[0] is None else item[0]):
        if mailbox_id is None:
            if not server:
                continue
            wire = '""'
        else:
            name = state.names.get(mailbox_id)
            if name is None or "MailboxMetadataChange" not in state.events_for(name):
                continue
            wire = _quote(session, name)
        yield f"* METADATA {wire} ".encode() + b" ".join(entry_name(entry) for entry in sorted(names)) + b"\r\n"


def _name_changes(session: Session, state: NotifyState) -> Iterator[bytes]:
    """§5.4 MailboxName (created, deleted, renamed) and §5.5 SubscriptionChange, as LIST responses."""
    old_names, old_subscribed = state.names, state.subscribed
    created = _read_names(session, state, created=True)
    lines: list[str] = []
    for mailbox_id, name in state.names.items():
        old = old_names.get(mailbox_id)
        if old == name or "MailboxName" not in state.events_for(name) | state.events_for(old or name):
            continue
        oldname = "" if old is None else f' ("OLDNAME" ({_quote(session, old)}))'
        lines.append(f'* LIST () "{SEPARATOR}" {_quote(session, name)}{oldname}\r\n')
    for mailbox_id, name in old_names.items():
        if mailbox_id not in state.names and "MailboxName" in state.events_for(name):
            lines.append(f'* LIST (\\NonExistent) "{SEPARATOR}" {_quote(session, name)}\r\n')
    left_subscriptions = frozenset(e for g in state.groups if g.filter == "SUBSCRIBED" for e in g.events)
    for name in sorted(state.subscribed ^ old_subscribed):
        # A SUBSCRIBED group still hears of a mailbox that has just left the subscriptions (§6.4).
        if "SubscriptionChange" in state.events_for(name) | left_subscriptions:
            attributes = "\\Subscribed" if name in state.subscribed else ""
            lines.append(f'* LIST ({attributes}) "{SEPARATOR}" {_quote(session, name)}\r\n')
    yield from (line.encode() for line in lines)
    # Messages that came into a new mailbox before it was watched were announced to nobody here.
    view = session.selected
    for mailbox_id in created:
        if view is None or view.mailbox_id != mailbox_id:
            yield from _status_change(session, state, mailbox_id)


# The session's own changes (§5: not reported back to it). Each is applied to what the session knows from
# what the store returned for it (the mailbox's id, the MODSEQs of its writes), never by reading the state
# after the command: a change another session made meanwhile stays unknown, and is reported at the next
# push.


def note_created(session: Session, mailbox: Mailbox) -> None:
    """This session created `mailbox`: known to the client, and known to be empty."""
    state = session.notify
    if state is None:
        return
    state.names = {**state.names, mailbox.id: mailbox.name}
    if state.events_for(mailbox.name) & STATUS_EVENTS:
        empty = MailboxStatus(0, 0, 0, 0, mailbox.uidnext, mailbox.uidvalidity, mailbox.highestmodseq)
        state.statuses[mailbox.id] = empty
    _watch(session, state)


def note_deleted(session: Session, mailbox_id: int) -> None:
    state = session.notify
    if state is None:
        return
    state.names = {i: name for i, name in state.names.items() if i != mailbox_id}
    _watch(session, state)


def note_renamed(session: Session, renamed: dict[int, str]) -> None:
    """This session renamed mailboxes (new names by id); their subscriptions followed them."""
    state = session.notify
    if state is None:
        return
    for mailbox_id, new in renamed.items():
        old = state.names.get(mailbox_id)
        if old is not None and old != INBOX and old in state.subscribed:
            state.subscribed = (state.subscribed - {old}) | {new}
    state.names = {**state.names, **renamed}
    _watch(session, state)


def note_subscribed(session: Session, name: str, subscribed: bool) -> None:
    state = session.notify
    if state is None:
        return
    state.subscribed = state.subscribed | {name} if subscribed else state.subscribed - {name}
    _watch(session, state)


def note_written(session: Session, mailbox_id: int, modseqs: Collection[int]) -> None:
    """This session's APPEND, COPY or MOVE wrote into `mailbox_id` at `modseqs`: the STATUS read now is
    taken as known only when those are all the changes since the one the client knew (every change
    raises a mailbox's HIGHESTMODSEQ by one); else someone else wrote too, and the next push reports it."""
    state = session.notify
    if state is None or not modseqs:
        return
    known = state.statuses.get(mailbox_id)
    if known is None:
        return
    try:
        now = session.store.mailbox_status(mailbox_id)
    except NoSuchMailbox:
        return
    if now.highestmodseq - known.highestmodseq == len({m for m in modseqs if m > known.highestmodseq}):
        state.statuses[mailbox_id] = now


def note_expunged(session: Session, mailbox_id: int) -> None:
    """This session's CLOSE expunged messages of `mailbox_id` (after leaving it): one change, so the STATUS
    read now is known when it is one MODSEQ past the one the client knew."""
    state = session.notify
    known = None if state is None else state.statuses.get(mailbox_id)
    if state is None or known is None:
        return
    try:
        now = session.store.mailbox_status(mailbox_id)
    except NoSuchMailbox:
        return
    if now.highestmodseq == known.highestmodseq + 1:
        state.statuses[mailbox_id] = now
