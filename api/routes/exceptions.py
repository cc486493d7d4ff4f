"""Exceptions: what a channel sent that could not be applied, kept for a person to fix.

``GET /v1/exceptions`` (read scope) lists them with their business context and the raw message;
``POST /v1/exceptions/{id}/retry`` applies one again after the fix (a SKU received, a location
mapped): resolved when it applies, 409 ``not-applicable`` with the new reason when it still
cannot be. Retrying needs the scope that writing the same input would: ``orders:write`` for a
Shopify exception, ``pos:write`` for a POS one (``admin`` holds both); a key limited to certain
locations may retry only POS exceptions of its locations (a Shopify order's locations are the
ledger's to choose).
"""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Response
from pydantic import BaseModel, Field

from adapters import exceptions as store
from adapters.exceptions import ExceptionRecord
from api.auth import Principal, ReadAccess, Scope, authenticate, authorize_locations
from api.deps import POSITION_HEADER, LedgerDep, ReadPoolDep, RequestIdDep
from api.inbound import POS, RETRYABLE_CHANNELS, SHOPIFY, Inbound, RetryFailed
from api.problems import ApiProblem, Forbidden, problem_responses
from domain.keys import CHANNEL_PATTERN

router = APIRouter(
    prefix="/v1/exceptions",
    tags=["exceptions"],
    responses=problem_responses(401, 403, 404, 422),
)

RETRY_SCOPES = {SHOPIFY: Scope.ORDERS_WRITE, POS: Scope.POS_WRITE}


class ExceptionOut(BaseModel):
    id: int
    channel: str
    source: str = Field(description="The Shopify topic, or the NATS subject it came on")
    kind: str | None = Field(
        default=None, description="unknown-sku, unmapped-location, order-not-yet-known..."
    )
    external_ids: dict[str, str] = Field(description="The business ids the input carries")
    reason: str
    details: dict[str, Any]
    status: Literal["open", "resolved"]
    attempts: int
    created_at: datetime
    updated_at: datetime
    message: str = Field(description="The raw message as received (as text)")
    message_base64: str | None = Field(
        default=None, description="The raw bytes, only when they are not valid UTF-8"
    )

    @classmethod
    def of(cls, record: ExceptionRecord) -> ExceptionOut:
        try:
            text, exact = record.payload.decode("utf-8"), True
        except UnicodeDecodeError:
            text, exact = record.payload_text, False
        kind = record.details.get("kind")
        return cls(
            id=record.id,
            channel=record.channel,
            source=record.source,
            kind=str(kind) if kind is not None else None,
            external_ids=record.external_ids,
            reason=record.reason,
            details=record.details,
            status=record.status,
            attempts=record.attempts,
            created_at=record.created_at,
            updated_at=record.updated_at,
            message=text,
            message_base64=None if exact else base64.b64encode(record.payload).decode(),
        )


class ExceptionPage(BaseModel):
    exceptions: list[ExceptionOut]
    next_after_id: int | None = Field(
        description="Pass as after_id for the next page; null when this page is the last"
    )


class RetryOut(BaseModel):
    status: Literal["resolved"]
    exception: ExceptionOut
    order_id: str | None = None
    external_order_id: str | None = None
    position: int | None = None
    result: dict[str, Any] | None = Field(default=None, description="The ledger's answer")
    resolved_exceptions: list[int] = Field(
        default_factory=list, description="Other exceptions that waited for this order"
    )


ExceptionId = Annotated[int, Path(ge=1, le=2**62)]


def _not_found(exception_id: int) -> ApiProblem:
    return ApiProblem(404, "not-found", f"exception {exception_id} is not known")


@router.get("", summary="Inputs from the channels that could not be applied")
async def list_exceptions(
    _: ReadAccess,
    pool: ReadPoolDep,
    status: Literal["open", "resolved", "all"] = "open",
    channel: Annotated[str | None, Query(pattern=CHANNEL_PATTERN.pattern)] = None,
    after_id: Annotated[int, Query(ge=0, le=2**62)] = 0,
    limit: Annotated[int, Query(ge=1, le=store.MAX_PAGE)] = 100,
) -> ExceptionPage:
    """Oldest first; page with ``after_id`` = the ``next_after_id`` of the page before."""
    async with pool.connection() as connection:
        records = await store.alist_exceptions(
            connection,
            status=None if status == "all" else status,
            channel=channel,
            after_id=after_id,
            limit=limit,
        )
    return ExceptionPage(
        exceptions=[ExceptionOut.of(record) for record in records],
        next_after_id=records[-1].id if len(records) == limit else None,
    )


@router.get("/{exception_id}", summary="One exception")
async def get_exception(
    exception_id: ExceptionId, _: ReadAccess, pool: ReadPoolDep
) -> ExceptionOut:
    async with pool.connection() as connection:
        record = await store.aget(connection, exception_id)
    if record is None:
        raise _not_found(exception_id)
    return ExceptionOut.of(record)


def _authorize_retry(principal: Principal, record: ExceptionRecord) -> None:
    scope = RETRY_SCOPES.get(record.channel, Scope.ADMIN)
    if not principal.holds(scope):
        raise Forbidden(
            f"the API key {principal.name!r} lacks the {scope.value} scope "
            f"needed to retry a {record.channel} exception"
        )
    if principal.locations is not None:
        # A POS transaction names its location; a Shopify order's are the ledger's to choose.
        where = record.external_ids.get("location") if record.channel == POS else None
        authorize_locations(principal, [where])


@router.post(
    "/{exception_id}/retry",
    summary="Apply an exception again, after the fix",
    responses=problem_responses(409, 503),
)
async def retry_exception(
    exception_id: ExceptionId,
    principal: Annotated[Principal, Depends(authenticate)],
    ledger: LedgerDep,
    pool: ReadPoolDep,
    request_id: RequestIdDep,
    response: Response,
) -> RetryOut:
    """200 ``resolved`` when it applies; 409 ``not-applicable`` (the attempt counted, the new
    reason kept) when it still cannot; 409 ``invalid-state`` when it is already resolved."""
    async with pool.connection() as connection:
        record = await store.aget(connection, exception_id)
    if record is None:
        raise _not_found(exception_id)
    _authorize_retry(principal, record)
    if record.status != "open":
        raise ApiProblem(409, "invalid-state", f"exception {exception_id} is already resolved")
    if record.channel not in RETRYABLE_CHANNELS:
        raise ApiProblem(
            409,
            "invalid-state",
            f"exceptions of channel {record.channel} cannot be retried here",
        )
    inbound = Inbound(ledger, pool)
    try:
        applied = await inbound.retry(record, correlation_id=request_id)
    except RetryFailed as failed:
        raise ApiProblem(
            409,
            "not-applicable",
            failed.reason,
            exception_id=exception_id,
            kind=failed.kind,
            attempts=failed.record.attempts,
        ) from None
    async with pool.connection() as connection:
        resolved = await store.aget(connection, exception_id)
    if applied.position is not None:
        response.headers[POSITION_HEADER] = str(applied.position)
    return RetryOut(
        status="resolved",
        exception=ExceptionOut.of(resolved or record),
        order_id=applied.order_id,
        external_order_id=applied.external_order_id,
        position=applied.position,
        result=applied.result,
        resolved_exceptions=applied.resolved_exceptions,
    )
