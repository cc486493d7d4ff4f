"""Part 8: 1,000,000 positions in the view: the service's memory and availability latency.

Two databases: 1,000 positions and 1,000,000 (100,000 with --quick), each position opened and
received at the warehouse; the view rows are written beside the events (``bench.datagen``; the
small one is checked against the product's projection first). The service runs whole
(``stockledger serve``: API and workers) in its own process.

Measured on each: ``GET /v1/availability/{sku}`` for random SKUs with ``wrk`` (32 connections):
p99 latency. On the large one, then a write phase (``POST /v1/orders`` on random SKUs, 32
connections) that fills the service's aggregate cache as real traffic would. The server's resident
memory (VmRSS, and its peak VmHWM) is read from /proc throughout.
Targets: peak RSS <= 1 GiB with the large view; availability p99 <= 1.5x the small one's.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from bench import datagen
from bench.common import (
    Check,
    Context,
    CpuMeter,
    PartResult,
    catch_up_views,
    console,
    mark_relays_caught_up,
)
from bench.profiling import print_profile, sampling
from bench.servers import Server, running_server
from bench.wrk import HttpResult, run_load

TITLE = "1,000,000 positions: service memory and availability p99 vs 1,000 positions"
CONNECTIONS = 32
SMALL = 1000


class MemoryWatch(threading.Thread):
    def __init__(self, server: Server) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.peak_rss = 0
        self.peak_hwm = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(0.25):
            self.sample()

    def sample(self) -> dict[str, int]:
        memory = self.server.memory()
        self.peak_rss = max(self.peak_rss, memory.get("VmRSS", 0))
        self.peak_hwm = max(self.peak_hwm, memory.get("VmHWM", 0))
        return memory


def populate(ctx: Context, url: str, positions: int) -> dict[str, Any]:
    datagen.register_locations(url)
    catch_up_views(url, datagen.ledger_mapper())
    began = time.perf_counter()
    stats = datagen.position_log(url, positions)
    mark_relays_caught_up(url)
    stats["seconds"] = time.perf_counter() - began
    return stats


def http(
    ctx: Context, server: Server, kind: str, seconds: float, skus: int, tag: str
) -> HttpResult:
    result = run_load(
        server.base_url,
        kind,
        seconds=seconds,
        connections=CONNECTIONS,
        token=ctx.admin_key,
        skus=skus,
        run_id=f"{ctx.run_id}-{tag}",
        workdir=ctx.workdir,
    )
    assert isinstance(result, HttpResult)
    return result


def measure(
    ctx: Context, url: str, positions: int, *, writes: bool, small_p99: float | None = None
) -> dict[str, Any]:
    """Reads (and with ``writes`` a write phase) against a server on ``url``. Profiles the
    server's reads when a target is already missed (known before the server stops)."""
    seconds = ctx.seconds(15, 4)
    found: dict[str, Any] = {"positions": positions}
    with running_server(
        ctx, url, kind="product", api_only=False, label=f"serve-{positions}"
    ) as server:
        watch = MemoryWatch(server)
        watch.start()
        try:
            time.sleep(1.0)
            found["memory_idle_kib"] = watch.sample()
            http(ctx, server, "availability", ctx.seconds(3, 1), positions, "warm")
            meter = CpuMeter(server=server.pid)
            reads = http(ctx, server, "availability", seconds, positions, "reads")
            found["reads"] = reads.to_json()
            found["reads"]["cpu"] = meter.stop()
            found["memory_after_reads_kib"] = watch.sample()
            console.print(
                f"  {positions:,} positions: GET availability {reads.rate:,.0f} req/s, p99 "
                f"{reads.latency_ms['p99']:.1f} ms, RSS "
                f"{found['memory_after_reads_kib'].get('VmRSS', 0) / 1024:.0f} MiB"
            )
            if writes:
                orders = http(ctx, server, "orders", ctx.seconds(30, 5), positions, "writes")
                found["writes"] = orders.to_json()
                time.sleep(2.0)  # the views catch up
                found["memory_after_writes_kib"] = watch.sample()
                console.print(
                    f"  write phase: {orders.ok:,} orders ({orders.rate:,.0f}/s), RSS "
                    f"{found['memory_after_writes_kib'].get('VmRSS', 0) / 1024:.0f} MiB"
                )
            found["peak_rss_kib"] = watch.peak_rss
            found["peak_hwm_kib"] = max(watch.peak_hwm, watch.sample().get("VmHWM", 0))
        finally:
            watch.stopping.set()
            watch.join(2)
        missed = found["peak_hwm_kib"] > 1024 * 1024 or (
            small_p99 is not None and reads.latency_ms["p99"] > 1.5 * small_p99
        )
        if ctx.profile and missed:
            found["profile_reads"] = _profile(ctx, server, positions)
    return found


def _profile(ctx: Context, server: Server, positions: int) -> dict[str, Any]:
    with sampling(server.pid, ctx.profiles_dir / "p8_serve_reads.txt") as profile:
        http(ctx, server, "availability", ctx.seconds(8, 3), positions, "profile")
    return profile


