"""The shapes of the JSON API's requests and answers: each one both checks a value and describes itself
as JSON Schema, so the OpenAPI document and the validation cannot drift apart.

The checks are strict and bounded, because every body is an attacker's: a body is one JSON object of
known keys (an unknown key is named in the 400, never ignored), strings have a length cap and no NUL
(PostgreSQL refuses NUL in text, and no address or password needs one), booleans are booleans and
integers are integers (JSON's `true` is not `1`). Query and path parameters are strings checked the same
way, integers written in at most 12 decimal digits.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

MAX_JSON_BYTES = 64 * 1024  # the largest request an admin sends is an address and a password
MAX_NAME_ECHO = 40  # how much of an unknown key or bad value a message repeats
MAX_INT_DIGITS = 12


class Invalid(Exception):
    """The request's content is not what the call takes (a 400 with this message)."""


def _shown(text: str) -> str:
    """A piece of the request for an error message: short (the answer is JSON, so it needs no escaping)."""
    return json.dumps(text[:MAX_NAME_ECHO] + ("..." if len(text) > MAX_NAME_ECHO else ""))


@dataclass(frozen=True, slots=True)
class Str:
    max_length: int
    min_length: int = 0
    description: str = ""
    enum: tuple[str, ...] = ()
    example: str = ""

    def check(self, value: object, where: str) -> str:
        if not isinstance(value, str):
            raise Invalid(f"{where} must be a string")
        if len(value) > self.max_length:
            raise Invalid(f"{where} is longer than {self.max_length} characters")
        if len(value) < self.min_length:
            raise Invalid(f"{where} must not be empty" if self.min_length == 1 else
                          f"{where} is shorter than {self.min_length} characters")  # fmt: skip
        if "\x00" in value:
            raise Invalid(f"{where} contains a NUL character")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate from "\ud800": no store can keep it
            raise Invalid(f"{where} is not valid Unicode") from None
        if self.enum and value not in self.enum:
            raise Invalid(f"{where} must be one of {', '.join(self.enum)}")
        return value

    def parse(self, text: str, where: str) -> str:
        return self.check(text, where)

    def json_schema(self, components: Components | None = None) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "string", "maxLength": self.max_length}
        if self.min_length:
            schema["minLength"] = self.min_length
        if self.enum:
            schema["enum"] = list(self.enum)
        return _described(schema, self.description, self.example)


