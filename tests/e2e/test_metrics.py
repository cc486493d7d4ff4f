"""``GET /metrics``: Prometheus text that parses, with the named series, after real writes.

The live server is shared with the other e2e tests, so counters are compared before and after
this test's own requests (tests in a session run one at a time).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import psycopg
from prometheus_client.parser import text_string_to_metric_families

from adapters import exceptions as exception_store
from api.app import create_app
from api.metrics import command_outcome
from api.settings import Settings
from projections.registry import VIEW_NAMES

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(base_url: str) -> tuple[Samples, set[str]]:
    """Every sample by (name, labels), and the metric family names; no key is sent."""
    response = httpx.get(f"{base_url}/metrics", timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    names: set[str] = set()
    for family in text_string_to_metric_families(response.text):
        names.add(family.name)
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples, names


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def wait_until(check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)


def test_metrics_carry_commands_refusals_latency_and_ledger_state(
    server: Any,
    admin: httpx.Client,
    new_location: Callable[..., str],
    new_id: Callable[[str], str],
    served_database_url: str,
) -> None:
    before, _ = scrape(server.base_url)
    location = new_location()
    sku = new_id("SKU-METRICS")

    received = admin.post(
        "/v1/stock/receipts", json={"sku": sku, "location": location, "quantity": 5}
    )
    assert received.status_code == 201, received.text
    refused = admin.post("/v1/stock/damage", json={"sku": sku, "location": location, "quantity": 9})
    assert refused.status_code == 409 and refused.json()["type"] == "insufficient-stock"
    too_big = admin.post(
        "/v1/orders",
        json={
            "channel": "shopify",
            "external_id": new_id("ORDER"),
            "lines": [{"line_id": "1", "sku": sku, "quantity": 50, "location": location}],
        },
    )
    assert too_big.status_code == 409, too_big.text
    invalid = admin.post("/v1/stock/receipts", json={"sku": sku, "location": location})
    assert invalid.status_code == 422
    assert httpx.get(f"{server.base_url}/v1/no-such-thing").status_code == 404
    # A POS sale (a fact) beyond the stock: a discrepancy.
    sale = admin.post(
        "/v1/pos/transactions",
        json={
            "transaction_id": new_id("POS"),
            "location": location,
            "occurred_at": datetime.now(UTC).isoformat(),
            "lines": [{"sku": sku, "quantity": 7}],
        },
    )
    assert sale.status_code == 201, sale.text
    last_position = int(sale.headers["X-Ledger-Position"])
    with psycopg.connect(served_database_url, autocommit=True) as connection:
        exception_store.record(
            connection,
            channel="shopify",
            source="orders/create",
            reason="unknown SKU GHOST-1",
            payload=b"{}",
            key=new_id("metrics-exception"),
        )

        def views_caught_up() -> bool:
            rows = connection.execute(
                "SELECT count(*) FROM projection_positions WHERE name = ANY(%s) AND position >= %s",
                (list(VIEW_NAMES), last_position),
            ).fetchone()
            return rows is not None and rows[0] == len(VIEW_NAMES)

        wait_until(views_caught_up)
        discrepancy_rows = connection.execute("SELECT count(*) FROM view_discrepancies").fetchone()
        open_rows = connection.execute(
            "SELECT count(*) FROM exceptions WHERE status = 'open'"
        ).fetchone()

    # The busiest read, plain (answered before FastAPI's layers) and not, under one template.
    for params in ({}, {}, {"min_position": 0}):
        assert admin.get(f"/v1/availability/{sku}", params=params).status_code == 200

    after, names = scrape(server.base_url)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    # Commands by operation and outcome, and the insufficient-stock refusals.
    assert delta("stockledger_commands_total", command="stock-record_receipt", outcome="ok") == 1
    assert (
        delta(
            "stockledger_commands_total",
            command="stock-mark_damaged",
            outcome="refused:insufficient-stock",
        )
        == 1
    )
    assert (
        delta(
            "stockledger_commands_total",
            command="orders-place_order",
            outcome="refused:insufficient-stock",
        )
        == 1
    )
    assert (
        delta(
            "stockledger_commands_total",
            command="stock-record_receipt",
            outcome="refused:validation",
        )
        == 1
    )
    assert delta("stockledger_commands_total", command="pos-record_pos_transaction", outcome="ok")
    assert delta("stockledger_insufficient_stock_refusals_total", command="stock-mark_damaged") == 1
    assert delta("stockledger_insufficient_stock_refusals_total", command="orders-place_order") == 1

    # Requests and latency by route template (never by raw path).
    receipts = {"method": "POST", "route": "/v1/stock/receipts"}
    assert delta("stockledger_http_requests_total", status="201", **receipts) == 1
    assert delta("stockledger_http_request_duration_seconds_count", **receipts) == 2
    assert value(after, "stockledger_http_request_duration_seconds_sum", **receipts) > 0
    assert value(after, "stockledger_http_request_duration_seconds_bucket", le="+Inf", **receipts)
    assert delta("stockledger_http_requests_total", method="GET", route="unmatched", status="404")
    availability = {"method": "GET", "route": "/v1/availability/{sku:path}", "status": "200"}
    assert delta("stockledger_http_requests_total", **availability) == 3
    assert not any(
        dict(labels).get("route", "").startswith("/v1/no-such") for _, labels in after
    ), "raw paths must not become label values"

    # Group commit: retries by reason, batches and commands.
    for reason in ("conflict", "stale_refusal"):
        assert ("stockledger_concurrency_retries_total", frozenset({("reason", reason)})) in after
    assert delta("stockledger_group_commit_batches_total") >= 1
    assert delta("stockledger_group_commit_commands_total") >= 3

    # Read from the database at scrape time.
    assert value(after, "stockledger_metrics_database_up") == 1
    assert value(after, "stockledger_ledger_head_position") >= last_position
    for view in VIEW_NAMES:
        assert value(after, "stockledger_projection_position", view=view) >= last_position
        assert ("stockledger_projection_lag_events", frozenset({("view", view)})) in after
    for relay in ("erp-postings", "event-stream"):
        assert ("stockledger_outbox_backlog_events", frozenset({("relay", relay)})) in after
    assert discrepancy_rows is not None and open_rows is not None
    assert value(after, "stockledger_discrepancies") == discrepancy_rows[0] >= 1
    assert value(after, "stockledger_open_exceptions") == open_rows[0] >= 1

    # The families are named as documented (the parser drops a counter's _total).
    assert {
        "stockledger_commands",
        "stockledger_insufficient_stock_refusals",
        "stockledger_http_requests",
        "stockledger_http_request_duration_seconds",
        "stockledger_concurrency_retries",
        "stockledger_projection_lag_events",
        "stockledger_outbox_backlog_events",
        "stockledger_open_exceptions",
        "stockledger_discrepancies",
    } <= names


def test_metrics_need_no_key_and_each_app_has_its_own_registry(server: Any) -> None:
    assert httpx.get(f"{server.base_url}/metrics").status_code == 200
    # Two more apps in this process: no clash with the live one's series.
    settings = Settings(database_url="postgresql://unused/none", admin_key="k" * 20)
    first, second = create_app(settings), create_app(settings)
    assert first.state.metrics.registry is not second.state.metrics.registry
    assert first.state.metrics.registry is not server.app.state.metrics.registry


def test_outcome_labels() -> None:
    assert command_outcome(201, None) == "ok"
    assert command_outcome(409, "insufficient-stock") == "refused:insufficient-stock"
    assert command_outcome(413, None) == "refused:413"
    assert command_outcome(409, "Not A <Slug>") == "refused:409"
    assert command_outcome(503, "unavailable") == "error"
