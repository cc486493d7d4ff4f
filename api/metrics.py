"""``GET /metrics``: Prometheus metrics (prometheus-client), on a registry of the app's own.

Each app has its own ``CollectorRegistry`` (``app.state.metrics.registry``), so several apps in
one process (the tests) never share or clash over a series. What is measured:

- ``stockledger_http_requests_total{method,route,status}`` and
  ``stockledger_http_request_duration_seconds{method,route}``: every request, by route template
  (``/v1/orders/{order_id}/payment``; ``unmatched`` for paths no route serves).
- ``stockledger_commands_total{command,outcome}``: the writes (``POST``/``PUT``/``PATCH``/
  ``DELETE`` under ``/v1/``) by operation id (``stock-record_receipt``) and outcome: ``ok``,
  ``refused:<problem type>`` (``refused:insufficient-stock``...) or ``error`` (a 5xx).
- ``stockledger_insufficient_stock_refusals_total{command}``: requests refused for lack of stock.
- ``stockledger_concurrency_retries_total{reason}``: group-commit batches replayed because another
  process changed an aggregate (``conflict``) or because a refusal was decided on stale state
  (``stale_refusal``); with ``stockledger_group_commit_batches_total`` and
  ``stockledger_group_commit_commands_total`` (their ratio is the mean batch size). Read from
  ``ledger.writer_stats`` at scrape time.
- Read from the database at scrape time, within ``DATABASE_READ_TIMEOUT_SECONDS``:
  ``stockledger_ledger_head_position``, ``stockledger_projection_position{view}``,
  ``stockledger_projection_lag_events{view}``, ``stockledger_outbox_backlog_events{relay}`` (what
  a NATS relay has yet to publish), ``stockledger_open_exceptions``, ``stockledger_discrepancies``,
  and ``stockledger_metrics_database_up`` (0 when those reads failed or timed out: their series
  are then missing from that scrape, never stale).
- The process and Python runtime (``process_*``, ``python_*``).

The helpers reading the database (``projection_lags``, ``outbox_backlog``...) also feed /ops.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from fastapi import APIRouter, Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from psycopg import AsyncConnection
from starlette.types import Scope

from adapters import exceptions as exception_store
from adapters.postgres import POOL_WAIT_SECONDS
from projections.registry import VIEW_NAMES

log = logging.getLogger("stockledger.metrics")

PREFIX = "stockledger"
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Any other method a client makes up is counted as OTHER: label values must stay few.
KNOWN_METHODS = WRITE_METHODS | {"GET", "HEAD", "OPTIONS"}
COMMAND_PATH_PREFIX = "/v1/"
UNMATCHED_ROUTE = "unmatched"
# The whole of a scrape's database reads, and each statement within them.
DATABASE_READ_TIMEOUT_SECONDS = 4.0
_STATEMENT_TIMEOUT = "SET LOCAL statement_timeout = '2s'"
# Problem types become label values: only plain slugs, so a label's values stay few.
_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,48}$")


class Metrics:
    """The app's registry and the series the request path updates."""

    def __init__(self, ledger: Callable[[], Any] = lambda: None) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.http_requests = Counter(
            f"{PREFIX}_http_requests",
            "HTTP requests answered, by route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.http_latency = Histogram(
            f"{PREFIX}_http_request_duration_seconds",
            "Time to answer an HTTP request, by route template.",
            ["method", "route"],
            registry=self.registry,
        )
        self.commands = Counter(
            f"{PREFIX}_commands",
            "Write commands by operation and outcome (ok, refused:<problem type>, error).",
            ["command", "outcome"],
            registry=self.registry,
        )
        self.insufficient_stock = Counter(
            f"{PREFIX}_insufficient_stock_refusals",
            "Requests refused because the stock could not cover them (409 insufficient-stock).",
            ["command"],
            registry=self.registry,
        )
        self.registry.register(CommitterCollector(ledger))
        # The series of each (method, route, status), found once: ``labels()`` takes a lock and
        # checks its arguments on every call. Few entries: methods, routes and statuses are.
        self._request_series: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe(
        self,
        *,
        method: str,
        route: str,
        command: str | None,
        status: int,
        problem_type: str | None,
        seconds: float,
    ) -> None:
        key = (method, route, status)
        series = self._request_series.get(key)
        if series is None:
            series = (
                self.http_requests.labels(method, route, str(status)),
                self.http_latency.labels(method, route),
            )
            self._request_series[key] = series
        requests, latency = series
        requests.inc()
        latency.observe(seconds)
        if command is None:
            return
        outcome = command_outcome(status, problem_type)
        self.commands.labels(command, outcome).inc()
        if outcome == "refused:insufficient-stock":
            self.insufficient_stock.labels(command).inc()


