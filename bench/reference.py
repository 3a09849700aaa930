"""The reference: the minimal handlers anyone would write for the service's hot paths.

What it is: a bare Starlette app, served by uvicorn with the service's own options, that does
what the service's hot paths must do and nothing more: the webhook receiver verifies the HMAC,
parses the JSON and stores the delivery, the connection, its tags and a history row in one
transaction (the statements of ``bench/ingest.pgbench.sql``), then writes one JSON log line;
the lookups check the bearer key and answer the service's JSON from one SELECT. It uses the
project's migrated schema and writes the rows the service writes, so both can share a database.

Why it is the yardstick: absolute throughput drifts on a shared machine, but the ratio between
the service and this app, measured in the same run with the same requests on the same database,
does not. It is idiomatic, not tuned: psycopg_pool (5 to 7 connections, like the service's pool)
with plain ``async with pool.connection()`` / ``conn.transaction()``; or sqlite3 in WAL mode,
each connection used by a thread of its own, one writer behind an ``asyncio.Lock`` and two
readers; stdlib ``json``; no pipelining, no caching. What the service does beyond it
(validation, state rules, metrics, request IDs, its data layer) is what the ratio prices. It
handles what the benchmark sends (auth webhooks, the three lookup routes without cursors or
filters besides ``end_user_id``); it is not a second implementation.

    python -m bench.reference --port 8001 --database-url postgresql://postgres@127.0.0.1/db
    python -m bench.reference --port 8001 --database-url sqlite:////tmp/registry.db --workers 2

The webhook signing key and the API key are the first entries of ``NANGO_WEBHOOK_SIGNING_KEYS``
and ``REGISTRY_API_KEYS``, as the service reads them.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import re
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from functools import cache
from typing import Any, TypeVar

from psycopg_pool import AsyncConnectionPool
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bench.bare import serve, server_arguments

DATABASE_URL_VARIABLE = "BENCH_REFERENCE_DATABASE_URL"
T = TypeVar("T")
KEPT_HEADERS = ("content-type", "user-agent", "x-request-id", "x-forwarded-for")

# Every statement is written once, with psycopg's %(name)s placeholders; SQLite gets :name.
COLUMNS = (
    "connection_id, integration_id, provider, environment, auth_mode, end_user_id,"
    " end_user_email, end_user_display_name, organization_id, organization_display_name, tags,"
    " status, error_type, error_description, error_since, last_sync_name, last_sync_model,"
    " last_sync_success, last_sync_at, last_sync_error, created_at, updated_at, deleted_at,"
    " connection_config, metadata"
)
NAMES = tuple(name.strip() for name in COLUMNS.split(","))

INSERT_DELIVERY = """
INSERT INTO deliveries (dedupe_key, received_at, webhook_type, operation, success, environment,
    integration_id, connection_id, body, headers, outcome, error, processed_at, attempts)
VALUES (%(dedupe_key)s, %(now)s, %(type)s, %(operation)s, %(success)s, %(environment)s,
    %(integration_id)s, %(connection_id)s, %(body)s, %(headers)s, %(outcome)s, NULL, %(now)s, 1)
ON CONFLICT (dedupe_key) DO NOTHING RETURNING id"""
# Only the constant COLUMNS is formatted into these (hence the noqa).
INSERT_CONNECTION = f"""
INSERT INTO connections (environment, integration_id, connection_id, provider, auth_mode,
    end_user_id, end_user_email, organization_id, tags, status, created_at, updated_at)
VALUES (%(environment)s, %(integration_id)s, %(connection_id)s, %(provider)s, %(auth_mode)s,
    %(end_user_id)s, %(end_user_email)s, %(organization_id)s, %(tags)s, 'active', %(now)s,
    %(now)s)
ON CONFLICT (environment, integration_id, connection_id) DO NOTHING
RETURNING id, {COLUMNS}"""  # noqa: S608
INSERT_TAG = """
INSERT INTO connection_tags (connection_pk, key, value) VALUES (%(pk)s, %(key)s, %(value)s)"""
INSERT_EVENT = """
INSERT INTO connection_events (connection_pk, delivery_id, source, action, success, from_status,
    to_status, detail, created_at)
