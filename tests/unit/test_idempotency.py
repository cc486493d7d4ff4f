"""Idempotency: explicit keys, natural keys (orders, POS transactions, fulfillments, returns,
refunds, transfers), and what a replay answers."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from domain.committer import _response_text
from domain.errors import IdempotencyKeyReused, InsufficientStock, ValidationFailed
from domain.service import (
    CommandContext,
    FulfillmentLine,
    Ledger,
    OrderLine,
    PosLine,
    ReturnLine,
)

SKU = "SKU-1"


def _key(key: str, correlation_id: str | None = None) -> CommandContext:
    return CommandContext(idempotency_key=key, correlation_id=correlation_id)


# --- explicit keys -----------------------------------------------------------------------------
def test_same_key_and_body_returns_the_first_answer_and_records_nothing(
    shop: Ledger, probe: Any
) -> None:
    first = shop.receive(SKU, "WH-A", 5, context=_key("rcpt-1"))
    before = probe.last()

    again = shop.receive(SKU, "WH-A", 5, context=_key("rcpt-1"))

    assert first.replayed is False
    assert again.replayed is True
    assert again.body == first.body
    assert again.position == first.position
    assert probe.last() == before
    assert probe.buckets(SKU, "WH-A")["available"] == 5


def test_replay_answers_the_state_of_the_first_time_not_of_now(shop: Ledger) -> None:
    first = shop.receive(SKU, "WH-A", 5, context=_key("rcpt-1"))
    shop.receive(SKU, "WH-A", 3)

    again = shop.receive(SKU, "WH-A", 5, context=_key("rcpt-1"))

    assert again.body["available"] == first.body["available"] == 5


def test_same_key_with_another_body_is_refused(shop: Ledger, probe: Any) -> None:
    shop.receive(SKU, "WH-A", 5, context=_key("rcpt-1"))
    before = probe.last()

    with pytest.raises(IdempotencyKeyReused) as refused:
        shop.receive(SKU, "WH-A", 6, context=_key("rcpt-1"))

    assert refused.value.status == 409
    assert refused.value.slug == "idempotency-key-reused"
    assert probe.last() == before
    assert probe.buckets(SKU, "WH-A")["available"] == 5


def test_same_key_for_another_operation_is_refused(shop: Ledger, probe: Any) -> None:
    shop.receive(SKU, "WH-A", 5, context=_key("k-1"))
    before = probe.last()

    with pytest.raises(IdempotencyKeyReused):
        shop.mark_damaged(SKU, "WH-A", 5, context=_key("k-1"))

    assert probe.last() == before


def test_different_keys_are_different_requests(shop: Ledger, probe: Any) -> None:
    shop.receive(SKU, "WH-A", 5, context=_key("rcpt-1"))
    shop.receive(SKU, "WH-A", 5, context=_key("rcpt-2"))

    assert probe.buckets(SKU, "WH-A")["available"] == 10


def test_refused_request_does_not_use_up_its_key(shop: Ledger, probe: Any) -> None:
    with pytest.raises(InsufficientStock):
        shop.mark_damaged(SKU, "WH-A", 2, context=_key("dmg-1"))
    shop.receive(SKU, "WH-A", 5)

    result = shop.mark_damaged(SKU, "WH-A", 2, context=_key("dmg-1"))

    assert result.replayed is False
    assert probe.buckets(SKU, "WH-A")["damaged"] == 2


def test_a_command_that_changes_nothing_still_replays(shop: Ledger, probe: Any) -> None:
    shop.set_safety_stock(SKU, "WH-A", 0, context=_key("ss-1"))

    again = shop.set_safety_stock(SKU, "WH-A", 0, context=_key("ss-1"))

    assert again.replayed is True
    with pytest.raises(IdempotencyKeyReused):
        shop.set_safety_stock(SKU, "WH-A", 2, context=_key("ss-1"))


@pytest.mark.parametrize("key", ["", "with space", "x" * 256, "tab\tkey", "ü"])
def test_malformed_key_is_invalid(shop: Ledger, key: str) -> None:
    with pytest.raises(ValidationFailed):
        shop.receive(SKU, "WH-A", 1, context=_key(key))


def test_event_causation_is_the_idempotency_key(shop: Ledger, probe: Any) -> None:
    before = probe.last()

    shop.receive(SKU, "WH-A", 1, context=_key("rcpt-7", "req-7"))

    events = probe.events_after(before)
    assert events
    assert {(event.causation_id, event.correlation_id) for event in events} == {("rcpt-7", "req-7")}


def test_concurrent_requests_with_one_key_are_recorded_once(shop: Ledger, probe: Any) -> None:
    before = probe.last()

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(
            pool.map(lambda _: shop.receive(SKU, "WH-A", 3, context=_key("rcpt-c")), range(16))
        )

    assert sum(1 for result in results if not result.replayed) == 1
    assert len({result.position for result in results}) == 1
    assert probe.buckets(SKU, "WH-A")["available"] == 3
    assert probe.last() == before + 2  # Opened, Received


def test_concurrent_requests_with_one_key_and_other_bodies_are_refused(
    shop: Ledger, probe: Any
) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [
            pool.submit(shop.receive, SKU, "WH-A", quantity, context=_key("rcpt-c"))
            for quantity in range(1, 9)
        ]
    outcomes = [future.exception() or future.result() for future in futures]

    accepted = [outcome for outcome in outcomes if not isinstance(outcome, Exception)]
    refused = [outcome for outcome in outcomes if isinstance(outcome, Exception)]
    assert len(accepted) == 1
    assert all(isinstance(error, IdempotencyKeyReused) for error in refused)
    assert probe.buckets(SKU, "WH-A")["available"] == accepted[0].body["available"]


# --- natural keys --------------------------------------------------------------------------------
def test_placing_the_same_order_again_replays_it(shop: Ledger, probe: Any) -> None:
    shop.receive(SKU, "WH-A", 5)
    first = shop.place_order("shopify", "1001", [OrderLine("1", SKU, 2)], total="20.00")
    before = probe.last()

    again = shop.place_order("shopify", "1001", [OrderLine("1", SKU, 2)], total="20.00")

    assert again.replayed is True
    assert again.body == first.body
    assert again.position == first.position
    assert probe.last() == before
    assert probe.buckets(SKU, "WH-A")["reserved"] == 2


def test_placing_another_order_under_the_same_channel_id_is_refused(
    shop: Ledger, probe: Any
) -> None:
    shop.receive(SKU, "WH-A", 5)
    shop.place_order("shopify", "1001", [OrderLine("1", SKU, 2)])
    before = probe.last()

    with pytest.raises(IdempotencyKeyReused):
        shop.place_order("shopify", "1001", [OrderLine("1", SKU, 3)])

    assert probe.last() == before


def test_the_same_external_id_on_another_channel_is_another_order(shop: Ledger) -> None:
    shop.register_location("MKT", name="M", kind="warehouse", channels=["amazon"])
    shop.receive(SKU, "WH-A", 5)
    shop.receive(SKU, "MKT", 5)

    one = shop.place_order("shopify", "1001", [OrderLine("1", SKU, 1)])
    two = shop.place_order("amazon", "1001", [OrderLine("1", SKU, 1)])

    assert one.body["order_id"] != two.body["order_id"]
    assert two.replayed is False


def test_refused_order_does_not_use_up_its_natural_key(shop: Ledger) -> None:
    with pytest.raises(InsufficientStock):
        shop.place_order("shopify", "1001", [OrderLine("1", SKU, 2)])
    shop.receive(SKU, "WH-A", 2)

    result = shop.place_order("shopify", "1001", [OrderLine("1", SKU, 2)])

    assert result.replayed is False
    assert result.body["status"] == "reserved"


def test_pos_transaction_id_dedupes(shop: Ledger, probe: Any) -> None:
    shop.receive(SKU, "STORE-1", 5)
    first = shop.record_pos_transaction("T-1", "STORE-1", None, [PosLine(SKU, 2)])
    before = probe.last()

    again = shop.record_pos_transaction("T-1", "STORE-1", None, [PosLine(SKU, 2)])

    assert again.replayed is True
    assert again.body == first.body
    assert probe.last() == before
    assert probe.buckets(SKU, "STORE-1")["available"] == 3


def test_pos_transaction_id_with_other_lines_is_refused(shop: Ledger, probe: Any) -> None:
    shop.receive(SKU, "STORE-1", 5)
    shop.record_pos_transaction("T-1", "STORE-1", None, [PosLine(SKU, 2)])
    before = probe.last()

    with pytest.raises(IdempotencyKeyReused):
        shop.record_pos_transaction("T-1", "STORE-1", None, [PosLine(SKU, 1)])

    assert probe.last() == before


def test_pos_return_is_deduped_by_its_transaction_id(shop: Ledger, probe: Any) -> None:
    shop.record_pos_transaction("T-R", "STORE-1", None, [PosLine(SKU, -1, "restock")])
    shop.record_pos_transaction("T-R", "STORE-1", None, [PosLine(SKU, -1, "restock")])

    assert probe.buckets(SKU, "STORE-1")["available"] == 1


def _paid_order(ledger: Ledger) -> str:
    ledger.receive(SKU, "WH-A", 10)
    result = ledger.place_order(
        "shopify", "1001", [OrderLine("1", SKU, 4)], currency="EUR", total="40.00"
    )
    order = str(result.body["order_id"])
    ledger.authorize_payment(order)
    return order


def test_fulfillment_id_dedupes(shop: Ledger, probe: Any) -> None:
    order = _paid_order(shop)
    first = shop.fulfill_order(order, "F1", [FulfillmentLine("1", 2)])
    before = probe.last()

    again = shop.fulfill_order(order, "F1", [FulfillmentLine("1", 2)])

    assert again.replayed is True
    assert again.body == first.body
    assert probe.last() == before
    assert probe.buckets(SKU, "WH-A")["committed"] == 2


def test_return_id_dedupes(shop: Ledger, probe: Any) -> None:
    order = _paid_order(shop)
    shop.fulfill_order(order, "F1", [FulfillmentLine("1", 4)])
    shop.return_order(order, "R1", [ReturnLine("1", 1, "restock")])
    before = probe.last()

    again = shop.return_order(order, "R1", [ReturnLine("1", 1, "restock")])

    assert again.replayed is True
    assert probe.last() == before
    with pytest.raises(IdempotencyKeyReused):
        shop.return_order(order, "R1", [ReturnLine("1", 2, "restock")])
    assert probe.buckets(SKU, "WH-A")["available"] == 7


def test_refund_id_dedupes(shop: Ledger, probe: Any) -> None:
    order = _paid_order(shop)
    shop.refund_order(order, "RF1", "10.00", "EUR")
    before = probe.last()

    again = shop.refund_order(order, "RF1", "10.00", "EUR")

    assert again.replayed is True
    assert again.body["refunded"] == "10.00"
    assert probe.last() == before
    with pytest.raises(IdempotencyKeyReused):
        shop.refund_order(order, "RF1", "11.00", "EUR")


def test_cancellation_with_a_key_replays(shop: Ledger, probe: Any) -> None:
    order = _paid_order(shop)
    shop.cancel_order(order, context=_key("cancel-1"))
    before = probe.last()

    again = shop.cancel_order(order, context=_key("cancel-1"))

    assert again.replayed is True
    assert again.body["status"] == "cancelled"
    assert probe.last() == before


def test_pos_transaction_id_dedupes_even_under_another_request_key(
    shop: Ledger, probe: Any
) -> None:
    shop.receive(SKU, "STORE-1", 5)
    first = shop.record_pos_transaction(
        "T-1", "STORE-1", None, [PosLine(SKU, 2)], context=_key("till-retry-1")
    )
    before = probe.last()

    again = shop.record_pos_transaction(
        "T-1", "STORE-1", None, [PosLine(SKU, 2)], context=_key("till-retry-2")
    )

    assert again.replayed is True
    assert again.position == first.position
    assert probe.last() == before
    assert probe.buckets(SKU, "STORE-1")["available"] == 3


def test_pos_events_are_caused_by_the_transaction(shop: Ledger, probe: Any) -> None:
    before = probe.last()

    shop.record_pos_transaction(
        "T-1", "STORE-1", None, [PosLine(SKU, 1)], context=_key("hdr", "req-pos")
    )

    events = probe.events_after(before)
    assert {(event.causation_id, event.correlation_id) for event in events} == {
        ("pos:T-1", "req-pos")
    }


# --- what a key keeps ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "body",
    [
        {"order_id": "1", "note": "Zoë's order ✓", "lines": [{"quantity": 2}], "paid": False},
        {"beyond_64_bits": 2**70},  # orjson refuses it: the standard library writes it
        {1: "a key that is not a string"},
    ],
)
def test_the_answer_a_key_keeps_reads_back_as_given(body: dict[Any, Any]) -> None:
    expected = {str(key): value for key, value in body.items()}

    assert json.loads(_response_text(body)) == expected
