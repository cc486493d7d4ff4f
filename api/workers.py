"""The background work of a ``serve`` process: the views, reservation expiry, the NATS relays.

Each worker is the single active one across processes (an advisory lock); the others stand by.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from starlette.concurrency import run_in_threadpool

from adapters.nats import Relays, relay_backlog_async
from api.readiness import CheckResult, ReadinessCheck
from domain.service import Ledger
from projections.base import ProjectionWorker
from projections.orders import unpaid_orders_placed_before
from projections.registry import VIEW_NAMES, all_views

log = logging.getLogger("stockledger.workers")

# A view further behind than this is reported as not ready.
MAX_READY_LAG = 10_000


def start_view_workers(database_url: str, ledger: Ledger) -> list[ProjectionWorker]:
    workers = [
        ProjectionWorker(database_url, ledger.mapper, projection)
        for projection in all_views(ledger.mapper)
    ]
    for worker in workers:
        worker.start()
    return workers


def stop_view_workers(workers: list[ProjectionWorker]) -> None:
    for worker in workers:
        worker.stop()


def projection_lag_check(pool: Any, ledger: Ledger) -> ReadinessCheck:
    async def projections() -> CheckResult:
        async with pool.connection() as connection:
            cursor = await connection.execute(
                "SELECT coalesce(max(notification_id), 0), "
                "(SELECT coalesce(min(position), 0) FROM projection_positions "
                " WHERE name = ANY(%s)) FROM ledger_events",
                (list(VIEW_NAMES),),
            )
            row = await cursor.fetchone()
        head, slowest = (int(row[0]), int(row[1])) if row else (0, 0)
        lag = max(0, head - slowest)
        return CheckResult("projections", lag <= MAX_READY_LAG, f"lag {lag}")

    return projections


async def expire_reservations_forever(pool: Any, ledger: Ledger) -> None:
    """Releases unpaid reservations past the TTL; the ledger re-checks every candidate."""
    ttl = ledger.reservation_ttl
    if not ttl:
        return
    interval = max(1.0, min(30.0, ttl.total_seconds() / 10))
    while True:
        await asyncio.sleep(interval)
        try:
            async with pool.connection() as connection:
                candidates = await unpaid_orders_placed_before(connection, datetime.now(UTC) - ttl)
            if candidates:
                expired = await run_in_threadpool(ledger.expire_reservations, candidates)
                if expired:
                    log.info("released the reservations of %d expired orders", len(expired))
        except Exception:
            log.exception("reservation expiry pass failed; will retry")


def nats_check(relays: Relays, pool: Any) -> ReadinessCheck:
    """NATS being down does not stop writes (postings wait in the log), so it does not make the
    process unready; the check says so, with what is waiting."""

    async def nats() -> CheckResult:
        if relays.nats_connected:
            return CheckResult("nats", True)
        async with pool.connection() as connection:
            backlog = await relay_backlog_async(connection)
        waiting = sum(item.behind for item in backlog.values())
        return CheckResult("nats", True, f"unreachable: {waiting} events wait to be published")

    return nats


@contextlib.asynccontextmanager
async def running_workers(
    database_url: str,
    nats_url: str | None,
    ledger: Ledger,
    pool: Any,
    checks: list[ReadinessCheck],
) -> AsyncIterator[dict[str, Any]]:
    views = await run_in_threadpool(start_view_workers, database_url, ledger)
    checks.append(projection_lag_check(pool, ledger))
    relays = Relays(database_url, nats_url, ledger.mapper, ledger) if nats_url else None
    if relays is not None:
        relays.start()
        checks.append(nats_check(relays, pool))
    expiry = asyncio.create_task(expire_reservations_forever(pool, ledger))
    try:
        yield {"views": views, "relays": relays}
    finally:
        expiry.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await expiry
        if relays is not None:
            await run_in_threadpool(relays.stop)
        await run_in_threadpool(stop_view_workers, views)
