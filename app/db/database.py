"""The data layer: every SQL statement written once, run straight on the driver.

Postgres goes through psycopg 3's async connection pool; SQLite through the standard library's
``sqlite3``, each connection on a thread of its own so that no statement blocks the event loop.
There is no ORM and no query builder between the code and the driver: profiling showed them to
cost more CPU than the rest of a request (README, "Benchmarks"). The SQLModel tables in
``app.db.tables`` remain the one description of the schema, for Alembic and the drift test.

A statement is written once with ``:name`` parameters (``sql(...)``) and rendered for each
driver when the module that declares it is imported. Rows come back as tuples; the records in
``app.connections.model`` and elsewhere build themselves from them by position.

Both databases give back the same Python values: ``timestamptz`` / ``DATETIME`` as aware UTC
datetimes, ``jsonb`` / ``JSON`` as parsed JSON, ``boolean`` / ``BOOLEAN`` as bool. A ``dict``
passed as a parameter is stored as JSON on both.

Transactions::

    async with database.transaction() as tx:      # one write transaction, committed at the end
        row = await tx.fetchone(INSERT_X, {...})
    async with database.reader() as tx:           # reads: no transaction on Postgres, no lock
        rows = await tx.fetchall(SELECT_Y, {...})   # on SQLite

Writers on SQLite queue on one connection (``BEGIN IMMEDIATE``, one writer at a time in the
process, SQLite's lock between processes); readers use a small pool beside it (WAL lets them
run while a writer commits).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import re
import select
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

import anyio
import psycopg
import pydantic_core
from psycopg.types.json import JsonbDumper, set_json_dumps, set_json_loads
from psycopg_pool import AsyncConnectionPool

from app.logs import get_logger
from app.settings import Settings

log = get_logger(__name__)

Row = tuple[Any, ...]
Params = Mapping[str, Any]
T = TypeVar("T")

# ``:name`` but not ``::type`` (a Postgres cast) and not inside a longer word.
_PARAMETER = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


# Database.dialect and Transaction.dialect (SQLAlchemy's names, as in DATABASE_URL).
POSTGRES = "postgresql"
SQLITE = "sqlite"


class DatabaseTimeout(Exception):
    """No connection (or, on SQLite, no turn to write) within ``DATABASE_POOL_TIMEOUT_SECONDS``."""


class QueryTimeout(DatabaseTimeout):
    """A statement ran past ``DATABASE_STATEMENT_TIMEOUT_SECONDS`` and was cut off (on Postgres
    the server raises ``QueryCanceled`` instead)."""


class QueryTooComplex(Exception):
    """SQLite refused a statement for its size (too many terms, variables or nesting): the
    request asked for too much, the database is fine."""


# Set for the work of an API request (app.middleware): it is bounded apart from the rest, so
# that lookups can never take every pooled connection from the webhook receiver.
API_WORK: ContextVar[bool] = ContextVar("api_work", default=False)
# Connections the webhook receiver (and background work) can always get on Postgres.
RESERVED_CONNECTIONS = 2


def is_missing_table(error: BaseException) -> bool:
    """The statement named a table the database does not have: its schema is not migrated."""
    if isinstance(error, psycopg.errors.UndefinedTable):
        return True
    return isinstance(error, sqlite3.OperationalError) and str(error).startswith("no such table")


class Statement:
    """One SQL statement, rendered once for each driver (on SQLite, possibly several run in
    order with the same parameters: see ``together``)."""

    __slots__ = ("postgres", "prepare", "sqlite", "sqlite_parts")

    def __init__(
        self,
        postgres: str,
        sqlite: str,
        prepare: bool | None = None,
        sqlite_parts: tuple[str, ...] | None = None,
    ) -> None:
        self.postgres = postgres
        self.sqlite = sqlite
        self.prepare = prepare
        self.sqlite_parts = (sqlite,) if sqlite_parts is None else sqlite_parts

    def __repr__(self) -> str:
        return f"Statement({self.sqlite!r})"


def sql(
    text: str, *, lock: bool = False, postgres: str | None = None, prepare: bool | None = None
) -> Statement:
    """A statement with ``:name`` parameters, shared by both databases.

    ``lock=True`` appends ``FOR UPDATE`` on Postgres: SQLite writers hold the database's write
    lock for the whole transaction already. ``postgres`` replaces the text where the two
    dialects cannot share one (rare; say why beside it). Postgres prepares a statement after
    its fifth run on a connection and may then keep a generic plan made while a table was small;
    ``prepare=False`` plans it afresh every time, for statements that run while a table grows
    from empty (a first reconcile) and are not on a hot path.
    """
    pg_text = postgres if postgres is not None else text
    if lock:
        pg_text += " FOR UPDATE"
    return Statement(postgres=_for_psycopg(pg_text), sqlite=text, prepare=prepare)


def _for_psycopg(text: str) -> str:
    # psycopg's placeholders are %(name)s, so a literal % must be doubled.
    return _PARAMETER.sub(r"%(\1)s", text.replace("%", "%%"))


def together(postgres: str, *parts: Statement) -> Statement:
    """Statements that always run one after the other with the same parameters, as one: on
    Postgres ``postgres``, one statement that does what the parts do (data-modifying CTEs), so
    one round trip; on SQLite the parts in order, which reach the connection's thread in one
    trip anyway. For ``execute`` only: nothing is read back."""
    return Statement(
        postgres=_for_psycopg(postgres),
        sqlite="; ".join(part.sqlite for part in parts),
        sqlite_parts=tuple(part.sqlite for part in parts),
    )


def postgres_only(text: str) -> Statement:
    """A statement SQLite cannot express (data-modifying CTEs that read each other's rows), for
    a Postgres shortcut beside a path both databases share: send it only where
    ``tx.dialect == POSTGRES``."""
    return Statement(postgres=_for_psycopg(text), sqlite="", sqlite_parts=())


def json_select(
    table: str, parameter: str, columns: Sequence[str], sources: str, **given: str
) -> str:
    """Postgres: ``SELECT`` of ``columns`` for an ``INSERT INTO table .. SELECT``, read from the
    JSON object parameter ``:parameter`` as a row of ``table`` (``jsonb_populate_record``: the
    server converts each value to its column's type, where a bare parameter in a SELECT list
    would need a cast), beside the rows of ``sources``; a column in ``given`` takes that SQL
    expression instead (an ID from an earlier CTE, say)."""
    values = ", ".join(given.get(name, f"record.{name}") for name in columns)
    return (
        f"SELECT {values} FROM {sources},"  # noqa: S608 (fixed names)
        f" jsonb_populate_record(NULL::{table}, :{parameter}) AS record"
    )


class Transaction(Protocol):
    """What a unit of work sees: statements in, tuples out."""

    dialect: str  # the database's: "postgresql" or "sqlite"

    async def execute(self, statement: Statement, params: Params | None = None) -> None:
        """Run a statement whose result is not needed (it may be sent later, with others)."""
        ...

    async def executemany(self, statement: Statement, rows: Sequence[Params]) -> None: ...

    async def fetchone(self, statement: Statement, params: Params | None = None) -> Row | None: ...

    async def fetchall(self, statement: Statement, params: Params | None = None) -> list[Row]: ...

    def feed_appended(self) -> None:
        """This transaction appended to the change feed: once it commits, the database tells
        the feed's listeners (``Database.on_feed_commit`` in this process; on Postgres also a
        NOTIFY for the others, see ``PostgresDatabase.feed_committed``)."""


class Database(Protocol):
    dialect: str
    # Called once a transaction that appended to the feed has committed (set by the lifespan:
    # wakes this process's streams, long polls and dispatcher at once).
    on_feed_commit: Callable[[], None] | None

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    def transaction(self) -> contextlib.AbstractAsyncContextManager[Transaction]: ...

    def reader(self) -> contextlib.AbstractAsyncContextManager[Transaction]: ...


# The change feed's channel: a NOTIFY on it wakes its streams, long polls and dispatchers in
# every process (app.connections.feed_signal).
FEED_CHANNEL = "feed_events"
# Committed feed appends are announced at most this often per process, in one NOTIFY of its
# own: a NOTIFY inside each writing transaction made every commit take Postgres's global notify
# lock until its WAL flush, serializing the webhooks' commits (make bench: a third of the
# ingest rate).
FEED_NOTIFY_EVERY_SECONDS = 0.01
_NOTIFY_FEED = b"NOTIFY " + FEED_CHANNEL.encode()

# SQLite readers, each a connection on a thread of its own. Reads take microseconds and hold the
# GIL for most of them: more threads only contend for it (make bench, 32 concurrent lookups: 1407
# req/s with 5 readers, 1603 with 2). DATABASE_POOL_SIZE is for Postgres.
SQLITE_READERS = 2


def create_database(settings: Settings, *, bounded: bool = False) -> Database:
    """The database; ``bounded``: every statement is cut off after
    ``DATABASE_STATEMENT_TIMEOUT_SECONDS`` (the service; commands run unbounded)."""
    statement_timeout = settings.database_statement_timeout_seconds if bounded else None
    if settings.is_sqlite:
        return SqliteDatabase(
            sqlite_path(settings.database_url),
            readers=SQLITE_READERS,
            timeout=settings.database_pool_timeout_seconds,
            statement_timeout=statement_timeout,
        )
    return PostgresDatabase(
        postgres_conninfo(settings.database_url),
        min_size=settings.database_pool_size,
        max_size=settings.database_pool_size + settings.database_max_overflow,
        timeout=settings.database_pool_timeout_seconds,
        statement_timeout=statement_timeout,
    )


@contextlib.asynccontextmanager
async def connected(settings: Settings) -> AsyncIterator[Database]:
    """A database for the length of one command (the CLI); the app's is owned by lifespan."""
    database = create_database(settings)
    await database.open()
    try:
        yield database
    finally:
        await database.close()


