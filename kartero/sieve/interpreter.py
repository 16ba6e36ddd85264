"""Running a compiled script on one message (RFC 5228 §2.10 and the extensions' action rules).

Theory of operation: commands run from an explicit stack of frames (a block and the index of the next
command in it; an include pushes the included script's top block with its own variable scope), so the
Python stack depth never grows with blocks or includes; tests recurse, at most grammar.MAX_DEPTH deep.
Actions are gathered in order; at the end implicit keep is decided, fileinto of one mailbox twice is
merged, and redirects to one address sent once (§2.10.3). Anything that goes wrong while running (a
limit, a conflict between actions, an invalid value that variables produced, an included script that
is missing or does not compile) is a runtime error: the outcome is keep in INBOX with the error
(§2.10.6), never an exception.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TypeVar

from kartero.sieve.compiler import (
    ADDRESS_HEADERS,
    PROTECTED_HEADERS,
    MatchSpec,
    Node,
    Script,
    _field_name_ok,
    compile_script,
    parse_redirect_address,
    parse_vacation_from,
    parse_zone,
)
from kartero.sieve.grammar import Position
from kartero.sieve.match import (
    C_SCAN_CHARS,
    MAX_PATTERN,
    Budget,
    BudgetExceeded,
    Wildcard,
    compile_wildcard,
    fold,
    is_equal,
    match_wildcard,
    quote_wildcard,
    relation_holds,
)
from kartero.sieve.message import Header, body_texts, date_part, field_addresses, in_zone, parse_date
from kartero.sieve.model import (
    Action,
    Context,
    DuplicateMark,
    FileInto,
    Limits,
    Outcome,
    Redirect,
    Reject,
    SieveError,
    Vacation,
)
from kartero.sieve.regex import Regex, RegexError, compile_regex, quote_regex
from kartero.sieve.strings import Template, VariableRef

DAY = 86_400
# RFC 5230 §4.1: :days at least 1 (a lower value is raised to it); our upper bound is 30 days, the default 7.
VACATION_DEFAULT = 7 * DAY
VACATION_MAX = 30 * DAY
VACATION_MIN_SECONDS = 3600  # RFC 6131 §2 lets the site pick a minimum; :seconds 0 stays 0 (always reply)
# RFC 7352 §3.3: the site picks the default and the maximum period of duplicate tracking.
DUPLICATE_DEFAULT = 7 * DAY
DUPLICATE_MAX = 30 * DAY
MAX_ADDED_VALUE = 8192  # characters of an addheader value: 100 edits make at most ~2.5 MB of header

SYSTEM_FLAGS = {f.lower(): f for f in ("\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft")}
_ATOM_SPECIALS = frozenset('(){%*"\\] ')

ENVIRONMENT = {"name": "Kartero", "phase": "during", "location": "MDA"}


class RuntimeFailure(Exception):
    """A runtime error (RFC 5228 §2.10.6): the run ends with keep and this message."""

    def __init__(self, position: Position | None, message: str) -> None:
        super().__init__(f"{position.line}:{position.column}: {message}" if position else message)


class _Stop(Exception):
    """`stop`: end the whole run."""


@dataclass(slots=True)
class _Scope:
    """One script's variables (RFC 5229), the globals it declared (RFC 6609 §3.3), its match variables."""

    has_variables: bool  # the script required "variables": matches set ${0}..${9}
    variables: dict[str, str] = field(default_factory=dict)
    globals_declared: set[str] = field(default_factory=set)
    matched: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Frame:
    nodes: list[Node] | tuple[Node, ...]
    scope: _Scope
    index: int = 0
    script_boundary: bool = False  # the top block of a script (what `return` pops to)
    name: tuple[bool, str] | None = None  # the included script this frame started


