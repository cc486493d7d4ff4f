"""Locations (registration, changes, the directory) and transfers between them."""

from __future__ import annotations

from typing import Any

import pytest

from domain.errors import (
    AlreadyExists,
    IdempotencyKeyReused,
    InsufficientStock,
    NotFound,
    ValidationFailed,
)
from domain.keys import location_id, transfer_id
from domain.service import Ledger, OrderLine, PosLine, SkuQuantity

SKU = "SKU-1"
OTHER = "SKU-2"


# --- locations ---------------------------------------------------------------------------------
def test_registering_a_location_records_it(ledger: Ledger, probe: Any) -> None:
    result = ledger.register_location(
        "WH-A",
        name="Warehouse A",
        kind="warehouse",
        channels=["shopify", "pos"],
        priority=5,
        external_ids={"shopify": "905684977"},
    )

    assert result.body == {
        "code": "WH-A",
        "name": "Warehouse A",
        "kind": "warehouse",
        "channels": ["pos", "shopify"],
        "priority": 5,
        "external_ids": {"shopify": "905684977"},
    }
    assert probe.types(location_id("WH-A")) == ["Registered"]
    location = ledger.get_location("WH-A")
    assert location is not None
    assert location.serves("shopify") and location.serves("pos")
    assert not location.serves("amazon")


def test_registering_the_same_location_again_records_nothing(ledger: Ledger, probe: Any) -> None:
    ledger.register_location("WH-A", name="A", kind="warehouse", channels=["shopify"])
    before = probe.last()

    ledger.register_location("WH-A", name="A", kind="warehouse", channels=["shopify"])

    assert probe.last() == before


def test_changing_a_location_records_the_change(ledger: Ledger, probe: Any) -> None:
    ledger.register_location("WH-A", name="A", kind="warehouse", channels=["shopify"])

    ledger.register_location("WH-A", name="A2", kind="store", channels=["pos"], priority=3)

    assert probe.types(location_id("WH-A")) == ["Registered", "Changed"]
    location = ledger.get_location("WH-A")
    assert location is not None
    assert (location.name, location.kind, location.channels, location.priority) == (
        "A2",
        "store",
        ["pos"],
        3,
    )


def test_locations_are_listed_once_each(shop: Ledger) -> None:
    shop.register_location("WH-A", name="A again", kind="warehouse", channels=["shopify"])

    assert [location.code for location in shop.list_locations()] == ["WH-A", "WH-B", "STORE-1"]


@pytest.mark.parametrize("kind", ["depot", "", "Warehouse"])
def test_unknown_location_kind_is_invalid(ledger: Ledger, probe: Any, kind: str) -> None:
    with pytest.raises(ValidationFailed):
        ledger.register_location("WH-A", name="A", kind=kind, channels=["shopify"])

    assert probe.last() == 0


@pytest.mark.parametrize("code", ["", "WH A", "WH/A", "X" * 65])
def test_malformed_location_code_is_invalid(ledger: Ledger, code: str) -> None:
    with pytest.raises(ValidationFailed):
        ledger.register_location(code, name="A", kind="warehouse", channels=["shopify"])


@pytest.mark.parametrize("channel", ["Shopify", "", "web shop", "1pos", "x" * 40])
def test_malformed_channel_is_invalid(ledger: Ledger, probe: Any, channel: str) -> None:
    with pytest.raises(ValidationFailed):
        ledger.register_location("WH-A", name="A", kind="warehouse", channels=[channel])

    assert probe.last() == 0


def test_location_needs_a_name(ledger: Ledger) -> None:
    with pytest.raises(ValidationFailed):
        ledger.register_location("WH-A", name="", kind="warehouse", channels=["shopify"])


def test_a_channel_location_id_maps_to_one_location_only(shop: Ledger, probe: Any) -> None:
    before = probe.last()

    with pytest.raises(AlreadyExists):
        shop.register_location(
            "WH-C",
            name="C",
            kind="warehouse",
            channels=["shopify"],
            external_ids={"shopify": "1001"},
        )

    assert probe.last() == before
    assert shop.get_location("WH-C") is None


