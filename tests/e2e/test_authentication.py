"""API keys: 401 without a valid key, 403 without the scope or outside the key's locations."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

Problem = Callable[..., dict[str, Any]]
Clients = Callable[..., httpx.Client]


def _receipt(location: str, sku: str = "AUTH-SKU", quantity: int = 1) -> dict[str, Any]:
    return {"sku": sku, "location": location, "quantity": quantity}


def test_a_write_without_a_key_is_unauthorized(
    client_for: Clients, fixed: Any, problem: Problem
) -> None:
    response = client_for(None).post("/v1/stock/receipts", json=_receipt(fixed.warehouse))

    problem(response, 401, "unauthorized")
    assert response.headers["www-authenticate"] == "Bearer"


def test_a_wrong_key_is_unauthorized_and_never_echoed(
    client_for: Clients, fixed: Any, problem: Problem
) -> None:
    wrong = "definitely-not-a-key-0123456789"
    response = client_for(None, Authorization=f"Bearer {wrong}").post(
        "/v1/stock/receipts", json=_receipt(fixed.warehouse)
    )

    problem(response, 401, "unauthorized")
    assert wrong not in response.text


def test_a_non_bearer_scheme_is_unauthorized(
    server: Any, client_for: Clients, fixed: Any, problem: Problem
) -> None:
    response = client_for(None, Authorization=f"Basic {server.keys['admin']}").post(
        "/v1/stock/receipts", json=_receipt(fixed.warehouse)
    )

    problem(response, 401, "unauthorized")


def test_a_key_from_the_keys_file_stored_as_plain_secret_authenticates(
    client_for: Clients, fixed: Any, problem: Problem
) -> None:
    # "reader" is stored in plain text; it authenticates, then lacks the write scope.
    response = client_for("reader").post("/v1/stock/receipts", json=_receipt(fixed.warehouse))

    body = problem(response, 403, "forbidden")
    assert "stock:write" in body["detail"]


@pytest.mark.parametrize(
    ("key_name", "method", "path", "payload"),
    [
        ("order-sync", "POST", "/v1/stock/receipts", _receipt("E2E-WH")),
        (
            "till",
            "POST",
            "/v1/transfers",
            {
                "transfer_id": "T-AUTH",
                "from_location": "E2E-WH",
                "to_location": "E2E-STORE-A",
                "lines": [{"sku": "AUTH-SKU", "quantity": 1}],
            },
        ),
        (
            "stock-clerk",
            "POST",
            "/v1/orders",
            {
                "channel": "shopify",
                "external_id": "AUTH-1",
                "lines": [{"line_id": "1", "sku": "AUTH-SKU", "quantity": 1}],
            },
        ),
        (
            "stock-clerk",
            "POST",
            "/v1/pos/transactions",
            {
                "transaction_id": "AUTH-POS",
                "location": "E2E-STORE-A",
                "occurred_at": "2025-01-01T10:00:00Z",
                "lines": [{"sku": "AUTH-SKU", "quantity": 1}],
            },
        ),
        ("stock-clerk", "PUT", "/v1/locations/AUTH-LOC", {"name": "x", "kind": "store"}),
        ("reader", "POST", "/v1/orders/00000000-0000-0000-0000-000000000000/payment", None),
    ],
)
def test_a_key_without_the_scope_is_forbidden(
    client_for: Clients,
    problem: Problem,
    key_name: str,
    method: str,
    path: str,
    payload: dict[str, Any] | None,
) -> None:
    response = client_for(key_name).request(method, path, json=payload)

    problem(response, 403, "forbidden")


def test_admin_scope_implies_every_other_scope(
    client_for: Clients, fixed: Any, new_id: Callable[[str], str]
) -> None:
    response = client_for("admin").post(
        "/v1/stock/receipts", json=_receipt(fixed.warehouse, sku=new_id("ADM"))
    )

    assert response.status_code == 201


def test_a_location_limited_key_writes_at_its_location(
    client_for: Clients, fixed: Any, new_id: Callable[[str], str]
) -> None:
    response = client_for("store-a-stock").post(
        "/v1/stock/receipts", json=_receipt(fixed.store_a, sku=new_id("LIM"))
    )

    assert response.status_code == 201, response.text


def test_a_location_limited_key_cannot_write_elsewhere(
    client_for: Clients, fixed: Any, problem: Problem
) -> None:
    response = client_for("store-a-stock").post(
        "/v1/stock/receipts", json=_receipt(fixed.warehouse)
    )

    body = problem(response, 403, "forbidden")
    assert body["locations"] == [fixed.warehouse]


def test_a_location_limited_key_needs_both_ends_of_a_transfer(
    client_for: Clients, fixed: Any, problem: Problem, new_id: Callable[[str], str]
) -> None:
    response = client_for("store-a-stock").post(
        "/v1/transfers",
        json={
            "transfer_id": new_id("T"),
            "from_location": fixed.store_a,
            "to_location": fixed.store_b,
            "lines": [{"sku": "AUTH-SKU", "quantity": 1}],
        },
    )

    problem(response, 403, "forbidden")


def test_a_location_limited_key_receives_only_transfers_bound_for_its_location(
    admin: httpx.Client,
    client_for: Clients,
    fixed: Any,
    problem: Problem,
    stocked: Callable[[str, str, int], None],
    new_id: Callable[[str], str],
) -> None:
    sku = new_id("TR")
    stocked(sku, fixed.warehouse, 4)
    to_a, to_b = new_id("T"), new_id("T")
    for transfer, destination in ((to_a, fixed.store_a), (to_b, fixed.store_b)):
        dispatched = admin.post(
            "/v1/transfers",
            json={
                "transfer_id": transfer,
                "from_location": fixed.warehouse,
                "to_location": destination,
                "lines": [{"sku": sku, "quantity": 2}],
            },
        )
        assert dispatched.status_code == 201, dispatched.text
    store_a = client_for("store-a-stock")
    receipt = {"lines": [{"sku": sku, "quantity": 2}]}

    assert store_a.post(f"/v1/transfers/{to_a}/receipt", json=receipt).status_code == 201
    problem(store_a.post(f"/v1/transfers/{to_b}/receipt", json=receipt), 403, "forbidden")


def test_a_location_limited_till_sells_only_at_its_store(
    client_for: Clients, fixed: Any, problem: Problem, new_id: Callable[[str], str]
) -> None:
    till = client_for("store-a-till")

    def sale(location: str) -> httpx.Response:
        return till.post(
            "/v1/pos/transactions",
            json={
                "transaction_id": new_id("POS"),
                "location": location,
                "occurred_at": "2025-03-01T09:30:00+01:00",
                "lines": [{"sku": new_id("S"), "quantity": 1}],
            },
        )

    assert sale(fixed.store_a).status_code == 201
    problem(sale(fixed.store_b), 403, "forbidden")


def test_a_location_limited_key_cannot_place_an_order_the_ledger_would_source(
    client_for: Clients, fixed: Any, problem: Problem, new_id: Callable[[str], str]
) -> None:
    response = client_for("store-a-orders").post(
        "/v1/orders",
        json={
            "channel": "pos",
            "external_id": new_id("O"),
            "lines": [{"line_id": "1", "sku": "AUTH-SKU", "quantity": 1}],
        },
    )

    problem(response, 403, "forbidden")


def test_a_location_limited_key_places_and_follows_orders_at_its_location(
    client_for: Clients,
    fixed: Any,
    stocked: Callable[[str, str, int], None],
    new_id: Callable[[str], str],
) -> None:
    sku = new_id("OA")
    stocked(sku, fixed.store_a, 3)
    orders = client_for("store-a-orders")

    placed = orders.post(
        "/v1/orders",
        json={
            "channel": "pos",
            "external_id": new_id("O"),
            "lines": [{"line_id": "1", "sku": sku, "quantity": 2, "location": fixed.store_a}],
        },
    )
    assert placed.status_code == 201, placed.text
    paid = orders.post(f"/v1/orders/{placed.json()['order_id']}/payment")

    assert paid.status_code == 200, paid.text
    assert paid.json()["status"] == "committed"


def test_a_location_limited_key_cannot_touch_an_order_held_elsewhere(
    admin: httpx.Client,
    client_for: Clients,
    fixed: Any,
    problem: Problem,
    stocked: Callable[[str, str, int], None],
    new_id: Callable[[str], str],
) -> None:
    sku = new_id("OW")
    stocked(sku, fixed.warehouse, 3)
    placed = admin.post(
        "/v1/orders",
        json={
            "channel": "shopify",
            "external_id": new_id("O"),
            "lines": [{"line_id": "1", "sku": sku, "quantity": 1}],
        },
    )
    order_id = placed.json()["order_id"]
    orders = client_for("store-a-orders")

    problem(orders.post(f"/v1/orders/{order_id}/cancellation"), 403, "forbidden")
    problem(
        orders.post(
            f"/v1/orders/{order_id}/refunds",
            json={"refund_id": "R1", "amount": "1.00", "currency": "EUR"},
        ),
        403,
        "forbidden",
    )


def test_a_location_limited_admin_cannot_register_other_locations(
    client_for: Clients, fixed: Any, problem: Problem, new_id: Callable[[str], str]
) -> None:
    limited = client_for("store-a-admin")
    body = {"name": "Store A", "kind": "store", "channels": ["pos"], "priority": 50}

    assert limited.put(f"/v1/locations/{fixed.store_a}", json=body).status_code == 200
    problem(limited.put(f"/v1/locations/{new_id('NEW')}", json=body), 403, "forbidden")


def test_the_key_is_checked_before_the_body(client_for: Clients, problem: Problem) -> None:
    response = client_for(None).post("/v1/stock/receipts", json={"quantity": "many"})

    problem(response, 401, "unauthorized")
