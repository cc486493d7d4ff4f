"""Unit-test fixtures: the Ledger in memory, a standard set of locations, and a probe to read
back what was recorded.

The standard locations (``shop``): two warehouses serving ``shopify`` (WH-A first by priority,
then WH-B) and one store serving ``pos``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from uuid import UUID

import pytest

from adapters.memory import MEMORY_ENV
from domain.base import CommandMetadata
from domain.committer import Command, Scope
from domain.keys import position_id
from domain.service import Ledger


class Probe:
    """Reads what the ledger recorded, straight from its event store."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def buckets(self, sku: str, location: str) -> dict[str, int]:
        position = self.ledger.get_position(sku, location)
        assert position is not None, f"no position {sku}@{location}"
        return dict(position.buckets())

    def events(self, aggregate_id: UUID) -> list[Any]:
        return list(self.ledger.repository.event_store.get(aggregate_id))

    def types(self, aggregate_id: UUID) -> list[str]:
        return [type(event).__name__ for event in self.events(aggregate_id)]

    def position_events(self, sku: str, location: str) -> list[Any]:
        return self.events(position_id(sku, location))

    def position_types(self, sku: str, location: str) -> list[str]:
        return self.types(position_id(sku, location))

    def last(self) -> int:
        return self.ledger.recorder.max_notification_id() or 0

    def all_events(self) -> list[Any]:
        notifications = self.ledger.recorder.select_notifications(start=1, limit=1_000_000)
        return [self.ledger.mapper.to_domain_event(n) for n in notifications]

    def events_after(self, position: int) -> list[Any]:
        notifications = self.ledger.recorder.select_notifications(
            start=position + 1, limit=1_000_000
        )
        return [self.ledger.mapper.to_domain_event(n) for n in notifications]


@contextmanager
def holding_the_writer(ledger: Ledger) -> Iterator[None]:
    """Keeps the ledger's writer busy with a command that waits for the block to end, so that
    what the block submits queues behind it; the holding command is answered on the way out."""
    holding, release = threading.Event(), threading.Event()

    def hold(scope: Scope) -> dict[str, Any]:
        holding.set()
        release.wait(timeout=5)
        return {}

    held = ledger.committer.submit(
        Command("test.hold", "-", None, hold, CommandMetadata("hold", "hold"))
    )
    # Once it runs, its batch is made: what the block submits queues behind it.
    assert holding.wait(timeout=5), "the writer did not start the holding command"
    try:
        yield
    finally:
        release.set()
        held.result(timeout=5)


def register_standard_locations(ledger: Ledger) -> None:
    ledger.register_location(
        "WH-A",
        name="Warehouse A",
        kind="warehouse",
        channels=["shopify"],
        priority=1,
        external_ids={"shopify": "1001"},
    )
    ledger.register_location(
        "WH-B",
        name="Warehouse B",
        kind="warehouse",
        channels=["shopify"],
        priority=2,
        external_ids={"shopify": "1002"},
    )
    ledger.register_location("STORE-1", name="Store 1", kind="store", channels=["pos"], priority=10)


@pytest.fixture
def ledger() -> Iterator[Ledger]:
    the_ledger = Ledger(env=MEMORY_ENV)
    yield the_ledger
    the_ledger.close()


@pytest.fixture
def shop(ledger: Ledger) -> Ledger:
    """A ledger with WH-A (shopify, priority 1), WH-B (shopify, priority 2), STORE-1 (pos)."""
    register_standard_locations(ledger)
    return ledger


@pytest.fixture
def probe(ledger: Ledger) -> Probe:
    return Probe(ledger)