# --- transfers: dispatch -------------------------------------------------------------------------
def test_dispatch_takes_from_the_source_and_is_expected_at_the_destination(
    shop: Ledger, probe: Any
) -> None:
    shop.receive(SKU, "WH-A", 10)
    shop.receive(OTHER, "WH-A", 10)

    result = shop.dispatch_transfer(
        "TR-1", "WH-A", "STORE-1", [SkuQuantity(SKU, 4), SkuQuantity(OTHER, 1)]
    )

    assert result.body["lines"] == [
        {"sku": SKU, "quantity": 4, "received": None},
        {"sku": OTHER, "quantity": 1, "received": None},
    ]
    source = probe.buckets(SKU, "WH-A")
    assert (source["available"], source["on_hand"]) == (6, 6)
    destination = probe.buckets(SKU, "STORE-1")
    assert (destination["in_transit"], destination["available"], destination["on_hand"]) == (
        4,
        0,
        0,
    )
    dispatched = probe.position_events(SKU, "WH-A")[-1]
    assert type(dispatched).__name__ == "TransferDispatched"
    assert (dispatched.transfer, dispatched.to_location, dispatched.quantity) == (
        "TR-1",
        "STORE-1",
        4,
    )
    expected = probe.position_events(SKU, "STORE-1")[-1]
    assert type(expected).__name__ == "TransferExpected"
    assert (expected.transfer, expected.from_location, expected.quantity) == (
        "TR-1",
        "WH-A",
        4,
    )
    assert probe.types(transfer_id("TR-1")) == ["TransferStarted"]


def test_dispatch_beyond_available_is_refused(shop: Ledger, probe: Any) -> None:
    shop.receive(SKU, "WH-A", 3)
    before = probe.last()

    with pytest.raises(InsufficientStock):
        shop.dispatch_transfer("TR-1", "WH-A", "STORE-1", [SkuQuantity(SKU, 4)])

    assert probe.last() == before
    assert probe.buckets(SKU, "WH-A")["available"] == 3


def test_dispatch_cannot_take_reserved_units(shop: Ledger, probe: Any) -> None:
    shop.receive(SKU, "WH-A", 3)
    shop.place_order("shopify", "1001", [OrderLine("1", SKU, 2)])
    before = probe.last()

    with pytest.raises(InsufficientStock):
        shop.dispatch_transfer("TR-1", "WH-A", "STORE-1", [SkuQuantity(SKU, 2)])

    assert probe.last() == before


def test_dispatch_with_one_short_line_records_nothing(shop: Ledger, probe: Any) -> None:
    shop.receive(SKU, "WH-A", 10)
    shop.receive(OTHER, "WH-A", 1)
    before = probe.last()

    with pytest.raises(InsufficientStock):
        shop.dispatch_transfer(
            "TR-1", "WH-A", "STORE-1", [SkuQuantity(SKU, 4), SkuQuantity(OTHER, 2)]
        )

    assert probe.last() == before
    assert probe.buckets(SKU, "WH-A")["available"] == 10
    assert probe.buckets(SKU, "WH-A")["in_transit"] == 0


def test_refused_dispatch_can_be_retried_with_the_same_transfer_id(shop: Ledger) -> None:
    with pytest.raises(InsufficientStock):
        shop.dispatch_transfer("TR-1", "WH-A", "STORE-1", [SkuQuantity(SKU, 1)])
    shop.receive(SKU, "WH-A", 1)

    result = shop.dispatch_transfer("TR-1", "WH-A", "STORE-1", [SkuQuantity(SKU, 1)])

    assert result.replayed is False


def test_dispatch_to_an_unregistered_location_is_not_found(shop: Ledger, probe: Any) -> None:
    shop.receive(SKU, "WH-A", 5)
    before = probe.last()

    with pytest.raises(NotFound):
        shop.dispatch_transfer("TR-1", "WH-A", "NOWHERE", [SkuQuantity(SKU, 1)])
    with pytest.raises(NotFound):
        shop.dispatch_transfer("TR-2", "NOWHERE", "WH-A", [SkuQuantity(SKU, 1)])

    assert probe.last() == before


