"""The stock position: every transition of SPEC §2, requests refused, facts never refused."""

from __future__ import annotations

from typing import Any

import pytest

from domain.errors import InsufficientStock, NotFound, ValidationFailed
from domain.keys import order_id, position_id
from domain.service import FulfillmentLine, Ledger, OrderLine, PosLine, SkuQuantity
from domain.stock import StockPosition

SKU = "SKU-1"


def _reserve(ledger: Ledger, external_id: str, quantity: int, location: str = "WH-A") -> str:
    result = ledger.place_order("shopify", external_id, [OrderLine("1", SKU, quantity, location)])
    return str(result.body["order_id"])


def _ship(ledger: Ledger, order: str, quantity: int, fulfillment: str = "F1") -> None:
    ledger.fulfill_order(order, fulfillment, [FulfillmentLine("1", quantity)])


# --- Received / Adjusted / Counted -------------------------------------------------------------
def test_receipt_adds_to_available(shop: Ledger, probe: Any) -> None:
    result = shop.receive(SKU, "WH-A", 7, reference="PO-1")

    assert result.body["available"] == 7
    assert result.body["on_hand"] == 7
    assert result.position == probe.last()
    received = probe.position_events(SKU, "WH-A")[-1]
    assert type(received).__name__ == "Received"
    assert (received.quantity, received.reference) == (7, "PO-1")


def test_receipts_accumulate(shop: Ledger, probe: Any) -> None:
    shop.receive(SKU, "WH-A", 3)
    shop.receive(SKU, "WH-A", 4)

    assert probe.buckets(SKU, "WH-A")["available"] == 7


def test_first_write_opens_the_position(shop: Ledger, probe: Any) -> None:
    shop.receive(SKU, "WH-A", 1)

    assert probe.position_types(SKU, "WH-A") == ["Opened", "Received"]
    opened = probe.position_events(SKU, "WH-A")[0]
    assert (opened.sku, opened.location) == (SKU, "WH-A")


def test_positive_adjustment_adds_to_available(shop: Ledger, probe: Any) -> None:
    shop.receive(SKU, "WH-A", 5)
    shop.adjust(SKU, "WH-A", 3, "found behind a shelf")

    assert probe.buckets(SKU, "WH-A")["available"] == 8
    adjusted = probe.position_events(SKU, "WH-A")[-1]
    assert type(adjusted).__name__ == "Adjusted"
    assert (adjusted.delta, adjusted.reason) == (3, "found behind a shelf")


def test_negative_adjustment_takes_from_available(shop: Ledger, probe: Any) -> None:
    shop.receive(SKU, "WH-A", 5)
    shop.adjust(SKU, "WH-A", -5, "shrinkage")

    assert probe.buckets(SKU, "WH-A")["available"] == 0


def test_negative_adjustment_beyond_available_is_refused(shop: Ledger, probe: Any) -> None:
    shop.receive(SKU, "WH-A", 5)
    before = probe.last()

    with pytest.raises(InsufficientStock) as refused:
        shop.adjust(SKU, "WH-A", -6, "shrinkage")

    assert refused.value.status == 409
    assert refused.value.slug == "insufficient-stock"
    assert probe.last() == before
    assert probe.buckets(SKU, "WH-A")["available"] == 5


def test_negative_adjustment_cannot_take_reserved_units(shop: Ledger, probe: Any) -> None:
    shop.receive(SKU, "WH-A", 5)
    _reserve(shop, "o-1", 4)
    before = probe.last()

    with pytest.raises(InsufficientStock):
        shop.adjust(SKU, "WH-A", -2, "shrinkage")

    assert probe.last() == before


def test_zero_adjustment_is_invalid(shop: Ledger) -> None:
    with pytest.raises(ValidationFailed):
        shop.adjust(SKU, "WH-A", 0, "nothing")


def test_adjustment_needs_a_reason(shop: Ledger) -> None:
    with pytest.raises(ValidationFailed):
        shop.adjust(SKU, "WH-A", 1, "")


