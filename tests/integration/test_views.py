"""The views: exactly-once tracking, live updates, and rebuilds beside the live view."""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest
from eventsourcing.utils import get_topic
from psycopg.rows import dict_row

from adapters.postgres import ledger_env
from domain.errors import DomainError
from domain.service import FulfillmentLine, Ledger, OrderLine, PosLine, ReturnLine, SkuQuantity
from domain.stock import StockPosition
from projections.availability import STOCK_EVENTS, AvailabilityProjection, sku_availability
from projections.base import ProjectionProcessor, ProjectionWorker, StoredFields, rebuild
from projections.registry import all_views

SKUS = [f"SKU-{n:03d}" for n in range(40)]
LOCATIONS = {"WH1": ["shopify"], "WH2": ["shopify"], "STORE1": ["pos"]}


def _register(ledger: Ledger) -> None:
    for priority, (code, channels) in enumerate(LOCATIONS.items()):
        kind = "store" if code.startswith("STORE") else "warehouse"
        ledger.register_location(code, name=code, kind=kind, channels=channels, priority=priority)


def _mixed_workload(ledger: Ledger, target_events: int, seed: int = 7) -> None:
    """Receipts, orders (paid, shipped, returned, cancelled), POS sales, adjustments, transfers."""
    rng = random.Random(seed)
    _register(ledger)
    for sku in SKUS:
        for code in LOCATIONS:
            ledger.receive(sku, code, 400, reference="PO-1")

    def one(n: int) -> None:
        r = random.Random(seed * 100_000 + n)
        sku = r.choice(SKUS)
        try:
            kind = r.random()
            if kind < 0.55:
                placed = ledger.place_order(
                    "shopify", f"o-{n}", [OrderLine("1", sku, r.randint(1, 3))]
                )
                order_id = placed.body["order_id"]
                if r.random() < 0.8:
                    ledger.authorize_payment(order_id)
                    if r.random() < 0.7:
                        ledger.fulfill_order(order_id, f"f-{n}", [FulfillmentLine("1", 1)])
                        if r.random() < 0.2:
                            ledger.return_order(order_id, f"r-{n}", [ReturnLine("1", 1, "restock")])
                elif r.random() < 0.5:
                    ledger.cancel_order(order_id)
            elif kind < 0.85:
                ledger.record_pos_transaction(
                    f"t-{n}", "STORE1", None, [PosLine(sku, r.choice([1, 1, 2, -1]))]
                )
            elif kind < 0.95:
                ledger.adjust(sku, r.choice(list(LOCATIONS)), r.choice([-1, 2]), "cycle")
            else:
                ledger.dispatch_transfer(f"tr-{n}", "WH1", "STORE1", [SkuQuantity(sku, 1)])
                ledger.receive_transfer(f"tr-{n}", [SkuQuantity(sku, 1)])
        except DomainError:
            pass

    n = 0
    with ThreadPoolExecutor(max_workers=16) as pool:
        while (ledger.recorder.max_notification_id() or 0) < target_events:
            list(pool.map(one, range(n, n + 400)))
            n += 400
    rng.random()


def _rows(url: str, table: str, key: str) -> list[dict[str, Any]]:
    with psycopg.connect(url, row_factory=dict_row) as connection:
        return connection.execute(f"SELECT * FROM {table} ORDER BY {key}").fetchall()  # type: ignore[arg-type]


def _catch_up(url: str, ledger: Ledger) -> None:
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as connection:
        for view in all_views(ledger.mapper):
            processor = ProjectionProcessor(connection, ledger.mapper, view, batch_size=1000)
            processor.ensure_tracking()
            processor.catch_up()


def test_rebuilt_views_equal_the_live_ones_row_for_row(ledger: Ledger, ledger_url: str) -> None:
    _mixed_workload(ledger, 10_000)
    _catch_up(ledger_url, ledger)
    tables = {
        "view_availability": "position_id",
        "view_locations": "code",
        "view_orders": "order_id",
        "view_discrepancies": "position_id",
    }
    live = {name: _rows(ledger_url, name, key) for name, key in tables.items()}
    for view in all_views(ledger.mapper):
        report = rebuild(ledger_url, ledger.mapper, view, batch_size=2000)
        print(f"rebuild {report.name}: {report.events} events, {report.events_per_second:.0f}/s")
    rebuilt = {name: _rows(ledger_url, name, key) for name, key in tables.items()}
    for name in tables:
        assert rebuilt[name] == live[name], name
    assert len(live["view_orders"]) > 1000


