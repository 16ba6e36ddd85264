"""Issue 14: the JSON API's request checks (kartero/web/schema.py, endpoints.py) and the OpenAPI document
made from the same table as the routes."""

from __future__ import annotations

import json
import time
from typing import Any, cast

import pytest
from aiohttp import web
from multidict import MultiDict
from openapi_spec_validator import validate

from kartero.web import api
from kartero.web.app import build_app
from kartero.web.context import WebContext
from kartero.web.endpoints import Endpoint, Param, parse_params
from kartero.web.schema import (
    MAX_JSON_BYTES,
    Arr,
    Bool,
    Int,
    Invalid,
    Obj,
    Prop,
    Str,
    dumps,
    parse_json,
)

BODY = Obj((Prop("address", Str(320, 1), required=True), Prop("admin", Bool()), Prop("count", Int(0, 10))))


def refused(fn: Any, *args: object) -> str:
    with pytest.raises(Invalid) as caught:
        fn(*args)
    return str(caught.value)


def test_issue_14_strings_are_bounded_and_storable() -> None:
    text = Str(5, 1)
    assert text.check("abcde", "name") == "abcde"
    assert refused(text.check, "abcdef", "name") == "name is longer than 5 characters"
    assert refused(text.check, "", "name") == "name must not be empty"
    assert refused(text.check, 5, "name") == "name must be a string"
    assert refused(text.check, None, "name") == "name must be a string"
    assert refused(text.check, "a\x00b", "name") == "name contains a NUL character"
    assert refused(text.check, "\ud800", "name") == "name is not valid Unicode"
    algorithm = Str(10, enum=("rsa", "ed25519"))
    assert refused(algorithm.check, "dsa", "algorithm") == "algorithm must be one of rsa, ed25519"


def test_issue_14_booleans_and_integers_are_exactly_those() -> None:
    assert Bool().check(False, "admin") is False
    for value in (1, 0, "true", None):
        assert refused(Bool().check, value, "admin") == "admin must be true or false"
    number = Int(1, 1000)
    assert number.check(7, "limit") == 7
    assert refused(number.check, True, "limit") == "limit must be an integer"  # bool is an int to Python
    assert refused(number.check, 7.0, "limit") == "limit must be an integer"
    assert refused(number.check, 1001, "limit") == "limit must be between 1 and 1000"
    assert number.parse("1000", "limit") == 1000
    for text in ("", "-1", "+1", " 1", "1e3", "0x10", "\uff11", "1" * 13):  # U+FF11: a digit to str.isdigit
        assert refused(number.parse, text, "limit").startswith("limit must be a number like 100")


def test_issue_14_a_body_is_an_object_of_known_fields() -> None:
    assert BODY.check({"address": "a@b", "admin": True}) == {"address": "a@b", "admin": True}
    assert refused(BODY.check, ["a@b"]) == "the body must be a JSON object"
    assert refused(BODY.check, {"admin": True}) == "missing field address"
    assert refused(BODY.check, {"address": "a@b", "admin": "yes"}) == "admin must be true or false"
    assert refused(BODY.check, {"address": "a@b", "count": 11}) == "count must be between 0 and 10"
    message = refused(BODY.check, {"address": "a@b", "quota": "1G"})
    assert message == 'unknown field "quota" (known: address, admin, count)'
    long_key = refused(BODY.check, {"<script>" + "x" * 5000: 1})  # only a piece of it is repeated
    assert long_key.startswith('unknown field "<script>xxx') and len(long_key) < 120


def test_issue_14_json_parsing_is_strict() -> None:
    assert parse_json(b'{"a": "\\u00e9"}') == {"a": "é"}
    assert refused(parse_json, b'{"a": "\xff"}') == "the body is not UTF-8"
    assert refused(parse_json, b'\xff\xfe{\x00}\x00') == "the body is not UTF-8"  # UTF-16 is not taken either
    assert refused(parse_json, b'{"a": 1,}').startswith("the body is not valid JSON (")
    assert refused(parse_json, b'{"a": NaN}') == "NaN is not JSON"
    assert refused(parse_json, b'{"a": -Infinity}') == "-Infinity is not JSON"
    assert refused(parse_json, b'{"a": 1, "a": 2}') == 'field "a" is given twice'
    assert refused(parse_json, b"") .startswith("the body is not valid JSON")
    assert refused(parse_json, b'{"n": ' + b"9" * 5000 + b"}").startswith("the body is not valid JSON")


