"""Transfers over HTTP: dispatch, receipt (with shortfall), and their refusals."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

Problem = Callable[..., dict[str, Any]]


def _transfer(
    transfer_id: str, source: str, destination: str, sku: str, quantity: int
) -> dict[str, Any]:
    return {
        "transfer_id": transfer_id,
        "from_location": source,
        "to_location": destination,
        "lines": [{"sku": sku, "quantity": quantity}],
    }


def test_a_transfer_is_dispatched_then_received_with_a_shortfall(
    admin: httpx.Client,
    fixed: Any,
    stocked: Callable[[str, str, int], None],
    new_id: Callable[[str], str],
) -> None:
    sku, transfer = new_id("SKU"), new_id("T")
    stocked(sku, fixed.warehouse, 10)

    dispatched = admin.post(
        "/v1/transfers", json=_transfer(transfer, fixed.warehouse, fixed.store_a, sku, 6)
    )
    received = admin.post(
        f"/v1/transfers/{transfer}/receipt", json={"lines": [{"sku": sku, "quantity": 5}]}
    )

    assert dispatched.status_code == 201, dispatched.text
    assert dispatched.json()["lines"] == [{"sku": sku, "quantity": 6, "received": None}]
    assert received.status_code == 201, received.text
    assert received.json()["lines"] == [{"sku": sku, "quantity": 6, "received": 5}]
    assert received.json()["position"] > dispatched.json()["position"]


def test_a_transfer_beyond_available_stock_is_insufficient_stock(
    admin: httpx.Client,
    fixed: Any,
    stocked: Callable[[str, str, int], None],
    new_id: Callable[[str], str],
    problem: Problem,
) -> None:
    sku = new_id("SKU")
    stocked(sku, fixed.warehouse, 1)

    response = admin.post(
        "/v1/transfers", json=_transfer(new_id("T"), fixed.warehouse, fixed.store_a, sku, 2)
    )

    problem(response, 409, "insufficient-stock")


def test_a_transfer_to_an_unknown_location_is_not_found(
    admin: httpx.Client,
    fixed: Any,
    stocked: Callable[[str, str, int], None],
    new_id: Callable[[str], str],
    problem: Problem,
) -> None:
    sku = new_id("SKU")
    stocked(sku, fixed.warehouse, 1)

    response = admin.post(
        "/v1/transfers", json=_transfer(new_id("T"), fixed.warehouse, "NOWHERE-7", sku, 1)
    )

    problem(response, 404, "not-found")


def test_a_transfer_within_one_location_is_a_validation_problem(
    admin: httpx.Client, fixed: Any, new_id: Callable[[str], str], problem: Problem
) -> None:
    response = admin.post(
        "/v1/transfers",
        json=_transfer(new_id("T"), fixed.warehouse, fixed.warehouse, new_id("SKU"), 1),
    )

    problem(response, 422, "validation")


def test_receiving_an_unknown_transfer_is_not_found(
    admin: httpx.Client, new_id: Callable[[str], str], problem: Problem
) -> None:
    response = admin.post(
        f"/v1/transfers/{new_id('T')}/receipt", json={"lines": [{"sku": "A", "quantity": 1}]}
    )

    problem(response, 404, "not-found")


def test_a_transfer_id_reused_for_another_transfer_is_refused(
    admin: httpx.Client,
    fixed: Any,
    stocked: Callable[[str, str, int], None],
    new_id: Callable[[str], str],
    problem: Problem,
) -> None:
    sku, transfer = new_id("SKU"), new_id("T")
    stocked(sku, fixed.warehouse, 5)
    first = admin.post(
        "/v1/transfers", json=_transfer(transfer, fixed.warehouse, fixed.store_a, sku, 1)
    )
    assert first.status_code == 201

    again = admin.post(
        "/v1/transfers", json=_transfer(transfer, fixed.warehouse, fixed.store_a, sku, 2)
    )

    problem(again, 409, "idempotency-key-reused")


def test_a_transfer_without_lines_is_a_validation_problem(
    admin: httpx.Client, fixed: Any, new_id: Callable[[str], str], problem: Problem
) -> None:
    body = {
        "transfer_id": new_id("T"),
        "from_location": fixed.warehouse,
        "to_location": fixed.store_a,
        "lines": [],
    }

    problem(admin.post("/v1/transfers", json=body), 422, "validation")