def postgres_conninfo(database_url: str) -> str:
    """The libpq URL for the normalised ``postgresql+psycopg://`` setting."""
    return "postgresql://" + database_url.partition("://")[2]


def sqlite_path(database_url: str) -> str:
    """The file of a ``sqlite:///path`` setting (``////abs`` for an absolute path)."""
    return database_url.partition(":///")[2] or ":memory:"


# Postgres -----------------------------------------------------------------------------------


class _DictDumper(JsonbDumper):
    # A dict parameter is written by pydantic-core like every JSON here (datetimes included);
    # set_json_dumps alone covers only the Json/Jsonb wrappers, not a dumper for dict.
    _dumps = staticmethod(lambda value: pydantic_core.to_json(value))


async def _configure(connection: psycopg.AsyncConnection[Row]) -> None:
    # Dicts are stored as jsonb, the type of every JSON column here; JSON is read and written by
    # pydantic-core, several times faster than the standard library on these small documents.
    connection.adapters.register_dumper(dict, _DictDumper)
    set_json_dumps(pydantic_core.to_json, connection)
    set_json_loads(pydantic_core.from_json, connection)


def _is_dead(connection: psycopg.AsyncConnection[Row]) -> bool:
    """Whether a pooled connection's server has gone (a restart, a failover, a kill).

    An idle connection has nothing to read; a readable socket means the server closed it (or
    sent the FATAL that precedes closing). A zero-timeout poll costs a system call, not the
    round trip of a ``SELECT 1``.
    """
    if connection.closed or connection.broken:
        return True
    readable, _, _ = select.select([connection.pgconn.socket], [], [], 0)
    return bool(readable)


