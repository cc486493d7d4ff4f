"""The order: what a channel sold, where its units are held, and what became of them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, ClassVar

from domain.base import LedgerAggregate
from domain.errors import AlreadyExists, InvalidTransition, ValidationFailed


@dataclass(frozen=True)
class Movement:
    """Units of one order line at one location, for the positions to act on."""

    line_id: str
    sku: str
    location: str
    quantity: int


@dataclass(frozen=True)
class Shipment:
    line_id: str
    sku: str
    location: str
    quantity: int
    from_held: int


@dataclass(frozen=True)
class Plan:
    """What the positions must do for an order command: ship, then release, in that order."""

    shipments: tuple[Shipment, ...] = ()
    releases: tuple[Movement, ...] = ()


class Order(LedgerAggregate):
    category: ClassVar[str] = "order"

    class Placed(LedgerAggregate.Created):
        channel: str
        external_id: str
        lines: list[dict[str, Any]]
        currency: str | None
        total: str | None
        allow_backorder: bool

    class LinesReserved(LedgerAggregate.Event):
        allocations: list[dict[str, Any]]
        backordered: list[dict[str, Any]]

        def apply(self, order: Order) -> None:
            for allocation in self.allocations:
                held = order.held.setdefault(allocation["line_id"], {})
                location = allocation["location"]
                held[location] = held.get(location, 0) + allocation["quantity"]
            for backorder in self.backordered:
                order.backordered[backorder["line_id"]] = backorder["quantity"]

    class PaymentAuthorized(LedgerAggregate.Event):
        def apply(self, order: Order) -> None:
            order.paid = True

    class Cancelled(LedgerAggregate.Event):
        reason: str
        released: list[dict[str, Any]]

        def apply(self, order: Order) -> None:
            order.cancel_reason = self.reason
            order.held = {}
            order.backordered = {}

    class ReservationExpired(LedgerAggregate.Event):
        released: list[dict[str, Any]]

        def apply(self, order: Order) -> None:
            order.cancel_reason = "expired"
            order.held = {}
            order.backordered = {}

    class Fulfilled(LedgerAggregate.Event):
        fulfillment_id: str
        lines: list[dict[str, Any]]
        released: list[dict[str, Any]]

        def apply(self, order: Order) -> None:
            order.fulfillments[self.fulfillment_id] = [dict(line) for line in self.lines]
            for line in self.lines:
                line_id, location = line["line_id"], line["location"]
                shipped = order.shipped.setdefault(line_id, {})
                shipped[location] = shipped.get(location, 0) + line["quantity"]
                order._take_held(line_id, location, line["from_held"])
            for release in self.released:
                order._take_held(release["line_id"], release["location"], release["quantity"])
            for line_id in list(order.backordered):
                outstanding = order.quantity_of(line_id) - order.shipped_of(line_id)
                if outstanding <= order.held_of(line_id):
                    del order.backordered[line_id]

    class LinesCancelled(LedgerAggregate.Event):
        """Some units of some lines are no longer wanted (the channel removed them)."""

        lines: list[dict[str, Any]]
        released: list[dict[str, Any]]
        reason: str

        def apply(self, order: Order) -> None:
            for line in self.lines:
                line_id = line["line_id"]
                order.cancelled_units[line_id] = (
                    order.cancelled_units.get(line_id, 0) + line["quantity"]
                )
                backordered = order.backordered.get(line_id, 0) - line["from_backorder"]
                if backordered > 0:
                    order.backordered[line_id] = backordered
                else:
                    order.backordered.pop(line_id, None)
            for release in self.released:
                order._take_held(release["line_id"], release["location"], release["quantity"])

    class ReturnReceived(LedgerAggregate.Event):
        return_id: str
        lines: list[dict[str, Any]]

        def apply(self, order: Order) -> None:
            order.returns.append(self.return_id)
            for line in self.lines:
                order.returned[line["line_id"]] = (
                    order.returned.get(line["line_id"], 0) + line["quantity"]
                )

    class Refunded(LedgerAggregate.Event):
        refund_id: str
        amount: str
        currency: str | None
        lines: list[dict[str, Any]]

        def apply(self, order: Order) -> None:
            order.refunds[self.refund_id] = self.amount

    def __init__(
        self,
        channel: str,
        external_id: str,
        lines: list[dict[str, Any]],
        currency: str | None,
        total: str | None,
        allow_backorder: bool,
    ) -> None:
        self.channel = channel
        self.external_id = external_id
        self.lines = [dict(line) for line in lines]
        self.currency = currency
        self.total = total
        self.allow_backorder = allow_backorder
        self.held: dict[str, dict[str, int]] = {}
        self.backordered: dict[str, int] = {}
        self.shipped: dict[str, dict[str, int]] = {}
        self.returned: dict[str, int] = {}
        self.returns: list[str] = []
        self.fulfillments: dict[str, list[dict[str, Any]]] = {}
        self.refunds: dict[str, str] = {}
        self.paid = False
        self.cancel_reason: str | None = None
        self.cancelled_units: dict[str, int] = {}

    # --- figures ----------------------------------------------------------------------------
    def line(self, line_id: str) -> dict[str, Any]:
        for line in self.lines:
            if line["line_id"] == line_id:
                return line
        raise ValidationFailed(f"order {self.external_id} has no line {line_id!r}")

    def quantity_of(self, line_id: str) -> int:
        """Units the line still wants: as ordered, less those cancelled since."""
        return int(self.line(line_id)["quantity"]) - self.cancelled_units.get(line_id, 0)

    def held_of(self, line_id: str) -> int:
        return sum(self.held.get(line_id, {}).values())

    def shipped_of(self, line_id: str) -> int:
        return sum(self.shipped.get(line_id, {}).values())

    @property
    def is_cancelled(self) -> bool:
        return self.cancel_reason is not None

    @property
    def refunded_amount(self) -> Decimal:
        return sum((Decimal(amount) for amount in self.refunds.values()), Decimal(0))

    @property
    def status(self) -> str:
        ordered = sum(self.quantity_of(line["line_id"]) for line in self.lines)
        shipped = sum(self.shipped_of(line["line_id"]) for line in self.lines)
        returned = sum(self.returned.values())
        if self.is_cancelled or ordered == 0:
            return "cancelled"
        if self.refunds:
            fully = self.total is not None and self.refunded_amount >= Decimal(self.total)
            return "refunded" if fully else "partially_refunded"
        if returned:
            return "returned" if returned >= ordered else "partially_returned"
        if shipped:
            return "fulfilled" if shipped >= ordered else "partially_fulfilled"
        return "committed" if self.paid else "reserved"

    def holdings(self) -> list[Movement]:
        return [
            Movement(line_id, self.line(line_id)["sku"], location, quantity)
            for line_id, held in self.held.items()
            for location, quantity in held.items()
            if quantity > 0
        ]

    def _take_held(self, line_id: str, location: str, quantity: int) -> None:
        held = self.held.get(line_id, {})
        remaining = held.get(location, 0) - quantity
        if remaining > 0:
            held[location] = remaining
        else:
            held.pop(location, None)
        if not held:
            self.held.pop(line_id, None)

    # --- commands ---------------------------------------------------------------------------
    def record_reservations(self, allocations: list[Movement], backordered: dict[str, int]) -> None:
        self.trigger_event(
            self.LinesReserved,
            allocations=[
                {"line_id": a.line_id, "sku": a.sku, "location": a.location, "quantity": a.quantity}
                for a in allocations
            ],
            backordered=[
                {"line_id": line_id, "quantity": quantity}
                for line_id, quantity in backordered.items()
                if quantity > 0
            ],
        )

    def authorize_payment(self) -> list[Movement]:
        """Returns the held units the positions must now commit (none when already paid)."""
        self._require_open("authorise payment for")
        if self.paid:
            return []
        to_commit = self.holdings()
        self.trigger_event(self.PaymentAuthorized)
        return to_commit

    def cancel(self, reason: str) -> list[Movement]:
        self._require_open("cancel")
        if all(
            self.shipped_of(line["line_id"]) >= self.quantity_of(line["line_id"])
            for line in self.lines
        ):
            raise InvalidTransition(
                f"order {self.external_id} is fulfilled and cannot be cancelled"
            )
        releases = self.holdings()
        self.trigger_event(self.Cancelled, reason=reason, released=_movements(releases))
        return releases

    def expire(self, now: datetime, ttl: timedelta) -> list[Movement]:
        """Releases an unpaid order's reservations once they are older than the TTL."""
        if self.is_cancelled or self.paid or not self.held or any(self.shipped.values()):
            raise InvalidTransition(f"order {self.external_id} has no unpaid reservation")
        if now - self.created_on < ttl:
            raise InvalidTransition(f"order {self.external_id}'s reservation has not expired")
        releases = self.holdings()
        self.trigger_event(self.ReservationExpired, released=_movements(releases))
        return releases

    def fulfill(self, fulfillment_id: str, lines: list[tuple[str, int, str | None]]) -> Plan:
        """Ships units, from the given location or else from where they are held.

        Units shipped from a location that held none for the order come from its available
        stock (a fact, never refused); what the line then no longer needs is released elsewhere.
        """
        self._require_open("fulfil")
        if fulfillment_id in self.fulfillments:
            raise AlreadyExists(f"fulfillment {fulfillment_id} is already recorded")
        held = {line_id: dict(by_location) for line_id, by_location in self.held.items()}
        shipped = {line_id: self.shipped_of(line_id) for line_id in self._line_ids()}
        shipments: list[Shipment] = []
        for line_id, quantity, location in lines:
            line = self.line(line_id)
            if shipped[line_id] + quantity > self.quantity_of(line_id):
                raise InvalidTransition(
                    f"line {line_id} of order {self.external_id}: {quantity} to ship, "
                    f"{self.quantity_of(line_id) - shipped[line_id]} outstanding"
                )
            shipped[line_id] += quantity
            line_held = held.setdefault(line_id, {})
            if location is not None:
                sources = [location]
            else:
                sources = [loc for loc, q in line_held.items() if q > 0] or [
                    self._default_location(line_id)
                ]
            remaining = quantity
            for index, source in enumerate(sources):
                last = index == len(sources) - 1
                from_held = min(remaining, line_held.get(source, 0))
                take = remaining if last else from_held
                if take <= 0:
                    continue
                line_held[source] = line_held.get(source, 0) - from_held
                shipments.append(Shipment(line_id, line["sku"], source, take, from_held))
                remaining -= take
        releases: list[Movement] = []
        for line_id, line_held in held.items():
            excess = sum(line_held.values()) - (self.quantity_of(line_id) - shipped[line_id])
            for location, quantity in line_held.items():
                if excess <= 0:
                    break
                give_back = min(excess, quantity)
                if give_back > 0:
                    releases.append(
                        Movement(line_id, self.line(line_id)["sku"], location, give_back)
                    )
                    excess -= give_back
        self.trigger_event(
            self.Fulfilled,
            fulfillment_id=fulfillment_id,
            lines=[
                {
                    "line_id": s.line_id,
                    "sku": s.sku,
                    "location": s.location,
                    "quantity": s.quantity,
                    "from_held": s.from_held,
                }
                for s in shipments
            ],
            released=_movements(releases),
        )
        return Plan(tuple(shipments), tuple(releases))

    def cancel_lines(self, lines: list[tuple[str, int]], reason: str) -> list[Movement]:
        """Gives up units not yet shipped: backordered units first, then held ones."""
        self._require_open("cancel lines of")
        held = {line_id: dict(by_location) for line_id, by_location in self.held.items()}
        cancelled: list[dict[str, Any]] = []
        releases: list[Movement] = []
        for line_id, quantity in lines:
            line = self.line(line_id)
            outstanding = self.quantity_of(line_id) - self.shipped_of(line_id)
            if quantity > outstanding:
                raise InvalidTransition(
                    f"line {line_id} of order {self.external_id}: {quantity} to cancel, "
                    f"{outstanding} not yet shipped"
                )
            from_backorder = min(quantity, self.backordered.get(line_id, 0))
            remaining = quantity - from_backorder
            for location, units in held.get(line_id, {}).items():
                if remaining == 0:
                    break
                give_back = min(units, remaining)
                if give_back:
                    releases.append(Movement(line_id, line["sku"], location, give_back))
                    held[line_id][location] -= give_back
                    remaining -= give_back
            cancelled.append(
                {"line_id": line_id, "quantity": quantity, "from_backorder": from_backorder}
            )
        self.trigger_event(
            self.LinesCancelled, lines=cancelled, released=_movements(releases), reason=reason
        )
        return releases

    def receive_return(
        self, return_id: str, location: str | None, lines: list[tuple[str, int, str]]
    ) -> list[tuple[Movement, str]]:
        if return_id in self.returns:
            raise AlreadyExists(f"return {return_id} is already recorded")
        returned = dict(self.returned)
        received: list[tuple[Movement, str]] = []
        for line_id, quantity, disposition in lines:
            line = self.line(line_id)
            returnable = self.shipped_of(line_id) - returned.get(line_id, 0)
            if quantity > returnable:
                raise InvalidTransition(
                    f"line {line_id} of order {self.external_id}: {quantity} returned, "
                    f"{returnable} shipped and not yet returned"
                )
            returned[line_id] = returned.get(line_id, 0) + quantity
            at = location or self._shipped_location(line_id)
            received.append((Movement(line_id, line["sku"], at, quantity), disposition))
        self.trigger_event(
            self.ReturnReceived,
            return_id=return_id,
            lines=[
                {
                    "line_id": m.line_id,
                    "sku": m.sku,
                    "location": m.location,
                    "quantity": m.quantity,
                    "disposition": disposition,
                }
                for m, disposition in received
            ],
        )
        return received

    def refund(
        self, refund_id: str, amount: Decimal, currency: str | None, lines: list[dict[str, Any]]
    ) -> None:
        if refund_id in self.refunds:
            raise AlreadyExists(f"refund {refund_id} is already recorded")
        if self.currency and currency and currency != self.currency:
            raise ValidationFailed(
                f"refund currency {currency} differs from the order's {self.currency}"
            )
        if self.total is not None and self.refunded_amount + amount > Decimal(self.total):
            raise InvalidTransition(
                f"refund of {amount} exceeds what is left of the order total {self.total} "
                f"({self.refunded_amount} already refunded)"
            )
        for line in lines:
            self.line(line["line_id"])
        self.trigger_event(
            self.Refunded,
            refund_id=refund_id,
            amount=str(amount),
            currency=currency or self.currency,
            lines=[dict(line) for line in lines],
        )

    # --- helpers --------------------------------------------------------------------------
    def _line_ids(self) -> list[str]:
        return [line["line_id"] for line in self.lines]

    def _require_open(self, action: str) -> None:
        if self.is_cancelled:
            raise InvalidTransition(f"order {self.external_id} is cancelled: cannot {action} it")

    def _default_location(self, line_id: str) -> str:
        location = self.line(line_id).get("location")
        if not location:
            raise ValidationFailed(
                f"line {line_id} holds no stock anywhere: the fulfillment must name a location"
            )
        return str(location)

    def _shipped_location(self, line_id: str) -> str:
        for location, quantity in self.shipped.get(line_id, {}).items():
            if quantity > 0:
                return location
        return self._default_location(line_id)

    def describe(self) -> dict[str, Any]:
        return {
            "order_id": str(self.id),
            "channel": self.channel,
            "external_id": self.external_id,
            "status": self.status,
            "currency": self.currency,
            "total": self.total,
            "paid": self.paid,
            "cancel_reason": self.cancel_reason,
            "placed_at": self.created_on.isoformat(),
            "lines": [
                {
                    "line_id": line["line_id"],
                    "sku": line["sku"],
                    "quantity": line["quantity"],
                    "allocations": [
                        {"location": location, "quantity": quantity}
                        for location, quantity in self.held.get(line["line_id"], {}).items()
                    ],
                    "backordered": self.backordered.get(line["line_id"], 0),
                    "cancelled": self.cancelled_units.get(line["line_id"], 0),
                    "shipped": self.shipped_of(line["line_id"]),
                    "returned": self.returned.get(line["line_id"], 0),
                }
                for line in self.lines
            ],
            "refunded": str(self.refunded_amount),
        }


def _movements(movements: list[Movement]) -> list[dict[str, Any]]:
    return [
        {"line_id": m.line_id, "sku": m.sku, "location": m.location, "quantity": m.quantity}
        for m in movements
    ]
