"""A Hypothesis state machine drives the in-memory Ledger with random sequences of writes and
checks it against a plain-Python model of SPEC §2.

The model decides what every command must do: change which buckets by how much, or be refused
(with which error). Domain errors are expected outcomes; the test checks the ledger agrees, and
that a refusal records nothing. After every step the invariants are checked: the buckets of every
position equal the model's; on_hand is the sum of its buckets; no bucket but ``available`` is below
zero and ``available`` only with a discrepancy; reserved + committed + shipped never exceed what
the position ever had available for orders; reserved and committed are exactly what the orders
hold; order statuses match; and replaying each position's stored events gives the same state.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from adapters.memory import MEMORY_ENV
from domain.committer import WriteResult
from domain.errors import (
    DomainError,
    IdempotencyKeyReused,
    InsufficientStock,
    InvalidTransition,
    ValidationFailed,
)
from domain.keys import order_id, position_id
from domain.service import (
    FulfillmentLine,
    Ledger,
    OrderLine,
    PosLine,
    ReturnLine,
    SkuQuantity,
)

SKUS = ("SKU-A", "SKU-B", "SKU-C")
# code -> (channels, priority)
LOCATIONS: dict[str, tuple[tuple[str, ...], int]] = {
    "WH-1": (("shopify",), 1),
    "WH-2": (("shopify",), 2),
    "STORE": (("pos",), 5),
}
LOCS = tuple(LOCATIONS)
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

MAX_EXAMPLES = 60
STEPS = 40


class Refused(Exception):
    """The model's verdict: the ledger must refuse this command with ``error``."""

    def __init__(self, error: type[DomainError]) -> None:
        super().__init__(error.__name__)
        self.error = error


# --- the model ------------------------------------------------------------------------------------
@dataclass
class ModelPosition:
    available: int = 0
    reserved: int = 0
    committed: int = 0
    damaged: int = 0
    returned: int = 0
    in_transit: int = 0
    safety_stock: int = 0
    discrepancy: int = 0
    # What the position ever had available for orders: everything that came into `available`
    # from outside (receipts, positive adjustments and counts, restocks, transfer receipts)...
    supply: int = 0
    # ...less what requests took out of it (negative adjustments, damage marks, dispatches).
    taken_by_requests: int = 0
    # Units shipped out of what orders held here.
    shipped_held: int = 0

    @property
    def on_hand(self) -> int:
        return self.available + self.reserved + self.committed + self.damaged + self.returned

    @property
    def available_to_sell(self) -> int:
        return max(0, self.available - self.safety_stock)

    def buckets(self) -> dict[str, int]:
        figures = {name: getattr(self, name) for name in BUCKETS}
        figures["on_hand"] = self.on_hand
        figures["available_to_sell"] = self.available_to_sell
        return figures

    # facts drive `available` below zero: a discrepancy, recorded when the shortfall grows
    def after_fact(self) -> None:
        if self.available < 0 and -self.available > self.discrepancy:
            self.discrepancy = -self.available

    # a receipt clears the discrepancy once the shortfall is covered
    def after_receipt(self) -> None:
        if self.discrepancy and self.available >= 0:
            self.discrepancy = 0

    def require_available(self, quantity: int) -> None:
        if quantity > self.available:
            raise Refused(InsufficientStock)


@dataclass
class ModelOrder:
    the_id: str
    channel: str
    lines: list[tuple[str, str, int, str | None]]  # line_id, sku, quantity, location
    total_cents: int
    paid: bool = False
    cancelled: bool = False
    held: dict[str, dict[str, int]] = field(default_factory=dict)
    shipped: dict[str, dict[str, int]] = field(default_factory=dict)
    returned: dict[str, int] = field(default_factory=dict)
    refunded_cents: int = 0
    refunds: int = 0

    def line(self, line_id: str) -> tuple[str, str, int, str | None]:
        return next(line for line in self.lines if line[0] == line_id)

    def shipped_of(self, line_id: str) -> int:
        return sum(self.shipped.get(line_id, {}).values())

    def held_units(self) -> list[tuple[str, str, str, int]]:
        return [
            (line_id, self.line(line_id)[1], location, quantity)
            for line_id, by_location in self.held.items()
            for location, quantity in by_location.items()
            if quantity > 0
        ]

    @property
    def status(self) -> str:
        ordered = sum(line[2] for line in self.lines)
        shipped = sum(self.shipped_of(line[0]) for line in self.lines)
        returned = sum(self.returned.values())
        if self.cancelled:
            return "cancelled"
        if self.refunds:
            return "refunded" if self.refunded_cents >= self.total_cents else "partially_refunded"
        if returned:
            return "returned" if returned >= ordered else "partially_returned"
        if shipped:
            return "fulfilled" if shipped >= ordered else "partially_fulfilled"
        return "committed" if self.paid else "reserved"