def test_transfer_needs_two_different_locations(shop: Ledger) -> None:
    with pytest.raises(ValidationFailed):
        shop.dispatch_transfer("TR-1", "WH-A", "WH-A", [SkuQuantity(SKU, 1)])


def test_transfer_line_must_not_repeat_a_sku(shop: Ledger) -> None:
    with pytest.raises(ValidationFailed):
        shop.dispatch_transfer("TR-1", "WH-A", "WH-B", [SkuQuantity(SKU, 1), SkuQuantity(SKU, 2)])


def test_transfer_with_a_malformed_sku_is_invalid(shop: Ledger) -> None:
    with pytest.raises(ValidationFailed):
        shop.dispatch_transfer("TR-1", "WH-A", "WH-B", [SkuQuantity("no good", 1)])


def test_transfer_with_no_lines_is_invalid(shop: Ledger) -> None:
    with pytest.raises(ValidationFailed):
        shop.dispatch_transfer("TR-1", "WH-A", "WH-B", [])


def test_another_dispatch_under_a_used_transfer_id_is_refused(shop: Ledger, probe: Any) -> None:
    shop.receive(SKU, "WH-A", 10)
    shop.dispatch_transfer("TR-1", "WH-A", "STORE-1", [SkuQuantity(SKU, 1)])
    before = probe.last()

    with pytest.raises(IdempotencyKeyReused):
        shop.dispatch_transfer("TR-1", "WH-A", "STORE-1", [SkuQuantity(SKU, 2)])

    assert probe.last() == before


def test_same_dispatch_again_is_replayed(shop: Ledger, probe: Any) -> None:
    shop.receive(SKU, "WH-A", 10)
    first = shop.dispatch_transfer("TR-1", "WH-A", "STORE-1", [SkuQuantity(SKU, 1)])
    before = probe.last()

    again = shop.dispatch_transfer("TR-1", "WH-A", "STORE-1", [SkuQuantity(SKU, 1)])

    assert again.replayed is True
    assert again.body == first.body
    assert again.position == first.position
    assert probe.last() == before
    assert probe.buckets(SKU, "WH-A")["available"] == 9


# --- transfers: receipt --------------------------------------------------------------------------
@pytest.fixture
def in_transit(shop: Ledger) -> Ledger:
    """TR-1: 5 of SKU-1 and 2 of SKU-2 on their way from WH-A to STORE-1."""
    shop.receive(SKU, "WH-A", 10)
    shop.receive(OTHER, "WH-A", 10)
    shop.dispatch_transfer("TR-1", "WH-A", "STORE-1", [SkuQuantity(SKU, 5), SkuQuantity(OTHER, 2)])
    return shop


def test_full_receipt_moves_in_transit_to_available(in_transit: Ledger, probe: Any) -> None:
    result = in_transit.receive_transfer("TR-1", [SkuQuantity(SKU, 5), SkuQuantity(OTHER, 2)])

    assert result.body["lines"] == [
        {"sku": SKU, "quantity": 5, "received": 5},
        {"sku": OTHER, "quantity": 2, "received": 2},
    ]
    buckets = probe.buckets(SKU, "STORE-1")
    assert (buckets["in_transit"], buckets["available"], buckets["on_hand"]) == (0, 5, 5)
    received = probe.position_events(SKU, "STORE-1")[-1]
    assert type(received).__name__ == "TransferReceived"
    assert (received.transfer, received.expected, received.quantity, received.shortfall) == (
        "TR-1",
        5,
        5,
        0,
    )
    assert probe.types(transfer_id("TR-1")) == ["TransferStarted", "TransferCompleted"]