def test_count_sets_on_hand_to_the_counted_figure(shop: Ledger, probe: Any) -> None:
    shop.receive(SKU, "WH-A", 10)
    _reserve(shop, "o-1", 3)
    shop.mark_damaged(SKU, "WH-A", 2)

    shop.count(SKU, "WH-A", 8)

    buckets = probe.buckets(SKU, "WH-A")
    assert buckets["on_hand"] == 8
    assert (buckets["available"], buckets["reserved"], buckets["damaged"]) == (3, 3, 2)
    counted = probe.position_events(SKU, "WH-A")[-1]
    assert type(counted).__name__ == "Counted"
    assert (counted.counted, counted.delta) == (8, -2)


def test_count_above_books_adds_to_available(shop: Ledger, probe: Any) -> None:
    shop.receive(SKU, "WH-A", 4)

    shop.count(SKU, "WH-A", 9)

    assert probe.buckets(SKU, "WH-A")["available"] == 9


def test_count_of_zero_on_a_new_position_is_recorded(shop: Ledger, probe: Any) -> None:
    shop.count(SKU, "WH-A", 0)

    assert probe.position_types(SKU, "WH-A") == ["Opened", "Counted"]
    assert probe.buckets(SKU, "WH-A")["on_hand"] == 0


def test_count_below_held_units_is_never_refused_and_records_a_discrepancy(
    shop: Ledger, probe: Any
) -> None:
    shop.receive(SKU, "WH-A", 5)
    _reserve(shop, "o-1", 4)

    shop.count(SKU, "WH-A", 1)

    buckets = probe.buckets(SKU, "WH-A")
    assert buckets["on_hand"] == 1
    assert buckets["available"] == -3
    assert buckets["discrepancy"] == 3
    assert probe.position_types(SKU, "WH-A")[-2:] == ["Counted", "DiscrepancyRecorded"]


# --- SafetyStockSet ----------------------------------------------------------------------------
def test_safety_stock_lowers_available_to_sell_but_not_available(shop: Ledger, probe: Any) -> None:
    shop.receive(SKU, "WH-A", 10)

    shop.set_safety_stock(SKU, "WH-A", 4)

    buckets = probe.buckets(SKU, "WH-A")
    assert (buckets["available"], buckets["safety_stock"], buckets["available_to_sell"]) == (
        10,
        4,
        6,
    )
    assert probe.position_types(SKU, "WH-A")[-1] == "SafetyStockSet"


def test_available_to_sell_never_goes_below_zero(shop: Ledger, probe: Any) -> None:
    shop.receive(SKU, "WH-A", 2)

    shop.set_safety_stock(SKU, "WH-A", 5)

    assert probe.buckets(SKU, "WH-A")["available_to_sell"] == 0


def test_setting_the_same_safety_stock_again_records_nothing(shop: Ledger, probe: Any) -> None:
    shop.set_safety_stock(SKU, "WH-A", 3)
    before = probe.position_types(SKU, "WH-A")

    shop.set_safety_stock(SKU, "WH-A", 3)

    assert probe.position_types(SKU, "WH-A") == before


def test_safety_stock_can_be_set_back_to_zero(shop: Ledger, probe: Any) -> None:
    shop.receive(SKU, "WH-A", 2)
    shop.set_safety_stock(SKU, "WH-A", 1)

    shop.set_safety_stock(SKU, "WH-A", 0)

    assert probe.buckets(SKU, "WH-A")["available_to_sell"] == 2


def test_negative_safety_stock_is_invalid(shop: Ledger) -> None:
    with pytest.raises(ValidationFailed):
        shop.set_safety_stock(SKU, "WH-A", -1)


