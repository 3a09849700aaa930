"""A webhook sender that behaves like Nango's (docs/nango.md section 3).

Timeout 20 s; success is any 2xx; up to 2 retries, after about 3 s and 6 s, only for network
errors and statuses >= 500; a 4xx is final. Every attempt is recorded with its timing, so a test
can tell what the receiver answered while the database was down, and which deliveries such a
sender would have lost for good.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass, field

import httpx2

from tests.webhooks.helpers import auth_body, signed_headers

NANGO_TIMEOUT_SECONDS = 20.0
NANGO_RETRY_DELAYS = (3.0, 6.0)


@dataclass
class Attempt:
    started: float
    finished: float
    status: int | None  # None: a network error
    error: str | None = None


@dataclass
class Delivery:
    index: int
    body: bytes
    connection_id: str
    end_user_id: str
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def dedupe_key(self) -> str:
        return hashlib.sha256(self.body).hexdigest()

    @property
    def acknowledged(self) -> bool:
        return any(_is_success(attempt.status) for attempt in self.attempts)

    @property
    def lost(self) -> bool:
        return not self.acknowledged


def _is_success(status: int | None) -> bool:
    return status is not None and 200 <= status < 300


def make_delivery(index: int, run: str) -> Delivery:
    connection_id = f"{run}-conn-{index:06d}"
    end_user_id = f"{run}-user-{index:06d}"
    body = auth_body(
        connection_id=connection_id,
        integration="github",
        tags={"end_user_id": end_user_id, "organization_id": f"{run}-org-{index % 7}"},
    )
    return Delivery(index, body, connection_id, end_user_id)


@dataclass
class NangoLikeSender:
    base_url: str
    retry_delays: tuple[float, ...] = NANGO_RETRY_DELAYS
    timeout: float = NANGO_TIMEOUT_SECONDS
    path: str = "/webhooks/nango"

    async def deliver(self, client: httpx2.AsyncClient, delivery: Delivery) -> None:
        for attempt_number in range(len(self.retry_delays) + 1):
            if attempt_number:
                await asyncio.sleep(self.retry_delays[attempt_number - 1])
            started = time.monotonic()
            try:
                response = await client.post(
                    self.base_url + self.path,
                    content=delivery.body,
                    headers=signed_headers(delivery.body),
                    timeout=self.timeout,
                )
            except httpx2.TransportError as error:
                delivery.attempts.append(
                    Attempt(started, time.monotonic(), None, type(error).__name__)
                )
                continue
            delivery.attempts.append(Attempt(started, time.monotonic(), response.status_code))
            if response.status_code < 500:
                return  # 2xx: delivered; 4xx: Nango gives up at once


async def run_load(
    sender: NangoLikeSender,
    deliveries: list[Delivery],
    *,
    rate_per_second: float,
) -> None:
    """Start deliveries at a steady rate (events happen when they happen) and wait for all."""
    limits = httpx2.Limits(max_connections=200, max_keepalive_connections=50)
    async with httpx2.AsyncClient(limits=limits) as client:
        tasks = []
        started = time.monotonic()
        for number, delivery in enumerate(deliveries):
            delay = started + number / rate_per_second - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(sender.deliver(client, delivery)))
        await asyncio.gather(*tasks)