class _Reachability:
    """Whether the last attempt to open a connection failed: the database is down, and why
    (a pool that times out later says only that it timed out)."""

    down = False
    error: psycopg.OperationalError | None = None


def _connection_class(reachability: _Reachability) -> type[psycopg.AsyncConnection[Row]]:
    class Connection(psycopg.AsyncConnection[Row]):
        @classmethod
        async def connect(  # the pool passes on what it was given
            cls, *args: Any, **kwargs: Any
        ) -> Connection:
            try:
                connection = await super().connect(*args, **kwargs)
            except psycopg.OperationalError as error:
                reachability.down = True
                reachability.error = error
                raise
            reachability.down = False
            reachability.error = None
            return connection

    return Connection


class PostgresDatabase:
    dialect = POSTGRES

    def __init__(
        self,
        conninfo: str,
        *,
        min_size: int,
        max_size: int,
        timeout: float,
        statement_timeout: float | None = None,
    ) -> None:
        self._max_size = max_size
        # How long a request waits for a pooled connection, and API work for its slot.
        self.pool_timeout = timeout
        self.on_feed_commit: Callable[[], None] | None = None
        self._purging: asyncio.Task[None] | None = None
        self._notifying: asyncio.Task[None] | None = None
        self._reachability = _Reachability()
        # API work holds at most this many connections at once; the rest stay free for the
        # webhook receiver, whatever a flood of lookups does (issue 13).
        self.api_slots = asyncio.Semaphore(max(1, max_size - RESERVED_CONNECTIONS))
        options = "-c timezone=UTC"
        if statement_timeout is not None:
            # Set once per connection, not per transaction: no round trip on any request.
            options += f" -c statement_timeout={round(statement_timeout * 1000)}"
        # While the database is down a request waits this long for a connection, not the whole
        # pool timeout: a fast 503 is what a webhook sender can act on (it retries 5xx).
        self._down_timeout = min(timeout, 0.5)
        self.pool = AsyncConnectionPool(
            conninfo,
            connection_class=_connection_class(self._reachability),
            min_size=min_size,
            max_size=max_size,
            timeout=timeout,
            open=False,
            # Reads run one statement each, in autocommit: no BEGIN and COMMIT round trips.
            # Writes open an explicit transaction (``transaction()``).
            kwargs={
                "autocommit": True,
                "connect_timeout": 5,
                "application_name": "nango-registry",
                "options": options,
            },
            configure=_configure,
            # After an outage psycopg retries each lost connection with a doubling delay; giving
            # up after a few seconds lets the next request start a fresh attempt at once, so
            # the service is back within about a second of the database.
            reconnect_timeout=max(10.0, 2 * timeout),
            name="nango-registry",
        )

    async def open(self) -> None:
        # Does not wait for the database: the service starts (and /readyz says why it is not
        # ready) while Postgres is still coming up.
        await self.pool.open(wait=False)

    @property
    def connect_error(self) -> psycopg.OperationalError | None:
        """Why the last attempt to connect failed, while the database is unreachable."""
        return self._reachability.error

    async def close(self) -> None:
        if self._purging is not None:
            self._purging.cancel()
        if self._notifying is not None:  # a command's last changes are announced too
            await self._notifying
        await self.pool.close()

    def feed_committed(self) -> None:
        """A transaction that appended to the feed has committed: this process hears at once,
        the others by a NOTIFY soon, one for all the commits of ``FEED_NOTIFY_EVERY_SECONDS``."""
        if self.on_feed_commit is not None:
            self.on_feed_commit()
        if self._notifying is None or self._notifying.done():
            self._notifying = asyncio.ensure_future(self._notify_feed())

    async def _notify_feed(self) -> None:
        await asyncio.sleep(FEED_NOTIFY_EVERY_SECONDS)
        try:
            connection = await self._take()
            try:
                await connection.execute(_NOTIFY_FEED, prepare=False)
            finally:
                await self.pool.putconn(connection)
        except Exception as error:  # listeners still poll: nothing is lost, only later
            log.warning("feed_notify_failed", error_type=type(error).__name__)

    async def _take(self) -> psycopg.AsyncConnection[Row]:
        """A live pooled connection: dead ones are discarded and the next one taken at once."""
        for _ in range(self._max_size + 1):
            timeout = self._down_timeout if self._reachability.down else None
            connection = await self.pool.getconn(timeout=timeout)
            if not _is_dead(connection):
                return connection
            # Closed, it is discarded on return and the pool opens a replacement; the other
            # idle connections most likely died with it: check them all, in the background.
            await connection.close()
            await self.pool.putconn(connection)
            if self._purging is None or self._purging.done():
                self._purging = asyncio.ensure_future(self.pool.check())
        raise psycopg.OperationalError("every pooled connection was dead")

    def transaction(self) -> contextlib.AbstractAsyncContextManager[Transaction]:
        return _PostgresUnit(self, write=True)

    def reader(self) -> contextlib.AbstractAsyncContextManager[Transaction]:
        return _PostgresUnit(self, write=False)


