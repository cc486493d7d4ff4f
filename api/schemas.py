"""Request and response bodies of the API (SPEC §3), with the contract's field names.

The constraints here are the domain's own (patterns, ranges, line counts), declared again so the
OpenAPI document shows them and malformed requests stop at 422 before reaching the ledger; the
domain still checks everything itself. Quantities are strict integers: ``true`` or ``2.0`` are
refused, not coerced.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    WithJsonSchema,
)

from domain.keys import (
    CHANNEL_PATTERN,
    EXTERNAL_ID_PATTERN,
    LOCATION_PATTERN,
    MAX_QUANTITY,
    SKU_PATTERN,
)
from domain.service import MAX_LINES, MAX_TEXT


def _printable(value: str) -> str:
    if not value.isprintable():
        raise ValueError("must be printable text (no control characters)")
    return value


def _non_zero(value: int) -> int:
    if value == 0:
        raise ValueError("must not be zero")
    return value


# --- keys and amounts ---------------------------------------------------------------------------
Sku = Annotated[
    str,
    Field(min_length=1, max_length=64, pattern=SKU_PATTERN.pattern, examples=["TSHIRT-RED-M"]),
]
LocationCode = Annotated[
    str,
    Field(min_length=1, max_length=64, pattern=LOCATION_PATTERN.pattern, examples=["WH-1"]),
]
Channel = Annotated[
    str, Field(min_length=1, max_length=32, pattern=CHANNEL_PATTERN.pattern, examples=["shopify"])
]
ExternalId = Annotated[
    str, Field(min_length=1, max_length=128, pattern=EXTERNAL_ID_PATTERN.pattern)
]
# The pattern documents the common case (no control characters); the validator also refuses
# the rarer unprintable characters (separators, lone surrogates) the ledger will not store.
_NO_CONTROL_CHARACTERS = r"^[^\x00-\x1f\x7f-\x9f]*$"
Text = Annotated[
    str,
    Field(max_length=MAX_TEXT, pattern=_NO_CONTROL_CHARACTERS),
    AfterValidator(_printable),
]
RequiredText = Annotated[
    str,
    Field(min_length=1, max_length=MAX_TEXT, pattern=_NO_CONTROL_CHARACTERS),
    AfterValidator(_printable),
]
PositiveQuantity = Annotated[int, Field(strict=True, ge=1, le=MAX_QUANTITY)]
NonNegativeQuantity = Annotated[int, Field(strict=True, ge=0, le=MAX_QUANTITY)]
SignedQuantity = Annotated[
    int,
    Field(strict=True, ge=-MAX_QUANTITY, le=MAX_QUANTITY, json_schema_extra={"not": {"const": 0}}),
    AfterValidator(_non_zero),
]
Currency = Annotated[str, Field(pattern=r"^[A-Z]{3}$", examples=["EUR"])]
Amount = Annotated[
    Decimal,
    Field(ge=0, le=Decimal("1000000000000"), decimal_places=4),
    # Documented as what clients should send: a decimal string (or a JSON number).
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": r"^[0-9]{1,12}(\.[0-9]{1,4})?$"},
                {"type": "number", "minimum": 0, "maximum": 1_000_000_000_000},
            ],
            "examples": ["12.34"],
        }
    ),
]


class _Request(BaseModel):
    # Unknown fields are refused: a misspelt optional field must not pass silently.
    model_config = ConfigDict(extra="forbid")


# --- locations -------------------------------------------------------------------------------
class LocationIn(_Request):
    name: RequiredText
    kind: Literal["warehouse", "store"]
    channels: list[Channel] = Field(default_factory=list, max_length=32)
    priority: int = Field(default=100, strict=True, ge=-1_000_000, le=1_000_000)
    external_ids: dict[Channel, ExternalId] = Field(
        default_factory=dict, max_length=32, examples=[{"shopify": "905684977"}]
    )


# --- stock -----------------------------------------------------------------------------------
class ReceiptIn(_Request):
    sku: Sku
    location: LocationCode
    quantity: PositiveQuantity
    reference: Text | None = None


class AdjustmentIn(_Request):
    sku: Sku
    location: LocationCode
    delta: SignedQuantity
    reason: RequiredText


class CountIn(_Request):
    sku: Sku
    location: LocationCode
    counted: NonNegativeQuantity


class DamageIn(_Request):
    sku: Sku
    location: LocationCode
    quantity: PositiveQuantity
    reason: Text | None = None


class WriteOffIn(_Request):
    sku: Sku
    location: LocationCode
    quantity: PositiveQuantity
    reason: Text | None = None


class SafetyStockIn(_Request):
    sku: Sku
    location: LocationCode
    quantity: NonNegativeQuantity


class ReturnDispositionIn(_Request):
    sku: Sku
    location: LocationCode
    quantity: PositiveQuantity
    disposition: Literal["restock", "damaged"]


# --- transfers -------------------------------------------------------------------------------
class TransferLineIn(_Request):
    sku: Sku
    quantity: PositiveQuantity


class TransferIn(_Request):
    transfer_id: ExternalId
    from_location: LocationCode
    to_location: LocationCode
    lines: list[TransferLineIn] = Field(min_length=1, max_length=MAX_LINES)


class TransferReceiptLineIn(_Request):
    sku: Sku
    quantity: NonNegativeQuantity


class TransferReceiptIn(_Request):
    lines: list[TransferReceiptLineIn] = Field(min_length=1, max_length=MAX_LINES)


# --- orders ----------------------------------------------------------------------------------
class OrderLineIn(_Request):
    line_id: ExternalId
    sku: Sku
    quantity: PositiveQuantity
    location: LocationCode | None = None


class OrderIn(_Request):
    channel: Channel
    external_id: ExternalId
    lines: list[OrderLineIn] = Field(min_length=1, max_length=MAX_LINES)
    currency: Currency | None = None
    total: Amount | None = None
    allow_backorder: bool = Field(default=False, strict=True)


class CancellationIn(_Request):
    reason: Text | None = None


class FulfillmentLineIn(_Request):
    line_id: ExternalId
    quantity: PositiveQuantity
    location: LocationCode | None = None


class FulfillmentIn(_Request):
    fulfillment_id: ExternalId
    lines: list[FulfillmentLineIn] = Field(min_length=1, max_length=MAX_LINES)


class ReturnLineIn(_Request):
    line_id: ExternalId
    quantity: PositiveQuantity
    disposition: Literal["restock", "damaged", "inspect"]


class ReturnIn(_Request):
    return_id: ExternalId
    location: LocationCode | None = None
    lines: list[ReturnLineIn] = Field(min_length=1, max_length=MAX_LINES)


class RefundLineIn(_Request):
    line_id: ExternalId
    quantity: PositiveQuantity


class RefundIn(_Request):
    refund_id: ExternalId
    amount: Amount
    currency: Currency
    lines: list[RefundLineIn] = Field(default_factory=list, max_length=MAX_LINES)


# --- point of sale ---------------------------------------------------------------------------
class PosLineIn(_Request):
    sku: Sku
    quantity: SignedQuantity = Field(description="Units sold; a negative quantity is a return")
    disposition: Literal["restock", "damaged", "inspect"] = Field(
        default="inspect", description="For returned units: where they go"
    )


class PosTransactionIn(_Request):
    transaction_id: ExternalId
    location: LocationCode
    occurred_at: AwareDatetime
    lines: list[PosLineIn] = Field(min_length=1, max_length=MAX_LINES)


# --- responses -------------------------------------------------------------------------------
class _Written(BaseModel):
    # Extra members the ledger adds later pass through rather than disappear.
    model_config = ConfigDict(extra="allow")

    position: int | None = Field(
        description="Global position of the write's last event (also X-Ledger-Position)"
    )


class LocationFigures(BaseModel):
    """A SKU's stock at one location: every bucket, with on_hand and available_to_sell."""

    model_config = ConfigDict(extra="allow")

    location: str
    on_hand: int
    available: int
    reserved: int
    committed: int
    damaged: int
    returned: int
    in_transit: int
    safety_stock: int
    available_to_sell: int
    discrepancy: int