def test_views_match_the_aggregates_they_come_from(ledger: Ledger, ledger_url: str) -> None:
    _mixed_workload(ledger, 3_000, seed=11)
    _catch_up(ledger_url, ledger)
    for row in _rows(ledger_url, "view_availability", "position_id"):
        position = ledger.get_position(row["sku"], row["location"])
        assert position is not None
        for bucket in ("available", "reserved", "committed", "damaged", "returned", "in_transit"):
            assert row[bucket] == getattr(position, bucket), (row["sku"], row["location"], bucket)
    for row in _rows(ledger_url, "view_orders", "order_id"):
        order = ledger.get_order(row["order_id"])
        assert order is not None and row["status"] == order.status


def test_reads_keep_answering_correct_figures_during_a_rebuild(
    ledger: Ledger, ledger_url: str
) -> None:
    _mixed_workload(ledger, 10_000, seed=3)
    worker = ProjectionWorker(ledger_url, ledger.mapper, AvailabilityProjection(), idle_wait=0.05)
    worker.start()
    try:
        deadline = time.monotonic() + 30
        head = ledger.recorder.max_notification_id() or 0
        while _position(ledger_url, "availability") < head:
            assert time.monotonic() < deadline, "live view did not catch up"
            time.sleep(0.05)
        sku = SKUS[0]
        expected = {
            code: p.available
            for code in LOCATIONS
            if (p := ledger.get_position(sku, code)) is not None
        }
        answers: list[dict[str, int]] = []
        stop = threading.Event()

        def read_continuously() -> None:
            async def loop() -> None:
                async with await psycopg.AsyncConnection.connect(
                    ledger_url, autocommit=True, row_factory=dict_row
                ) as connection:
                    while not stop.is_set():
                        view = await sku_availability(connection, sku)
                        answers.append({r["location"]: r["available"] for r in view["locations"]})

            asyncio.run(loop())

        reader = threading.Thread(target=read_continuously)
        reader.start()
        try:
            report = rebuild(ledger_url, ledger.mapper, AvailabilityProjection(), batch_size=1000)
        finally:
            stop.set()
            reader.join(10)
        assert report.events > 4_000
        assert len(answers) > 10
        assert all(answer == expected for answer in answers)
        # The live worker carries on after the swap.
        ledger.receive(sku, "WH1", 5)
        deadline = time.monotonic() + 10
        while True:
            rows = _rows(ledger_url, "view_availability", "position_id")
            now = {r["location"]: r["available"] for r in rows if r["sku"] == sku}
            if now.get("WH1") == expected["WH1"] + 5:
                break
            assert time.monotonic() < deadline, "live view stopped after the swap"
            time.sleep(0.05)
    finally:
        worker.stop()


def _position(url: str, name: str) -> int:
    with psycopg.connect(url, row_factory=dict_row) as connection:
        row = connection.execute(
            "SELECT position FROM projection_positions WHERE name = %s", (name,)
        ).fetchone()
        return int(row["position"]) if row else 0


@pytest.mark.parametrize("batch_size", [1, 7])
def test_a_view_counts_each_event_once_whatever_the_batch_size(
    ledger: Ledger, ledger_url: str, batch_size: int
) -> None:
    _register(ledger)
    for n in range(30):
        ledger.receive("A", "WH1", 1, reference=f"r{n}")
    with psycopg.connect(ledger_url, autocommit=True, row_factory=dict_row) as connection:
        processor = ProjectionProcessor(
            connection, ledger.mapper, AvailabilityProjection(), batch_size=batch_size
        )
        processor.ensure_tracking()
        processor.catch_up()
        processor.catch_up()
    rows = _rows(ledger_url, "view_availability", "position_id")
    assert [r["available"] for r in rows] == [30]


