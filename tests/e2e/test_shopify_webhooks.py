"""POST /v1/webhooks/shopify over real HTTP, with Shopify's own payloads signed as Shopify signs
them: the fixtures' story end to end, the signature and header checks, at-least-once and
out-of-order delivery, and what cannot be applied kept as an exception."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from uuid import uuid4

import httpx
import pytest

from api.app import create_app
from api.settings import Settings

Deliver = Callable[..., httpx.Response]
Fixture = Callable[[str], bytes]
NewId = Callable[[str], str]
Problem = Callable[[httpx.Response, int, str], dict[str, Any]]

ORDER_ID = "450789469"
GREEN, RED, BLACK = "IPOD2008GREEN", "IPOD2008RED", "IPOD2008BLACK"
GREEN_LINE, RED_LINE, BLACK_LINE = "466157049", "518995019", "703073504"


def shopify_id() -> int:
    """A fresh Shopify-like numeric id."""
    return uuid4().int % 10**12 + 10**11


def register(admin: httpx.Client, code: str, **external_ids: str) -> None:
    response = admin.put(
        f"/v1/locations/{code}",
        json={
            "name": code,
            "kind": "warehouse",
            "channels": ["shopify"],
            "priority": 100,
            "external_ids": external_ids,
        },
    )
    assert response.status_code == 200, response.text


def receive(admin: httpx.Client, sku: str, location: str, quantity: int) -> int:
    response = admin.post(
        "/v1/stock/receipts", json={"sku": sku, "location": location, "quantity": quantity}
    )
    assert response.status_code == 201, response.text
    position: int = response.json()["position"]
    return position


def buckets(admin: httpx.Client, sku: str, location: str, position: int) -> dict[str, Any]:
    response = admin.get(f"/v1/availability/{sku}", params={"min_position": position})
    assert response.status_code == 200, response.text
    (found,) = [row for row in response.json()["locations"] if row["location"] == location]
    return dict(found)


def order_of(admin: httpx.Client, order_id: str, position: int) -> dict[str, Any]:
    response = admin.get(f"/v1/orders/{order_id}", params={"min_position": position})
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


def event_types(admin: httpx.Client, order_id: str) -> list[str]:
    response = admin.get(f"/v1/orders/{order_id}/history")
    assert response.status_code == 200, response.text
    return [event["type"] for event in response.json()["events"]]


def applied(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert body["status"] == "applied", body
    return body


def kept(response: httpx.Response, kind: str) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert body["status"] == "kept-as-exception", body
    assert body["kind"] == kind, body
    assert isinstance(body["exception_id"], int)
    return body


def an_order(
    shopify_fixture: Fixture, skus: dict[str, str], *, order_id: int | None = None
) -> dict[str, Any]:
    """order.json under a fresh order id, its SKUs renamed (so tests do not share stock)."""
    order: dict[str, Any] = json.loads(shopify_fixture("order.json"))
    order["id"] = order_id or shopify_id()
    for item in order["line_items"]:
        item["sku"] = skus[item["sku"]]
    return order


def a_fulfillment(shopify_fixture: Fixture, order_id: int, **changes: Any) -> dict[str, Any]:
    fulfillment: dict[str, Any] = json.loads(shopify_fixture("fulfillment_webhook.json"))
    fulfillment.update(order_id=order_id, id=shopify_id(), **changes)
    return fulfillment


def a_refund(shopify_fixture: Fixture, order_id: int) -> dict[str, Any]:
    refund: dict[str, Any] = json.loads(shopify_fixture("refund.json"))
    refund.update(order_id=order_id, id=shopify_id())
    return refund


@pytest.fixture
def skus(new_id: NewId) -> dict[str, str]:
    return {sku: new_id(sku) for sku in (GREEN, RED, BLACK)}


@pytest.fixture
def stocked_warehouse(
    admin: httpx.Client, new_id: NewId, skus: dict[str, str]
) -> Callable[[int], tuple[str, int]]:
    """Factory: a fresh Shopify warehouse holding ``quantity`` of each renamed SKU."""

    def make(quantity: int) -> tuple[str, int]:
        code = new_id("SHOP-WH")
        register(admin, code)
        position = 0
        for sku in skus.values():
            position = receive(admin, sku, code, quantity)
        return code, position

    return make


# --- the fixtures' story ---------------------------------------------------------------------
def test_the_fixtures_end_to_end(
    admin: httpx.Client, new_id: NewId, shopify_webhook: Deliver, shopify_fixture: Fixture
) -> None:
    """order.json places order 450789469 and records its authorised payment;
    fulfillment_webhook.json ships its green line; refund.json refunds 209.00 USD and restocks
    black (unshipped: its reservation is released) and green (shipped: a restocked return)."""
    warehouse = new_id("IPOD-WH")
    register(admin, warehouse, shopify="905684977")
    for sku in (GREEN, RED, BLACK):
        position = receive(admin, sku, warehouse, 5)

    placed = applied(shopify_webhook("orders/create", shopify_fixture("order.json")))
    assert placed["external_order_id"] == ORDER_ID
    order_id = placed["order_id"]
    assert placed["position"] > position
    order = order_of(admin, order_id, placed["position"])
    assert order["channel"] == "shopify"
    assert order["external_id"] == ORDER_ID
    assert order["status"] == "committed"
    assert order["currency"] == "USD"
    assert order["total"] == "409.94"
    by_line = {line["line_id"]: line for line in order["lines"]}
    assert {line: by_line[line]["sku"] for line in by_line} == {
        GREEN_LINE: GREEN,
        RED_LINE: RED,
        BLACK_LINE: BLACK,
    }
    for line in by_line.values():
        assert line["quantity"] == 1
        assert line["allocations"] == [{"location": warehouse, "quantity": 1}]
    for sku in (GREEN, RED, BLACK):
        row = buckets(admin, sku, warehouse, placed["position"])
        assert (row["available"], row["reserved"], row["committed"]) == (4, 0, 1)
    lookup = admin.get("/v1/orders", params={"channel": "shopify", "external_id": ORDER_ID})
    assert [found["order_id"] for found in lookup.json()["orders"]] == [order_id]

    shipped = applied(
        shopify_webhook("fulfillments/create", shopify_fixture("fulfillment_webhook.json"))
    )
    assert shipped["order_id"] == order_id
    order = order_of(admin, order_id, shipped["position"])
    assert order["status"] == "partially_fulfilled"
    assert {line["line_id"]: line["shipped"] for line in order["lines"]} == {
        GREEN_LINE: 1,
        RED_LINE: 0,
        BLACK_LINE: 0,
    }
    green = buckets(admin, GREEN, warehouse, shipped["position"])
    assert (green["available"], green["committed"], green["on_hand"]) == (4, 0, 4)

    refunded = applied(shopify_webhook("refunds/create", shopify_fixture("refund.json")))
    order = order_of(admin, order_id, refunded["position"])
    assert order["status"] == "partially_refunded"
    assert order["refunded"] == "209.00"
    lines = {line["line_id"]: line for line in order["lines"]}
    assert lines[GREEN_LINE]["returned"] == 1
    assert lines[BLACK_LINE]["cancelled"] == 1
    assert lines[RED_LINE]["cancelled"] == 0
    green = buckets(admin, GREEN, warehouse, refunded["position"])
    assert (green["available"], green["returned"], green["on_hand"]) == (5, 0, 5)
    black = buckets(admin, BLACK, warehouse, refunded["position"])
    assert (black["available"], black["reserved"], black["committed"]) == (5, 0, 0)
    red = buckets(admin, RED, warehouse, refunded["position"])
    assert (red["available"], red["committed"]) == (4, 1)
    channel = admin.get(
        "/v1/availability",
        params={
            "channel": "shopify",
            "sku": [GREEN, RED, BLACK],
            "min_position": refunded["position"],
        },
    ).json()
    assert {item["sku"]: item["available_to_sell"] for item in channel["items"]} == {
        GREEN: 5,
        RED: 4,
        BLACK: 5,
    }

    types = event_types(admin, order_id)
    for expected in (
        "Placed",
        "LinesReserved",
        "PaymentAuthorized",
        "Fulfilled",
        "Refunded",
        "ReturnReceived",
        "LinesCancelled",
    ):
        assert types.count(expected) == 1, types


def test_an_order_created_unpaid_is_reserved_then_paid(
    admin: httpx.Client,
    shopify_webhook: Deliver,
    shopify_fixture: Fixture,
    skus: dict[str, str],
    stocked_warehouse: Callable[[int], tuple[str, int]],
) -> None:
    warehouse, _ = stocked_warehouse(3)
    order = an_order(shopify_fixture, skus)
    order["financial_status"] = "pending"
    placed = applied(shopify_webhook("orders/create", order))
    assert order_of(admin, placed["order_id"], placed["position"])["status"] == "reserved"
    paid = applied(shopify_webhook("orders/paid", {**order, "financial_status": "paid"}))
    assert order_of(admin, placed["order_id"], paid["position"])["status"] == "committed"
    cancelled = applied(
        shopify_webhook("orders/cancelled", {**order, "cancelled_at": "2026-11-27T10:00:00Z"})
    )
    assert order_of(admin, placed["order_id"], cancelled["position"])["status"] == "cancelled"
    row = buckets(admin, skus[GREEN], warehouse, cancelled["position"])
    assert (row["available"], row["reserved"], row["committed"]) == (3, 0, 0)


def test_a_mapped_shopify_location_is_used(
    admin: httpx.Client,
    new_id: NewId,
    shopify_webhook: Deliver,
    shopify_fixture: Fixture,
    skus: dict[str, str],
    stocked_warehouse: Callable[[int], tuple[str, int]],
) -> None:
    """An order's and a fulfillment's location_id are mapped through external_ids.shopify."""
    stocked_warehouse(5)  # elsewhere: not where this order is placed
    store = new_id("SHOP-STORE")
    shopify_location = str(shopify_id())
    register(admin, store, shopify=shopify_location)
    for sku in skus.values():
        receive(admin, sku, store, 2)
    order = an_order(shopify_fixture, skus)
    order["location_id"] = int(shopify_location)
    placed = applied(shopify_webhook("orders/create", order))
    found = order_of(admin, placed["order_id"], placed["position"])
    for line in found["lines"]:
        assert line["allocations"] == [{"location": store, "quantity": 1}]
    shipped = applied(
        shopify_webhook(
            "fulfillments/create",
            a_fulfillment(shopify_fixture, order["id"], location_id=int(shopify_location)),
        )
    )
    row = buckets(admin, skus[GREEN], store, shipped["position"])
    assert (row["available"], row["committed"], row["on_hand"]) == (1, 0, 1)


# --- the signature and the headers -----------------------------------------------------------
def all_exceptions(admin: httpx.Client) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    after = 0
    while True:
        page = admin.get(
            "/v1/exceptions", params={"status": "all", "after_id": after, "limit": 1000}
        ).json()
        found.extend(page["exceptions"])
        if page["next_after_id"] is None:
            return found
        after = page["next_after_id"]


def test_a_wrong_or_missing_signature_is_refused_and_nothing_recorded(
    admin: httpx.Client,
    shopify_webhook: Deliver,
    shopify_fixture: Fixture,
    shopify_secret: str,
    signature_for: Callable[[str, bytes], str],
    skus: dict[str, str],
    stocked_warehouse: Callable[[int], tuple[str, int]],
    problem: Problem,
) -> None:
    stocked_warehouse(5)
    order = an_order(shopify_fixture, skus)
    body = json.dumps(order).encode()
    tampered = body.replace(b'"quantity": 1', b'"quantity": 3')
    assert tampered != body
    before = len(all_exceptions(admin))
    attempts = [
        shopify_webhook("orders/create", body, signature=signature_for("another-secret", body)),
        shopify_webhook("orders/create", body, headers={"X-Shopify-Hmac-Sha256": None}),
        shopify_webhook("orders/create", body, headers={"X-Shopify-Hmac-Sha256": ""}),
        shopify_webhook("orders/create", body, signature="bm90IHRoZSBzaWduYXR1cmU="),
        # Signed with the right secret, then changed on the way: the bytes no longer match.
        shopify_webhook("orders/create", tampered, signature=signature_for(shopify_secret, body)),
    ]
    for response in attempts:
        found = problem(response, 401, "unauthorized")
        assert "X-Shopify-Hmac-Sha256" in found["detail"]
    lookup = admin.get("/v1/orders", params={"channel": "shopify", "external_id": str(order["id"])})
    assert lookup.json()["orders"] == []
    assert len(all_exceptions(admin)) == before
    # The same body, correctly signed, is then applied.
    applied(shopify_webhook("orders/create", body))


def test_no_api_key_is_needed_but_an_api_key_is_no_signature(
    server: Any, shopify_fixture: Fixture, problem: Problem
) -> None:
    with_key = server.client("admin")
    response = with_key.post(
        "/v1/webhooks/shopify",
        content=shopify_fixture("order.json"),
        headers={"X-Shopify-Topic": "orders/create", "X-Shopify-Webhook-Id": str(uuid4())},
    )
    problem(response, 401, "unauthorized")


def test_a_signed_delivery_without_topic_or_webhook_id_is_a_bad_request(
    admin: httpx.Client, shopify_webhook: Deliver, shopify_fixture: Fixture, problem: Problem
) -> None:
    body = shopify_fixture("order.json")
    before = len(all_exceptions(admin))
    no_topic = shopify_webhook("orders/create", body, headers={"X-Shopify-Topic": None})
    assert "X-Shopify-Topic" in problem(no_topic, 400, "bad-request")["detail"]
    no_id = shopify_webhook("orders/create", body, headers={"X-Shopify-Webhook-Id": None})
    assert "X-Shopify-Webhook-Id" in problem(no_id, 400, "bad-request")["detail"]
    assert len(all_exceptions(admin)) == before


def test_without_a_configured_secret_deliveries_are_unavailable(
    shopify_fixture: Fixture, problem: Problem
) -> None:
    """503 before the body is even read: an app without the secret (and, here, without a
    database: nothing is touched) answers every delivery so."""
    app = create_app(Settings(database_url=None, shopify_webhook_secret=None))

    async def deliver() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            return await client.post(
                "/v1/webhooks/shopify",
                content=shopify_fixture("order.json"),
                headers={
                    "X-Shopify-Topic": "orders/create",
                    "X-Shopify-Webhook-Id": str(uuid4()),
                    "X-Shopify-Hmac-Sha256": "anything",
                },
            )

    found = problem(asyncio.run(deliver()), 503, "unavailable")
    assert found["detail"] == "webhook secret not configured"


def test_a_body_over_the_limit_is_refused_before_anything(
    admin: httpx.Client, shopify_webhook: Deliver, problem: Problem
) -> None:
    before = len(all_exceptions(admin))
    body = json.dumps({"id": shopify_id(), "note": "x" * (1024 * 1024)}).encode()
    problem(shopify_webhook("orders/create", body), 413, "payload-too-large")
    assert len(all_exceptions(admin)) == before


def test_a_body_of_broken_json_is_kept_as_an_exception(
    admin: httpx.Client, shopify_webhook: Deliver
) -> None:
    body = b'{"id": 12345, "line_items": [ {"sku": "X"'  # cut short
    webhook_id = str(uuid4())
    kept_body = kept(shopify_webhook("orders/create", body, webhook_id=webhook_id), "malformed")
    record = admin.get(f"/v1/exceptions/{kept_body['exception_id']}").json()
    assert record["channel"] == "shopify"
    assert record["source"] == "orders/create"
    assert record["status"] == "open"
    assert record["message"] == body.decode()
    assert record["details"]["webhook_id"] == webhook_id
    assert record["details"]["shop_domain"] == "e2e-shop.myshopify.com"
    assert "not JSON" in record["reason"]
    # Not UTF-8 at all: kept too, the exact bytes in base64.
    binary = b"\xff\xfe\x00garbage"
    other = kept(shopify_webhook("orders/create", binary), "malformed")
    record = admin.get(f"/v1/exceptions/{other['exception_id']}").json()
    assert record["message_base64"] == "//4AZ2FyYmFnZQ=="


def test_an_unhandled_topic_is_kept_as_an_exception(
    admin: httpx.Client, shopify_webhook: Deliver, shopify_fixture: Fixture
) -> None:
    body = kept(
        shopify_webhook("inventory_levels/update", shopify_fixture("inventory_level.json")),
        "unsupported-topic",
    )
    assert "inventory_levels/update" in body["reason"]


# --- at least once, in any order -------------------------------------------------------------
def deliver_at_once(
    deliver: Deliver, copies: int, *args: Any, **kwargs: Any
) -> list[httpx.Response]:
    with ThreadPoolExecutor(max_workers=copies) as pool:
        futures = [pool.submit(deliver, *args, **kwargs) for _ in range(copies)]
        return [future.result() for future in futures]


def test_the_same_webhook_delivered_ten_times_at_once_applies_once(
    admin: httpx.Client,
    shopify_webhook: Deliver,
    shopify_fixture: Fixture,
    skus: dict[str, str],
    stocked_warehouse: Callable[[int], tuple[str, int]],
) -> None:
    warehouse, _ = stocked_warehouse(5)
    order = an_order(shopify_fixture, skus)
    webhook_id = str(uuid4())
    responses = deliver_at_once(shopify_webhook, 10, "orders/create", order, webhook_id=webhook_id)
    bodies = [applied(response) for response in responses]
    assert len({body["order_id"] for body in bodies}) == 1
    assert len({body["position"] for body in bodies}) == 1
    assert {response.headers["X-Ledger-Position"] for response in responses} == {
        str(bodies[0]["position"])
    }
    order_id = bodies[0]["order_id"]
    types = event_types(admin, order_id)
    assert types == ["Placed", "LinesReserved", "PaymentAuthorized"], types
    for sku in skus.values():
        row = buckets(admin, sku, warehouse, bodies[0]["position"])
        assert (row["available"], row["committed"]) == (4, 1)
        history = admin.get(f"/v1/stock/{sku}/{warehouse}/history").json()["events"]
        assert [event["type"] for event in history].count("Reserved") == 1

    # The fulfillment too, ten times at once: shipped once.
    fulfillment = a_fulfillment(shopify_fixture, order["id"])
    shipped = [
        applied(response)
        for response in deliver_at_once(
            shopify_webhook, 10, "fulfillments/create", fulfillment, webhook_id=str(uuid4())
        )
    ]
    assert len({body["position"] for body in shipped}) == 1
    assert event_types(admin, order_id).count("Fulfilled") == 1
    row = buckets(admin, skus[GREEN], warehouse, shipped[0]["position"])
    assert (row["available"], row["committed"], row["on_hand"]) == (4, 0, 4)


def test_a_failing_webhook_delivered_ten_times_at_once_is_one_exception(
    admin: httpx.Client, new_id: NewId, shopify_webhook: Deliver, shopify_fixture: Fixture
) -> None:
    order = an_order(shopify_fixture, {sku: new_id("NEVER") for sku in (GREEN, RED, BLACK)})
    webhook_id = str(uuid4())
    bodies = [
        kept(response, "unknown-sku")
        for response in deliver_at_once(
            shopify_webhook, 10, "orders/create", order, webhook_id=webhook_id
        )
    ]
    assert len({body["exception_id"] for body in bodies}) == 1
    mine = [
        record
        for record in all_exceptions(admin)
        if record["details"].get("webhook_id") == webhook_id
    ]
    assert len(mine) == 1
    assert mine[0]["attempts"] == 10
    assert mine[0]["external_ids"] == {"order_id": str(order["id"])}


def test_a_fulfillment_before_its_order_is_applied_once_the_order_exists(
    admin: httpx.Client,
    shopify_webhook: Deliver,
    shopify_fixture: Fixture,
    skus: dict[str, str],
    stocked_warehouse: Callable[[int], tuple[str, int]],
) -> None:
    warehouse, _ = stocked_warehouse(5)
    order = an_order(shopify_fixture, skus)
    fulfillment = a_fulfillment(shopify_fixture, order["id"])
    refund = a_refund(shopify_fixture, order["id"])

    early = kept(shopify_webhook("fulfillments/create", fulfillment), "order-not-yet-known")
    assert early["external_order_id"] == str(order["id"])
    record = admin.get(f"/v1/exceptions/{early['exception_id']}").json()
    assert record["external_ids"] == {
        "order_id": str(order["id"]),
        "fulfillment_id": str(fulfillment["id"]),
    }
    assert record["details"]["awaiting_order"] == str(order["id"])
    later = kept(shopify_webhook("refunds/create", refund), "order-not-yet-known")

    placed = applied(shopify_webhook("orders/create", order))
    assert placed["resolved_exceptions"] == [early["exception_id"], later["exception_id"]]
    for exception_id in placed["resolved_exceptions"]:
        assert admin.get(f"/v1/exceptions/{exception_id}").json()["status"] == "resolved"
    head = admin.get("/v1/events", params={"after": placed["position"], "limit": 1000}).json()
    last = max([placed["position"], *[event["position"] for event in head["events"]]])
    found = order_of(admin, placed["order_id"], last)
    assert found["status"] == "partially_refunded"
    lines = {line["line_id"]: line for line in found["lines"]}
    assert lines[GREEN_LINE]["shipped"] == 1
    assert lines[GREEN_LINE]["returned"] == 1
    assert lines[BLACK_LINE]["cancelled"] == 1
    green = buckets(admin, skus[GREEN], warehouse, last)
    assert (green["available"], green["on_hand"]) == (5, 5)
    # Shopify retrying the fulfillment now changes nothing.
    again = applied(
        shopify_webhook(
            "fulfillments/create", fulfillment, webhook_id=record["details"]["webhook_id"]
        )
    )
    assert event_types(admin, again["order_id"]).count("Fulfilled") == 1


def test_an_unmapped_location_is_kept_then_retried_after_mapping(
    admin: httpx.Client,
    new_id: NewId,
    shopify_webhook: Deliver,
    shopify_fixture: Fixture,
    skus: dict[str, str],
    stocked_warehouse: Callable[[int], tuple[str, int]],
) -> None:
    warehouse, _ = stocked_warehouse(5)
    order = an_order(shopify_fixture, skus)
    placed = applied(shopify_webhook("orders/create", order))
    shopify_location = shopify_id()
    fulfillment = a_fulfillment(shopify_fixture, order["id"], location_id=shopify_location)
    body = kept(shopify_webhook("fulfillments/create", fulfillment), "unmapped-location")
    record = admin.get(f"/v1/exceptions/{body['exception_id']}").json()
    assert record["external_ids"]["shopify_location_id"] == str(shopify_location)
    assert "external_ids.shopify" in record["reason"]

    # The fix: the warehouse is told its Shopify id. The retry then ships from there.
    register(admin, warehouse, shopify=str(shopify_location))
    retried = admin.post(f"/v1/exceptions/{body['exception_id']}/retry")
    assert retried.status_code == 200, retried.text
    outcome = retried.json()
    assert outcome["status"] == "resolved"
    assert outcome["exception"]["status"] == "resolved"
    assert outcome["order_id"] == placed["order_id"]
    assert retried.headers["X-Ledger-Position"] == str(outcome["position"])
    found = order_of(admin, placed["order_id"], outcome["position"])
    assert found["status"] == "partially_fulfilled"


def test_a_fulfillment_racing_its_order_is_never_left_behind(
    admin: httpx.Client,
    shopify_webhook: Deliver,
    shopify_fixture: Fixture,
    skus: dict[str, str],
    stocked_warehouse: Callable[[int], tuple[str, int]],
) -> None:
    """Delivered at the same moment as its order: applied directly, or kept and then applied
    by whichever of the two finishes last."""
    stocked_warehouse(20)
    for _ in range(8):
        order = an_order(shopify_fixture, skus)
        fulfillment = a_fulfillment(shopify_fixture, order["id"])
        fulfillment_webhook = str(uuid4())
        with ThreadPoolExecutor(max_workers=2) as pool:
            shipped = pool.submit(
                shopify_webhook, "fulfillments/create", fulfillment, webhook_id=fulfillment_webhook
            )
            placed = pool.submit(shopify_webhook, "orders/create", order)
            order_id = applied(placed.result())["order_id"]
            assert shipped.result().status_code == 200
        assert event_types(admin, order_id).count("Fulfilled") == 1
        left = [
            record
            for record in all_exceptions(admin)
            if record["details"].get("webhook_id") == fulfillment_webhook
        ]
        assert [record["status"] for record in left] in ([], ["resolved"])


def test_restock_types_of_a_refund(
    admin: httpx.Client,
    shopify_webhook: Deliver,
    shopify_fixture: Fixture,
    skus: dict[str, str],
    stocked_warehouse: Callable[[int], tuple[str, int]],
) -> None:
    """``legacy_restock`` (Shopify's mark of the deprecated flag) restocks like ``restock``:
    true; ``no_restock`` refunds the money and moves no stock."""
    warehouse, _ = stocked_warehouse(5)
    order = an_order(shopify_fixture, skus)
    placed = applied(shopify_webhook("orders/create", order))
    refund = a_refund(shopify_fixture, order["id"])
    refund["restock"] = False
    black, green = refund["refund_line_items"]
    black["restock_type"] = "legacy_restock"
    green["restock_type"] = "no_restock"
    refunded = applied(shopify_webhook("refunds/create", refund))
    found = order_of(admin, placed["order_id"], refunded["position"])
    lines = {line["line_id"]: line for line in found["lines"]}
    assert lines[BLACK_LINE]["cancelled"] == 1
    assert lines[GREEN_LINE]["cancelled"] == 0
    assert found["status"] == "partially_refunded"
    assert buckets(admin, skus[BLACK], warehouse, refunded["position"])["available"] == 5
    green_row = buckets(admin, skus[GREEN], warehouse, refunded["position"])
    assert (green_row["available"], green_row["committed"]) == (4, 1)
