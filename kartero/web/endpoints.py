"""An API endpoint as data: its method and path, who may call it, its parameters, body and answer.

`api.py` keeps one table of these next to the handlers; the routes, the request checks and the OpenAPI
document are all made from that table, so no route exists without its description, and no description
without its route.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from aiohttp import web

from kartero.web.auth import SESSION_COOKIE, Principal
from kartero.web.context import WebContext
from kartero.web.schema import Bool, Components, Int, Invalid, Obj, Prop, Schema, Str

PREFIX = "/api/v1"
_PARAM = re.compile(r"\{([a-z_]+)\}")  # over our own route table, never over a request


class Access(StrEnum):
    PUBLIC = "public"  # no credentials (the OpenAPI document)
    SIGNED_IN = "signed-in"  # any account's session or token, or an admin token
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class Param:
    """A query or path parameter: always a string on the wire, checked (and converted) by its schema."""

    name: str
    schema: Str | Int
    description: str
    default: str | int | None = None


@dataclass(frozen=True, slots=True)
class Call:
    """One request to an endpoint, with everything in it already checked."""

    request: web.Request
    ctx: WebContext
    who: Principal | None  # None only for a public endpoint
    path: dict[str, str]
    query: dict[str, str | int]
    body: dict[str, object]

    def text(self, name: str, default: str = "") -> str:
        value = self.body.get(name, self.query.get(name, default))
        assert isinstance(value, str)
        return value

    def number(self, name: str, default: int = 0) -> int:
        value = self.query.get(name, default)
        assert isinstance(value, int)
        return value

    def flag(self, name: str, default: bool = False) -> bool:
        value = self.body.get(name, default)
        assert isinstance(value, bool)
        return value


Handler = Callable[[Call], Awaitable[object]]


@dataclass(frozen=True, slots=True)
class Endpoint:
    method: str
    path: str  # under PREFIX, aiohttp's and OpenAPI's syntax alike: "/accounts/{address}"
    handler: Handler  # returns the answer's JSON value (None for a 204)
    summary: str
    answer: Schema | None  # None: 204 No Content
    status: int = 200
    access: Access = Access.ADMIN
    body: Obj | None = None
    body_required: bool = True  # False: a call without a body means `{}` (`curl -X POST` without `-d`)
    query: tuple[Param, ...] = ()
    errors: tuple[int, ...] = ()  # besides those every endpoint of its kind can answer
    description: str = ""
    path_params: tuple[Param, ...] = ()  # one for each {name} in `path`, in order

    def __post_init__(self) -> None:
        if [p.name for p in self.path_params] != self.param_names():
            raise TypeError(f"{self.path}: the path parameters are not described")
        if self.body is not None and not all(isinstance(p.schema, Str | Int | Bool) for p in self.body.props):
            raise TypeError(f"{self.path}: a request body holds only strings, integers and booleans")
        if not self.body_required and self.body is not None and any(p.required for p in self.body.props):
            raise TypeError(f"{self.path}: a body that may be left out has no required field")
        if (self.answer is None) != (self.status == 204):
            raise TypeError(f"{self.path}: an answer without content is a 204 and only that")

    @property
    def route(self) -> str:
        return PREFIX + self.path

    def param_names(self) -> list[str]:
        return _PARAM.findall(self.path)



def parse_params(given: Mapping[str, str], params: Sequence[Param], where: str) -> dict[str, str | int]:
    """The checked values of query or path parameters (defaults filled in). Raises Invalid for an
    unknown or repeated parameter, or a bad value."""
    known = {p.name: p for p in params}
    for key in given:
        if key not in known:
            raise Invalid(f"unknown {where} parameter {_short(key)} (known: {', '.join(known) or 'none'})")
    if len(given) != len(set(given)):  # a MultiDict counts each repetition; iterating it does not
        raise Invalid(f"a {where} parameter is given twice")
    values: dict[str, str | int] = {}
    for param in params:
        if param.name in given:
            values[param.name] = param.schema.parse(given[param.name], param.name)
        elif param.default is not None:
            values[param.name] = param.default
    return values


def _short(text: str) -> str:
    return repr(text[:40])


# -- the OpenAPI document -------------------------------------------------------------------------------

ERROR = Obj((Prop("error", Str(2000, description="what went wrong, for a person"), required=True),),
            name="Error", description="Every error answer: its HTTP status says which kind.")  # fmt: skip
_STATUS_TEXT = {
    200: "OK",
    201: "Created",
    204: "Done (no content)",
    400: "Bad request: malformed JSON, an unknown field or parameter, or a bad value (the message names it)",
    401: "No valid credentials (a bearer token or a session cookie); the answer has `WWW-Authenticate: Bearer`",
    403: "Not allowed: the call needs an administrator, or a browser session did not send its CSRF token",
    404: "No such resource",
    409: "Already exists",
    413: "The body is larger than the API takes (64 KiB)",
    415: "The body is not `application/json`",
    503: "A service the call needs is not available",
}


def document(endpoints: Sequence[Endpoint], version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 description of `endpoints`."""
    components: Components = {}
    paths: dict[str, dict[str, Any]] = {}
    for endpoint in endpoints:
        paths.setdefault(endpoint.route, {})[endpoint.method.lower()] = _operation(endpoint, components)
    components["Error"] = ERROR.json_schema()
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Kartero API",
            "version": version,
            "description": "Kartero's administration as JSON: accounts, aliases, the queue, domains with their "
            "DNS check and DKIM keys, statistics. Authenticate with `Authorization: Bearer` and a token from "
            "`kartero token create NAME`; a signed-in browser session works too, sending its CSRF token in "
            "`X-CSRF-Token` on every call that changes something. Errors are `{\"error\": \"...\"}`.",
        },
        "paths": paths,
        "components": {
            "schemas": dict(sorted(components.items())),
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "`kartero token create NAME` (an admin token), or `--user ADDR`",
                },
                "session": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": SESSION_COOKIE,
                    "description": "a browser signed in at /admin/login or /; state-changing calls need its "
                    "CSRF token in the X-CSRF-Token header",
                },
            },
        },
        "security": [{"bearer": []}, {"session": []}],
    }


