"""Availability reads answered together: one statement for the reads that arrive together.

``GET /v1/availability/{sku}`` is the busiest read, and a round trip to PostgreSQL of its own
cost each one about as much as all the rest of the request (a send and a receive on each side,
the backend woken for every read). Here a read joins the next statement to be sent: while
``MAX_IN_FLIGHT`` statements are out, the reads arriving meanwhile gather for the next one, so
under load a round trip answers many reads; alone, a read goes at once (after the event loop's
current turn, so that reads arriving in the same turn go together).

Each answer is as fresh as a statement of its own would give: a read joins only a statement sent
after it arrived, and its ``position`` is the view's in that statement's snapshot. Nothing is
kept once answered, so memory does not grow with the view.
"""

from __future__ import annotations

import asyncio
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

from projections import availability

# Statements out at once. Two: one being answered by PostgreSQL while the other's answers are
# sent; more would only split the waiting reads into smaller statements.
MAX_IN_FLIGHT = 2
# SKUs in one statement (the bulk read's limit): beyond it, the rest wait for the next.
MAX_BATCH = 500

Answer = dict[str, Any]


class AvailabilityReader:
    def __init__(
        self,
        pool: AsyncConnectionPool[AsyncConnection[TupleRow]],
        *,
        max_in_flight: int = MAX_IN_FLIGHT,
        max_batch: int = MAX_BATCH,
    ) -> None:
        self._pool = pool
        self._max_in_flight = max_in_flight
        self._max_batch = max_batch
        self._waiting: dict[str, list[asyncio.Future[Answer]]] = {}
        self._in_flight = 0
        self._start_scheduled = False
        self._statements: set[asyncio.Task[None]] = set()  # referenced until done

    async def read(self, sku: str) -> Answer:
        """The SKU's availability, as ``projections.availability.sku_availability`` gives it."""
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Answer] = loop.create_future()
        self._waiting.setdefault(sku, []).append(answer)
        self._schedule(loop)
        return await answer

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._waiting and not self._start_scheduled and self._in_flight < self._max_in_flight:
            self._start_scheduled = True
            loop.call_soon(self._start, loop)

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._start_scheduled = False
        if not self._waiting or self._in_flight >= self._max_in_flight:
            return
        if len(self._waiting) <= self._max_batch:
            batch, self._waiting = self._waiting, {}
        else:
            skus = list(self._waiting)[: self._max_batch]
            batch = {sku: self._waiting.pop(sku) for sku in skus}
        self._in_flight += 1
        statement = loop.create_task(self._answer(batch))
        self._statements.add(statement)
        statement.add_done_callback(self._statements.discard)

    async def _answer(self, batch: dict[str, list[asyncio.Future[Answer]]]) -> None:
        try:
            async with self._pool.connection() as connection:
                answers = await availability.skus_availability(connection, list(batch))
        except Exception as error:
            # Each read raises it as its own would have (503 for an unreachable database).
            for sku_waiting in batch.values():
                for waiting in sku_waiting:
                    if not waiting.done():
                        waiting.set_exception(error)
        except BaseException:
            for sku_waiting in batch.values():
                for waiting in sku_waiting:
                    waiting.cancel()
            raise
        else:
            for sku, sku_waiting in batch.items():
                for waiting in sku_waiting:
                    if not waiting.done():  # a read whose request was cancelled meanwhile
                        waiting.set_result(answers[sku])
        finally:
            self._in_flight -= 1
            self._schedule(asyncio.get_running_loop())
