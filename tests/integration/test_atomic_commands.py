"""Commands are atomic on PostgreSQL (SPEC §2): all of a command's events commit, or none do.

A refused command leaves no row behind, even when it shares its batch's transaction with
commands that succeed; a batch that conflicts with another process is replayed, and each of its
callers still gets the answer it would have had alone.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from eventsourcing.application import AggregateNotFoundError

from adapters.postgres import ledger_env
from domain.base import CommandMetadata
from domain.committer import Command, Scope, WriteResult
from domain.errors import InsufficientStock
from domain.keys import order_id, position_id, transfer_id
from domain.service import CommandContext, Ledger, OrderLine, SkuQuantity

WAREHOUSE = "WH-1"
STORE = "STORE-1"


def _count(database_url: str, query: str, *params: object) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(query, params).fetchone()
    assert row is not None
    return int(row[0])


def _rows(database_url: str) -> tuple[int, int]:
    return (
        _count(database_url, "SELECT count(*) FROM ledger_events"),
        _count(database_url, "SELECT count(*) FROM idempotency_keys"),
    )


def _events_caused_by(database_url: str, key: str) -> int:
    return _count(
        database_url,
        "SELECT count(*) FROM ledger_events "
        "WHERE convert_from(state, 'UTF8')::jsonb ->> 'causation_id' = %s",
        key,
    )


def _setup(ledger: Ledger) -> None:
    ledger.register_location(WAREHOUSE, name="Warehouse", kind="warehouse", channels=["shopify"])
    ledger.register_location(STORE, name="Store", kind="store", channels=["pos"])


def _buckets(ledger: Ledger, sku: str, location: str) -> dict[str, int]:
    return dict(ledger.repository.get(position_id(sku, location)).buckets())


@contextmanager
def one_batch(ledger: Ledger, commands: int) -> Iterator[None]:
    """Holds the ledger's writer until ``commands`` more commands wait, so they share a batch.

    A command that only waits runs first, alone in its batch; the writer takes everything that
    queued meanwhile as its next batch.
    """
    running, release = threading.Event(), threading.Event()

    def wait(scope: Scope) -> dict[str, Any]:
        running.set()
        release.wait(timeout=30)
        return {}

    held = ledger.committer.submit(Command("test.hold", "hold", None, wait, CommandMetadata()))
    try:
        assert running.wait(timeout=10), "the writer did not start the holding command"
        yield
        deadline = time.monotonic() + 10
        while ledger.committer._queue.qsize() < commands:
            assert time.monotonic() < deadline, "the commands did not reach the writer"
            time.sleep(0.005)
    finally:
        release.set()
    held.result(timeout=10)


@pytest.fixture
def second_ledger(ledger_url: str) -> Iterator[Ledger]:
    other = Ledger(env=ledger_env(ledger_url))
    try:
        yield other
    finally:
        other.close()


def test_an_order_whose_second_line_cannot_be_reserved_records_nothing(
    ledger: Ledger, ledger_url: str
) -> None:
    _setup(ledger)
    ledger.receive("SKU-A", WAREHOUSE, 10)
    ledger.receive("SKU-B", WAREHOUSE, 1)
    rows = _rows(ledger_url)

    with pytest.raises(InsufficientStock):
        ledger.place_order(
            "shopify",
            "short-of-b",
            [OrderLine("1", "SKU-A", 2), OrderLine("2", "SKU-B", 5)],
            context=CommandContext(idempotency_key="short-of-b"),
        )

    assert _rows(ledger_url) == rows
    assert _buckets(ledger, "SKU-A", WAREHOUSE)["available"] == 10
    assert _buckets(ledger, "SKU-B", WAREHOUSE)["available"] == 1
    with pytest.raises(AggregateNotFoundError):
        ledger.repository.get(order_id("shopify", "short-of-b"))
    # Nothing was cached either: the next order sees all of SKU-A.
    placed = ledger.place_order("shopify", "all-of-a", [OrderLine("1", "SKU-A", 10)])
    assert placed.body["status"] == "reserved"


def test_a_transfer_whose_second_line_lacks_stock_records_nothing(
    ledger: Ledger, ledger_url: str
) -> None:
    _setup(ledger)
    ledger.receive("SKU-A", WAREHOUSE, 10)
    ledger.receive("SKU-B", WAREHOUSE, 1)
    rows = _rows(ledger_url)

    with pytest.raises(InsufficientStock):
        ledger.dispatch_transfer(
            "TR-1", WAREHOUSE, STORE, [SkuQuantity("SKU-A", 5), SkuQuantity("SKU-B", 3)]
        )

    assert _rows(ledger_url) == rows
    assert _buckets(ledger, "SKU-A", WAREHOUSE)["available"] == 10
    with pytest.raises(AggregateNotFoundError):
        ledger.repository.get(transfer_id("TR-1"))
    with pytest.raises(AggregateNotFoundError):
        ledger.repository.get(position_id("SKU-A", STORE))
    # The transfer id is still free, and the stock still there, for a transfer that fits.
    ledger.dispatch_transfer(
        "TR-1", WAREHOUSE, STORE, [SkuQuantity("SKU-A", 5), SkuQuantity("SKU-B", 1)]
    )
    assert _buckets(ledger, "SKU-A", STORE)["in_transit"] == 5


def test_a_refused_command_leaves_nothing_in_a_batch_that_commits(
    ledger: Ledger, ledger_url: str
) -> None:
    _setup(ledger)
    ledger.receive("SKU-A", WAREHOUSE, 3)
    ledger.receive("SKU-B", WAREHOUSE, 1)
    stats = dict(ledger.committer.stats)
    sends: list[Callable[[], WriteResult]] = [
        *(
            (lambda n=n: ledger.receive("SKU-C", WAREHOUSE, 1, context=_key(f"rcpt-{n}")))
            for n in range(8)
        ),
        lambda: ledger.place_order(
            "shopify",
            "a-without-b",
            [OrderLine("1", "SKU-A", 3), OrderLine("2", "SKU-B", 2)],
        ),
        lambda: ledger.dispatch_transfer(
            "TR-9", WAREHOUSE, STORE, [SkuQuantity("SKU-A", 1), SkuQuantity("SKU-B", 9)]
        ),
        lambda: ledger.place_order("shopify", "fits", [OrderLine("1", "SKU-A", 3)]),
    ]

    with ThreadPoolExecutor(max_workers=len(sends)) as pool, one_batch(ledger, len(sends)):
        futures = [pool.submit(send) for send in sends]
    outcomes = [future.exception() or future.result() for future in futures]

    assert ledger.committer.stats["batches"] - stats["batches"] == 2  # the hold, then them all
    assert [type(o).__name__ for o in outcomes[8:10]] == ["InsufficientStock"] * 2
    assert all(isinstance(o, WriteResult) and not o.replayed for o in outcomes[:8])
    assert isinstance(outcomes[10], WriteResult)
    assert _events_caused_by(ledger_url, "order:shopify:a-without-b") == 0
    assert _events_caused_by(ledger_url, "transfer:TR-9") == 0
    assert _events_caused_by(ledger_url, "order:shopify:fits") == 3  # Placed, Reserved, Lines
    a = _buckets(ledger, "SKU-A", WAREHOUSE)
    assert (a["reserved"], a["available"]) == (3, 0)
    assert _buckets(ledger, "SKU-B", WAREHOUSE)["available"] == 1
    assert _buckets(ledger, "SKU-C", WAREHOUSE)["available"] == 8


def _key(key: str) -> CommandContext:
    return CommandContext(idempotency_key=key)


def test_a_batch_that_conflicts_with_another_instance_is_replayed_with_right_answers(
    ledger: Ledger, second_ledger: Ledger, ledger_url: str
) -> None:
    _setup(ledger)
    ledger.receive("SKU-A", WAREHOUSE, 10)  # the first instance now caches SKU-A with 10
    second_ledger.place_order("shopify", "elsewhere", [OrderLine("1", "SKU-A", 6)])
    conflicts = ledger.committer.stats["conflicts"]
    orders = [f"stale-{n}" for n in range(10)]
    sends: list[Callable[[], WriteResult]] = [
        *(
            (lambda ext=ext: ledger.place_order("shopify", ext, [OrderLine("1", "SKU-A", 1)]))
            for ext in orders
        ),
        lambda: ledger.receive("SKU-C", WAREHOUSE, 5, context=_key("asn-c")),
    ]

    with ThreadPoolExecutor(max_workers=len(sends)) as pool, one_batch(ledger, len(sends)):
        futures = [pool.submit(send) for send in sends]
    outcomes = [future.exception() or future.result() for future in futures]

    replays = ledger.committer.stats["conflicts"] - conflicts
    print(f"\n[conflict] batch replays after conflicts with the other instance: {replays}")
    assert ledger.committer.stats["conflicts"] > conflicts
    placed = [o for o in outcomes[:10] if isinstance(o, WriteResult)]
    refused = [o for o in outcomes[:10] if isinstance(o, InsufficientStock)]
    assert (len(placed), len(refused)) == (4, 6)
    for result in placed:
        assert result.body["lines"][0]["allocations"] == [{"location": WAREHOUSE, "quantity": 1}]
    receipt = outcomes[10]
    assert isinstance(receipt, WriteResult)
    assert receipt.body["available"] == 5
    for reader in (ledger, second_ledger):
        a = _buckets(reader, "SKU-A", WAREHOUSE)
        assert (a["reserved"], a["available"]) == (10, 0)
    # Opened, Received, the other instance's Reserved (6 units), then one per order placed here.
    a_events = _count(
        ledger_url,
        "SELECT count(*) FROM ledger_events WHERE originator_id = %s",
        position_id("SKU-A", WAREHOUSE),
    )
    assert a_events == 1 + 1 + 1 + 4
    assert _events_caused_by(ledger_url, "asn-c") == 2  # Opened, Received: once
    assert _count(ledger_url, "SELECT count(*) FROM idempotency_keys WHERE key = 'asn-c'") == 1


def test_alternating_writes_from_two_instances_each_answer_the_true_balance(
    ledger: Ledger, second_ledger: Ledger
) -> None:
    _setup(ledger)
    balance = 0
    for n in range(20):
        writer = (ledger, second_ledger)[n % 2]
        result = writer.receive("SKU-A", WAREHOUSE, n + 1)
        balance += n + 1
        assert result.body["available"] == balance
    assert ledger.committer.stats["conflicts"] >= 9
    assert second_ledger.committer.stats["conflicts"] >= 9
    assert _buckets(second_ledger, "SKU-A", WAREHOUSE)["available"] == balance


def test_a_command_that_keeps_losing_to_another_instance_is_recorded_under_the_write_lock(
    ledger: Ledger, second_ledger: Ledger
) -> None:
    _setup(ledger)
    ledger.receive("SKU-A", WAREHOUSE, 10)
    conflicts = ledger.committer.stats["conflicts"]
    optimistic_insert = ledger.recorder.insert_events_with_keys
    interruptions = 0

    def lose_the_race(*args: Any) -> Any:
        # Each time this instance is about to insert, the other one writes the same position.
        nonlocal interruptions
        interruptions += 1
        second_ledger.receive("SKU-A", WAREHOUSE, 1, reference=f"meanwhile-{interruptions}")
        return optimistic_insert(*args)

    ledger.recorder.insert_events_with_keys = lose_the_race  # type: ignore[method-assign]

    result = ledger.receive("SKU-A", WAREHOUSE, 5, reference="finally")

    assert ledger.committer.stats["conflicts"] - conflicts == interruptions == 2
    assert result.body["available"] == 10 + interruptions + 5
    assert _buckets(second_ledger, "SKU-A", WAREHOUSE)["available"] == 17