def test_short_receipt_records_the_shortfall(in_transit: Ledger, probe: Any) -> None:
    in_transit.receive_transfer("TR-1", [SkuQuantity(SKU, 3), SkuQuantity(OTHER, 2)])

    buckets = probe.buckets(SKU, "STORE-1")
    assert (buckets["in_transit"], buckets["available"]) == (0, 3)
    received = probe.position_events(SKU, "STORE-1")[-1]
    assert (received.expected, received.quantity, received.shortfall) == (5, 3, 2)
    # The source is not credited back: the units were lost on the way.
    assert probe.buckets(SKU, "WH-A")["available"] == 5


def test_sku_missing_from_the_receipt_arrived_as_zero(in_transit: Ledger, probe: Any) -> None:
    in_transit.receive_transfer("TR-1", [SkuQuantity(SKU, 5)])

    other = probe.buckets(OTHER, "STORE-1")
    assert (other["in_transit"], other["available"]) == (0, 0)
    received = probe.position_events(OTHER, "STORE-1")[-1]
    assert (received.expected, received.quantity, received.shortfall) == (2, 0, 2)


def test_receipt_with_an_explicit_zero_is_a_full_shortfall(in_transit: Ledger, probe: Any) -> None:
    in_transit.receive_transfer("TR-1", [SkuQuantity(SKU, 0), SkuQuantity(OTHER, 2)])

    received = probe.position_events(SKU, "STORE-1")[-1]
    assert received.shortfall == 5


def test_receipt_of_an_unknown_transfer_is_not_found(shop: Ledger, probe: Any) -> None:
    before = probe.last()

    with pytest.raises(NotFound):
        shop.receive_transfer("TR-404", [SkuQuantity(SKU, 1)])

    assert probe.last() == before


def test_receipt_of_a_sku_the_transfer_did_not_carry_is_invalid(
    in_transit: Ledger, probe: Any
) -> None:
    before = probe.last()

    with pytest.raises(ValidationFailed):
        in_transit.receive_transfer("TR-1", [SkuQuantity("SKU-3", 1)])

    assert probe.last() == before


def test_second_different_receipt_of_a_transfer_is_refused(in_transit: Ledger, probe: Any) -> None:
    in_transit.receive_transfer("TR-1", [SkuQuantity(SKU, 5), SkuQuantity(OTHER, 2)])
    before = probe.last()

    with pytest.raises((IdempotencyKeyReused, AlreadyExists)) as refused:
        in_transit.receive_transfer("TR-1", [SkuQuantity(SKU, 4)])

    assert refused.value.status == 409
    assert probe.last() == before


def test_same_receipt_again_is_replayed(in_transit: Ledger, probe: Any) -> None:
    first = in_transit.receive_transfer("TR-1", [SkuQuantity(SKU, 5)])
    before = probe.last()

    again = in_transit.receive_transfer("TR-1", [SkuQuantity(SKU, 5)])

    assert again.replayed is True
    assert again.body == first.body
    assert probe.last() == before
    assert probe.buckets(SKU, "STORE-1")["available"] == 5


def test_transfer_receipt_clears_a_discrepancy_at_the_destination(
    in_transit: Ledger, probe: Any
) -> None:
    in_transit.record_pos_transaction("T-1", "STORE-1", None, [PosLine(SKU, 2)])
    assert probe.buckets(SKU, "STORE-1")["discrepancy"] == 2

    in_transit.receive_transfer("TR-1", [SkuQuantity(SKU, 5), SkuQuantity(OTHER, 2)])

    buckets = probe.buckets(SKU, "STORE-1")
    assert (buckets["available"], buckets["discrepancy"]) == (3, 0)


def test_transferred_stock_becomes_sellable_at_the_destination(shop: Ledger, probe: Any) -> None:
    shop.receive(SKU, "STORE-1", 4)
    shop.dispatch_transfer("TR-9", "STORE-1", "WH-B", [SkuQuantity(SKU, 4)])

    with pytest.raises(InsufficientStock):
        shop.place_order("shopify", "1001", [OrderLine("1", SKU, 1)])
    shop.receive_transfer("TR-9", [SkuQuantity(SKU, 4)])
    result = shop.place_order("shopify", "1001", [OrderLine("1", SKU, 4)])

    assert result.body["lines"][0]["allocations"] == [{"location": "WH-B", "quantity": 4}]
