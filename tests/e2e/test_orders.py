"""Orders over HTTP: placement and sourcing, payment, cancellation, fulfillment, returns,
refunds, and their refusals."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

Problem = Callable[..., dict[str, Any]]


@pytest.fixture
def place(admin: httpx.Client, new_id: Callable[[str], str]) -> Callable[..., httpx.Response]:
    """Factory: places a shopify order for the given lines ``(sku, quantity[, location])``."""

    def place_order(*lines: tuple[Any, ...], **extra: Any) -> httpx.Response:
        body: dict[str, Any] = {
            "channel": "shopify",
            "external_id": new_id("SO"),
            "lines": [
                {
                    "line_id": str(index),
                    "sku": line[0],
                    "quantity": line[1],
                    **({"location": line[2]} if len(line) > 2 else {}),
                }
                for index, line in enumerate(lines, start=1)
            ],
            **extra,
        }
        return admin.post("/v1/orders", json=body)

    return place_order


def test_an_order_is_placed_reserved_and_located(
    place: Callable[..., httpx.Response],
    fixed: Any,
    stocked: Callable[[str, str, int], None],
    new_id: Callable[[str], str],
) -> None:
    sku = new_id("SKU")
    stocked(sku, fixed.warehouse, 5)

    response = place((sku, 3), currency="EUR", total="30.00")

    assert response.status_code == 201, response.text
    order = response.json()
    assert order["status"] == "reserved"
    assert order["lines"][0]["allocations"] == [{"location": fixed.warehouse, "quantity": 3}]
    assert response.headers["location"] == f"/v1/orders/{order['order_id']}"
    assert response.headers["x-ledger-position"] == str(order["position"])


def test_a_line_without_location_is_split_across_locations_by_priority(
    place: Callable[..., httpx.Response],
    new_location: Callable[..., str],
    stocked: Callable[[str, str, int], None],
    new_id: Callable[[str], str],
) -> None:
    sku = new_id("SKU")
    first, second = new_location(priority=1), new_location(priority=2)
    stocked(sku, first, 2)
    stocked(sku, second, 5)

    response = place((sku, 4))

    assert response.status_code == 201, response.text
    assert response.json()["lines"][0]["allocations"] == [
        {"location": first, "quantity": 2},
        {"location": second, "quantity": 2},
    ]


def test_an_order_that_cannot_be_fully_reserved_is_refused_whole(
    admin: httpx.Client,
    place: Callable[..., httpx.Response],
    fixed: Any,
    stocked: Callable[[str, str, int], None],
    new_id: Callable[[str], str],
    problem: Problem,
) -> None:
    plenty, scarce = new_id("SKU"), new_id("SKU")
    stocked(plenty, fixed.warehouse, 10)
    stocked(scarce, fixed.warehouse, 1)

    body = problem(place((plenty, 2), (scarce, 2)), 409, "insufficient-stock")

    assert body["sku"] == scarce
    # Nothing was reserved: all ten units of the first SKU can still be sold.
    assert place((plenty, 10)).status_code == 201


def test_a_backorder_is_placed_when_allowed(
    place: Callable[..., httpx.Response],
    fixed: Any,
    stocked: Callable[[str, str, int], None],
    new_id: Callable[[str], str],
) -> None:
    sku = new_id("SKU")
    stocked(sku, fixed.warehouse, 1)

    response = place((sku, 3), allow_backorder=True)

    assert response.status_code == 201, response.text
    assert response.json()["lines"][0]["backordered"] == 2


def test_an_order_line_at_an_unknown_location_is_not_found(
    place: Callable[..., httpx.Response], new_id: Callable[[str], str], problem: Problem
) -> None:
    problem(place((new_id("SKU"), 1, "NOWHERE-9")), 404, "not-found")


@pytest.mark.parametrize(
    "patch",
    [
        {"channel": "Shopify"},
        {"lines": []},
        {"currency": "euro"},
        {"total": "-1"},
        {"allow_backorder": "yes"},
        {"lines": [{"line_id": "1", "sku": "A", "quantity": 1.5}]},
        {"lines": [{"line_id": str(n), "sku": "A", "quantity": 1} for n in range(501)]},
    ],
)
def test_a_malformed_order_is_a_validation_problem(
    admin: httpx.Client, new_id: Callable[[str], str], problem: Problem, patch: dict[str, Any]
) -> None:
    body = {
        "channel": "shopify",
        "external_id": new_id("SO"),
        "lines": [{"line_id": "1", "sku": "A", "quantity": 1}],
        **patch,
    }

    problem(admin.post("/v1/orders", json=body), 422, "validation")


def test_an_order_goes_through_payment_fulfillment_return_and_refund(
    admin: httpx.Client,
    place: Callable[..., httpx.Response],
    fixed: Any,
    stocked: Callable[[str, str, int], None],
    new_id: Callable[[str], str],
) -> None:
    sku = new_id("SKU")
    stocked(sku, fixed.warehouse, 5)
    order_id = place((sku, 2), currency="EUR", total="40.00").json()["order_id"]

    paid = admin.post(f"/v1/orders/{order_id}/payment")
    fulfilled = admin.post(
        f"/v1/orders/{order_id}/fulfillments",
        json={"fulfillment_id": "F1", "lines": [{"line_id": "1", "quantity": 2}]},
    )
    returned = admin.post(
        f"/v1/orders/{order_id}/returns",
        json={
            "return_id": "R1",
            "lines": [{"line_id": "1", "quantity": 1, "disposition": "restock"}],
        },
    )
    refunded = admin.post(
        f"/v1/orders/{order_id}/refunds",
        json={
            "refund_id": "RF1",
            "amount": "20.00",
            "currency": "EUR",
            "lines": [{"line_id": "1", "quantity": 1}],
        },
    )

    assert (paid.status_code, paid.json()["status"]) == (200, "committed")
    assert (fulfilled.status_code, fulfilled.json()["status"]) == (201, "fulfilled")
    assert (returned.status_code, returned.json()["status"]) == (201, "partially_returned")
    assert (refunded.status_code, refunded.json()["status"]) == (201, "partially_refunded")
    positions = [r.json()["position"] for r in (paid, fulfilled, returned, refunded)]
    assert positions == sorted(positions)


def test_cancelling_an_order_releases_its_stock(
    admin: httpx.Client,
    place: Callable[..., httpx.Response],
    fixed: Any,
    stocked: Callable[[str, str, int], None],
    new_id: Callable[[str], str],
) -> None:
    sku = new_id("SKU")
    stocked(sku, fixed.warehouse, 2)
    order_id = place((sku, 2)).json()["order_id"]

    cancelled = admin.post(f"/v1/orders/{order_id}/cancellation", json={"reason": "customer"})

    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["cancel_reason"] == "customer"
    assert place((sku, 2)).status_code == 201


def test_a_cancellation_needs_no_body(
    admin: httpx.Client,
    place: Callable[..., httpx.Response],
    fixed: Any,
    stocked: Callable[[str, str, int], None],
    new_id: Callable[[str], str],
) -> None:
    sku = new_id("SKU")
    stocked(sku, fixed.warehouse, 1)
    order_id = place((sku, 1)).json()["order_id"]

    response = admin.post(f"/v1/orders/{order_id}/cancellation")

    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled"


def test_a_cancelled_order_cannot_be_fulfilled(
    admin: httpx.Client,
    place: Callable[..., httpx.Response],
    fixed: Any,
    stocked: Callable[[str, str, int], None],
    new_id: Callable[[str], str],
    problem: Problem,
) -> None:
    sku = new_id("SKU")
    stocked(sku, fixed.warehouse, 1)
    order_id = place((sku, 1)).json()["order_id"]
    admin.post(f"/v1/orders/{order_id}/cancellation")

    response = admin.post(
        f"/v1/orders/{order_id}/fulfillments",
        json={"fulfillment_id": "F1", "lines": [{"line_id": "1", "quantity": 1}]},
    )

    problem(response, 409, "invalid-state")


@pytest.mark.parametrize(
    ("action", "body"),
    [
        ("payment", None),
        ("cancellation", None),
        ("fulfillments", {"fulfillment_id": "F1", "lines": [{"line_id": "1", "quantity": 1}]}),
        (
            "returns",
            {
                "return_id": "R1",
                "lines": [{"line_id": "1", "quantity": 1, "disposition": "restock"}],
            },
        ),
        ("refunds", {"refund_id": "RF1", "amount": "1.00", "currency": "EUR"}),
    ],
)
@pytest.mark.parametrize("order_id", ["6b0e2a61-0000-4000-8000-000000000000", "not-a-uuid"])
def test_writes_to_an_unknown_order_are_not_found(
    admin: httpx.Client, problem: Problem, action: str, body: Any, order_id: str
) -> None:
    response = admin.post(f"/v1/orders/{order_id}/{action}", json=body)

    problem(response, 404, "not-found")


def test_a_return_needs_a_known_disposition(admin: httpx.Client, problem: Problem) -> None:
    response = admin.post(
        "/v1/orders/6b0e2a61-0000-4000-8000-000000000000/returns",
        json={
            "return_id": "R1",
            "lines": [{"line_id": "1", "quantity": 1, "disposition": "donate"}],
        },
    )

    problem(response, 422, "validation")


def test_a_refund_needs_an_amount_and_currency(admin: httpx.Client, problem: Problem) -> None:
    response = admin.post(
        "/v1/orders/6b0e2a61-0000-4000-8000-000000000000/refunds",
        json={"refund_id": "RF1", "amount": "abc"},
    )

    body = problem(response, 422, "validation")
    assert {tuple(error["loc"]) for error in body["errors"]} >= {("body", "currency")}
