"""Locations: warehouses and stores, which channels they serve, and their channel ids."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response
from starlette.concurrency import run_in_threadpool

from api.auth import AdminAccess, authorize_locations
from api.deps import CommandContextDep, LedgerDep, written
from api.routes import WRITE_ERRORS
from api.schemas import LocationIn, LocationOut
from domain.keys import LOCATION_PATTERN

router = APIRouter(prefix="/v1/locations", tags=["locations"], responses=WRITE_ERRORS)

LocationCodePath = Annotated[
    str, Path(min_length=1, max_length=64, pattern=LOCATION_PATTERN.pattern)
]


@router.put("/{code}")
async def register_location(
    code: LocationCodePath,
    body: LocationIn,
    principal: AdminAccess,
    ledger: LedgerDep,
    context: CommandContextDep,
    response: Response,
) -> LocationOut:
    """Registers a location, or changes it (``Registered`` / ``Changed``)."""
    authorize_locations(principal, [code])
    result = await run_in_threadpool(
        ledger.register_location,
        code,
        name=body.name,
        kind=body.kind,
        channels=body.channels,
        priority=body.priority,
        external_ids=body.external_ids,
        context=context,
    )
    return written(LocationOut, result, response)