def test_reservation_beyond_available_to_sell_is_refused_because_of_safety_stock(
    shop: Ledger, probe: Any
) -> None:
    shop.receive(SKU, "WH-A", 10)
    shop.set_safety_stock(SKU, "WH-A", 4)
    before = probe.last()

    with pytest.raises(InsufficientStock):
        _reserve(shop, "o-1", 7)

    assert probe.last() == before
    _reserve(shop, "o-2", 6)
    assert probe.buckets(SKU, "WH-A")["available_to_sell"] == 0


def test_safety_stock_does_not_limit_other_requests(shop: Ledger, probe: Any) -> None:
    shop.receive(SKU, "WH-A", 5)
    shop.set_safety_stock(SKU, "WH-A", 5)

    shop.mark_damaged(SKU, "WH-A", 2)
    shop.adjust(SKU, "WH-A", -3, "shrinkage")

    assert probe.buckets(SKU, "WH-A")["available"] == 0


# --- Reserved ----------------------------------------------------------------------------------
def test_reservation_moves_available_to_reserved(shop: Ledger, probe: Any) -> None:
    shop.receive(SKU, "WH-A", 5)

    order = _reserve(shop, "o-1", 2)

    buckets = probe.buckets(SKU, "WH-A")
    assert (buckets["available"], buckets["reserved"], buckets["on_hand"]) == (3, 2, 5)
    reserved = probe.position_events(SKU, "WH-A")[-1]
    assert type(reserved).__name__ == "Reserved"
    assert (reserved.order, reserved.line, reserved.quantity) == (order, "1", 2)


def test_second_reservation_of_last_unit_is_refused(shop: Ledger, probe: Any) -> None:
    shop.receive(SKU, "WH-A", 1)
    _reserve(shop, "o-1", 1)
    before = probe.last()

    with pytest.raises(InsufficientStock) as refused:
        _reserve(shop, "o-2", 1)

    assert refused.value.status == 409
    assert probe.last() == before
    assert shop.get_order(order_id("shopify", "o-2")) is None


# --- ReservationReleased / Committed / Shipped --------------------------------------------------
def test_cancellation_releases_the_reservation(shop: Ledger, probe: Any) -> None:
    shop.receive(SKU, "WH-A", 5)
    order = _reserve(shop, "o-1", 2)

    shop.cancel_order(order)

    buckets = probe.buckets(SKU, "WH-A")
    assert (buckets["available"], buckets["reserved"]) == (5, 0)
    released = probe.position_events(SKU, "WH-A")[-1]
    assert type(released).__name__ == "ReservationReleased"
    assert (released.order, released.quantity, released.reason) == (order, 2, "cancelled")


def test_payment_moves_reserved_to_committed(shop: Ledger, probe: Any) -> None:
    shop.receive(SKU, "WH-A", 5)
    order = _reserve(shop, "o-1", 2)

    shop.authorize_payment(order)

    buckets = probe.buckets(SKU, "WH-A")
    assert (buckets["available"], buckets["reserved"], buckets["committed"]) == (3, 0, 2)
    committed = probe.position_events(SKU, "WH-A")[-1]
    assert type(committed).__name__ == "Committed"
    assert (committed.order, committed.quantity) == (order, 2)


def test_shipment_takes_committed_units_out_of_on_hand(shop: Ledger, probe: Any) -> None:
    shop.receive(SKU, "WH-A", 5)
    order = _reserve(shop, "o-1", 2)
    shop.authorize_payment(order)

    _ship(shop, order, 2)

    buckets = probe.buckets(SKU, "WH-A")
    assert (buckets["available"], buckets["committed"], buckets["on_hand"]) == (3, 0, 3)
    shipped = probe.position_events(SKU, "WH-A")[-1]
    assert type(shipped).__name__ == "Shipped"
    assert (shipped.order, shipped.fulfillment, shipped.quantity) == (order, "F1", 2)