@dataclass(frozen=True, slots=True)
class Int:
    minimum: int
    maximum: int
    description: str = ""

    def check(self, value: object, where: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid(f"{where} must be an integer")
        if not self.minimum <= value <= self.maximum:
            raise Invalid(f"{where} must be between {self.minimum} and {self.maximum}")
        return value

    def parse(self, text: str, where: str) -> int:
        if not (0 < len(text) <= MAX_INT_DIGITS and text.isascii() and text.isdigit()):
            raise Invalid(f"{where} must be a number like 100, not {_shown(text)}")
        return self.check(int(text), where)

    def json_schema(self, components: Components | None = None) -> dict[str, Any]:
        return _described({"type": "integer", "minimum": self.minimum, "maximum": self.maximum}, self.description)


@dataclass(frozen=True, slots=True)
class Num:
    """A number in an answer (seconds with a fraction); never taken from a request."""

    description: str = ""

    def json_schema(self, components: Components | None = None) -> dict[str, Any]:
        return _described({"type": "number"}, self.description)


@dataclass(frozen=True, slots=True)
class Bool:
    description: str = ""

    def check(self, value: object, where: str) -> bool:
        if not isinstance(value, bool):
            raise Invalid(f"{where} must be true or false")
        return value

    def json_schema(self, components: Components | None = None) -> dict[str, Any]:
        return _described({"type": "boolean"}, self.description)


@dataclass(frozen=True, slots=True)
class Nullable:
    """A value of `schema`, or null (in answers: "not known", "none")."""

    schema: Str | Int | Num

    def json_schema(self, components: Components | None = None) -> dict[str, Any]:
        inner = self.schema.json_schema(components)
        return {**inner, "type": [inner["type"], "null"]}


@dataclass(frozen=True, slots=True)
class Arr:
    """A list in an answer."""

    items: Schema
    description: str = ""

    def json_schema(self, components: Components | None = None) -> dict[str, Any]:
        return _described({"type": "array", "items": self.items.json_schema(components)}, self.description)


@dataclass(frozen=True, slots=True)
class Map:
    """An object of names the server chooses (connections per service), all of one kind of value."""

    values: Schema
    description: str = ""

    def json_schema(self, components: Components | None = None) -> dict[str, Any]:
        schema = {"type": "object", "additionalProperties": self.values.json_schema(components)}
        return _described(schema, self.description)


@dataclass(frozen=True, slots=True)
class Opaque:
    """Any JSON object, described elsewhere (the OpenAPI document as an answer)."""

    description: str = ""

    def json_schema(self, components: Components | None = None) -> dict[str, Any]:
        return _described({"type": "object"}, self.description)


@dataclass(frozen=True, slots=True)
class Prop:
    name: str
    schema: Schema
    required: bool = False


@dataclass(frozen=True, slots=True)
class Obj:
    """A JSON object of known properties. `name` makes it a reusable component of the OpenAPI document."""

    props: tuple[Prop, ...]
    name: str = ""
    description: str = ""

    def check(self, value: object, where: str = "the body") -> dict[str, object]:
        """The object with each property checked; unknown or missing required keys are refused."""
        if not isinstance(value, dict):
            raise Invalid(f"{where} must be a JSON object")
        known = {p.name: p for p in self.props}
        checked: dict[str, object] = {}
        for key, item in value.items():
            prop = known.get(key)
            if prop is None:
                raise Invalid(f"unknown field {_shown(key)} (known: {', '.join(known) or 'none'})")
            schema = prop.schema
            assert isinstance(schema, Str | Int | Bool), "a request takes only these (openapi.Endpoint)"
            checked[key] = schema.check(item, key)
        missing = [p.name for p in self.props if p.required and p.name not in checked]
        if missing:
            raise Invalid(f"missing field {missing[0]}")
        return checked

    def json_schema(self, components: Components | None = None) -> dict[str, Any]:
        """Inline, or with a `name` and a `components` registry: a `$ref` to it, registered there once."""
        if self.name and components is not None:
            if self.name not in components:
                components[self.name] = {}  # placeholder first: a shape may contain itself
                components[self.name] = self._inline(components)
            return {"$ref": f"#/components/schemas/{self.name}"}
        return self._inline(components)

    def _inline(self, components: Components | None) -> dict[str, Any]:
        schema: dict[str, Any] = {
            "type": "object",
            "properties": {p.name: p.schema.json_schema(components) for p in self.props},
            "additionalProperties": False,
        }
        required = [p.name for p in self.props if p.required]
        if required:
            schema["required"] = required
        return _described(schema, self.description)


Schema = Str | Int | Num | Bool | Nullable | Arr | Map | Obj | Opaque
Components = dict[str, Any]  # the OpenAPI document's components/schemas, by name


def _described(schema: dict[str, Any], description: str, example: str = "") -> dict[str, Any]:
    if description:
        schema["description"] = description
    if example:
        schema["examples"] = [example]
    return schema


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise Invalid(f"field {_shown(key)} is given twice")
        result[key] = value
    return result


def _no_constant(name: str) -> object:
    raise Invalid(f"{name} is not JSON")


def parse_json(body: bytes) -> object:
    """A request body as JSON: UTF-8 (RFC 8259 §8.1), no NaN or Infinity, no key twice. Raises Invalid.

    The caller bounds the size (MAX_JSON_BYTES); CPython's parser is linear and raises RecursionError
    for nesting past the interpreter's limit, which is refused like any other bad JSON."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise Invalid("the body is not UTF-8") from None
    try:
        return json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except Invalid:
        raise
    except (ValueError, RecursionError) as exc:
        detail = f" ({exc.msg} at character {exc.pos})" if isinstance(exc, json.JSONDecodeError) else ""
        raise Invalid(f"the body is not valid JSON{detail}") from None


def dumps(value: object) -> str:
    """JSON for an answer, with `<`, `>` and `&` escaped as \\u003c...: an answer that some browser or
    proxy takes for HTML can still run no script (they only occur inside strings, so this is exact)."""
    text = json.dumps(value)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