@dataclass
class Model:
    positions: dict[tuple[str, str], ModelPosition] = field(default_factory=dict)
    orders: dict[str, ModelOrder] = field(default_factory=dict)
    transfers: dict[str, tuple[str, str, dict[str, int]]] = field(default_factory=dict)
    received_transfers: set[str] = field(default_factory=set)

    def pos(self, sku: str, location: str) -> ModelPosition:
        return self.positions.setdefault((sku, location), ModelPosition())

    # --- stock -------------------------------------------------------------------------------
    def receive(self, sku: str, location: str, quantity: int) -> None:
        p = self.pos(sku, location)
        p.available += quantity
        p.supply += quantity
        p.after_receipt()

    def adjust(self, sku: str, location: str, delta: int) -> None:
        p = self.pos(sku, location)
        if delta < 0:
            p.require_available(-delta)
            p.taken_by_requests += -delta
        else:
            p.supply += delta
        p.available += delta

    def count(self, sku: str, location: str, counted: int) -> None:
        p = self.pos(sku, location)
        delta = counted - p.on_hand
        p.available += delta
        if delta > 0:
            p.supply += delta
        if p.available < 0:
            p.after_fact()
        else:
            p.discrepancy = 0

    def mark_damaged(self, sku: str, location: str, quantity: int) -> None:
        p = self.pos(sku, location)
        p.require_available(quantity)
        p.available -= quantity
        p.damaged += quantity
        p.taken_by_requests += quantity

    def write_off(self, sku: str, location: str, quantity: int) -> None:
        p = self.pos(sku, location)
        if quantity > p.damaged:
            raise Refused(InsufficientStock)
        p.damaged -= quantity

    def dispose(self, sku: str, location: str, quantity: int, disposition: str) -> None:
        p = self.pos(sku, location)
        if quantity > p.returned:
            raise Refused(InsufficientStock)
        p.returned -= quantity
        if disposition == "restock":
            p.available += quantity
            p.supply += quantity
        else:
            p.damaged += quantity

    def set_safety_stock(self, sku: str, location: str, quantity: int) -> None:
        self.pos(sku, location).safety_stock = quantity

    def sell(self, sku: str, location: str, quantity: int) -> None:
        p = self.pos(sku, location)
        p.available -= quantity
        p.after_fact()

    def take_back(self, sku: str, location: str, quantity: int, disposition: str) -> None:
        self.pos(sku, location).returned += quantity
        if disposition != "inspect":
            self.dispose(sku, location, quantity, disposition)

    # --- transfers ---------------------------------------------------------------------------
    def dispatch(self, transfer: str, source: str, destination: str, lines: dict[str, int]) -> None:
        for sku, quantity in lines.items():
            p = self.pos(sku, source)
            p.require_available(quantity)
            p.available -= quantity
            p.taken_by_requests += quantity
            self.pos(sku, destination).in_transit += quantity
        self.transfers[transfer] = (source, destination, dict(lines))

    def receive_transfer(self, transfer: str, received: dict[str, int]) -> None:
        _, destination, expected = self.transfers[transfer]
        for sku, quantity in expected.items():
            p = self.pos(sku, destination)
            arrived = received.get(sku, 0)
            p.in_transit -= quantity
            p.available += arrived
            p.supply += arrived
            p.after_receipt()
        self.received_transfers.add(transfer)

    # --- orders ------------------------------------------------------------------------------
    def sources(self, channel: str) -> list[str]:
        serving = [code for code, (channels, _) in LOCATIONS.items() if channel in channels]
        return sorted(serving, key=lambda code: (LOCATIONS[code][1], code))

    def place(
        self,
        channel: str,
        external_id: str,
        lines: list[tuple[str, str, int, str | None]],
        total_cents: int,
        allow_backorder: bool,
    ) -> None:
        order = ModelOrder(str(order_id(channel, external_id)), channel, lines, total_cents)
        for line_id, sku, quantity, location in lines:
            remaining = quantity
            for code in [location] if location else self.sources(channel):
                take = min(remaining, self.pos(sku, code).available_to_sell)
                if take <= 0:
                    continue
                p = self.pos(sku, code)
                p.available -= take
                p.reserved += take
                held = order.held.setdefault(line_id, {})
                held[code] = held.get(code, 0) + take
                remaining -= take
            if remaining and not allow_backorder:
                raise Refused(InsufficientStock)
        self.orders[external_id] = order

    def pay(self, external_id: str) -> None:
        order = self.orders[external_id]
        if order.cancelled:
            raise Refused(InvalidTransition)
        if order.paid:
            return
        for _, sku, location, quantity in order.held_units():
            p = self.pos(sku, location)
            p.reserved -= quantity
            p.committed += quantity
        order.paid = True

    def _release_all(self, order: ModelOrder) -> None:
        for _, sku, location, quantity in order.held_units():
            p = self.pos(sku, location)
            if order.paid:
                p.committed -= quantity
            else:
                p.reserved -= quantity
            p.available += quantity
        order.held = {}
        order.cancelled = True

    def cancel(self, external_id: str) -> None:
        order = self.orders[external_id]
        if order.cancelled:
            raise Refused(InvalidTransition)
        if all(order.shipped_of(line_id) >= quantity for line_id, _, quantity, _ in order.lines):
            raise Refused(InvalidTransition)
        self._release_all(order)

    def expire(self, external_id: str, late: bool) -> None:
        order = self.orders[external_id]
        unpaid_hold = not order.cancelled and not order.paid and bool(order.held_units())
        if not unpaid_hold or any(order.shipped_of(line[0]) for line in order.lines) or not late:
            raise Refused(InvalidTransition)
        self._release_all(order)

    def fulfill(self, external_id: str, lines: list[tuple[str, int, str | None]]) -> None:
        order = self.orders[external_id]
        if order.cancelled:
            raise Refused(InvalidTransition)
        shipments: list[tuple[str, str, str, int, int]] = []  # line, sku, location, qty, held
        for line_id, quantity, location in lines:
            _, sku, ordered, line_location = order.line(line_id)
            if order.shipped_of(line_id) + quantity > ordered:
                raise Refused(InvalidTransition)
            held = order.held.setdefault(line_id, {})
            if location is not None:
                sources = [location]
            else:
                sources = [code for code, q in held.items() if q > 0]
                if not sources:
                    if line_location is None:
                        raise Refused(ValidationFailed)
                    sources = [line_location]
            remaining = quantity
            for index, source in enumerate(sources):
                from_held = min(remaining, held.get(source, 0))
                take = remaining if index == len(sources) - 1 else from_held
                if take <= 0:
                    continue
                held[source] = held.get(source, 0) - from_held
                shipped = order.shipped.setdefault(line_id, {})
                shipped[source] = shipped.get(source, 0) + take
                shipments.append((line_id, sku, source, take, from_held))
                remaining -= take
        for _, sku, location, quantity, from_held in shipments:
            p = self.pos(sku, location)
            if not order.paid:
                p.reserved -= from_held
                p.committed += from_held
            p.committed -= from_held
            p.shipped_held += from_held
            p.available -= quantity - from_held
            p.after_fact()
        # What a line no longer needs is given back, from where it is held, in holding order.
        for line_id, held in order.held.items():
            _, sku, ordered, _ = order.line(line_id)
            excess = sum(held.values()) - (ordered - order.shipped_of(line_id))
            for location, quantity in held.items():
                give_back = min(excess, quantity)
                if give_back <= 0:
                    continue
                p = self.pos(sku, location)
                if order.paid:
                    p.committed -= give_back
                else:
                    p.reserved -= give_back
                p.available += give_back
                held[location] -= give_back
                excess -= give_back
        order.held = {
            line_id: {code: q for code, q in held.items() if q > 0}
            for line_id, held in order.held.items()
            if any(q > 0 for q in held.values())
        }

    def take_return(
        self, external_id: str, lines: list[tuple[str, int, str]], location: str | None
    ) -> None:
        order = self.orders[external_id]
        received: list[tuple[str, str, int, str]] = []
        for line_id, quantity, disposition in lines:
            sku = order.line(line_id)[1]
            if quantity > order.shipped_of(line_id) - order.returned.get(line_id, 0):
                raise Refused(InvalidTransition)
            order.returned[line_id] = order.returned.get(line_id, 0) + quantity
            at = location or next(
                code for code, q in order.shipped.get(line_id, {}).items() if q > 0
            )
            received.append((sku, at, quantity, disposition))
        for sku, at, quantity, disposition in received:
            self.take_back(sku, at, quantity, disposition)

    def refund(self, external_id: str, cents: int) -> None:
        order = self.orders[external_id]
        if order.refunded_cents + cents > order.total_cents:
            raise Refused(InvalidTransition)
        order.refunded_cents += cents
        order.refunds += 1