def command_outcome(status: int, problem_type: str | None) -> str:
    if status < 400:
        return "ok"
    if status >= 500:
        return "error"
    slug = problem_type if problem_type and _SLUG.match(problem_type) else str(status)
    return f"refused:{slug}"


class CommitterCollector:
    """The group committer's counters (``ledger.writer_stats``), read at scrape time."""

    def __init__(self, ledger: Callable[[], Any]) -> None:
        self._ledger = ledger

    def describe(self) -> Iterable[Metric]:
        return self._families({})

    def collect(self) -> Iterable[Metric]:
        ledger = self._ledger()
        stats = getattr(ledger, "writer_stats", None)
        if not isinstance(stats, dict):
            return []
        return self._families(stats)

    @staticmethod
    def _families(stats: dict[str, int]) -> list[Metric]:
        retries = CounterMetricFamily(
            f"{PREFIX}_concurrency_retries",
            "Group-commit batches replayed: another process changed an aggregate (conflict), or a "
            "refusal was decided on state that had changed (stale_refusal).",
            labels=["reason"],
        )
        batches = CounterMetricFamily(
            f"{PREFIX}_group_commit_batches", "Group-commit transactions recorded."
        )
        commands = CounterMetricFamily(
            f"{PREFIX}_group_commit_commands",
            "Commands answered through group commit (divided by batches: the mean batch size).",
        )
        if stats:
            retries.add_metric(["conflict"], stats.get("conflicts", 0))
            retries.add_metric(["stale_refusal"], stats.get("stale_refusals", 0))
            batches.add_metric([], stats.get("batches", 0))
            commands.add_metric([], stats.get("commands", 0))
        return [retries, batches, commands]


# --- the request path -----------------------------------------------------------------------------
def route_labels(scope: Scope) -> tuple[str, str | None]:
    """The route template of the matched route, and its operation id when it is a command."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if not isinstance(path, str):
        return UNMATCHED_ROUTE, None
    if scope.get("method") not in WRITE_METHODS or not path.startswith(COMMAND_PATH_PREFIX):
        return path, None
    return path, _operation_id(scope, route)


def _operation_id(scope: Scope, route: Any) -> str:
    """The route's OpenAPI ``operationId`` (``stock-record_receipt``), as the app names it."""
    generate = getattr(
        getattr(scope.get("app"), "router", None), "generate_unique_id_function", None
    )
    if callable(generate):
        return str(generate(route))
    return str(getattr(route, "name", None) or route.path)


