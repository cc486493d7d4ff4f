"""Idempotency on PostgreSQL (SPEC §2): keys stored with their events, replays record nothing.

Writes come in three kinds, each with its own idempotency key: receipts with an explicit key
(the ``Idempotency-Key`` header), order placements (the channel's order id, or a header key) and
POS transactions (the till's transaction id).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import psycopg
import pytest

from adapters.postgres import ledger_env
from domain.committer import WriteResult
from domain.errors import IdempotencyKeyReused
from domain.keys import position_id
from domain.service import CommandContext, Ledger, OrderLine, PosLine

WAREHOUSE = "WH-1"
STORE = "STORE-1"
SKUS = ("SKU-1", "SKU-2", "SKU-3")
WRITES = 100


def _setup(ledger: Ledger) -> None:
    ledger.register_location(WAREHOUSE, name="Warehouse", kind="warehouse", channels=["shopify"])
    ledger.register_location(STORE, name="Store", kind="store", channels=["pos"])
    for sku in SKUS:
        ledger.receive(sku, WAREHOUSE, 1_000, reference="opening")
        ledger.receive(sku, STORE, 1_000, reference="opening")


def _mixed_writes(ledger: Ledger) -> list[Callable[[], WriteResult]]:
    """100 writes, each with its own key: receipts, orders and till transactions."""
    sold_at = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    writes: list[Callable[[], WriteResult]] = []
    for n in range(WRITES):
        sku = SKUS[n % len(SKUS)]
        kind = n % 3
        if kind == 0:
            writes.append(
                lambda n=n, sku=sku: ledger.receive(
                    sku,
                    WAREHOUSE,
                    n + 1,
                    reference=f"po-{n}",
                    context=CommandContext(idempotency_key=f"receipt-{n}"),
                )
            )
        elif kind == 1:
            # Half the orders carry a header key, half rely on the channel's order id.
            context = CommandContext(idempotency_key=f"order-key-{n}") if n % 2 else None
            writes.append(
                lambda n=n, sku=sku, context=context: ledger.place_order(
                    "shopify",
                    f"order-{n}",
                    [OrderLine("1", sku, 1 + n % 4)],
                    currency="EUR",
                    total="19.90",
                    context=context,
                )
            )
        else:
            writes.append(
                lambda n=n, sku=sku: ledger.record_pos_transaction(
                    f"till-{n}",
                    STORE,
                    sold_at,
                    [PosLine(sku, 1 + n % 3), PosLine(SKUS[(n + 1) % len(SKUS)], -1)],
                )
            )
    return writes


def _send_all(writes: list[Callable[[], WriteResult]], threads: int = 8) -> list[WriteResult]:
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(lambda write: write(), writes))


def _count(database_url: str, query: str, *params: object) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(query, params).fetchone()
    assert row is not None
    return int(row[0])


def _recorded(ledger: Ledger, database_url: str) -> tuple[int | None, int, int]:
    return (
        ledger.recorder.max_notification_id(),
        _count(database_url, "SELECT count(*) FROM ledger_events"),
        _count(database_url, "SELECT count(*) FROM idempotency_keys"),
    )


def _buckets(ledger: Ledger) -> dict[str, dict[str, int]]:
    return {
        f"{sku}@{code}": dict(ledger.repository.get(position_id(sku, code)).buckets())
        for sku in SKUS
        for code in (WAREHOUSE, STORE)
    }


@pytest.fixture
def second_ledger(ledger_url: str) -> Iterator[Ledger]:
    other = Ledger(env=ledger_env(ledger_url))
    try:
        yield other
    finally:
        other.close()


def test_a_hundred_writes_sent_twice_are_recorded_once_and_answered_the_same(
    ledger: Ledger, ledger_url: str
) -> None:
    _setup(ledger)
    writes = _mixed_writes(ledger)
    keys_before = _count(ledger_url, "SELECT count(*) FROM idempotency_keys")

    first = _send_all(writes)
    after_first = _recorded(ledger, ledger_url)
    buckets_after_first = _buckets(ledger)
    second = _send_all(writes)

    assert not any(result.replayed for result in first)
    assert all(result.position is not None for result in first)
    assert after_first[2] == keys_before + WRITES
    assert _recorded(ledger, ledger_url) == after_first
    assert _buckets(ledger) == buckets_after_first
    for original, replay in zip(first, second, strict=True):
        assert replay.replayed
        assert replay.body == original.body
        assert replay.position == original.position


def test_a_replay_from_another_instance_with_a_cold_cache_records_nothing(
    ledger: Ledger, second_ledger: Ledger, ledger_url: str
) -> None:
    _setup(ledger)
    first = _send_all(_mixed_writes(ledger))
    recorded = _recorded(ledger, ledger_url)

    second = _send_all(_mixed_writes(second_ledger))

    assert _recorded(ledger, ledger_url) == recorded
    assert [(r.body, r.position, True) for r in first] == [
        (r.body, r.position, r.replayed) for r in second
    ]


def test_a_reused_key_with_another_body_is_refused_and_records_nothing(
    ledger: Ledger, ledger_url: str
) -> None:
    _setup(ledger)
    ledger.receive(
        "SKU-1", WAREHOUSE, 5, reference="po-1", context=CommandContext(idempotency_key="po-1")
    )
    ledger.place_order("shopify", "order-1", [OrderLine("1", "SKU-1", 1)])
    ledger.record_pos_transaction("till-1", STORE, None, [PosLine("SKU-1", 1)])
    recorded = _recorded(ledger, ledger_url)
    buckets = _buckets(ledger)

    reuses: list[Callable[[], WriteResult]] = [
        lambda: ledger.receive(
            "SKU-1", WAREHOUSE, 6, reference="po-1", context=CommandContext(idempotency_key="po-1")
        ),
        # The same key for another operation altogether.
        lambda: ledger.adjust(
            "SKU-1", WAREHOUSE, -1, "shrinkage", context=CommandContext(idempotency_key="po-1")
        ),
        lambda: ledger.place_order("shopify", "order-1", [OrderLine("1", "SKU-2", 1)]),
        lambda: ledger.record_pos_transaction("till-1", STORE, None, [PosLine("SKU-1", 2)]),
    ]
    for reuse in reuses:
        with pytest.raises(IdempotencyKeyReused):
            reuse()

    assert _recorded(ledger, ledger_url) == recorded
    assert _buckets(ledger) == buckets


@pytest.mark.parametrize("instances", [1, 2], ids=["one-ledger", "two-ledgers"])
def test_the_same_key_sent_from_ten_threads_at_once_applies_once(
    ledger: Ledger, second_ledger: Ledger, ledger_url: str, instances: int
) -> None:
    _setup(ledger)
    ledgers = [ledger, second_ledger][:instances]
    barrier = threading.Barrier(10)
    events_before = _count(ledger_url, "SELECT count(*) FROM ledger_events")

    def send(thread_no: int) -> WriteResult:
        target = ledgers[thread_no % len(ledgers)]
        barrier.wait()
        return target.receive(
            "SKU-1",
            WAREHOUSE,
            7,
            reference="asn-77",
            context=CommandContext(idempotency_key="asn-77"),
        )

    with ThreadPoolExecutor(max_workers=10) as pool:
        results = list(pool.map(send, range(10)))

    assert sum(not result.replayed for result in results) == 1
    assert len({result.position for result in results}) == 1
    assert all(result.body == results[0].body for result in results)
    assert results[0].body["available"] == 1_007
    position = ledger.repository.get(position_id("SKU-1", WAREHOUSE))
    assert position.available == 1_007
    assert _count(ledger_url, "SELECT count(*) FROM ledger_events") == events_before + 1
    assert _count(ledger_url, "SELECT count(*) FROM idempotency_keys WHERE key = 'asn-77'") == 1


def test_every_key_points_at_an_event_of_its_own_command(ledger: Ledger, ledger_url: str) -> None:
    _setup(ledger)
    _send_all(_mixed_writes(ledger))

    keys = _count(ledger_url, "SELECT count(*) FROM idempotency_keys")
    dangling = _count(
        ledger_url,
        "SELECT count(*) FROM idempotency_keys k WHERE k.position IS NULL OR NOT EXISTS "
        "(SELECT 1 FROM ledger_events e WHERE e.notification_id = k.position)",
    )
    # An event's causation is the key of the command that produced it.
    foreign = _count(
        ledger_url,
        "SELECT count(*) FROM idempotency_keys k JOIN ledger_events e "
        "ON e.notification_id = k.position "
        "WHERE convert_from(e.state, 'UTF8')::jsonb ->> 'causation_id' IS DISTINCT FROM k.key",
    )
    assert keys >= WRITES
    assert dangling == 0
    assert foreign == 0


def test_keys_and_texts_with_quotes_backslashes_and_accents_are_recorded_as_sent(
    ledger: Ledger, ledger_url: str, second_ledger: Ledger
) -> None:
    # The batch insert writes its values into the statement: nothing may be read as SQL.
    _setup(ledger)
    key = r"it's_a_\key\'';DROP_TABLE_ledger_events;--\x00\\"
    reference = "O'Brien's \\ delivery — ünïcode, 'quoted', E'\\x41' \" $$ end"
    first = ledger.receive("SKU-1", WAREHOUSE, 3, reference, context=CommandContext(key))
    replay = second_ledger.receive("SKU-1", WAREHOUSE, 3, reference, context=CommandContext(key))
    assert replay.replayed
    assert replay.body == first.body
    assert replay.position == first.position
    with psycopg.connect(ledger_url) as conn:
        stored = conn.execute(
            "SELECT response FROM idempotency_keys WHERE key = %s", (key,)
        ).fetchone()
        state = conn.execute(
            "SELECT state FROM ledger_events WHERE notification_id = %s", (first.position,)
        ).fetchone()
    assert stored is not None and state is not None
    assert json.loads(stored[0]) == first.body
    assert json.loads(bytes(state[0]))["reference"] == reference