def test_shipment_is_a_fact_never_refused_when_the_location_holds_nothing(
    shop: Ledger, probe: Any
) -> None:
    shop.receive(SKU, "WH-A", 2)
    order = _reserve(shop, "o-1", 2)
    shop.authorize_payment(order)

    # Shipped from WH-B, which never had the SKU: the books were wrong there.
    shop.fulfill_order(order, "F1", [FulfillmentLine("1", 2, "WH-B")])

    at_b = probe.buckets(SKU, "WH-B")
    assert at_b["available"] == -2
    assert at_b["discrepancy"] == 2
    assert probe.position_types(SKU, "WH-B")[-2:] == ["Shipped", "DiscrepancyRecorded"]
    # The units held at WH-A are given back.
    at_a = probe.buckets(SKU, "WH-A")
    assert (at_a["available"], at_a["committed"]) == (2, 0)


# --- Sold ---------------------------------------------------------------------------------------
def test_pos_sale_takes_from_available(shop: Ledger, probe: Any) -> None:
    shop.receive(SKU, "STORE-1", 5)

    shop.record_pos_transaction("T-1", "STORE-1", None, [PosLine(SKU, 2)])

    assert probe.buckets(SKU, "STORE-1")["available"] == 3
    sold = probe.position_events(SKU, "STORE-1")[-1]
    assert type(sold).__name__ == "Sold"
    assert (sold.transaction, sold.quantity) == ("T-1", 2)


def test_pos_sale_beyond_available_is_never_refused_and_records_a_discrepancy(
    shop: Ledger, probe: Any
) -> None:
    shop.receive(SKU, "STORE-1", 1)

    shop.record_pos_transaction("T-1", "STORE-1", "2024-05-01T10:00:00+02:00", [PosLine(SKU, 3)])

    buckets = probe.buckets(SKU, "STORE-1")
    assert (buckets["available"], buckets["discrepancy"]) == (-2, 2)
    assert probe.position_types(SKU, "STORE-1")[-2:] == ["Sold", "DiscrepancyRecorded"]
    recorded = probe.position_events(SKU, "STORE-1")[-1]
    assert (recorded.shortfall, recorded.cause) == (2, "Sold")


def test_pos_sale_at_a_location_with_no_stock_record_is_a_fact(shop: Ledger, probe: Any) -> None:
    shop.record_pos_transaction("T-1", "STORE-1", None, [PosLine(SKU, 1)])

    assert probe.buckets(SKU, "STORE-1")["discrepancy"] == 1


def test_a_growing_shortfall_is_recorded_again(shop: Ledger, probe: Any) -> None:
    shop.record_pos_transaction("T-1", "STORE-1", None, [PosLine(SKU, 1)])
    shop.record_pos_transaction("T-2", "STORE-1", None, [PosLine(SKU, 2)])

    assert probe.buckets(SKU, "STORE-1")["discrepancy"] == 3
    assert probe.position_types(SKU, "STORE-1").count("DiscrepancyRecorded") == 2


def test_pos_sale_needs_a_time_zone_on_occurred_at(shop: Ledger) -> None:
    with pytest.raises(ValidationFailed):
        shop.record_pos_transaction("T-1", "STORE-1", "2024-05-01T10:00:00", [PosLine(SKU, 1)])


def test_pos_line_of_zero_is_invalid(shop: Ledger) -> None:
    with pytest.raises(ValidationFailed):
        shop.record_pos_transaction("T-1", "STORE-1", None, [PosLine(SKU, 0)])


# --- discrepancies cleared by a count or a receipt ---------------------------------------------
def test_receipt_that_covers_the_shortfall_clears_the_discrepancy(shop: Ledger, probe: Any) -> None:
    shop.record_pos_transaction("T-1", "STORE-1", None, [PosLine(SKU, 3)])

    shop.receive(SKU, "STORE-1", 5)

    buckets = probe.buckets(SKU, "STORE-1")
    assert (buckets["available"], buckets["discrepancy"]) == (2, 0)
    cleared = probe.position_events(SKU, "STORE-1")[-1]
    assert type(cleared).__name__ == "DiscrepancyCleared"
    assert cleared.cause == "Received"


