"""``GET /openapi.json``: the OpenAPI 3.1 document, generated from the routes and their shapes.

Each handler declares its operation beside itself with ``@operation(...)``: its answers, errors,
query and body, all pydantic models from ``app.api.shapes``. The document is assembled from the
mounted routes, so it lists exactly what is served; only what a model cannot say (the
``tag[KEY]`` deep-object parameter, the webhook's signature headers) is written by hand, next
to its route, as ``parameters``. ``tests/api/test_openapi.py`` fails when a mounted route has no
operation, and runs schemathesis against every operation.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema
from starlette.endpoints import HTTPEndpoint
from starlette.requests import Request
from starlette.routing import BaseRoute, Route

from app.api.shapes import ErrorAnswer
from app.responses import JSONResponse

JSON = "application/json"
BEARER: list[dict[str, list[str]]] = [{"bearerAuth": []}]
METHODS = ("get", "post", "put", "patch", "delete")

ERRORS = {
    400: "Invalid input; `error.details` names the parameter or lists the problems",
    401: "Missing or wrong credentials",
    403: "The API key is read-only",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict, e.g. an ambiguous legacy connection ID",
    413: "The body is too large",
    502: "Nango answered with an error",
    503: "The database (or a required setting) is unavailable; retry after `Retry-After`",
}

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Operation:
    """What ``/openapi.json`` says of one handler."""

    id: str
    summary: str
    answers: dict[int, type[BaseModel] | None]
    errors: tuple[int, ...] = ()
    query: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    body_required: bool = True
    auth: bool = True
    # Parameters no model can express (a deep object, headers), as OpenAPI parameter objects.
    parameters: tuple[dict[str, Any], ...] = ()
    media_type: str = JSON
    description: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def operation(**spec: Any) -> Callable[[F], F]:
    """Declare a handler's operation: ``@operation(id=..., summary=..., answers={200: M})``."""

    def attach(handler: F) -> F:
        handler.__operation__ = Operation(**spec)  # type: ignore[attr-defined]
        return handler

    return attach


def handlers(routes: Iterable[BaseRoute]) -> Iterable[tuple[Route, str, Callable[..., Any]]]:
    """Every (route, method, handler) mounted and meant for the document."""
    for route in routes:
        if not isinstance(route, Route) or not route.include_in_schema:
            continue
        endpoint = route.endpoint
        if isinstance(endpoint, type) and issubclass(endpoint, HTTPEndpoint):
            for method in METHODS:
                if hasattr(endpoint, method):
                    yield route, method, getattr(endpoint, method)
        else:
            for method in route.methods or ():
                if method != "HEAD":
                    yield route, method.lower(), endpoint


def _operations(routes: Iterable[BaseRoute]) -> Iterable[tuple[Route, str, Operation]]:
    for route, method, handler in handlers(routes):
        spec = getattr(handler, "__operation__", None)
        if spec is not None:
            yield route, method, spec


def undocumented(routes: Iterable[BaseRoute]) -> list[str]:
    """Mounted handlers without an ``@operation`` (a test keeps this empty)."""
    return [
        f"{method.upper()} {route.path}"
        for route, method, handler in handlers(routes)
        if not hasattr(handler, "__operation__")
    ]


