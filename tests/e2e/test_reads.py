"""Reads over HTTP: availability, read-your-writes, orders, history as of a moment, the event
feed, locations, discrepancies, and the refusals (401, 403, 404, 422, 504)."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote
from uuid import UUID, uuid4

import httpx
import psycopg
import pytest

Problem = Callable[..., dict[str, Any]]
NewId = Callable[[str], str]
Stocked = Callable[[str, str, int], None]

BUCKETS = (
    "on_hand",
    "available",
    "reserved",
    "committed",
    "damaged",
    "returned",
    "in_transit",
    "safety_stock",
    "available_to_sell",
)
EVENT_SHAPE = {"position", "id", "type", "aggregate", "aggregate_id", "version", "occurred_at"}


def _written(response: httpx.Response) -> int:
    """The position a successful write answered with."""
    assert response.status_code in (200, 201), response.text
    position = response.json()["position"]
    assert isinstance(position, int)
    return position


def _buckets(availability: dict[str, Any], location: str) -> dict[str, int]:
    rows = [row for row in availability["locations"] if row["location"] == location]
    assert len(rows) == 1, availability
    return {bucket: rows[0][bucket] for bucket in BUCKETS}


def _receive(admin: httpx.Client, sku: str, location: str, quantity: int) -> int:
    return _written(
        admin.post(
            "/v1/stock/receipts", json={"sku": sku, "location": location, "quantity": quantity}
        )
    )


def _safety(admin: httpx.Client, sku: str, location: str, quantity: int) -> int:
    return _written(
        admin.put(
            "/v1/stock/safety-stock", json={"sku": sku, "location": location, "quantity": quantity}
        )
    )


def _place(
    admin: httpx.Client, external_id: str, *lines: tuple[str, int, str], channel: str = "shopify"
) -> httpx.Response:
    return admin.post(
        "/v1/orders",
        json={
            "channel": channel,
            "external_id": external_id,
            "lines": [
                {"line_id": str(n), "sku": sku, "quantity": quantity, "location": location}
                for n, (sku, quantity, location) in enumerate(lines, start=1)
            ],
        },
    )


def _availability(admin: httpx.Client, sku: str, min_position: int) -> dict[str, Any]:
    response = admin.get(f"/v1/availability/{sku}", params={"min_position": min_position})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert body["position"] >= min_position
    return body


# --------------------------------------------------------------------------- availability


def test_a_skus_availability_shows_every_bucket_at_every_location(
    admin: httpx.Client, fixed: Any, new_id: NewId
) -> None:
    sku = new_id("SKU")
    _receive(admin, sku, fixed.warehouse, 10)
    _written(
        admin.post(
            "/v1/stock/damage", json={"sku": sku, "location": fixed.warehouse, "quantity": 1}
        )
    )
    _written(_place(admin, new_id("SO"), (sku, 3, fixed.warehouse)))
    paid_order = _place(admin, new_id("SO"), (sku, 1, fixed.warehouse)).json()["order_id"]
    _written(admin.post(f"/v1/orders/{paid_order}/payment"))
    _written(
        admin.post(
            "/v1/transfers",
            json={
                "transfer_id": new_id("T"),
                "from_location": fixed.warehouse,
                "to_location": fixed.store_a,
                "lines": [{"sku": sku, "quantity": 2}],
            },
        )
    )
    _written(
        admin.post(
            "/v1/pos/transactions",
            json={
                "transaction_id": new_id("POS"),
                "location": fixed.store_b,
                "occurred_at": "2025-06-01T14:05:00+02:00",
                "lines": [{"sku": sku, "quantity": -1, "disposition": "inspect"}],
            },
        )
    )
    last = _safety(admin, sku, fixed.warehouse, 2)

    body = _availability(admin, sku, last)

    assert body["sku"] == sku
    assert [row["location"] for row in body["locations"]] == sorted(
        [fixed.warehouse, fixed.store_a, fixed.store_b]
    )
    assert _buckets(body, fixed.warehouse) == {
        "on_hand": 8,  # 3 available + 3 reserved + 1 committed + 1 damaged
        "available": 3,
        "reserved": 3,
        "committed": 1,
        "damaged": 1,
        "returned": 0,
        "in_transit": 0,
        "safety_stock": 2,
        "available_to_sell": 1,
    }
    assert _buckets(body, fixed.store_a) == {
        **dict.fromkeys(BUCKETS, 0),
        "in_transit": 2,
    }
    assert _buckets(body, fixed.store_b) == {
        **dict.fromkeys(BUCKETS, 0),
        "on_hand": 1,
        "returned": 1,
    }
    assert body["channels"] == {"shopify": 1, "pos": 0}


def test_a_channels_ats_sums_only_the_locations_that_serve_it(
    admin: httpx.Client, new_location: Callable[..., str], new_id: NewId
) -> None:
    sku = new_id("SKU")
    online = new_location(channels=("shopify",))
    both = new_location(kind="store", channels=("shopify", "pos"))
    shop = new_location(kind="store", channels=("pos",))
    _receive(admin, sku, online, 5)
    _receive(admin, sku, both, 7)
    last = _receive(admin, sku, shop, 11)

    body = _availability(admin, sku, last)

    assert body["channels"] == {"shopify": 12, "pos": 18}
    assert {row["location"]: row["available_to_sell"] for row in body["locations"]} == {
        online: 5,
        both: 7,
        shop: 11,
    }


def test_safety_stock_lowers_ats_per_location_and_never_below_zero(
    admin: httpx.Client, new_location: Callable[..., str], new_id: NewId
) -> None:
    sku = new_id("SKU")
    first, second = new_location(), new_location()
    _receive(admin, sku, first, 5)
    _receive(admin, sku, second, 4)
    _safety(admin, sku, first, 2)
    last = _safety(admin, sku, second, 9)

    body = _availability(admin, sku, last)

    assert _buckets(body, first)["available_to_sell"] == 3
    assert _buckets(body, second) == {
        **dict.fromkeys(BUCKETS, 0),
        "on_hand": 4,
        "available": 4,
        "safety_stock": 9,
        "available_to_sell": 0,
    }
    # The second location's shortfall must not eat into the first one's ATS.
    assert body["channels"] == {"shopify": 3}


def test_a_sku_with_a_slash_is_read_by_availability_and_history(
    admin: httpx.Client, fixed: Any, new_id: NewId
) -> None:
    sku = f"{new_id('TEE')}/RED/M"
    last = _receive(admin, sku, fixed.warehouse, 4)

    single = _availability(admin, sku, last)
    bulk = admin.get(
        "/v1/availability", params={"channel": "shopify", "sku": [sku], "min_position": last}
    )
    history = admin.get(f"/v1/stock/{sku}/{fixed.warehouse}/history")

    assert single["sku"] == sku
    assert _buckets(single, fixed.warehouse)["available"] == 4
    assert bulk.status_code == 200, bulk.text
    assert bulk.json()["items"] == [{"sku": sku, "available_to_sell": 4}]
    assert history.status_code == 200, history.text
    assert history.json()["state"]["sku"] == sku
    assert history.json()["state"]["available"] == 4


def test_an_unknown_sku_has_no_locations_and_nothing_to_sell(
    admin: httpx.Client, new_id: NewId
) -> None:
    sku = new_id("NEVER")

    response = admin.get(f"/v1/availability/{sku}")

    assert response.status_code == 200, response.text
    assert response.json()["locations"] == []
    assert response.json()["channels"] == {}


def test_bulk_availability_keeps_the_requested_order_and_counts_unknown_skus_as_zero(
    admin: httpx.Client, fixed: Any, new_location: Callable[..., str], new_id: NewId
) -> None:
    first, second, unknown = new_id("SKU"), new_id("SKU"), new_id("NEVER")
    other = new_location()
    _receive(admin, first, fixed.warehouse, 3)
    _receive(admin, first, other, 4)
    _receive(admin, second, fixed.warehouse, 6)
    last = _receive(admin, second, fixed.store_a, 50)  # a POS store: not on shopify

    response = admin.get(
        "/v1/availability",
        params={"channel": "shopify", "sku": [second, unknown, first], "min_position": last},
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["channel"] == "shopify"
    assert body["position"] >= last
    assert body["items"] == [
        {"sku": second, "available_to_sell": 6},
        {"sku": unknown, "available_to_sell": 0},
        {"sku": first, "available_to_sell": 7},
    ]


def test_bulk_availability_on_another_channel_counts_its_own_locations(
    admin: httpx.Client, fixed: Any, new_id: NewId
) -> None:
    sku = new_id("SKU")
    _receive(admin, sku, fixed.warehouse, 3)
    last = _receive(admin, sku, fixed.store_a, 5)

    response = admin.get(
        "/v1/availability", params={"channel": "pos", "sku": sku, "min_position": last}
    )

    assert response.status_code == 200, response.text
    assert response.json()["items"] == [{"sku": sku, "available_to_sell": 5}]


def test_bulk_availability_takes_500_skus_but_not_501(
    admin: httpx.Client, problem: Problem
) -> None:
    skus = [f"B{n}" for n in range(501)]

    at_limit = admin.get("/v1/availability", params={"channel": "shopify", "sku": skus[:500]})
    over = admin.get("/v1/availability", params={"channel": "shopify", "sku": skus})

    assert at_limit.status_code == 200, at_limit.text
    assert len(at_limit.json()["items"]) == 500
    problem(over, 422, "validation")


@pytest.mark.parametrize(
    "params",
    [
        {"sku": "A"},  # no channel
        {"channel": "shopify"},  # no SKU
        {"channel": "Shopify!", "sku": "A"},
        {"channel": "shopify", "sku": ["A", "bad sku"]},
        {"channel": "shopify", "sku": ["A", "NEWLINE\n"]},
        {"channel": "shopify", "sku": ["A", "X" * 65]},
        {"channel": "shopify", "sku": "A", "min_position": -1},
    ],
)
def test_bulk_availability_refuses_bad_query_values(
    admin: httpx.Client, problem: Problem, params: dict[str, Any]
) -> None:
    problem(admin.get("/v1/availability", params=params), 422, "validation")


# --------------------------------------------------------------------------- read-your-writes


def test_a_read_with_the_writes_position_reflects_the_write(
    admin: httpx.Client, fixed: Any, new_id: NewId
) -> None:
    sku = new_id("SKU")
    expected = 0
    for quantity in (5, 1, 7, 2):
        position = _receive(admin, sku, fixed.warehouse, quantity)
        expected += quantity

        body = _availability(admin, sku, position)

        assert _buckets(body, fixed.warehouse)["available"] == expected

    bulk = admin.get(
        "/v1/availability", params={"channel": "shopify", "sku": sku, "min_position": position}
    )
    assert bulk.json()["items"] == [{"sku": sku, "available_to_sell": expected}]


def test_an_order_is_readable_at_the_position_its_placement_answered(
    admin: httpx.Client, fixed: Any, stocked: Stocked, new_id: NewId
) -> None:
    sku, external_id = new_id("SKU"), new_id("SO")
    stocked(sku, fixed.warehouse, 3)
    placed = _place(admin, external_id, (sku, 2, fixed.warehouse))
    order_id = placed.json()["order_id"]

    by_id = admin.get(f"/v1/orders/{order_id}", params={"min_position": _written(placed)})
    paid = _written(admin.post(f"/v1/orders/{order_id}/payment"))
    after_payment = admin.get(f"/v1/orders/{order_id}", params={"min_position": paid})
    found = admin.get(
        "/v1/orders",
        params={"channel": "shopify", "external_id": external_id, "min_position": paid},
    )

    assert by_id.status_code == 200, by_id.text
    assert by_id.json()["status"] == "reserved"
    assert after_payment.json()["status"] == "committed"
    assert [order["status"] for order in found.json()["orders"]] == ["committed"]


def test_a_location_is_listed_at_the_position_its_registration_answered(
    admin: httpx.Client, new_id: NewId
) -> None:
    code = new_id("LOC")
    registered = admin.put(
        f"/v1/locations/{code}",
        json={"name": "Pop-up", "kind": "store", "channels": ["pos"], "priority": 70},
    )

    response = admin.get("/v1/locations", params={"min_position": _written(registered)})

    assert code in [location["code"] for location in response.json()["locations"]]


def test_a_read_waiting_for_a_position_never_reached_gives_up_with_a_504(
    admin: httpx.Client, fixed: Any, new_id: NewId, problem: Problem
) -> None:
    head = _receive(admin, new_id("SKU"), fixed.warehouse, 1)
    started = time.monotonic()

    response = admin.get(f"/v1/availability/{new_id('SKU')}", params={"min_position": head + 10**9})

    elapsed = time.monotonic() - started
    body = problem(response, 504, "projection-lag")
    assert elapsed < 7.0
    assert body["position"] >= head  # how far the view did get
    assert str(head + 10**9) in body["detail"]


# --------------------------------------------------------------------------- orders


def test_an_order_is_read_by_id_and_found_by_its_channel_id(
    admin: httpx.Client, fixed: Any, stocked: Stocked, new_id: NewId
) -> None:
    sku, external_id = new_id("SKU"), new_id("EXT")
    stocked(sku, fixed.warehouse, 2)
    stocked(sku, fixed.store_a, 2)
    online = _place(admin, external_id, (sku, 2, fixed.warehouse))
    in_store = _place(admin, external_id, (sku, 1, fixed.store_a), channel="pos")
    last = max(_written(online), _written(in_store))

    by_id = admin.get(f"/v1/orders/{online.json()['order_id']}", params={"min_position": last})
    on_shopify = admin.get("/v1/orders", params={"channel": "shopify", "external_id": external_id})
    anywhere = admin.get("/v1/orders", params={"external_id": external_id})
    nowhere = admin.get("/v1/orders", params={"channel": "shopify", "external_id": new_id("EXT")})

    assert by_id.status_code == 200, by_id.text
    order = by_id.json()
    assert order["order_id"] == online.json()["order_id"]
    assert (order["channel"], order["external_id"], order["status"]) == (
        "shopify",
        external_id,
        "reserved",
    )
    assert order["lines"][0]["line_id"] == "1"
    assert order["lines"][0]["sku"] == sku
    assert order["lines"][0]["allocations"] == [{"location": fixed.warehouse, "quantity": 2}]
    assert isinstance(on_shopify.json()["orders"], list)
    assert [o["order_id"] for o in on_shopify.json()["orders"]] == [order["order_id"]]
    assert {o["order_id"] for o in anywhere.json()["orders"]} == {
        online.json()["order_id"],
        in_store.json()["order_id"],
    }
    assert nowhere.json()["orders"] == []


def test_an_orders_history_lists_its_events_in_order(
    admin: httpx.Client, fixed: Any, stocked: Stocked, new_id: NewId
) -> None:
    sku = new_id("SKU")
    stocked(sku, fixed.warehouse, 2)
    placed = _place(admin, new_id("SO"), (sku, 2, fixed.warehouse))
    order_id = placed.json()["order_id"]
    _written(admin.post(f"/v1/orders/{order_id}/payment"))
    last = _written(admin.post(f"/v1/orders/{order_id}/cancellation"))

    response = admin.get(f"/v1/orders/{order_id}/history")

    assert response.status_code == 200, response.text
    events = response.json()["events"]
    assert events[0]["type"] == "Placed"
    assert "PaymentAuthorized" in [e["type"] for e in events]
    assert events[-1]["type"] == "Cancelled"
    # The cancellation's answer is its last event: the stock released after the order's own.
    assert events[-1]["position"] <= last
    assert [e["version"] for e in events] == list(range(1, len(events) + 1))
    assert [e["position"] for e in events] == sorted({e["position"] for e in events})
    for event in events:
        assert event.keys() >= EVENT_SHAPE
        assert (event["aggregate"], event["aggregate_id"]) == ("order", order_id)


def test_an_unknown_order_is_not_found(admin: httpx.Client, problem: Problem) -> None:
    order_id = uuid4()

    problem(admin.get(f"/v1/orders/{order_id}"), 404, "not-found")
    problem(admin.get(f"/v1/orders/{order_id}/history"), 404, "not-found")


def test_an_order_id_that_is_not_a_uuid_is_a_validation_problem(
    admin: httpx.Client, problem: Problem
) -> None:
    problem(admin.get("/v1/orders/not-an-id"), 422, "validation")
    problem(admin.get("/v1/orders/not-an-id/history"), 422, "validation")


# --------------------------------------------------------------------------- the event feed


def test_the_feed_pages_through_every_event_in_position_order_without_gaps(
    admin: httpx.Client, fixed: Any, new_id: NewId, served_database_url: str
) -> None:
    last = _receive(admin, new_id("SKU"), fixed.warehouse, 1)
    seen: list[int] = []
    after = 0
    while True:
        response = admin.get("/v1/events", params={"after": after, "limit": 250})
        assert response.status_code == 200, response.text
        page = response.json()
        if not page["events"]:
            assert page["next_after"] == after
            break
        positions = [event["position"] for event in page["events"]]
        assert positions == sorted(positions)
        assert positions[0] > after
        assert page["next_after"] == positions[-1]
        seen.extend(positions)
        after = page["next_after"]

    with psycopg.connect(served_database_url) as connection:
        stored = [
            row[0]
            for row in connection.execute(
                "SELECT notification_id FROM ledger_events WHERE notification_id <= %s "
                "ORDER BY notification_id",
                (seen[-1],),
            )
        ]
    assert len(seen) == len(set(seen))
    assert seen == stored
    assert last in seen


def test_a_feed_event_carries_its_position_id_type_aggregate_version_time_and_data(
    admin: httpx.Client, fixed: Any, new_id: NewId
) -> None:
    sku = new_id("SKU")
    before = datetime.now(UTC)
    position = _receive(admin, sku, fixed.warehouse, 6)

    page = admin.get("/v1/events", params={"after": position - 1, "limit": 1}).json()

    [event] = page["events"]
    assert event.keys() >= EVENT_SHAPE | {"data"}
    assert event["position"] == position
    assert page["next_after"] == position
    assert event["type"] == "Received"
    assert event["aggregate"] == "stock"
    UUID(event["id"])
    UUID(event["aggregate_id"])
    assert event["version"] >= 1
    occurred = datetime.fromisoformat(event["occurred_at"])
    assert occurred.tzinfo is not None
    assert occurred >= before
    assert event["data"]["sku"] == sku
    assert event["data"]["location"] == fixed.warehouse
    assert event["data"]["quantity"] == 6
    # The same event reads the same every time.
    again = admin.get("/v1/events", params={"after": position - 1, "limit": 1}).json()
    assert again["events"] == [event]


def test_a_feed_past_the_end_is_empty_and_stays_put(admin: httpx.Client) -> None:
    response = admin.get("/v1/events", params={"after": 2**60})

    assert response.status_code == 200, response.text
    assert response.json() == {"events": [], "next_after": 2**60}


@pytest.mark.parametrize(
    "params", [{"after": -1}, {"after": "x"}, {"limit": 0}, {"limit": 1001}, {"limit": -5}]
)
def test_the_feed_refuses_bad_paging_values(
    admin: httpx.Client, problem: Problem, params: dict[str, Any]
) -> None:
    problem(admin.get("/v1/events", params=params), 422, "validation")


# --------------------------------------------------------------------------- locations, discrepancy


def test_locations_are_listed_with_their_channels_priority_and_channel_ids(
    admin: httpx.Client, fixed: Any, new_id: NewId
) -> None:
    code = new_id("LOC")
    position = _written(
        admin.put(
            f"/v1/locations/{code}",
            json={
                "name": "Outlet",
                "kind": "store",
                "channels": ["pos", "shopify"],
                "priority": 5,
                "external_ids": {"shopify": new_id("905")},
            },
        )
    )

    response = admin.get("/v1/locations", params={"min_position": position})

    assert response.status_code == 200, response.text
    locations = response.json()["locations"]
    by_code = {location["code"]: location for location in locations}
    assert by_code[code]["name"] == "Outlet"
    assert by_code[code]["kind"] == "store"
    assert sorted(by_code[code]["channels"]) == ["pos", "shopify"]
    assert by_code[code]["priority"] == 5
    assert set(by_code[code]["external_ids"]) == {"shopify"}
    assert by_code[fixed.warehouse]["channels"] == ["shopify"]
    assert {fixed.store_a, fixed.store_b} <= by_code.keys()
    priorities = [location["priority"] for location in locations]
    assert priorities == sorted(priorities)


def _discrepancies(admin: httpx.Client, position: int) -> dict[str, dict[str, Any]]:
    response = admin.get("/v1/discrepancies", params={"min_position": position})
    assert response.status_code == 200, response.text
    return {f"{d['sku']}@{d['location']}": d for d in response.json()["discrepancies"]}


def test_a_discrepancy_is_listed_until_a_count_clears_it(
    admin: httpx.Client, fixed: Any, new_id: NewId
) -> None:
    sku = new_id("SKU")
    _receive(admin, sku, fixed.store_a, 1)
    sold = _written(
        admin.post(
            "/v1/pos/transactions",
            json={
                "transaction_id": new_id("POS"),
                "location": fixed.store_a,
                "occurred_at": "2025-06-01T14:05:00+02:00",
                "lines": [{"sku": sku, "quantity": 3}],
            },
        )
    )

    listed = _discrepancies(admin, sold)
    counted = _written(
        admin.post("/v1/stock/counts", json={"sku": sku, "location": fixed.store_a, "counted": 4})
    )
    after_count = _discrepancies(admin, counted)

    found = listed[f"{sku}@{fixed.store_a}"]
    assert found["shortfall"] == 2
    assert found["position"] <= sold
    assert f"{sku}@{fixed.store_a}" not in after_count


# --------------------------------------------------------------------------- history as of a moment


def _moment() -> str:
    time.sleep(0.002)
    moment = datetime.now(UTC)
    time.sleep(0.002)
    return moment.isoformat()


def _state_as_of(admin: httpx.Client, sku: str, location: str, as_of: str) -> dict[str, Any]:
    response = admin.get(f"/v1/stock/{sku}/{location}/history", params={"as_of": as_of})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_history_as_of_each_moment_returns_the_state_at_that_moment(
    admin: httpx.Client, fixed: Any, new_id: NewId
) -> None:
    sku, at = new_id("SKU"), fixed.warehouse
    moments = [_moment()]
    positions = [_receive(admin, sku, at, 10)]
    moments.append(_moment())
    positions.append(
        _written(
            admin.post(
                "/v1/stock/adjustments",
                json={"sku": sku, "location": at, "delta": -3, "reason": "shrinkage"},
            )
        )
    )
    moments.append(_moment())
    positions.append(_safety(admin, sku, at, 2))
    moments.append(_moment())
    positions.append(
        _written(admin.post("/v1/stock/damage", json={"sku": sku, "location": at, "quantity": 1}))
    )
    moments.append(_moment())

    states = [_state_as_of(admin, sku, at, moment) for moment in moments]
    now = admin.get(f"/v1/stock/{sku}/{at}/history").json()

    figures = [
        {k: s["state"][k] for k in ("available", "damaged", "safety_stock", "available_to_sell")}
        for s in states
    ]
    assert figures == [
        {"available": 0, "damaged": 0, "safety_stock": 0, "available_to_sell": 0},
        {"available": 10, "damaged": 0, "safety_stock": 0, "available_to_sell": 10},
        {"available": 7, "damaged": 0, "safety_stock": 0, "available_to_sell": 7},
        {"available": 7, "damaged": 0, "safety_stock": 2, "available_to_sell": 5},
        {"available": 6, "damaged": 1, "safety_stock": 2, "available_to_sell": 4},
    ]
    assert [s["state"]["on_hand"] for s in states] == [0, 10, 7, 7, 7]
    assert [s["state"]["position"] for s in states[1:]] == positions
    assert states[0]["events"] == []
    # Each answer lists the events up to its moment, and no later one.
    for state, moment in zip(states, moments, strict=True):
        assert all(e["occurred_at"] <= moment for e in state["events"])
        assert state["state"]["as_of"] is not None
    assert [len(s["events"]) for s in states] == sorted(len(s["events"]) for s in states)
    assert states[-1]["events"][-1]["type"] == "MarkedDamaged"
    assert now["state"] == {**states[-1]["state"], "as_of": None}
    assert now["events"] == states[-1]["events"]


def test_history_pages_with_after_and_limit(admin: httpx.Client, fixed: Any, new_id: NewId) -> None:
    sku = new_id("SKU")
    positions = [_receive(admin, sku, fixed.warehouse, n) for n in (1, 2, 3, 4)]

    everything = admin.get(f"/v1/stock/{sku}/{fixed.warehouse}/history").json()
    later = admin.get(
        f"/v1/stock/{sku}/{fixed.warehouse}/history",
        params={"after": positions[1], "limit": 1},
    ).json()

    assert [e["position"] for e in everything["events"] if e["type"] == "Received"] == positions
    assert [e["position"] for e in later["events"]] == [positions[2]]
    # The state is the whole position's, whatever page of events is shown.
    assert later["state"]["available"] == everything["state"]["available"] == 10


def test_history_of_a_position_never_stocked_is_not_found(
    admin: httpx.Client, fixed: Any, new_id: NewId, problem: Problem
) -> None:
    problem(admin.get(f"/v1/stock/{new_id('NEVER')}/{fixed.warehouse}/history"), 404, "not-found")


@pytest.mark.parametrize(
    "params",
    [
        {"as_of": "2025-06-01T10:00:00"},  # no time zone
        {"as_of": "yesterday"},
        {"after": -1},
        {"limit": 0},
    ],
)
def test_history_refuses_bad_query_values(
    admin: httpx.Client, fixed: Any, problem: Problem, params: dict[str, Any]
) -> None:
    response = admin.get(f"/v1/stock/ANY-SKU/{fixed.warehouse}/history", params=params)

    problem(response, 422, "validation")


@pytest.mark.parametrize(
    "path",
    [
        "/v1/availability/" + quote("bad sku"),
        "/v1/availability/" + quote("ünïcode"),
        "/v1/availability/" + "X" * 65,
        "/v1/stock/" + quote("bad sku") + "/E2E-WH/history",
        "/v1/stock/GOOD/" + quote("bad/loc!") + "/history",
    ],
)
def test_a_malformed_sku_or_location_in_a_read_is_a_validation_problem(
    admin: httpx.Client, problem: Problem, path: str
) -> None:
    problem(admin.get(path), 422, "validation")


# --------------------------------------------------------------------------- authentication

READS = [
    "/v1/availability/ANY",
    "/v1/availability?channel=shopify&sku=ANY",
    f"/v1/orders/{uuid4()}",
    "/v1/orders?channel=shopify&external_id=1",
    f"/v1/orders/{uuid4()}/history",
    "/v1/stock/ANY/E2E-WH/history",
    "/v1/events",
    "/v1/locations",
    "/v1/discrepancies",
]


@pytest.mark.parametrize("path", READS)
def test_every_read_needs_a_key(
    client_for: Callable[..., httpx.Client], problem: Problem, path: str
) -> None:
    problem(client_for(None).get(path), 401, "unauthorized")


@pytest.mark.parametrize("path", READS)
def test_every_read_needs_the_read_scope(
    client_for: Callable[..., httpx.Client], problem: Problem, path: str
) -> None:
    problem(client_for("till").get(path), 403, "forbidden")
    problem(client_for("store-a-stock").get(path), 403, "forbidden")


def test_a_read_only_key_reads(client_for: Callable[..., httpx.Client]) -> None:
    reader = client_for("reader")

    assert reader.get("/v1/locations").status_code == 200
    assert reader.get("/v1/events", params={"limit": 1}).status_code == 200
    assert reader.get("/v1/availability/ANY").status_code == 200