def _operation(endpoint: Endpoint, components: Components) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": endpoint.handler.__name__,
        "summary": endpoint.summary,
        "tags": [endpoint.path.split("/")[1]],
    }
    notes = [endpoint.description] if endpoint.description else []
    if endpoint.access is Access.ADMIN:
        notes.append("Administrators only.")
    elif endpoint.access is Access.SIGNED_IN:
        notes.append("Any signed-in account or token.")
    if notes:
        operation["description"] = " ".join(notes)
    parameters = [_parameter(p, "path", components) for p in endpoint.path_params]
    parameters += [_parameter(p, "query", components) for p in endpoint.query]
    if parameters:
        operation["parameters"] = parameters
    errors = set(endpoint.errors)
    if endpoint.body is not None:
        operation["requestBody"] = {
            "required": endpoint.body_required,
            "content": {"application/json": {"schema": endpoint.body.json_schema(components)}},
        }
        errors |= {400, 413, 415}
    if endpoint.query or endpoint.path_params:
        errors.add(400)
    if endpoint.path_params:
        errors.add(404)
    if endpoint.access is Access.PUBLIC:
        operation["security"] = []
    else:
        errors |= {401, 403}
    success: dict[str, Any] = {"description": _STATUS_TEXT[endpoint.status]}
    if endpoint.answer is not None:
        success["content"] = {"application/json": {"schema": endpoint.answer.json_schema(components)}}
    responses: dict[str, Any] = {str(endpoint.status): success}
    failed = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    for status in sorted(errors):
        responses[str(status)] = {"description": _STATUS_TEXT[status], "content": failed}
    operation["responses"] = responses
    return operation


def _parameter(param: Param, where: str, components: Components) -> dict[str, Any]:
    schema = param.schema.json_schema(components)
    if param.default is not None:
        schema["default"] = param.default
    return {"name": param.name, "in": where, "required": where == "path", "description": param.description,
            "schema": schema}  # fmt: skip
