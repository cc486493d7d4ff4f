"""Shopify webhooks from someone who is not Shopify, or from a Shopify gone strange.

Wrong, missing or malformed signatures are refused (401) with nothing recorded; a replayed
delivery (same body, signature and webhook id) records nothing new; an oversized body is refused
(413) before it is read whole; hostile JSON (nested 10,000 deep, numbers of thousands of digits,
not JSON at all) never crashes the server or hangs it: it is answered quickly and kept as an
exception for a person to look at.
"""

from __future__ import annotations

import json
import time
from typing import Any
from uuid import uuid4

import httpx
import pytest

ONE_MIB = 1024 * 1024


def _order(sku: str) -> dict[str, Any]:
    return {
        "id": int(uuid4().int % 10**12),
        "currency": "EUR",
        "total_price": "10.00",
        "financial_status": "pending",
        "line_items": [{"id": 1, "sku": sku, "quantity": 1}],
    }


def _deliver(
    server: Any,
    body: bytes,
    *,
    signature: str | None = None,
    webhook_id: str | None = None,
    topic: str = "orders/create",
    drop: tuple[str, ...] = (),
) -> httpx.Response:
    headers = {
        "Content-Type": "application/json",
        "X-Shopify-Topic": topic,
        "X-Shopify-Webhook-Id": webhook_id or f"hostile-{uuid4().hex}",
        "X-Shopify-Hmac-Sha256": server.signature(body) if signature is None else signature,
    }
    for name in drop:
        headers.pop(name)
    return httpx.post(
        f"{server.base_url}/v1/webhooks/shopify", content=body, headers=headers, timeout=30
    )


@pytest.fixture
def stocked_sku(admin: httpx.Client, places: Any) -> str:
    sku = f"HOOK-{uuid4().hex[:8]}"
    response = admin.post(
        "/v1/stock/receipts", json={"sku": sku, "location": places.store_a, "quantity": 10}
    )
    assert response.status_code == 201, response.text
    return sku


def test_wrong_missing_or_malformed_signatures_are_refused_and_record_nothing(
    server: Any, stocked_sku: str, problem: Any
) -> None:
    body = json.dumps(_order(stocked_sku)).encode()
    tampered = body.replace(b'"quantity": 1', b'"quantity": 9')
    before = server.ledger_state()
    refused = {
        "missing": _deliver(server, body, drop=("X-Shopify-Hmac-Sha256",)),
        "empty": _deliver(server, body, signature=""),
        "another secret": _deliver(server, body, signature=server.signature(body, "not-it")),
        "another body": _deliver(server, tampered, signature=server.signature(body)),
        "not base64": _deliver(server, body, signature="%%%not*base64%%%"),
        "hex, not base64": _deliver(server, body, signature="ab" * 32),
        "truncated": _deliver(server, body, signature=server.signature(body)[:-4]),
        "huge": _deliver(server, body, signature="A" * 8000),
    }
    for case, response in refused.items():
        problem(response, 401, "unauthorized")
        assert server.ledger_state() == before, f"{case}: something was recorded"
    assert server.webhook_secret not in "".join(r.text for r in refused.values())


def test_a_replayed_delivery_records_nothing_new(server: Any, stocked_sku: str) -> None:
    body = json.dumps(_order(stocked_sku)).encode()
    signature, webhook_id = server.signature(body), f"replay-{uuid4().hex}"

    first = _deliver(server, body, signature=signature, webhook_id=webhook_id)
    assert first.status_code == 200, first.text
    assert first.json()["status"] == "applied"
    after_first = server.ledger_state()
    for _ in range(5):
        again = _deliver(server, body, signature=signature, webhook_id=webhook_id)
        assert again.status_code == 200, again.text
        assert again.json()["order_id"] == first.json()["order_id"]
    assert server.ledger_state() == after_first, "a replay recorded something"


def test_an_oversized_delivery_is_refused_with_413_and_records_nothing(
    server: Any, problem: Any
) -> None:
    order = _order("BIG")
    order["note"] = "x" * ONE_MIB
    body = json.dumps(order).encode()
    before = server.ledger_state()
    problem(_deliver(server, body), 413, "payload-too-large")
    assert server.ledger_state() == before


HOSTILE_BODIES = {
    "nested 10,000 deep": b'{"id": 1, "line_items": ' + b"[" * 10_000 + b"]" * 10_000 + b"}",
    "nested objects 10,000 deep": b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
    "a 5,000-digit id": b'{"id": ' + b"9" * 5000 + b', "line_items": []}',
    "an infinite total": b'{"id": 7, "total_price": 1e999, "line_items": []}',
    "not JSON": b"\xff\xfe<xml>",
    "a JSON string": b'"orders"',
    "null": b"null",
}


@pytest.mark.parametrize("body", HOSTILE_BODIES.values(), ids=HOSTILE_BODIES.keys())
def test_hostile_json_is_answered_quickly_and_kept_never_crashing(
    body: bytes, server: Any, admin: httpx.Client
) -> None:
    started = time.monotonic()
    response = _deliver(server, body)
    elapsed = time.monotonic() - started

    assert elapsed < 2.0, elapsed
    assert response.status_code in (200, 400, 413), (response.status_code, response.text[:300])
    if response.status_code == 200:
        answer = response.json()
        assert answer["status"] == "kept-as-exception", answer
        kept = admin.get(f"/v1/exceptions/{answer['exception_id']}")
        assert kept.status_code == 200, kept.text[:300]
    assert httpx.get(f"{server.base_url}/health").status_code == 200