def _outstanding(order: ModelOrder) -> int:
    return sum(quantity - order.shipped_of(line_id) for line_id, _, quantity, _ in order.lines)


# Which orders a command fits (it is sometimes sent to others too, to be refused).
def _payable(order: ModelOrder) -> bool:
    return not order.cancelled and not order.paid


def _open(order: ModelOrder) -> bool:
    return not order.cancelled and _outstanding(order) > 0


def _expirable(order: ModelOrder) -> bool:
    return _payable(order) and not order.shipped


def _refundable(order: ModelOrder) -> bool:
    return order.refunded_cents < order.total_cents


def _money(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


# --- strategies ---------------------------------------------------------------------------------
skus = st.sampled_from(SKUS)
locs = st.sampled_from(LOCS)
small = st.integers(min_value=1, max_value=6)
dispositions = st.sampled_from(("restock", "damaged", "inspect"))
order_requests = st.tuples(
    st.sampled_from(("shopify", "shopify", "shopify", "pos")),  # channel
    st.lists(  # lines: sku, quantity, location
        st.tuples(skus, small, st.sampled_from((None, None, None, "WH-1", "WH-2", "STORE"))),
        min_size=1,
        max_size=3,
    ),
    st.integers(min_value=100, max_value=20_000),  # total in cents
    st.booleans(),  # allow_backorder
)


# --- the machine --------------------------------------------------------------------------------
class LedgerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.ledger = Ledger(env=MEMORY_ENV)
        for code, (channels, priority) in LOCATIONS.items():
            self.ledger.register_location(
                code,
                name=code,
                kind="store" if "pos" in channels else "warehouse",
                channels=list(channels),
                priority=priority,
            )
        self.model = Model()
        self.serial = 0
        self.placed: dict[str, tuple[WriteResult, dict[str, Any]]] = {}
        self.pos_sent: dict[str, tuple[WriteResult, dict[str, Any]]] = {}

    def teardown(self) -> None:
        self.ledger.close()

    # --- plumbing ---------------------------------------------------------------------------
    def _next(self, prefix: str) -> str:
        self.serial += 1
        return f"{prefix}-{self.serial}"

    def _last(self) -> int:
        return self.ledger.recorder.max_notification_id() or 0

    def _run(
        self, decide: Callable[[Model], None], act: Callable[[], WriteResult]
    ) -> WriteResult | None:
        """Asks the model, on a copy, what must happen; then checks the ledger does it."""
        trial = copy.deepcopy(self.model)
        try:
            decide(trial)
        except Refused as verdict:
            before = self._last()
            with pytest.raises(verdict.error):
                act()
            assert self._last() == before, "a refused command recorded events"
            return None
        result = act()
        assert result.replayed is False
        self.model = trial
        return result

    def _check_body(self, result: WriteResult | None, sku: str, location: str) -> None:
        """A stock command answers the position as the writer holds it."""
        if result is None:
            return
        expected = self.model.pos(sku, location).buckets()
        assert {name: result.body[name] for name in expected} == expected

    # --- stock ------------------------------------------------------------------------------
    @initialize(
        stock=st.lists(st.integers(min_value=0, max_value=8), min_size=9, max_size=9),
        orders=st.lists(order_requests, max_size=3),
    )
    def opening(
        self,
        stock: list[int],
        orders: list[tuple[str, list[tuple[str, int, str | None]], int, bool]],
    ) -> None:
        """Opening stock everywhere, and a few orders on it."""
        places = [(sku, location) for sku in SKUS for location in LOCS]
        for (sku, location), quantity in zip(places, stock, strict=True):
            if quantity:
                self.receive(sku, location, quantity)
        for channel, lines, total_cents, allow_backorder in orders:
            self.place_order(channel, lines, total_cents, allow_backorder)

    @rule(sku=skus, location=locs, quantity=st.integers(min_value=1, max_value=10))
    def receive(self, sku: str, location: str, quantity: int) -> None:
        result = self._run(
            lambda m: m.receive(sku, location, quantity),
            lambda: self.ledger.receive(sku, location, quantity, reference="PO"),
        )
        self._check_body(result, sku, location)

    @precondition(lambda self: any(p.discrepancy for p in self.model.positions.values()))
    @rule(data=st.data())
    def receive_where_short(self, data: st.DataObject) -> None:
        """A receipt at a position with a discrepancy: covering the shortfall or not."""
        sku, location = self._holding(data, "discrepancy")
        shortfall = max(0, -self.model.pos(sku, location).available)
        self.receive(sku, location, data.draw(st.integers(1, shortfall + 3)))

    def _around(self, data: st.DataObject, held: int) -> int:
        """A quantity from 1 to one past what is held: mostly allowed, sometimes one too many."""
        return data.draw(st.integers(min_value=1, max_value=max(1, held) + 1))

    @rule(sku=skus, location=locs, data=st.data(), add=st.booleans())
    def adjust(self, sku: str, location: str, data: st.DataObject, add: bool) -> None:
        if add:
            delta = data.draw(st.integers(min_value=1, max_value=6))
        else:
            delta = -self._around(data, self.model.pos(sku, location).available)
        result = self._run(
            lambda m: m.adjust(sku, location, delta),
            lambda: self.ledger.adjust(sku, location, delta, "cycle check"),
        )
        self._check_body(result, sku, location)

    @rule(sku=skus, location=locs, data=st.data())
    def count(self, sku: str, location: str, data: st.DataObject) -> None:
        on_hand = self.model.pos(sku, location).on_hand
        low = max(0, on_hand - 4)
        counted = data.draw(st.integers(min_value=low, max_value=max(low + 4, on_hand + 4)))
        result = self._run(
            lambda m: m.count(sku, location, counted),
            lambda: self.ledger.count(sku, location, counted),
        )
        self._check_body(result, sku, location)

    @rule(sku=skus, location=locs, data=st.data())
    def mark_damaged(self, sku: str, location: str, data: st.DataObject) -> None:
        quantity = self._around(data, self.model.pos(sku, location).available)
        result = self._run(
            lambda m: m.mark_damaged(sku, location, quantity),
            lambda: self.ledger.mark_damaged(sku, location, quantity, "dropped"),
        )
        self._check_body(result, sku, location)

    def _holding(self, data: st.DataObject, bucket: str) -> tuple[str, str]:
        """Mostly a position with units in ``bucket``; sometimes any."""
        holding = sorted(
            place for place, p in self.model.positions.items() if getattr(p, bucket) > 0
        )
        if holding and data.draw(st.sampled_from((True, True, True, True, False))):
            return data.draw(st.sampled_from(holding))
        return data.draw(skus), data.draw(locs)

    @precondition(lambda self: any(p.damaged for p in self.model.positions.values()))
    @rule(data=st.data())
    def write_off(self, data: st.DataObject) -> None:
        sku, location = self._holding(data, "damaged")
        quantity = self._around(data, self.model.pos(sku, location).damaged)
        result = self._run(
            lambda m: m.write_off(sku, location, quantity),
            lambda: self.ledger.write_off_damage(sku, location, quantity),
        )
        self._check_body(result, sku, location)

    @precondition(lambda self: any(p.returned for p in self.model.positions.values()))
    @rule(data=st.data(), disposition=st.sampled_from(("restock", "damaged")))
    def dispose_return(self, data: st.DataObject, disposition: str) -> None:
        sku, location = self._holding(data, "returned")
        quantity = self._around(data, self.model.pos(sku, location).returned)
        result = self._run(
            lambda m: m.dispose(sku, location, quantity, disposition),
            lambda: self.ledger.dispose_return(sku, location, quantity, disposition),
        )
        self._check_body(result, sku, location)

    @rule(sku=skus, location=locs, quantity=st.integers(min_value=0, max_value=4))
    def set_safety_stock(self, sku: str, location: str, quantity: int) -> None:
        result = self._run(
            lambda m: m.set_safety_stock(sku, location, quantity),
            lambda: self.ledger.set_safety_stock(sku, location, quantity),
        )
        self._check_body(result, sku, location)

    # --- point of sale ----------------------------------------------------------------------
    @rule(
        location=st.sampled_from(("STORE", "STORE", "STORE", "WH-1")),
        lines=st.lists(
            st.tuples(
                skus,
                st.integers(min_value=-3, max_value=4).filter(bool),
                dispositions,
            ),
            min_size=1,
            max_size=3,
            unique_by=lambda line: line[0],
        ),
    )
    def pos_transaction(self, location: str, lines: list[tuple[str, int, str]]) -> None:
        transaction = self._next("T")

        def decide(m: Model) -> None:
            for sku, quantity, disposition in lines:
                if quantity > 0:
                    m.sell(sku, location, quantity)
                else:
                    m.take_back(sku, location, -quantity, disposition)

        pos_lines = [PosLine(sku, quantity, disposition) for sku, quantity, disposition in lines]
        result = self._run(
            decide,
            lambda: self.ledger.record_pos_transaction(
                transaction, location, "2024-05-01T10:00:00+00:00", pos_lines
            ),
        )
        assert result is not None
        self.pos_sent[transaction] = (
            result,
            {"location": location, "lines": pos_lines},
        )

    @precondition(lambda self: bool(self.pos_sent))
    @rule(data=st.data(), same=st.booleans())
    def pos_transaction_again(self, data: st.DataObject, same: bool) -> None:
        transaction = data.draw(st.sampled_from(sorted(self.pos_sent)))
        first, request = self.pos_sent[transaction]
        lines = request["lines"]
        if not same:
            lines = [PosLine(line.sku, line.quantity + 10, line.disposition) for line in lines]
        before = self._last()
        if same:
            again = self.ledger.record_pos_transaction(
                transaction, request["location"], "2024-05-01T10:00:00+00:00", lines
            )
            assert again.replayed is True
            assert again.body == first.body
            assert again.position == first.position
        else:
            with pytest.raises(IdempotencyKeyReused):
                self.ledger.record_pos_transaction(
                    transaction, request["location"], "2024-05-01T10:00:00+00:00", lines
                )
        assert self._last() == before

    # --- transfers --------------------------------------------------------------------------
    @rule(
        route=st.permutations(LOCS).map(lambda p: (p[0], p[1])),
        chosen=st.lists(skus, min_size=1, max_size=2, unique=True),
        data=st.data(),
    )
    def dispatch_transfer(
        self, route: tuple[str, str], chosen: list[str], data: st.DataObject
    ) -> None:
        source, destination = route
        lines = {sku: self._around(data, self.model.pos(sku, source).available) for sku in chosen}
        transfer = self._next("TR")
        self._run(
            lambda m: m.dispatch(transfer, source, destination, lines),
            lambda: self.ledger.dispatch_transfer(
                transfer,
                source,
                destination,
                [SkuQuantity(sku, quantity) for sku, quantity in lines.items()],
            ),
        )

    @precondition(lambda self: bool(set(self.model.transfers) - self.model.received_transfers))
    @rule(data=st.data())
    def receive_transfer(self, data: st.DataObject) -> None:
        open_transfers = sorted(set(self.model.transfers) - self.model.received_transfers)
        transfer = data.draw(st.sampled_from(open_transfers))
        expected = self.model.transfers[transfer][2]
        received: dict[str, int] = {}
        for sku, quantity in expected.items():
            # Mostly all of it, sometimes a shortfall, sometimes the line is left out (none came).
            arrived = data.draw(
                st.one_of(st.just(quantity), st.integers(min_value=0, max_value=quantity + 1))
            )
            if arrived or data.draw(st.booleans()):
                received[sku] = arrived
        lines = [SkuQuantity(sku, quantity) for sku, quantity in received.items()] or [
            SkuQuantity(next(iter(expected)), 0)
        ]
        result = self._run(
            lambda m: m.receive_transfer(transfer, received),
            lambda: self.ledger.receive_transfer(transfer, lines),
        )
        assert result is not None
        for line in result.body["lines"]:
            assert line["received"] == received.get(line["sku"], 0)

    # --- orders -----------------------------------------------------------------------------
    @rule(request=order_requests)
    def place(self, request: tuple[str, list[tuple[str, int, str | None]], int, bool]) -> None:
        self.place_order(*request)

    def place_order(
        self,
        channel: str,
        lines: list[tuple[str, int, str | None]],
        total_cents: int,
        allow_backorder: bool,
    ) -> None:
        external_id = self._next("O")
        model_lines = [
            (str(index), sku, quantity, location)
            for index, (sku, quantity, location) in enumerate(lines, start=1)
        ]
        request = {
            "channel": channel,
            "lines": [OrderLine(*line) for line in model_lines],
            "currency": "EUR",
            "total": _money(total_cents),
            "allow_backorder": allow_backorder,
        }
        result = self._run(
            lambda m: m.place(channel, external_id, model_lines, total_cents, allow_backorder),
            lambda: self._place(external_id, request),
        )
        if result is None:
            return
        self.placed[external_id] = (result, request)
        order = self.model.orders[external_id]
        assert result.body["order_id"] == order.the_id
        for line in result.body["lines"]:
            allocations = {a["location"]: a["quantity"] for a in line["allocations"]}
            assert allocations == order.held.get(line["line_id"], {})

    def _place(self, external_id: str, request: dict[str, Any]) -> WriteResult:
        return self.ledger.place_order(
            request["channel"],
            external_id,
            request["lines"],
            currency=request["currency"],
            total=request["total"],
            allow_backorder=request["allow_backorder"],
        )

    @precondition(lambda self: bool(self.placed))
    @rule(data=st.data())
    def place_order_again(self, data: st.DataObject) -> None:
        external_id = data.draw(st.sampled_from(sorted(self.placed)))
        first, request = self.placed[external_id]
        before = self._last()

        again = self._place(external_id, request)

        assert again.replayed is True
        assert again.body == first.body
        assert again.position == first.position
        assert self._last() == before

    def _any_order(self, fits: Callable[[ModelOrder], bool]) -> bool:
        return any(fits(order) for order in self.model.orders.values())

    def _pick_order(self, data: st.DataObject, fits: Callable[[ModelOrder], bool]) -> str:
        """Mostly an order the command fits; sometimes any order, to be refused."""
        fitting = sorted(
            external_id for external_id, order in self.model.orders.items() if fits(order)
        )
        if fitting and data.draw(st.sampled_from((True, True, True, True, False))):
            return data.draw(st.sampled_from(fitting))
        return data.draw(st.sampled_from(sorted(self.model.orders)))

    @precondition(lambda self: self._any_order(_payable))
    @rule(data=st.data())
    def pay(self, data: st.DataObject) -> None:
        external_id = self._pick_order(data, _payable)
        the_id = self.model.orders[external_id].the_id
        self._run(lambda m: m.pay(external_id), lambda: self.ledger.authorize_payment(the_id))

    @precondition(lambda self: self._any_order(_open))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        external_id = self._pick_order(data, _open)
        the_id = self.model.orders[external_id].the_id
        self._run(lambda m: m.cancel(external_id), lambda: self.ledger.cancel_order(the_id))

    @precondition(lambda self: self._any_order(_expirable))
    @rule(data=st.data(), late=st.booleans())
    def expire(self, data: st.DataObject, late: bool) -> None:
        external_id = self._pick_order(data, _expirable)
        the_id = self.model.orders[external_id].the_id
        now = datetime.now(UTC) + (timedelta(hours=1) if late else timedelta(0))
        self._run(
            lambda m: m.expire(external_id, late),
            lambda: self.ledger.expire_reservation(the_id, now=now),
        )

    @precondition(lambda self: self._any_order(_open))
    @rule(data=st.data())
    def fulfill(self, data: st.DataObject) -> None:
        external_id = self._pick_order(data, _open)
        order = self.model.orders[external_id]
        unshipped = [line for line in order.lines if order.shipped_of(line[0]) < line[2]]
        chosen = data.draw(
            st.lists(st.sampled_from(unshipped or order.lines), min_size=1, max_size=3, unique=True)
        )
        too_many = data.draw(st.sampled_from([None] * 3 * len(chosen) + chosen))
        lines: list[tuple[str, int, str | None]] = []
        for line in chosen:
            line_id, _, quantity, _ = line
            outstanding = quantity - order.shipped_of(line_id)
            if line == too_many or outstanding == 0:
                ship = outstanding + 1
            else:
                ship = data.draw(st.integers(min_value=1, max_value=outstanding))
            location = data.draw(st.sampled_from((None, None, None, *LOCS)))
            lines.append((line_id, ship, location))
        fulfillment = self._next("F")
        self._run(
            lambda m: m.fulfill(external_id, lines),
            lambda: self.ledger.fulfill_order(
                order.the_id, fulfillment, [FulfillmentLine(*line) for line in lines]
            ),
        )

    def _shipped_orders(self) -> list[str]:
        return sorted(
            external_id
            for external_id, order in self.model.orders.items()
            if any(order.shipped_of(line[0]) for line in order.lines)
        )

    @precondition(lambda self: bool(self._shipped_orders()))
    @rule(data=st.data())
    def return_order(self, data: st.DataObject) -> None:
        shipped = self._shipped_orders()
        external_id = data.draw(st.sampled_from(shipped))
        order = self.model.orders[external_id]
        candidates = [line for line in order.lines if order.shipped_of(line[0])]
        chosen = data.draw(
            st.lists(st.sampled_from(candidates), min_size=1, max_size=2, unique=True)
        )
        too_many = data.draw(st.sampled_from([None] * 3 * len(chosen) + chosen))
        lines: list[tuple[str, int, str]] = []
        for line in chosen:
            line_id = line[0]
            returnable = order.shipped_of(line_id) - order.returned.get(line_id, 0)
            if line == too_many or returnable == 0:
                quantity = returnable + 1
            else:
                quantity = data.draw(st.integers(min_value=1, max_value=returnable))
            lines.append((line_id, quantity, data.draw(dispositions)))
        location = data.draw(st.sampled_from((None, None, None, *LOCS)))
        return_id = self._next("R")
        self._run(
            lambda m: m.take_return(external_id, lines, location),
            lambda: self.ledger.return_order(
                order.the_id,
                return_id,
                [ReturnLine(*line) for line in lines],
                location=location,
            ),
        )

    @precondition(lambda self: self._any_order(_refundable))
    @rule(data=st.data())
    def refund(self, data: st.DataObject) -> None:
        external_id = self._pick_order(data, _refundable)
        order = self.model.orders[external_id]
        left = order.total_cents - order.refunded_cents
        cents = data.draw(st.integers(min_value=1, max_value=max(1, left + 50)))
        refund_id = self._next("RF")
        self._run(
            lambda m: m.refund(external_id, cents),
            lambda: self.ledger.refund_order(order.the_id, refund_id, _money(cents), "EUR"),
        )

    # --- invariants -------------------------------------------------------------------------
    @invariant()
    def ledger_agrees_with_the_model(self) -> None:
        """Every position is read once per step, two ways: a fresh repository read (the store,
        not the writer's cache) and a fold of its stored events."""
        for sku in SKUS:
            for location in LOCS:
                the_id = position_id(sku, location)
                events = list(self.ledger.repository.event_store.get(the_id))
                expected = self.model.pos(sku, location)
                if not events:
                    assert self.ledger.get_position(sku, location) is None
                    assert expected.buckets() == ModelPosition().buckets(), (sku, location)
                    continue
                fresh = self.ledger.repository.get(the_id)
                rebuilt: Any = None
                for event in events:
                    rebuilt = event.mutate(rebuilt)
                where = (sku, location)
                # the buckets equal the model's, and replaying the events gives the same state
                assert fresh.buckets() == expected.buckets(), where
                assert rebuilt.buckets() == expected.buckets(), where
                assert rebuilt.version == fresh.version == len(events), where
                self._check_bucket_rules(fresh.buckets(), where)
                self._check_no_overselling(fresh, events, expected, where)
        self._check_orders()

    @staticmethod
    def _check_bucket_rules(figures: dict[str, int], where: tuple[str, str]) -> None:
        assert figures["on_hand"] == sum(
            figures[name] for name in ("available", "reserved", "committed", "damaged", "returned")
        ), where
        # on_hand is not a bucket: it goes below zero with `available`, and only with it.
        for name, value in figures.items():
            if name not in ("available", "on_hand"):
                assert value >= 0, (where, name, value)
        if figures["available"] < 0 or figures["on_hand"] < 0:
            assert figures["discrepancy"] > 0, where
        assert figures["available_to_sell"] == max(
            0, figures["available"] - figures["safety_stock"]
        ), where

    @staticmethod
    def _check_no_overselling(
        position: Any, events: list[Any], expected: ModelPosition, where: tuple[str, str]
    ) -> None:
        """Reserved + committed + shipped never exceed what the position ever had for them:
        what came in, less what requests took out. Checked on the model's running totals and
        on the same totals worked out from the ledger's own events."""
        for_orders = expected.supply - expected.taken_by_requests
        assert expected.reserved + expected.committed + expected.shipped_held <= for_orders, where
        supply = taken = shipped = 0
        for event in events:
            kind = type(event).__name__
            if kind in ("Received", "ReturnRestocked", "TransferReceived"):
                supply += event.quantity
            elif kind in ("Adjusted", "Counted") and event.delta > 0:
                supply += event.delta
            elif kind == "Adjusted":
                taken -= event.delta
            elif kind in ("MarkedDamaged", "TransferDispatched"):
                taken += event.quantity
            elif kind == "Shipped":
                shipped += event.quantity - event.from_available
        assert (supply, taken, shipped) == (
            expected.supply,
            expected.taken_by_requests,
            expected.shipped_held,
        ), where
        assert position.reserved + position.committed + shipped <= supply - taken, where

    def _check_orders(self) -> None:
        """Statuses match, and positions reserve and commit exactly what the orders hold."""
        reserved: dict[tuple[str, str], int] = {}
        committed: dict[tuple[str, str], int] = {}
        for external_id, model_order in self.model.orders.items():
            order = self.ledger.get_order(model_order.the_id)
            assert order is not None
            assert order.status == model_order.status, external_id
            assert order.paid == model_order.paid, external_id
            assert order.held == model_order.held, external_id
            for line_id, by_location in order.held.items():
                sku = order.line(line_id)["sku"]
                into = committed if order.paid else reserved
                for location, quantity in by_location.items():
                    into[(sku, location)] = into.get((sku, location), 0) + quantity
        for (sku, location), p in self.model.positions.items():
            assert p.reserved == reserved.get((sku, location), 0), (sku, location)
            assert p.committed == committed.get((sku, location), 0), (sku, location)


LedgerMachine.TestCase.settings = settings(
    max_examples=MAX_EXAMPLES,
    stateful_step_count=STEPS,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_ledger_state_machine = LedgerMachine.TestCase
