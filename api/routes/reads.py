"""Reads: availability, orders, history, the event feed, locations and discrepancies.

Views answer availability and orders; history and the feed read the log itself. ``min_position``
gives read-your-writes: the read waits (bounded) until the view has reached that position.
"""

from __future__ import annotations

import asyncio
import re
import time
from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

import orjson
from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import BeforeValidator, StringConstraints

from api.auth import ReadAccess, read_access
from api.availability_reads import AvailabilityReader
from api.deps import LedgerDep, ReadPoolDep
from api.problems import ApiProblem, problem_responses
from api.schemas import SkuAvailabilityOut
from domain.keys import CHANNEL_PATTERN, LOCATION_PATTERN, SKU_PATTERN
from projections import availability, discrepancies, events, orders
from projections.availability import AvailabilityProjection
from projections.discrepancies import DiscrepanciesProjection
from projections.orders import OrdersProjection

router = APIRouter(
    prefix="/v1", tags=["reads"], responses=problem_responses(401, 403, 404, 422, 504)
)

READ_YOUR_WRITES_TIMEOUT_SECONDS = 5.0
_ISO_DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}([Tt ]\d{2}:\d{2}.*)?$")
MAX_BULK_SKUS = 500

MAX_SKU_LENGTH = 64
AVAILABILITY_ROUTE = "/availability/{sku:path}"
AVAILABILITY_PREFIX = router.prefix + "/availability/"
SkuPath = Annotated[str, Path(pattern=SKU_PATTERN.pattern, max_length=MAX_SKU_LENGTH)]
# Declared so the OpenAPI document shows it; the handler's fullmatch check stays.
SkuItem = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=SKU_PATTERN.pattern)
]
LocationPath = Annotated[str, Path(pattern=LOCATION_PATTERN.pattern, max_length=64)]
MinPosition = Annotated[
    int | None,
    Query(ge=0, le=2**62, description="Wait until the view has reached this global position."),
]


async def _await_view(pool: Any, view: str, min_position: int | None) -> None:
    if min_position is None:
        return
    deadline = time.monotonic() + READ_YOUR_WRITES_TIMEOUT_SECONDS
    delay = 0.005
    while True:
        async with pool.connection() as connection:
            reached = await availability.view_position(connection, view)
        if reached >= min_position:
            return
        _give_up_past(deadline, view, reached, min_position)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.1)


def _give_up_past(deadline: float, view: str, reached: int, min_position: int) -> None:
    if time.monotonic() >= deadline:
        raise ApiProblem(
            504,
            "projection-lag",
            f"the {view} view is at position {reached}, not yet at {min_position}; retry",
            position=reached,
        )


def _iso_8601(value: object) -> object:
    # pydantic would also read a bare number as seconds since 1970; only ISO 8601 is documented.
    if isinstance(value, str) and not _ISO_DATE_TIME.match(value):
        raise ValueError("must be an ISO 8601 date-time, e.g. 2026-11-27T10:00:00Z")
    return value


def _not_found(detail: str) -> ApiProblem:
    return ApiProblem(404, "not-found", detail)


def plain_sku(sku: str) -> bool:
    # What SkuPath accepts (fullmatch: not even a trailing newline).
    return len(sku) <= MAX_SKU_LENGTH and SKU_PATTERN.fullmatch(sku) is not None


async def get_sku_availability(
    sku: SkuPath,
    _: ReadAccess,
    request: Request,
    min_position: MinPosition = None,
) -> Response:
    return await _sku_availability(request, sku, min_position)


router.add_api_route(
    AVAILABILITY_ROUTE,
    get_sku_availability,
    methods=["GET"],
    summary="A SKU's buckets per location and ATS per channel",
    response_model=SkuAvailabilityOut,
)


async def answer_availability(request: Request, sku: str) -> Response:
    """``GET /v1/availability/{sku}`` for a plain request (see ``api.hot_routes``): the same key
    check and answer as the route's."""
    await read_access(request)
    return await _sku_availability(request, sku, None)


async def _sku_availability(request: Request, sku: str, min_position: int | None) -> Response:
    # Answered together with the reads arriving with it (api.availability_reads), waiting for
    # read-your-writes on the answer itself (it carries the view's position), and sent as the
    # view made it, not validated again against the model that documents it.
    reader: AvailabilityReader = request.app.state.availability_reader
    deadline = time.monotonic() + READ_YOUR_WRITES_TIMEOUT_SECONDS
    delay = 0.005
    while True:
        found = await reader.read(sku)
        if min_position is None or found["position"] >= min_position:
            return Response(orjson.dumps(found), media_type="application/json")
        _give_up_past(deadline, AvailabilityProjection.name, found["position"], min_position)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.1)