class _Run:
    def __init__(self, script: Script, context: Context, limits: Limits) -> None:
        self.script = script
        self.context = context
        self.limits = limits
        self.header = Header(context.header)
        # A context whose header holds the whole message (no separate body): the rest is the body.
        self.body = context.body or context.header[len(self.header.original) :]
        self.budget = Budget(limits.max_match_steps)
        self.steps = 0
        self.actions: list[Action] = []
        self.counted_actions = 0
        self.implicit_keep = True
        self.flags: set[str] = set()
        self.globals: dict[str, str] = {}
        self.duplicates: list[DuplicateMark] = []
        self.header_edits = 0
        self.has_reject = False
        self.has_vacation = False
        self.has_delivery = False  # keep/fileinto/redirect given explicitly (RFC 5429 §2.4)
        self.include_stack: list[tuple[bool, str]] = []
        self.included: set[tuple[bool, str]] = set()
        self.includes = 0
        self.compiled_includes: dict[tuple[bool, str], Script] = {}
        self._body_cache: dict[tuple[str, tuple[str, ...]], list[str]] = {}
        self.patterns: dict[tuple[str, str, str], Wildcard | Regex] = {}

    # -- running ----------------------------------------------------------------------------------------

    def run(self) -> Outcome:
        stack = [_Frame(self.script.commands, _Scope("variables" in self.script.extensions), script_boundary=True)]
        try:
            while stack:
                frame = stack[-1]
                if frame.index >= len(frame.nodes):
                    stack.pop()
                    if frame.name is not None:
                        self.include_stack.pop()
                    continue
                node = frame.nodes[frame.index]
                frame.index += 1
                self.step(node.position)
                pushed = self.command(node, frame.scope)
                if pushed is _RETURN:
                    while stack:
                        popped = stack.pop()
                        if popped.name is not None:
                            self.include_stack.pop()
                        if popped.script_boundary:
                            break
                elif isinstance(pushed, _Frame):
                    stack.append(pushed)
        except _Stop:
            pass
        return self.outcome()

    def step(self, position: Position) -> None:
        self.steps += 1
        if self.steps > self.limits.max_steps:
            raise RuntimeFailure(position, f"more than {self.limits.max_steps} steps")

    def outcome(self) -> Outcome:
        actions = list(self.actions)
        if self.implicit_keep:
            actions.append(FileInto("INBOX", frozenset(self.flags), header=self.header.edited_block(), keep=True))
        merged: list[Action] = []
        stored: dict[str, int] = {}
        redirected: set[str] = set()
        for action in actions:
            if isinstance(action, FileInto):
                key = action.mailbox
                if key.upper() == "INBOX":  # RFC 3501 §5.1: INBOX is INBOX in any case
                    key = "INBOX"
                    action = FileInto(key, action.flags, action.create, action.header, action.keep)
                if key in stored:
                    earlier = merged[stored[key]]
                    assert isinstance(earlier, FileInto)
                    merged[stored[key]] = FileInto(  # an explicit fileinto "INBOX" wins over keep
                        earlier.mailbox, earlier.flags | action.flags, earlier.create or action.create, earlier.header,
                        earlier.keep and action.keep,
                    )
                    continue
                stored[key] = len(merged)
            elif isinstance(action, Redirect):
                key = action.address.lower()
                if key in redirected:
                    continue
                redirected.add(key)
            merged.append(action)
        return Outcome(tuple(merged), tuple(self.duplicates))

    def add_action(self, action: Action, position: Position) -> None:
        self.counted_actions += 1
        if self.counted_actions > self.limits.max_actions:
            raise RuntimeFailure(position, f"more than {self.limits.max_actions} actions")
        if isinstance(action, Reject):
            if self.has_reject:
                raise RuntimeFailure(position, "reject given twice (RFC 5429 §2.4)")
            if self.has_delivery or self.has_vacation:
                raise RuntimeFailure(position, "reject cannot be combined with keep, fileinto, redirect or vacation")
            self.has_reject = True
        elif self.has_reject:
            raise RuntimeFailure(position, "reject cannot be combined with keep, fileinto, redirect or vacation")
        if isinstance(action, Vacation):
            if self.has_vacation:
                raise RuntimeFailure(position, "vacation given twice (RFC 5230 §4.7)")
            self.has_vacation = True
        if isinstance(action, (FileInto, Redirect)):
            self.has_delivery = True
        if isinstance(action, Redirect):
            count = len({a.address.lower() for a in self.actions if isinstance(a, Redirect)} | {action.address.lower()})
            if count > self.limits.max_redirects:
                raise RuntimeFailure(position, f"more than {self.limits.max_redirects} redirects")
        self.actions.append(action)

    # -- strings ----------------------------------------------------------------------------------------

    def expand(self, template: Template, scope: _Scope, position: Position) -> str:
        constant = template.constant
        if constant is not None:
            return constant
        out: list[str] = []
        size = 0
        for part in template.parts:
            text = part if isinstance(part, str) else self.lookup(part, scope)
            size += len(text)
            if size > self.limits.max_string:
                raise RuntimeFailure(position, f"string longer than {self.limits.max_string} characters")
            out.append(text)
        self.budget.charge(size // C_SCAN_CHARS)  # copying is work too: 100,000 steps of 64 KiB strings
        return "".join(out)

    def text(self, value: object, scope: _Scope, position: Position) -> str:
        """A string argument (a Template, by the signature that validated it) expanded."""
        assert isinstance(value, Template)
        return self.expand(value, scope, position)

    def expand_all(self, value: object, scope: _Scope, position: Position) -> list[str]:
        items = value if isinstance(value, tuple) else (value,)
        return [self.expand(t, scope, position) for t in items if isinstance(t, Template)]

    def lookup(self, ref: VariableRef, scope: _Scope) -> str:
        name = ref.name
        if name.isdigit():
            index = int(name)
            return scope.matched[index] if index < len(scope.matched) else ""
        if name.startswith("global."):
            return self.globals.get(name[7:], "")
        if name in scope.globals_declared:
            return self.globals.get(name, "")
        return scope.variables.get(name, "")

    def assign(self, name: str, value: str, scope: _Scope, position: Position) -> None:
        name = name.lower()
        if len(value) > self.limits.max_string:
            raise RuntimeFailure(position, f"string longer than {self.limits.max_string} characters")
        if name.startswith("global."):
            target, name = self.globals, name[7:]
        elif name in scope.globals_declared:
            target = self.globals
        else:
            target = scope.variables
        if name not in target and len(target) >= self.limits.max_variables:
            raise RuntimeFailure(position, f"more than {self.limits.max_variables} variables")
        target[name] = value

    # -- commands ---------------------------------------------------------------------------------------

    def command(self, node: Node, scope: _Scope) -> object:
        name = node.name
        position = node.position
        if name == "if":
            for test, block in node.branches:
                if test is None or self.test(test, scope):
                    return _Frame(block, scope) if block else None
            return None
        if name == "stop":
            raise _Stop
        if name == "keep":
            flags = self.flag_set(node, scope)
            self.add_action(FileInto("INBOX", flags, header=self.header.edited_block(), keep=True), position)
            self.implicit_keep = False
        elif name == "discard":
            self.counted_actions += 1
            self.implicit_keep = False
        elif name == "fileinto":
            mailbox = self.text(node.args[0], scope, position)
            if not mailbox:
                raise RuntimeFailure(position, "fileinto: the mailbox name is empty")
            flags = self.flag_set(node, scope)
            action = FileInto(mailbox, flags, bool(node.tags.get("create")), self.header.edited_block())
            self.add_action(action, position)
            if not node.tags.get("copy"):
                self.implicit_keep = False
        elif name == "redirect":
            text = self.text(node.args[0], scope, position)
            address = parse_redirect_address(text)
            if address is None:
                raise RuntimeFailure(position, f'redirect: "{text[:100]}" is not a valid address')
            self.add_action(Redirect(address, self.header.edited_block()), position)
            if not node.tags.get("copy"):
                self.implicit_keep = False
        elif name in ("reject", "ereject"):
            reason = self.text(node.args[0], scope, position)
            self.add_action(Reject(reason, extended=name == "ereject"), position)
            self.implicit_keep = False
        elif name in ("setflag", "addflag", "removeflag"):
            self.flag_command(node, scope)
        elif name == "set":
            self.set_command(node, scope)
        elif name == "vacation":
            self.vacation(node, scope)
        elif name == "include":
            return self.include(node, scope)
        elif name == "return":
            return _RETURN
        elif name == "global":
            for item in _templates(node.args[0]):
                scope.globals_declared.add((item.constant or "").lower())
        elif name in ("addheader", "deleteheader"):
            self.edit_header(node, scope)
        return None

    def flag_set(self, node: Node, scope: _Scope) -> frozenset[str]:
        if "flags" in node.tags:
            return frozenset(_flags(self.expand_all(node.tags["flags"], scope, node.position)))
        return frozenset(self.flags)

    def flag_command(self, node: Node, scope: _Scope) -> None:
        """RFC 5232 §3: on the internal variable, or on the named variable (a space-separated list)."""
        given = _flags(self.expand_all(node.args[-1], scope, node.position))
        variable: str | None = None
        if len(node.args) == 2:
            variable = (node.args[0].constant or "") if isinstance(node.args[0], Template) else ""
            current = _flags([self.lookup(VariableRef(variable.lower()), scope)])
        else:
            current = list(self.flags)
        current_keys = {f.lower(): f for f in current}
        if node.name == "setflag":
            result = {f.lower(): f for f in given}
        elif node.name == "addflag":
            result = dict(current_keys)
            for f in given:
                result.setdefault(f.lower(), f)
        else:
            removed = {f.lower() for f in given}
            result = {k: v for k, v in current_keys.items() if k not in removed}
        if variable is None:
            self.flags = set(result.values())
        else:
            self.assign(variable, " ".join(result.values()), scope, node.position)

    def set_command(self, node: Node, scope: _Scope) -> None:
        """RFC 5229 §4: modifiers apply from the highest precedence (:lower/:upper) to :length."""
        name = node.args[0].constant if isinstance(node.args[0], Template) else None
        value = self.text(node.args[1], scope, node.position)
        tags = node.tags
        if tags.get("lower"):
            value = value.lower()
        if tags.get("upper"):
            value = value.upper()
        if tags.get("lowerfirst"):
            value = value[:1].lower() + value[1:]
        if tags.get("upperfirst"):
            value = value[:1].upper() + value[1:]
        if tags.get("quotewildcard"):
            value = quote_wildcard(value)
        if tags.get("quoteregex"):
            value = quote_regex(value)
        if tags.get("length"):
            value = str(len(value))
        self.assign(name or "", value, scope, node.position)

    def vacation(self, node: Node, scope: _Scope) -> None:
        position = node.position
        tags = node.tags
        reason = self.text(node.args[0], scope, position)
        subject = self.text(tags["subject"], scope, position) if "subject" in tags else None
        sender = self.text(tags["from"], scope, position) if "from" in tags else None
        if sender is not None and parse_vacation_from(sender) is None:
            raise RuntimeFailure(position, f'vacation: :from "{sender[:100]}" is not a valid address')
        own = tuple(self.expand_all(tags.get("addresses", ()), scope, position))
        is_mime = bool(tags.get("mime"))
        if "seconds" in tags:
            seconds = _number(tags["seconds"])
            seconds = 0 if seconds == 0 else min(max(seconds, VACATION_MIN_SECONDS), VACATION_MAX)
        elif "days" in tags:
            seconds = min(max(_number(tags["days"]), 1) * DAY, VACATION_MAX)
        else:
            seconds = VACATION_DEFAULT
        if "handle" in tags:
            handle = self.text(tags["handle"], scope, position)
        else:
            # RFC 5230 §4.2: without :handle, replies with the same :subject, :from, :mime and reason
            # share one record of who got a reply.
            digest = hashlib.sha256(repr((subject, sender, is_mime, reason)).encode()).hexdigest()
            handle = f"auto-{digest[:32]}"
        self.add_action(Vacation(reason, handle, seconds, subject, sender, own, is_mime), position)

    def include(self, node: Node, scope: _Scope) -> _Frame | None:
        """RFC 6609 §3.2: the named script runs here with its own variables; :once runs it at most once."""
        position = node.position
        is_global = bool(node.tags.get("global"))
        name = node.args[0].constant if isinstance(node.args[0], Template) else None
        key = (is_global, name or "")
        if node.tags.get("once") and key in self.included:
            return None
        if key in self.include_stack:
            raise RuntimeFailure(position, f'include: "{key[1]}" includes itself')
        if len(self.include_stack) >= self.limits.max_includes or self.includes >= self.limits.max_includes * 10:
            raise RuntimeFailure(position, f"include: more than {self.limits.max_includes} levels or too many includes")
        self.includes += 1
        script = self.compiled_includes.get(key)
        if script is None:
            text = self.context.load_script(is_global, key[1])
            if text is None:
                if node.tags.get("optional"):
                    return None
                raise RuntimeFailure(position, f'include: no {"global" if is_global else "personal"} script "{key[1]}"')
            try:
                script = _compiled_include(text)
            except SieveError as exc:
                raise RuntimeFailure(position, f'include: "{key[1]}" does not compile: {exc}') from None
            self.compiled_includes[key] = script
        self.included.add(key)
        self.include_stack.append(key)
        return _Frame(script.commands, _Scope("variables" in script.extensions), script_boundary=True, name=key)

    def edit_header(self, node: Node, scope: _Scope) -> None:
        position = node.position
        self.header_edits += 1
        if self.header_edits > self.limits.max_header_edits:
            raise RuntimeFailure(position, f"more than {self.limits.max_header_edits} header edits")
        name = self.text(node.args[0], scope, position)
        if not _field_name_ok(name) or name.lower() in PROTECTED_HEADERS:
            return  # RFC 5293 §7: an invalid or protected name found at run time leaves the header as it is
        if node.name == "addheader":
            value = self.text(node.args[1], scope, position)
            if len(value) > MAX_ADDED_VALUE:
                raise RuntimeFailure(position, f"addheader: value longer than {MAX_ADDED_VALUE} characters")
            self.header.add(name, value, bool(node.tags.get("last")))
            return
        index = node.tags.get("index")
        wanted: list[bool] | None = None
        if len(node.args) == 2 and node.match is not None:
            spec = node.match
            wanted = []
            for text in self.header.texts(name):
                wanted.append(self.matches(spec, [text], scope, position, set_variables=False))
        self.header.delete(name, index if isinstance(index, int) else None, bool(node.tags.get("last")), wanted)

    # -- tests ------------------------------------------------------------------------------------------

    def test(self, node: Node, scope: _Scope) -> bool:
        self.step(node.position)
        name = node.name
        position = node.position
        if name == "true":
            return True
        if name == "false":
            return False
        if name == "not":
            return not self.test(node.tests[0], scope)
        if name == "anyof":
            return any(self.test(t, scope) for t in node.tests)
        if name == "allof":
            return all(self.test(t, scope) for t in node.tests)
        if name == "exists":
            return all(self.header.exists(n) for n in self.expand_all(node.args[0], scope, position))
        if name == "size":
            size = self.context.size if self.context.size is not None else len(self.context.header) + len(
                self.context.body
            )
            limit = node.args[0]
            assert isinstance(limit, int)
            return size > limit if node.tags.get("over") else size < limit
        if name == "mailboxexists":
            return all(self.context.mailbox_exists(m) for m in self.expand_all(node.args[0], scope, position))
        if name == "duplicate":
            return self.duplicate(node, scope)
        assert node.match is not None
        values = self.test_values(node, scope)
        return self.matches(
            node.match, values, scope, position, count_empty=name != "string", split_keys=name == "hasflag"
        )

    def test_values(self, node: Node, scope: _Scope) -> list[str]:
        name = node.name
        position = node.position
        if name == "header":
            values: list[str] = []
            for header in self.expand_all(node.args[0], scope, position):
                values.extend(_indexed(self.header.texts(header), node))
            return values
        if name == "address":
            part = _address_part(node)
            out: list[str] = []
            for header in self.expand_all(node.args[0], scope, position):
                if header.lower() not in ADDRESS_HEADERS:
                    continue
                for header_field in _indexed(self.header.named(header), node):
                    if header_field.addresses is None:
                        self.budget.charge(len(header_field.raw) // C_SCAN_CHARS + 1)
                    for local, domain in field_addresses(header_field):
                        value = _part_of(local, domain, part)
                        if value is not None:
                            out.append(value)
            return out
        if name == "envelope":
            part = _address_part(node)
            out = []
            for item in self.expand_all(node.args[0], scope, position):
                item = item.lower()
                if item == "from":
                    text = self.context.envelope_from
                elif item == "to":
                    text = self.context.envelope_to
                elif item == "auth":
                    if self.context.auth is None:
                        continue
                    text = self.context.auth
                else:
                    continue
                if not text:  # the null reverse-path (RFC 5228 §5.4): "" for every part
                    out.append("")
                    continue
                local, at, domain = text.rpartition("@")
                # An envelope path without a domain (<Postmaster>, RFC 5321 §4.1.1.3) still has a local part.
                value = _part_of(local if at else text, domain if at else None, part, strict=False)
                if value is not None:
                    out.append(value)
            return out
        if name == "string":
            return self.expand_all(node.args[0], scope, position)
        if name == "hasflag":
            if len(node.args) == 2:
                names = [t.constant or "" for t in _templates(node.args[0])]
                return _flags([self.lookup(VariableRef(n.lower()), scope) for n in names])
            return sorted(self.flags)
        if name == "body":
            types: tuple[str, ...] = ()
            if "raw" in node.tags:
                transform = "raw"
            elif "content" in node.tags:
                transform, types = "content", tuple(self.expand_all(node.tags["content"], scope, position))
            else:
                transform = "text"
            key = (transform, types)
            if key not in self._body_cache:
                body = self.body[: self.limits.max_body]
                self.budget.charge(len(body) // C_SCAN_CHARS)
                self._body_cache[key] = body_texts(self.header.original, body, transform, types)
            return self._body_cache[key]
        if name in ("date", "currentdate"):
            return self.date_values(node, scope)
        if name == "environment":
            item = self.text(node.args[0], scope, position).lower()
            environment = {**self.context.environment, **ENVIRONMENT}
            return [environment[item]] if item in environment else []
        raise RuntimeFailure(position, f"unknown test {name}")

    def date_values(self, node: Node, scope: _Scope) -> list[str]:
        position = node.position
        part = self.text(node.args[-2], scope, position)
        zone: int | None = None
        if "zone" in node.tags:
            text = self.text(node.tags["zone"], scope, position)
            zone = parse_zone(text)
            if zone is None:
                raise RuntimeFailure(position, f'{node.name}: invalid zone "{text[:20]}"')
        now = self.context.now
        default_zone = int((now.utcoffset() or timedelta(0)).total_seconds()) // 60
        if node.name == "currentdate":
            moments = [in_zone(now, zone if zone is not None else default_zone)]
            if moments[0] is None:
                return []
        else:
            header = self.text(node.args[0], scope, position)
            moments = []
            # RFC 5260 §4: the first field (or the :index-th, §6) is the one tested; no date there, no match.
            for text in _indexed(self.header.texts(header), node)[:1]:
                moment = parse_date(text, header)
                if moment is not None and not node.tags.get("originalzone"):
                    moment = in_zone(moment, zone if zone is not None else default_zone)
                if moment is not None:
                    moments.append(moment)
        return [date_part(m, part) for m in moments if m is not None]

    def duplicate(self, node: Node, scope: _Scope) -> bool:
        """RFC 7352 §3: the tracked value is the first Message-ID (or :header) field, unfolded, decoded and
        trimmed, or the :uniqueid string, tracked per :handle. Only earlier runs count: every duplicate test
        of a run with the same arguments gives the same answer. No value, an invalid :header name or
        `:seconds 0` gives false and tracks nothing."""
        position = node.position
        tags = node.tags
        if "uniqueid" in tags:
            value = self.text(tags["uniqueid"], scope, position)
        else:
            header = self.text(tags["header"], scope, position) if "header" in tags else "message-id"
            texts = self.header.texts(header) if _field_name_ok(header) else []
            if not texts:
                return False
            value = texts[0].strip()
        seconds = min(_number(tags["seconds"]), DUPLICATE_MAX) if "seconds" in tags else DUPLICATE_DEFAULT
        if seconds == 0:
            return False
        handle = self.text(tags["handle"], scope, position) if "handle" in tags else ""
        digest = hashlib.sha256(f"{len(handle)}:{handle}\0{value}".encode()).hexdigest()
        key = f"sieve-duplicate:{digest}"
        seen = self.context.duplicate_seen(key)
        if not seen or tags.get("last"):
            # Without :last the record keeps the time it was made (§3); with :last it is renewed.
            self.duplicates = [d for d in self.duplicates if d.key != key]
            self.duplicates.append(DuplicateMark(key, seconds))
        return seen

    # -- matching ---------------------------------------------------------------------------------------

    def matches(
        self,
        spec: MatchSpec,
        values: list[str],
        scope: _Scope,
        position: Position,
        set_variables: bool = True,
        count_empty: bool = True,
        split_keys: bool = False,
    ) -> bool:
        keys = [self.expand(k, scope, position) for k in spec.keys]
        if split_keys:  # RFC 5232 §5: hasflag's keys are space-separated lists of flags
            keys = [flag for key in keys for flag in key.split()]
        comparator = spec.comparator
        kind = spec.kind
        if kind == "count":
            # RFC 5229 §5: the string test counts only the strings that are not empty.
            count = str(len([v for v in values if v != ""]) if count_empty is False else len(values))
            assert spec.relation is not None
            return any(relation_holds(spec.relation, comparator, count, key) for key in keys)
        for value in values:
            for index, key in enumerate(keys):
                self.budget.charge(1 + len(value) // C_SCAN_CHARS)
                if kind == "is":
                    if is_equal(comparator, value, key):
                        return True
                elif kind == "contains":
                    if fold(comparator, key) in fold(comparator, value):
                        return True
                elif kind == "value":
                    assert spec.relation is not None
                    if relation_holds(spec.relation, comparator, value, key):
                        return True
                else:
                    captures = self.pattern_match(spec, index, key, value, position)
                    if captures is not None:
                        if set_variables and scope.has_variables:
                            scope.matched = captures
                        return True
        return False

    def compile_pattern(self, kind: str, comparator: str, key: str, position: Position) -> Wildcard | Regex:
        """A key that variables made, compiled once per run (and its cost charged)."""
        cached = self.patterns.get((kind, comparator, key))
        if cached is not None:
            return cached
        if len(key) > MAX_PATTERN:
            raise RuntimeFailure(position, f"pattern longer than {MAX_PATTERN} characters")
        compiled: Wildcard | Regex
        if kind == "matches":
            compiled = compile_wildcard(key, comparator)
        else:
            try:
                compiled = compile_regex(key, comparator == "i;ascii-casemap")
            except RegexError as exc:
                raise RuntimeFailure(position, f"invalid regex: {exc}") from None
            self.budget.charge(len(compiled.program))
        self.budget.charge(len(key))
        if len(self.patterns) < 1000:
            self.patterns[(kind, comparator, key)] = compiled
        return compiled

    def pattern_match(self, spec: MatchSpec, index: int, key: str, value: str, position: Position) -> list[str] | None:
        compiled = spec.compiled[index] if index < len(spec.compiled) else None
        if compiled is None:
            compiled = self.compile_pattern(spec.kind, spec.comparator, key, position)
        if isinstance(compiled, Wildcard):
            return match_wildcard(compiled, spec.comparator, value, self.budget)
        assert isinstance(compiled, Regex)
        return compiled.search(value, self.budget)


_RETURN = object()
_T = TypeVar("_T")


def _flags(items: list[str]) -> list[str]:
    """RFC 5232 §3: each string is a space-separated list of flags; system flags get their canonical
    case, keywords must be IMAP atoms (others are dropped), duplicates go."""
    out: dict[str, str] = {}
    for item in items:
        for flag in item.split():
            if flag.startswith("\\"):
                canonical = SYSTEM_FLAGS.get(flag.lower())
                if canonical is None:
                    continue
                flag = canonical
            elif not flag.isascii() or any(c in _ATOM_SPECIALS or ord(c) < 33 or ord(c) == 127 for c in flag):
                continue
            out.setdefault(flag.lower(), flag)
    return list(out.values())


def _templates(value: object) -> tuple[Template, ...]:
    items = value if isinstance(value, tuple) else (value,)
    return tuple(item for item in items if isinstance(item, Template))


def _number(value: object) -> int:
    assert isinstance(value, int)
    return value


def _indexed(values: list[_T], node: Node) -> list[_T]:
    """RFC 5260 §6 :index/:last: only the index-th field (counted from the end with :last)."""
    index = node.tags.get("index")
    if not isinstance(index, int) or isinstance(index, bool):
        return values
    k = len(values) - index if node.tags.get("last") else index - 1
    return [values[k]] if 0 <= k < len(values) else []


def _address_part(node: Node) -> str:
    for part in ("localpart", "domain", "user", "detail"):
        if node.tags.get(part):
            return part
    return "all"


def _part_of(local: str, domain: str | None, part: str, strict: bool = True) -> str | None:
    """RFC 5228 §2.7.4 and RFC 5233 §4 (separator "+"): None when the address has no such part; an
    address without a domain is not valid, so only :all sees it."""
    if part == "all":
        return f"{local}@{domain}" if domain is not None else local
    if domain is None and strict:
        return None
    if part == "localpart":
        return local
    if part == "domain":
        return domain
    user, plus, detail = local.partition("+")
    if part == "user":
        return user
    return detail if plus else None


def run_script(script: Script, context: Context, limits: Limits) -> Outcome:
    """Run `script`; never raises: a runtime error gives keep in INBOX with the error."""
    try:
        return _Run(script, context, limits).run()
    except RuntimeFailure as exc:
        return Outcome((FileInto("INBOX", keep=True),), error=str(exc))
    except BudgetExceeded:
        error = f"more than {limits.max_match_steps} steps of matching and copying strings"
        return Outcome((FileInto("INBOX", keep=True),), error=error)
    except RecursionError:
        return Outcome((FileInto("INBOX", keep=True),), error="script nested too deeply")


# Included scripts compiled once for every run that includes them (a global script may be included by
# every user's script at every delivery: compiling it each time cost up to a second a message), in a
# small cache bounded by count and text size (a compiled script takes several times its text).
_INCLUDE_CACHE = 32
_INCLUDE_CACHE_TEXT = 8 * 1024 * 1024
_include_cache: dict[str, Script] = {}
_include_cache_text = 0
_include_lock = threading.Lock()


def _compiled_include(text: str) -> Script:
    """compile_script(text), cached by text (raises SieveError as it does; failures are not cached)."""
    global _include_cache_text
    key = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    with _include_lock:
        found = _include_cache.get(key)
    if found is not None:
        return found
    script = compile_script(text)
    with _include_lock:
        if len(_include_cache) >= _INCLUDE_CACHE or _include_cache_text + len(text) > _INCLUDE_CACHE_TEXT:
            _include_cache.clear()
            _include_cache_text = 0
        _include_cache[key] = script
        _include_cache_text += len(text)
    return script