class _PostgresUnit:
    """One unit of work on one pooled connection: a transaction, or autocommit reads.

    A class rather than a generator-based context manager, and BEGIN/COMMIT sent by hand rather
    than through psycopg's transaction helper: this runs on every request, and the nested
    context managers cost more CPU than the statement they wrap.

    A connection the server closed (a restart, a failover) after the idle check let it through
    fails on its first statement; nothing was done on it yet, so that statement is sent once
    more on a fresh connection instead of failing the request.
    """

    __slots__ = ("_appended", "_connection", "_cursor", "_database", "_fresh", "_slot", "_write")
    dialect = POSTGRES

    def __init__(self, database: PostgresDatabase, *, write: bool) -> None:
        self._database = database
        self._write = write
        self._appended = False

    def feed_appended(self) -> None:
        self._appended = True

    async def __aenter__(self) -> Transaction:
        self._slot = await self._api_slot()
        try:
            await self._take()
        except BaseException:
            self._release_slot()
            raise
        if self._write:
            try:
                await self._first(b"BEGIN", None, prepare=False)
            except BaseException:
                await self._give_back()
                raise
        return self

    async def _api_slot(self) -> asyncio.Semaphore | None:
        if not API_WORK.get():
            return None
        slots = self._database.api_slots
        if slots.locked():
            try:
                async with asyncio.timeout(self._database.pool_timeout):
                    await slots.acquire()
            except TimeoutError:
                raise DatabaseTimeout("timed out waiting for a connection for API work") from None
        else:
            await slots.acquire()
        return slots

    def _release_slot(self) -> None:
        if self._slot is not None:
            self._slot.release()

    async def _give_back(self) -> None:
        try:
            await self._database.pool.putconn(self._connection)
        finally:
            self._release_slot()

    async def _take(self) -> None:
        self._connection = await self._database._take()
        self._cursor = self._connection.cursor()
        self._fresh = True

    async def _first(self, query: str | bytes, params: Params | None, prepare: bool | None) -> None:
        try:
            await self._cursor.execute(query, params, prepare=prepare)
        except psycopg.OperationalError:
            if not self._connection.broken:
                raise
            await self._database.pool.putconn(self._connection)
            await self._take()
            await self._cursor.execute(query, params, prepare=prepare)
        self._fresh = False

    async def _send(self, statement: Statement, params: Params | None) -> None:
        if self._fresh:
            await self._first(statement.postgres, params, statement.prepare)
        else:
            await self._cursor.execute(statement.postgres, params, prepare=statement.prepare)

    async def execute(self, statement: Statement, params: Params | None = None) -> None:
        await self._send(statement, params)

    async def executemany(self, statement: Statement, rows: Sequence[Params]) -> None:
        if rows:
            self._fresh = False
            await self._cursor.executemany(statement.postgres, rows)

    async def fetchone(self, statement: Statement, params: Params | None = None) -> Row | None:
        await self._send(statement, params)
        return await self._cursor.fetchone()

    async def fetchall(self, statement: Statement, params: Params | None = None) -> list[Row]:
        await self._send(statement, params)
        return await self._cursor.fetchall()

    async def __aexit__(self, kind: type[BaseException] | None, *exc: Any) -> None:
        # Shielded: a request cancelled mid-transaction still rolls back and returns its
        # connection (the pool would otherwise roll back for it, and warn).
        with anyio.CancelScope(shield=True):
            try:
                if self._write and kind is None:
                    await self._cursor.execute(b"COMMIT", prepare=False)
                    if self._appended:
                        self._database.feed_committed()
                elif self._write:
                    with contextlib.suppress(psycopg.Error):
                        await self._cursor.execute(b"ROLLBACK", prepare=False)
            finally:
                await self._give_back()