@router.get("/availability", summary="Available-to-sell on one channel for many SKUs")
async def get_channel_availability(
    _: ReadAccess,
    pool: ReadPoolDep,
    channel: Annotated[str, Query(pattern=CHANNEL_PATTERN.pattern)],
    sku: Annotated[list[SkuItem], Query(min_length=1, max_length=MAX_BULK_SKUS)],
    min_position: MinPosition = None,
) -> dict[str, Any]:
    # fullmatch: ``$`` alone would let a trailing newline through.
    bad = [s for s in sku if not SKU_PATTERN.fullmatch(s)]
    if bad:
        raise ApiProblem(422, "validation", f"SKU {bad[0]!r} is not a valid SKU")
    await _await_view(pool, AvailabilityProjection.name, min_position)
    async with pool.connection() as connection:
        return await availability.channel_availability(
            connection, channel, list(dict.fromkeys(sku))
        )


@router.get("/orders/{order_id}/history", summary="Every event of an order")
async def get_order_history(
    order_id: UUID, _: ReadAccess, pool: ReadPoolDep, ledger: LedgerDep
) -> dict[str, Any]:
    async with pool.connection() as connection:
        found = await events.order_history(connection, ledger.mapper, order_id)
    if found is None:
        raise _not_found(f"order {order_id} is not known")
    return found


@router.get("/orders/{order_id}", summary="An order: status, lines and allocations")
async def get_order(
    order_id: UUID, _: ReadAccess, pool: ReadPoolDep, min_position: MinPosition = None
) -> dict[str, Any]:
    await _await_view(pool, OrdersProjection.name, min_position)
    async with pool.connection() as connection:
        found = await orders.get_order(connection, order_id)
    if found is None:
        raise _not_found(f"order {order_id} is not known")
    return found


@router.get("/orders", summary="Orders by the channel's own id (a list)")
async def find_orders(
    _: ReadAccess,
    pool: ReadPoolDep,
    channel: Annotated[str | None, Query(pattern=CHANNEL_PATTERN.pattern)] = None,
    external_id: Annotated[str | None, Query(min_length=1, max_length=128)] = None,
    status: Annotated[str | None, Query(pattern=r"^[a-z_]{1,32}$")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    min_position: MinPosition = None,
) -> dict[str, Any]:
    await _await_view(pool, OrdersProjection.name, min_position)
    async with pool.connection() as connection:
        found = await orders.find_orders(
            connection, channel=channel, external_id=external_id, status=status, limit=limit
        )
    return {"orders": found}


@router.get(
    "/stock/{sku:path}/{location}/history",
    summary="A position's events, and its state at a moment (as_of)",
)
async def get_stock_history(
    sku: SkuPath,
    location: LocationPath,
    _: ReadAccess,
    pool: ReadPoolDep,
    ledger: LedgerDep,
    as_of: Annotated[datetime | None, BeforeValidator(_iso_8601)] = None,
    after: Annotated[int, Query(ge=0, le=2**62)] = 0,
    limit: Annotated[int, Query(ge=1, le=events.MAX_PAGE)] = 100,
) -> dict[str, Any]:
    if as_of is not None and as_of.tzinfo is None:
        raise ApiProblem(422, "validation", "as_of needs a time zone, e.g. 2026-11-27T10:00:00Z")
    async with pool.connection() as connection:
        found = await events.stock_history(
            connection, ledger.mapper, sku, location, as_of=as_of, after=after, limit=limit
        )
    if found is None:
        raise _not_found(f"no stock of {sku} has ever been at {location}")
    return found


@router.get("/events", summary="The global event feed, in position order")
async def get_events(
    _: ReadAccess,
    pool: ReadPoolDep,
    ledger: LedgerDep,
    after: Annotated[int, Query(ge=0, le=2**62)] = 0,
    limit: Annotated[int, Query(ge=1, le=events.MAX_PAGE)] = 100,
) -> dict[str, Any]:
    async with pool.connection() as connection:
        return await events.event_feed(connection, ledger.mapper, after=after, limit=limit)


@router.get("/locations", summary="Every registered location")
async def get_locations(
    _: ReadAccess, pool: ReadPoolDep, min_position: MinPosition = None
) -> dict[str, Any]:
    await _await_view(pool, AvailabilityProjection.name, min_position)
    async with pool.connection() as connection:
        return {"locations": await availability.list_locations(connection)}


@router.get("/discrepancies", summary="Positions where the books and the shelf disagree")
async def get_discrepancies(
    _: ReadAccess, pool: ReadPoolDep, min_position: MinPosition = None
) -> dict[str, Any]:
    await _await_view(pool, DiscrepanciesProjection.name, min_position)
    async with pool.connection() as connection:
        return {"discrepancies": await discrepancies.list_discrepancies(connection)}
