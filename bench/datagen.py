"""Bulk event logs for the large parts, written fast and still made of real events.

Events are produced by the domain's own aggregates (so every one is valid and in version order),
encoded by the ledger's own mapper, and written with binary ``COPY`` in large transactions, by up
to two processes at once (each owns its positions, so per-aggregate order holds). Nothing here goes
through the application service: millions of commands would take too long to set up a benchmark.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from eventsourcing.domain import Snapshot
from eventsourcing.persistence import StoredEvent

from bench.common import CHANNEL, STORE, WAREHOUSE, sku_name
from domain.base import CommandMetadata, recording_metadata
from domain.keys import order_id, position_id
from domain.order import Order
from domain.stock import StockPosition

CHUNK = 25_000


def ledger_mapper() -> Any:
    """The ledger's mapper (the same transcoder as the service), without a database."""
    from adapters.memory import MEMORY_ENV
    from domain.service import Ledger

    ledger = Ledger(env=dict(MEMORY_ENV))
    mapper = ledger.mapper
    ledger.close()
    return mapper


def copy_rows(conn: psycopg.Connection[Any], table: str, rows: Iterable[StoredEvent]) -> int:
    count = 0
    with (
        conn.cursor() as cursor,
        cursor.copy(
            f"COPY {table} (originator_id, originator_version, topic, state) "
            "FROM STDIN (FORMAT BINARY)"
        ) as copy,
    ):
        copy.set_types(["uuid", "int8", "text", "bytea"])
        for row in rows:
            copy.write_row((row.originator_id, row.originator_version, row.topic, row.state))
            count += 1
    return count


class _Writer:
    """Encodes pending events and copies them in chunks, one transaction per chunk."""

    def __init__(self, url: str, mapper: Any) -> None:
        self.conn = psycopg.connect(url)
        self.mapper = mapper
        self.pending: list[StoredEvent] = []
        self.written = 0
        self.encode_seconds = 0.0
        self.copy_seconds = 0.0

    def add(self, events: Sequence[Any]) -> None:
        began = time.perf_counter()
        self.pending.extend(self.mapper.to_stored_event(event) for event in events)
        self.encode_seconds += time.perf_counter() - began
        if len(self.pending) >= CHUNK:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        began = time.perf_counter()
        self.written += copy_rows(self.conn, "ledger_events", self.pending)
        self.conn.commit()
        self.copy_seconds += time.perf_counter() - began
        self.pending = []

    def close(self) -> None:
        self.flush()
        self.conn.close()


def _metadata(rng: random.Random) -> CommandMetadata:
    return CommandMetadata(f"{rng.getrandbits(128):032x}", f"key-{rng.getrandbits(64):016x}")


def _open(sku: str, location: str, quantity: int) -> StockPosition:
    position: StockPosition = StockPosition.open(
        StockPosition.Opened, position_id(sku, location), sku=sku, location=location
    )
    position.receive(quantity, "opening stock")
    return position


def _random_step(position: StockPosition, rng: random.Random) -> None:
    """One plausible movement of a position (reservations, payments, shipments, sales...)."""
    order = f"{rng.getrandbits(128):032x}"
    q = rng.randint(1, 3)
    r = rng.random()
    if r < 0.35 and position.available_to_sell >= q:
        position.reserve(order, "1", q)
    elif r < 0.53 and position.reserved >= 1:
        position.commit(order, min(q, position.reserved))
    elif r < 0.68 and position.committed >= 1:
        position.ship(order, f"F-{order[:8]}", min(q, position.committed), 0)
    elif r < 0.74 and position.reserved >= 1:
        position.release(order, min(q, position.reserved), "cancelled", committed=False)
    elif r < 0.84 and position.available >= q:
        position.sell(f"T-{order[:12]}", q, None)
    elif r < 0.94:
        position.receive(rng.randint(10, 100), f"PO-{order[:6]}")
    elif r < 0.98 and position.available >= q:
        position.adjust(-q, "cycle count correction")
    else:
        position.count(position.on_hand + rng.randint(-1, 3) if position.on_hand > 3 else 10)


