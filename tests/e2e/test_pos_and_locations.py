"""POS transactions and location registration over HTTP."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

Problem = Callable[..., dict[str, Any]]


def _sale(transaction_id: str, location: str, *lines: tuple[str, int]) -> dict[str, Any]:
    return {
        "transaction_id": transaction_id,
        "location": location,
        "occurred_at": "2025-06-01T14:05:00+02:00",
        "lines": [{"sku": sku, "quantity": quantity} for sku, quantity in lines],
    }


def test_a_pos_sale_is_recorded_even_without_stock(
    admin: httpx.Client, fixed: Any, new_id: Callable[[str], str]
) -> None:
    sku = new_id("SKU")

    response = admin.post(
        "/v1/pos/transactions", json=_sale(new_id("POS"), fixed.store_a, (sku, 2))
    )

    assert response.status_code == 201, response.text
    body = response.json()
    assert body["positions"][0]["available"] == -2
    assert body["positions"][0]["discrepancy"] != 0
    assert body["occurred_at"].startswith("2025-06-01T")


def test_a_pos_transaction_replayed_by_its_id_records_nothing_new(
    admin: httpx.Client, fixed: Any, new_id: Callable[[str], str]
) -> None:
    sale = _sale(new_id("POS"), fixed.store_a, (new_id("SKU"), 1))

    first = admin.post("/v1/pos/transactions", json=sale)
    again = admin.post("/v1/pos/transactions", json=sale)

    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"


def test_a_pos_return_line_takes_units_back(
    admin: httpx.Client, fixed: Any, new_id: Callable[[str], str]
) -> None:
    response = admin.post(
        "/v1/pos/transactions",
        json={
            **_sale(new_id("POS"), fixed.store_a),
            "lines": [{"sku": new_id("SKU"), "quantity": -1, "disposition": "restock"}],
        },
    )

    assert response.status_code == 201, response.text
    assert response.json()["positions"][0]["available"] == 1


@pytest.mark.parametrize(
    "patch",
    [
        {"occurred_at": "2025-06-01T14:05:00"},
        {"occurred_at": "yesterday"},
        {"lines": [{"sku": "A", "quantity": 0}]},
        {"location": ""},
    ],
)
def test_a_malformed_pos_transaction_is_a_validation_problem(
    admin: httpx.Client,
    fixed: Any,
    new_id: Callable[[str], str],
    problem: Problem,
    patch: dict[str, Any],
) -> None:
    body = {**_sale(new_id("POS"), fixed.store_a, ("A", 1)), **patch}

    problem(admin.post("/v1/pos/transactions", json=body), 422, "validation")


def test_a_pos_transaction_at_an_unknown_location_is_not_found(
    admin: httpx.Client, new_id: Callable[[str], str], problem: Problem
) -> None:
    response = admin.post("/v1/pos/transactions", json=_sale(new_id("POS"), "NOWHERE-3", ("A", 1)))

    problem(response, 404, "not-found")


def test_a_location_is_registered_then_changed_with_put(
    admin: httpx.Client, new_id: Callable[[str], str]
) -> None:
    code = new_id("LOC")
    body = {
        "name": "Berlin Mitte",
        "kind": "store",
        "channels": ["pos", "shopify"],
        "priority": 20,
        "external_ids": {"shopify": new_id("gid")},
    }

    created = admin.put(f"/v1/locations/{code}", json=body)
    changed = admin.put(f"/v1/locations/{code}", json={**body, "priority": 5})

    assert created.status_code == 200, created.text
    assert created.json()["code"] == code
    assert created.json()["channels"] == ["pos", "shopify"]
    assert changed.status_code == 200
    assert changed.json()["priority"] == 5
    assert changed.json()["position"] > created.json()["position"]


def test_a_channel_location_id_cannot_map_to_two_locations(
    admin: httpx.Client, new_id: Callable[[str], str], problem: Problem
) -> None:
    shared = {"shopify": new_id("gid")}
    first = admin.put(
        f"/v1/locations/{new_id('LOC')}",
        json={"name": "One", "kind": "store", "external_ids": shared},
    )
    assert first.status_code == 200

    second = admin.put(
        f"/v1/locations/{new_id('LOC')}",
        json={"name": "Two", "kind": "store", "external_ids": shared},
    )

    problem(second, 409, "already-exists")


@pytest.mark.parametrize(
    ("code", "body"),
    [
        ("GOOD-1", {"name": "x", "kind": "shed"}),
        ("GOOD-1", {"name": "", "kind": "store"}),
        ("GOOD-1", {"name": "x", "kind": "store", "channels": ["Not Lower"]}),
        ("GOOD-1", {"name": "x", "kind": "store", "priority": "high"}),
        ("bad%20code", {"name": "x", "kind": "store"}),
    ],
)
def test_a_malformed_location_is_a_validation_problem(
    admin: httpx.Client, problem: Problem, code: str, body: dict[str, Any]
) -> None:
    problem(admin.put(f"/v1/locations/{code}", json=body), 422, "validation")
