"""The FastAPI application: wiring only; the rules live in ``domain``.

``create_app`` reads the keys (failing fast on a bad keys file), installs the problem handlers
and middleware, and includes the routers. Its lifespan migrates the schema, opens the ledger,
the read pool and the availability reader over it, and (unless API-only) starts the background
workers; on shutdown it closes them in reverse order.
"""

from __future__ import annotations

import logging
import select
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import psycopg
from fastapi import FastAPI
from fastapi.routing import APIRoute
from psycopg import AsyncConnection
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool
from starlette.concurrency import run_in_threadpool

from adapters.garbage import tune_garbage_collection
from adapters.migrations import migrate
from adapters.postgres import POOL_RECONNECT_SECONDS, POOL_WAIT_SECONDS, ledger_env
from adapters.writer_process import WriterProcess
from api.auth import KeyRing
from api.availability_reads import AvailabilityReader
from api.hot_routes import HotRoutes
from api.metrics import Metrics
from api.metrics import router as metrics_router
from api.middleware import RequestMiddleware
from api.ops import OpsSessions
from api.ops import router as ops_router
from api.problems import install_problem_handlers, use_problem_media_type
from api.readiness import ReadinessCheck, database_check
from api.routes import (
    exceptions,
    locations,
    orders,
    pos,
    reads,
    service,
    stock,
    transfers,
    webhooks,
)
from api.settings import Settings
from api.workers import running_workers
from domain.service import Ledger

log = logging.getLogger("stockledger.api")

ReadPool = AsyncConnectionPool[AsyncConnection[TupleRow]]

READ_POOL_OPEN_TIMEOUT_SECONDS = 10.0


def _version() -> str:
    try:
        return version("stockledger")
    except PackageNotFoundError:
        return "0.0.0"


def _operation_id(route: APIRoute) -> str:
    """Stable, readable operation ids (``orders-place_order``) for clients and OpenAPI links."""
    return f"{route.tags[0]}-{route.name}" if route.tags else route.name


class StockledgerAPI(FastAPI):
    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is None:
            self.openapi_schema = use_problem_media_type(super().openapi())
        return self.openapi_schema


def create_app(
    settings: Settings | None = None,
    *,
    serve_api: bool = True,
    run_workers: bool = True,
) -> FastAPI:
    """The app. ``serve_api=False`` keeps only /health, /ready, /metrics (a workers-only process);
    ``run_workers=False`` starts no background workers (an API-only process)."""
    settings = settings or Settings()
    app = StockledgerAPI(
        title="stockledger",
        version=_version(),
        summary="Event-sourced inventory and order ledger for omnichannel retail.",
        lifespan=_lifespan,
        generate_unique_id_function=_operation_id,
        telemetry={
            "tracing": settings.opentelemetry,
            "metrics": settings.opentelemetry,
            "logs": settings.opentelemetry,
        },
    )
    app.state.settings = settings
    app.state.keyring = KeyRing.load(admin_key=settings.admin_key, keys_file=settings.api_keys_file)
    app.state.run_workers = run_workers
    app.state.serve_api = serve_api
    app.state.readiness_checks = []
    # Per app, not prometheus-client's global registry: several apps may share a process.
    app.state.metrics = Metrics(ledger=lambda: getattr(app.state, "ledger", None))
    app.state.ops_sessions = OpsSessions()

    install_problem_handlers(app)
    if serve_api:
        app.add_middleware(HotRoutes)  # just inside the request middleware
    app.add_middleware(
        RequestMiddleware, metrics=app.state.metrics, max_bytes=settings.max_body_bytes
    )

    # FastAPI tries the routes' patterns one by one, in the order their routers were included,
    # at a few microseconds each: the busiest (availability, orders) come first, the probes,
    # scrapes and the /ops page last.
    if serve_api:
        for area in (reads, orders, stock, pos, transfers, locations, webhooks, exceptions):
            app.include_router(area.router)
    app.include_router(service.router)
    app.include_router(metrics_router)
    if serve_api:
        app.include_router(ops_router)
    return app


async def check_idle_connection(connection: AsyncConnection[TupleRow]) -> None:
    """The pool's check before it lends a connection, without a round trip when all is well.

    An idle connection has nothing to read unless the server wrote to it: the error it sends
    before closing it (a restart, a terminated backend), or the close itself. Only then is the
    connection asked with psycopg's own check, which replaces it if it does not answer; that
    check alone asks the server every time, a second round trip for every read.
    """
    if connection.closed:
        raise psycopg.OperationalError("the connection is closed")
    pending = select.poll()
    pending.register(connection.fileno(), select.POLLIN)
    if pending.poll(0):
        await AsyncConnectionPool.check_connection(connection)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    if not settings.database_url:
        # The embedded PostgreSQL default (SPEC §6) is started by the CLI, not here.
        raise RuntimeError("STOCKLEDGER_DATABASE_URL is not set")
    database_url = settings.database_url
    applied = await run_in_threadpool(migrate, database_url)
    if applied:
        log.info("applied %d migrations: %s", len(applied), ", ".join(applied))

    env = ledger_env(database_url, **settings.ledger_overrides())
    ledger = await run_in_threadpool(Ledger, env=env)
    if settings.writer_process and app.state.serve_api:
        try:
            writer = await run_in_threadpool(WriterProcess(env).start)
        except BaseException:
            await run_in_threadpool(ledger.close)
            raise
        ledger.forward_writes(writer)
    read_pool: ReadPool = AsyncConnectionPool(
        database_url,
        min_size=1,
        max_size=settings.read_pool_size,
        kwargs={"autocommit": True},
        open=False,
        name="stockledger-reads",
        # Bounded: a read answers 503 quickly when PostgreSQL is down, and connections the
        # server closed (a restart) are checked out and replaced, never handed to a read.
        timeout=POOL_WAIT_SECONDS,
        check=check_idle_connection,
        reconnect_timeout=POOL_RECONNECT_SECONDS,
    )
    try:
        await read_pool.open(wait=True, timeout=READ_POOL_OPEN_TIMEOUT_SECONDS)
        app.state.ledger = ledger
        app.state.read_pool = read_pool
        app.state.availability_reader = AvailabilityReader(read_pool)
        checks: list[ReadinessCheck] = app.state.readiness_checks
        checks.append(database_check(read_pool))
        if app.state.run_workers:
            async with background_workers(app, settings, ledger, read_pool):
                tune_garbage_collection()
                yield
        else:
            tune_garbage_collection()
            yield
    finally:
        await read_pool.close()
        await run_in_threadpool(ledger.close)


@asynccontextmanager
async def background_workers(
    app: FastAPI, settings: Settings, ledger: Ledger, read_pool: ReadPool
) -> AsyncIterator[None]:
    """The views, reservation expiry and relays of this process (not with ``--api-only``)."""
    assert settings.database_url is not None
    async with running_workers(
        settings.database_url, settings.nats_url, ledger, read_pool, app.state.readiness_checks
    ) as workers:
        app.state.workers = workers
        yield
