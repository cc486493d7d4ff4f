"""No overselling under concurrency (SPEC §2): many threads, one or two ledgers, one database.

Every order asks for one unit of a SKU (or of two SKUs); far more orders are placed than there
are units. Exactly the available units are reserved, every other order is refused with
InsufficientStock and leaves nothing behind, and the store holds one Reserved event per unit.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from uuid import UUID

import psycopg
import pytest
from eventsourcing.application import AggregateNotFoundError
from eventsourcing.utils import get_topic

from adapters.postgres import ledger_env
from domain.errors import InsufficientStock
from domain.keys import order_id, position_id
from domain.service import Ledger, OrderLine
from domain.stock import StockPosition

THREADS = 16
WAREHOUSE = "WH-1"
CHANNEL = "shopify"
RESERVED_TOPIC = get_topic(StockPosition.Reserved)


@dataclass
class RaceOutcome:
    attempts: int = 0
    successes: list[str] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    errors: list[tuple[str, BaseException]] = field(default_factory=list)
    elapsed: float = 0.0

    def report(self, label: str) -> None:
        rate = self.attempts / self.elapsed if self.elapsed else float("inf")
        print(
            f"\n[{label}] attempts={self.attempts} successes={len(self.successes)} "
            f"refusals={len(self.refusals)} errors={len(self.errors)} "
            f"elapsed={self.elapsed:.3f}s commands/s={rate:.0f}"
        )


def _race(
    ledgers: Sequence[Ledger],
    external_ids: Sequence[str],
    lines_for: Callable[[int], list[OrderLine]],
) -> RaceOutcome:
    """Places one order per external id from THREADS threads, spread over the ledgers."""
    outcome = RaceOutcome(attempts=len(external_ids))
    lock = threading.Lock()
    start = threading.Barrier(THREADS)
    work: Iterator[tuple[int, str]] = iter(list(enumerate(external_ids)))

    def worker(thread_no: int) -> None:
        ledger = ledgers[thread_no % len(ledgers)]
        start.wait()
        while True:
            with lock:
                item = next(work, None)
            if item is None:
                return
            index, external_id = item
            try:
                ledger.place_order(CHANNEL, external_id, lines_for(index))
            except InsufficientStock:
                with lock:
                    outcome.refusals.append(external_id)
            except Exception as error:  # any other failure is a defect this test reports
                with lock:
                    outcome.errors.append((external_id, error))
            else:
                with lock:
                    outcome.successes.append(external_id)

    began = time.perf_counter()
    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        for future in [pool.submit(worker, n) for n in range(THREADS)]:
            future.result()
    outcome.elapsed = time.perf_counter() - began
    return outcome


def _stock(ledger: Ledger, sku: str, quantity: int) -> None:
    ledger.receive(sku, WAREHOUSE, quantity, reference=f"initial-{sku}")


def _warehouse(ledger: Ledger) -> None:
    ledger.register_location(WAREHOUSE, name="Main warehouse", kind="warehouse", channels=[CHANNEL])


def _reserved_events(database_url: str, aggregate_id: UUID) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM ledger_events WHERE originator_id = %s AND topic = %s",
            (aggregate_id, RESERVED_TOPIC),
        ).fetchone()
    assert row is not None
    return int(row[0])


def _fresh_position(ledger: Ledger, sku: str) -> StockPosition:
    position: StockPosition = ledger.repository.get(position_id(sku, WAREHOUSE))
    return position


def _assert_not_placed(ledger: Ledger, external_ids: Sequence[str]) -> None:
    for external_id in external_ids:
        with pytest.raises(AggregateNotFoundError):
            ledger.repository.get(order_id(CHANNEL, external_id))


@pytest.fixture
def second_ledger(ledger_url: str) -> Iterator[Ledger]:
    """Another instance on the same database: its own writer thread and its own cache."""
    other = Ledger(env=ledger_env(ledger_url))
    try:
        yield other
    finally:
        other.close()


def test_sixteen_threads_racing_for_the_last_50_units_reserve_exactly_50(
    ledger: Ledger, ledger_url: str
) -> None:
    _warehouse(ledger)
    _stock(ledger, "SKU-A", 50)
    external_ids = [f"race-{n}" for n in range(400)]

    outcome = _race([ledger], external_ids, lambda _: [OrderLine("1", "SKU-A", 1)])
    outcome.report("one ledger, one SKU")

    assert outcome.errors == []
    assert len(outcome.successes) == 50
    assert len(outcome.refusals) == len(external_ids) - 50
    position = _fresh_position(ledger, "SKU-A")
    assert (position.reserved, position.available, position.on_hand) == (50, 0, 50)
    assert _reserved_events(ledger_url, position.id) == 50
    for external_id in outcome.successes:
        placed = ledger.repository.get(order_id(CHANNEL, external_id))
        assert placed.held == {"1": {WAREHOUSE: 1}}
    _assert_not_placed(ledger, outcome.refusals)


def test_two_line_orders_reserve_both_skus_or_neither(ledger: Ledger, ledger_url: str) -> None:
    _warehouse(ledger)
    _stock(ledger, "SKU-A", 50)
    _stock(ledger, "SKU-B", 30)
    external_ids = [f"pair-{n}" for n in range(300)]

    def lines_for(index: int) -> list[OrderLine]:
        lines = [OrderLine("a", "SKU-A", 1), OrderLine("b", "SKU-B", 1)]
        # Half the orders ask for B first, half last: the refused line is sometimes the second,
        # after the first was already reserved on the order's working copy.
        return lines if index % 2 else lines[::-1]

    outcome = _race([ledger], external_ids, lines_for)
    outcome.report("one ledger, two SKUs per order")

    assert outcome.errors == []
    assert len(outcome.successes) == 30
    assert len(outcome.refusals) == len(external_ids) - 30
    a, b = _fresh_position(ledger, "SKU-A"), _fresh_position(ledger, "SKU-B")
    assert (a.reserved, a.available) == (30, 20)
    assert (b.reserved, b.available) == (30, 0)
    assert _reserved_events(ledger_url, a.id) == 30
    assert _reserved_events(ledger_url, b.id) == 30
    for external_id in outcome.successes:
        placed = ledger.repository.get(order_id(CHANNEL, external_id))
        assert placed.held == {"a": {WAREHOUSE: 1}, "b": {WAREHOUSE: 1}}
    _assert_not_placed(ledger, outcome.refusals)


def test_two_ledger_instances_on_one_database_never_oversell(
    ledger: Ledger, second_ledger: Ledger, ledger_url: str
) -> None:
    _warehouse(ledger)
    _stock(ledger, "SKU-A", 50)
    # Both instances load the position into their caches before the race.
    ledger.receive("SKU-A", WAREHOUSE, 1, reference="warm-first")
    second_ledger.receive("SKU-A", WAREHOUSE, 1, reference="warm-second")
    units = 52
    external_ids = [f"two-{n}" for n in range(400)]

    outcome = _race([ledger, second_ledger], external_ids, lambda _: [OrderLine("1", "SKU-A", 1)])
    outcome.report("two ledgers, one SKU")
    conflicts = ledger.committer.stats["conflicts"] + second_ledger.committer.stats["conflicts"]
    stale = (
        ledger.committer.stats["stale_refusals"] + second_ledger.committer.stats["stale_refusals"]
    )
    print(f"[two ledgers, one SKU] conflicts replayed={conflicts} stale refusals={stale}")

    assert outcome.errors == []
    assert len(outcome.successes) == units
    assert len(outcome.refusals) == len(external_ids) - units
    for reader in (ledger, second_ledger):
        position = _fresh_position(reader, "SKU-A")
        assert (position.reserved, position.available) == (units, 0)
    assert _reserved_events(ledger_url, position_id("SKU-A", WAREHOUSE)) == units
    _assert_not_placed(ledger, outcome.refusals)


def test_two_ledger_instances_keep_two_line_orders_whole(
    ledger: Ledger, second_ledger: Ledger, ledger_url: str
) -> None:
    _warehouse(ledger)
    _stock(ledger, "SKU-A", 50)
    _stock(ledger, "SKU-B", 30)
    external_ids = [f"two-pair-{n}" for n in range(300)]

    def lines_for(index: int) -> list[OrderLine]:
        lines = [OrderLine("a", "SKU-A", 1), OrderLine("b", "SKU-B", 1)]
        return lines if index % 2 else lines[::-1]

    outcome = _race([ledger, second_ledger], external_ids, lines_for)
    outcome.report("two ledgers, two SKUs per order")

    assert outcome.errors == []
    assert len(outcome.successes) == 30
    a, b = _fresh_position(second_ledger, "SKU-A"), _fresh_position(second_ledger, "SKU-B")
    assert (a.reserved, a.available) == (30, 20)
    assert (b.reserved, b.available) == (30, 0)
    assert _reserved_events(ledger_url, a.id) == 30
    assert _reserved_events(ledger_url, b.id) == 30
    for external_id in outcome.successes:
        placed = ledger.repository.get(order_id(CHANNEL, external_id))
        assert placed.held == {"a": {WAREHOUSE: 1}, "b": {WAREHOUSE: 1}}
    _assert_not_placed(ledger, outcome.refusals)


def test_a_ledger_with_a_stale_cache_does_not_refuse_stock_received_elsewhere(
    ledger: Ledger, second_ledger: Ledger
) -> None:
    _warehouse(ledger)
    _stock(ledger, "SKU-A", 1)
    ledger.place_order(CHANNEL, "first", [OrderLine("1", "SKU-A", 1)])
    # The first instance now holds the position, sold out, in its cache.
    with pytest.raises(InsufficientStock):
        ledger.place_order(CHANNEL, "too-early", [OrderLine("1", "SKU-A", 1)])

    second_ledger.receive("SKU-A", WAREHOUSE, 3, reference="restock")

    for n in range(3):
        placed = ledger.place_order(CHANNEL, f"after-restock-{n}", [OrderLine("1", "SKU-A", 1)])
        assert placed.body["status"] == "reserved"
    with pytest.raises(InsufficientStock):
        ledger.place_order(CHANNEL, "sold-out-again", [OrderLine("1", "SKU-A", 1)])
    position = _fresh_position(second_ledger, "SKU-A")
    assert (position.reserved, position.available) == (4, 0)
    assert ledger.committer.stats["stale_refusals"] >= 1
