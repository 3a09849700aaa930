"""Reading requests into their shapes: query strings and JSON bodies, every problem a 400.

A bad query value is a 400 ``invalid_parameter`` naming the parameter (in the message and in
``details.parameter``). Unknown parameters are refused too: a misspelt filter such as
``end_user=`` must not quietly widen a lookup to every connection. A bad body is a 400
``invalid_body`` listing every problem in ``details.errors``.
"""

from __future__ import annotations

import json
import re
import typing
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.datastructures import QueryParams
from starlette.requests import Request

from app.bodies import read_limited
from app.connections.model import MAX_TAG_VALUE, MAX_TAGS, check_tag_key
from app.errors import INVALID_BODY, INVALID_JSON, INVALID_PARAMETER, BadRequest
from app.state import app_state

Q = TypeVar("Q", bound=BaseModel)
B = TypeVar("B", bound=BaseModel)

MAX_JSON_BODY = 64 * 1024
_TAG_PARAMETER = re.compile(r"^tag\[(?P<key>[^\[\]]*)\]$")


def bad_parameter(parameter: str, message: str) -> BadRequest:
    return BadRequest(
        f"query parameter {parameter!r}: {message}",
        code=INVALID_PARAMETER,
        details={"parameter": parameter},
    )


def _repeatable(model: type[BaseModel]) -> frozenset[str]:
    """Parameters whose field is a list: given several times, or comma-separated."""
    names = set()
    for name, field in model.model_fields.items():
        kinds = typing.get_args(field.annotation) or (field.annotation,)
        if any(typing.get_origin(kind) is list for kind in kinds):
            names.add(name)
    return frozenset(names)


_REPEATABLE: dict[type[BaseModel], frozenset[str]] = {}


def parse_query(model: type[Q], params: QueryParams, *, tags: bool = False) -> Q:
    """The query string as ``model``; with ``tags``, ``tag...`` parameters are left to
    ``parse_tags``."""
    repeatable = _REPEATABLE.get(model)
    if repeatable is None:
        repeatable = _REPEATABLE[model] = _repeatable(model)
    values: dict[str, Any] = {}
    for name in params:
        if tags and name.startswith("tag"):
            continue
        if name not in model.model_fields:
            raise bad_parameter(name, "unknown parameter")
        given = params.getlist(name)
        if name in repeatable:
            values[name] = [part for value in given for part in value.split(",")]
        elif len(given) > 1:
            raise bad_parameter(name, "given more than once")
        else:
            values[name] = given[0]
    try:
        return model.model_validate(values)
    except ValidationError as error:
        first = error.errors(include_url=False, include_input=False)[0]
        name = str(first["loc"][0]) if first["loc"] else "query"
        raise bad_parameter(name, first["msg"].removeprefix("Value error, ")) from None


def parse_tags(params: QueryParams) -> dict[str, str]:
    """``tag[KEY]=VALUE`` filters: at most ten (Nango's own limit), keys compared lowercased."""
    tags: dict[str, str] = {}
    for name, value in params.multi_items():
        if not name.startswith("tag"):
            continue
        match = _TAG_PARAMETER.match(name)
        if match is None:
            raise bad_parameter(name, "tag filters are written tag[KEY]=VALUE")
        problem = check_tag_key(match["key"])
        if problem:
            raise bad_parameter(name, f"tag key {problem}")
        if not value or len(value) > MAX_TAG_VALUE or "\x00" in value:
            raise bad_parameter(
                name, f"tag value must be 1 to {MAX_TAG_VALUE} characters, without NUL"
            )
        key = match["key"].lower()
        if key in tags:
            raise bad_parameter(name, "given more than once")
        tags[key] = value
        if len(tags) > MAX_TAGS:
            raise bad_parameter(name, f"at most {MAX_TAGS} tag filters")
    return tags


async def parse_body(model: type[B], request: Request, *, optional: bool = False) -> B:
    """The JSON body as ``model``; an empty body is ``{}`` when ``optional``."""
    timeout = app_state(request).settings.request_body_timeout_seconds
    raw = await read_limited(request, MAX_JSON_BODY, seconds=timeout)
    body: Any = {}
    if raw.strip() or not optional:
        try:
            body = json.loads(raw)
        except ValueError:
            raise BadRequest("the body must be a JSON object", code=INVALID_JSON) from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object", code=INVALID_JSON)
    try:
        return model.model_validate(body)
    except ValidationError as error:
        problems = [
            {
                "field": ".".join(str(part) for part in item["loc"]) or "body",
                "message": item["msg"].removeprefix("Value error, "),
            }
            for item in error.errors(include_url=False, include_input=False)
        ]
        first = problems[0]
        raise BadRequest(
            f"{first['field']}: {first['message']}",
            code=INVALID_BODY,
            details={"errors": problems},
        ) from None