def problem_type(body: bytes) -> str | None:
    """The ``type`` of a problem+json body, if it has one."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return None
    kind = parsed.get("type") if isinstance(parsed, dict) else None
    return kind if isinstance(kind, str) else None


# --- reading the database (for /metrics and /ops) ------------------------------------------------
@dataclass(frozen=True)
class ViewLag:
    view: str
    position: int
    head: int
    lag: int
    updated_at: datetime | None


@dataclass(frozen=True)
class RelayLag:
    relay: str
    position: int
    head: int
    #: events after the relay's position that it has to publish (the ERP relay: postings)
    pending: int
    #: False when ``pending`` could not be counted in time and is the upper bound head - position
    exact: bool = True


@asynccontextmanager
async def bounded(connection: AsyncConnection[Any]) -> AsyncIterator[AsyncConnection[Any]]:
    """A transaction (a savepoint inside one) whose statements give up after a bounded time."""
    async with connection.transaction():
        await connection.execute(_STATEMENT_TIMEOUT)
        yield connection


async def ledger_head(connection: AsyncConnection[Any]) -> int:
    cursor = await connection.execute("SELECT coalesce(max(notification_id), 0) FROM ledger_events")
    row = await cursor.fetchone()
    return int(row[0]) if row else 0


async def projection_lags(
    connection: AsyncConnection[Any], views: Sequence[str] = VIEW_NAMES
) -> list[ViewLag]:
    """Each view's position and how far it trails the log's head (in positions)."""
    async with bounded(connection):
        head = await ledger_head(connection)
        cursor = await connection.execute(
            "SELECT name, position, updated_at FROM projection_positions WHERE name = ANY(%s)",
            (list(views),),
        )
        found = {str(row[0]): (int(row[1]), row[2]) for row in await cursor.fetchall()}
    lags = []
    for view in views:
        position, updated_at = found.get(view, (0, None))
        lags.append(ViewLag(view, position, head, max(0, head - position), updated_at))
    return lags


async def outbox_backlog(connection: AsyncConnection[Any]) -> list[RelayLag]:
    """What each NATS relay has yet to publish (the relays' own count, when it is quick)."""
    from adapters.nats import relay_backlog_async  # the NATS client loads only when asked

    try:
        async with bounded(connection):
            counted = await relay_backlog_async(connection)
        return [
            RelayLag(name, item.position, item.head, item.pending) for name, item in counted.items()
        ]
    except psycopg.errors.QueryCanceled:
        log.warning("counting the relays' backlog took too long; reporting its upper bound")
    async with bounded(connection):
        head = await ledger_head(connection)
        cursor = await connection.execute("SELECT name, position FROM relay_positions")
        rows = await cursor.fetchall()
    return [
        RelayLag(str(name), int(position), head, max(0, head - int(position)), exact=False)
        for name, position in rows
    ]


async def count_discrepancies(connection: AsyncConnection[Any]) -> int:
    async with bounded(connection):
        cursor = await connection.execute("SELECT count(*) FROM view_discrepancies")
        row = await cursor.fetchone()
    return int(row[0]) if row else 0


async def count_open_exceptions(connection: AsyncConnection[Any]) -> int:
    async with bounded(connection):
        return await exception_store.acount_open(connection)


async def _database_families(pool: Any) -> list[Metric]:
    # A database that gives no connection within the pools' wait is down: say so at once.
    async with pool.connection(timeout=POOL_WAIT_SECONDS) as connection:
        lags = await projection_lags(connection)
        relays = await outbox_backlog(connection)
        open_exceptions = await count_open_exceptions(connection)
        discrepancies = await count_discrepancies(connection)
    head = GaugeMetricFamily(
        f"{PREFIX}_ledger_head_position", "Global position of the last recorded event."
    )
    head.add_metric([], lags[0].head if lags else 0)
    positions = GaugeMetricFamily(
        f"{PREFIX}_projection_position", "Global position each view has reached.", labels=["view"]
    )
    lag = GaugeMetricFamily(
        f"{PREFIX}_projection_lag_events",
        "How far each view trails the log (head position minus the view's).",
        labels=["view"],
    )
    for item in lags:
        positions.add_metric([item.view], item.position)
        lag.add_metric([item.view], item.lag)
    backlog = GaugeMetricFamily(
        f"{PREFIX}_outbox_backlog_events",
        "Events a NATS relay has yet to publish (for erp-postings: postings).",
        labels=["relay"],
    )
    for relay in relays:
        backlog.add_metric([relay.relay], relay.pending)
    exceptions = GaugeMetricFamily(
        f"{PREFIX}_open_exceptions", "Inbound inputs that could not be applied, awaiting a fix."
    )
    exceptions.add_metric([], open_exceptions)
    found = GaugeMetricFamily(
        f"{PREFIX}_discrepancies",
        "Stock positions where a fact took more than the ledger held (until counted or received).",
    )
    found.add_metric([], discrepancies)
    return [head, positions, lag, backlog, exceptions, found]


async def database_families(pool: Any) -> list[Metric]:
    """The series read from the database, or none (and ``..._database_up 0``) if it fails."""
    up = GaugeMetricFamily(
        f"{PREFIX}_metrics_database_up",
        "1 when this scrape could read the database-derived series in time, else 0.",
    )
    families: list[Metric] = []
    if pool is not None:
        try:
            families = await asyncio.wait_for(
                _database_families(pool), timeout=DATABASE_READ_TIMEOUT_SECONDS
            )
        except (TimeoutError, psycopg.Error, OSError) as error:
            log.warning("metrics: database reads failed: %s", str(error).strip() or "timeout")
    up.add_metric([], 1 if families else 0)
    return [up, *families]


class _Scrape:
    """The registry plus this scrape's database series, as one collector."""

    def __init__(self, registry: CollectorRegistry, extra: Sequence[Metric]) -> None:
        self.registry = registry
        self.extra = extra

    def collect(self) -> Iterable[Metric]:
        yield from self.registry.collect()
        yield from self.extra


router = APIRouter(tags=["service"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text"}},
)
async def metrics(request: Request) -> Response:
    """Prometheus metrics (text exposition format). Needs no key."""
    collected: Metrics = request.app.state.metrics
    extra = await database_families(getattr(request.app.state, "read_pool", None))
    body = generate_latest(_Scrape(collected.registry, extra))
    return Response(body, media_type=CONTENT_TYPE_LATEST)
