"""The stock position: one SKU at one location, its buckets and every movement of them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Self
from uuid import UUID

from eventsourcing.domain import CanMutateAggregate

from domain.base import LedgerAggregate
from domain.errors import InsufficientStock, InvalidTransition

BUCKETS = (
    "available",
    "reserved",
    "committed",
    "damaged",
    "returned",
    "in_transit",
    "safety_stock",
    "discrepancy",
)
# What is physically here: every bucket but goods still on their way, and the threshold.
ON_HAND_BUCKETS = ("available", "reserved", "committed", "damaged", "returned")


def stock_figures(buckets: Mapping[str, int]) -> dict[str, int]:
    """The buckets with SPEC's derived figures: on_hand and available_to_sell."""
    available, safety = int(buckets["available"]), int(buckets["safety_stock"])
    return {
        "on_hand": sum(int(buckets[name]) for name in ON_HAND_BUCKETS),
        **{name: int(buckets[name]) for name in BUCKETS if name != "discrepancy"},
        "available_to_sell": max(0, available - safety),
        "discrepancy": int(buckets["discrepancy"]),
    }


class StockPosition(LedgerAggregate):
    """Buckets of one SKU at one location.

    Requests (reserve, dispatch, mark damaged, negative adjustment) are refused when the stock is
    not there. Facts (sales, shipments, returns, counts) are never refused: when one drives
    ``available`` below zero, the position records a discrepancy, visible until a count or a
    receipt clears it.
    """

    category: ClassVar[str] = "stock"

    class Event(LedgerAggregate.Event):
        """Every stock event names its SKU and location, so a subscriber needs no lookup."""

        sku: str
        location: str

    class Opened(Event, LedgerAggregate.Created):
        pass

    class Received(Event):
        quantity: int
        reference: str | None

        def apply(self, position: StockPosition) -> None:
            position.available += self.quantity

    class Adjusted(Event):
        delta: int
        reason: str

        def apply(self, position: StockPosition) -> None:
            position.available += self.delta

    class Counted(Event):
        counted: int
        delta: int

        def apply(self, position: StockPosition) -> None:
            position.available += self.delta

    class Reserved(Event):
        order: str
        line: str
        quantity: int

        def apply(self, position: StockPosition) -> None:
            position.available -= self.quantity
            position.reserved += self.quantity

    class ReservationReleased(Event):
        order: str
        quantity: int
        reason: str

        def apply(self, position: StockPosition) -> None:
            position.reserved -= self.quantity
            position.available += self.quantity

    class Committed(Event):
        order: str
        quantity: int

        def apply(self, position: StockPosition) -> None:
            position.reserved -= self.quantity
            position.committed += self.quantity

    class CommitmentReleased(Event):
        """Paid units given back (a paid order cancelled before shipping)."""

        order: str
        quantity: int
        reason: str

        def apply(self, position: StockPosition) -> None:
            position.committed -= self.quantity
            position.available += self.quantity

    class Shipped(Event):
        """Units left the building. ``from_available`` counts units that were not committed
        to the order here (shipped from another location than the one reserved)."""

        order: str
        fulfillment: str
        quantity: int
        from_available: int

        def apply(self, position: StockPosition) -> None:
            position.committed -= self.quantity - self.from_available
            position.available -= self.from_available

    class Sold(Event):
        transaction: str
        quantity: int
        occurred_at: str | None

        def apply(self, position: StockPosition) -> None:
            position.available -= self.quantity

    class ReturnReceived(Event):
        order: str | None
        transaction: str | None
        return_id: str
        quantity: int
        occurred_at: str | None

        def apply(self, position: StockPosition) -> None:
            position.returned += self.quantity

    class ReturnRestocked(Event):
        quantity: int

        def apply(self, position: StockPosition) -> None:
            position.returned -= self.quantity
            position.available += self.quantity

    class ReturnScrapped(Event):
        quantity: int

        def apply(self, position: StockPosition) -> None:
            position.returned -= self.quantity
            position.damaged += self.quantity

    class MarkedDamaged(Event):
        quantity: int
        reason: str | None

        def apply(self, position: StockPosition) -> None:
            position.available -= self.quantity
            position.damaged += self.quantity

    class DamageWrittenOff(Event):
        quantity: int
        reason: str | None

        def apply(self, position: StockPosition) -> None:
            position.damaged -= self.quantity

    class TransferDispatched(Event):
        transfer: str
        to_location: str
        quantity: int

        def apply(self, position: StockPosition) -> None:
            position.available -= self.quantity

    class TransferExpected(Event):
        transfer: str
        from_location: str
        quantity: int

        def apply(self, position: StockPosition) -> None:
            position.in_transit += self.quantity

    class TransferReceived(Event):
        transfer: str
        expected: int
        quantity: int
        shortfall: int

        def apply(self, position: StockPosition) -> None:
            position.in_transit -= self.expected
            position.available += self.quantity

    class SafetyStockSet(Event):
        quantity: int

        def apply(self, position: StockPosition) -> None:
            position.safety_stock = self.quantity

    class DiscrepancyRecorded(Event):
        """A fact took more than the ledger held: the books and the shelf disagree."""

        shortfall: int
        cause: str

        def apply(self, position: StockPosition) -> None:
            position.discrepancy = self.shortfall

    class DiscrepancyCleared(Event):
        cause: str

        def apply(self, position: StockPosition) -> None:
            position.discrepancy = 0

    def __init__(self, sku: str, location: str) -> None:
        self.sku = sku
        self.location = location
        self.available = 0
        self.reserved = 0
        self.committed = 0
        self.damaged = 0
        self.returned = 0
        self.in_transit = 0
        self.safety_stock = 0
        self.discrepancy = 0

    def clone(self) -> Self:
        # Every attribute of a position is immutable (numbers, strings, ids, timestamps) except
        # its list of pending events, so a shallow copy is a whole one, at a tenth of the cost;
        # the hottest copy in the ledger (each reservation copies its positions).
        copy = object.__new__(type(self))
        copy.__dict__.update(self.__dict__)
        copy._pending_events = list(self._pending_events)
        return copy

    def trigger_event(self, event_class: type[CanMutateAggregate[UUID]], **kwargs: Any) -> None:
        super().trigger_event(event_class, sku=self.sku, location=self.location, **kwargs)

    # --- derived figures -------------------------------------------------------------------
    @property
    def on_hand(self) -> int:
        return self.available + self.reserved + self.committed + self.damaged + self.returned

    @property
    def available_to_sell(self) -> int:
        return max(0, self.available - self.safety_stock)

    def buckets(self) -> dict[str, int]:
        return stock_figures({name: getattr(self, name) for name in BUCKETS})

    # --- requests: refused when the stock is not there ---------------------------------------
    def reserve(self, order: str, line: str, quantity: int) -> None:
        if quantity > self.available_to_sell:
            raise InsufficientStock(
                f"{self.sku} at {self.location}: {quantity} requested, "
                f"{self.available_to_sell} available to sell",
                sku=self.sku,
                location=self.location,
                requested=quantity,
                available_to_sell=self.available_to_sell,
            )
        self.trigger_event(self.Reserved, order=order, line=line, quantity=quantity)

    def adjust(self, delta: int, reason: str) -> None:
        if delta < 0:
            self._require_available(-delta, "adjust")
        self.trigger_event(self.Adjusted, delta=delta, reason=reason)

    def mark_damaged(self, quantity: int, reason: str | None) -> None:
        self._require_available(quantity, "mark damaged")
        self.trigger_event(self.MarkedDamaged, quantity=quantity, reason=reason)

    def write_off_damage(self, quantity: int, reason: str | None) -> None:
        if quantity > self.damaged:
            raise InsufficientStock(
                f"{self.sku} at {self.location}: {quantity} to write off, {self.damaged} damaged",
                sku=self.sku,
                location=self.location,
                requested=quantity,
                damaged=self.damaged,
            )
        self.trigger_event(self.DamageWrittenOff, quantity=quantity, reason=reason)

    def dispatch_transfer(self, transfer: str, to_location: str, quantity: int) -> None:
        self._require_available(quantity, "dispatch")
        self.trigger_event(
            self.TransferDispatched, transfer=transfer, to_location=to_location, quantity=quantity
        )

    def dispose_return(self, quantity: int, disposition: str) -> None:
        if quantity > self.returned:
            raise InsufficientStock(
                f"{self.sku} at {self.location}: {quantity} to disposition, "
                f"{self.returned} awaiting inspection",
                sku=self.sku,
                location=self.location,
                requested=quantity,
                returned=self.returned,
            )
        if disposition == "restock":
            self.trigger_event(self.ReturnRestocked, quantity=quantity)
        elif disposition == "damaged":
            self.trigger_event(self.ReturnScrapped, quantity=quantity)
        else:
            raise InvalidTransition(f"unknown disposition {disposition!r}")

    def set_safety_stock(self, quantity: int) -> None:
        if quantity != self.safety_stock:
            self.trigger_event(self.SafetyStockSet, quantity=quantity)

    # --- order bookkeeping: moves between buckets the order already holds -------------------
    def commit(self, order: str, quantity: int) -> None:
        self._require_bucket("reserved", quantity)
        self.trigger_event(self.Committed, order=order, quantity=quantity)

    def release(self, order: str, quantity: int, reason: str, *, committed: bool) -> None:
        if committed:
            self._require_bucket("committed", quantity)
            self.trigger_event(
                self.CommitmentReleased, order=order, quantity=quantity, reason=reason
            )
        else:
            self._require_bucket("reserved", quantity)
            self.trigger_event(
                self.ReservationReleased, order=order, quantity=quantity, reason=reason
            )

    # --- facts: never refused -------------------------------------------------------------
    def receive(self, quantity: int, reference: str | None) -> None:
        self.trigger_event(self.Received, quantity=quantity, reference=reference)
        self._clear_discrepancy_if_whole("Received")

    def count(self, counted: int) -> None:
        delta = counted - self.on_hand
        self.trigger_event(self.Counted, counted=counted, delta=delta)
        if self.available < 0:
            self._record_discrepancy("Counted")
        elif self.discrepancy:
            self.trigger_event(self.DiscrepancyCleared, cause="Counted")

    def ship(self, order: str, fulfillment: str, quantity: int, from_available: int) -> None:
        self._require_bucket("committed", quantity - from_available)
        self.trigger_event(
            self.Shipped,
            order=order,
            fulfillment=fulfillment,
            quantity=quantity,
            from_available=from_available,
        )
        self._record_discrepancy("Shipped")

    def sell(self, transaction: str, quantity: int, occurred_at: str | None = None) -> None:
        self.trigger_event(
            self.Sold, transaction=transaction, quantity=quantity, occurred_at=occurred_at
        )
        self._record_discrepancy("Sold")

    def receive_return(
        self,
        quantity: int,
        return_id: str,
        *,
        order: str | None,
        transaction: str | None,
        occurred_at: str | None = None,
    ) -> None:
        self.trigger_event(
            self.ReturnReceived,
            order=order,
            transaction=transaction,
            return_id=return_id,
            quantity=quantity,
            occurred_at=occurred_at,
        )

    def expect_transfer(self, transfer: str, from_location: str, quantity: int) -> None:
        self.trigger_event(
            self.TransferExpected, transfer=transfer, from_location=from_location, quantity=quantity
        )

    def receive_transfer(self, transfer: str, expected: int, quantity: int) -> None:
        self.trigger_event(
            self.TransferReceived,
            transfer=transfer,
            expected=expected,
            quantity=quantity,
            shortfall=max(0, expected - quantity),
        )
        self._clear_discrepancy_if_whole("TransferReceived")

    # --- guards and discrepancy bookkeeping ----------------------------------------------------
    def _require_available(self, quantity: int, action: str) -> None:
        if quantity > self.available:
            raise InsufficientStock(
                f"{self.sku} at {self.location}: cannot {action} {quantity}, "
                f"{max(self.available, 0)} available",
                sku=self.sku,
                location=self.location,
                requested=quantity,
                available=max(self.available, 0),
            )

    def _require_bucket(self, bucket: str, quantity: int) -> None:
        held: int = getattr(self, bucket)
        if quantity > held:
            raise InvalidTransition(
                f"{self.sku} at {self.location}: {quantity} {bucket} needed, {held} held"
            )

    def _record_discrepancy(self, cause: str) -> None:
        if self.available < 0 and -self.available > self.discrepancy:
            self.trigger_event(self.DiscrepancyRecorded, shortfall=-self.available, cause=cause)

    def _clear_discrepancy_if_whole(self, cause: str) -> None:
        # Only a receipt or a count clears a discrepancy: other movements leave it for a person.
        if self.discrepancy and self.available >= 0:
            self.trigger_event(self.DiscrepancyCleared, cause=cause)
