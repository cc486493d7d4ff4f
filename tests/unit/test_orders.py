"""The order: its status machine, sourcing, whole-order refusal, backorders, expiry, returns,
refunds, and the correlation/causation metadata of every event."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from adapters.memory import MEMORY_ENV
from domain.errors import (
    AlreadyExists,
    IdempotencyKeyReused,
    InsufficientStock,
    InvalidTransition,
    NotFound,
    ValidationFailed,
)
from domain.keys import order_id, position_id
from domain.service import (
    CommandContext,
    FulfillmentLine,
    Ledger,
    OrderLine,
    PosLine,
    ReturnLine,
)
from tests.unit.conftest import holding_the_writer

SKU = "SKU-1"
OTHER = "SKU-2"


def _place(
    ledger: Ledger,
    external_id: str,
    *lines: OrderLine,
    total: str | None = "100.00",
    allow_backorder: bool = False,
) -> str:
    result = ledger.place_order(
        "shopify",
        external_id,
        list(lines),
        currency="EUR",
        total=total,
        allow_backorder=allow_backorder,
    )
    return str(result.body["order_id"])


def _status(ledger: Ledger, order: str) -> str:
    record = ledger.get_order(order)
    assert record is not None
    return record.status


def _allocations(body: dict[str, Any], line_id: str = "1") -> list[tuple[str, int]]:
    line = next(line for line in body["lines"] if line["line_id"] == line_id)
    return [(a["location"], a["quantity"]) for a in line["allocations"]]


@pytest.fixture
def stocked(shop: Ledger) -> Ledger:
    """10 of SKU-1 and 10 of SKU-2 at WH-A."""
    shop.receive(SKU, "WH-A", 10)
    shop.receive(OTHER, "WH-A", 10)
    return shop


# --- placing: reservations -----------------------------------------------------------------------
def test_placed_order_reserves_its_lines_and_is_reserved(stocked: Ledger, probe: Any) -> None:
    result = stocked.place_order(
        "shopify",
        "1001",
        [OrderLine("1", SKU, 2, "WH-A"), OrderLine("2", OTHER, 3, "WH-A")],
        currency="EUR",
        total="50.00",
    )

    body = result.body
    assert body["order_id"] == str(order_id("shopify", "1001"))
    assert body["status"] == "reserved"
    assert _allocations(body, "1") == [("WH-A", 2)]
    assert _allocations(body, "2") == [("WH-A", 3)]
    assert probe.types(order_id("shopify", "1001")) == ["Placed", "LinesReserved"]
    placed = probe.events(order_id("shopify", "1001"))[0]
    assert (placed.channel, placed.external_id, placed.currency, placed.total) == (
        "shopify",
        "1001",
        "EUR",
        "50.00",
    )
    assert probe.buckets(SKU, "WH-A")["reserved"] == 2
    assert probe.buckets(OTHER, "WH-A")["reserved"] == 3


def test_line_with_a_location_reserves_only_there(stocked: Ledger, probe: Any) -> None:
    stocked.receive(SKU, "WH-B", 5)

    order = _place(stocked, "1001", OrderLine("1", SKU, 4, "WH-B"))

    assert probe.buckets(SKU, "WH-B")["reserved"] == 4
    assert probe.buckets(SKU, "WH-A")["reserved"] == 0
    assert _status(stocked, order) == "reserved"


def test_line_at_an_unregistered_location_is_not_found(stocked: Ledger, probe: Any) -> None:
    before = probe.last()

    with pytest.raises(NotFound):
        _place(stocked, "1001", OrderLine("1", SKU, 1, "NOWHERE"))

    assert probe.last() == before


def test_malformed_channel_is_refused(stocked: Ledger, probe: Any) -> None:
    before = probe.last()

    for channel in ("Shopify", "", "shop ify", "9pos"):
        with pytest.raises(ValidationFailed):
            stocked.place_order(channel, "1001", [OrderLine("1", SKU, 1)])

    assert probe.last() == before


def test_order_without_lines_is_invalid(stocked: Ledger) -> None:
    with pytest.raises(ValidationFailed):
        stocked.place_order("shopify", "1001", [])


def test_order_with_a_repeated_line_id_is_invalid(stocked: Ledger) -> None:
    with pytest.raises(ValidationFailed):
        stocked.place_order("shopify", "1001", [OrderLine("1", SKU, 1), OrderLine("1", OTHER, 1)])


def test_order_with_a_malformed_sku_is_invalid(stocked: Ledger) -> None:
    with pytest.raises(ValidationFailed):
        stocked.place_order("shopify", "1001", [OrderLine("1", "bad sku", 1)])


def test_other_channels_may_use_their_own_lower_case_name(stocked: Ledger) -> None:
    stocked.register_location("MKT", name="Marketplace", kind="warehouse", channels=["amazon"])
    stocked.receive(SKU, "MKT", 1)

    result = stocked.place_order("amazon", "A-1", [OrderLine("1", SKU, 1)])

    assert _allocations(result.body) == [("MKT", 1)]


def test_placing_a_different_order_under_an_existing_id_is_refused(
    stocked: Ledger, probe: Any
) -> None:
    _place(stocked, "1001", OrderLine("1", SKU, 1))
    before = probe.last()

    with pytest.raises(AlreadyExists):
        stocked.place_order(
            "shopify",
            "1001",
            [OrderLine("1", SKU, 2)],
            context=CommandContext(idempotency_key="other-request"),
        )

    assert probe.last() == before


# --- sourcing ------------------------------------------------------------------------------------
def test_line_without_location_is_sourced_from_the_first_location_by_priority(
    shop: Ledger, probe: Any
) -> None:
    shop.receive(SKU, "WH-A", 5)
    shop.receive(SKU, "WH-B", 5)

    result = shop.place_order("shopify", "1001", [OrderLine("1", SKU, 3)])

    assert _allocations(result.body) == [("WH-A", 3)]
    assert probe.buckets(SKU, "WH-B")["reserved"] == 0


def test_priority_not_registration_order_decides_the_source(shop: Ledger) -> None:
    shop.register_location(
        "WH-0", name="Warehouse 0", kind="warehouse", channels=["shopify"], priority=0
    )
    shop.receive(SKU, "WH-A", 5)
    shop.receive(SKU, "WH-0", 5)

    result = shop.place_order("shopify", "1001", [OrderLine("1", SKU, 2)])

    assert _allocations(result.body) == [("WH-0", 2)]


def test_line_is_split_across_locations_when_the_first_runs_short(shop: Ledger, probe: Any) -> None:
    shop.receive(SKU, "WH-A", 2)
    shop.receive(SKU, "WH-B", 5)

    result = shop.place_order("shopify", "1001", [OrderLine("1", SKU, 6)])

    assert _allocations(result.body) == [("WH-A", 2), ("WH-B", 4)]
    assert probe.buckets(SKU, "WH-A")["reserved"] == 2
    assert probe.buckets(SKU, "WH-B")["reserved"] == 4
    reserved = probe.events(order_id("shopify", "1001"))[-1]
    assert [(a["location"], a["quantity"]) for a in reserved.allocations] == [
        ("WH-A", 2),
        ("WH-B", 4),
    ]


def test_sourcing_skips_locations_without_available_to_sell(shop: Ledger) -> None:
    shop.receive(SKU, "WH-A", 3)
    shop.set_safety_stock(SKU, "WH-A", 3)
    shop.receive(SKU, "WH-B", 3)

    result = shop.place_order("shopify", "1001", [OrderLine("1", SKU, 2)])

    assert _allocations(result.body) == [("WH-B", 2)]


def test_sourcing_respects_safety_stock_when_splitting(shop: Ledger) -> None:
    shop.receive(SKU, "WH-A", 5)
    shop.set_safety_stock(SKU, "WH-A", 2)
    shop.receive(SKU, "WH-B", 5)

    result = shop.place_order("shopify", "1001", [OrderLine("1", SKU, 5)])

    assert _allocations(result.body) == [("WH-A", 3), ("WH-B", 2)]


def test_location_that_does_not_serve_the_channel_is_not_used(shop: Ledger, probe: Any) -> None:
    shop.receive(SKU, "STORE-1", 50)
    before = probe.last()

    with pytest.raises(InsufficientStock):
        shop.place_order("shopify", "1001", [OrderLine("1", SKU, 1)])

    assert probe.last() == before
    assert probe.buckets(SKU, "STORE-1")["reserved"] == 0


def test_channel_change_of_a_location_changes_sourcing(shop: Ledger) -> None:
    shop.receive(SKU, "STORE-1", 5)
    shop.register_location(
        "STORE-1", name="Store 1", kind="store", channels=["pos", "shopify"], priority=10
    )

    result = shop.place_order("shopify", "1001", [OrderLine("1", SKU, 2)])

    assert _allocations(result.body) == [("STORE-1", 2)]


def test_two_lines_of_the_same_sku_share_the_stock(shop: Ledger) -> None:
    shop.receive(SKU, "WH-A", 3)
    shop.receive(SKU, "WH-B", 3)

    result = shop.place_order("shopify", "1001", [OrderLine("1", SKU, 2), OrderLine("2", SKU, 3)])

    assert _allocations(result.body, "1") == [("WH-A", 2)]
    assert _allocations(result.body, "2") == [("WH-A", 1), ("WH-B", 2)]


# --- whole-order refusal and backorders -----------------------------------------------------------
def test_order_that_cannot_be_fully_reserved_is_refused_whole(shop: Ledger, probe: Any) -> None:
    shop.receive(SKU, "WH-A", 5)
    shop.receive(OTHER, "WH-A", 1)
    before = probe.last()

    with pytest.raises(InsufficientStock) as refused:
        shop.place_order("shopify", "1001", [OrderLine("1", SKU, 2), OrderLine("2", OTHER, 2)])

    assert refused.value.status == 409
    assert refused.value.slug == "insufficient-stock"
    assert probe.last() == before
    assert shop.get_order(order_id("shopify", "1001")) is None
    assert probe.buckets(SKU, "WH-A")["reserved"] == 0
    assert probe.buckets(SKU, "WH-A")["available"] == 5


def test_split_order_that_still_runs_short_reserves_nothing(shop: Ledger, probe: Any) -> None:
    shop.receive(SKU, "WH-A", 2)
    shop.receive(SKU, "WH-B", 2)
    before = probe.last()

    with pytest.raises(InsufficientStock):
        shop.place_order("shopify", "1001", [OrderLine("1", SKU, 5)])

    assert probe.last() == before
    assert probe.buckets(SKU, "WH-A")["available"] == 2
    assert probe.buckets(SKU, "WH-B")["available"] == 2


def test_refused_order_can_be_placed_once_stock_arrives(shop: Ledger) -> None:
    with pytest.raises(InsufficientStock):
        shop.place_order("shopify", "1001", [OrderLine("1", SKU, 2)])
    shop.receive(SKU, "WH-B", 2)

    result = shop.place_order("shopify", "1001", [OrderLine("1", SKU, 2)])

    assert result.replayed is False
    assert _allocations(result.body) == [("WH-B", 2)]


def test_backorder_reserves_what_there_is_and_records_the_rest(shop: Ledger, probe: Any) -> None:
    shop.receive(SKU, "WH-A", 2)

    result = shop.place_order("shopify", "1001", [OrderLine("1", SKU, 5)], allow_backorder=True)

    line = result.body["lines"][0]
    assert line["allocations"] == [{"location": "WH-A", "quantity": 2}]
    assert line["backordered"] == 3
    assert result.body["status"] == "reserved"
    reserved = probe.events(order_id("shopify", "1001"))[-1]
    assert reserved.backordered == [{"line_id": "1", "quantity": 3}]
    assert probe.buckets(SKU, "WH-A")["reserved"] == 2


def test_backorder_with_no_stock_at_all_is_accepted(shop: Ledger, probe: Any) -> None:
    result = shop.place_order(
        "shopify", "1001", [OrderLine("1", SKU, 4, "WH-A")], allow_backorder=True
    )

    assert result.body["lines"][0]["backordered"] == 4
    assert probe.types(order_id("shopify", "1001")) == ["Placed", "LinesReserved"]


def test_backordered_units_ship_as_a_fact_from_the_named_location(shop: Ledger, probe: Any) -> None:
    order = _place(shop, "1001", OrderLine("1", SKU, 3, "WH-A"), allow_backorder=True)
    shop.receive(SKU, "WH-A", 3)
    shop.authorize_payment(order)

    shop.fulfill_order(order, "F1", [FulfillmentLine("1", 3)])

    assert _status(shop, order) == "fulfilled"
    assert probe.buckets(SKU, "WH-A")["available"] == 0
    record = shop.get_order(order)
    assert record is not None
    assert record.backordered == {}


# --- payment -------------------------------------------------------------------------------------
def test_payment_commits_the_reserved_units(stocked: Ledger, probe: Any) -> None:
    order = _place(stocked, "1001", OrderLine("1", SKU, 2), OrderLine("2", OTHER, 1))

    result = stocked.authorize_payment(order)

    assert result.body["status"] == "committed"
    assert result.body["paid"] is True
    assert probe.types(order_id("shopify", "1001"))[-1] == "PaymentAuthorized"
    assert probe.buckets(SKU, "WH-A")["committed"] == 2
    assert probe.buckets(OTHER, "WH-A")["committed"] == 1
    assert probe.buckets(SKU, "WH-A")["reserved"] == 0


def test_second_payment_records_nothing(stocked: Ledger, probe: Any) -> None:
    order = _place(stocked, "1001", OrderLine("1", SKU, 2))
    stocked.authorize_payment(order)
    before = probe.last()

    result = stocked.authorize_payment(order)

    assert result.body["status"] == "committed"
    assert probe.last() == before


def test_payment_of_an_unknown_order_is_not_found(stocked: Ledger) -> None:
    with pytest.raises(NotFound):
        stocked.authorize_payment(str(order_id("shopify", "nope")))
    with pytest.raises(NotFound):
        stocked.authorize_payment("not-a-uuid")


# --- fulfillment ----------------------------------------------------------------------------------
def test_partial_fulfillment_then_full(stocked: Ledger, probe: Any) -> None:
    order = _place(stocked, "1001", OrderLine("1", SKU, 3), OrderLine("2", OTHER, 1))
    stocked.authorize_payment(order)

    partial = stocked.fulfill_order(order, "F1", [FulfillmentLine("1", 2)])

    assert partial.body["status"] == "partially_fulfilled"
    assert probe.buckets(SKU, "WH-A")["committed"] == 1
    assert probe.buckets(SKU, "WH-A")["on_hand"] == 8

    full = stocked.fulfill_order(
        order, "F2", [FulfillmentLine("1", 1), FulfillmentLine("2", 1, "WH-A")]
    )

    assert full.body["status"] == "fulfilled"
    assert probe.buckets(SKU, "WH-A")["committed"] == 0
    assert probe.buckets(OTHER, "WH-A")["committed"] == 0
    fulfilled = [
        event
        for event in probe.events(order_id("shopify", "1001"))
        if type(event).__name__ == "Fulfilled"
    ]
    assert [event.fulfillment_id for event in fulfilled] == ["F1", "F2"]


def test_fulfillment_of_an_unpaid_order_commits_and_ships_the_held_units(
    stocked: Ledger, probe: Any
) -> None:
    order = _place(stocked, "1001", OrderLine("1", SKU, 2))

    stocked.fulfill_order(order, "F1", [FulfillmentLine("1", 2)])

    buckets = probe.buckets(SKU, "WH-A")
    assert (buckets["reserved"], buckets["committed"], buckets["on_hand"]) == (0, 0, 8)
    assert probe.position_types(SKU, "WH-A")[-2:] == ["Committed", "Shipped"]
    assert _status(stocked, order) == "fulfilled"


def test_shipping_more_than_outstanding_is_refused(stocked: Ledger, probe: Any) -> None:
    order = _place(stocked, "1001", OrderLine("1", SKU, 2))
    stocked.fulfill_order(order, "F1", [FulfillmentLine("1", 1)])
    before = probe.last()

    with pytest.raises(InvalidTransition):
        stocked.fulfill_order(order, "F2", [FulfillmentLine("1", 2)])

    assert probe.last() == before


def test_fulfillment_of_an_unknown_line_is_invalid(stocked: Ledger) -> None:
    order = _place(stocked, "1001", OrderLine("1", SKU, 2))

    with pytest.raises(ValidationFailed):
        stocked.fulfill_order(order, "F1", [FulfillmentLine("9", 1)])


def test_same_fulfillment_id_with_other_lines_is_refused(stocked: Ledger, probe: Any) -> None:
    order = _place(stocked, "1001", OrderLine("1", SKU, 3))
    stocked.fulfill_order(order, "F1", [FulfillmentLine("1", 1)])
    before = probe.last()

    with pytest.raises(IdempotencyKeyReused) as refused:
        stocked.fulfill_order(order, "F1", [FulfillmentLine("1", 2)])

    assert refused.value.status == 409
    assert probe.last() == before


def test_fulfillment_from_another_location_releases_the_held_units(
    stocked: Ledger, probe: Any
) -> None:
    stocked.receive(SKU, "WH-B", 5)
    order = _place(stocked, "1001", OrderLine("1", SKU, 2))

    stocked.fulfill_order(order, "F1", [FulfillmentLine("1", 2, "WH-B")])

    at_a = probe.buckets(SKU, "WH-A")
    assert (at_a["available"], at_a["reserved"]) == (10, 0)
    released = probe.position_events(SKU, "WH-A")[-1]
    assert type(released).__name__ == "ReservationReleased"
    assert released.reason == "reallocated"
    at_b = probe.buckets(SKU, "WH-B")
    assert (at_b["available"], at_b["on_hand"]) == (3, 3)
    assert _status(stocked, order) == "fulfilled"


def test_fulfillment_of_a_split_line_ships_from_each_location(shop: Ledger, probe: Any) -> None:
    shop.receive(SKU, "WH-A", 2)
    shop.receive(SKU, "WH-B", 2)
    order = _place(shop, "1001", OrderLine("1", SKU, 4))
    shop.authorize_payment(order)

    shop.fulfill_order(order, "F1", [FulfillmentLine("1", 4)])

    assert probe.buckets(SKU, "WH-A")["on_hand"] == 0
    assert probe.buckets(SKU, "WH-B")["on_hand"] == 0
    assert _status(shop, order) == "fulfilled"


def test_fulfillment_at_an_unregistered_location_is_not_found(stocked: Ledger) -> None:
    order = _place(stocked, "1001", OrderLine("1", SKU, 2))

    with pytest.raises(NotFound):
        stocked.fulfill_order(order, "F1", [FulfillmentLine("1", 2, "NOWHERE")])


# --- cancellation ---------------------------------------------------------------------------------
def test_cancelling_an_unpaid_order_releases_its_reservations(stocked: Ledger, probe: Any) -> None:
    order = _place(stocked, "1001", OrderLine("1", SKU, 2), OrderLine("2", OTHER, 3))

    result = stocked.cancel_order(order, "customer changed mind")

    assert result.body["status"] == "cancelled"
    assert probe.buckets(SKU, "WH-A")["available"] == 10
    assert probe.buckets(OTHER, "WH-A")["available"] == 10
    cancelled = probe.events(order_id("shopify", "1001"))[-1]
    assert type(cancelled).__name__ == "Cancelled"
    assert cancelled.reason == "customer changed mind"
    released = probe.position_events(OTHER, "WH-A")[-1]
    assert (type(released).__name__, released.reason, released.quantity) == (
        "ReservationReleased",
        "cancelled",
        3,
    )


def test_cancelling_a_paid_order_releases_its_commitments(stocked: Ledger, probe: Any) -> None:
    order = _place(stocked, "1001", OrderLine("1", SKU, 2))
    stocked.authorize_payment(order)

    stocked.cancel_order(order)

    buckets = probe.buckets(SKU, "WH-A")
    assert (buckets["available"], buckets["committed"]) == (10, 0)
    released = probe.position_events(SKU, "WH-A")[-1]
    assert type(released).__name__ == "CommitmentReleased"
    assert released.reason == "cancelled"
    assert _status(stocked, order) == "cancelled"


def test_cancelling_a_partially_fulfilled_order_releases_the_rest(
    stocked: Ledger, probe: Any
) -> None:
    order = _place(stocked, "1001", OrderLine("1", SKU, 5))
    stocked.authorize_payment(order)
    stocked.fulfill_order(order, "F1", [FulfillmentLine("1", 2)])

    stocked.cancel_order(order)

    buckets = probe.buckets(SKU, "WH-A")
    assert (buckets["available"], buckets["committed"], buckets["on_hand"]) == (8, 0, 8)
    assert _status(stocked, order) == "cancelled"


def test_fulfilled_order_cannot_be_cancelled(stocked: Ledger, probe: Any) -> None:
    order = _place(stocked, "1001", OrderLine("1", SKU, 2))
    stocked.fulfill_order(order, "F1", [FulfillmentLine("1", 2)])
    before = probe.last()

    with pytest.raises(InvalidTransition):
        stocked.cancel_order(order)

    assert probe.last() == before


def test_cancelled_order_cannot_be_paid_fulfilled_or_cancelled_again(
    stocked: Ledger, probe: Any
) -> None:
    order = _place(stocked, "1001", OrderLine("1", SKU, 2))
    stocked.cancel_order(order)
    before = probe.last()

    with pytest.raises(InvalidTransition):
        stocked.authorize_payment(order)
    with pytest.raises(InvalidTransition):
        stocked.fulfill_order(order, "F1", [FulfillmentLine("1", 1)])
    with pytest.raises(InvalidTransition):
        stocked.cancel_order(order, "again")

    assert probe.last() == before


def test_cancelling_a_backordered_order_releases_what_was_held(shop: Ledger, probe: Any) -> None:
    shop.receive(SKU, "WH-A", 1)
    order = _place(shop, "1001", OrderLine("1", SKU, 3), allow_backorder=True)

    shop.cancel_order(order)

    assert probe.buckets(SKU, "WH-A")["available"] == 1
    record = shop.get_order(order)
    assert record is not None
    assert record.backordered == {}


# --- returns --------------------------------------------------------------------------------------
def _shipped_order(ledger: Ledger, quantity: int = 4) -> str:
    order = _place(ledger, "1001", OrderLine("1", SKU, quantity))
    ledger.authorize_payment(order)
    ledger.fulfill_order(order, "F1", [FulfillmentLine("1", quantity)])
    return order


def test_return_restocked_goes_back_to_available(stocked: Ledger, probe: Any) -> None:
    order = _shipped_order(stocked)

    result = stocked.return_order(order, "R1", [ReturnLine("1", 1, "restock")])

    assert result.body["status"] == "partially_returned"
    buckets = probe.buckets(SKU, "WH-A")
    assert (buckets["available"], buckets["returned"]) == (7, 0)
    assert probe.position_types(SKU, "WH-A")[-2:] == ["ReturnReceived", "ReturnRestocked"]
    received = probe.position_events(SKU, "WH-A")[-2]
    assert (received.order, received.return_id, received.quantity) == (order, "R1", 1)
    order_event = probe.events(order_id("shopify", "1001"))[-1]
    assert type(order_event).__name__ == "ReturnReceived"
    assert order_event.lines[0]["disposition"] == "restock"


def test_return_damaged_goes_to_damaged(stocked: Ledger, probe: Any) -> None:
    order = _shipped_order(stocked)

    stocked.return_order(order, "R1", [ReturnLine("1", 2, "damaged")])

    buckets = probe.buckets(SKU, "WH-A")
    assert (buckets["damaged"], buckets["returned"], buckets["available"]) == (2, 0, 6)
    assert probe.position_types(SKU, "WH-A")[-1] == "ReturnScrapped"


def test_return_for_inspection_waits_in_returned(stocked: Ledger, probe: Any) -> None:
    order = _shipped_order(stocked)

    stocked.return_order(order, "R1", [ReturnLine("1", 4, "inspect")])

    buckets = probe.buckets(SKU, "WH-A")
    assert (buckets["returned"], buckets["available"]) == (4, 6)
    assert _status(stocked, order) == "returned"

    stocked.dispose_return(SKU, "WH-A", 3, "restock")
    stocked.dispose_return(SKU, "WH-A", 1, "damaged")

    buckets = probe.buckets(SKU, "WH-A")
    assert (buckets["returned"], buckets["available"], buckets["damaged"]) == (0, 9, 1)


def test_return_to_another_location(stocked: Ledger, probe: Any) -> None:
    order = _shipped_order(stocked)

    stocked.return_order(order, "R1", [ReturnLine("1", 1, "restock")], location="STORE-1")

    assert probe.buckets(SKU, "STORE-1")["available"] == 1
    assert probe.buckets(SKU, "WH-A")["available"] == 6


def test_return_at_an_unregistered_location_is_not_found(stocked: Ledger, probe: Any) -> None:
    order = _shipped_order(stocked)
    before = probe.last()

    with pytest.raises(NotFound):
        stocked.return_order(order, "R1", [ReturnLine("1", 1)], location="NOWHERE")

    assert probe.last() == before


def test_returning_more_than_was_shipped_is_refused(stocked: Ledger, probe: Any) -> None:
    order = _place(stocked, "1001", OrderLine("1", SKU, 4))
    stocked.fulfill_order(order, "F1", [FulfillmentLine("1", 2)])
    stocked.return_order(order, "R1", [ReturnLine("1", 1)])
    before = probe.last()

    with pytest.raises(InvalidTransition):
        stocked.return_order(order, "R2", [ReturnLine("1", 2)])

    assert probe.last() == before


def test_unshipped_order_cannot_be_returned(stocked: Ledger) -> None:
    order = _place(stocked, "1001", OrderLine("1", SKU, 2))

    with pytest.raises(InvalidTransition):
        stocked.return_order(order, "R1", [ReturnLine("1", 1)])


def test_return_with_an_unknown_disposition_is_invalid(stocked: Ledger) -> None:
    order = _shipped_order(stocked)

    with pytest.raises(ValidationFailed):
        stocked.return_order(order, "R1", [ReturnLine("1", 1, "resell")])


def test_returning_every_unit_makes_the_order_returned(stocked: Ledger) -> None:
    order = _shipped_order(stocked)

    stocked.return_order(order, "R1", [ReturnLine("1", 1)])
    assert _status(stocked, order) == "partially_returned"
    stocked.return_order(order, "R2", [ReturnLine("1", 3, "damaged")])
    assert _status(stocked, order) == "returned"


# --- refunds --------------------------------------------------------------------------------------
def test_partial_then_full_refund(stocked: Ledger, probe: Any) -> None:
    order = _shipped_order(stocked)

    partial = stocked.refund_order(order, "RF1", "40.00", "EUR", [{"line_id": "1", "quantity": 1}])

    assert partial.body["status"] == "partially_refunded"
    assert partial.body["refunded"] == "40.00"
    refunded = probe.events(order_id("shopify", "1001"))[-1]
    assert type(refunded).__name__ == "Refunded"
    assert (refunded.refund_id, refunded.amount, refunded.currency) == ("RF1", "40.00", "EUR")

    full = stocked.refund_order(order, "RF2", "60.00")

    assert full.body["status"] == "refunded"


def test_refund_over_the_order_total_is_refused(stocked: Ledger, probe: Any) -> None:
    order = _shipped_order(stocked)
    stocked.refund_order(order, "RF1", "90.00", "EUR")
    before = probe.last()

    with pytest.raises(InvalidTransition) as refused:
        stocked.refund_order(order, "RF2", "10.01", "EUR")

    assert refused.value.status == 409
    assert probe.last() == before
    assert _status(stocked, order) == "partially_refunded"


def test_refund_in_another_currency_is_invalid(stocked: Ledger) -> None:
    order = _shipped_order(stocked)

    with pytest.raises(ValidationFailed):
        stocked.refund_order(order, "RF1", "10.00", "USD")


@pytest.mark.parametrize("amount", ["-1", "abc", "NaN", "1.00001"])
def test_refund_amount_must_be_a_sane_decimal(stocked: Ledger, amount: str) -> None:
    order = _shipped_order(stocked)

    with pytest.raises(ValidationFailed):
        stocked.refund_order(order, "RF1", amount, "EUR")


def test_refund_of_an_unknown_line_is_invalid(stocked: Ledger) -> None:
    order = _shipped_order(stocked)

    with pytest.raises(ValidationFailed):
        stocked.refund_order(order, "RF1", "1.00", "EUR", [{"line_id": "9", "quantity": 1}])


def test_refund_before_shipping_leaves_the_reservation_alone(stocked: Ledger, probe: Any) -> None:
    order = _place(stocked, "1001", OrderLine("1", SKU, 2))

    stocked.refund_order(order, "RF1", "100.00", "EUR")

    assert _status(stocked, order) == "refunded"
    assert probe.buckets(SKU, "WH-A")["reserved"] == 2


# --- reservation expiry ---------------------------------------------------------------------------
def test_unpaid_reservation_expires_after_the_ttl(stocked: Ledger, probe: Any) -> None:
    order = _place(stocked, "1001", OrderLine("1", SKU, 3))
    later = datetime.now(UTC) + timedelta(minutes=31)

    result = stocked.expire_reservation(order, now=later)

    assert result.body["status"] == "cancelled"
    assert result.body["cancel_reason"] == "expired"
    assert probe.types(order_id("shopify", "1001"))[-1] == "ReservationExpired"
    released = probe.position_events(SKU, "WH-A")[-1]
    assert (type(released).__name__, released.reason, released.quantity) == (
        "ReservationReleased",
        "expired",
        3,
    )
    assert probe.buckets(SKU, "WH-A")["available"] == 10


def test_reservation_does_not_expire_before_the_ttl(stocked: Ledger, probe: Any) -> None:
    order = _place(stocked, "1001", OrderLine("1", SKU, 3))
    before = probe.last()

    with pytest.raises(InvalidTransition):
        stocked.expire_reservation(order, now=datetime.now(UTC) + timedelta(minutes=29))

    assert probe.last() == before
    assert probe.buckets(SKU, "WH-A")["reserved"] == 3


def test_paid_order_never_expires(stocked: Ledger, probe: Any) -> None:
    order = _place(stocked, "1001", OrderLine("1", SKU, 3))
    stocked.authorize_payment(order)
    before = probe.last()

    with pytest.raises(InvalidTransition):
        stocked.expire_reservation(order, now=datetime.now(UTC) + timedelta(days=365))

    assert probe.last() == before
    assert probe.buckets(SKU, "WH-A")["committed"] == 3


def test_expired_order_cannot_be_paid(stocked: Ledger) -> None:
    order = _place(stocked, "1001", OrderLine("1", SKU, 3))
    stocked.expire_reservation(order, now=datetime.now(UTC) + timedelta(hours=1))

    with pytest.raises(InvalidTransition):
        stocked.authorize_payment(order)


def test_expire_reservations_picks_only_the_expired_ones(stocked: Ledger) -> None:
    unpaid = _place(stocked, "1001", OrderLine("1", SKU, 1))
    paid = _place(stocked, "1002", OrderLine("1", SKU, 1))
    stocked.authorize_payment(paid)

    expired = stocked.expire_reservations(
        [unpaid, paid, "not-an-order"], now=datetime.now(UTC) + timedelta(hours=1)
    )

    assert expired == [unpaid]


@pytest.fixture
def ledger_with_ttl(request: pytest.FixtureRequest) -> Iterator[Ledger]:
    ledger = Ledger(env={**MEMORY_ENV, "STOCKLEDGER_RESERVATION_TTL": request.param})
    ledger.register_location("WH-A", name="A", kind="warehouse", channels=["shopify"])
    ledger.receive(SKU, "WH-A", 5)
    yield ledger
    ledger.close()


@pytest.mark.parametrize("ledger_with_ttl", ["0"], indirect=True)
def test_ttl_of_zero_means_reservations_never_expire(ledger_with_ttl: Ledger) -> None:
    order = _place(ledger_with_ttl, "1001", OrderLine("1", SKU, 1))

    with pytest.raises(InvalidTransition):
        ledger_with_ttl.expire_reservation(order, now=datetime.now(UTC) + timedelta(days=999))


@pytest.mark.parametrize("ledger_with_ttl", ["5m"], indirect=True)
def test_ttl_is_configurable(ledger_with_ttl: Ledger) -> None:
    order = _place(ledger_with_ttl, "1001", OrderLine("1", SKU, 1))
    now = datetime.now(UTC)

    with pytest.raises(InvalidTransition):
        ledger_with_ttl.expire_reservation(order, now=now + timedelta(minutes=4))
    result = ledger_with_ttl.expire_reservation(order, now=now + timedelta(minutes=6))

    assert result.body["status"] == "cancelled"


# --- correlation and causation --------------------------------------------------------------------
def test_every_event_carries_correlation_and_causation(stocked: Ledger, probe: Any) -> None:
    stocked.set_safety_stock(SKU, "WH-A", 1)
    order = _place(stocked, "1001", OrderLine("1", SKU, 3))
    stocked.authorize_payment(order)
    stocked.fulfill_order(order, "F1", [FulfillmentLine("1", 3)])
    stocked.return_order(order, "R1", [ReturnLine("1", 1, "inspect")])
    stocked.dispose_return(SKU, "WH-A", 1, "damaged")
    stocked.write_off_damage(SKU, "WH-A", 1)
    stocked.refund_order(order, "RF1", "5.00")
    other = _place(stocked, "1002", OrderLine("1", OTHER, 1))
    stocked.cancel_order(other)
    stocked.record_pos_transaction("T-1", "STORE-1", None, [PosLine(SKU, 1)])
    stocked.count(SKU, "STORE-1", 3)

    events = probe.all_events()

    assert len(events) > 20
    for event in events:
        assert isinstance(event.correlation_id, str) and event.correlation_id, event
        assert isinstance(event.causation_id, str) and event.causation_id, event


def test_events_of_one_command_share_the_request_correlation_id(
    stocked: Ledger, probe: Any
) -> None:
    before = probe.last()

    stocked.place_order(
        "shopify",
        "1001",
        [OrderLine("1", SKU, 1), OrderLine("2", OTHER, 1)],
        context=CommandContext(idempotency_key="key-1", correlation_id="req-42"),
    )

    events = probe.events_after(before)
    assert len(events) == 4  # Placed, 2 x Reserved, LinesReserved
    assert {event.correlation_id for event in events} == {"req-42"}
    assert {event.causation_id for event in events} == {"key-1"}


def test_events_of_different_commands_have_different_correlation_ids(
    stocked: Ledger, probe: Any
) -> None:
    first = probe.last()
    stocked.receive(SKU, "WH-A", 1)
    second = probe.last()
    stocked.receive(SKU, "WH-A", 1)

    (one,) = probe.events_after(first)[:1]
    (two,) = probe.events_after(second)
    assert one.correlation_id != two.correlation_id


def test_events_read_back_by_aggregate_carry_metadata(stocked: Ledger, probe: Any) -> None:
    _place(stocked, "1001", OrderLine("1", SKU, 1))

    for aggregate_id in (order_id("shopify", "1001"), position_id(SKU, "WH-A")):
        for event in probe.events(aggregate_id):
            assert event.correlation_id
            assert event.causation_id


# --- no overselling under concurrency -------------------------------------------------------------
def test_concurrent_orders_never_reserve_more_than_there_is(shop: Ledger, probe: Any) -> None:
    shop.receive(SKU, "WH-A", 7)
    shop.receive(SKU, "WH-B", 3)

    def attempt(number: int) -> bool:
        try:
            shop.place_order("shopify", f"C-{number}", [OrderLine("1", SKU, 1)])
        except InsufficientStock:
            return False
        return True

    with ThreadPoolExecutor(max_workers=16) as pool:
        outcomes = list(pool.map(attempt, range(40)))

    assert sum(outcomes) == 10
    for location in ("WH-A", "WH-B"):
        buckets = probe.buckets(SKU, location)
        assert buckets["available"] == 0
        assert buckets["reserved"] == (7 if location == "WH-A" else 3)


def test_a_submitted_order_whose_caller_stopped_waiting_is_recorded_and_the_writer_goes_on(
    shop: Ledger,
) -> None:
    shop.receive(SKU, "WH-A", 5)

    with holding_the_writer(shop):
        given_up = shop.submit_order("shopify", "given-up", [OrderLine("1", SKU, 2)])
        same_batch = shop.submit_order("shopify", "same-batch", [OrderLine("1", SKU, 1)])
        assert given_up.cancel()  # as a request that stops waiting would

    after = shop.place_order("shopify", "after", [OrderLine("1", SKU, 1)])

    assert shop.outcome(same_batch).body["status"] == "reserved"
    assert after.body["status"] == "reserved"
    recorded = shop.get_order(order_id("shopify", "given-up"))
    assert recorded is not None and recorded.status == "reserved"
    assert shop.get_position(SKU, "WH-A").buckets()["reserved"] == 4  # type: ignore[union-attr]