def test_issue_14_hostile_json_is_refused_fast() -> None:
    """Nesting as deep as the size cap allows, and the cap's worth of tiny objects: a 400 each, quickly
    (the parser is linear; its recursion stops at the interpreter's limit)."""
    started = time.process_time()
    assert refused(parse_json, b"[" * MAX_JSON_BYTES) == "the body is not valid JSON"
    assert refused(parse_json, b'{"a":' * (MAX_JSON_BYTES // 5)) == "the body is not valid JSON"
    many = b"[" + b",".join([b"{}"] * (MAX_JSON_BYTES // 3)) + b"]"
    assert refused(BODY.check, parse_json(many)) == "the body must be a JSON object"
    assert time.process_time() - started < 5


def test_issue_14_answers_escape_markup() -> None:
    value = {"error": "no account <script>alert('x')</script>&amp;@example.test"}
    text = dumps(value)
    assert "<" not in text and ">" not in text and "&" not in text
    assert "\\u003cscript\\u003e" in text and json.loads(text) == value


def test_issue_14_query_and_path_parameters() -> None:
    params = (Param("search", Str(10), "", ""), Param("limit", Int(1, 100), "", 50))
    assert parse_params(MultiDict(), params, "query") == {"search": "", "limit": 50}
    assert parse_params(MultiDict(limit="7", search="x"), params, "query") == {"search": "x", "limit": 7}
    assert refused(parse_params, MultiDict(page="2"), params, "query") == \
        "unknown query parameter 'page' (known: search, limit)"  # fmt: skip
    assert refused(parse_params, MultiDict([("limit", "1"), ("limit", "2")]), params, "query") == \
        "a query parameter is given twice"  # fmt: skip
    assert refused(parse_params, MultiDict(limit="0"), params, "query") == "limit must be between 1 and 100"
    assert refused(parse_params, MultiDict(search="x" * 11), params, "query") == \
        "search is longer than 10 characters"  # fmt: skip


async def _nothing(call: object) -> object:
    return None


def test_issue_14_an_endpoint_describes_all_it_takes() -> None:
    with pytest.raises(TypeError, match="path parameters are not described"):
        Endpoint("GET", "/accounts/{address}", _nothing, "x", Obj(()))
    with pytest.raises(TypeError, match="only strings, integers and booleans"):
        Endpoint("POST", "/x", _nothing, "x", Obj(()), body=Obj((Prop("list", Arr(Str(5))),)))
    with pytest.raises(TypeError, match="204"):
        Endpoint("DELETE", "/x", _nothing, "x", None)
    with pytest.raises(TypeError, match="no required field"):
        Endpoint("POST", "/x", _nothing, "x", Obj(()), body=BODY, body_required=False)


def _app() -> web.Application:
    """The real application's routes (no request is served, so the context is never used)."""
    return build_app(cast(WebContext, object()))


def test_issue_14_every_api_route_is_in_the_openapi_document_and_back() -> None:
    app = _app()
    doc = app[api._OPENAPI]
    routes = {(route.method, route.resource.canonical) for route in app.router.routes()
              if route.resource is not None and route.resource.canonical.startswith("/api/")}  # fmt: skip
    described = {(method.upper(), path) for path, item in doc["paths"].items() for method in item}
    assert routes == described
    assert len(described) == len(api.ENDPOINTS) >= 19
    validate(doc)  # the OpenAPI 3.1 schema, and each operation's parameters against its path
    ids = [op["operationId"] for item in doc["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids))
    for path, item in doc["paths"].items():
        for method, op in item.items():
            public = op.get("security") == []
            assert public == (path == "/api/v1/openapi.json")
            assert public or {"401", "403"} <= set(op["responses"]), (method, path)
            if "requestBody" in op:
                assert {"400", "413", "415"} <= set(op["responses"]), (method, path)
    assert doc["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer",
        "description": "`kartero token create NAME` (an admin token), or `--user ADDR`",
    }  # fmt: skip
    json.dumps(doc)  # plain JSON values only
