"""Validation of a parsed script: what RFC 5228 and each extension allow, checked before anything runs.

Each command and test has a `Signature` (its tags, positional argument shapes, tests and block); the
checks a signature cannot say (an extension's rules between arguments) are per-name functions. The
result is a tree of `Node`s the interpreter runs without checking again: strings are `Template`s, match
arguments a `MatchSpec` with constant keys already compiled, if/elsif/else one node.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from kartero.mail.address import AddressError, parse_mailbox
from kartero.sieve.grammar import (
    Argument,
    Command,
    NumberArgument,
    Position,
    StringArgument,
    TagArgument,
    Test,
    parse,
)
from kartero.sieve.match import COMPARATORS, MAX_PATTERN, NUMERIC, RELATIONS, Wildcard, compile_wildcard
from kartero.sieve.model import SieveError
from kartero.sieve.regex import Regex, RegexError, compile_regex
from kartero.sieve.strings import Template, decode_encoded, is_identifier, is_variable_name, literal, parse_template

EXTENSIONS: tuple[str, ...] = (
    "fileinto",
    "reject",
    "ereject",
    "envelope",
    "encoded-character",
    "imap4flags",
    "body",
    "variables",
    "relational",
    "comparator-i;ascii-numeric",
    "subaddress",
    "copy",
    "date",
    "index",
    "vacation",
    "vacation-seconds",
    "mailbox",
    "include",
    "editheader",
    "duplicate",
    "environment",
    "regex",
)
# Always there (RFC 5228 §2.7.3), so requiring them is allowed though the capability does not list them.
_IMPLICIT = ("comparator-i;octet", "comparator-i;ascii-casemap")

DATE_PARTS = ("year", "month", "day", "date", "julian", "hour", "minute", "second", "time", "iso8601", "std11",
              "zone", "weekday")  # fmt: skip
ENVELOPE_PARTS = ("from", "to", "auth")
# RFC 5228 §5.1: the address test only reads fields that hold addresses: those of RFC 5322 and the common
# trace and list fields that do. A name given at run time outside this list yields no addresses.
ADDRESS_HEADERS = frozenset({
    "from", "sender", "reply-to", "to", "cc", "bcc", "resent-from", "resent-sender", "resent-to", "resent-cc",
    "resent-bcc", "resent-reply-to", "return-path", "delivered-to", "envelope-to", "x-original-to",
    "x-envelope-to", "x-envelope-from", "errors-to", "disposition-notification-to", "return-receipt-to",
    "mail-followup-to", "mail-reply-to", "original-recipient", "x-original-from", "x-sender", "x-beenthere",
    "apparently-to", "approved-by",
})  # fmt: skip
# RFC 5293 §6 and RFC 3834: a script must never hide trace fields or the loop protection of auto-replies.
PROTECTED_HEADERS = ("received", "auto-submitted")

STRING, STRINGS, NUMBER = "string", "string-list", "number"
TagValue = bool | int | str | Template | tuple[Template, ...]
ArgValue = int | Template | tuple[Template, ...]


@dataclass(frozen=True, slots=True)
class Tag:
    argument: str | None = None  # STRING, STRINGS, NUMBER, or None for a flag
    group: str | None = None  # tags of one group exclude each other
    extension: str | None = None
    constant: bool = False  # the argument is never variable-expanded (a comparator or relation name)


@dataclass(frozen=True, slots=True)
class Signature:
    shapes: tuple[tuple[str, ...], ...]  # the positional arguments allowed, by count
    tags: Mapping[str, Tag] = field(default_factory=dict)
    extension: str | None = None
    tests: str = "none"  # "none", "one" or "list"
    block: bool = False
    constant_positions: tuple[int, ...] = ()  # positional arguments never expanded


@dataclass(frozen=True, slots=True)
class MatchSpec:
    kind: str  # is, contains, matches, regex, value, count
    relation: str | None
    comparator: str
    keys: tuple[Template, ...]
    compiled: tuple[Wildcard | Regex | None, ...]  # per key, when it is constant


@dataclass(slots=True)
class Node:
    name: str
    position: Position
    tags: dict[str, TagValue] = field(default_factory=dict)
    args: list[ArgValue] = field(default_factory=list)
    tests: list[Node] = field(default_factory=list)
    block: list[Node] | None = None
    match: MatchSpec | None = None
    branches: list[tuple[Node | None, list[Node]]] = field(default_factory=list)  # if/elsif/else


@dataclass(frozen=True, slots=True)
class Script:
    """A compiled script: what `run` executes."""

    commands: tuple[Node, ...]
    extensions: frozenset[str]


_MATCH_TAGS = {
    "is": Tag(group="match"),
    "contains": Tag(group="match"),
    "matches": Tag(group="match"),
    "value": Tag(STRING, "match", "relational", constant=True),
    "count": Tag(STRING, "match", "relational", constant=True),
    "regex": Tag(group="match", extension="regex"),
}
_COMPARATOR = {"comparator": Tag(STRING, "comparator", constant=True)}
_ADDRESS_PART = {
    "all": Tag(group="address-part"),
    "localpart": Tag(group="address-part"),
    "domain": Tag(group="address-part"),
    "user": Tag(group="address-part", extension="subaddress"),
    "detail": Tag(group="address-part", extension="subaddress"),
}
_INDEX = {"index": Tag(NUMBER, extension="index"), "last": Tag(extension="index")}
_MATCHING = {**_MATCH_TAGS, **_COMPARATOR}
_ZONE = {"zone": Tag(STRING, "zone"), "originalzone": Tag(group="zone")}

COMMANDS: dict[str, Signature] = {
    "require": Signature(((STRINGS,),), constant_positions=(0,)),
    "if": Signature(((),), tests="one", block=True),
    "elsif": Signature(((),), tests="one", block=True),
    "else": Signature(((),), block=True),
    "stop": Signature(((),)),
    "keep": Signature(((),), {"flags": Tag(STRINGS, extension="imap4flags")}),
    "discard": Signature(((),)),
    "redirect": Signature(((STRING,),), {"copy": Tag(extension="copy")}),
    "fileinto": Signature(
        ((STRING,),),
        {"copy": Tag(extension="copy"), "flags": Tag(STRINGS, extension="imap4flags"),
         "create": Tag(extension="mailbox")},
        extension="fileinto",
    ),
    "reject": Signature(((STRING,),), extension="reject"),
    "ereject": Signature(((STRING,),), extension="ereject"),
    "setflag": Signature(((STRINGS,), (STRING, STRINGS)), extension="imap4flags"),
    "addflag": Signature(((STRINGS,), (STRING, STRINGS)), extension="imap4flags"),
    "removeflag": Signature(((STRINGS,), (STRING, STRINGS)), extension="imap4flags"),
    "set": Signature(
        ((STRING, STRING),),
        {"lower": Tag(group="case"), "upper": Tag(group="case"), "lowerfirst": Tag(group="first"),
         "upperfirst": Tag(group="first"), "quotewildcard": Tag(group="quote"),
         "quoteregex": Tag(group="quote", extension="regex"), "length": Tag()},
        extension="variables",
        constant_positions=(0,),
    ),
    "vacation": Signature(
        ((STRING,),),
        {"days": Tag(NUMBER, "period"), "seconds": Tag(NUMBER, "period", "vacation-seconds"),
         "subject": Tag(STRING), "from": Tag(STRING), "addresses": Tag(STRINGS), "mime": Tag(),
         "handle": Tag(STRING)},
        extension="vacation",
    ),
    "include": Signature(
        ((STRING,),),
        {"personal": Tag(group="location"), "global": Tag(group="location"), "once": Tag(), "optional": Tag()},
        extension="include",
        constant_positions=(0,),
    ),
    "return": Signature(((),), extension="include"),
    "global": Signature(((STRINGS,),), extension="include", constant_positions=(0,)),
    "addheader": Signature(((STRING, STRING),), {"last": Tag()}, extension="editheader"),
    # RFC 5293 §5: deleteheader's :index and :last are its own, not the index extension's.
    "deleteheader": Signature(
        ((STRING,), (STRING, STRINGS)), {**_MATCHING, "index": Tag(NUMBER), "last": Tag()}, extension="editheader"
    ),
}

TESTS: dict[str, Signature] = {
    "address": Signature(((STRINGS, STRINGS),), {**_MATCHING, **_ADDRESS_PART, **_INDEX}),
    "allof": Signature(((),), tests="list"),
    "anyof": Signature(((),), tests="list"),
    "not": Signature(((),), tests="one"),
    "true": Signature(((),)),
    "false": Signature(((),)),
    "envelope": Signature(((STRINGS, STRINGS),), {**_MATCHING, **_ADDRESS_PART}, extension="envelope"),
    "exists": Signature(((STRINGS,),)),
    "header": Signature(((STRINGS, STRINGS),), {**_MATCHING, **_INDEX}),
    "size": Signature(((NUMBER,),), {"over": Tag(group="size"), "under": Tag(group="size")}),
    "string": Signature(((STRINGS, STRINGS),), _MATCHING, extension="variables"),
    "hasflag": Signature(((STRINGS,), (STRINGS, STRINGS)), _MATCHING, extension="imap4flags"),
    "body": Signature(
        ((STRINGS,),),
        {**_MATCHING, "raw": Tag(group="transform"), "content": Tag(STRINGS, "transform"),
         "text": Tag(group="transform")},
        extension="body",
    ),
    "date": Signature(((STRING, STRING, STRINGS),), {**_MATCHING, **_ZONE, **_INDEX}, extension="date"),
    "currentdate": Signature(((STRING, STRINGS),), {**_MATCHING, "zone": Tag(STRING, "zone")}, extension="date"),
    "mailboxexists": Signature(((STRINGS,),), extension="mailbox"),
    "duplicate": Signature(
        ((),),
        {"handle": Tag(STRING), "header": Tag(STRING, "id"), "uniqueid": Tag(STRING, "id"),
         "seconds": Tag(NUMBER), "last": Tag()},
        extension="duplicate",
    ),
    "environment": Signature(((STRING, STRINGS),), _MATCHING, extension="environment"),
}

_TYPE_NAMES = {STRING: "a string", STRINGS: "a string list", NUMBER: "a number"}


def compile_script(text: str | bytes) -> Script:
    """Parse and validate a script. Raises SieveError (`line:column: message`) for any script RFC 5228
    and the supported extensions do not allow; nothing else escapes, whatever the input."""
    if isinstance(text, bytes):
        data = text
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data.count(b"\n", 0, exc.start) + 1
            column = len(data[data.rfind(b"\n", 0, exc.start) + 1 : exc.start].decode("utf-8", "replace")) + 1
            raise SieveError(line, column, "the script is not UTF-8") from None
    if text.startswith("\ufeff"):
        text = text[1:]
    try:
        commands = parse(text)
    except RecursionError:  # the depth caps keep far below the interpreter's limit; never let it out
        raise SieveError(1, 1, "script nested too deeply") from None
    return _Validator(commands).script()


class _Validator:
    def __init__(self, commands: list[Command]) -> None:
        self.commands = commands
        self.extensions: set[str] = set()
        self.namespaces: frozenset[str] = frozenset()

    def script(self) -> Script:
        body = self.commands
        seen_other = False
        for command in body:
            if command.name == "require":
                if seen_other:
                    raise command.position.error("require must come before any other command")
                self.require(command)
            else:
                seen_other = True
        if "include" in self.extensions and "variables" in self.extensions:
            self.namespaces = frozenset({"global"})
        nodes = self.block([c for c in body if c.name != "require"])
        return Script(tuple(nodes), frozenset(self.extensions))

    def require(self, command: Command) -> None:
        for argument in command.arguments:
            if isinstance(argument, TagArgument):
                raise argument.position.error(f"require: unknown tag :{argument.name}")
        self.check_shape(command.name, COMMANDS["require"], command.arguments, command.position)
        if command.tests:
            raise command.tests[0].position.error("require takes no test")
        if command.block is not None:
            raise command.position.error("require takes no block")
        argument = command.arguments[0]
        assert isinstance(argument, StringArgument)
        for value, position in zip(argument.values, argument.positions, strict=True):
            name = value.lower()
            if name not in EXTENSIONS and name not in _IMPLICIT:
                raise position.error(f'unsupported extension "{value}"')
            self.extensions.add(name)
            if name == "vacation-seconds":
                self.extensions.add("vacation")

    # -- commands ---------------------------------------------------------------------------------------

    def block(self, commands: list[Command]) -> list[Node]:
        nodes: list[Node] = []
        previous: str | None = None
        for command in commands:
            name = command.name
            if name == "require":
                raise command.position.error("require must come before any other command")
            if name in ("elsif", "else"):
                if previous not in ("if", "elsif"):
                    raise command.position.error(f"{name} without a preceding if")
                node = self.command(command)
                last = nodes[-1]
                last.branches.append((node.tests[0] if node.tests else None, node.block or []))
            else:
                node = self.command(command)
                if name == "if":
                    node.branches.append((node.tests[0], node.block or []))
                    node.tests, node.block = [], None
                nodes.append(node)
            previous = name
        return nodes

    def command(self, command: Command) -> Node:
        signature = COMMANDS.get(command.name)
        if signature is None:
            if command.name in TESTS:
                raise command.position.error(f"{command.name} is a test, not a command")
            raise command.position.error(f'unknown command "{command.name}"')
        self.check_extension(command.name, signature, command.position)
        if signature.tests == "one" and (not command.tests or command.has_test_list):
            raise command.position.error(f"{command.name} needs one test")
        if signature.tests == "none" and command.tests:
            raise command.tests[0].position.error(f"{command.name} takes no test")
        if signature.block and command.block is None:
            raise command.position.error(f"{command.name} needs a block")
        if not signature.block and command.block is not None:
            raise command.position.error(f"{command.name} takes no block; end it with ';'")
        node = self.arguments(command.name, signature, command.arguments, command.position)
        node.tests = [self.test(t) for t in command.tests]
        if command.block is not None:
            node.block = self.block(command.block)
        check = _COMMAND_CHECKS.get(command.name)
        if check is not None:
            check(self, node)
        return node

    def test(self, test: Test) -> Node:
        signature = TESTS.get(test.name)
        if signature is None:
            if test.name in COMMANDS:
                raise test.position.error(f"{test.name} is a command, not a test")
            raise test.position.error(f'unknown test "{test.name}"')
        self.check_extension(test.name, signature, test.position)
        if signature.tests == "list" and not test.has_test_list:
            raise test.position.error(f"{test.name} needs a test list in parentheses")
        if signature.tests == "one" and (len(test.tests) != 1 or test.has_test_list):
            raise test.position.error(f"{test.name} needs one test")
        if signature.tests == "none" and test.tests:
            raise test.tests[0].position.error(f"{test.name} takes no test")
        node = self.arguments(test.name, signature, test.arguments, test.position)
        node.tests = [self.test(t) for t in test.tests]
        check = _TEST_CHECKS.get(test.name)
        if check is not None:
            check(self, node)
        return node

    def check_extension(self, name: str, signature: Signature, position: Position) -> None:
        if signature.extension is not None and signature.extension not in self.extensions:
            raise position.error(f'{name} requires "{signature.extension}" in require')

    def check_shape(self, name: str, signature: Signature, arguments: list[Argument], position: Position) -> None:
        positional = [a for a in arguments if not isinstance(a, TagArgument)]
        self.shape_for(name, signature, positional, position)

    def shape_for(
        self, name: str, signature: Signature, positional: Sequence[Argument], position: Position
    ) -> tuple[str, ...]:
        for shape in signature.shapes:
            if len(shape) == len(positional):
                for index, (kind, argument) in enumerate(zip(shape, positional, strict=True)):
                    if not _fits(kind, argument):
                        raise argument.position.error(
                            f"{name}: argument {index + 1} must be {_TYPE_NAMES[kind]}, found {_found(argument)}"
                        )
                return shape
        counts = sorted({len(s) for s in signature.shapes})
        expected = " or ".join(str(c) for c in counts)
        where = positional[-1].position if positional else position
        raise where.error(f"{name}: expected {expected} positional argument(s), found {len(positional)}")

    def arguments(self, name: str, signature: Signature, arguments: list[Argument], position: Position) -> Node:
        node = Node(name, position)
        groups: dict[str, str] = {}
        i = 0
        while i < len(arguments) and isinstance(arguments[i], TagArgument):
            tag_argument = arguments[i]
            assert isinstance(tag_argument, TagArgument)
            tag = tag_argument.name
            spec = signature.tags.get(tag)
            if spec is None:
                raise tag_argument.position.error(f"{name}: unknown tag :{tag}")
            if spec.extension is not None and spec.extension not in self.extensions:
                raise tag_argument.position.error(f'{name}: :{tag} requires "{spec.extension}" in require')
            if tag in node.tags:
                raise tag_argument.position.error(f"{name}: :{tag} given twice")
            if spec.group is not None:
                if spec.group in groups:
                    raise tag_argument.position.error(
                        f"{name}: :{tag} cannot be used with :{groups[spec.group]}"
                    )
                groups[spec.group] = tag
            i += 1
            if spec.argument is None:
                node.tags[tag] = True
                continue
            if i >= len(arguments) or not _fits(spec.argument, arguments[i]):
                where = arguments[i].position if i < len(arguments) else tag_argument.position
                found = _found(arguments[i]) if i < len(arguments) else "nothing"
                raise where.error(f"{name}: :{tag} needs {_TYPE_NAMES[spec.argument]}, found {found}")
            node.tags[tag] = self.value(spec.argument, arguments[i], spec.constant)
            i += 1
        positional = arguments[i:]
        for argument in positional:
            if isinstance(argument, TagArgument):
                raise argument.position.error(f"{name}: tag :{argument.name} after the positional arguments")
        shape = self.shape_for(name, signature, positional, position)
        for index, (kind, argument) in enumerate(zip(shape, positional, strict=True)):
            constant = index in signature.constant_positions or (
                name in ("setflag", "addflag", "removeflag", "hasflag") and len(shape) == 2 and index == 0
            )
            node.args.append(self.value(kind, argument, constant))  # type: ignore[arg-type]
        self.match_spec(node, positional)
        return node

    def value(self, kind: str, argument: Argument, constant: bool) -> TagValue:
        if isinstance(argument, NumberArgument):
            return argument.value
        assert isinstance(argument, StringArgument)
        templates = tuple(
            self.template(v, p, constant) for v, p in zip(argument.values, argument.positions, strict=True)
        )
        if kind == STRING:
            return templates[0]
        return templates

    def template(self, text: str, position: Position, constant: bool) -> Template:
        if "encoded-character" in self.extensions:
            text = decode_encoded(text, position)
        if constant or "variables" not in self.extensions:
            return literal(text)
        return parse_template(text, self.namespaces, position)

    def match_spec(self, node: Node, positional: list[Argument]) -> None:
        """Gather the match type, comparator and keys of a matching test into node.match."""
        kinds = [k for k in _MATCH_TAGS if k in node.tags]
        if node.name not in _KEYED_TESTS:
            return
        kind = kinds[0] if kinds else "is"
        relation: str | None = None
        if kind in ("value", "count"):
            relation_value = node.tags[kind]
            assert isinstance(relation_value, Template)
            relation = (relation_value.constant or "").lower()
            if relation not in RELATIONS:
                raise node.position.error(f'{node.name}: unknown relation "{relation_value.constant}"')
        comparator = "i;ascii-casemap"
        if "comparator" in node.tags:
            comparator_value = node.tags["comparator"]
            assert isinstance(comparator_value, Template)
            comparator = (comparator_value.constant or "").lower()
            if comparator not in COMPARATORS:
                raise node.position.error(f'{node.name}: unknown comparator "{comparator_value.constant}"')
            if comparator == NUMERIC and "comparator-i;ascii-numeric" not in self.extensions:
                raise node.position.error(f'{node.name}: i;ascii-numeric requires "comparator-i;ascii-numeric"')
        if comparator == NUMERIC and kind in ("contains", "matches", "regex"):
            raise node.position.error(f"{node.name}: comparator i;ascii-numeric cannot do :{kind}")
        keys_index = _KEYED_TESTS[node.name]
        if node.name in ("deleteheader",) and len(node.args) < 2:
            node.match = MatchSpec(kind, relation, comparator, (), ())
            return
        keys = node.args[keys_index]
        if isinstance(keys, Template):
            keys = (keys,)
        assert isinstance(keys, tuple)
        compiled: list[Wildcard | Regex | None] = []
        key_positions = positional[keys_index]
        for key in keys:
            constant = key.constant
            if constant is None or kind not in ("matches", "regex"):
                compiled.append(None)
                continue
            if len(constant) > MAX_PATTERN:
                raise key_positions.position.error(f"{node.name}: pattern longer than {MAX_PATTERN} characters")
            if kind == "matches":
                compiled.append(compile_wildcard(constant, comparator))
            else:
                try:
                    compiled.append(compile_regex(constant, comparator == "i;ascii-casemap"))
                except RegexError as exc:
                    raise key_positions.position.error(f"{node.name}: {exc}") from None
        node.match = MatchSpec(kind, relation, comparator, keys, tuple(compiled))


# The positional argument that holds the keys, for every test (and deleteheader) that matches.
_KEYED_TESTS = {
    "address": 1, "envelope": 1, "header": 1, "string": 1, "hasflag": -1, "body": 0, "date": 2,
    "currentdate": 1, "environment": 1, "deleteheader": 1,
}  # fmt: skip


def _fits(kind: str, argument: Argument) -> bool:
    if kind == NUMBER:
        return isinstance(argument, NumberArgument)
    if kind == STRING:
        return isinstance(argument, StringArgument) and not argument.is_list
    return isinstance(argument, StringArgument)


def _found(argument: Argument) -> str:
    if isinstance(argument, NumberArgument):
        return "a number"
    if isinstance(argument, TagArgument):
        return f":{argument.name}"
    return "a string list" if argument.is_list else "a string"


# -- per-name checks ------------------------------------------------------------------------------------


def _constant(value: object) -> str | None:
    return value.constant if isinstance(value, Template) else None


def _constants(value: object) -> list[str]:
    items = value if isinstance(value, tuple) else (value,)
    return [c for item in items if (c := _constant(item)) is not None]


def _check_redirect(validator: _Validator, node: Node) -> None:
    address = _constant(node.args[0])
    if address is not None and parse_redirect_address(address) is None:
        raise node.position.error(f'redirect: "{address}" is not a valid address')


def parse_redirect_address(text: str) -> str | None:
    """The mailbox of a redirect argument (`local@domain`, optionally in angle brackets), or None."""
    text = text.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    try:
        return str(parse_mailbox(text))
    except AddressError:
        return None


def _check_fileinto(validator: _Validator, node: Node) -> None:
    if _constant(node.args[0]) == "":
        raise node.position.error("fileinto: the mailbox name is empty")


def _check_set(validator: _Validator, node: Node) -> None:
    name = _constant(node.args[0]) or ""
    if not is_variable_name(name, validator.namespaces):
        raise node.position.error(f'set: invalid variable name "{name}"')


def _check_variable_names(validator: _Validator, node: Node) -> None:
    if len(node.args) == 2:
        if "variables" not in validator.extensions:  # RFC 5232 §3: the variable forms come with variables
            raise node.position.error(f'{node.name}: a variable name requires "variables" in require')
        for name in _constants(node.args[0]):
            if not is_variable_name(name, validator.namespaces):
                raise node.position.error(f'{node.name}: invalid variable name "{name}"')


def _check_global(validator: _Validator, node: Node) -> None:
    if "variables" not in validator.extensions:
        raise node.position.error('global requires "variables" in require')
    for name in _constants(node.args[0]):
        if not is_identifier(name):
            raise node.position.error(f'global: invalid variable name "{name}"')


def _check_include(validator: _Validator, node: Node) -> None:
    name = _constant(node.args[0]) or ""
    if not name or "/" in name or len(name) > 255:
        raise node.position.error(f'include: invalid script name "{name}"')


def _check_vacation(validator: _Validator, node: Node) -> None:
    if "from" in node.tags:
        sender = _constant(node.tags["from"])
        if sender is not None and parse_vacation_from(sender) is None:
            raise node.position.error(f'vacation: :from "{sender}" is not a valid address')
    for address in _constants(node.tags.get("addresses", ())):
        if parse_redirect_address(address) is None:
            raise node.position.error(f'vacation: :addresses "{address}" is not a valid address')


def parse_vacation_from(text: str) -> str | None:
    """A :from value: an address, optionally with a display name (`Name <a@b>`); None when invalid."""
    inner = text.strip()
    if inner.endswith(">") and "<" in inner:
        inner = inner[inner.rindex("<") :]
    return parse_redirect_address(inner)


def _field_name_ok(name: str) -> bool:
    return bool(name) and len(name) <= 997 and all(33 <= ord(c) <= 126 and c != ":" for c in name)


def _check_addheader(validator: _Validator, node: Node) -> None:
    name = _constant(node.args[0])
    if name is not None:
        if not _field_name_ok(name):
            raise node.position.error(f'addheader: invalid field name "{name}"')
        if name.lower() in PROTECTED_HEADERS:
            raise node.position.error(f"addheader: {name} may not be added")


def _check_deleteheader(validator: _Validator, node: Node) -> None:
    name = _constant(node.args[0])
    if name is not None:
        if not _field_name_ok(name):
            raise node.position.error(f'deleteheader: invalid field name "{name}"')
        if name.lower() in PROTECTED_HEADERS:
            raise node.position.error(f"deleteheader: {name} may not be deleted")
    _check_index(validator, node)


def _check_index(validator: _Validator, node: Node) -> None:
    if "last" in node.tags and "index" not in node.tags:
        raise node.position.error(f"{node.name}: :last needs :index")
    if node.tags.get("index") == 0:
        raise node.position.error(f"{node.name}: :index counts from 1")


def _check_header_names(validator: _Validator, node: Node) -> None:
    for name in _constants(node.args[0]):
        if not _field_name_ok(name):
            raise node.position.error(f'{node.name}: invalid header name "{name}"')
        if node.name == "address" and name.lower() not in ADDRESS_HEADERS:
            raise node.position.error(f'address: "{name}" is not a header field that holds addresses')
    _check_index(validator, node)


def _check_envelope(validator: _Validator, node: Node) -> None:
    for part in _constants(node.args[0]):
        if part.lower() not in ENVELOPE_PARTS:
            raise node.position.error(f'envelope: unsupported envelope part "{part}"')


def _check_date(validator: _Validator, node: Node) -> None:
    part = node.args[-2]
    constant = _constant(part)
    if constant is not None and constant.lower() not in DATE_PARTS:
        raise node.position.error(f'{node.name}: unknown date part "{constant}"')
    zone = _constant(node.tags.get("zone"))
    if zone is not None and parse_zone(zone) is None:
        raise node.position.error(f'{node.name}: invalid zone "{zone}" (expected +hhmm or -hhmm)')
    if node.name == "date":
        header = _constant(node.args[0])
        if header is not None and not _field_name_ok(header):
            raise node.position.error(f'date: invalid header name "{header}"')
        _check_index(validator, node)


def parse_zone(text: str) -> int | None:
    """`+hhmm`/`-hhmm` as minutes east of UTC (RFC 5260 §4.1), or None."""
    if len(text) != 5 or text[0] not in "+-" or not text[1:].isdigit():
        return None
    hours, minutes = int(text[1:3]), int(text[3:5])
    if hours > 23 or minutes > 59:
        return None
    return (hours * 60 + minutes) * (-1 if text[0] == "-" else 1)


_Check = Callable[[_Validator, Node], None]
_COMMAND_CHECKS: dict[str, _Check] = {
    "redirect": _check_redirect,
    "fileinto": _check_fileinto,
    "set": _check_set,
    "setflag": _check_variable_names,
    "addflag": _check_variable_names,
    "removeflag": _check_variable_names,
    "global": _check_global,
    "include": _check_include,
    "vacation": _check_vacation,
    "addheader": _check_addheader,
    "deleteheader": _check_deleteheader,
}
_TEST_CHECKS: dict[str, _Check] = {
    "header": _check_header_names,
    "address": _check_header_names,
    "exists": _check_header_names,
    "envelope": _check_envelope,
    "date": _check_date,
    "currentdate": _check_date,
    "hasflag": _check_variable_names,
}
