"""Stock writes over HTTP: receipts, adjustments, counts, damage, safety stock, dispositions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

Problem = Callable[..., dict[str, Any]]


@pytest.fixture
def sku(new_id: Callable[[str], str]) -> str:
    return new_id("SKU")


def test_a_receipt_is_created_with_its_position_in_body_and_header(
    admin: httpx.Client, fixed: Any, sku: str
) -> None:
    response = admin.post(
        "/v1/stock/receipts",
        json={"sku": sku, "location": fixed.warehouse, "quantity": 7, "reference": "PO-1"},
    )

    assert response.status_code == 201
    body = response.json()
    assert body["sku"] == sku and body["location"] == fixed.warehouse
    assert body["available"] == 7 and body["on_hand"] == 7
    assert isinstance(body["position"], int) and body["position"] > 0
    assert response.headers["x-ledger-position"] == str(body["position"])
    assert "idempotent-replayed" not in response.headers


def test_positions_grow_with_each_write(admin: httpx.Client, fixed: Any, sku: str) -> None:
    receipt = {"sku": sku, "location": fixed.warehouse, "quantity": 1}

    first = admin.post("/v1/stock/receipts", json=receipt).json()["position"]
    second = admin.post("/v1/stock/receipts", json=receipt).json()["position"]

    assert second > first


def test_a_receipt_at_an_unknown_location_is_not_found(
    admin: httpx.Client, sku: str, problem: Problem
) -> None:
    response = admin.post(
        "/v1/stock/receipts", json={"sku": sku, "location": "NOWHERE-42", "quantity": 1}
    )

    body = problem(response, 404, "not-found")
    assert body["location"] == "NOWHERE-42"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("quantity", 0),
        ("quantity", -3),
        ("quantity", True),
        ("quantity", 2.0),
        ("quantity", "5"),
        ("quantity", 10**12),
        ("sku", "has space"),
        ("sku", ""),
        ("sku", "X" * 65),
        ("location", "bad/slash"),
        ("reference", "line\nbreak"),
    ],
)
def test_a_malformed_receipt_is_a_validation_problem_naming_the_field(
    admin: httpx.Client, fixed: Any, sku: str, problem: Problem, field: str, value: Any
) -> None:
    receipt: dict[str, Any] = {"sku": sku, "location": fixed.warehouse, "quantity": 1}
    receipt[field] = value

    body = problem(admin.post("/v1/stock/receipts", json=receipt), 422, "validation")

    assert ["body", field] in [error["loc"] for error in body["errors"]]
    assert all("input" not in error for error in body["errors"])


def test_a_receipt_with_an_unknown_field_or_missing_field_is_refused(
    admin: httpx.Client, fixed: Any, sku: str, problem: Problem
) -> None:
    unknown = {"sku": sku, "location": fixed.warehouse, "quantity": 1, "qty": 1}
    missing = {"sku": sku, "location": fixed.warehouse}

    problem(admin.post("/v1/stock/receipts", json=unknown), 422, "validation")
    problem(admin.post("/v1/stock/receipts", json=missing), 422, "validation")


def test_a_body_that_is_not_json_is_a_validation_problem(
    admin: httpx.Client, problem: Problem
) -> None:
    response = admin.post(
        "/v1/stock/receipts", content=b"{not json", headers={"Content-Type": "application/json"}
    )

    problem(response, 422, "validation")


def test_adjustments_raise_and_lower_available_stock(
    admin: httpx.Client, fixed: Any, sku: str, stocked: Callable[[str, str, int], None]
) -> None:
    stocked(sku, fixed.warehouse, 10)

    up = admin.post(
        "/v1/stock/adjustments",
        json={"sku": sku, "location": fixed.warehouse, "delta": 5, "reason": "found"},
    )
    down = admin.post(
        "/v1/stock/adjustments",
        json={"sku": sku, "location": fixed.warehouse, "delta": -12, "reason": "shrinkage"},
    )

    assert up.status_code == 201 and up.json()["available"] == 15
    assert down.status_code == 201 and down.json()["available"] == 3


def test_a_negative_adjustment_beyond_available_is_insufficient_stock(
    admin: httpx.Client,
    fixed: Any,
    sku: str,
    stocked: Callable[[str, str, int], None],
    problem: Problem,
) -> None:
    stocked(sku, fixed.warehouse, 2)

    response = admin.post(
        "/v1/stock/adjustments",
        json={"sku": sku, "location": fixed.warehouse, "delta": -3, "reason": "shrinkage"},
    )

    problem(response, 409, "insufficient-stock")


def test_an_adjustment_needs_a_non_zero_delta_and_a_reason(
    admin: httpx.Client, fixed: Any, sku: str, problem: Problem
) -> None:
    zero = {"sku": sku, "location": fixed.warehouse, "delta": 0, "reason": "nothing"}
    no_reason = {"sku": sku, "location": fixed.warehouse, "delta": 1}

    problem(admin.post("/v1/stock/adjustments", json=zero), 422, "validation")
    problem(admin.post("/v1/stock/adjustments", json=no_reason), 422, "validation")


def test_a_count_sets_on_hand(
    admin: httpx.Client, fixed: Any, sku: str, stocked: Callable[[str, str, int], None]
) -> None:
    stocked(sku, fixed.warehouse, 10)

    response = admin.post(
        "/v1/stock/counts", json={"sku": sku, "location": fixed.warehouse, "counted": 4}
    )

    assert response.status_code == 201
    assert response.json()["on_hand"] == 4


def test_damage_marks_then_write_off_removes_units(
    admin: httpx.Client, fixed: Any, sku: str, stocked: Callable[[str, str, int], None]
) -> None:
    stocked(sku, fixed.warehouse, 5)

    marked = admin.post(
        "/v1/stock/damage",
        json={"sku": sku, "location": fixed.warehouse, "quantity": 2, "reason": "crushed"},
    )
    written_off = admin.post(
        "/v1/stock/damage/write-offs", json={"sku": sku, "location": fixed.warehouse, "quantity": 2}
    )

    assert marked.status_code == 201
    assert marked.json()["damaged"] == 2 and marked.json()["available"] == 3
    assert written_off.status_code == 201
    assert written_off.json()["damaged"] == 0 and written_off.json()["on_hand"] == 3


def test_marking_more_damaged_than_available_is_insufficient_stock(
    admin: httpx.Client,
    fixed: Any,
    sku: str,
    stocked: Callable[[str, str, int], None],
    problem: Problem,
) -> None:
    stocked(sku, fixed.warehouse, 1)

    response = admin.post(
        "/v1/stock/damage", json={"sku": sku, "location": fixed.warehouse, "quantity": 2}
    )

    problem(response, 409, "insufficient-stock")


def test_safety_stock_is_set_with_put_and_limits_available_to_sell(
    admin: httpx.Client, fixed: Any, sku: str, stocked: Callable[[str, str, int], None]
) -> None:
    stocked(sku, fixed.warehouse, 10)

    response = admin.put(
        "/v1/stock/safety-stock", json={"sku": sku, "location": fixed.warehouse, "quantity": 4}
    )

    assert response.status_code == 200
    assert response.json()["safety_stock"] == 4
    assert response.json()["available_to_sell"] == 6


def test_units_kept_for_inspection_are_restocked_by_disposition(
    admin: httpx.Client, fixed: Any, sku: str, new_id: Callable[[str], str]
) -> None:
    returned = admin.post(
        "/v1/pos/transactions",
        json={
            "transaction_id": new_id("POS"),
            "location": fixed.store_a,
            "occurred_at": "2025-05-05T12:00:00Z",
            "lines": [{"sku": sku, "quantity": -2, "disposition": "inspect"}],
        },
    )
    assert returned.status_code == 201, returned.text

    response = admin.post(
        "/v1/stock/returns/disposition",
        json={"sku": sku, "location": fixed.store_a, "quantity": 2, "disposition": "restock"},
    )

    assert response.status_code == 201
    assert response.json()["returned"] == 0 and response.json()["available"] == 2


def test_a_disposition_only_restocks_or_scraps(
    admin: httpx.Client, fixed: Any, sku: str, problem: Problem
) -> None:
    response = admin.post(
        "/v1/stock/returns/disposition",
        json={"sku": sku, "location": fixed.store_a, "quantity": 1, "disposition": "inspect"},
    )

    problem(response, 422, "validation")