def _every_stock_event(ledger: Ledger) -> None:
    """At least one event of every kind the availability view reads, location changes included."""
    _register(ledger)
    ledger.register_location("WH2", name="Second", kind="warehouse", channels=["pos"], priority=9)
    ledger.receive("A", "WH1", 10, reference="PO-1")
    ledger.adjust("A", "WH1", -1, "cycle")
    ledger.set_safety_stock("A", "WH1", 2)
    ledger.mark_damaged("A", "WH1", 2)
    ledger.write_off_damage("A", "WH1", 1)
    paid = ledger.place_order("shopify", "o-1", [OrderLine("1", "A", 3, "WH1")]).body["order_id"]
    ledger.authorize_payment(paid)
    ledger.fulfill_order(paid, "f-1", [FulfillmentLine("1", 2)])
    ledger.return_order(paid, "r-1", [ReturnLine("1", 1, "restock")])
    ledger.cancel_order(paid)
    unpaid = ledger.place_order("shopify", "o-2", [OrderLine("1", "A", 1, "WH1")]).body["order_id"]
    ledger.cancel_order(unpaid)
    ledger.record_pos_transaction("t-1", "STORE1", None, [PosLine("A", -2)])
    ledger.dispose_return("A", "STORE1", 1, "restock")
    ledger.dispose_return("A", "STORE1", 1, "damaged")
    ledger.dispatch_transfer("tr-1", "WH1", "STORE1", [SkuQuantity("A", 2)])
    ledger.receive_transfer("tr-1", [SkuQuantity("A", 1)])
    # More sold than held: a discrepancy, cleared by the count.
    ledger.record_pos_transaction("t-2", "STORE1", None, [PosLine("A", 5)])
    ledger.count("A", "STORE1", 4)
    for n in range(20):
        ledger.receive(f"B-{n}", "WH2", n + 1)


@pytest.mark.parametrize("compressed", [False, True], ids=["plain-json", "compressed"])
def test_a_rebuild_in_memory_equals_the_live_view_for_every_stock_event(
    ledger_url: str, compressed: bool
) -> None:
    """The rebuild applies stored fields straight from JSON (or, when the store compresses, the
    mapper's events) to rows held in memory; the live view applies decoded events batch by batch.
    Both must give the same rows, whether the rebuild holds the whole view in memory or stops at
    its bound and carries on batch by batch."""
    overrides = (
        {"COMPRESSOR_TOPIC": "eventsourcing.compressor:ZlibCompressor"} if compressed else {}
    )
    ledger = Ledger(env=ledger_env(ledger_url, **overrides))
    try:
        # The ledger's own transcoder (orjson writing, eventsourcing's decoding) takes the
        # rebuild's fast path unless the store compresses.
        assert StoredFields(ledger.mapper).plain_json is not compressed
        _every_stock_event(ledger)
        head = ledger.recorder.max_notification_id() or 0
        with psycopg.connect(ledger_url, autocommit=True, row_factory=dict_row) as connection:
            recorded = [r["topic"] for r in connection.execute("SELECT topic FROM ledger_events")]
            processor = ProjectionProcessor(
                connection, ledger.mapper, AvailabilityProjection(), batch_size=7
            )
            processor.ensure_tracking()
            processor.catch_up()
        live = {
            "view_availability": _rows(ledger_url, "view_availability", "position_id"),
            "view_locations": _rows(ledger_url, "view_locations", "code"),
        }
        never_recorded = {StockPosition.Created}
        assert {get_topic(c) for c in STOCK_EVENTS if c not in never_recorded} <= set(recorded)
        viewed = sum(topic in AvailabilityProjection.topics() for topic in recorded)
        assert {r["code"]: r["name"] for r in live["view_locations"]}["WH2"] == "Second"
        for memory_rows in (100_000, 3):
            report = rebuild(
                ledger_url,
                ledger.mapper,
                AvailabilityProjection(),
                batch_size=10,
                memory_rows=memory_rows,
            )
            assert (report.events, report.position) == (viewed, head)
            assert _position(ledger_url, "availability") == head
            for name, key in (("view_availability", "position_id"), ("view_locations", "code")):
                assert _rows(ledger_url, name, key) == live[name], (name, memory_rows)
    finally:
        ledger.close()


class Interrupted(Exception):
    pass


