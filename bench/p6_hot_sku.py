"""Part 6: reserving on a SKU with a 100,000-event history, against a fresh SKU.

The hot position's history (100,000 events: receipts, reservations, payments, shipments, sales...)
is generated with the domain's aggregate and the ledger's mapper, with a snapshot every 200
versions as the service's writer takes them (``bench.datagen.hot_history``). The fresh SKU has
only its opening receipt.

Measured: reservations per second on one position: 8 concurrent callers place one-line orders
(one unit, at the warehouse) on that SKU, through a new ``Ledger`` (cold cache: the first command
loads the position, which is part of the measurement). The same for the fresh SKU; the two runs
alternate twice and add up. Also reported: the first command's latency on a cold ledger.
Target: hot >= 0.8x fresh.
"""

from __future__ import annotations

import random
import time
from typing import Any

from adapters.postgres import ledger_env
from bench import datagen
from bench.common import (
    CHANNEL,
    WAREHOUSE,
    Check,
    Context,
    LoadResult,
    PartResult,
    closed_loop,
    console,
    summarize,
)
from bench.profiling import print_profile, profile_call
from domain.service import CommandContext, Ledger, OrderLine

TITLE = "reserving on a SKU with a 100,000-event history vs a fresh SKU"
CALLERS = 8
HOT_SKU = "HOT-SKU-1"
FRESH_SKU = "FRESH-SKU-1"


def reserve_load(
    url: str, sku: str, seconds: float, tag: str
) -> tuple[LoadResult, float, dict[str, Any]]:
    """A cold ledger; the first reservation timed alone, then 8 callers for ``seconds``."""
    ledger = Ledger(env=ledger_env(url, STOCKLEDGER_RESERVATION_TTL="0"))
    try:
        began = time.perf_counter()
        ledger.place_order(CHANNEL, f"{tag}-first", [OrderLine("1", sku, 1, WAREHOUSE)])
        first = time.perf_counter() - began
        randoms = [random.Random(i) for i in range(CALLERS)]

        def reserve(worker: int, n: int) -> None:
            external = f"{tag}-{worker}-{n}-{randoms[worker].getrandbits(32):08x}"
            ledger.place_order(
                CHANNEL,
                external,
                [OrderLine("1", sku, 1, WAREHOUSE)],
                context=CommandContext(idempotency_key=external),
            )

        load = closed_loop(CALLERS, seconds, reserve, warmup=0.5)
        return load, first, dict(ledger.committer.stats)
    finally:
        ledger.close()


def run(ctx: Context) -> PartResult:
    result = PartResult("p6", TITLE)
    history = 100_000
    seconds = ctx.seconds(6, 2)
    with ctx.database("p6") as url:
        datagen.register_locations(url)
        generated = datagen.hot_history(url, HOT_SKU, WAREHOUSE, history)
        console.print(
            f"  hot history: {generated['events']:,} events, {generated['snapshots']} snapshots "
            f"in {generated['seconds']:.1f}s"
        )
        setup = Ledger(env=ledger_env(url))
        try:
            setup.receive(FRESH_SKU, WAREHOUSE, 10_000_000, reference="bench")
        finally:
            setup.close()
        runs: dict[str, list[LoadResult]] = {"hot": [], "fresh": []}
        firsts: dict[str, list[float]] = {"hot": [], "fresh": []}
        for round_number in range(2):
            for name, sku in (("fresh", FRESH_SKU), ("hot", HOT_SKU)):
                load, first, _ = reserve_load(
                    url, sku, seconds, f"{ctx.run_id}-{name}-{round_number}"
                )
                runs[name].append(load)
                firsts[name].append(first)
                console.print(
                    f"  {name}: {load.rate:,.0f} reservations/s, "
                    f"first command {first * 1000:.1f} ms"
                )

        def rate(name: str) -> float:
            return sum(r.operations for r in runs[name]) / sum(r.seconds for r in runs[name])

        hot, fresh = rate("hot"), rate("fresh")
        result.checks = [
            Check.ratio_at_least(
                "reservations/s, hot SKU vs fresh SKU", hot, fresh, 0.8, "/s", "fresh SKU"
            )
        ]
        result.details = {
            "history": generated,
            "seconds_per_run": seconds,
            "hot": {
                "reservations_per_second": hot,
                "runs": [r.rate for r in runs["hot"]],
                "latency_ms": summarize([x for r in runs["hot"] for x in r.latencies], 1000),
                "first_command_ms": [f * 1000 for f in firsts["hot"]],
                "errors": sum(r.errors for r in runs["hot"]),
                "error_samples": [e for r in runs["hot"] for e in r.error_samples][:3],
            },
            "fresh": {
                "reservations_per_second": fresh,
                "runs": [r.rate for r in runs["fresh"]],
                "latency_ms": summarize([x for r in runs["fresh"] for x in r.latencies], 1000),
                "first_command_ms": [f * 1000 for f in firsts["fresh"]],
                "errors": sum(r.errors for r in runs["fresh"]),
            },
        }
        result.notes.append(
            f"first command on a cold ledger: hot {min(firsts['hot']) * 1000:.1f} ms, "
            f"fresh {min(firsts['fresh']) * 1000:.1f} ms (snapshot every 200 versions)"
        )
        errors = result.details["hot"]["errors"] + result.details["fresh"]["errors"]
        if errors:
            result.notes.append(f"{errors} errors; {result.details['hot']['error_samples'][:1]}")
        if not result.passed and ctx.profile:
            profile = profile_call(
                "p6_hot",
                ctx.profiles_dir,
                lambda: reserve_load(url, HOT_SKU, ctx.seconds(8, 3), f"{ctx.run_id}-profile"),
            )
            result.profiles["hot SKU reservations"] = profile
            print_profile("hot SKU reservations", profile)
    return result