# SQLite -------------------------------------------------------------------------------------

# SQLAlchemy's storage format for DATETIME on SQLite: naive UTC text, which sorts by time.
_SQLITE_TIME = "%Y-%m-%d %H:%M:%S.%f"


def _sqlite_time(value: datetime) -> str:
    if value.tzinfo is None:
        raise ValueError("naive datetimes are not stored; use an aware UTC datetime")
    return value.astimezone(UTC).strftime(_SQLITE_TIME)


def _parse_sqlite_time(value: bytes) -> datetime:
    return datetime.fromisoformat(value.decode()).replace(tzinfo=UTC)


def _json_text(value: object) -> str:
    return pydantic_core.to_json(value).decode()


# The column types the migrations declare on SQLite (see app/db/types.py); converters apply
# only to connections opened with PARSE_DECLTYPES, i.e. the ones below.
sqlite3.register_adapter(datetime, _sqlite_time)
sqlite3.register_adapter(dict, _json_text)
sqlite3.register_converter("DATETIME", _parse_sqlite_time)
sqlite3.register_converter("BOOLEAN", lambda value: value != b"0")
sqlite3.register_converter("JSON", pydantic_core.from_json)


def _sqlite_uri(path: str) -> str:
    """The file opened read-write but never created: only ``migrate`` (Alembic) creates it, so
    a command run from the wrong directory fails clearly instead of making an empty database."""
    if path == ":memory:":
        return "file::memory:"
    return f"file:{urllib.parse.quote(path)}?mode=rw"