def test_an_interrupted_rebuild_leaves_the_live_view_as_it_was(
    ledger: Ledger, ledger_url: str
) -> None:
    _every_stock_event(ledger)
    _catch_up(ledger_url, ledger)
    head = ledger.recorder.max_notification_id() or 0
    live = _rows(ledger_url, "view_availability", "position_id")

    def interrupt(count: int, reached: int) -> None:
        raise Interrupted

    with pytest.raises(Interrupted):
        rebuild(
            ledger_url, ledger.mapper, AvailabilityProjection(), batch_size=10, progress=interrupt
        )
    assert _rows(ledger_url, "view_availability", "position_id") == live
    assert _position(ledger_url, "availability") == head
    # The next rebuild starts afresh from the shadow tables the interrupted one left.
    report = rebuild(ledger_url, ledger.mapper, AvailabilityProjection(), batch_size=10)
    assert report.position == head
    assert _rows(ledger_url, "view_availability", "position_id") == live


class _FailingAfterItsWrites(AvailabilityProjection):
    """The availability view, but its first batch ends with a write the database refuses."""

    failed = False

    def process(self, cursor: Any, writes: Any, batch: Any, tables: Any) -> None:
        super().process(cursor, writes, batch, tables)
        if not self.failed:
            self.failed = True
            writes.execute("SELECT 1 / 0")


def test_a_batch_whose_write_fails_leaves_neither_rows_nor_position_and_the_next_carries_on(
    ledger: Ledger, ledger_url: str
) -> None:
    _register(ledger)
    for n in range(5):
        ledger.receive("A", "WH1", 1, reference=f"r{n}")
    with psycopg.connect(ledger_url, autocommit=True, row_factory=dict_row) as connection:
        processor = ProjectionProcessor(connection, ledger.mapper, _FailingAfterItsWrites())
        processor.ensure_tracking()
        with pytest.raises(psycopg.errors.DivisionByZero):
            processor.run_batch()
        assert _rows(ledger_url, "view_availability", "position_id") == []
        assert _position(ledger_url, "availability") == 0
        processor.catch_up()  # the same connection, its failed transaction rolled back
    assert [r["available"] for r in _rows(ledger_url, "view_availability", "position_id")] == [5]
    assert _position(ledger_url, "availability") == ledger.recorder.max_notification_id()


def test_views_keep_text_json_bytes_and_times_as_written(ledger: Ledger, ledger_url: str) -> None:
    name = "O'Brien's \\ Café \u2013 Zürich \"Nord\" 100%s %%"
    external_ids = {"shopify": "gid://shopify/Location/12", "erp": "store#7"}
    ledger.register_location(
        "WH1", name=name, kind="warehouse", channels=["shopify"], external_ids=external_ids
    )
    ledger.receive("A", "WH1", 3, reference="PO-1")
    placed = ledger.place_order("shopify", "o-1", [OrderLine("1", "A", 2)])
    _catch_up(ledger_url, ledger)
    [location] = _rows(ledger_url, "view_locations", "code")
    assert (location["name"], location["external_ids"]) == (name, external_ids)
    [row] = _rows(ledger_url, "view_orders", "order_id")
    order = ledger.get_order(placed.body["order_id"])
    assert order is not None
    assert row["body"] == json.loads(json.dumps(order.describe()))
    assert (row["placed_at"], row["version"]) == (order.created_on, order.version)


def test_a_worker_reads_on_from_where_its_view_was_moved_not_from_where_it_left_it(
    ledger: Ledger, ledger_url: str
) -> None:
    _register(ledger)
    ledger.receive("A", "WH1", 1, reference="r0")
    with psycopg.connect(ledger_url, autocommit=True, row_factory=dict_row) as connection:
        processor = ProjectionProcessor(connection, ledger.mapper, AvailabilityProjection())
        processor.ensure_tracking()
        processor.catch_up()
        # Moved behind its back, as a rebuild's swap moves it: emptied and set back to the start.
        connection.execute("DELETE FROM view_availability")
        connection.execute(
            "UPDATE projection_positions SET position = 0 WHERE name = 'availability'"
        )
        ledger.receive("A", "WH1", 2, reference="r1")
        processor.catch_up()
    assert [r["available"] for r in _rows(ledger_url, "view_availability", "position_id")] == [3]