def test_receipt_that_leaves_a_shortfall_keeps_the_discrepancy(shop: Ledger, probe: Any) -> None:
    shop.record_pos_transaction("T-1", "STORE-1", None, [PosLine(SKU, 3)])

    shop.receive(SKU, "STORE-1", 1)

    buckets = probe.buckets(SKU, "STORE-1")
    assert buckets["available"] == -2
    assert buckets["discrepancy"] > 0


def test_count_clears_the_discrepancy(shop: Ledger, probe: Any) -> None:
    shop.record_pos_transaction("T-1", "STORE-1", None, [PosLine(SKU, 3)])

    shop.count(SKU, "STORE-1", 4)

    buckets = probe.buckets(SKU, "STORE-1")
    assert (buckets["available"], buckets["discrepancy"], buckets["on_hand"]) == (4, 0, 4)
    assert probe.position_types(SKU, "STORE-1")[-2:] == ["Counted", "DiscrepancyCleared"]


def test_count_of_zero_clears_the_discrepancy(shop: Ledger, probe: Any) -> None:
    shop.record_pos_transaction("T-1", "STORE-1", None, [PosLine(SKU, 3)])

    shop.count(SKU, "STORE-1", 0)

    assert probe.buckets(SKU, "STORE-1")["discrepancy"] == 0


def test_adjustment_does_not_clear_the_discrepancy(shop: Ledger, probe: Any) -> None:
    shop.record_pos_transaction("T-1", "STORE-1", None, [PosLine(SKU, 3)])

    shop.adjust(SKU, "STORE-1", 10, "found")

    buckets = probe.buckets(SKU, "STORE-1")
    assert buckets["available"] == 7
    assert buckets["discrepancy"] == 3


def test_discrepancy_blocks_requests_until_stock_is_there(shop: Ledger, probe: Any) -> None:
    shop.record_pos_transaction("T-1", "STORE-1", None, [PosLine(SKU, 3)])

    with pytest.raises(InsufficientStock):
        shop.mark_damaged(SKU, "STORE-1", 1)
    with pytest.raises(InsufficientStock):
        shop.adjust(SKU, "STORE-1", -1, "shrinkage")


# --- ReturnReceived / ReturnRestocked / ReturnScrapped ------------------------------------------
def test_pos_return_for_inspection_goes_to_returned(shop: Ledger, probe: Any) -> None:
    shop.receive(SKU, "STORE-1", 5)

    shop.record_pos_transaction("T-9", "STORE-1", None, [PosLine(SKU, -2)])

    buckets = probe.buckets(SKU, "STORE-1")
    assert (buckets["available"], buckets["returned"], buckets["on_hand"]) == (5, 2, 7)
    received = probe.position_events(SKU, "STORE-1")[-1]
    assert type(received).__name__ == "ReturnReceived"
    assert (received.transaction, received.order, received.quantity) == ("T-9", None, 2)


def test_pos_return_restocked_at_the_till_goes_back_to_available(shop: Ledger, probe: Any) -> None:
    shop.record_pos_transaction("T-9", "STORE-1", None, [PosLine(SKU, -2, "restock")])

    buckets = probe.buckets(SKU, "STORE-1")
    assert (buckets["available"], buckets["returned"]) == (2, 0)
    assert probe.position_types(SKU, "STORE-1")[-2:] == ["ReturnReceived", "ReturnRestocked"]


def test_pos_return_is_never_refused(shop: Ledger, probe: Any) -> None:
    shop.record_pos_transaction("T-9", "STORE-1", None, [PosLine(SKU, -4, "damaged")])

    buckets = probe.buckets(SKU, "STORE-1")
    assert (buckets["damaged"], buckets["returned"]) == (4, 0)


def test_disposition_restock_moves_returned_to_available(shop: Ledger, probe: Any) -> None:
    shop.record_pos_transaction("T-9", "STORE-1", None, [PosLine(SKU, -3)])

    shop.dispose_return(SKU, "STORE-1", 2, "restock")

    buckets = probe.buckets(SKU, "STORE-1")
    assert (buckets["available"], buckets["returned"]) == (2, 1)
    restocked = probe.position_events(SKU, "STORE-1")[-1]
    assert type(restocked).__name__ == "ReturnRestocked"
    assert restocked.quantity == 2


