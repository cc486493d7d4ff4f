"""Transfers between locations: dispatch at the source, receipt at the destination."""

from __future__ import annotations

from typing import Annotated

from eventsourcing.application import AggregateNotFoundError
from fastapi import APIRouter, Path, Response
from starlette.concurrency import run_in_threadpool

from api.auth import Principal, StockWriteAccess, authorize_locations
from api.deps import CommandContextDep, LedgerDep, written
from api.routes import WRITE_ERRORS
from api.schemas import TransferIn, TransferOut, TransferReceiptIn
from domain import keys
from domain.errors import NotFound
from domain.location import Transfer
from domain.service import Ledger, SkuQuantity

router = APIRouter(prefix="/v1/transfers", tags=["transfers"], responses=WRITE_ERRORS)

TransferId = Annotated[str, Path(max_length=128, pattern=keys.EXTERNAL_ID_PATTERN.pattern)]


_RECEIPT_LINK = {
    "ReceiveTransfer": {
        "operationId": "transfers-receive_transfer",
        "parameters": {"transfer_id": "$response.body#/transfer_id"},
    }
}


@router.post("", status_code=201, responses={201: {"links": _RECEIPT_LINK}})
async def dispatch_transfer(
    body: TransferIn,
    principal: StockWriteAccess,
    ledger: LedgerDep,
    context: CommandContextDep,
    response: Response,
) -> TransferOut:
    """Units leave ``from_location`` (``TransferDispatched``) and are expected at
    ``to_location`` (``TransferExpected``). A location-limited key needs both."""
    authorize_locations(principal, [body.from_location, body.to_location])
    result = await run_in_threadpool(
        ledger.dispatch_transfer,
        body.transfer_id,
        body.from_location,
        body.to_location,
        [SkuQuantity(line.sku, line.quantity) for line in body.lines],
        context=context,
    )
    return written(TransferOut, result, response)


@router.post("/{transfer_id}/receipt", status_code=201)
async def receive_transfer(
    transfer_id: TransferId,
    body: TransferReceiptIn,
    principal: StockWriteAccess,
    ledger: LedgerDep,
    context: CommandContextDep,
    response: Response,
) -> TransferOut:
    """What arrived at the destination (``TransferReceived``); a shortfall is recorded."""
    await _authorize_destination(principal, ledger, transfer_id)
    result = await run_in_threadpool(
        ledger.receive_transfer,
        transfer_id,
        [SkuQuantity(line.sku, line.quantity) for line in body.lines],
        context=context,
    )
    return written(TransferOut, result, response)


async def _authorize_destination(principal: Principal, ledger: Ledger, transfer: str) -> None:
    if principal.locations is None:
        return  # an unlimited key: no need to look the transfer up
    destination = await run_in_threadpool(_destination_of, ledger, transfer)
    authorize_locations(principal, [destination])


def _destination_of(ledger: Ledger, transfer: str) -> str:
    try:
        record: object = ledger.repository.get(keys.transfer_id(transfer))
    except AggregateNotFoundError:
        raise NotFound(f"transfer {transfer} is not known") from None
    if not isinstance(record, Transfer):
        raise NotFound(f"transfer {transfer} is not known")
    return record.to_location