# SQLite calls the progress handler every this many virtual-machine instructions (about 0.1 ms
# of work): often enough to stop a runaway statement at once, rarely enough to cost nothing.
_PROGRESS_STEPS = 10_000

# What SQLite says when a statement is too large to run, rather than the database failing.
_TOO_COMPLEX = (
    "too many sql variables",
    "expression tree is too large",
    "parser stack overflow",
    "too many terms",
    "too many columns",
    "pattern too complex",
    "string or blob too big",
)


class _Call:
    """One trip to a connection's thread: what to run, when it must stop, whether its caller
    left, and where its answer goes."""

    __slots__ = ("abandoned", "args", "deadline", "function", "future", "loop")

    def __init__(
        self,
        deadline: float,
        loop: asyncio.AbstractEventLoop,
        future: asyncio.Future[Any],
        function: Any,
        args: tuple[Any, ...],
    ) -> None:
        self.deadline = deadline
        self.abandoned = False
        self.loop = loop
        self.future = future
        self.function = function
        self.args = args

    def stop(self) -> bool:
        """SQLite's progress handler: a true value interrupts the running statement."""
        return self.abandoned or time.monotonic() > self.deadline


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # its caller was cancelled meanwhile
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class _SqliteConnection:
    """A ``sqlite3`` connection and the one thread that runs its statements.

    Statements run on that thread, never on the event loop, one trip after another in the order
    they were asked for. Each trip is bounded: past ``statement_timeout`` from when it was asked
    for (time spent queued counts), or once its caller is cancelled (a client gone), SQLite's
    progress handler interrupts it, as Postgres's statement_timeout and cancel do; a trip whose
    time ran out while queued does not start.

    The thread takes trips from a plain queue and hands each answer to the event loop with
    ``call_soon_threadsafe``: measured with make bench, ``run_in_executor`` (a
    ``concurrent.futures`` future chained to an asyncio one) cost a tenth of a lookup's CPU.
    """

    def __init__(self, path: str, statement_timeout: float | None = None) -> None:
        self._path = path
        self._trips: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._connection: sqlite3.Connection | None = None
        self._statement_timeout = statement_timeout if statement_timeout is not None else 1e9
        self._call: _Call | None = None
        # Trips asked for and not yet answered: readers go to the least busy connection.
        self.busy = 0

    async def run(self, function: Any, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name="sqlite", daemon=True)
            self._thread.start()
        future = loop.create_future()
        call = _Call(time.monotonic() + self._statement_timeout, loop, future, function, args)
        self.busy += 1
        self._trips.put(call)
        try:
            return await future
        except asyncio.CancelledError:
            # The thread would run on: its statement stops at the next progress check (or
            # never starts), and the connection's next trip waits for that.
            call.abandoned = True
            raise
        finally:
            self.busy -= 1

    def _serve(self) -> None:
        """The connection's thread: runs trips until told to stop (``None``)."""
        while (call := self._trips.get()) is not None:
            if call.abandoned:
                continue
            result, error = None, None
            try:
                result = self._bounded(call)
            except BaseException as raised:  # handed to the caller, whatever it is
                error = raised
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits
                call.loop.call_soon_threadsafe(_settle, call.future, result, error)

    def _bounded(self, call: _Call) -> Any:
        if call.stop():
            raise QueryTimeout("the statement waited past its time limit")
        self._call = call
        try:
            return call.function(*call.args)
        except sqlite3.OperationalError as error:
            message = str(error).lower()
            if message == "interrupted" and not call.abandoned:
                raise QueryTimeout("the statement ran past its time limit") from None
            if any(part in message for part in _TOO_COMPLEX):
                raise QueryTooComplex(str(error)) from None
            raise
        finally:
            self._call = None

    def _progress(self) -> int:
        call = self._call
        return 1 if call is not None and call.stop() else 0

    async def open(self) -> None:
        self._connection = await self.run(self._connect)

    def _connect(self) -> sqlite3.Connection:
        try:
            connection = sqlite3.connect(
                _sqlite_uri(self._path),
                uri=True,
                detect_types=sqlite3.PARSE_DECLTYPES,
                # Transactions are begun and ended explicitly (BEGIN IMMEDIATE / COMMIT).
                isolation_level=None,
                check_same_thread=False,
                timeout=30,
            )
        except sqlite3.OperationalError as error:
            if self._path != ":memory:" and not os.path.exists(self._path):
                raise sqlite3.OperationalError(
                    f'database file "{os.path.abspath(self._path)}" does not exist:'
                    " run nango-registry migrate (or check DATABASE_URL)"
                ) from error
            raise
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.execute("PRAGMA foreign_keys=ON")
        connection.execute("PRAGMA busy_timeout=30000")
        connection.set_progress_handler(self._progress, _PROGRESS_STEPS)
        return connection

    @property
    def connection(self) -> sqlite3.Connection:
        assert self._connection is not None, "open() first"
        return self._connection

    async def close(self) -> None:
        if self._connection is not None:
            await self.run(self._connection.close)
            self._connection = None
        if self._thread is not None:
            self._trips.put(None)
            self._thread = None


