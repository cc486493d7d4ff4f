"""ERP postings: the canonical message the ERP receives for each inventory-relevant event (SPEC §4).

One posting per source event, never more: ``posting_id`` is derived from the event's id, which
is stable per (aggregate, version), so a republish of the same event is the same posting and
JetStream drops it as a duplicate (``Nats-Msg-Id`` = ``posting_id``). A posting exists if and
only if its event committed: postings are computed from the event log (the outbox), never stored
elsewhere.

Which events post (everything else, reservations and payments included, posts nothing):

============================  =====================  ====================================
event                         kind                   line quantity
============================  =====================  ====================================
Received                      GOODS_RECEIPT          +quantity
Shipped                       GOODS_ISSUE            -quantity
Sold (POS)                    POS_SALE               -quantity
ReturnReceived                CUSTOMER_RETURN        +quantity
ReturnScrapped                SCRAP                  -quantity
DamageWrittenOff              SCRAP                  -quantity
TransferDispatched (source)   TRANSFER_OUT           -quantity
TransferReceived (dest.)      TRANSFER_IN            +quantity received
Adjusted                      INVENTORY_ADJUSTMENT   delta
Counted                       INVENTORY_ADJUSTMENT   delta (none when it changes nothing)
Order.Refunded                REFUND                 +units refunded (money only, see Posting)
============================  =====================  ====================================

A stock event with no movement (a transfer received with 0 units) posts nothing either.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterator, Sequence, Set
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Final, Literal, NamedTuple
from uuid import UUID

from eventsourcing.persistence import Mapper, StoredEvent
from eventsourcing.utils import get_topic
from psycopg import AsyncConnection

from domain.keys import uuid5_text
from domain.order import Order
from domain.stock import StockPosition
from projections.events import event_id

SCHEMA: Final = "stockledger.erp.posting.v1"
SUBJECT_PREFIX = "stockledger.erp.postings"

PostingKind = Literal[
    "GOODS_RECEIPT",
    "GOODS_ISSUE",
    "POS_SALE",
    "CUSTOMER_RETURN",
    "SCRAP",
    "TRANSFER_OUT",
    "TRANSFER_IN",
    "INVENTORY_ADJUSTMENT",
    "REFUND",
]

#: The event classes that may produce a posting (a relay reads only these topics).
POSTING_EVENT_CLASSES: tuple[type[Any], ...] = (
    StockPosition.Received,
    StockPosition.Shipped,
    StockPosition.Sold,
    StockPosition.ReturnReceived,
    StockPosition.ReturnScrapped,
    StockPosition.DamageWrittenOff,
    StockPosition.TransferDispatched,
    StockPosition.TransferReceived,
    StockPosition.Adjusted,
    StockPosition.Counted,
    Order.Refunded,
)
POSTING_TOPICS: tuple[str, ...] = tuple(get_topic(cls) for cls in POSTING_EVENT_CLASSES)

POS_CHANNEL = "pos"


# Named tuples rather than pydantic models or frozen dataclasses: a posting is built from the
# ledger's own events, whose types are already checked, once per message on the relay's hot path,
# where validating and dumping a model cost more than everything else the relay does for a
# message, and a frozen dataclass's __init__ costs several times a tuple's.
class PostingLine(NamedTuple):
    sku: str
    quantity: int


class PostingReference(NamedTuple):
    """The business documents a posting belongs to; only the ones that apply are sent."""

    channel: str | None = None
    #: stockledger's order id (a UUID)
    order_id: str | None = None
    #: the channel's own order id (Shopify's order id)
    external_order_id: str | None = None
    fulfillment_id: str | None = None
    return_id: str | None = None
    refund_id: str | None = None
    transfer_id: str | None = None
    pos_transaction_id: str | None = None
    #: the free-text reference given with a goods receipt (a purchase order, an ASN)
    document: str | None = None
    #: why stock was adjusted or written off
    reason: str | None = None

    def body(self) -> dict[str, str]:
        """The members that apply, in declaration order."""
        return {
            name: value for name, value in zip(self._fields, self, strict=True) if value is not None
        }


class Amount(NamedTuple):
    #: a decimal string, like "12.34"
    value: str
    currency: str | None = None

    def body(self) -> dict[str, str]:
        if self.currency is None:
            return {"value": self.value}
        return {"value": self.value, "currency": self.currency}


class Posting(NamedTuple):
    """One ERP posting (``stockledger.erp.posting.v1``).

    Sign convention: a line's ``quantity`` is the signed change of on-hand stock at ``location``
    as the ERP books it: positive when units come in (goods receipt, customer return, transfer in,
    a positive adjustment or count), negative when they go out (goods issue, POS sale, scrap,
    transfer out, a negative adjustment or count). The ``kind`` says why.

    ``REFUND`` is the exception: money goes back, no stock moves (returned goods post their own
    ``CUSTOMER_RETURN``). Its lines list the units the refund covers, as positive quantities,
    and ``amount`` the money. Its ``location`` is the order's first shipping location, else its
    first reserved location, else a location named on a line, else null (see ``OrderFacts``).

    ``occurred_at`` is the till's time for POS events (sales and till returns, with the till's
    UTC offset), else the time the ledger recorded the event; ``posting_date`` is its date.
    ``reverses`` is reserved for corrections; stockledger never rewrites a posting (a correction
    is a new adjustment), so it is absent today.
    """

    posting_id: str
    kind: PostingKind
    posting_date: str
    occurred_at: str
    location: str | None
    lines: list[PostingLine]
    reference: PostingReference
    source_event_ids: list[str]
    amount: Amount | None = None
    reverses: str | None = None

    @property
    def subject(self) -> str:
        """The NATS subject: ``stockledger.erp.postings.<kind in lower case>``."""
        return f"{SUBJECT_PREFIX}.{self.kind.lower()}"

    def body(self) -> dict[str, Any]:
        """The JSON body: optional members that do not apply are left out, but ``location`` is
        always present (null for a refund without one)."""
        body: dict[str, Any] = {
            "schema": SCHEMA,
            "posting_id": self.posting_id,
            "kind": self.kind,
            "posting_date": self.posting_date,
            "occurred_at": self.occurred_at,
        }
        if self.location is not None:
            body["location"] = self.location
        body["lines"] = [{"sku": line.sku, "quantity": line.quantity} for line in self.lines]
        body["reference"] = self.reference.body()
        if self.amount is not None:
            body["amount"] = self.amount.body()
        body["source_event_ids"] = self.source_event_ids
        if self.reverses is not None:
            body["reverses"] = self.reverses
        if self.location is None:
            # Last, where postings have always had a null location: a posting published again
            # (after an upgrade, say) keeps the very bytes it was first published with.
            body["location"] = None
        return body

    def to_json(self) -> bytes:
        return _COMPACT_JSON.encode(self.body()).encode()


#: One encoder for every posting (``json.dumps`` with separators builds one per call); a body
#: is a tree, so there is no cycle to check for.
_COMPACT_JSON: Final = json.JSONEncoder(separators=(",", ":"), check_circular=False)


def posting_id_for(source_event_id: UUID | str) -> str:
    """The posting's id, derived from its source event's id (a UUID, or its text): a republish
    is a duplicate. It is ``str(uuid5(NAMESPACE, f"erp-posting:{source_event_id}"))``."""
    return uuid5_text(f"erp-posting:{source_event_id}")


# --- order facts ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class OrderFacts:
    """What a posting needs to know about the order an event belongs to."""

    order_id: str
    channel: str
    external_id: str
    #: line id -> SKU, from the order's Placed event
    skus: dict[str, str] = field(default_factory=dict)
    #: for refunds: where the order's goods left from (first shipped location, else first
    #: reserved location, else a location named on a line), as of just before the refund
    location: str | None = None


def order_of(event: Any) -> tuple[UUID, int | None] | None:
    """The order an event needs facts about, and for a refund the refund's version."""
    if isinstance(event, Order.Refunded):
        return event.originator_id, event.originator_version
    if isinstance(event, StockPosition.Shipped | StockPosition.ReturnReceived):
        order = getattr(event, "order", None)
        if order:
            try:
                return UUID(str(order)), None
            except ValueError:
                return None
    return None