class StockBuckets(LocationFigures):
    sku: str


class StockPositionOut(StockBuckets, _Written):
    pass


class LocationOut(_Written):
    code: str
    name: str
    kind: str
    channels: list[str]
    priority: int
    external_ids: dict[str, str]


class TransferLineOut(BaseModel):
    sku: str
    quantity: int
    received: int | None


class TransferOut(_Written):
    transfer_id: str
    from_location: str
    to_location: str
    lines: list[TransferLineOut]


class Allocation(BaseModel):
    location: str
    quantity: int


class OrderLineOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    line_id: str
    sku: str
    quantity: int
    allocations: list[Allocation]
    backordered: int
    shipped: int
    returned: int


class OrderOut(_Written):
    order_id: str
    channel: str
    external_id: str
    status: str
    currency: str | None
    total: str | None
    paid: bool
    cancel_reason: str | None
    placed_at: datetime
    lines: list[OrderLineOut]
    refunded: str


class PosTransactionOut(_Written):
    transaction_id: str
    location: str
    occurred_at: datetime | None
    positions: list[StockBuckets]


class HealthOut(BaseModel):
    status: Literal["ok"] = "ok"


class ReadinessOut(BaseModel):
    status: Literal["ready"] = "ready"
    checks: dict[str, str]


# Documents the answer; the route sends the view's JSON as it is, not validated through this.
class SkuAvailabilityOut(BaseModel):
    """A SKU's stock at every location, and what each channel may sell."""

    sku: str
    position: int = Field(description="Global position the availability view had reached")
    locations: list[LocationFigures]
    channels: dict[str, int] = Field(description="Available-to-sell per channel")