# --- shards (run in worker processes) ---------------------------------------------------------
@dataclass(frozen=True)
class ShardSpec:
    kind: str  # "mixed" or "positions"
    url: str
    seed: int
    first_sku: int  # inclusive
    last_sku: int  # inclusive
    events: int = 0  # for "mixed": how many events this shard writes
    first_id: int = 0  # for "positions": the notification id of the shard's first event


def _run_shard(spec: ShardSpec) -> dict[str, float]:
    mapper = ledger_mapper()
    rng = random.Random(spec.seed)
    writer = _Writer(spec.url, mapper)
    began = time.perf_counter()
    if spec.kind == "positions":
        # One position per SKU at the warehouse: Opened, Received; with explicit notification
        # ids, so the view rows written beside them can say which event they reflect.
        _positions_shard(spec, mapper, rng)
        return {
            "events": 2 * (spec.last_sku - spec.first_sku + 1),
            "seconds": time.perf_counter() - began,
        }
    if spec.kind == "mixed":
        numbers = list(range(spec.first_sku, spec.last_sku + 1))
        positions: dict[int, StockPosition] = {}
        produced = 0
        while produced < spec.events:
            number = rng.choice(numbers)
            with recording_metadata(_metadata(rng)):
                position = positions.get(number)
                if position is None:
                    position = positions[number] = _open(sku_name(number), WAREHOUSE, 500)
                else:
                    _random_step(position, rng)
            events = position.collect_events()
            produced += len(events)
            writer.add(events)
    else:
        raise ValueError(spec.kind)
    writer.close()
    return {
        "events": writer.written,
        "seconds": time.perf_counter() - began,
        "encode_seconds": writer.encode_seconds,
        "copy_seconds": writer.copy_seconds,
    }


VIEW_COLUMNS = (
    "position_id",
    "sku",
    "location",
    "available",
    "reserved",
    "committed",
    "damaged",
    "returned",
    "in_transit",
    "safety_stock",
    "discrepancy",
    "version",
    "updated_position",
)
VIEW_TYPES = ["uuid", "text", "text", *["int8"] * 10]