# One statement waiting to be sent with the next one that needs an answer: (text, parameters,
# whether the parameters are a list of rows for executemany).
_Pending = tuple[str, Any, bool]


def _run(
    connection: sqlite3.Connection, pending: list[_Pending], text: str | None, params: Any
) -> list[Row]:
    """Run the statements queued so far, then ``text`` (if any), on the connection's thread."""
    for queued, values, many in pending:
        if many:
            connection.executemany(queued, values)
        else:
            connection.execute(queued, values)
    if text is None:
        return []
    # fetchall, even for one row: an INSERT .. RETURNING is complete only once every row is read.
    return connection.execute(text, params or {}).fetchall()


def _rollback(connection: sqlite3.Connection) -> None:
    if connection.in_transaction:
        connection.rollback()


def _single(statement: Statement) -> str:
    if len(statement.sqlite_parts) != 1:
        # A caller's mistake, never bad input: together() is for execute(), and a
        # postgres_only() statement is sent only after checking Transaction.dialect.
        raise TypeError(f"not a single SQLite statement: {statement!r}")
    return statement.sqlite


class _SqliteTransaction:
    """Statements whose results are not needed are queued and sent with the next one that has
    an answer to give (or at the end): one trip to the connection's thread for several
    statements, as Postgres's pipeline mode saves round trips."""

    __slots__ = ("_connection", "_pending", "appended")
    dialect = SQLITE

    def __init__(self, connection: _SqliteConnection, *first: _Pending) -> None:
        self._connection = connection
        self._pending: list[_Pending] = list(first)
        self.appended = False

    async def execute(self, statement: Statement, params: Params | None = None) -> None:
        if not statement.sqlite_parts:
            _single(statement)  # raises: a postgres_only() statement
        for text in statement.sqlite_parts:
            self._pending.append((text, params or {}, False))

    async def executemany(self, statement: Statement, rows: Sequence[Params]) -> None:
        if rows:
            self._pending.append((_single(statement), rows, True))

    async def fetchone(self, statement: Statement, params: Params | None = None) -> Row | None:
        rows = await self.fetchall(statement, params)
        return rows[0] if rows else None

    async def fetchall(self, statement: Statement, params: Params | None = None) -> list[Row]:
        pending, self._pending = self._pending, []
        rows: list[Row] = await self._connection.run(
            _run, self._connection.connection, pending, _single(statement), params
        )
        return rows

    def feed_appended(self) -> None:
        self.appended = True

    async def finish(self, last: str) -> None:
        """Send what is queued, then ``last`` (COMMIT, or nothing for a reader)."""
        pending, self._pending = self._pending, []
        if last:
            pending.append((last, {}, False))
        if pending:
            await self._connection.run(_run, self._connection.connection, pending, None, None)