def cache_footprint(count: int = 20_000) -> dict[str, float]:
    """Bytes per aggregate the ledger's cache holds, by tracemalloc: ``count`` orders of two
    lines and their two positions, shaped as the service leaves them after placing an order."""
    import gc
    import tracemalloc

    from bench.common import CHANNEL, WAREHOUSE, sku_name
    from domain.keys import order_id, position_id
    from domain.order import Movement, Order
    from domain.stock import StockPosition

    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    kept: list[Any] = []
    for n in range(count):
        a, b = sku_name(2 * n + 1), sku_name(2 * n + 2)
        positions = []
        for sku in (a, b):
            position = StockPosition.open(
                StockPosition.Opened, position_id(sku, WAREHOUSE), sku=sku, location=WAREHOUSE
            )
            position.receive(100, "bench")
            positions.append(position)
        external = f"footprint-{n}"
        order = Order.open(
            Order.Placed,
            order_id(CHANNEL, external),
            channel=CHANNEL,
            external_id=external,
            lines=[
                {"line_id": "1", "sku": a, "quantity": 1, "location": None},
                {"line_id": "2", "sku": b, "quantity": 1, "location": None},
            ],
            currency=None,
            total=None,
            allow_backorder=False,
        )
        positions[0].reserve(str(order.id), "1", 1)
        positions[1].reserve(str(order.id), "2", 1)
        order.record_reservations(
            [Movement("1", a, WAREHOUSE, 1), Movement("2", b, WAREHOUSE, 1)], {}
        )
        for aggregate in (order, *positions):
            aggregate.collect_events()
        kept.extend((order, *positions))
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    del kept
    return {"aggregates": 3 * count, "bytes_per_aggregate": used / (3 * count)}


def run(ctx: Context) -> PartResult:
    result = PartResult("p8", TITLE)
    large = ctx.size(1_000_000, 100_000)
    with ctx.database("p8_small") as url:
        small_setup = populate(ctx, url, SMALL)
        differences = datagen.verify_view(url)
        if differences:
            result.notes.append(
                f"view rows written directly differ from the projection's: {differences[:2]}"
            )
        small = measure(ctx, url, SMALL, writes=False)
    with ctx.database("p8_large") as url:
        console.print(
            f"  generating {large:,} positions ({2 * large:,} events) and their view rows..."
        )
        large_setup = populate(ctx, url, large)
        console.print(f"  generated in {large_setup['seconds']:.0f}s")
        big = measure(ctx, url, large, writes=True, small_p99=small["reads"]["latency_ms"]["p99"])
    peak_mib = big["peak_hwm_kib"] / 1024
    small_peak_mib = small["peak_hwm_kib"] / 1024
    rss = Check.at_most("server peak RSS with the large view", peak_mib, 1024, "MiB")
    rss.baseline, rss.baseline_name = small_peak_mib, f"{SMALL:,} positions"
    rss.ratio = peak_mib / small_peak_mib if small_peak_mib else None
    result.checks = [
        rss,
        Check.ratio_at_most(
            f"availability p99, {large:,} vs {SMALL:,} positions",
            big["reads"]["latency_ms"]["p99"],
            small["reads"]["latency_ms"]["p99"],
            1.5,
            "ms",
            f"{SMALL:,} positions",
        ),
    ]
    profile = big.pop("profile_reads", None)
    if profile:
        result.profiles["serve, GET availability on the large view"] = profile
        print_profile("serve, GET availability on the large view", profile)
    result.details = {
        "small": small,
        "large": big,
        "setup": {"small": small_setup, "large": large_setup},
        "view_check_differences": differences,
    }
    footprint = cache_footprint()
    from adapters.memory import MEMORY_ENV
    from domain.service import Ledger

    probe = Ledger(env=dict(MEMORY_ENV))
    cache_size = int(getattr(probe.committer, "_cache_size", 200_000))
    probe.close()
    projected = (
        big["memory_idle_kib"].get("VmRSS", 0) / 1024
        + cache_size * footprint["bytes_per_aggregate"] / 2**20
    )
    result.details["cache_footprint"] = {
        **footprint,
        "cache_size": cache_size,
        "projected_rss_mib_with_full_cache": projected,
    }
    result.notes.append(
        f"aggregate cache: ~{footprint['bytes_per_aggregate']:,.0f} bytes per cached aggregate "
        f"(tracemalloc); a full cache of {cache_size:,} would put the server near "
        f"{projected:,.0f} MiB"
    )
    writes = big.get("writes", {})
    result.notes.append(
        f"reads: {big['reads']['ok_per_second']:,.0f} req/s large vs "
        f"{small['reads']['ok_per_second']:,.0f} small; p50 "
        f"{big['reads']['latency_ms']['p50']:.1f} vs "
        f"{small['reads']['latency_ms']['p50']:.1f} ms"
    )
    if writes:
        idle = big["memory_idle_kib"].get("VmRSS", 0) / 1024
        after = big["memory_after_writes_kib"].get("VmRSS", 0) / 1024
        orders = writes.get("ok", 0)
        per = (after - idle) * 1024 / (3 * orders) if orders else 0
        result.notes.append(
            f"RSS idle {idle:.0f} MiB, after {orders:,} orders {after:.0f} MiB (~{per:.1f} KiB per "
            f"aggregate touched, 3 per order; the ledger caches up to 200,000 aggregates)"
        )
        big["rss_per_touched_aggregate_kib"] = per
    return result
