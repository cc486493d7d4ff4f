"""A hot position with a long history loads from a snapshot plus a short tail, not from scratch.

20,000 receipts go to one position from many threads; the writer snapshots it every 200
versions. A new Ledger instance, with a cold cache, then reads the latest snapshot and only the
events after it, whether it loads the position to read it or to run a command on it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from uuid import UUID

import psycopg
import pytest
from eventsourcing.application import project_aggregate

from adapters.postgres import ledger_env
from domain.keys import position_id
from domain.service import Ledger, OrderLine
from domain.stock import StockPosition

RECEIPTS = 20_000
THREADS = 50
INTERVAL = 200
WAREHOUSE = "WH-1"
HOT_SKU = "HOT-1"


class CountingReads:
    """Counts the events a ledger's repository reads from the event store."""

    def __init__(self, ledger: Ledger) -> None:
        self.events_read = 0
        store = ledger.repository.event_store
        original = store.get

        def get(*args: Any, **kwargs: Any) -> Iterator[Any]:
            events = list(original(*args, **kwargs))
            self.events_read += len(events)
            return iter(events)

        store.get = get  # type: ignore[method-assign]


def _snapshot_rows(database_url: str, aggregate_id: UUID) -> tuple[int, int]:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT count(*), coalesce(max(originator_version), 0) FROM ledger_snapshots "
            "WHERE originator_id = %s",
            (aggregate_id,),
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def _ledger(database_url: str) -> Ledger:
    return Ledger(env=ledger_env(database_url, STOCKLEDGER_SNAPSHOT_INTERVAL=str(INTERVAL)))


@pytest.fixture
def hot_position(ledger_url: str) -> Iterator[UUID]:
    """A position with 20,000 receipts (version 20,001), written through one Ledger."""
    writer = _ledger(ledger_url)
    try:
        writer.register_location(WAREHOUSE, name="Warehouse", kind="warehouse", channels=["web"])
        writer.receive("COLD-1", WAREHOUSE, 1, reference="a short history")

        def receive_many(thread_no: int) -> None:
            for n in range(RECEIPTS // THREADS):
                writer.receive(HOT_SKU, WAREHOUSE, 1, reference=f"pallet-{thread_no}-{n}")

        began = time.perf_counter()
        with ThreadPoolExecutor(max_workers=THREADS) as pool:
            list(pool.map(receive_many, range(THREADS)))
        elapsed = time.perf_counter() - began
        stats = writer.committer.stats
        print(
            f"\n[hot aggregate] {RECEIPTS} receipts to one position from {THREADS} threads in "
            f"{elapsed:.2f}s ({RECEIPTS / elapsed:.0f} commands/s, {stats['batches']} batches)"
        )
    finally:
        writer.close()
    return position_id(HOT_SKU, WAREHOUSE)


def test_the_writer_snapshots_the_hot_position_every_200_versions(
    hot_position: UUID, ledger_url: str
) -> None:
    rows, latest = _snapshot_rows(ledger_url, hot_position)
    head = RECEIPTS + 1  # Opened, then one Received per receipt
    print(f"[hot aggregate] snapshots={rows} latest snapshot version={latest} head={head}")
    assert 90 <= rows <= head // INTERVAL
    assert head - INTERVAL < latest <= head


def test_a_cold_ledger_reads_the_latest_snapshot_and_a_short_tail(
    hot_position: UUID, ledger_url: str
) -> None:
    fresh = _ledger(ledger_url)
    try:
        snapshots = list(fresh.snapshots.get(hot_position, desc=True, limit=1))
        assert snapshots, "no snapshot of the hot position"
        snapshot_version = snapshots[0].originator_version
        reads = CountingReads(fresh)

        began = time.perf_counter()
        position: StockPosition = fresh.repository.get(hot_position)
        from_snapshot = time.perf_counter() - began

        tail = reads.events_read
        assert position.version == RECEIPTS + 1
        assert position.available == RECEIPTS
        assert tail == position.version - snapshot_version
        assert tail < INTERVAL

        began = time.perf_counter()
        every_event = list(fresh.events.get(hot_position))
        replayed = project_aggregate(None, every_event)
        from_scratch = time.perf_counter() - began
        assert replayed is not None
        assert replayed.version == position.version
        print(
            f"[hot aggregate] cold load: snapshot v{snapshot_version} + {tail} "
            f"events in {from_snapshot * 1000:.1f} ms; all {len(every_event)} events in "
            f"{from_scratch * 1000:.1f} ms"
        )
        assert from_snapshot < from_scratch / 3
    finally:
        fresh.close()


def test_a_cold_ledger_runs_a_command_on_the_hot_position_from_its_snapshot(
    hot_position: UUID, ledger_url: str
) -> None:
    fresh = _ledger(ledger_url)
    try:
        reads = CountingReads(fresh)

        placed = fresh.place_order("web", "hot-order", [OrderLine("1", HOT_SKU, 3)])

        assert placed.body["lines"][0]["allocations"] == [{"location": WAREHOUSE, "quantity": 3}]
        position = fresh.repository.get(hot_position)
        assert (position.available, position.reserved) == (RECEIPTS - 3, 3)
        # The command's load and the read after it, each a snapshot and its tail.
        assert reads.events_read < 2 * INTERVAL + 2
    finally:
        fresh.close()
