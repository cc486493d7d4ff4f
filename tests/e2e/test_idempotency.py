"""Idempotency keys over HTTP: replays answer the first answer; reuse is refused."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

Problem = Callable[..., dict[str, Any]]


def test_a_replayed_write_returns_the_first_status_body_and_position(
    admin: httpx.Client, fixed: Any, new_id: Callable[[str], str]
) -> None:
    key = new_id("key")
    receipt = {"sku": new_id("SKU"), "location": fixed.warehouse, "quantity": 3}

    first = admin.post("/v1/stock/receipts", json=receipt, headers={"Idempotency-Key": key})
    again = admin.post("/v1/stock/receipts", json=receipt, headers={"Idempotency-Key": key})

    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert again.headers["x-ledger-position"] == first.headers["x-ledger-position"]
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers


def test_a_replay_records_nothing_new(
    admin: httpx.Client, fixed: Any, new_id: Callable[[str], str]
) -> None:
    key, sku = new_id("key"), new_id("SKU")
    receipt = {"sku": sku, "location": fixed.warehouse, "quantity": 3}
    admin.post("/v1/stock/receipts", json=receipt, headers={"Idempotency-Key": key})
    admin.post("/v1/stock/receipts", json=receipt, headers={"Idempotency-Key": key})

    later = admin.post("/v1/stock/receipts", json={**receipt, "quantity": 1})

    assert later.json()["available"] == 4


def test_a_key_reused_for_a_different_request_is_refused(
    admin: httpx.Client, fixed: Any, new_id: Callable[[str], str], problem: Problem
) -> None:
    key, sku = new_id("key"), new_id("SKU")
    receipt = {"sku": sku, "location": fixed.warehouse, "quantity": 3}
    admin.post("/v1/stock/receipts", json=receipt, headers={"Idempotency-Key": key})

    reused = admin.post(
        "/v1/stock/receipts", json={**receipt, "quantity": 4}, headers={"Idempotency-Key": key}
    )

    problem(reused, 409, "idempotency-key-reused")


def test_an_order_placed_twice_is_replayed_by_its_channel_id(
    admin: httpx.Client,
    fixed: Any,
    stocked: Callable[[str, str, int], None],
    new_id: Callable[[str], str],
) -> None:
    sku = new_id("SKU")
    stocked(sku, fixed.warehouse, 5)
    order = {
        "channel": "shopify",
        "external_id": new_id("SO"),
        "lines": [{"line_id": "1", "sku": sku, "quantity": 2}],
    }

    first = admin.post("/v1/orders", json=order)
    again = admin.post("/v1/orders", json=order)

    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()


def test_a_malformed_idempotency_key_is_a_validation_problem(
    admin: httpx.Client, fixed: Any, problem: Problem
) -> None:
    receipt = {"sku": "A", "location": fixed.warehouse, "quantity": 1}

    too_long = admin.post(
        "/v1/stock/receipts", json=receipt, headers={"Idempotency-Key": "k" * 256}
    )
    with_space = admin.post(
        "/v1/stock/receipts", json=receipt, headers={"Idempotency-Key": "has space"}
    )

    problem(too_long, 422, "validation")
    problem(with_space, 422, "validation")
