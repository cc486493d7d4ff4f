"""The ledger's writes recorded by a writer in a process of its own (``adapters.writer_process``),
as ``stockledger serve`` records them: same answers, same refusals, same guarantees."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future

import pytest

from adapters.postgres import ledger_env
from adapters.writer_process import WriterProcess
from domain.committer import WriteResult
from domain.errors import InsufficientStock, LedgerUnavailable, ValidationFailed
from domain.service import CommandContext, Ledger, OrderLine


@pytest.fixture
def forwarding(ledger_url: str) -> Iterator[Ledger]:
    """A ledger whose writes go to a writer process, with one warehouse serving Shopify."""
    env = ledger_env(ledger_url)
    ledger = Ledger(env=env)
    ledger.forward_writes(WriterProcess(env).start())
    try:
        ledger.register_location("WH", name="Warehouse", kind="warehouse", channels=["shopify"])
        yield ledger
    finally:
        ledger.close()


def _writer(ledger: Ledger) -> WriterProcess:
    assert isinstance(ledger.forwarder, WriterProcess)
    return ledger.forwarder


def test_an_order_placed_through_the_writer_process_reserves_its_stock(forwarding: Ledger) -> None:
    forwarding.receive("SKU-1", "WH", 5)

    placed = forwarding.place_order("shopify", "1001", [OrderLine("1", "SKU-1", 2)])

    assert placed.body["status"] == "reserved"
    assert placed.position is not None
    position = forwarding.get_position("SKU-1", "WH")  # read here, from the database
    assert position is not None
    assert (position.reserved, position.available_to_sell) == (2, 3)


def test_a_refusal_in_the_writer_process_reaches_the_caller_with_its_details(
    forwarding: Ledger,
) -> None:
    forwarding.receive("SKU-1", "WH", 1)

    with pytest.raises(InsufficientStock) as refused:
        forwarding.place_order("shopify", "1002", [OrderLine("1", "SKU-1", 3)])

    assert refused.value.context == {"sku": "SKU-1", "requested": 3, "available_to_sell": 1}
    with pytest.raises(ValidationFailed):
        forwarding.receive("SKU-1", "WH", 0)


def test_a_retried_write_with_its_key_is_answered_from_the_first(forwarding: Ledger) -> None:
    forwarding.receive("SKU-1", "WH", 5)
    context = CommandContext(idempotency_key="retry-1")
    lines = [OrderLine("1", "SKU-1", 1)]

    first = forwarding.place_order("shopify", "1003", lines, context=context)
    again = forwarding.place_order("shopify", "1003", lines, context=context)

    assert again.replayed and not first.replayed
    assert again.body == first.body
    assert again.position is not None
    position = forwarding.get_position("SKU-1", "WH")
    assert position is not None and position.reserved == 1


def test_concurrent_callers_through_the_writer_process_cannot_oversell(forwarding: Ledger) -> None:
    forwarding.receive("SKU-1", "WH", 10)
    outcomes: list[str] = []

    def place(n: int) -> None:
        try:
            forwarding.place_order("shopify", f"race-{n}", [OrderLine("1", "SKU-1", 1)])
            outcomes.append("placed")
        except InsufficientStock:
            outcomes.append("refused")

    callers = [threading.Thread(target=place, args=(n,)) for n in range(40)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()

    assert sorted(outcomes).count("placed") == 10
    assert outcomes.count("refused") == 30
    position = forwarding.get_position("SKU-1", "WH")
    assert position is not None and position.available_to_sell == 0
    assert forwarding.writer_stats["commands"] >= 42


def test_writes_in_flight_when_the_writer_process_dies_fail_and_the_next_starts_a_new_one(
    forwarding: Ledger,
) -> None:
    forwarding.receive("SKU-1", "WH", 100)
    writer = _writer(forwarding)
    first_pid = writer.pid
    assert first_pid is not None
    # Held in the writer process: a refusal is only answered once the process is gone.
    os.kill(first_pid, signal.SIGSTOP)
    in_flight: list[Future[WriteResult]] = [
        forwarding.submit_order("shopify", f"lost-{n}", [OrderLine("1", "SKU-1", 1)])
        for n in range(3)
    ]
    os.kill(first_pid, signal.SIGKILL)

    for future in in_flight:
        with pytest.raises(LedgerUnavailable, match="retry it with the same idempotency key"):
            future.result(timeout=30)
    deadline = time.monotonic() + 10
    while writer.pid == first_pid and time.monotonic() < deadline:
        time.sleep(0.01)  # the reply thread notices the death and lets the child go

    placed = forwarding.place_order("shopify", "after", [OrderLine("1", "SKU-1", 1)])
    assert placed.body["status"] == "reserved"
    assert writer.pid not in (None, first_pid)


def test_a_writer_process_that_cannot_open_its_ledger_fails_to_start_with_the_reason(
    ledger_url: str,
) -> None:
    env = ledger_env(ledger_url, STOCKLEDGER_SNAPSHOT_INTERVAL="often")

    with pytest.raises(ValidationFailed, match="STOCKLEDGER_SNAPSHOT_INTERVAL"):
        WriterProcess(env).start()


def test_closing_the_ledger_stops_its_writer_process(ledger_url: str) -> None:
    env = ledger_env(ledger_url)
    ledger = Ledger(env=env)
    writer = WriterProcess(env).start()
    ledger.forward_writes(writer)
    pid = writer.pid
    assert pid is not None

    ledger.close()

    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(LedgerUnavailable):
        ledger.receive("SKU-1", "WH", 1)


def test_concurrent_receipts_and_orders_through_the_writer_process_are_all_recorded(
    forwarding: Ledger,
) -> None:
    # Receipts wait on threads of the writer process; orders go straight to its committer.
    def receive(n: int) -> None:
        forwarding.receive("SKU-2", "WH", 1, reference=f"receipt-{n}")

    def place(n: int) -> None:
        forwarding.place_order("shopify", f"mixed-{n}", [OrderLine("1", "SKU-3", 1)])

    forwarding.receive("SKU-3", "WH", 20)
    callers = [threading.Thread(target=receive, args=(n,)) for n in range(20)]
    callers += [threading.Thread(target=place, args=(n,)) for n in range(20)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()

    received = forwarding.get_position("SKU-2", "WH")
    reserved = forwarding.get_position("SKU-3", "WH")
    assert received is not None and received.on_hand == 20
    assert reserved is not None and reserved.reserved == 20