class SqliteDatabase:
    dialect = SQLITE

    def __init__(
        self, path: str, *, readers: int, timeout: float, statement_timeout: float | None = None
    ) -> None:
        self.path = path
        self._max_readers = max(1, readers)
        self._timeout = timeout
        self._statement_timeout = statement_timeout
        self.on_feed_commit: Callable[[], None] | None = None
        self._writer: _SqliteConnection | None = None
        self._write_lock = asyncio.Lock()
        self._readers: list[_SqliteConnection] = []
        self._opening_reader = asyncio.Lock()
        self._all: list[_SqliteConnection] = []

    async def open(self) -> None:
        """Connections are opened on first use, as Postgres's pool does in the background."""

    async def close(self) -> None:
        for connection in self._all:
            await connection.close()
        self._all.clear()
        self._writer = None
        self._readers = []

    async def _connect(self) -> _SqliteConnection:
        connection = _SqliteConnection(self.path, self._statement_timeout)
        try:
            await connection.open()
        except BaseException:
            await connection.close()
            raise
        self._all.append(connection)
        return connection

    def transaction(self) -> contextlib.AbstractAsyncContextManager[Transaction]:
        return _SqliteWriter(self)

    def reader(self) -> contextlib.AbstractAsyncContextManager[Transaction]:
        return _SqliteReader(self)

    async def _take_writer(self) -> _SqliteConnection:
        # One writer at a time in this process: queueing here is fair and costs nothing,
        # where SQLite's own busy handler would poll with sleeps of up to 100 ms.
        try:
            async with asyncio.timeout(self._timeout):
                await self._write_lock.acquire()
        except TimeoutError:
            raise DatabaseTimeout("timed out waiting for the SQLite write lock") from None
        if self._writer is None:
            try:
                self._writer = await self._connect()
            except BaseException:
                self._write_lock.release()
                raise
        return self._writer

    async def _take_reader(self) -> _SqliteConnection:
        """The least busy reader. Readers are not checked out: each runs its trips in turn,
        so a read waits in its reader's queue (bounded by the statement timeout) rather than
        for a connection. A new reader is opened, up to the limit, when all are busy."""
        readers = self._readers
        chosen = min(readers, key=_busy) if readers else None
        if chosen is not None and (chosen.busy == 0 or len(readers) >= self._max_readers):
            return chosen
        async with self._opening_reader:
            if len(self._readers) < self._max_readers:
                self._readers.append(await self._connect())
            return min(self._readers, key=_busy)


def _busy(connection: _SqliteConnection) -> int:
    return connection.busy


class _SqliteWriter:
    """A write transaction: BEGIN IMMEDIATE travels with its first statement, COMMIT with its
    last queued ones (see _SqliteTransaction)."""

    __slots__ = ("_connection", "_database", "_tx")

    def __init__(self, database: SqliteDatabase) -> None:
        self._database = database

    async def __aenter__(self) -> Transaction:
        self._connection = await self._database._take_writer()
        self._tx = _SqliteTransaction(self._connection, ("BEGIN IMMEDIATE", {}, False))
        return self._tx

    async def __aexit__(self, kind: type[BaseException] | None, *exc: Any) -> None:
        try:
            with anyio.CancelScope(shield=True):
                if kind is None:
                    try:
                        await self._tx.finish("COMMIT")
                    except BaseException:
                        await self._connection.run(_rollback, self._connection.connection)
                        raise
                    # SQLite has no NOTIFY: other processes' waiters poll.
                    if self._tx.appended and self._database.on_feed_commit is not None:
                        self._database.on_feed_commit()
                    return
                await self._connection.run(_rollback, self._connection.connection)
        finally:
            self._database._write_lock.release()


class _SqliteReader:
    __slots__ = ("_database", "_tx")

    def __init__(self, database: SqliteDatabase) -> None:
        self._database = database

    async def __aenter__(self) -> Transaction:
        self._tx = _SqliteTransaction(await self._database._take_reader())
        return self._tx

    async def __aexit__(self, kind: type[BaseException] | None, *exc: Any) -> None:
        if kind is None:
            await self._tx.finish("")
