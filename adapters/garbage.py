"""The garbage collector's settings for stockledger's long-running processes (``serve`` and
its writer process)."""

from __future__ import annotations

import gc


def tune_garbage_collection() -> None:
    """Puts what start-up made (modules, models, routes, the ledger: some hundred thousand
    objects that live as long as the process) out of the garbage collector's reach, and makes
    its young collections rarer. Called once a serving or writing process has started.

    Left in, each full collection walks them all, and under concurrent requests full collections
    come every second or two (a request's objects outlive two younger collections while it
    waits for the database): each stopped the event loop, and every request in flight, for 100
    to 350 ms on the benchmark machine.
    """
    gc.collect()  # start-up's own garbage is not kept for good
    gc.freeze()
    # Young collections 30 times rarer than the default 700 allocations: a write's objects
    # (request, command, events, future) then mostly die before one, rather than being promoted
    # and walked again by the older collections that the ledger's cached aggregates make long.
    # Measured on POST /v1/orders (bench p2): p99 from about 110 ms to 35-80 ms, and up to a
    # fifth more orders per second.
    gc.set_threshold(20_000, 20, 20)
