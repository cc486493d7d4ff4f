"""AvailabilityReader: reads that arrive together share a statement, and no read is answered by a
statement sent before it arrived. The statement itself is replaced by a recording fake (the
real one is exercised over HTTP in tests/e2e/test_availability_reads.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest

from api import availability_reads
from api.availability_reads import AvailabilityReader


class FakeStatements:
    """Stands in for ``skus_availability``: records each statement's SKUs, answers each SKU with
    the statement's number, and holds a statement back until released when asked to."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.hold = False
        self.release = asyncio.Event()
        self.fail_with: Exception | None = None

    async def __call__(self, connection: Any, skus: Sequence[str]) -> dict[str, dict[str, Any]]:
        self.batches.append(list(skus))
        number = len(self.batches)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.hold:
                await self.release.wait()
            if self.fail_with is not None:
                raise self.fail_with
            return {sku: {"sku": sku, "statement": number} for sku in skus}
        finally:
            self.in_flight -= 1


class FakePool:
    @asynccontextmanager
    async def connection(self) -> AsyncIterator[object]:
        yield object()


@pytest.fixture
def statements(monkeypatch: pytest.MonkeyPatch) -> FakeStatements:
    fake = FakeStatements()
    monkeypatch.setattr(availability_reads.availability, "skus_availability", fake)
    return fake


def _reader(**limits: int) -> AvailabilityReader:
    return AvailabilityReader(FakePool(), **limits)  # type: ignore[arg-type]


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_reads_arriving_together_share_one_statement(statements: FakeStatements) -> None:
    async def scenario() -> list[dict[str, Any]]:
        reader = _reader()
        return await asyncio.gather(*(reader.read(sku) for sku in ["A", "B", "A", "C"]))

    answers = asyncio.run(scenario())

    assert statements.batches == [["A", "B", "C"]]
    assert [answer["sku"] for answer in answers] == ["A", "B", "A", "C"]


def test_a_read_arriving_while_a_statement_is_out_waits_for_the_next(
    statements: FakeStatements,
) -> None:
    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        reader = _reader(max_in_flight=1)
        statements.hold = True
        first = asyncio.ensure_future(reader.read("A"))
        await _settle()  # the first statement is out, held
        second = asyncio.ensure_future(reader.read("A"))
        await _settle()
        assert statements.batches == [["A"]]  # the second read did not join it
        statements.release.set()
        return await first, await second

    first, second = asyncio.run(scenario())

    assert (first["statement"], second["statement"]) == (1, 2)
    assert statements.batches == [["A"], ["A"]]


def test_no_more_statements_are_out_than_allowed(statements: FakeStatements) -> None:
    async def scenario() -> None:
        reader = _reader(max_in_flight=2)
        statements.hold = True
        reads = []
        for n in range(6):
            reads.append(asyncio.ensure_future(reader.read(f"SKU-{n}")))
            await _settle()
        assert statements.in_flight == 2
        statements.release.set()
        await asyncio.gather(*reads)

    asyncio.run(scenario())

    assert statements.most_in_flight == 2
    # Two went alone; the four that waited meanwhile went together.
    assert sorted(len(batch) for batch in statements.batches) == [1, 1, 4]


def test_a_statement_takes_at_most_max_batch_skus(statements: FakeStatements) -> None:
    async def scenario() -> None:
        reader = _reader(max_in_flight=1, max_batch=3)
        await asyncio.gather(*(reader.read(f"SKU-{n}") for n in range(7)))

    asyncio.run(scenario())

    assert [len(batch) for batch in statements.batches] == [3, 3, 1]


def test_a_failed_statement_fails_each_of_its_reads_and_the_next_ones_still_go(
    statements: FakeStatements,
) -> None:
    async def scenario() -> tuple[list[BaseException | dict[str, Any]], dict[str, Any]]:
        reader = _reader()
        statements.fail_with = ConnectionError("database gone")
        failed = await asyncio.gather(reader.read("A"), reader.read("B"), return_exceptions=True)
        statements.fail_with = None
        return failed, await reader.read("A")

    failed, later = asyncio.run(scenario())

    assert all(isinstance(error, ConnectionError) for error in failed)
    assert later["sku"] == "A"
