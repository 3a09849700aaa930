"""``kill -9`` of a uvicorn worker while Nango-like deliveries keep coming.

The supervisor of ``nango-registry serve`` (``WEB_CONCURRENCY=2``) respawns the dead worker.
Requests in flight on the killed worker fail at the network level, which the sender retries
(Nango retries network errors); a delivery committed just before the kill but never answered
comes back as a duplicate. Invariant: every acknowledged delivery is stored exactly once, and a
Nango-like sender loses nothing.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from dataclasses import dataclass

import pytest

from tests import secret_scan
from tests.reliability import scenario
from tests.reliability.conftest import LONG, MODE, RESULTS_DIR, postgres_pass_only, write_results
from tests.reliability.pgcluster import PgCluster
from tests.reliability.sender import (
    NANGO_RETRY_DELAYS,
    Delivery,
    NangoLikeSender,
    make_delivery,
    run_load,
)
from tests.serve import Served, start, stop

pytestmark = [postgres_pass_only(), pytest.mark.slow]


@dataclass(frozen=True)
class Plan:
    rate_per_second: float
    seconds: float
    kills_at: tuple[float, ...]
    retry_delays: tuple[float, ...]


PLAN = (
    Plan(30, 30, (8, 18), NANGO_RETRY_DELAYS)
    if LONG
    else Plan(30, 5, (2,), tuple(delay / 10 for delay in NANGO_RETRY_DELAYS))
)


@dataclass
class Kill:
    pid: int
    at: float
    respawned_pid: int | None = None
    respawn_seconds: float | None = None


async def _wait_for_respawn(
    served: Served, kill: Kill, before: list[int], timeout: float = 20
) -> None:
    while time.monotonic() - kill.at < timeout:
        new = set(served.worker_pids()) - set(before)
        if new and kill.pid not in served.worker_pids():
            kill.respawned_pid = max(new)
            kill.respawn_seconds = round(time.monotonic() - kill.at, 2)
            return
        await asyncio.sleep(0.05)


async def _scenario(served: Served, deliveries: list[Delivery]) -> list[Kill]:
    sender = NangoLikeSender(served.base_url, retry_delays=PLAN.retry_delays)
    started = time.monotonic()
    load = asyncio.create_task(run_load(sender, deliveries, rate_per_second=PLAN.rate_per_second))
    kills = []
    for at in PLAN.kills_at:
        await asyncio.sleep(max(0.0, started + at - time.monotonic()))
        before = served.worker_pids()
        victim = before[0]
        os.kill(victim, signal.SIGKILL)
        kill = Kill(pid=victim, at=time.monotonic())
        kills.append(kill)
        await _wait_for_respawn(served, kill, before)
    await asyncio.wait_for(load, timeout=120)
    return kills


def test_killed_worker_loses_no_acknowledged_delivery(pgcluster: PgCluster) -> None:
    secret_scan.register_secret(scenario.NANGO_SECRET, scenario.SECRET_KEY)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    deliveries = [
        make_delivery(index, "crash") for index in range(int(PLAN.rate_per_second * PLAN.seconds))
    ]
    served = start(
        scenario.server_env(pgcluster),
        cwd=RESULTS_DIR,
        log=RESULTS_DIR / f"serve-worker-crash-{MODE}.log",
        workers=2,
    )
    try:
        workers_before = served.worker_pids()
        kills = asyncio.run(_scenario(served, deliveries))
        assert served.process.poll() is None, "the supervisor died"
    finally:
        stop(served)
        secret_scan.add_output(served.text(), source="serve (worker crash)")

    assert len(workers_before) == 2
    for kill in kills:
        assert kill.respawned_pid is not None, f"worker {kill.pid} was not respawned"

    attempts = [attempt for delivery in deliveries for attempt in delivery.attempts]
    answered = [attempt for attempt in attempts if attempt.status is not None]
    network_errors = [attempt for attempt in attempts if attempt.status is None]
    # Only the dead worker's requests fail, and at the network level. While one worker carries
    # the whole load (until the respawned one has started), a request that waits longer than
    # DATABASE_POOL_TIMEOUT_SECONDS for a connection is answered 503, which Nango retries.
    assert {attempt.status for attempt in answered} <= {200, 503}
    assert {attempt.error for attempt in network_errors} <= {
        "RemoteProtocolError",
        "ReadError",
        "WriteError",
        "ConnectError",
    }

    figures = scenario.check_stored_exactly_once(pgcluster, deliveries)
    figures.update(
        {
            "workers": 2,
            "kills": [
                {
                    "respawn_seconds": kill.respawn_seconds,
                    "respawned": kill.respawned_pid is not None,
                }
                for kill in kills
            ],
            "network_errors_retried": len(network_errors),
            "retried_then_acknowledged": sum(
                1 for delivery in deliveries if len(delivery.attempts) > 1 and delivery.acknowledged
            ),
            "retry_delays_seconds": list(PLAN.retry_delays),
            "rate_per_second": PLAN.rate_per_second,
        }
    )
    figures["answered_503"] = sum(1 for attempt in answered if attempt.status == 503)
    write_results("worker-crash", figures)
    if LONG:
        # With Nango's real retry delays (3 s, 6 s) nothing may be lost. The short version's
        # delays are scaled down, so a busy machine can outlast them; it reports the figure.
        assert figures["lost_by_a_nango_like_sender"] == 0
