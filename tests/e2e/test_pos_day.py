"""A day at the tills: 500 mixed sales and returns across two stores, sent concurrently through
POST /v1/pos/transactions (some resent, as tills do after a lost answer), give the same
availability as a plain-Python tally of the same day."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

NewId = Callable[[str], str]
ClientFor = Callable[..., httpx.Client]

TRANSACTIONS = 500
RESENT = 40
SEED = 20261127
OPENING_STOCK = 40


def a_day(
    rng: random.Random, stores: list[str], skus: list[str], new_id: NewId
) -> list[dict[str, Any]]:
    """Till transactions: mostly sales, some returns (negative), some mixed baskets; a returned
    unit is restocked, marked damaged, or (by default) kept as ``returned`` for inspection."""
    opening = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
    day = []
    for n in range(TRANSACTIONS):
        lines = []
        for sku in rng.sample(skus, rng.randint(1, 3)):
            if rng.random() < 0.25:
                line: dict[str, Any] = {"sku": sku, "quantity": -rng.randint(1, 2)}
                disposition = rng.choice(["default", "default", "restock", "damaged", "inspect"])
                if disposition != "default":
                    line["disposition"] = disposition
            else:
                line = {"sku": sku, "quantity": rng.randint(1, 4)}
            lines.append(line)
        day.append(
            {
                "transaction_id": new_id(f"T{n:03d}"),
                "location": rng.choice(stores),
                "occurred_at": (opening + timedelta(seconds=60 * n)).isoformat(),
                "lines": lines,
            }
        )
    return day


def tally(day: list[dict[str, Any]]) -> dict[tuple[str, str], Counter[str]]:
    """What the SPEC says a day does to the buckets, in plain Python."""
    buckets: dict[tuple[str, str], Counter[str]] = {}
    for transaction in day:
        for line in transaction["lines"]:
            bucket = buckets.setdefault((line["sku"], transaction["location"]), Counter())
            quantity = line["quantity"]
            if quantity > 0:
                bucket["available"] -= quantity
            else:
                disposition = line.get("disposition", "inspect")
                target = {"restock": "available", "damaged": "damaged"}.get(disposition, "returned")
                bucket[target] += -quantity
    return buckets


def test_a_pos_day_matches_a_plain_tally(
    admin: httpx.Client, client_for: ClientFor, new_id: NewId
) -> None:
    rng = random.Random(SEED)
    stores = [new_id("POS-DAY-A"), new_id("POS-DAY-B")]
    skus = [new_id(f"DAY-SKU{n}") for n in range(8)]
    for code in stores:
        response = admin.put(
            f"/v1/locations/{code}",
            json={"name": code, "kind": "store", "channels": ["pos"], "priority": 50},
        )
        assert response.status_code == 200, response.text
        for sku in skus:
            response = admin.post(
                "/v1/stock/receipts",
                json={"sku": sku, "location": code, "quantity": OPENING_STOCK},
            )
            assert response.status_code == 201, response.text

    day = a_day(rng, stores, skus, new_id)
    resent = rng.sample(day, RESENT)
    deliveries = day + resent
    rng.shuffle(deliveries)
    till = client_for("till")

    def send(transaction: dict[str, Any]) -> httpx.Response:
        return till.post("/v1/pos/transactions", json=transaction)

    with ThreadPoolExecutor(max_workers=16) as pool:
        responses = list(pool.map(send, deliveries))
    for response in responses:
        assert response.status_code in (200, 201), response.text
    by_transaction: dict[str, set[int]] = {}
    for transaction, response in zip(deliveries, responses, strict=True):
        assert response.json()["transaction_id"] == transaction["transaction_id"]
        by_transaction.setdefault(transaction["transaction_id"], set()).add(
            response.json()["position"]
        )
    # A resent transaction answers as the first time: it recorded nothing new.
    assert all(len(positions) == 1 for positions in by_transaction.values())
    last = max(response.json()["position"] for response in responses)

    expected = tally(day)
    for sku in skus:
        response = admin.get(f"/v1/availability/{sku}", params={"min_position": last})
        assert response.status_code == 200, response.text
        view = response.json()
        rows = {row["location"]: row for row in view["locations"]}
        assert set(rows) == set(stores)
        channel_ats = 0
        for store in stores:
            want = expected.get((sku, store), Counter())
            available = OPENING_STOCK + want["available"]
            row = rows[store]
            assert row["available"] == available, (sku, store)
            assert row["returned"] == want["returned"], (sku, store)
            assert row["damaged"] == want["damaged"], (sku, store)
            assert (row["reserved"], row["committed"]) == (0, 0)
            assert row["on_hand"] == available + want["returned"] + want["damaged"]
            assert row["available_to_sell"] == max(0, available)
            channel_ats += max(0, available)
        assert view["channels"].get("pos", 0) == channel_ats, sku

    # Each transaction recorded once: one Sold or ReturnReceived per line, in the log.
    sold_or_returned = Counter[str]()
    for sku in skus:
        for store in stores:
            after = 0
            while True:
                page = admin.get(
                    f"/v1/stock/{sku}/{store}/history", params={"after": after, "limit": 1000}
                ).json()
                for event in page["events"]:
                    if event["type"] in ("Sold", "ReturnReceived"):
                        sold_or_returned[event["type"]] += 1
                if len(page["events"]) < 1000:
                    break
                after = page["events"][-1]["position"]
    lines = [line for transaction in day for line in transaction["lines"]]
    assert sold_or_returned["Sold"] == sum(1 for line in lines if line["quantity"] > 0)
    assert sold_or_returned["ReturnReceived"] == sum(1 for line in lines if line["quantity"] < 0)