VALUES (%(pk)s, %(delivery_id)s, 'webhook', %(operation)s, %(success)s, NULL, 'active',
    %(detail)s, %(now)s)"""
LIST_BY_END_USER = f"""
SELECT {COLUMNS} FROM connections
WHERE end_user_id = %(end_user_id)s AND status IN ('active', 'auth_error')
ORDER BY id DESC LIMIT %(limit)s"""  # noqa: S608
GET_BY_CONNECTION_ID = f"""
SELECT {COLUMNS} FROM connections WHERE connection_id = %(connection_id)s
ORDER BY id DESC LIMIT 2"""  # noqa: S608
END_USER_CONNECTIONS = f"""
SELECT {COLUMNS} FROM connections WHERE end_user_id = %(end_user_id)s AND status <> 'deleted'
ORDER BY id DESC LIMIT 2000"""  # noqa: S608


# Databases ----------------------------------------------------------------------------------


class Postgres:
    def __init__(self, url: str) -> None:
        self.pool = AsyncConnectionPool(
            url, min_size=5, max_size=7, open=False, kwargs={"autocommit": True}
        )

    async def open(self) -> None:
        await self.pool.open(wait=True)

    async def close(self) -> None:
        await self.pool.close()

    @asynccontextmanager
    async def writer(self) -> AsyncIterator[Any]:
        async with self.pool.connection() as conn, conn.transaction(), conn.cursor() as cursor:
            yield cursor

    async def fetch(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        async with self.pool.connection() as conn:
            return await (await conn.execute(sql, params)).fetchall()


def sqlite_time(value: datetime) -> str:
    """How SQLAlchemy stores the service's UTC datetimes in SQLite."""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


@cache
def sqlite_sql(text: str) -> str:
    return re.sub(r"%\((\w+)\)s", r":\1", text)


class SQLiteConnection:
    """A sqlite3 connection that only a thread of its own uses, so the event loop never waits
    on SQLite (aiosqlite's design, without the dependency)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.thread = ThreadPoolExecutor(max_workers=1)

    async def call(self, function: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.thread, function, *args)

    def _open(self) -> None:
        self.conn = sqlite3.connect(self.path, isolation_level=None)
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=30000"):
            self.conn.execute(f"PRAGMA {pragma}")
        self.conn.execute("PRAGMA foreign_keys=ON")

    def _rows(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        return self.conn.execute(sqlite_sql(sql), params).fetchall()

    def _many(self, sql: str, rows: list[dict[str, Any]]) -> None:
        self.conn.executemany(sqlite_sql(sql), rows)

    async def open(self) -> None:
        await self.call(self._open)

    async def close(self) -> None:
        await self.call(self.conn.close)
        self.thread.shutdown()

    async def execute(self, sql: str, params: dict[str, Any] | None = None) -> list[Any]:
        return await self.call(self._rows, sql, params or {})

    async def executemany(self, sql: str, rows: list[dict[str, Any]]) -> None:
        await self.call(self._many, sql, rows)


class SQLiteCursor:
    """The writer connection behind psycopg's cursor calls (execute, fetchone, executemany)."""

    def __init__(self, connection: SQLiteConnection) -> None:
        self.connection = connection
        self.rows: list[Any] = []

    async def execute(self, sql: str, params: dict[str, Any]) -> None:
        self.rows = await self.connection.execute(sql, params)

    async def executemany(self, sql: str, rows: list[dict[str, Any]]) -> None:
        await self.connection.executemany(sql, rows)

    async def fetchone(self) -> Any:
        return self.rows[0] if self.rows else None


