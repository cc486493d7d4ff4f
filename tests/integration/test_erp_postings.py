"""ERP postings: each posting-worthy event becomes one canonical posting on STOCKLEDGER_ERP.

Real PostgreSQL and NATS. The NATS server may be shared with other tests, so every test uses its
own SKU, location and order names (posting ids derive from them) and reads only its own postings.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import nats
import psycopg
import pytest
from eventsourcing.persistence import StoredEvent
from nats.js.api import StorageType

from adapters.embedded import EmbeddedNats
from adapters.erp import SCHEMA, OrderLookup, posting_id_for, postings_for
from adapters.nats import (
    ERP_RELAY,
    ERP_STREAM,
    EVENT_RELAY,
    INBOUND_STREAM,
    ErpPostingSource,
    RelaySettings,
    RelayWorker,
    StreamSettings,
    drain_relay,
    ensure_streams,
    last_sequence,
    read_stream,
    relay_backlog,
)
from domain.service import FulfillmentLine, Ledger, OrderLine, PosLine, ReturnLine, SkuQuantity
from projections.events import event_id

pytestmark = pytest.mark.timeout(60)

FAST = RelaySettings(
    ack_timeout=3.0, idle_wait=0.1, backoff_initial=0.05, backoff_max=0.5, standby_wait=0.2
)


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def caught_up(database_url: str, relay: str) -> bool:
    with psycopg.connect(database_url, autocommit=True) as connection:
        return relay_backlog(connection)[relay].behind == 0


async def _erp_since(url: str, sequence: int) -> list[Any]:
    client = await nats.connect(url)
    try:
        return await read_stream(client.jetstream(), ERP_STREAM, start_sequence=sequence)
    finally:
        await client.close()


async def _erp_last(url: str) -> int:
    client = await nats.connect(url)
    try:
        return await last_sequence(client.jetstream(), ERP_STREAM)
    finally:
        await client.close()


def postings_at(
    url: str, after_sequence: int, locations: set[str]
) -> list[tuple[Any, dict[str, Any]]]:
    """(message, body) of the postings stored after a sequence, for these locations (in order)."""
    found = []
    for message in asyncio.run(_erp_since(url, after_sequence + 1)):
        body = json.loads(message.data)
        if body["location"] in locations:
            found.append((message, body))
    return found


@pytest.fixture
def names() -> Iterator[dict[str, str]]:
    tag = secrets.token_hex(3).upper()
    yield {
        "wh": f"WH-{tag}",
        "st": f"ST-{tag}",
        "sku": f"SKU-{tag}",
        "order": f"ord-{tag}",
        "tag": tag,
    }


@pytest.fixture
def relay(ledger_url: str, ledger: Ledger, nats_url: str) -> Iterator[RelayWorker]:
    worker = RelayWorker(
        ledger_url, nats_url, ledger.mapper, ErpPostingSource(ledger.mapper), settings=FAST
    )
    yield worker
    worker.stop()


def _event_ids_by_position(database_url: str) -> dict[int, str]:
    with psycopg.connect(database_url) as connection:
        rows = connection.execute(
            "SELECT notification_id, originator_id, originator_version FROM ledger_events"
        ).fetchall()
    return {position: str(event_id(aggregate, version)) for position, aggregate, version in rows}


def test_each_kind_of_posting_comes_from_its_event_with_its_lines_and_references(
    ledger_url: str, ledger: Ledger, nats_url: str, relay: RelayWorker, names: dict[str, str]
) -> None:
    wh, st, sku = names["wh"], names["st"], names["sku"]
    start = asyncio.run(_erp_last(nats_url))
    ledger.register_location(wh, name="Warehouse", kind="warehouse", channels=["shopify"])
    ledger.register_location(st, name="Store", kind="store", channels=["pos"])
    ledger.receive(sku, wh, 10, "PO-1")
    ledger.receive(sku, st, 10)
    placed = ledger.place_order(
        "shopify", names["order"], [OrderLine("L1", sku, 2)], currency="EUR", total="20.00"
    )
    order = placed.body["order_id"]
    ledger.authorize_payment(order)
    ledger.fulfill_order(order, "F1", [FulfillmentLine("L1", 2)])
    ledger.return_order(order, "R1", [ReturnLine("L1", 1, "damaged")])
    ledger.refund_order(order, "RF1", "10.00", "EUR", [{"line_id": "L1", "quantity": 1}])
    # A refund before anything shipped books at the location holding the order's stock.
    second = ledger.place_order(
        "shopify", names["order"] + "-2", [OrderLine("L1", sku, 1)], currency="EUR", total="9.00"
    ).body["order_id"]
    ledger.refund_order(second, "RF2", "9.00")
    ledger.cancel_order(second)
    # The till's local date is the posting date, whatever the date in UTC.
    ledger.record_pos_transaction(
        "T1", st, "2024-05-01T23:30:00-04:00", [PosLine(sku, 2), PosLine(sku, -1, "restock")]
    )
    ledger.count(sku, st, 5)  # 10 - 2 + 1 = 9 on hand: -4
    ledger.count(sku, st, 5)  # changes nothing: posts nothing
    ledger.dispatch_transfer("TR1", wh, st, [SkuQuantity(sku, 3)])
    ledger.receive_transfer("TR1", [SkuQuantity(sku, 2)])
    ledger.adjust(sku, wh, -1, "lost")
    ledger.mark_damaged(sku, wh, 1)
    ledger.write_off_damage(sku, wh, 1, "broken")
    ledger.set_safety_stock(sku, st, 1)

    relay.start()
    wait_until(lambda: caught_up(ledger_url, ERP_RELAY), "the relay to publish everything")
    received = postings_at(nats_url, start, {wh, st})

    shopify = {"channel": "shopify", "order_id": order, "external_order_id": names["order"]}
    expected: list[tuple[str, str | None, int, dict[str, Any]]] = [
        ("GOODS_RECEIPT", wh, 10, {"document": "PO-1"}),
        ("GOODS_RECEIPT", st, 10, {}),
        ("GOODS_ISSUE", wh, -2, {**shopify, "fulfillment_id": "F1"}),
        ("CUSTOMER_RETURN", wh, 1, {**shopify, "return_id": "R1"}),
        ("SCRAP", wh, -1, {"reason": "return scrapped"}),
        ("REFUND", wh, 1, {**shopify, "refund_id": "RF1"}),
        (
            "REFUND",
            wh,
            0,
            {
                "channel": "shopify",
                "order_id": second,
                "external_order_id": names["order"] + "-2",
                "refund_id": "RF2",
            },
        ),
        ("POS_SALE", st, -2, {"channel": "pos", "pos_transaction_id": "T1"}),
        (
            "CUSTOMER_RETURN",
            st,
            1,
            {"channel": "pos", "pos_transaction_id": "T1", "return_id": "T1"},
        ),
        ("INVENTORY_ADJUSTMENT", st, -4, {"reason": "stock count: 5 on hand"}),
        ("TRANSFER_OUT", wh, -3, {"transfer_id": "TR1"}),
        ("TRANSFER_IN", st, 2, {"transfer_id": "TR1"}),
        ("INVENTORY_ADJUSTMENT", wh, -1, {"reason": "lost"}),
        ("SCRAP", wh, -1, {"reason": "broken"}),
    ]
    assert [(body["kind"], body["location"]) for _, body in received] == [
        (kind, location) for kind, location, _, _ in expected
    ]
    events = _event_ids_by_position(ledger_url)
    for (message, body), (kind, _, quantity, reference) in zip(received, expected, strict=True):
        assert body["schema"] == SCHEMA
        assert message.subject == f"stockledger.erp.postings.{kind.lower()}"
        position = int(message.headers["Stockledger-Position"])
        assert body["source_event_ids"] == [events[position]]
        assert body["posting_id"] == posting_id_for(UUID(events[position]))
        assert message.headers["Nats-Msg-Id"] == body["posting_id"]
        assert body["reference"] == reference
        if kind == "REFUND":
            assert body["lines"] == ([{"sku": sku, "quantity": quantity}] if quantity else [])
        else:
            assert body["lines"] == [{"sku": sku, "quantity": quantity}]
        assert body["posting_date"] == body["occurred_at"][:10]

    by_kind = {body["kind"]: body for _, body in received}
    assert by_kind["REFUND"]["amount"] == {"value": "9.00", "currency": "EUR"}
    assert received[5][1]["amount"] == {"value": "10.00", "currency": "EUR"}
    assert "amount" not in by_kind["GOODS_ISSUE"]
    sale = by_kind["POS_SALE"]
    assert sale["occurred_at"] == "2024-05-01T23:30:00-04:00"
    assert sale["posting_date"] == "2024-05-01"


def test_reservations_payments_and_cancellations_post_nothing(
    ledger_url: str, ledger: Ledger, nats_url: str, relay: RelayWorker, names: dict[str, str]
) -> None:
    wh, sku = names["wh"], names["sku"]
    ledger.register_location(wh, name="Warehouse", kind="warehouse", channels=["shopify"])
    start = asyncio.run(_erp_last(nats_url))
    ledger.receive(sku, wh, 5)
    order = ledger.place_order("shopify", names["order"], [OrderLine("L1", sku, 2)]).body[
        "order_id"
    ]
    ledger.authorize_payment(order)
    ledger.cancel_order(order)
    ledger.set_safety_stock(sku, wh, 2)
    ledger.mark_damaged(sku, wh, 1)

    relay.start()
    wait_until(lambda: caught_up(ledger_url, ERP_RELAY), "the relay to pass the events")
    kinds = [body["kind"] for _, body in postings_at(nats_url, start, {wh})]
    assert kinds == ["GOODS_RECEIPT"]  # and nothing for the order, the safety stock, the damage


def test_backlog_counts_unpublished_postings_until_the_relay_drains_them(
    ledger_url: str, ledger: Ledger, nats_url: str, names: dict[str, str]
) -> None:
    wh, sku = names["wh"], names["sku"]
    ledger.register_location(wh, name="Warehouse", kind="warehouse", channels=["shopify"])
    for _ in range(3):
        ledger.receive(sku, wh, 1)
    with psycopg.connect(ledger_url, autocommit=True) as connection:
        before = relay_backlog(connection)
    assert before[ERP_RELAY].pending == 3
    assert before[ERP_RELAY].position == 0
    assert before[ERP_RELAY].behind == before[ERP_RELAY].head > 0
    assert before[EVENT_RELAY].pending >= 3 + 3  # the receipts, plus the location and positions

    result = asyncio.run(
        drain_relay(ledger_url, nats_url, ledger.mapper, ErpPostingSource(ledger.mapper))
    )
    assert result.published == 3
    with psycopg.connect(ledger_url, autocommit=True) as connection:
        after = relay_backlog(connection)
    assert after[ERP_RELAY].pending == 0
    assert after[ERP_RELAY].behind == 0
    assert after[EVENT_RELAY].pending == before[EVENT_RELAY].pending  # that relay did not run


async def _stream_configs(url: str, settings: StreamSettings | None) -> dict[str, Any]:
    client = await nats.connect(url)
    try:
        js = client.jetstream()
        await ensure_streams(js, settings)
        return {name: (await js.stream_info(name)).config for name in (ERP_STREAM, INBOUND_STREAM)}
    finally:
        await client.close()


def test_streams_are_created_and_updated_idempotently_with_file_storage(
    embedded_nats_factory: Callable[..., EmbeddedNats], tmp_path: Path
) -> None:
    server = embedded_nats_factory()
    first = asyncio.run(_stream_configs(server.url, None))
    again = asyncio.run(_stream_configs(server.url, None))
    assert first[ERP_STREAM].storage == StorageType.FILE
    assert first[ERP_STREAM].duplicate_window == pytest.approx(2 * 3600)
    assert again[ERP_STREAM].duplicate_window == pytest.approx(2 * 3600)
    assert first[INBOUND_STREAM].subjects == ["stockledger.inbound.>"]

    shorter = StreamSettings.from_env({"STOCKLEDGER_NATS_DUPLICATE_WINDOW": "90m"})
    assert shorter.duplicate_window == 5400
    updated = asyncio.run(_stream_configs(server.url, shorter))
    assert updated[ERP_STREAM].duplicate_window == pytest.approx(5400)


class CountingConnection:
    """Passes queries to a connection and counts them."""

    def __init__(self, connection: psycopg.AsyncConnection[Any]) -> None:
        self.connection = connection
        self.queries = 0

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        self.queries += 1
        return await self.connection.execute(*args, **kwargs)


async def _postings_twice(url: str, mapper: Any) -> tuple[list[Any], int, int]:
    """The postings of the whole log, computed twice with one lookup, and the queries each took."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as connection:
        cursor = await connection.execute(
            "SELECT originator_id, originator_version, topic, state FROM ledger_events "
            "ORDER BY notification_id"
        )
        events = [
            mapper.to_domain_event(StoredEvent(row[0], row[1], row[2], bytes(row[3])))
            for row in await cursor.fetchall()
        ]
        lookup = OrderLookup(mapper)
        counting = CountingConnection(connection)
        first = list(await postings_for(counting, lookup, events))  # type: ignore[arg-type]
        queries = counting.queries
        again = list(await postings_for(counting, lookup, events))  # type: ignore[arg-type]
        assert [p.to_json() for p in again if p] == [p.to_json() for p in first if p]
        return first, queries, counting.queries - queries


def test_the_orders_a_batch_ships_are_read_in_one_query_then_from_the_cache(
    ledger_url: str, ledger: Ledger, names: dict[str, str]
) -> None:
    wh, sku = names["wh"], names["sku"]
    ledger.register_location(wh, name="Warehouse", kind="warehouse", channels=["shopify"])
    ledger.receive(sku, wh, 10)
    for number in range(5):
        order = ledger.place_order(
            "shopify", f"{names['order']}-{number}", [OrderLine("1", sku, 1)]
        )
        order_id = order.body["order_id"]
        ledger.authorize_payment(order_id)
        ledger.fulfill_order(order_id, f"F{number}", [FulfillmentLine("1", 1)])

    postings, first, second = asyncio.run(_postings_twice(ledger_url, ledger.mapper))
    issues = [p for p in postings if p is not None and p.kind == "GOODS_ISSUE"]
    assert [p.reference.external_order_id for p in issues] == [
        f"{names['order']}-{number}" for number in range(5)
    ]
    assert all(p.reference.channel == "shopify" for p in issues)
    assert (first, second) == (1, 0), "one query for the five orders, then none"
