"""Exceptions: inputs from the channels that could not be applied, listed with their business
context and raw message, and retried after the fix, over HTTP and with the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import psycopg
import pytest

from adapters import exceptions as store

Deliver = Callable[..., httpx.Response]
Fixture = Callable[[str], bytes]
NewId = Callable[[str], str]
Problem = Callable[[httpx.Response, int, str], dict[str, Any]]
ClientFor = Callable[..., httpx.Client]

STOCKLEDGER = Path(sys.executable).parent / "stockledger"
POS_SUBJECT = "stockledger.inbound.pos"


def shopify_id() -> int:
    return uuid4().int % 10**12 + 10**11


def register(admin: httpx.Client, code: str, kind: str, channels: list[str]) -> None:
    response = admin.put(
        f"/v1/locations/{code}",
        json={"name": code, "kind": kind, "channels": channels, "priority": 100},
    )
    assert response.status_code == 200, response.text


def receive(admin: httpx.Client, sku: str, location: str, quantity: int) -> int:
    response = admin.post(
        "/v1/stock/receipts", json={"sku": sku, "location": location, "quantity": quantity}
    )
    assert response.status_code == 201, response.text
    position: int = response.json()["position"]
    return position


def order_with(shopify_fixture: Fixture, skus: dict[str, str]) -> dict[str, Any]:
    order: dict[str, Any] = json.loads(shopify_fixture("order.json"))
    order["id"] = shopify_id()
    for item in order["line_items"]:
        item["sku"] = skus[item["sku"]]
    return order


def kept_id(response: httpx.Response, kind: str) -> int:
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "kept-as-exception", body
    assert body["kind"] == kind, body
    exception_id: int = body["exception_id"]
    return exception_id


@pytest.fixture
def unknown_sku_order(
    admin: httpx.Client,
    new_id: NewId,
    shopify_webhook: Deliver,
    shopify_fixture: Fixture,
) -> tuple[dict[str, Any], str, str, int]:
    """An order whose green SKU the ledger has never received (the others are in stock):
    (the order, the missing SKU, the warehouse, the exception id)."""
    warehouse = new_id("EXC-WH")
    register(admin, warehouse, "warehouse", ["shopify"])
    skus = {sku: new_id(sku) for sku in ("IPOD2008GREEN", "IPOD2008RED", "IPOD2008BLACK")}
    for original, sku in skus.items():
        if original != "IPOD2008GREEN":
            receive(admin, sku, warehouse, 5)
    order = order_with(shopify_fixture, skus)
    exception_id = kept_id(shopify_webhook("orders/create", order), "unknown-sku")
    return order, skus["IPOD2008GREEN"], warehouse, exception_id


# --- listing ---------------------------------------------------------------------------------
def test_an_unknown_sku_is_kept_with_its_business_context(
    admin: httpx.Client, unknown_sku_order: tuple[dict[str, Any], str, str, int]
) -> None:
    order, missing, _, exception_id = unknown_sku_order
    listed = admin.get("/v1/exceptions", params={"channel": "shopify", "limit": 1000}).json()
    (record,) = [item for item in listed["exceptions"] if item["id"] == exception_id]
    assert record == admin.get(f"/v1/exceptions/{exception_id}").json()
    assert record["channel"] == "shopify"
    assert record["source"] == "orders/create"
    assert record["kind"] == "unknown-sku"
    assert record["status"] == "open"
    assert record["attempts"] == 1
    assert record["external_ids"] == {"order_id": str(order["id"])}
    assert missing in record["reason"]
    assert record["details"]["skus"] == [missing]
    assert json.loads(record["message"]) == order
    assert record["message_base64"] is None
    assert record["created_at"] and record["updated_at"]
    # Nothing of the order was recorded.
    lookup = admin.get("/v1/orders", params={"channel": "shopify", "external_id": str(order["id"])})
    assert lookup.json()["orders"] == []


def test_exceptions_are_paged_and_filtered(
    admin: httpx.Client, shopify_webhook: Deliver, client_for: ClientFor, problem: Problem
) -> None:
    ids = [
        kept_id(shopify_webhook("orders/create", b"not json " + str(n).encode()), "malformed")
        for n in range(3)
    ]
    first = admin.get("/v1/exceptions", params={"after_id": ids[0] - 1, "limit": 2}).json()
    assert [item["id"] for item in first["exceptions"]] == ids[:2]
    assert first["next_after_id"] == ids[1]
    second = admin.get(
        "/v1/exceptions", params={"after_id": first["next_after_id"], "limit": 2}
    ).json()
    assert second["exceptions"][0]["id"] == ids[2]
    for status in ("open", "resolved"):
        page = admin.get("/v1/exceptions", params={"status": status, "limit": 1000}).json()
        assert {item["status"] for item in page["exceptions"]} <= {status}
    everything = admin.get("/v1/exceptions", params={"status": "all", "limit": 1000}).json()
    assert set(ids) <= {item["id"] for item in everything["exceptions"]}
    pos = admin.get("/v1/exceptions", params={"channel": "pos", "status": "all"}).json()
    assert {item["channel"] for item in pos["exceptions"]} <= {"pos"}
    shopify = admin.get(
        "/v1/exceptions", params={"channel": "shopify", "after_id": ids[0] - 1}
    ).json()
    assert [item["id"] for item in shopify["exceptions"]][:3] == ids
    # A reader may list; nobody without a key may.
    assert client_for("reader").get("/v1/exceptions").status_code == 200
    problem(client_for(None).get("/v1/exceptions"), 401, "unauthorized")
    problem(client_for("till").get("/v1/exceptions"), 403, "forbidden")
    problem(admin.get("/v1/exceptions", params={"status": "closed"}), 422, "validation")
    problem(admin.get("/v1/exceptions/999999999"), 404, "not-found")
    problem(admin.post("/v1/exceptions/999999999/retry"), 404, "not-found")


# --- retrying over HTTP ----------------------------------------------------------------------
def test_an_unknown_sku_fixed_by_receiving_it_then_retried(
    admin: httpx.Client,
    shopify_webhook: Deliver,
    shopify_fixture: Fixture,
    unknown_sku_order: tuple[dict[str, Any], str, str, int],
    problem: Problem,
) -> None:
    order, missing, warehouse, exception_id = unknown_sku_order
    # Its fulfillment arrives meanwhile: it waits for the order.
    fulfillment: dict[str, Any] = json.loads(shopify_fixture("fulfillment_webhook.json"))
    fulfillment.update(order_id=order["id"], id=shopify_id())
    waiting = kept_id(shopify_webhook("fulfillments/create", fulfillment), "order-not-yet-known")

    # Retried before the fix: still not applicable, the attempt counted.
    still = problem(admin.post(f"/v1/exceptions/{exception_id}/retry"), 409, "not-applicable")
    assert missing in still["detail"]
    assert still["kind"] == "unknown-sku"
    assert still["attempts"] == 2
    assert admin.get(f"/v1/exceptions/{exception_id}").json()["status"] == "open"

    # The fix: the SKU is received. The retry applies the order, then what waited for it.
    receive(admin, missing, warehouse, 3)
    retried = admin.post(f"/v1/exceptions/{exception_id}/retry")
    assert retried.status_code == 200, retried.text
    outcome = retried.json()
    assert outcome["status"] == "resolved"
    assert outcome["exception"]["status"] == "resolved"
    assert outcome["exception"]["attempts"] == 2
    assert outcome["external_order_id"] == str(order["id"])
    assert outcome["resolved_exceptions"] == [waiting]
    assert admin.get(f"/v1/exceptions/{waiting}").json()["status"] == "resolved"
    events = admin.get(f"/v1/orders/{outcome['order_id']}/history").json()["events"]
    assert [event["type"] for event in events] == [
        "Placed",
        "LinesReserved",
        "PaymentAuthorized",
        "Fulfilled",
    ]
    last = events[-1]["position"]
    found = admin.get(f"/v1/orders/{outcome['order_id']}", params={"min_position": last}).json()
    assert found["status"] == "partially_fulfilled"
    green = admin.get(f"/v1/availability/{missing}", params={"min_position": last}).json()
    (row,) = green["locations"]
    assert (row["location"], row["available"], row["on_hand"]) == (warehouse, 2, 2)

    # Retrying a resolved exception is refused; Shopify redelivering the order changes nothing.
    problem(admin.post(f"/v1/exceptions/{exception_id}/retry"), 409, "invalid-state")
    record = admin.get(f"/v1/exceptions/{exception_id}").json()
    again = shopify_webhook(
        "orders/create", order, webhook_id=record["details"]["webhook_id"]
    ).json()
    assert again["status"] == "applied"
    assert len(admin.get(f"/v1/orders/{outcome['order_id']}/history").json()["events"]) == 4


def _record_pos_exception(database_url: str, body: dict[str, Any], reason: str) -> int:
    """As the inbound NATS consumer keeps a till message it could not apply."""
    raw = json.dumps(body).encode()
    with psycopg.connect(database_url, autocommit=True) as connection:
        record = store.record(
            connection,
            channel="pos",
            source=POS_SUBJECT,
            reason=reason,
            payload=raw,
            external_ids={"transaction_id": body["transaction_id"], "location": body["location"]},
            details={"deliveries": 1},
            key=f"pos-message:{uuid4().hex}",
        )
    return record.id


def test_a_pos_exception_is_retried_through_the_pos_path(
    admin: httpx.Client,
    new_id: NewId,
    served_database_url: str,
    client_for: ClientFor,
    problem: Problem,
) -> None:
    store_code = new_id("POS-NEW")
    sku = new_id("SKU")
    body = {
        "transaction_id": new_id("T"),
        "location": store_code,
        "occurred_at": datetime.now(UTC).isoformat(),
        "lines": [{"sku": sku, "quantity": 2}, {"sku": sku + "-R", "quantity": -1}],
    }
    exception_id = _record_pos_exception(
        served_database_url, body, f"not-found: location {store_code} is not registered"
    )
    # Retrying needs the scope that writing it would.
    problem(client_for("reader").post(f"/v1/exceptions/{exception_id}/retry"), 403, "forbidden")
    problem(client_for("order-sync").post(f"/v1/exceptions/{exception_id}/retry"), 403, "forbidden")
    problem(
        client_for("store-a-till").post(f"/v1/exceptions/{exception_id}/retry"), 403, "forbidden"
    )
    till = client_for("till")
    still = problem(till.post(f"/v1/exceptions/{exception_id}/retry"), 409, "not-applicable")
    assert still["kind"] == "not-found"
    assert still["attempts"] == 2
    record = admin.get(f"/v1/exceptions/{exception_id}").json()
    assert record["details"]["deliveries"] == 1  # the consumer's context is kept

    register(admin, store_code, "store", ["pos"])
    retried = till.post(f"/v1/exceptions/{exception_id}/retry")
    assert retried.status_code == 200, retried.text
    outcome = retried.json()
    assert outcome["exception"]["status"] == "resolved"
    assert outcome["result"]["transaction_id"] == body["transaction_id"]
    position = outcome["position"]
    sold = admin.get(f"/v1/availability/{sku}", params={"min_position": position}).json()
    assert sold["locations"][0]["available"] == -2
    back = admin.get(f"/v1/availability/{sku}-R", params={"min_position": position}).json()
    assert back["locations"][0]["returned"] == 1
    # The transaction id keeps it once: posting it again records nothing new.
    again = till.post("/v1/pos/transactions", json=body)
    assert again.status_code in (200, 201), again.text
    assert again.json()["position"] == position


def test_a_shopify_exception_needs_orders_write_to_retry(
    client_for: ClientFor,
    unknown_sku_order: tuple[dict[str, Any], str, str, int],
    problem: Problem,
) -> None:
    _, _, _, exception_id = unknown_sku_order
    problem(client_for("till").post(f"/v1/exceptions/{exception_id}/retry"), 403, "forbidden")
    problem(
        client_for("store-a-orders").post(f"/v1/exceptions/{exception_id}/retry"),
        403,
        "forbidden",
    )
    found = problem(
        client_for("order-sync").post(f"/v1/exceptions/{exception_id}/retry"),
        409,
        "not-applicable",
    )
    assert found["exception_id"] == exception_id


# --- the CLI ---------------------------------------------------------------------------------
def _cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKLEDGER_")}
    env.update(
        COLUMNS="250",
        PYTHONIOENCODING="utf-8",
        NO_COLOR="1",
        TERM="dumb",
        STOCKLEDGER_DATABASE_URL=database_url,
    )
    return subprocess.run(
        [str(STOCKLEDGER), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_cli_lists_and_retries(
    admin: httpx.Client,
    served_database_url: str,
    unknown_sku_order: tuple[dict[str, Any], str, str, int],
) -> None:
    order, missing, warehouse, exception_id = unknown_sku_order
    listed = _cli(
        served_database_url, "exceptions", "list", "--channel", "shopify", "--limit", "1000"
    )
    assert listed.returncode == 0, listed.stderr
    (line,) = [row for row in listed.stdout.splitlines() if f" {exception_id} " in f" {row} "]
    assert "orders/create" in line
    assert f"order_id={order['id']}" in line
    assert "open" in line

    failed = _cli(served_database_url, "exceptions", "retry", str(exception_id))
    assert failed.returncode == 1
    assert failed.stdout == ""
    (message,) = failed.stderr.strip().splitlines()
    assert message.startswith(f"error: exception {exception_id} still cannot be applied")
    assert missing in message

    receive(admin, missing, warehouse, 1)
    retried = _cli(served_database_url, "exceptions", "retry", str(exception_id))
    assert retried.returncode == 0, retried.stderr
    (message,) = retried.stdout.strip().splitlines()
    assert message.startswith(f"exception {exception_id} resolved: shopify orders/create applied")
    assert str(order["id"]) in message

    again = _cli(served_database_url, "exceptions", "retry", str(exception_id))
    assert again.returncode == 1
    assert again.stderr.strip() == f"error: exception {exception_id} is already resolved"
    resolved = _cli(
        served_database_url,
        "exceptions",
        "list",
        "--status",
        "resolved",
        "--json",
        "--limit",
        "1000",
    )
    assert resolved.returncode == 0, resolved.stderr
    records = [json.loads(row) for row in resolved.stdout.splitlines()]
    (mine,) = [record for record in records if record["id"] == exception_id]
    assert mine["status"] == "resolved"
    assert json.loads(mine["message"]) == order

    missing_one = _cli(served_database_url, "exceptions", "retry", "999999999")
    assert missing_one.returncode == 1
    assert missing_one.stderr.strip() == "error: exception 999999999 is not known"
    bad = _cli(served_database_url, "exceptions", "list", "--status", "closed")
    assert bad.returncode == 1
    assert "--status" in bad.stderr
