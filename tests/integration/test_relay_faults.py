"""Relay faults: crashes between publish and progress, NATS outages, and two relays racing.

Each test runs its own NATS (``embedded_nats_factory``) so that it can stop and restart it, and
so that counting the messages of a stream counts only this test's postings.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from uuid import UUID

import nats
import psycopg
import pytest

from adapters.embedded import EmbeddedNats
from adapters.erp import posting_id_for
from adapters.nats import (
    ERP_RELAY,
    ERP_STREAM,
    POS_SUBJECT,
    ErpPostingSource,
    RelayError,
    RelayProcessor,
    Relays,
    RelaySettings,
    RelayWorker,
    drain_relay,
    ensure_streams,
    read_stream,
    relay_backlog,
)
from domain.service import Ledger
from projections.events import event_id

FAST = RelaySettings(
    ack_timeout=3.0, idle_wait=0.1, backoff_initial=0.05, backoff_max=0.5, standby_wait=0.2
)
ROOT = Path(__file__).resolve().parents[2]


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def backlog_of(database_url: str) -> Any:
    with psycopg.connect(database_url, autocommit=True) as connection:
        return relay_backlog(connection)[ERP_RELAY]


def caught_up(database_url: str) -> bool:
    return bool(backlog_of(database_url).behind == 0)


async def _stream(url: str) -> tuple[int, list[Any]]:
    client = await nats.connect(url)
    try:
        js = client.jetstream()
        info = await js.stream_info(ERP_STREAM)
        return int(info.state.messages), await read_stream(js, ERP_STREAM)
    finally:
        await client.close()


def stored_postings(url: str) -> list[tuple[int, str]]:
    """(ledger position, posting id) of every message in STOCKLEDGER_ERP, in stream order."""
    count, messages = asyncio.run(_stream(url))
    assert count == len(messages)
    return [
        (int(m.headers["Stockledger-Position"]), json.loads(m.data)["posting_id"]) for m in messages
    ]


def expected_postings(database_url: str) -> list[tuple[int, str]]:
    """(position, posting id) of every receipt in the log (the only postings these tests make)."""
    with psycopg.connect(database_url) as connection:
        rows = connection.execute(
            "SELECT notification_id, originator_id, originator_version FROM ledger_events "
            "WHERE topic LIKE %s ORDER BY notification_id",
            ("%StockPosition.Received",),
        ).fetchall()
    return [(pos, posting_id_for(event_id(UUID(str(agg)), ver))) for pos, agg, ver in rows]


@pytest.fixture
def stock(ledger: Ledger) -> Ledger:
    ledger.register_location("WH1", name="Warehouse", kind="warehouse", channels=["shopify"])
    ledger.register_location("ST1", name="Store", kind="store", channels=["pos"])
    return ledger


def receive_many(ledger: Ledger, count: int, start: int = 0) -> None:
    for i in range(start, start + count):
        ledger.receive(f"SKU-{i % 37}", "WH1" if i % 2 else "ST1", 1 + i % 5)


@pytest.mark.timeout(60)
def test_relay_killed_between_publish_and_progress_record_republishes_without_a_second_posting(
    ledger_url: str, stock: Ledger, embedded_nats_factory: Callable[..., EmbeddedNats]
) -> None:
    server = embedded_nats_factory()
    receive_many(stock, 20)
    attempts: list[int] = []

    class CrashBeforeProgress(RelayProcessor):
        """Publishes and gets every ack, then dies before recording its position."""

        async def publish(self, messages: Any) -> int:
            duplicates = await super().publish(messages)
            attempts.append(duplicates)
            return duplicates

        async def record_progress(self, start: int, reached: int, published: int) -> None:
            raise RelayError("killed after publishing, before recording progress")

    crashing = RelayWorker(
        ledger_url,
        server.url,
        stock.mapper,
        ErpPostingSource(stock.mapper),
        settings=FAST,
        processor_class=CrashBeforeProgress,
    )
    crashing.start()
    try:
        wait_until(lambda: len(attempts) >= 3, "the crashing relay to publish three times")
    finally:
        crashing.stop()
    assert attempts[0] == 0 and all(duplicates == 20 for duplicates in attempts[1:])
    assert backlog_of(ledger_url).position == 0, "no progress was ever recorded"

    restarted = RelayWorker(
        ledger_url, server.url, stock.mapper, ErpPostingSource(stock.mapper), settings=FAST
    )
    restarted.start()
    try:
        wait_until(lambda: caught_up(ledger_url), "the restarted relay to record its progress")
    finally:
        restarted.stop()
    assert restarted.duplicates == 20 and restarted.published == 0

    stored = stored_postings(server.url)
    assert stored == expected_postings(ledger_url)
    assert len({posting for _, posting in stored}) == 20


class FailsSecondBatch(RelayProcessor):
    """Publishes the second batch, then fails as if its acks never came; the third batch has
    been read ahead meanwhile."""

    reads: list[int]

    async def read(self, start: int) -> Any:
        self.reads.append(start)
        return await super().read(start)

    async def publish(self, messages: Any) -> int:
        duplicates = await super().publish(messages)
        if len(self.reads) == 3:
            raise RelayError("NATS failed the second batch")
        return duplicates


async def _drain_failing(database_url: str, nats_url: str, mapper: Any) -> list[int]:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as connection:
        client = await nats.connect(nats_url)
        try:
            await ensure_streams(client.jetstream())
            processor = FailsSecondBatch(
                connection, client, mapper, ErpPostingSource(mapper), batch_size=10
            )
            processor.reads = []
            await processor.ensure_tracking()
            with pytest.raises(RelayError, match="second batch"):
                async for _ in processor.catch_up():
                    pass
            return processor.reads
        finally:
            await client.close()


@pytest.mark.timeout(60)
def test_a_batch_read_ahead_is_neither_published_nor_recorded_when_the_batch_before_it_fails(
    ledger_url: str, stock: Ledger, embedded_nats_factory: Callable[..., EmbeddedNats]
) -> None:
    server = embedded_nats_factory()
    receive_many(stock, 35)
    expected = expected_postings(ledger_url)

    reads = asyncio.run(_drain_failing(ledger_url, server.url, stock.mapper))
    # The third batch was read while the second one's acks were awaited.
    assert reads[1:] == [expected[9][0], expected[19][0]]
    assert backlog_of(ledger_url).position == expected[9][0], "only the first batch recorded"
    assert stored_postings(server.url) == expected[:20], "the third batch was never sent"

    result = asyncio.run(
        drain_relay(ledger_url, server.url, stock.mapper, ErpPostingSource(stock.mapper))
    )
    assert (result.published, result.duplicates) == (25, 10)  # the second batch again, deduped
    assert stored_postings(server.url) == expected, "every posting once, in log order"
    assert caught_up(ledger_url)


async def _ensure_streams(nats_url: str) -> None:
    client = await nats.connect(nats_url)
    try:
        await ensure_streams(client.jetstream())
    finally:
        await client.close()


async def _publish_without_a_stream(database_url: str, nats_url: str, mapper: Any) -> str:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as connection:
        client = await nats.connect(nats_url)
        try:
            processor = RelayProcessor(
                connection, client, mapper, ErpPostingSource(mapper), ack_timeout=3.0
            )
            await processor.ensure_tracking()
            await client.jetstream().delete_stream(ERP_STREAM)
            with pytest.raises(RelayError) as refused:
                async for _ in processor.catch_up():
                    pass
            return str(refused.value)
        finally:
            await client.close()


@pytest.mark.timeout(60)
def test_a_message_no_stream_takes_fails_the_batch_and_the_position_stays(
    ledger_url: str, stock: Ledger, embedded_nats_factory: Callable[..., EmbeddedNats]
) -> None:
    server = embedded_nats_factory()
    asyncio.run(_ensure_streams(server.url))
    receive_many(stock, 5)

    error = asyncio.run(_publish_without_a_stream(ledger_url, server.url, stock.mapper))
    assert "refused" in error and "503" in error
    assert backlog_of(ledger_url).position == 0

    result = asyncio.run(
        drain_relay(ledger_url, server.url, stock.mapper, ErpPostingSource(stock.mapper))
    )
    assert result.published == 5 and caught_up(ledger_url)
    assert stored_postings(server.url) == expected_postings(ledger_url)


@pytest.mark.timeout(90)
def test_postings_written_while_nats_is_down_arrive_exactly_once_and_in_order(
    ledger_url: str, stock: Ledger, embedded_nats_factory: Callable[..., EmbeddedNats]
) -> None:
    server = embedded_nats_factory()
    url = server.url
    worker = RelayWorker(
        ledger_url, url, stock.mapper, ErpPostingSource(stock.mapper), settings=FAST
    )
    worker.start()
    try:
        receive_many(stock, 250)
        server.stop()
        outage = time.monotonic()
        receive_many(stock, 500, start=250)  # writes only touch PostgreSQL: they all succeed
        assert backlog_of(ledger_url).pending > 0, "postings wait while NATS is down"
        # The outage lasts at least half a second, whatever the write rate, and the relay
        # notices it before NATS is back.
        time.sleep(max(0.0, 0.5 - (time.monotonic() - outage)))
        wait_until(lambda: not worker.connected, "the relay to notice NATS is down", 10)
        server.start()
        receive_many(stock, 250, start=750)
        wait_until(lambda: caught_up(ledger_url), "the backlog to drain after NATS returned", 60)
    finally:
        worker.stop()

    stored = stored_postings(url)
    expected = expected_postings(ledger_url)
    assert len(expected) == 1000
    assert stored == expected, "every posting exactly once, none missing, in log order"


RACER = """
import sys, time
from adapters.nats import ErpPostingSource, RelaySettings, RelayWorker
from adapters.postgres import ledger_env
from domain.service import Ledger

