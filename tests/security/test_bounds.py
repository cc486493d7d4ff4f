"""Bounds on what a request may carry, each refused before anything is recorded.

Bodies over 1 MiB are refused with 413; lines per order, transfer or till transaction (500),
SKUs per bulk read (500) and page sizes are bounded (422); quantities must be integers within
their range (floats, booleans and strings are refused, not coerced); SKUs, locations, channels
and ids must use SPEC's character sets; free text must be printable and at most 500 characters.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

ONE_MIB = 1024 * 1024
MAX_QUANTITY = 1_000_000_000
NOW = "2026-11-27T10:00:00Z"


def _lines(count: int) -> list[dict[str, Any]]:
    return [{"line_id": str(n), "sku": "BOUND-1", "quantity": 1} for n in range(count)]


def _receipt(**change: Any) -> dict[str, Any]:
    return {"sku": "BOUND-1", "location": "SEC-STORE-A", "quantity": 1, **change}


@pytest.fixture
def unchanged(server: Any) -> Any:
    before = server.ledger_state()
    yield
    assert server.ledger_state() == before, "a refused request recorded something"


BAD_QUANTITIES = [0, -1, MAX_QUANTITY + 1, 10**30, 1.5, 2.0, True, False, "3", None, [1], {"n": 1}]


@pytest.mark.parametrize("quantity", BAD_QUANTITIES, ids=repr)
def test_quantities_outside_their_range_or_type_are_refused(
    quantity: Any, admin: httpx.Client, problem: Any, unchanged: None
) -> None:
    response = admin.post("/v1/stock/receipts", json=_receipt(quantity=quantity))
    body = problem(response, 422, "validation")
    assert body["errors"][0]["loc"][-1] == "quantity"


@pytest.mark.parametrize(
    ("path", "field", "value"),
    [
        ("/v1/stock/adjustments", "delta", 0),
        ("/v1/stock/adjustments", "delta", -(MAX_QUANTITY + 1)),
        ("/v1/stock/counts", "counted", -1),
        ("/v1/stock/counts", "counted", 1.0),
        ("/v1/stock/damage", "quantity", 0),
    ],
)
def test_signed_and_non_negative_quantities_are_bounded(
    path: str, field: str, value: Any, admin: httpx.Client, problem: Any, unchanged: None
) -> None:
    body: dict[str, Any] = {"sku": "BOUND-1", "location": "SEC-STORE-A", field: value}
    if path.endswith("adjustments"):
        body["reason"] = "test"
    problem(admin.post(path, json=body), 422, "validation")


def test_the_largest_quantity_is_accepted(admin: httpx.Client) -> None:
    response = admin.post(
        "/v1/stock/receipts", json=_receipt(sku="BOUND-MAX", quantity=MAX_QUANTITY)
    )
    assert response.status_code == 201, response.text


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("sku", ""),
        ("sku", "A B"),
        ("sku", "A\n"),
        ("sku", "SKU\u00e9"),
        ("sku", "A;DROP"),
        ("sku", "A" * 65),
        ("sku", "A\x00"),
        ("location", "STORE/A"),
        ("location", "Ünter"),
        ("location", "L" * 65),
        ("reference", "bad\x07bell"),
        ("reference", "x" * 501),
        ("reference", "line\nbreak"),
    ],
    ids=repr,
)
def test_keys_and_text_outside_their_character_sets_are_refused(
    field: str, value: str, admin: httpx.Client, problem: Any, unchanged: None
) -> None:
    problem(admin.post("/v1/stock/receipts", json=_receipt(**{field: value})), 422, "validation")


@pytest.mark.parametrize("channel", ["Shopify", "shop ify", "shop-ify", "", "x" * 33, "9pos"])
def test_channels_outside_their_character_set_are_refused(
    channel: str, admin: httpx.Client, problem: Any, unchanged: None
) -> None:
    body = {"channel": channel, "external_id": "E-1", "lines": _lines(1)}
    problem(admin.post("/v1/orders", json=body), 422, "validation")
    response = admin.get("/v1/availability", params={"channel": channel, "sku": "BOUND-1"})
    problem(response, 422, "validation")


@pytest.mark.parametrize("external_id", ["has space", "é", "", "x" * 129, "a\tb"])
def test_ids_outside_their_character_set_are_refused(
    external_id: str, admin: httpx.Client, problem: Any, unchanged: None
) -> None:
    body = {"channel": "shopify", "external_id": external_id, "lines": _lines(1)}
    problem(admin.post("/v1/orders", json=body), 422, "validation")


def test_lines_per_write_are_bounded(
    admin: httpx.Client, problem: Any, places: Any, unchanged: None
) -> None:
    order = {"channel": "shopify", "external_id": "MANY", "lines": _lines(501)}
    problem(admin.post("/v1/orders", json=order), 422, "validation")
    problem(admin.post("/v1/orders", json={**order, "lines": []}), 422, "validation")
    transfer = {
        "transfer_id": "MANY",
        "from_location": places.store_a,
        "to_location": places.store_b,
        "lines": [{"sku": f"S{n}", "quantity": 1} for n in range(501)],
    }
    problem(admin.post("/v1/transfers", json=transfer), 422, "validation")
    sale = {
        "transaction_id": "MANY",
        "location": places.store_a,
        "occurred_at": NOW,
        "lines": [{"sku": f"S{n}", "quantity": 1} for n in range(501)],
    }
    problem(admin.post("/v1/pos/transactions", json=sale), 422, "validation")


def test_five_hundred_lines_are_accepted(admin: httpx.Client, places: Any) -> None:
    sale = {
        "transaction_id": "FIVE-HUNDRED",
        "location": places.store_a,
        "occurred_at": NOW,
        "lines": [{"sku": f"S{n}", "quantity": 1} for n in range(500)],
    }
    response = admin.post("/v1/pos/transactions", json=sale)
    assert response.status_code == 201, response.text[:300]


def test_skus_per_bulk_read_and_page_sizes_are_bounded(admin: httpx.Client, problem: Any) -> None:
    many = [("channel", "shopify"), *(("sku", f"S{n}") for n in range(501))]
    problem(admin.get("/v1/availability", params=many), 422, "validation")
    assert admin.get("/v1/availability", params=many[:501]).status_code == 200
    for path, largest in (
        ("/v1/events", 1000),
        ("/v1/orders", 500),
        ("/v1/stock/BOUND-1/SEC-STORE-A/history", 1000),
        ("/v1/exceptions", 1000),
    ):
        problem(admin.get(path, params={"limit": largest + 1}), 422, "validation")
        problem(admin.get(path, params={"limit": 0}), 422, "validation")
        problem(admin.get(path, params={"limit": -1}), 422, "validation")
        assert admin.get(path, params={"limit": largest}).status_code in (200, 404), path
    problem(admin.get("/v1/events", params={"after": -1}), 422, "validation")
    problem(admin.get("/v1/events", params={"after": 2**63}), 422, "validation")


def test_a_body_of_one_mib_and_one_byte_is_refused_with_413(
    admin: httpx.Client, problem: Any, server: Any
) -> None:
    body = json.dumps(_receipt(reference="")).encode()
    padded = body[:-1] + b" " * (ONE_MIB + 1 - len(body)) + b"}"
    assert len(padded) == ONE_MIB + 1
    headers = {"Content-Type": "application/json"}
    before = server.ledger_state()
    problem(
        admin.post("/v1/stock/receipts", content=padded, headers=headers), 413, "payload-too-large"
    )
    assert server.ledger_state() == before
    # One byte less is read (and is a valid receipt: whitespace is JSON).
    exact = padded[:-2] + b"}"
    assert len(exact) == ONE_MIB
    response = admin.post(
        "/v1/stock/receipts", content=exact, headers={**headers, "Idempotency-Key": "one-mib"}
    )
    assert response.status_code == 201, response.text


def test_deep_nesting_and_huge_numbers_in_a_body_are_refused_not_crashed(
    admin: httpx.Client, problem: Any, unchanged: None
) -> None:
    deep = b'{"sku": ' + b"[" * 10_000 + b"]" * 10_000 + b', "location": "L", "quantity": 1}'
    response = admin.post(
        "/v1/stock/receipts", content=deep, headers={"Content-Type": "application/json"}
    )
    assert response.status_code in (400, 413, 422), response.text[:300]
    huge = b'{"sku": "A", "location": "L", "quantity": 1' + b"0" * 5000 + b"}"
    response = admin.post(
        "/v1/stock/receipts", content=huge, headers={"Content-Type": "application/json"}
    )
    assert response.status_code in (400, 422), response.text[:300]