_PLACED = get_topic(Order.Placed)
_ORDER_HISTORY_TOPICS = [_PLACED, get_topic(Order.LinesReserved), get_topic(Order.Fulfilled)]


#: What a posting needs from an order: the order's id, and for a refund the refund's version.
OrderWanted = tuple[UUID, int | None]


class OrderLookup:
    """Reads order facts from the event log, caching each order's facts as placed (they never
    change).

    A refund's location depends on the order's events before it, which are read each time
    (refunds are rare, and the answer then depends only on the log, never on timing).
    """

    def __init__(self, mapper: Mapper[UUID], *, cache_size: int = 10_000) -> None:
        self.mapper = mapper
        self.cache_size = cache_size
        # Facts rather than the Placed events: far fewer objects for the garbage collector to
        # sweep, in a cache that lives as long as the relay.
        self._placed: OrderedDict[UUID, OrderFacts] = OrderedDict()

    async def facts(
        self, connection: AsyncConnection[Any], wanted: Set[OrderWanted]
    ) -> dict[OrderWanted, OrderFacts]:
        """The facts of each order wanted that is in the log.

        The orders not cached are read in one query, however many orders a batch names.
        """
        placed = await self._placed_facts(connection, {order_id for order_id, _ in wanted})
        facts = {}
        for order_id, before_version in wanted:
            order = placed.get(order_id)
            if order is None:
                continue
            if before_version is not None:
                location = await self._refund_location(connection, order_id, before_version)
                order = replace(order, location=location)
            facts[order_id, before_version] = order
        return facts

    async def _placed_facts(
        self, connection: AsyncConnection[Any], order_ids: set[UUID]
    ) -> dict[UUID, OrderFacts]:
        found: dict[UUID, OrderFacts] = {}
        missing = []
        for order_id in order_ids:
            cached = self._placed.get(order_id)
            if cached is None:
                missing.append(order_id)
            else:
                self._placed.move_to_end(order_id)
                found[order_id] = cached
        if not missing:
            return found
        cursor = await connection.execute(
            "SELECT originator_id, originator_version, topic, state FROM ledger_events "
            "WHERE originator_id = ANY(%s) AND originator_version = 1 AND topic = %s",
            (missing, _PLACED),
            binary=True,  # states as stored, not hex-encoded and decoded again
        )
        for row in await cursor.fetchall():
            placed = self._decode(row)
            found[placed.originator_id] = self._placed[placed.originator_id] = OrderFacts(
                str(placed.originator_id),
                placed.channel,
                placed.external_id,
                {str(line["line_id"]): str(line["sku"]) for line in placed.lines},
            )
        while len(self._placed) > self.cache_size:
            self._placed.popitem(last=False)
        return found

    async def _refund_location(
        self, connection: AsyncConnection[Any], order_id: UUID, before_version: int
    ) -> str | None:
        cursor = await connection.execute(
            "SELECT originator_id, originator_version, topic, state FROM ledger_events "
            "WHERE originator_id = %s AND originator_version < %s AND topic = ANY(%s) "
            "ORDER BY originator_version",
            (order_id, before_version, _ORDER_HISTORY_TOPICS),
        )
        shipped: str | None = None
        reserved: str | None = None
        named: str | None = None
        for row in await cursor.fetchall():
            event = self._decode(row)
            if isinstance(event, Order.Placed):
                named = next(
                    (str(line["location"]) for line in event.lines if line.get("location")), None
                )
            elif shipped is None and isinstance(event, Order.Fulfilled):
                shipped = next((str(line["location"]) for line in event.lines), None)
            elif reserved is None and isinstance(event, Order.LinesReserved):
                reserved = next((str(a["location"]) for a in event.allocations), None)
        return shipped or reserved or named

    def _decode(self, row: Any) -> Any:
        if isinstance(row, dict):
            values = (row["originator_id"], row["originator_version"], row["topic"], row["state"])
        else:
            values = tuple(row)
        return self.mapper.to_domain_event(
            StoredEvent(
                originator_id=values[0],
                originator_version=values[1],
                topic=values[2],
                state=bytes(values[3]),
            )
        )


