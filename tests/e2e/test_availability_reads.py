"""``GET /v1/availability/{sku}``, the busiest read, on its lean way (a plain request skips
FastAPI's layers and parameter resolution, reads arriving together share a statement) and on
FastAPI's (``min_position``, malformed SKUs): the same answers, keys and refusals either way. And
the read pool's check before lending a connection, which asks the server only when something
arrived."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import psycopg
import pytest

from api.app import check_idle_connection

Problem = Callable[..., dict[str, Any]]
NewId = Callable[[str], str]


def _receive(admin: httpx.Client, sku: str, location: str, quantity: int) -> int:
    response = admin.post(
        "/v1/stock/receipts", json={"sku": sku, "location": location, "quantity": quantity}
    )
    assert response.status_code == 201, response.text
    position: int = response.json()["position"]
    return position


def test_a_plain_read_answers_as_a_read_through_min_position(
    admin: httpx.Client, fixed: Any, new_id: NewId
) -> None:
    sku = f"{new_id('LEAN')}/BLUE"
    _receive(admin, sku, fixed.warehouse, 6)
    last = _receive(admin, sku, fixed.store_a, 2)
    waited = admin.get(f"/v1/availability/{sku}", params={"min_position": last})
    assert waited.status_code == 200, waited.text

    plain = admin.get(f"/v1/availability/{sku}")

    assert plain.status_code == 200, plain.text
    assert plain.headers["content-type"] == "application/json"
    assert plain.headers["x-request-id"]
    assert plain.json()["position"] >= waited.json()["position"]
    assert {**plain.json(), "position": None} == {**waited.json(), "position": None}
    assert plain.json()["channels"] == {"shopify": 6, "pos": 2}


@pytest.mark.parametrize(
    ("key_name", "status", "slug"),
    [(None, 401, "unauthorized"), ("till", 403, "forbidden"), ("reader", 200, None)],
)
def test_a_plain_read_checks_the_key_like_any_read(
    client_for: Callable[..., httpx.Client],
    problem: Problem,
    key_name: str | None,
    status: int,
    slug: str | None,
) -> None:
    response = client_for(key_name).get("/v1/availability/ANY-SKU")

    if slug is None:
        assert response.status_code == status, response.text
    else:
        problem(response, status, slug)


def test_a_wrong_key_is_refused_on_a_plain_read(
    client_for: Callable[..., httpx.Client], problem: Problem
) -> None:
    response = client_for(None, Authorization="Bearer not-a-key-0123456789").get(
        "/v1/availability/ANY-SKU"
    )

    problem(response, 401, "unauthorized")
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("sku", ["bad%20sku", "A" * 65, "SKU%09", "SK%C3%9C"], ids=repr)
def test_a_malformed_sku_is_refused_by_the_usual_validation(
    admin: httpx.Client, problem: Problem, sku: str
) -> None:
    body = problem(admin.get(f"/v1/availability/{sku}"), 422, "validation")

    assert body["errors"][0]["loc"] == ["path", "sku"]


def test_concurrent_plain_reads_each_get_their_own_skus_answer(
    server: Any, admin: httpx.Client, fixed: Any, new_id: NewId
) -> None:
    quantities = {new_id("TOGETHER"): n for n in range(1, 6)}
    last = 0
    for sku, quantity in quantities.items():
        last = _receive(admin, sku, fixed.warehouse, quantity)
    assert admin.get(f"/v1/availability/{sku}", params={"min_position": last}).status_code == 200
    skus = list(quantities) * 8

    def read(sku: str) -> dict[str, Any]:
        with httpx.Client(
            base_url=server.base_url, headers={"Authorization": f"Bearer {server.keys['admin']}"}
        ) as client:
            response = client.get(f"/v1/availability/{sku}")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    with ThreadPoolExecutor(max_workers=len(skus)) as threads:
        answers = list(threads.map(read, skus))

    for sku, answer in zip(skus, answers, strict=True):
        assert answer["sku"] == sku
        assert answer["locations"][0]["available"] == quantities[sku]


def test_a_pooled_connection_the_server_closed_is_found_before_use(
    served_database_url: str,
) -> None:
    async def scenario() -> None:
        async with await psycopg.AsyncConnection.connect(
            served_database_url, autocommit=True
        ) as connection:
            await check_idle_connection(connection)  # healthy: nothing to read, no error
            with psycopg.connect(served_database_url, autocommit=True) as other:
                other.execute("SELECT pg_terminate_backend(%s)", (connection.info.backend_pid,))
            deadline = time.monotonic() + 5
            while True:
                try:
                    await check_idle_connection(connection)
                except psycopg.OperationalError:
                    return
                assert time.monotonic() < deadline, "the closed connection passed the check"
                await asyncio.sleep(0.05)

    asyncio.run(scenario())