ledger = Ledger(env=ledger_env(sys.argv[1]))
settings = RelaySettings(ack_timeout=3.0, idle_wait=0.1, backoff_max=0.5, standby_wait=0.2)
worker = RelayWorker(sys.argv[1], sys.argv[2], ledger.mapper, ErpPostingSource(ledger.mapper),
                     settings=settings)
worker.start()
while True:
    time.sleep(1)
"""


@pytest.fixture
def racer(ledger_url: str, embedded_nats_factory: Callable[..., EmbeddedNats]) -> Iterator[Any]:
    server = embedded_nats_factory()
    process = subprocess.Popen(
        [sys.executable, "-c", RACER, ledger_url, server.url],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        yield server, process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)


def _lock_holders(database_url: str) -> set[int]:
    with psycopg.connect(database_url, autocommit=True) as connection:
        rows = connection.execute(
            "SELECT l.pid FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND a.datname = current_database()"
        ).fetchall()
    return {row[0] for row in rows}


@pytest.mark.timeout(60)
def test_two_relays_racing_one_publishes_and_the_other_takes_over_when_it_is_killed(
    ledger_url: str, stock: Ledger, racer: tuple[EmbeddedNats, subprocess.Popen[bytes]]
) -> None:
    server, process = racer
    receive_many(stock, 30)
    wait_until(lambda: caught_up(ledger_url), "the relay in the other process to publish")

    standby = RelayWorker(
        ledger_url, server.url, stock.mapper, ErpPostingSource(stock.mapper), settings=FAST
    )
    standby.start()
    try:
        receive_many(stock, 30, start=30)
        wait_until(lambda: caught_up(ledger_url), "the active relay to publish the next writes")
        time.sleep(0.5)
        assert not standby.active and standby.published == 0, "only one relay publishes"
        assert len(_lock_holders(ledger_url)) >= 1

        process.send_signal(signal.SIGKILL)  # dies without a word: its session ends, the lock too
        process.wait(10)
        receive_many(stock, 40, start=60)
        wait_until(lambda: standby.active, "the standby to take over", 15)
        wait_until(lambda: caught_up(ledger_url), "the new active relay to publish")
        assert standby.published > 0
    finally:
        standby.stop()

    stored = stored_postings(server.url)
    assert stored == expected_postings(ledger_url)
    assert len(stored) == 100


@pytest.mark.timeout(90)
def test_relay_publishes_a_backlog_of_postings_and_reports_its_rate(
    ledger_url: str, stock: Ledger, embedded_nats_factory: Callable[..., EmbeddedNats]
) -> None:
    server = embedded_nats_factory()
    total = 5000
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: receive_many(stock, 1, start=i), range(total)))

    started = time.perf_counter()
    result = asyncio.run(
        drain_relay(ledger_url, server.url, stock.mapper, ErpPostingSource(stock.mapper))
    )
    seconds = time.perf_counter() - started
    rate = result.published / seconds
    print(f"\nERP relay: {result.published} postings in {seconds:.2f}s = {rate:,.0f} postings/s")
    assert result.published == total and result.duplicates == 0
    assert len(stored_postings(server.url)) == total
    assert rate > 200


@pytest.mark.timeout(60)
def test_relays_run_together_from_synchronous_code_and_stop_promptly(
    ledger_url: str, stock: Ledger, embedded_nats_factory: Callable[..., EmbeddedNats]
) -> None:
    server = embedded_nats_factory()
    relays = Relays(ledger_url, server.url, stock.mapper, stock, settings=FAST)
    relays.start()
    try:
        receive_many(stock, 10)
        asyncio.run(_publish_pos(server.url))
        wait_until(lambda: relays.nats_connected, "the workers to connect")
        wait_until(
            lambda: all(b.behind == 0 for b in relays.backlog().values()),
            "both relays to publish everything",
        )
        wait_until(lambda: _available(stock, "SKU-2", "ST1") == 0, "the till sale to apply")
        statuses = {status.name: status for status in relays.status()}
        assert set(statuses) == {"erp-postings", "event-stream", "inbound-pos"}
        assert all(status.active and status.connected for status in statuses.values())
    finally:
        started = time.monotonic()
        relays.stop()
        assert time.monotonic() - started < 3
    assert relays.status() == []


async def _publish_pos(url: str) -> None:
    client = await nats.connect(url)
    try:
        js = client.jetstream()
        await ensure_streams(js)
        body = {
            "transaction_id": "T-1",
            "location": "ST1",
            "occurred_at": "2024-05-01T10:00:00+02:00",
            "lines": [{"sku": "SKU-2", "quantity": 3}],  # receive_many put 3 of SKU-2 at ST1
        }
        await js.publish(POS_SUBJECT, json.dumps(body).encode())
    finally:
        await client.close()


def _available(ledger: Ledger, sku: str, location: str) -> int:
    position = ledger.get_position(sku, location)
    return position.available if position else -1