def test_disposition_damaged_moves_returned_to_damaged(shop: Ledger, probe: Any) -> None:
    shop.record_pos_transaction("T-9", "STORE-1", None, [PosLine(SKU, -3)])

    shop.dispose_return(SKU, "STORE-1", 3, "damaged")

    buckets = probe.buckets(SKU, "STORE-1")
    assert (buckets["damaged"], buckets["returned"], buckets["on_hand"]) == (3, 0, 3)
    assert probe.position_types(SKU, "STORE-1")[-1] == "ReturnScrapped"


def test_disposition_beyond_returned_units_is_refused(shop: Ledger, probe: Any) -> None:
    shop.record_pos_transaction("T-9", "STORE-1", None, [PosLine(SKU, -1)])
    before = probe.last()

    with pytest.raises(InsufficientStock):
        shop.dispose_return(SKU, "STORE-1", 2, "restock")

    assert probe.last() == before


def test_disposition_must_be_restock_or_damaged(shop: Ledger) -> None:
    with pytest.raises(ValidationFailed):
        shop.dispose_return(SKU, "STORE-1", 1, "inspect")


# --- MarkedDamaged / DamageWrittenOff ----------------------------------------------------------
def test_damage_mark_moves_available_to_damaged(shop: Ledger, probe: Any) -> None:
    shop.receive(SKU, "WH-A", 5)

    shop.mark_damaged(SKU, "WH-A", 2, reason="crushed")

    buckets = probe.buckets(SKU, "WH-A")
    assert (buckets["available"], buckets["damaged"], buckets["on_hand"]) == (3, 2, 5)
    marked = probe.position_events(SKU, "WH-A")[-1]
    assert type(marked).__name__ == "MarkedDamaged"
    assert (marked.quantity, marked.reason) == (2, "crushed")


def test_damage_mark_beyond_available_is_refused(shop: Ledger, probe: Any) -> None:
    shop.receive(SKU, "WH-A", 2)
    before = probe.last()

    with pytest.raises(InsufficientStock):
        shop.mark_damaged(SKU, "WH-A", 3)

    assert probe.last() == before


def test_write_off_removes_damaged_units(shop: Ledger, probe: Any) -> None:
    shop.receive(SKU, "WH-A", 5)
    shop.mark_damaged(SKU, "WH-A", 3)

    shop.write_off_damage(SKU, "WH-A", 2, reason="binned")

    buckets = probe.buckets(SKU, "WH-A")
    assert (buckets["damaged"], buckets["on_hand"], buckets["available"]) == (1, 3, 2)
    assert probe.position_types(SKU, "WH-A")[-1] == "DamageWrittenOff"


def test_write_off_beyond_damaged_is_refused(shop: Ledger, probe: Any) -> None:
    shop.receive(SKU, "WH-A", 5)
    shop.mark_damaged(SKU, "WH-A", 1)
    before = probe.last()

    with pytest.raises(InsufficientStock):
        shop.write_off_damage(SKU, "WH-A", 2)

    assert probe.last() == before
    assert probe.buckets(SKU, "WH-A")["damaged"] == 1


# --- on_hand identity ---------------------------------------------------------------------------
def test_on_hand_is_the_sum_of_the_buckets(shop: Ledger, probe: Any) -> None:
    shop.receive(SKU, "WH-A", 20)
    order = _reserve(shop, "o-1", 3)
    shop.authorize_payment(order)
    _reserve(shop, "o-2", 2)
    shop.mark_damaged(SKU, "WH-A", 4)
    shop.receive(SKU, "WH-B", 1)
    shop.dispatch_transfer("TR-1", "WH-B", "WH-A", [SkuQuantity(SKU, 1)])

    buckets = probe.buckets(SKU, "WH-A")
    assert buckets["on_hand"] == (
        buckets["available"]
        + buckets["reserved"]
        + buckets["committed"]
        + buckets["damaged"]
        + buckets["returned"]
    )
    assert (buckets["available"], buckets["reserved"], buckets["committed"]) == (11, 2, 3)
    assert buckets["in_transit"] == 1
    assert buckets["on_hand"] == 20


