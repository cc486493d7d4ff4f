"""Two ``stockledger serve`` processes on one database and one NATS, both taking writes.

Orders for the same units race through both processes and never oversell; each view and each
relay has a single active worker across the two (a PostgreSQL advisory lock); when the process
holding them is killed (SIGKILL), the other takes them over, and its views and postings move on.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from uuid import uuid4

import httpx
import pytest

from adapters.embedded import EmbeddedNats
from projections.base import advisory_key
from projections.registry import VIEW_NAMES

HOT_SKU = "HOT-1"
HOT_UNITS = 60
ORDERS = 240
WORKERS = {name: advisory_key(name) for name in VIEW_NAMES} | {
    f"relay:{name}": advisory_key(f"relay:{name}") for name in ("erp-postings", "event-stream")
}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_processes_never_oversell_keep_one_active_worker_each_and_take_over(
    kit: Any, private_nats: EmbeddedNats, fresh_database_url: Any, figures: Any
) -> None:
    database_url = fresh_database_url()
    first = kit.serve.start(database_url, private_nats.url, kit.admin_key)
    second = kit.serve.start(database_url, private_nats.url, kit.admin_key)
    processes = [first, second]
    skus = [f"TWO-{n}" for n in range(6)]
    with first.client() as client:
        kit.setup_stock(client, skus, 2000)
        response = client.post(
            "/v1/stock/receipts",
            json={"sku": HOT_SKU, "location": kit.warehouse, "quantity": HOT_UNITS},
        )
        assert response.status_code == 201, response.text

    # --- one active worker per view and relay, across both processes -------------------------
    def holders() -> dict[str, int]:
        held = kit.advisory_holders(database_url)
        owners = kit.backend_owner(database_url, list(held.values()), processes)
        return {name: owners.get(held.get(key, -1), -1) for name, key in WORKERS.items()}

    kit.wait_until(
        lambda: all(pid in (first.pid, second.pid) for pid in holders().values()),
        "every worker to be active in one of the processes",
        30,
    )
    active = holders()
    # PostgreSQL grants each advisory lock to one session: one active worker per view and relay.
    assert set(active) == set(WORKERS)
    assert len(kit.advisory_holders(database_url)) == len(WORKERS)

    # --- orders for the same units, through both processes at once -----------------------------
    background = kit.load([first.base_url, second.base_url], skus, threads=4, pause=0.01).start()
    barrier = threading.Barrier(16)

    def place(number: int) -> int:
        target = processes[number % 2]
        with httpx.Client(
            base_url=target.base_url,
            headers={"Authorization": f"Bearer {kit.admin_key}"},
            timeout=30,
        ) as client:
            if number < 16:
                barrier.wait(10)
            response = client.post(
                "/v1/orders",
                headers={"Idempotency-Key": f"hot-{number}-{uuid4().hex}"},
                json={
                    "channel": "shopify",
                    "external_id": f"HOT-{number}-{uuid4().hex[:8]}",
                    "lines": [{"line_id": "1", "sku": HOT_SKU, "quantity": 1}],
                },
            )
            if response.status_code == 409:
                assert response.json()["type"] == "insufficient-stock"
            return response.status_code

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=16) as pool:
        statuses = Counter(pool.map(place, range(ORDERS)))
    race_seconds = time.monotonic() - started
    assert statuses[201] == HOT_UNITS, statuses
    assert statuses[409] == ORDERS - HOT_UNITS, statuses

    # --- the process holding the relays dies; the other takes every worker over ----------------
    victim = first if active["relay:erp-postings"] == first.pid else second
    survivor = second if victim is first else first
    victim.kill()
    killed = time.monotonic()
    seen: list[dict[str, int]] = []

    def survivor_holds_every_lock() -> bool:
        seen.append(holders())
        return all(pid == survivor.pid for pid in seen[-1].values())

    try:
        kit.wait_until(survivor_holds_every_lock, "the survivor to take over every view and relay")
    except AssertionError as error:
        # Which worker stayed behind, and what the survivor said meanwhile (-1: no holder, or
        # one that is neither process).
        said = [line for line in survivor.log().splitlines() if "uvicorn.access" not in line]
        raise AssertionError(
            f"{error}; holders last seen {seen[-1:]}, survivor {survivor.pid}, victim "
            f"{victim.pid}; the survivor's log, requests left out, ends:\n" + "\n".join(said[-30:])
        ) from None
    took_over = time.monotonic() - killed
    answers = background.stop()
    answers.extend(kit.load([survivor.base_url], skus, threads=4, pause=0.01).run_for(2.0))
    kit.wait_until(lambda: kit.caught_up(database_url), "the survivor's workers to catch up", 60)

    with survivor.client() as client:
        position = kit.head_position(database_url)
        hot = client.get(f"/v1/availability/{HOT_SKU}", params={"min_position": position})
        assert hot.status_code == 200, hot.text
        (bucket,) = hot.json()["locations"]
        assert bucket["reserved"] == HOT_UNITS and bucket["available"] == 0, bucket

    connection_errors = [a for a in answers if a.status is None]
    assert all(a.base_url.rstrip("/") == victim.base_url for a in connection_errors)
    assert not [a for a in answers if a.status is not None and a.status >= 500]
    recorded = kit.assert_answers_recorded(database_url, answers)
    survivor.terminate()
    views = kit.assert_views_match_a_rebuild(database_url)
    streams = kit.assert_streams_exactly_once(database_url, private_nats.url)
    figures(
        "two processes",
        {
            "orders_for_60_units": ORDERS,
            "order_statuses": dict(statuses),
            "race_seconds": round(race_seconds, 2),
            "active_workers_before_kill": {
                name: ("first" if pid == first.pid else "second") for name, pid in active.items()
            },
            "takeover_seconds": round(took_over, 2),
            "background_writes": kit.summary(answers),
            **recorded,
            "views_rows": views,
            "stream_messages": streams,
        },
    )