def _positions_shard(spec: ShardSpec, mapper: Any, rng: random.Random) -> None:
    conn = psycopg.connect(spec.url)
    next_id = spec.first_id
    numbers = range(spec.first_sku, spec.last_sku + 1)
    for start in range(0, len(numbers), CHUNK // 2):
        events: list[tuple[Any, ...]] = []
        rows: list[tuple[Any, ...]] = []
        for number in numbers[start : start + CHUNK // 2]:
            with recording_metadata(_metadata(rng)):
                position = _open(sku_name(number), WAREHOUSE, rng.randint(1, 500))
            for event in position.collect_events():
                stored = mapper.to_stored_event(event)
                events.append(
                    (
                        next_id,
                        stored.originator_id,
                        stored.originator_version,
                        stored.topic,
                        stored.state,
                    )
                )
                next_id += 1
            rows.append(
                (
                    position.id,
                    position.sku,
                    position.location,
                    position.available,
                    position.reserved,
                    position.committed,
                    position.damaged,
                    position.returned,
                    position.in_transit,
                    position.safety_stock,
                    position.discrepancy,
                    position.version,
                    next_id - 1,
                )
            )
        with conn.cursor() as cursor:
            with cursor.copy(
                "COPY ledger_events (notification_id, originator_id, originator_version, topic, "
                "state) FROM STDIN (FORMAT BINARY)"
            ) as copy:
                copy.set_types(["int8", "uuid", "int8", "text", "bytea"])
                for row in events:
                    copy.write_row(row)
            with cursor.copy(
                f"COPY view_availability ({', '.join(VIEW_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
            ) as copy:
                copy.set_types(VIEW_TYPES)
                for row in rows:
                    copy.write_row(row)
        conn.commit()
    conn.close()


def _run_shards(specs: list[ShardSpec]) -> dict[str, Any]:
    began = time.perf_counter()
    if len(specs) == 1:
        results = [_run_shard(specs[0])]
    else:
        with multiprocessing.get_context("spawn").Pool(len(specs)) as pool:
            results = pool.map(_run_shard, specs)
    return {
        "events": sum(int(r["events"]) for r in results),
        "seconds": time.perf_counter() - began,
        "shards": results,
    }


def _analyze(url: str) -> None:
    """Statistics for the planner, and the bulk load written out before anything is measured:
    PostgreSQL's dirty buffers (a checkpoint) and the system's dirty pages (sync). Left to the
    background, their write-out can overlap the measurement: one run's reads on the 1,000,000
    positions just loaded had a p99 of 131 ms (max 416 ms), the others' 18-21 ms."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE ledger_events")
        conn.execute("CHECKPOINT")
    os.sync()


def _split(first: int, last: int, parts: int) -> list[tuple[int, int]]:
    size = (last - first + 1 + parts - 1) // parts
    return [(a, min(a + size - 1, last)) for a in range(first, last + 1, size)]


def mixed_stock_log(
    url: str, events: int, positions: int, *, workers: int = 2, seed: int = 7
) -> dict[str, Any]:
    """About ``events`` stock events over ``positions`` positions, interleaved across positions."""
    ranges = _split(1, positions, workers)
    per_shard = events // len(ranges)
    specs = [
        ShardSpec(
            "mixed",
            url,
            seed + i,
            a,
            b,
            per_shard + (events - per_shard * len(ranges) if i == 0 else 0),
        )
        for i, (a, b) in enumerate(ranges)
    ]
    stats = _run_shards(specs)
    _analyze(url)
    return stats


def position_log(url: str, positions: int, *, workers: int = 2, seed: int = 11) -> dict[str, Any]:
    """``positions`` positions (SKU-0000001... at the warehouse), each opened and received, and
    the availability view's rows for them written beside the events, with every view and relay
    recorded as caught up. (Part 4 measures the projection itself; at its speed, projecting
    millions of events would dominate the benchmark's run time. ``verify_view`` checks, on a
    small log, that the rows written are the ones the projection makes.)"""
    base = head(url)
    specs = []
    for i, (a, b) in enumerate(_split(1, positions, workers)):
        specs.append(ShardSpec("positions", url, seed + i, a, b, first_id=base + 1 + 2 * (a - 1)))
    stats = _run_shards(specs)
    last = base + 2 * positions
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "SELECT setval(pg_get_serial_sequence('ledger_events', 'notification_id'), %s)", (last,)
        )
        for name in ("availability", "orders", "discrepancies"):
            conn.execute(
                "INSERT INTO projection_positions (name, position) VALUES (%s, %s) "
                "ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position",
                (name, last),
            )
        conn.execute("VACUUM ANALYZE view_availability")
    _analyze(url)
    return stats


def verify_view(url: str) -> list[str]:
    """Rebuilds the availability view with the product's projection and compares it with the rows
    written directly; returns the differences (empty when equal)."""
    from projections.availability import AvailabilityProjection
    from projections.base import rebuild

    columns = ", ".join(VIEW_COLUMNS)
    with psycopg.connect(url) as conn:
        written = conn.execute(
            f"SELECT {columns} FROM view_availability ORDER BY position_id"
        ).fetchall()
    rebuild(url, ledger_mapper(), AvailabilityProjection())
    with psycopg.connect(url) as conn:
        projected = conn.execute(
            f"SELECT {columns} FROM view_availability ORDER BY position_id"
        ).fetchall()
    if len(written) != len(projected):
        return [f"{len(written)} rows written, {len(projected)} projected"]
    return [f"{a} != {b}" for a, b in zip(written, projected, strict=True) if a != b][:5]


def register_locations(url: str) -> None:
    """The two locations, through the service (there are only two)."""
    from adapters.postgres import ledger_env
    from domain.service import Ledger

    ledger = Ledger(env=ledger_env(url))
    try:
        ledger.register_location(
            WAREHOUSE, name="Warehouse", kind="warehouse", channels=[CHANNEL, "pos"], priority=10
        )
        ledger.register_location(
            STORE, name="Store", kind="store", channels=[CHANNEL, "pos"], priority=20
        )
    finally:
        ledger.close()


# --- one hot position ------------------------------------------------------------------------
def hot_history(
    url: str, sku: str, location: str, events: int, *, snapshot_interval: int = 200, seed: int = 5
) -> dict[str, Any]:
    """One position with ``events`` events, snapshotted every ``snapshot_interval`` versions as
    the service's writer would have."""
    mapper = ledger_mapper()
    rng = random.Random(seed)
    writer = _Writer(url, mapper)
    snapshots: list[StoredEvent] = []
    began = time.perf_counter()
    with recording_metadata(_metadata(rng)):
        position = _open(sku, location, 10_000_000)
    writer.add(position.collect_events())
    while position.version < events:
        with recording_metadata(_metadata(rng)):
            before = position.version
            _random_step(position, rng)
        writer.add(position.collect_events())
        if position.version // snapshot_interval > before // snapshot_interval:
            snapshots.append(mapper.to_stored_event(Snapshot.take(position)))
    writer.close()
    with psycopg.connect(url) as conn:
        copy_rows(conn, "ledger_snapshots", snapshots)
    _analyze(url)
    return {
        "events": position.version,
        "snapshots": len(snapshots),
        "seconds": time.perf_counter() - began,
        "buckets": position.buckets(),
    }


# --- a log for the ERP relay -----------------------------------------------------------------
def posting_log(url: str, postings: int, *, skus: int = 2000, seed: int = 3) -> dict[str, Any]:
    """A log with exactly ``postings`` posting-worthy events: receipts, POS sales and returns,
    adjustments, and shipments of orders placed (and so looked up) in the same log."""
    mapper = ledger_mapper()
    rng = random.Random(seed)
    writer = _Writer(url, mapper)
    began = time.perf_counter()
    positions: dict[int, StockPosition] = {}
    kinds: dict[str, int] = {}
    made = 0
    order_number = 0
    while made < postings:
        number = rng.randint(1, skus)
        sku = sku_name(number)
        with recording_metadata(_metadata(rng)):
            position = positions.get(number)
            if position is None:
                position = positions[number] = _open(sku, WAREHOUSE, 1_000_000)
                kind = "GOODS_RECEIPT"
            else:
                r = rng.random()
                if r < 0.25:
                    # An order placed, reserved, paid and shipped: GOODS_ISSUE.
                    order_number += 1
                    external = f"bench-{order_number}"
                    the_id = order_id(CHANNEL, external)
                    order = Order.open(
                        Order.Placed,
                        the_id,
                        channel=CHANNEL,
                        external_id=external,
                        lines=[{"line_id": "1", "sku": sku, "quantity": 1, "location": None}],
                        currency="EUR",
                        total="10.00",
                        allow_backorder=False,
                    )
                    writer.add(order.collect_events())
                    position.reserve(str(the_id), "1", 1)
                    position.commit(str(the_id), 1)
                    position.ship(str(the_id), f"F-{order_number}", 1, 0)
                    kind = "GOODS_ISSUE"
                elif r < 0.6:
                    position.sell(f"T-{rng.getrandbits(48):012x}", rng.randint(1, 3), None)
                    kind = "POS_SALE"
                elif r < 0.75:
                    position.receive(rng.randint(10, 100), f"PO-{rng.getrandbits(32):08x}")
                    kind = "GOODS_RECEIPT"
                elif r < 0.9:
                    position.adjust(rng.choice((-1, 1, 2)), "cycle count correction")
                    kind = "INVENTORY_ADJUSTMENT"
                else:
                    transaction = f"T-{rng.getrandbits(48):012x}"
                    position.receive_return(1, transaction, order=None, transaction=transaction)
                    kind = "CUSTOMER_RETURN"
        writer.add(position.collect_events())
        kinds[kind] = kinds.get(kind, 0) + 1
        made += 1
    writer.close()
    _analyze(url)
    return {
        "postings": made,
        "kinds": kinds,
        "events": writer.written,
        "seconds": time.perf_counter() - began,
    }


def head(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT coalesce(max(notification_id), 0) FROM ledger_events").fetchone()
    return int(row[0]) if row else 0
