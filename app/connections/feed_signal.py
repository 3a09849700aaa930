"""Waking whoever waits for the change feed: streams and Connect-session long polls.

One ``FeedSignal`` per process. It is poked by a Postgres ``LISTEN feed_events`` connection of
its own (one per process, reconnecting if lost, not taken from the pool), by this process's
database layer once any transaction that appended to the feed has committed
(``Database.on_feed_commit``), and, for what neither reaches (another process on SQLite, a
lost listener), waiters also wake every ``FEED_POLL_INTERVAL_SECONDS``. Whatever
else must hear of committed events (the subscriptions dispatcher) registers with ``on_poke``
rather than opening a listening connection of its own. A waiter
holds no database connection while it waits. At shutdown it is closed: every waiter wakes and
sees ``closed``, so open streams end instead of holding the server's graceful shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

import psycopg

from app.db.database import FEED_CHANNEL
from app.logs import get_logger

log = get_logger(__name__)

# After a lost listener connection: the first retry at once, then at most this far apart.
MAX_RECONNECT_WAIT = 5.0


class FeedSignal:
    def __init__(self, *, poll_interval: float) -> None:
        self.poll_interval = poll_interval
        self.closed = False
        self._event = asyncio.Event()
        self._callbacks: list[Callable[[], None]] = []

    def on_poke(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` at every poke; it runs on the event loop and must not block."""
        self._callbacks.append(callback)

    def ticket(self) -> asyncio.Event:
        """Take this before reading the feed, and wait on it after: no poke is missed between."""
        return self._event

    def poke(self) -> None:
        event, self._event = self._event, asyncio.Event()
        event.set()
        for callback in self._callbacks:
            callback()

    async def wait(self, ticket: asyncio.Event, at_most: float | None = None) -> None:
        """Until poked (since ``ticket`` was taken), closed, or the poll interval has passed."""
        if self.closed:
            return
        limit = self.poll_interval if at_most is None else min(at_most, self.poll_interval)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(limit, 0.0)):
                await ticket.wait()

    def close(self) -> None:
        self.closed = True
        self.poke()

    async def listen(self, conninfo: str) -> None:
        """Poke on every ``NOTIFY feed_events``; runs until cancelled, reconnecting if lost."""
        wait = 0.0
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    conninfo, autocommit=True, connect_timeout=5, application_name="feed-listener"
                ) as connection:
                    await connection.execute(f"LISTEN {FEED_CHANNEL}")
                    wait = 0.0
                    self.poke()  # whatever was appended while no one listened
                    async for _ in connection.notifies():
                        self.poke()
            except psycopg.Error as error:
                log.warning("feed_listener_lost", error_type=type(error).__name__)
            await asyncio.sleep(wait)
            wait = min(MAX_RECONNECT_WAIT, max(0.5, wait * 2))


def close_on_exit_signals(feed_signal: FeedSignal) -> None:
    """Close ``feed_signal`` as soon as the server is told to stop (SIGTERM, SIGINT).

    uvicorn waits for open responses before it runs the lifespan's shutdown, so a stream that
    waited for that would hold the shutdown until its graceful timeout. The server's own
    handlers still run after this one. Only possible from the main thread (``serve``); under
    a test client the lifespan's shutdown closes the signal.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(signum)

        def handler(
            number: int, frame: FrameType | None, previous: Any = previous
        ) -> None:  # pragma: no cover (exercised by the serve-process tests)
            loop.call_soon_threadsafe(feed_signal.close)
            if callable(previous):
                previous(number, frame)

        signal.signal(signum, handler)
