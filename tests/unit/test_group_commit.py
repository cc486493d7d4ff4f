"""How the writer groups commands into batches: concurrent callers share a transaction, a lone
caller is never kept waiting for company."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future

import pytest

from adapters.memory import MEMORY_ENV
from domain.committer import WriteResult
from domain.errors import ValidationFailed
from domain.service import Ledger, OrderLine
from tests.unit.conftest import holding_the_writer, register_standard_locations

SKU = "SKU-1"
# Long enough that a test would notice waiting it out; a batch that fills up never waits it.
LONG_LINGER = "5"


@pytest.fixture
def lingering() -> Iterator[Ledger]:
    ledger = Ledger(env={**MEMORY_ENV, Ledger.BATCH_LINGER: LONG_LINGER})
    register_standard_locations(ledger)
    ledger.receive(SKU, "WH-A", 100)
    try:
        yield ledger
    finally:
        ledger.close()


def _batches(ledger: Ledger) -> int:
    return ledger.committer.stats["batches"]


def test_a_lone_caller_is_answered_without_waiting_for_company(lingering: Ledger) -> None:
    began = time.monotonic()
    for number in range(3):
        placed = lingering.place_order("shopify", f"alone-{number}", [OrderLine("1", SKU, 1)])
        assert placed.body["status"] == "reserved"
    assert time.monotonic() - began < float(LONG_LINGER)


def test_callers_answered_while_others_queued_share_the_next_batch(lingering: Ledger) -> None:
    # One command holds the writer while two orders queue behind it; when it is answered, its
    # caller comes back (a moment later, as a caller does) with another order, which joins the
    # two in one batch.
    before = _batches(lingering)
    with holding_the_writer(lingering):
        queued = [
            lingering.submit_order("shopify", f"queued-{number}", [OrderLine("1", SKU, 1)])
            for number in range(2)
        ]
    time.sleep(0.2)
    began = time.monotonic()
    returning = lingering.place_order("shopify", "returning", [OrderLine("1", SKU, 1)])

    assert returning.body["status"] == "reserved"
    assert all(lingering.outcome(future).body["status"] == "reserved" for future in queued)
    assert _batches(lingering) == before + 2  # the hold's batch, then the three orders' one
    assert time.monotonic() - began < float(LONG_LINGER)  # a full batch goes at once


def test_a_batch_goes_when_the_linger_is_over_though_callers_stay_away() -> None:
    ledger = Ledger(env={**MEMORY_ENV, Ledger.BATCH_LINGER: "0.05"})
    register_standard_locations(ledger)
    ledger.receive(SKU, "WH-A", 10)
    try:
        with holding_the_writer(ledger):
            queued = ledger.submit_order("shopify", "queued", [OrderLine("1", SKU, 1)])
        # The hold's caller does not come back: the queued order is recorded all the same.
        assert ledger.outcome(queued).body["status"] == "reserved"
    finally:
        ledger.close()


def test_an_order_sources_from_a_location_an_earlier_command_of_its_batch_changed(
    shop: Ledger,
) -> None:
    # Every order of a batch reads the channel's locations, which the batch looks up once; a
    # change to one by a command between two orders must still be seen by the second.
    shop.receive(SKU, "WH-A", 10)
    shop.receive(SKU, "WH-B", 10)
    before = _batches(shop)
    with holding_the_writer(shop):
        first = shop.submit_order("shopify", "before-change", [OrderLine("1", SKU, 1)])
        change = threading.Thread(
            target=shop.register_location,
            args=("WH-B",),
            kwargs={"name": "B", "kind": "warehouse", "channels": ["shopify"], "priority": 0},
        )
        change.start()
        _wait_for_queued(shop, 2)
        second = shop.submit_order("shopify", "after-change", [OrderLine("1", SKU, 1)])
    change.join(timeout=5)

    def sources(future: Future[WriteResult]) -> list[str]:
        lines = shop.outcome(future).body["lines"]
        return [allocation["location"] for allocation in lines[0]["allocations"]]

    assert sources(first) == ["WH-A"]
    assert sources(second) == ["WH-B"]
    assert _batches(shop) == before + 2  # the hold's batch, then the three commands' one


def _wait_for_queued(ledger: Ledger, commands: int) -> None:
    deadline = time.monotonic() + 5
    while ledger.committer._queue.qsize() < commands:
        assert time.monotonic() < deadline, "the command was not queued"
        time.sleep(0.001)


@pytest.mark.parametrize("value", ["soon", "-0.1", "nan", "inf"])
def test_a_linger_that_is_not_a_usable_number_is_refused_naming_the_setting(value: str) -> None:
    with pytest.raises(ValidationFailed, match=Ledger.BATCH_LINGER):
        Ledger(env={**MEMORY_ENV, Ledger.BATCH_LINGER: value})


def test_a_driven_committer_runs_what_waits_as_one_batch_on_the_calling_thread() -> None:
    ledger = Ledger(env=MEMORY_ENV)
    woken: list[int] = []
    ledger.committer.drive(lambda: woken.append(threading.get_ident()))
    try:
        # Blocking writes from another thread wait for this one to run them.
        setup = threading.Thread(
            target=lambda: (register_standard_locations(ledger), ledger.receive(SKU, "WH-A", 10))
        )
        setup.start()
        while setup.is_alive():
            ledger.committer.run_waiting()
            time.sleep(0.001)
        assert set(woken) == {setup.ident}
        woken.clear()
        placed = [
            ledger.submit_order("shopify", f"driven-{number}", [OrderLine("1", SKU, 1)])
            for number in range(3)
        ]
        assert ledger.committer.waiting() == 3 and not any(f.done() for f in placed)

        assert ledger.committer.run_waiting() == 3

        assert [future.result(timeout=0).body["status"] for future in placed] == ["reserved"] * 3
        assert woken == []  # submitted on the driving thread itself: nothing to wake
        other = threading.Thread(
            target=ledger.submit_order,
            args=("shopify", "from-elsewhere", [OrderLine("1", SKU, 1)]),
        )
        other.start()
        other.join()
        assert woken == [other.ident]
        assert ledger.committer.run_waiting() == 1
        assert ledger.committer.run_waiting() == 0
    finally:
        ledger.close()


def test_a_committer_whose_writer_thread_runs_cannot_be_driven(lingering: Ledger) -> None:
    with pytest.raises(RuntimeError, match="already running"):
        lingering.committer.drive(lambda: None)
