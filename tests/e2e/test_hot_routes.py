"""``POST /v1/orders`` on its lean way (a plain request is answered before FastAPI's layers) and
on the route's (anything else): the same answers, headers, refusals and replays either way."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

Problem = Callable[..., dict[str, Any]]
NewId = Callable[[str], str]

# A query string, which the route ignores, sends a request the route's way.
THE_ROUTES_WAY = {"via": "route"}


def _order(new_id: NewId, sku: str, quantity: int = 1) -> dict[str, Any]:
    return {
        "channel": "shopify",
        "external_id": new_id("HOT"),
        "lines": [{"line_id": "1", "sku": sku, "quantity": quantity}],
        "currency": "EUR",
        "total": "9.50",
    }


def _shape(response: httpx.Response) -> tuple[int, set[str], dict[str, Any]]:
    body = response.json()
    for varying in ("order_id", "external_id", "position", "placed_at"):
        body.pop(varying, None)
    headers = {name for name in response.headers if name not in ("date", "x-request-id")}
    return response.status_code, headers, body


def test_a_plain_order_is_answered_like_one_placed_the_routes_way(
    admin: httpx.Client, fixed: Any, stocked: Callable[[str, str, int], None], new_id: NewId
) -> None:
    sku = new_id("SKU")
    stocked(sku, fixed.warehouse, 5)

    plain = admin.post("/v1/orders", json=_order(new_id, sku))
    routed = admin.post("/v1/orders", params=THE_ROUTES_WAY, json=_order(new_id, sku))

    assert plain.status_code == 201, plain.text
    assert _shape(plain) == _shape(routed)
    assert plain.headers["location"] == f"/v1/orders/{plain.json()['order_id']}"
    assert plain.headers["x-ledger-position"] == str(plain.json()["position"])
    assert plain.headers["content-type"] == "application/json"


def test_a_replayed_plain_order_says_so_and_answers_the_same(
    admin: httpx.Client, fixed: Any, stocked: Callable[[str, str, int], None], new_id: NewId
) -> None:
    sku = new_id("SKU")
    stocked(sku, fixed.warehouse, 5)
    order = _order(new_id, sku)
    key = {"Idempotency-Key": new_id("key")}

    first = admin.post("/v1/orders", json=order, headers=key)
    again = admin.post("/v1/orders", json=order, headers=key)
    other = admin.post("/v1/orders", json={**order, "total": "1.00"}, headers=key)

    assert (first.status_code, again.status_code) == (201, 201)
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert other.status_code == 409 and other.json()["type"] == "idempotency-key-reused"


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        ({"quantity": "many"}, {}),
        ({"lines": []}, {}),
        ({"unknown": 1}, {}),
        ({}, {"Idempotency-Key": "has space"}),
    ],
    ids=["bad-quantity", "no-lines", "unknown-field", "bad-key"],
)
def test_a_malformed_order_gets_the_routes_own_validation_answer(
    admin: httpx.Client,
    fixed: Any,
    new_id: NewId,
    problem: Problem,
    body: dict[str, Any],
    headers: dict[str, str],
) -> None:
    order = _order(new_id, "ANY-SKU")
    if "quantity" in body:
        order["lines"][0]["quantity"] = body.pop("quantity")
    order.update(body)

    plain = admin.post("/v1/orders", json=order, headers=headers)
    routed = admin.post("/v1/orders", params=THE_ROUTES_WAY, json=order, headers=headers)

    answer = problem(plain, 422, "validation")
    assert answer == problem(routed, 422, "validation")


def test_a_body_that_is_not_json_gets_the_routes_own_answer(
    admin: httpx.Client, problem: Problem
) -> None:
    broken = b'{"channel": "shopify", "lines": ['
    headers = {"Content-Type": "application/json"}

    plain = admin.post("/v1/orders", content=broken, headers=headers)
    routed = admin.post("/v1/orders", params=THE_ROUTES_WAY, content=broken, headers=headers)

    assert problem(plain, 422, "validation") == problem(routed, 422, "validation")


@pytest.mark.parametrize(
    ("key_name", "status", "slug"), [(None, 401, "unauthorized"), ("reader", 403, "forbidden")]
)
def test_a_plain_order_checks_the_key_like_the_route(
    client_for: Callable[..., httpx.Client],
    new_id: NewId,
    problem: Problem,
    key_name: str | None,
    status: int,
    slug: str,
) -> None:
    order = _order(new_id, "ANY-SKU")
    client = client_for(key_name)

    plain = client.post("/v1/orders", json=order)
    routed = client.post("/v1/orders", params=THE_ROUTES_WAY, json=order)

    assert problem(plain, status, slug) == problem(routed, status, slug)


def test_a_plain_order_refused_by_the_ledger_gets_its_problem(
    admin: httpx.Client, fixed: Any, new_id: NewId, problem: Problem
) -> None:
    order = _order(new_id, new_id("NO-STOCK"), quantity=2)

    answer = problem(admin.post("/v1/orders", json=order), 409, "insufficient-stock")

    assert answer["requested"] == 2
