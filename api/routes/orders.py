"""Order writes: placement, payment, cancellation, fulfillment, returns, refunds."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Annotated

from fastapi import APIRouter, Body, Path, Request, Response
from starlette.concurrency import run_in_threadpool

from api.auth import (
    OrdersWriteAccess,
    Principal,
    authorize_locations,
    order_locations,
    orders_write_access,
)
from api.deps import IDEMPOTENCY_KEY_PATTERN, CommandContextDep, LedgerDep, awaited, written
from api.routes import WRITE_ERRORS
from api.schemas import CancellationIn, FulfillmentIn, OrderIn, OrderOut, RefundIn, ReturnIn
from domain.errors import NotFound
from domain.service import CommandContext, FulfillmentLine, Ledger, OrderLine, ReturnLine

router = APIRouter(prefix="/v1/orders", tags=["orders"], responses=WRITE_ERRORS)

# OpenAPI links: what a client (or a stateful test generator) can do next with a placed order.
_FOLLOW_UPS = {
    action: {
        "operationId": f"orders-{operation}",
        "parameters": {"order_id": "$response.body#/order_id"},
    }
    for action, operation in (
        ("PayForOrder", "authorize_payment"),
        ("CancelOrder", "cancel_order"),
        ("FulfillOrder", "fulfill_order"),
        ("ReturnOrder", "return_order"),
        ("RefundOrder", "refund_order"),
    )
}

_IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN)

OrderId = Annotated[
    str, Path(max_length=128, description="The `order_id` answered when the order was placed")
]

ORDERS_PATH = router.prefix


@router.post("", status_code=201, responses={201: {"links": _FOLLOW_UPS}})
async def place_order(
    body: OrderIn,
    principal: OrdersWriteAccess,
    ledger: LedgerDep,
    context: CommandContextDep,
    response: Response,
) -> OrderOut:
    """Places an order and reserves its lines (``Placed``, ``LinesReserved``).

    Lines without a location are sourced from the channel's locations by priority. An order
    that cannot be fully reserved is refused whole (409 insufficient-stock) unless
    ``allow_backorder`` is true.
    """
    return await _placed(ledger, principal, body, context, response)


async def _placed(
    ledger: Ledger,
    principal: Principal,
    body: OrderIn,
    context: CommandContext,
    response: Response,
) -> OrderOut:
    authorize_locations(principal, [line.location for line in body.lines])
    future = ledger.submit_order(
        body.channel,
        body.external_id,
        [OrderLine(line.line_id, line.sku, line.quantity, line.location) for line in body.lines],
        currency=body.currency,
        total=body.total,
        allow_backorder=body.allow_backorder,
        context=context,
    )
    order = written(OrderOut, await awaited(ledger, future), response)
    response.headers["Location"] = f"/v1/orders/{order.order_id}"
    return order


def plain_placement(body: bytes, idempotency_key: str | None) -> OrderIn | None:
    """The order in a plain ``POST /v1/orders`` body, when it is one the route would accept as
    it is (read the same way: JSON, then the same model), else None."""
    if idempotency_key is not None and not _IDEMPOTENCY_KEY.fullmatch(idempotency_key):
        return None
    try:
        return OrderIn.model_validate(json.loads(body))
    except (ValueError, RecursionError):  # not JSON, or not a valid order (ValidationError)
        return None


async def answer_placement(
    request: Request, body: OrderIn, idempotency_key: str | None
) -> Response:
    """``POST /v1/orders`` for a plain request (see ``api.hot_routes``): the route's checks and
    write, and its answer as FastAPI would serialise it."""
    principal = await orders_write_access(request)
    context = CommandContext(
        idempotency_key=idempotency_key, correlation_id=request.state.request_id
    )
    response = Response(status_code=201, media_type="application/json")
    order = await _placed(request.app.state.ledger, principal, body, context, response)
    response.body = order.model_dump_json().encode()
    response.headers["content-length"] = str(len(response.body))
    return response


@router.post("/{order_id}/payment")
async def authorize_payment(
    order_id: OrderId,
    principal: OrdersWriteAccess,
    ledger: LedgerDep,
    context: CommandContextDep,
    response: Response,
) -> OrderOut:
    """Payment authorised: the reserved units become committed (``PaymentAuthorized``)."""
    await _authorize_order(principal, ledger, order_id)
    result = await run_in_threadpool(ledger.authorize_payment, order_id, context=context)
    return written(OrderOut, result, response)


@router.post("/{order_id}/cancellation")
async def cancel_order(
    order_id: OrderId,
    principal: OrdersWriteAccess,
    ledger: LedgerDep,
    context: CommandContextDep,
    response: Response,
    body: Annotated[CancellationIn | None, Body()] = None,
) -> OrderOut:
    """Cancels the order and releases what it holds (``Cancelled``)."""
    await _authorize_order(principal, ledger, order_id)
    reason = body.reason if body is not None and body.reason else "cancelled"
    result = await run_in_threadpool(ledger.cancel_order, order_id, reason, context=context)
    return written(OrderOut, result, response)


@router.post("/{order_id}/fulfillments", status_code=201)
async def fulfill_order(
    order_id: OrderId,
    body: FulfillmentIn,
    principal: OrdersWriteAccess,
    ledger: LedgerDep,
    context: CommandContextDep,
    response: Response,
) -> OrderOut:
    """Units shipped (``Fulfilled``; ``Shipped`` at each position), from the named location or
    from where they are held."""
    await _authorize_order(principal, ledger, order_id, [line.location for line in body.lines])
    result = await run_in_threadpool(
        ledger.fulfill_order,
        order_id,
        body.fulfillment_id,
        [FulfillmentLine(line.line_id, line.quantity, line.location) for line in body.lines],
        context=context,
    )
    return written(OrderOut, result, response)


@router.post("/{order_id}/returns", status_code=201)
async def return_order(
    order_id: OrderId,
    body: ReturnIn,
    principal: OrdersWriteAccess,
    ledger: LedgerDep,
    context: CommandContextDep,
    response: Response,
) -> OrderOut:
    """Units came back (``ReturnReceived``), restocked, scrapped or kept for inspection."""
    await _authorize_order(principal, ledger, order_id, [body.location])
    result = await run_in_threadpool(
        ledger.return_order,
        order_id,
        body.return_id,
        [ReturnLine(line.line_id, line.quantity, line.disposition) for line in body.lines],
        location=body.location,
        context=context,
    )
    return written(OrderOut, result, response)


@router.post("/{order_id}/refunds", status_code=201)
async def refund_order(
    order_id: OrderId,
    body: RefundIn,
    principal: OrdersWriteAccess,
    ledger: LedgerDep,
    context: CommandContextDep,
    response: Response,
) -> OrderOut:
    """Money given back (``Refunded``); moves no stock."""
    await _authorize_order(principal, ledger, order_id)
    result = await run_in_threadpool(
        ledger.refund_order,
        order_id,
        body.refund_id,
        body.amount,
        body.currency,
        [line.model_dump() for line in body.lines],
        context=context,
    )
    return written(OrderOut, result, response)


async def _authorize_order(
    principal: Principal,
    ledger: Ledger,
    order_id: str,
    named_locations: Iterable[str | None] = (),
) -> None:
    """A location-limited key may act on an order only where all of it is within its locations:
    every location the order named, holds stock at or shipped from, and any the request names."""
    if principal.locations is None:
        return  # an unlimited key: no need to look the order up
    order = await run_in_threadpool(ledger.get_order, order_id)
    if order is None:
        raise NotFound(f"order {order_id} is not known")
    named = [code for code in named_locations if code is not None]
    authorize_locations(principal, [*order_locations(order), *named])
