"""Inbound POS over NATS: till transactions applied through the ledger; bad ones become exceptions.

Each test runs its own NATS (``embedded_nats_factory``): the durable consumer and the inbound
stream then hold only this test's messages.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from typing import Any, cast

import nats
import psycopg
import pytest

from adapters import exceptions
from adapters.embedded import EmbeddedNats
from adapters.nats import (
    INBOUND_STREAM,
    POS_DURABLE,
    POS_SUBJECT,
    InboundPosWorker,
    InboundSettings,
    RelaySettings,
    ensure_streams,
)
from domain.errors import LedgerUnavailable
from domain.service import Ledger

pytestmark = pytest.mark.timeout(60)

FAST = RelaySettings(backoff_initial=0.05, backoff_max=0.5)
QUICK = InboundSettings(max_attempts=3, retry_delay=0.1, ack_wait=2.0, fetch_timeout=0.2)


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


async def _publish(url: str, payloads: list[bytes]) -> None:
    client = await nats.connect(url)
    try:
        js = client.jetstream()
        await ensure_streams(js)
        for payload in payloads:
            await js.publish(POS_SUBJECT, payload)
    finally:
        await client.close()


def publish(url: str, *payloads: bytes | dict[str, Any]) -> None:
    raw = [p if isinstance(p, bytes) else json.dumps(p).encode() for p in payloads]
    asyncio.run(_publish(url, raw))


async def _consumer_state(url: str) -> tuple[int, int, int]:
    client = await nats.connect(url)
    try:
        info = await client.jetstream().consumer_info(INBOUND_STREAM, POS_DURABLE)
        return info.num_pending or 0, info.num_ack_pending or 0, info.num_redelivered or 0
    finally:
        await client.close()


def consumer_state(url: str) -> tuple[int, int, int]:
    """(pending, awaiting ack, redelivered) of the durable POS consumer."""
    return asyncio.run(_consumer_state(url))


def sale(transaction: str, location: str = "ST1", quantity: int = 2) -> dict[str, Any]:
    return {
        "transaction_id": transaction,
        "location": location,
        "occurred_at": "2024-05-01T10:00:00+02:00",
        "lines": [{"sku": "SKU-1", "quantity": quantity}],
    }


def available(ledger: Ledger) -> int:
    position = ledger.get_position("SKU-1", "ST1")
    return position.available if position else 0


def open_exceptions(database_url: str) -> list[exceptions.ExceptionRecord]:
    with psycopg.connect(database_url, autocommit=True) as connection:
        return exceptions.list_exceptions(connection, channel="pos")


@pytest.fixture
def store(ledger: Ledger) -> Ledger:
    ledger.register_location("ST1", name="Store", kind="store", channels=["pos"])
    ledger.receive("SKU-1", "ST1", 10)
    return ledger


@pytest.fixture
def server(embedded_nats_factory: Callable[..., EmbeddedNats]) -> EmbeddedNats:
    return embedded_nats_factory()


@pytest.fixture
def consumer(ledger_url: str, store: Ledger, server: EmbeddedNats) -> Iterator[InboundPosWorker]:
    worker = InboundPosWorker(ledger_url, server.url, store, settings=FAST, inbound=QUICK)
    yield worker
    worker.stop()


def test_pos_message_published_while_the_service_is_down_is_applied_when_it_starts(
    store: Ledger, server: EmbeddedNats, consumer: InboundPosWorker
) -> None:
    publish(server.url, sale("T-1"))  # nobody consumes yet: the stream keeps it
    consumer.start()
    wait_until(lambda: available(store) == 8, "the sale published before start to apply")

    publish(server.url, sale("T-2", quantity=3), sale("T-2", quantity=3))  # a duplicate too
    wait_until(lambda: available(store) == 5, "the sale published while running to apply")
    wait_until(lambda: consumer_state(server.url)[:2] == (0, 0), "every message to be acked")
    time.sleep(0.3)
    assert available(store) == 5, "a redelivered or repeated transaction applies once"
    assert consumer.applied == 3


def test_messages_that_cannot_be_applied_become_exceptions_and_are_acked(
    ledger_url: str, store: Ledger, server: EmbeddedNats, consumer: InboundPosWorker
) -> None:
    unknown_location = json.dumps(sale("T-9", location="NOWHERE")).encode()
    publish(
        server.url,
        b"{not json",
        {"transaction_id": "T-5", "location": "ST1", "lines": []},
        unknown_location,
        {**sale("T-6"), "lines": [{"sku": "SKU-1", "quantity": "2"}]},
        unknown_location,  # the same bad message again: one exception, two attempts
        sale("T-7"),
    )
    consumer.start()
    wait_until(lambda: len(open_exceptions(ledger_url)) == 4, "four exceptions")
    wait_until(lambda: available(store) == 8, "the good message after them to apply")
    wait_until(lambda: consumer_state(server.url)[:2] == (0, 0), "every message to be acked")

    recorded = {e.external_ids.get("transaction_id", "?"): e for e in open_exceptions(ledger_url)}
    assert set(recorded) == {"?", "T-5", "T-6", "T-9"}
    assert recorded["?"].reason.startswith("invalid JSON")
    assert recorded["?"].payload == b"{not json"
    assert recorded["T-5"].reason.startswith("validation: occurred_at")
    assert recorded["T-6"].reason.startswith("validation: lines.0.quantity")
    assert recorded["T-9"].reason.startswith("not-found: location NOWHERE")
    assert recorded["T-9"].external_ids == {"transaction_id": "T-9", "location": "NOWHERE"}
    assert recorded["T-9"].payload == unknown_location
    assert recorded["T-9"].attempts == 2
    assert all(e.channel == "pos" and e.source == POS_SUBJECT for e in recorded.values())
    assert all(e.status == "open" for e in recorded.values())

    time.sleep(QUICK.ack_wait + 0.5)  # past the ack wait: nothing comes back
    assert consumer_state(server.url) == (0, 0, 0)
    assert sorted(e.attempts for e in open_exceptions(ledger_url)) == [1, 1, 1, 2]


class _DownLedger:
    """A ledger whose database never answers."""

    calls = 0

    def record_pos_transaction(self, *args: Any, **kwargs: Any) -> None:
        _DownLedger.calls += 1
        raise LedgerUnavailable("the ledger did not record the command in time")


def test_message_failing_for_want_of_the_database_is_retried_then_kept_as_an_exception(
    ledger_url: str, server: EmbeddedNats
) -> None:
    down = cast(Ledger, _DownLedger())
    worker = InboundPosWorker(ledger_url, server.url, down, settings=FAST, inbound=QUICK)
    publish(server.url, sale("T-1"))
    worker.start()
    try:
        wait_until(lambda: len(open_exceptions(ledger_url)) == 1, "the exception after retries")
        wait_until(lambda: consumer_state(server.url)[:2] == (0, 0), "the message to be acked")
    finally:
        worker.stop()
    assert _DownLedger.calls == QUICK.max_attempts
    (kept,) = open_exceptions(ledger_url)
    assert kept.reason.startswith(f"not applied after {QUICK.max_attempts} attempts")
    assert kept.details["deliveries"] == QUICK.max_attempts


def test_exception_store_records_lists_retries_and_resolves(ledger_url: str) -> None:
    with psycopg.connect(ledger_url) as connection:
        first = exceptions.record(
            connection,
            channel="shopify",
            source="orders/create",
            reason="unknown SKU X",
            payload='{"id": 1}',
            external_ids={"order_id": "1"},
            details={"webhook_id": "w-1"},
            key="shopify:w-1",
        )
        other = exceptions.record(
            connection, channel="pos", source=POS_SUBJECT, reason="bad", payload=b"\xff"
        )
        again = exceptions.record(
            connection,
            channel="shopify",
            source="orders/create",
            reason="unknown SKU X still",
            payload='{"id": 1}',
            key="shopify:w-1",
        )
        assert again.id == first.id and again.attempts == 2 and again.reason.endswith("still")
        assert exceptions.get(connection, first.id) == again
        assert exceptions.get(connection, 10**9) is None
        assert [e.id for e in exceptions.list_exceptions(connection)] == [first.id, other.id]
        assert [e.id for e in exceptions.list_exceptions(connection, channel="pos")] == [other.id]
        assert other.payload_text == "\ufffd"
        assert exceptions.count_open(connection) == 2

        retried = exceptions.mark_attempt(connection, first.id, "still unknown")
        assert retried is not None and retried.attempts == 3
        resolved = exceptions.mark_resolved(connection, first.id)
        assert resolved is not None and resolved.status == "resolved"
        assert [e.id for e in exceptions.list_exceptions(connection)] == [other.id]
        assert len(exceptions.list_exceptions(connection, status=None)) == 2
        assert exceptions.count_open(connection) == 1
