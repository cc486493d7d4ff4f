"""Readiness checks: what must answer before this process should receive traffic.

``GET /ready`` runs every check in ``app.state.readiness_checks`` concurrently. The database check
is registered by the app; the NATS connection and projection lag checks are added by whoever
starts those (see the worker hook in ``api.app``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import psycopg
from psycopg_pool import AsyncConnectionPool

from adapters.postgres import POOL_WAIT_SECONDS

log = logging.getLogger("stockledger.api")

# Every check answers within this (so /ready does, checks running concurrently): a database
# that does not give a connection within the pools' wait is reported unreachable.
CHECK_TIMEOUT_SECONDS = POOL_WAIT_SECONDS + 0.5


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    # Kept short and free of connection strings: /ready answers without a key.
    detail: str = "ok"


ReadinessCheck = Callable[[], Awaitable[CheckResult]]


def database_check(pool: AsyncConnectionPool) -> ReadinessCheck:
    async def database() -> CheckResult:
        try:
            async with pool.connection(timeout=POOL_WAIT_SECONDS) as connection:
                await connection.execute("SELECT 1")
        except Exception as error:
            log.warning("readiness: database check failed: %s", type(error).__name__)
            return CheckResult("database", False, "unreachable")
        return CheckResult("database", True)

    return database


async def run_checks(checks: Sequence[ReadinessCheck]) -> list[CheckResult]:
    async def bounded(check: ReadinessCheck) -> CheckResult:
        name = getattr(check, "__name__", "check")
        try:
            return await asyncio.wait_for(check(), timeout=CHECK_TIMEOUT_SECONDS)
        except TimeoutError:
            return CheckResult(name, False, "timed out")
        except psycopg.OperationalError:
            # A check that reads the database (projection lag, the NATS backlog) cannot tell.
            return CheckResult(name, False, "unknown: database unreachable")
        except Exception:
            log.exception("readiness check %s failed", name)
            return CheckResult(name, False, "failed")

    return list(await asyncio.gather(*(bounded(check) for check in checks)))