def _template(path: str) -> str:
    """Starlette's ``{name:convertor}`` is OpenAPI's ``{name}``."""
    return re.sub(r"{(\w+)(:\w+)?}", r"{\1}", path)


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A query parameter is absent rather than null: drop the null branch pydantic adds."""
    branches = schema.get("anyOf")
    if branches:
        kept = [branch for branch in branches if branch != {"type": "null"}]
        if len(kept) == 1:
            rest = {k: v for k, v in schema.items() if k != "anyOf"}
            return {**kept[0], **rest}
    return schema


def _query_parameters(model: type[BaseModel], refs: dict[str, Any]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    parameters = []
    for name, field_info in model.model_fields.items():
        property_schema = _without_null(dict(schema["properties"][name]))
        description = property_schema.pop("description", None)
        property_schema.pop("title", None)
        if property_schema.get("default", ...) is None:
            del property_schema["default"]
        parameter: dict[str, Any] = {
            "name": name,
            "in": "query",
            "required": field_info.is_required(),
            "schema": property_schema,
        }
        if description:
            parameter["description"] = description
        if property_schema.get("type") == "array":
            parameter.update(style="form", explode=False)
        parameters.append(parameter)
    refs.update(schema.get("$defs", {}))
    return parameters


def _path_parameters(route: Route) -> list[dict[str, Any]]:
    return [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
        for name in route.param_convertors
    ]


def _content(media_type: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {media_type: {"schema": schema}}}


Refs = Mapping[tuple[Any, JsonSchemaMode], dict[str, Any]]


def document(routes: Iterable[BaseRoute]) -> dict[str, Any]:
    operations = list(_operations(routes))
    models: set[tuple[type[BaseModel], JsonSchemaMode]] = {(ErrorAnswer, "serialization")}
    for _, _, spec in operations:
        models |= {(m, "serialization") for m in spec.answers.values() if m is not None}
        if spec.body is not None:
            models.add((spec.body, "validation"))
    refs, schemas = models_json_schema(
        sorted(models, key=lambda item: (item[0].__name__, item[1])),  # a stable document
        ref_template="#/components/schemas/{model}",
    )
    components: dict[str, Any] = dict(schemas.get("$defs", {}))
    paths: dict[str, dict[str, Any]] = {}
    for route, method, spec in operations:
        paths.setdefault(_template(route.path), {})[method] = _operation(
            route, spec, refs, components
        )
    error = _content(JSON, refs[(ErrorAnswer, "serialization")])
    return _by_title(
        {
            "openapi": "3.1.0",
            "info": {
                "title": "nango-registry",
                "version": "1",
                "description": "Nango connections, stored against your users and organizations.",
            },
            "paths": paths,
            "components": {
                "schemas": components,
                "responses": {
                    f"E{status}": {"description": text, **error} for status, text in ERRORS.items()
                },
                "securitySchemes": {
                    "bearerAuth": {
                        "type": "http",
                        "scheme": "bearer",
                        "description": "REGISTRY_API_KEYS or a key from `nango-registry api-keys`",
                    }
                },
            },
        }
    )


def _operation(
    route: Route, spec: Operation, refs: Refs, components: dict[str, Any]
) -> dict[str, Any]:
    item: dict[str, Any] = {"operationId": spec.id, "summary": spec.summary}
    if spec.description:
        item["description"] = spec.description
    if spec.auth:
        item["security"] = BEARER
    parameters = _path_parameters(route)
    if spec.query is not None:
        parameters += _query_parameters(spec.query, components)
    parameters += list(spec.parameters)
    if parameters:
        item["parameters"] = parameters
    if spec.body is not None:
        item["requestBody"] = {
            "required": spec.body_required,
            **_content(JSON, refs[(spec.body, "validation")]),
        }
    responses: dict[str, Any] = {}
    for status, model in spec.answers.items():
        if model is not None:
            schema = refs[(model, "serialization")]
        else:
            schema = {"type": "object"} if spec.media_type == JSON else {"type": "string"}
        responses[str(status)] = {"description": "Answer", **_content(spec.media_type, schema)}
    for status in sorted(set(spec.errors) | ({401} if spec.auth else set())):
        responses[str(status)] = {"$ref": f"#/components/responses/E{status}"}
    item["responses"] = responses
    item.update(spec.extra)
    return item


def _by_title(document: dict[str, Any]) -> dict[str, Any]:
    """Name each component by its model's title (``ConnectionPublic`` is ``Connection``)."""
    schemas = document["components"]["schemas"]
    renamed = {
        name: schema["title"]
        for name, schema in schemas.items()
        if schema.get("title") not in (None, name) and schema["title"] not in schemas
    }
    if not renamed:
        return document
    text = json.dumps(document)
    for old, new in renamed.items():
        text = text.replace(f'"#/components/schemas/{old}"', f'"#/components/schemas/{new}"')
    document = json.loads(text)
    schemas = document["components"]["schemas"]
    for old, new in renamed.items():
        schemas[new] = schemas.pop(old)
    return document


@operation(id="openapi", summary="This document", answers={200: None}, auth=False)
async def openapi_json(request: Request) -> JSONResponse:
    # Built from the app's own routes, once: always what is mounted.
    cached: dict[str, Any] | None = getattr(request.app.state, "openapi", None)
    if cached is None:
        cached = request.app.state.openapi = document(request.app.routes)
    return JSONResponse(cached)


routes = [Route("/openapi.json", openapi_json, methods=["GET"])]
