"""Point-of-sale transactions: walk-in sales and till returns."""

from __future__ import annotations

from fastapi import APIRouter, Response
from starlette.concurrency import run_in_threadpool

from api.auth import PosWriteAccess, authorize_locations
from api.deps import CommandContextDep, LedgerDep, written
from api.routes import WRITE_ERRORS
from api.schemas import PosTransactionIn, PosTransactionOut
from domain.service import PosLine

router = APIRouter(prefix="/v1/pos", tags=["pos"], responses=WRITE_ERRORS)


@router.post("/transactions", status_code=201)
async def record_pos_transaction(
    body: PosTransactionIn,
    principal: PosWriteAccess,
    ledger: LedgerDep,
    context: CommandContextDep,
    response: Response,
) -> PosTransactionOut:
    """A till transaction: positive lines are sales (``Sold``), negative ones returns
    (``ReturnReceived``). Facts: never refused for lack of stock.

    Without an ``Idempotency-Key`` header, the ``transaction_id`` is the idempotency key.
    """
    authorize_locations(principal, [body.location])
    result = await run_in_threadpool(
        ledger.record_pos_transaction,
        body.transaction_id,
        body.location,
        body.occurred_at,
        [PosLine(line.sku, line.quantity, line.disposition) for line in body.lines],
        context=context,
    )
    return written(PosTransactionOut, result, response)
