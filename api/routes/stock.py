"""Stock writes: receipts, adjustments, counts, damage, safety stock, return dispositions."""

from __future__ import annotations

from fastapi import APIRouter, Response
from starlette.concurrency import run_in_threadpool

from api.auth import StockWriteAccess, authorize_locations
from api.deps import CommandContextDep, LedgerDep, written
from api.routes import WRITE_ERRORS
from api.schemas import (
    AdjustmentIn,
    CountIn,
    DamageIn,
    ReceiptIn,
    ReturnDispositionIn,
    SafetyStockIn,
    StockPositionOut,
    WriteOffIn,
)

router = APIRouter(prefix="/v1/stock", tags=["stock"], responses=WRITE_ERRORS)


@router.post("/receipts", status_code=201)
async def record_receipt(
    body: ReceiptIn,
    principal: StockWriteAccess,
    ledger: LedgerDep,
    context: CommandContextDep,
    response: Response,
) -> StockPositionOut:
    """Goods received at a location (``Received``)."""
    authorize_locations(principal, [body.location])
    result = await run_in_threadpool(
        ledger.receive, body.sku, body.location, body.quantity, body.reference, context=context
    )
    return written(StockPositionOut, result, response)


@router.post("/adjustments", status_code=201)
async def record_adjustment(
    body: AdjustmentIn,
    principal: StockWriteAccess,
    ledger: LedgerDep,
    context: CommandContextDep,
    response: Response,
) -> StockPositionOut:
    """Available stock corrected by ``delta`` (``Adjusted``); a decrease is refused past it."""
    authorize_locations(principal, [body.location])
    result = await run_in_threadpool(
        ledger.adjust, body.sku, body.location, body.delta, body.reason, context=context
    )
    return written(StockPositionOut, result, response)


@router.post("/counts", status_code=201)
async def record_count(
    body: CountIn,
    principal: StockWriteAccess,
    ledger: LedgerDep,
    context: CommandContextDep,
    response: Response,
) -> StockPositionOut:
    """A physical count of on-hand units (``Counted``); clears a discrepancy."""
    authorize_locations(principal, [body.location])
    result = await run_in_threadpool(
        ledger.count, body.sku, body.location, body.counted, context=context
    )
    return written(StockPositionOut, result, response)


@router.post("/damage", status_code=201)
async def mark_damaged(
    body: DamageIn,
    principal: StockWriteAccess,
    ledger: LedgerDep,
    context: CommandContextDep,
    response: Response,
) -> StockPositionOut:
    """Available units found damaged (``MarkedDamaged``)."""
    authorize_locations(principal, [body.location])
    result = await run_in_threadpool(
        ledger.mark_damaged, body.sku, body.location, body.quantity, body.reason, context=context
    )
    return written(StockPositionOut, result, response)


@router.post("/damage/write-offs", status_code=201)
async def write_off_damage(
    body: WriteOffIn,
    principal: StockWriteAccess,
    ledger: LedgerDep,
    context: CommandContextDep,
    response: Response,
) -> StockPositionOut:
    """Damaged units disposed of (``DamageWrittenOff``)."""
    authorize_locations(principal, [body.location])
    result = await run_in_threadpool(
        ledger.write_off_damage,
        body.sku,
        body.location,
        body.quantity,
        body.reason,
        context=context,
    )
    return written(StockPositionOut, result, response)


@router.put("/safety-stock")
async def set_safety_stock(
    body: SafetyStockIn,
    principal: StockWriteAccess,
    ledger: LedgerDep,
    context: CommandContextDep,
    response: Response,
) -> StockPositionOut:
    """The units kept back from every channel at a location (``SafetyStockSet``)."""
    authorize_locations(principal, [body.location])
    result = await run_in_threadpool(
        ledger.set_safety_stock, body.sku, body.location, body.quantity, context=context
    )
    return written(StockPositionOut, result, response)


@router.post("/returns/disposition", status_code=201)
async def dispose_return(
    body: ReturnDispositionIn,
    principal: StockWriteAccess,
    ledger: LedgerDep,
    context: CommandContextDep,
    response: Response,
) -> StockPositionOut:
    """Returned units kept for inspection: restocked or scrapped."""
    authorize_locations(principal, [body.location])
    result = await run_in_threadpool(
        ledger.dispose_return,
        body.sku,
        body.location,
        body.quantity,
        body.disposition,
        context=context,
    )
    return written(StockPositionOut, result, response)