# --- refusals: unknown location, malformed keys, bad quantities ---------------------------------
@pytest.mark.parametrize(
    "write",
    [
        lambda ledger: ledger.receive(SKU, "NOWHERE", 1),
        lambda ledger: ledger.adjust(SKU, "NOWHERE", 1, "found"),
        lambda ledger: ledger.count(SKU, "NOWHERE", 1),
        lambda ledger: ledger.mark_damaged(SKU, "NOWHERE", 1),
        lambda ledger: ledger.set_safety_stock(SKU, "NOWHERE", 1),
        lambda ledger: ledger.record_pos_transaction("T-1", "NOWHERE", None, [PosLine(SKU, 1)]),
    ],
    ids=["receipt", "adjustment", "count", "damage", "safety-stock", "pos"],
)
def test_stock_write_at_an_unregistered_location_is_not_found(
    shop: Ledger, probe: Any, write: Any
) -> None:
    before = probe.last()

    with pytest.raises(NotFound) as refused:
        write(shop)

    assert refused.value.status == 404
    assert probe.last() == before


@pytest.mark.parametrize("sku", ["", "A" * 65, "SKU 1", "SKU#1", "SKÜ", "a\nb"], ids=repr)
def test_malformed_sku_is_refused(shop: Ledger, probe: Any, sku: str) -> None:
    before = probe.last()

    with pytest.raises(ValidationFailed) as refused:
        shop.receive(sku, "WH-A", 1)

    assert refused.value.status == 422
    assert probe.last() == before


def test_longest_sku_with_every_allowed_character_is_accepted(shop: Ledger) -> None:
    sku = ("Az09._-/" * 8)[:64]

    assert shop.receive(sku, "WH-A", 1).body["sku"] == sku


@pytest.mark.parametrize("location", ["", "L" * 65, "WH/A", "WH A", "wh:1"], ids=repr)
def test_malformed_location_is_refused(shop: Ledger, probe: Any, location: str) -> None:
    before = probe.last()

    with pytest.raises(ValidationFailed):
        shop.receive(SKU, location, 1)

    assert probe.last() == before


@pytest.mark.parametrize("quantity", [0, -1, 1_000_000_001, True], ids=repr)
def test_receipt_quantity_must_be_a_positive_integer(
    shop: Ledger, probe: Any, quantity: int
) -> None:
    with pytest.raises(ValidationFailed):
        shop.receive(SKU, "WH-A", quantity)


def test_count_must_not_be_negative(shop: Ledger) -> None:
    with pytest.raises(ValidationFailed):
        shop.count(SKU, "WH-A", -1)


# --- copies the writer changes ------------------------------------------------------------------
def test_a_cloned_position_changes_without_touching_the_original() -> None:
    original = StockPosition.open(
        StockPosition.Opened, position_id(SKU, "WH-A"), sku=SKU, location="WH-A"
    )
    original.receive(5, "PO-1")
    original.collect_events()
    before = (vars(original).copy(), original.version)

    copy = original.clone()
    copy.reserve("order-1", "1", 2)
    copy.mark_damaged(1, "dropped")

    assert (vars(original), original.version) == before
    assert original.available == 5 and copy.available < 5
    assert copy.collect_events() and not original.collect_events()
    # Every attribute is immutable but the pending events (which clone copies): a mutable one
    # added later would be shared between copies, so the shallow clone would have to change.
    mutable = [
        name
        for name, value in vars(original).items()
        if name != "_pending_events" and isinstance(value, list | dict | set)
    ]
    assert mutable == []
