"""Concurrent orders through HTTP never reserve more than there is."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

CLIENTS = 20
UNITS = 10


def test_parallel_orders_for_the_last_units_oversell_nothing(
    server: Any,
    admin: httpx.Client,
    fixed: Any,
    stocked: Callable[[str, str, int], None],
    new_id: Callable[[str], str],
) -> None:
    sku = new_id("HOT")
    stocked(sku, fixed.warehouse, UNITS)
    clients = [server.client("order-sync") for _ in range(CLIENTS)]

    def order(client: httpx.Client) -> httpx.Response:
        return client.post(
            "/v1/orders",
            json={
                "channel": "shopify",
                "external_id": new_id("RUSH"),
                "lines": [{"line_id": "1", "sku": sku, "quantity": 1}],
            },
        )

    with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
        responses = list(pool.map(order, clients))

    outcomes = Counter(
        (r.status_code, r.json().get("type") if r.status_code != 201 else None) for r in responses
    )
    assert outcomes == {(201, None): UNITS, (409, "insufficient-stock"): CLIENTS - UNITS}
    # What the position says agrees: every unit reserved, none available.
    position = admin.put(
        "/v1/stock/safety-stock", json={"sku": sku, "location": fixed.warehouse, "quantity": 0}
    ).json()
    assert (position["reserved"], position["available"]) == (UNITS, 0)