class SQLite:
    """One writer connection behind an asyncio.Lock, two readers (WAL lets them run beside it)."""

    def __init__(self, path: str, readers: int = 2) -> None:
        sqlite3.register_adapter(datetime, sqlite_time)
        self.writer_connection = SQLiteConnection(path)
        self.reader_connections = [SQLiteConnection(path) for _ in range(readers)]
        self.readers: asyncio.Queue[SQLiteConnection] = asyncio.Queue()
        self.write_lock = asyncio.Lock()

    async def open(self) -> None:
        for conn in (self.writer_connection, *self.reader_connections):
            await conn.open()
        for conn in self.reader_connections:
            self.readers.put_nowait(conn)

    async def close(self) -> None:
        for conn in (self.writer_connection, *self.reader_connections):
            await conn.close()

    @asynccontextmanager
    async def writer(self) -> AsyncIterator[Any]:
        async with self.write_lock:
            await self.writer_connection.execute("BEGIN IMMEDIATE")
            try:
                yield SQLiteCursor(self.writer_connection)
            except BaseException:
                await self.writer_connection.execute("ROLLBACK")
                raise
            await self.writer_connection.execute("COMMIT")

    async def fetch(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        conn = await self.readers.get()
        try:
            return await conn.execute(sql, params)
        finally:
            self.readers.put_nowait(conn)


def open_database(url: str) -> Postgres | SQLite:
    if url.startswith("sqlite:///"):
        return SQLite(url.removeprefix("sqlite:///"))
    return Postgres(url)


# JSON ---------------------------------------------------------------------------------------


def iso(value: datetime | str | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):  # SQLite: naive UTC text
        value = datetime.fromisoformat(value).replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def connection_json(row: tuple[Any, ...]) -> dict[str, Any]:
    c = dict(zip(NAMES, row, strict=True))
    error = None
    if c["status"] == "auth_error" or c["error_type"] is not None:
        error = {
            "type": c["error_type"],
            "description": c["error_description"],
            "since": iso(c["error_since"]),
        }
    last_sync = None
    if c["last_sync_name"] is not None or c["last_sync_at"] is not None:
        success = c["last_sync_success"]
        last_sync = {
            "name": c["last_sync_name"],
            "model": c["last_sync_model"],
            "success": None if success is None else bool(success),
            "at": iso(c["last_sync_at"]),
            "error": c["last_sync_error"],
        }
    tags = c["tags"]
    return {
        "connection_id": c["connection_id"],
        "integration_id": c["integration_id"],
        "provider": c["provider"],
        "environment": c["environment"],
        "auth_mode": c["auth_mode"],
        "end_user": {
            "id": c["end_user_id"],
            "email": c["end_user_email"],
            "display_name": c["end_user_display_name"],
        },
        "organization": {
            "id": c["organization_id"],
            "display_name": c["organization_display_name"],
        },
        "tags": json.loads(tags) if isinstance(tags, str) else tags,
        "status": c["status"],
        "error": error,
        "last_sync": last_sync,
        "created_at": iso(c["created_at"]),
        "updated_at": iso(c["updated_at"]),
        "deleted_at": iso(c["deleted_at"]),
        "connection_config": json_value(c["connection_config"]),
        "metadata": json_value(c["metadata"]),
    }


def json_value(value: Any) -> Any:
    """A JSON column as stored: text on SQLite, already decoded by psycopg."""
    return json.loads(value) if isinstance(value, str) else value


def error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


# Handlers -----------------------------------------------------------------------------------


def first_entry(variable: str) -> str:
    return os.environ.get(variable, "").split(",")[0].strip()


SIGNING_KEY = first_entry("NANGO_WEBHOOK_SIGNING_KEYS").encode()
API_KEY_DIGEST = hashlib.sha256(first_entry("REGISTRY_API_KEYS").encode()).digest()


async def receive_webhook(request: Request) -> JSONResponse:
    body = await request.body()
    signature = request.headers.get("x-nango-hmac-sha256", "").strip().lower()
    expected = hmac.new(SIGNING_KEY, body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, signature):
        return error(401, "invalid_signature", "the webhook signature does not verify")
    try:
        payload = json.loads(body)
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        return error(400, "invalid_body", "the webhook body is not a UTF-8 JSON object")
    tags = payload.get("tags") or {}
    creation = (
        payload.get("type") == "auth"
        and payload.get("operation") == "creation"
        and payload.get("success") is True
    )
    values = {
        "dedupe_key": hashlib.sha256(body).hexdigest(),
        "now": datetime.now(UTC),
        "type": payload.get("type"),
        "operation": payload.get("operation"),
        "success": payload.get("success"),
        "environment": payload.get("environment") or "prod",
        "integration_id": payload.get("providerConfigKey"),
        "connection_id": payload.get("connectionId"),
        "provider": payload.get("provider"),
        "auth_mode": payload.get("authMode"),
        "end_user_id": tags.get("end_user_id"),
        "end_user_email": tags.get("end_user_email"),
        "organization_id": tags.get("organization_id"),
        "tags": json.dumps(tags),
        "body": body.decode(),
        "headers": json.dumps(
            {k: request.headers[k] for k in KEPT_HEADERS if k in request.headers}
        ),
        "outcome": "applied" if creation else "recorded",
        "detail": json.dumps({"operation": payload.get("operation")}),
    }
    async with request.app.state.db.writer() as cursor:
        await cursor.execute(INSERT_DELIVERY, values)
        delivery = await cursor.fetchone()
        if delivery is None:
            return JSONResponse({"status": "duplicate", "delivery_id": None})
        values["delivery_id"] = delivery[0]
        if creation:
            await cursor.execute(INSERT_CONNECTION, values)
            created = await cursor.fetchone()
            if created is not None:
                values["pk"] = created[0]
                rows = [{"pk": created[0], "key": k, "value": v} for k, v in tags.items()]
                await cursor.executemany(INSERT_TAG, rows)
                await cursor.execute(INSERT_EVENT, values)
    return JSONResponse({"status": values["outcome"], "delivery_id": values["delivery_id"]})


def authorized(request: Request) -> bool:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    digest = hashlib.sha256(token.strip().encode()).digest()
    return scheme.lower() == "bearer" and hmac.compare_digest(digest, API_KEY_DIGEST)


def unauthorized() -> JSONResponse:
    return error(401, "unauthorized", "invalid API key")


async def list_connections(request: Request) -> JSONResponse:
    if not authorized(request):
        return unauthorized()
    end_user_id = request.query_params.get("end_user_id")
    limit = request.query_params.get("limit", "50")
    if not end_user_id or not limit.isdigit() or not 1 <= int(limit) <= 500:
        return error(400, "invalid_parameter", "end_user_id and a limit of 1 to 500 are needed")
    rows = await request.app.state.db.fetch(
        LIST_BY_END_USER, {"end_user_id": end_user_id, "limit": int(limit) + 1}
    )
    # No cursors: the benchmark's users have three connections each.
    data = [connection_json(row) for row in rows[: int(limit)]]
    return JSONResponse({"data": data, "next_cursor": None})


async def get_connection(request: Request) -> JSONResponse:
    if not authorized(request):
        return unauthorized()
    connection_id = request.path_params["connection_id"]
    rows = await request.app.state.db.fetch(GET_BY_CONNECTION_ID, {"connection_id": connection_id})
    if len(rows) != 1:
        code = "connection_not_found" if not rows else "ambiguous_connection_id"
        return error(404 if not rows else 409, code, f"no connection {connection_id!r}")
    return JSONResponse({"data": connection_json(rows[0])})


async def end_user_summary(request: Request) -> JSONResponse:
    if not authorized(request):
        return unauthorized()
    end_user_id = request.path_params["end_user_id"]
    rows = await request.app.state.db.fetch(END_USER_CONNECTIONS, {"end_user_id": end_user_id})
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:  # newest first
        item = connection_json(row)
        group = groups.get((item["environment"], item["integration_id"]))
        if group is None:
            groups[(item["environment"], item["integration_id"])] = {
                "integration_id": item["integration_id"],
                "environment": item["environment"],
                "connection_count": 1,
                "connection": item,
            }
            continue
        group["connection_count"] += 1
        if group["connection"]["status"] != "active" and item["status"] == "active":
            group["connection"] = item
    integrations = []
    for group in sorted(groups.values(), key=lambda g: (g["integration_id"], g["environment"])):
        status = group["connection"]["status"]
        integrations.append(
            {
                "integration_id": group["integration_id"],
                "environment": group["environment"],
                "connected": status == "active",
                "needs_reauthorization": status == "auth_error",
                "connection_count": group["connection_count"],
                "connection": group["connection"],
            }
        )
    return JSONResponse({"data": {"end_user_id": end_user_id, "integrations": integrations}})


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


class AccessLog:
    """One JSON line per request on stderr, like the service's access log."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            line = {
                "event": "request",
                "time": datetime.now(UTC).isoformat(),
                "method": scope["method"],
                "path": scope["path"],
                "status": status,
                "duration_ms": round((time.perf_counter() - started) * 1000, 2),
            }
            sys.stderr.write(json.dumps(line) + "\n")


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    app.state.db = open_database(os.environ[DATABASE_URL_VARIABLE])
    await app.state.db.open()
    try:
        yield
    finally:
        await app.state.db.close()


app = AccessLog(
    Starlette(
        routes=[
            Route("/webhooks/nango", receive_webhook, methods=["POST"]),
            Route("/v1/connections", list_connections, methods=["GET"]),
            Route("/v1/connections/{connection_id:path}", get_connection, methods=["GET"]),
            Route("/v1/end-users/{end_user_id}/summary", end_user_summary, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
)


def main() -> None:
    parser = server_arguments(__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", required=True, help="postgresql://... or sqlite:///path")
    args = parser.parse_args()
    # Workers are separate processes that import this module: they read the URL from here.
    os.environ[DATABASE_URL_VARIABLE] = args.database_url
    serve("bench.reference:app", args)


if __name__ == "__main__":
    main()