# --- the mapping ---------------------------------------------------------------------------------
def _timestamp(event: Any) -> datetime:
    till = getattr(event, "occurred_at", None)
    if till:
        try:
            return datetime.fromisoformat(str(till))
        except ValueError:
            pass
    stamp: datetime = event.timestamp
    return stamp


def _order_reference(
    order: OrderFacts | None, order_id: str | None, **extra: str | None
) -> PostingReference:
    if order is None:  # the order is not in the log (cannot happen for a ledger's own events)
        return PostingReference(order_id=order_id, **extra)
    return PostingReference(
        channel=order.channel,
        order_id=order.order_id,
        external_order_id=order.external_id,
        **extra,
    )


def posting_for(event: Any, order: OrderFacts | None = None) -> Posting | None:
    """The posting an event causes, or None. ``order`` carries the facts ``order_of`` asks for."""
    kind: PostingKind
    quantity: int
    reference: PostingReference
    location: str | None
    amount: Amount | None = None
    lines: list[PostingLine] | None = None

    if isinstance(event, StockPosition.Event):
        location = event.location
        if isinstance(event, StockPosition.Received):
            kind, quantity = "GOODS_RECEIPT", event.quantity
            reference = PostingReference(document=event.reference)
        elif isinstance(event, StockPosition.Shipped):
            kind, quantity = "GOODS_ISSUE", -event.quantity
            reference = _order_reference(order, event.order, fulfillment_id=event.fulfillment)
        elif isinstance(event, StockPosition.Sold):
            kind, quantity = "POS_SALE", -event.quantity
            reference = PostingReference(channel=POS_CHANNEL, pos_transaction_id=event.transaction)
        elif isinstance(event, StockPosition.ReturnReceived):
            kind, quantity = "CUSTOMER_RETURN", event.quantity
            if event.transaction:
                reference = PostingReference(
                    channel=POS_CHANNEL,
                    pos_transaction_id=event.transaction,
                    return_id=event.return_id,
                )
            else:
                reference = _order_reference(order, event.order, return_id=event.return_id)
        elif isinstance(event, StockPosition.ReturnScrapped):
            kind, quantity = "SCRAP", -event.quantity
            reference = PostingReference(reason="return scrapped")
        elif isinstance(event, StockPosition.DamageWrittenOff):
            kind, quantity = "SCRAP", -event.quantity
            reference = PostingReference(reason=event.reason or "damage written off")
        elif isinstance(event, StockPosition.TransferDispatched):
            kind, quantity = "TRANSFER_OUT", -event.quantity
            reference = PostingReference(transfer_id=event.transfer)
        elif isinstance(event, StockPosition.TransferReceived):
            kind, quantity = "TRANSFER_IN", event.quantity
            reference = PostingReference(transfer_id=event.transfer)
        elif isinstance(event, StockPosition.Adjusted):
            kind, quantity = "INVENTORY_ADJUSTMENT", event.delta
            reference = PostingReference(reason=event.reason)
        elif isinstance(event, StockPosition.Counted):
            kind, quantity = "INVENTORY_ADJUSTMENT", event.delta
            reference = PostingReference(reason=f"stock count: {event.counted} on hand")
        else:
            return None
        if quantity == 0:
            return None
        lines = [PostingLine(sku=event.sku, quantity=quantity)]
    elif isinstance(event, Order.Refunded):
        kind = "REFUND"
        location = order.location if order else None
        reference = _order_reference(order, str(event.originator_id), refund_id=event.refund_id)
        skus = order.skus if order else {}
        lines = [
            PostingLine(
                sku=skus.get(str(line["line_id"]), str(line["line_id"])),
                quantity=int(line["quantity"]),
            )
            for line in event.lines
        ]
        amount = Amount(value=event.amount, currency=event.currency)
    else:
        return None

    source = event_id(event.originator_id, event.originator_version)
    occurred_at = _timestamp(event).isoformat()
    return Posting(
        posting_id=posting_id_for(source),
        kind=kind,
        posting_date=occurred_at[:10],  # the date ISO 8601 writes first
        occurred_at=occurred_at,
        location=location,
        lines=lines,
        reference=reference,
        amount=amount,
        source_event_ids=[source],
    )


async def postings_for(
    connection: AsyncConnection[Any], lookup: OrderLookup, events: Sequence[Any]
) -> Iterator[Posting | None]:
    """``posting_for`` over a batch, looking up the orders the events need all at once.

    The postings are made as they are iterated, so that the relay drops each as soon as it has
    its message: kept for a whole batch, they would outlive the garbage collector's young
    generations and make it sweep the whole heap again and again.
    """
    wanted = [order_of(event) for event in events]
    facts = await lookup.facts(connection, {order for order in wanted if order is not None})
    return (
        posting_for(event, None if order is None else facts.get(order))
        for event, order in zip(events, wanted, strict=True)
    )
