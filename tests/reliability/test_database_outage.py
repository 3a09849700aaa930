"""Postgres stops and starts again while Nango-like deliveries keep coming.

During the outage the receiver must answer 503 (Nango retries 5xx), never 2xx (it would be a
lie) and never 500; afterwards it must recover without a restart; every delivery it acknowledged
must be stored exactly once. The sender retries like Nango (2 retries, about 3 s and 6 s apart),
so the test also counts the deliveries such a sender would have lost for good, and shows that
``reconcile`` brings back the connections they carried.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx2
import pytest

from tests import secret_scan
from tests.conftest import TEST_API_KEY
from tests.reliability import scenario
from tests.reliability.conftest import LONG, MODE, RESULTS_DIR, postgres_pass_only, write_results
from tests.reliability.nango_server import FakeNangoServer, running
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
    before_seconds: float
    outage_seconds: float
    after_seconds: float
    retry_delays: tuple[float, ...]
    recovery_grace_seconds: float


# Long: Nango's real retry delays and an outage shorter than their 9 s span, so a Nango-like
# sender loses nothing. Short: delays scaled down by 10, so the same outage outlasts them and
# some deliveries are lost, which is what reconcile is for.
PLAN = (
    Plan(25, 10, 5, 20, NANGO_RETRY_DELAYS, 10)
    if LONG
    else Plan(25, 2, 2.5, 2.5, tuple(delay / 10 for delay in NANGO_RETRY_DELAYS), 1)
)


@dataclass
class OutageRun:
    cluster: PgCluster
    served: Served
    fake_nango: FakeNangoServer
    deliveries: list[Delivery]
    down_at: float  # pg_ctl stop returned: the database is gone
    up_at: float  # pg_ctl start called
    ready_at: float  # pg_ctl start returned


async def _scenario(served: Served, cluster: PgCluster, deliveries: list[Delivery]) -> Any:
    sender = NangoLikeSender(served.base_url, retry_delays=PLAN.retry_delays)
    load = asyncio.create_task(run_load(sender, deliveries, rate_per_second=PLAN.rate_per_second))
    await asyncio.sleep(PLAN.before_seconds)
    await asyncio.to_thread(cluster.stop, "fast")
    down_at = time.monotonic()
    await asyncio.sleep(PLAN.outage_seconds)
    up_at = time.monotonic()
    await asyncio.to_thread(cluster.start)
    ready_at = time.monotonic()
    await asyncio.wait_for(load, timeout=120)
    return down_at, up_at, ready_at


@pytest.fixture(scope="module")
def outage(pgcluster: PgCluster) -> Iterator[OutageRun]:
    total = int(
        PLAN.rate_per_second * (PLAN.before_seconds + PLAN.outage_seconds + PLAN.after_seconds)
    )
    run_id = "outage"
    deliveries = [make_delivery(index, run_id) for index in range(total)]
    fake = FakeNangoServer(secret_key=scenario.NANGO_SECRET)
    for delivery in deliveries:
        fake.add(
            connection_id=delivery.connection_id,
            integration="github",
            tags={"end_user_id": delivery.end_user_id},
        )
    secret_scan.register_secret(scenario.NANGO_SECRET, scenario.SECRET_KEY)
    output = RESULTS_DIR / f"serve-database-outage-{MODE}.log"
    output.parent.mkdir(parents=True, exist_ok=True)
    with running(fake) as nango_url:
        served = start(scenario.server_env(pgcluster, nango_url), cwd=output.parent, log=output)
        try:
            down_at, up_at, ready_at = asyncio.run(_scenario(served, pgcluster, deliveries))
            yield OutageRun(pgcluster, served, fake, deliveries, down_at, up_at, ready_at)
        finally:
            stop(served)
            secret_scan.add_output(served.text(), source="serve (database outage)")


def test_outage_answers_503_recovers_and_stores_every_acknowledged_delivery_once(
    outage: OutageRun,
) -> None:
    attempts = [attempt for delivery in outage.deliveries for attempt in delivery.attempts]
    statuses = sorted({attempt.status for attempt in attempts}, key=str)
    assert not [a for a in attempts if a.status is not None and a.status >= 500 and a.status != 503]
    assert not [a for a in attempts if a.status is not None and 400 <= a.status < 500], statuses
    assert not [a for a in attempts if a.status is None], "the server itself never went away"

    during = [a for a in attempts if a.started >= outage.down_at and a.finished <= outage.up_at]
    assert during, "no request was answered while the database was down: the load is too thin"
    assert {a.status for a in during} == {503}

    after_restart = [a for a in attempts if a.started >= outage.ready_at]
    not_ok_after = [a for a in after_restart if a.status != 200]
    figures = scenario.check_stored_exactly_once(outage.cluster, outage.deliveries)
    figures.update(
        {
            "answered_during_outage": len(during),
            "answered_503_during_outage": sum(1 for a in during if a.status == 503),
            "outage_seconds": round(outage.up_at - outage.down_at, 2),
            "answered_503_after_restart": len(not_ok_after),
            # Until the retry wave of the outage is absorbed, requests that wait longer than
            # DATABASE_POOL_TIMEOUT_SECONDS for a connection get 503 (which Nango retries).
            "seconds_from_restart_to_last_503": round(
                max((a.finished for a in not_ok_after), default=outage.ready_at) - outage.ready_at,
                2,
            ),
            "retry_delays_seconds": list(PLAN.retry_delays),
            "rate_per_second": PLAN.rate_per_second,
        }
    )
    write_results("database-outage", figures)

    assert any(a.status == 200 for a in after_restart), "no request succeeded after the restart"
    settled = [a for a in attempts if a.started >= outage.ready_at + PLAN.recovery_grace_seconds]
    assert settled, "no request after the recovery grace period: the load is too short"
    failed_after = [a for a in settled if a.status != 200]
    assert not failed_after, f"not recovered without restart: {failed_after[:5]}"
    assert outage.served.process.poll() is None, "the service restarted or died"
    if LONG:
        # Nango's real retries span 9 s; an outage shorter than that must lose nothing.
        assert figures["lost_by_a_nango_like_sender"] == 0


def test_reconcile_recovers_the_connections_of_lost_deliveries(outage: OutageRun) -> None:
    lost = [delivery for delivery in outage.deliveries if delivery.lost]
    before = scenario.stored_connections(outage.cluster)
    missing_before = [d.connection_id for d in lost if d.connection_id not in before]

    response = httpx2.post(
        outage.served.base_url + "/v1/reconcile",
        headers={"Authorization": f"Bearer {TEST_API_KEY}"},
        timeout=60,
    )
    assert response.status_code in {200, 201, 202}, response.text
    deadline = time.monotonic() + 60
    while True:
        after = scenario.stored_connections(outage.cluster)
        still_missing = [d.connection_id for d in lost if d.connection_id not in after]
        if not still_missing or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert not still_missing, f"reconcile did not recover {len(still_missing)} connections"
    wrong_owner = [d.connection_id for d in lost if after[d.connection_id] != d.end_user_id]
    assert not wrong_owner
    assert all(d.connection_id in after for d in outage.deliveries)
    write_results(
        "database-outage-reconcile",
        {
            "lost_deliveries": len(lost),
            "connections_missing_before_reconcile": len(missing_before),
            "connections_missing_after_reconcile": len(still_missing),
            "fake_nango_requests": len(outage.fake_nango.requests),
        },
    )
