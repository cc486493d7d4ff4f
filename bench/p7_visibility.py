"""Part 7: under the load of part 1, the time from a write's commit to its effect on availability.

The service runs whole (``stockledger serve``: API, view workers and whatever else it starts) in
its own process, on 1,000 stocked SKUs. Load: 8 concurrent callers (``wrk``, 8 connections)
placing two-line orders through ``POST /v1/orders`` back to back, as in part 1.

Measurement: a sampler in the bench process reads, every ~2 ms on its own connection, the head of
the log (``max(notification_id)``: what has committed) and the availability view's position
(``projection_positions``). Each event position P commits at the first sample where the head
reaches P, and is visible at the first sample where the view reaches P; the latency is the
difference (resolution: the sampling interval). Target: p99 <= 100 ms.
"""

from __future__ import annotations

import threading
import time
from itertools import pairwise

import psycopg

from bench.common import Check, Context, CpuMeter, PartResult, console, prepare_catalog, summarize
from bench.profiling import print_profile, sampling
from bench.servers import running_server
from bench.wrk import HttpResult, finish, run_load

TITLE = "commit -> visible in availability, under the load of part 1"
CALLERS = 8
SKUS = 1000
INTERVAL = 0.002
SAMPLE = (
    "SELECT (SELECT coalesce(max(notification_id), 0) FROM ledger_events), "
    "(SELECT position FROM projection_positions WHERE name = 'availability')"
)


class Sampler(threading.Thread):
    def __init__(self, url: str) -> None:
        super().__init__(name="visibility-sampler", daemon=True)
        self.url = url
        self.samples: list[tuple[float, int, int]] = []
        self.stopping = threading.Event()
        self.error: str | None = None

    def run(self) -> None:
        try:
            with psycopg.connect(self.url, autocommit=True) as conn:
                statement = conn.cursor()
                while not self.stopping.is_set():
                    began = time.perf_counter()
                    row = statement.execute(SAMPLE, prepare=True).fetchone()
                    if row is not None:
                        self.samples.append((time.perf_counter(), int(row[0]), int(row[1] or 0)))
                    left = INTERVAL - (time.perf_counter() - began)
                    if left > 0:
                        time.sleep(left)
        except Exception as error:
            self.error = f"{type(error).__name__}: {error}"

    def latest(self) -> tuple[int, int]:
        if not self.samples:
            return 0, 0
        _, head, view = self.samples[-1]
        return head, view


def latencies(samples: list[tuple[float, int, int]], since: int) -> list[float]:
    """Per event position after ``since``: first time the view reached it minus first time the
    head reached it."""
    commit_at: dict[int, float] = {}
    visible_at: dict[int, float] = {}
    head_seen, view_seen = since, since
    for moment, head, view in samples:
        if head > head_seen:
            for position in range(head_seen + 1, head + 1):
                commit_at[position] = moment
            head_seen = head
        if view > view_seen:
            for position in range(view_seen + 1, view + 1):
                visible_at[position] = moment
            view_seen = view
    return [
        visible_at[position] - committed
        for position, committed in commit_at.items()
        if position in visible_at
    ]


def run(ctx: Context) -> PartResult:
    result = PartResult("p7", TITLE)
    seconds = ctx.seconds(20, 6)
    with ctx.database("p7") as url:
        setup = prepare_catalog(url, SKUS)
        with running_server(ctx, url, kind="product", api_only=False, label="serve") as server:
            sampler = Sampler(url)
            sampler.start()
            time.sleep(1.0)
            start_head, start_view = sampler.latest()
            if start_view < start_head:
                result.notes.append(f"view behind at start: {start_view} < {start_head}")
            meter = CpuMeter(server=server.pid)
            process = run_load(
                server.base_url,
                "orders",
                seconds=seconds,
                connections=CALLERS,
                threads=1,
                token=ctx.admin_key,
                skus=SKUS,
                run_id=f"{ctx.run_id}-p7",
                workdir=ctx.workdir,
                wait=False,
            )
            assert not isinstance(process, HttpResult)
            load = finish(process)
            cpu = meter.stop()
            end_head = sampler.latest()[0]
            deadline = time.monotonic() + 20
            while sampler.latest()[1] < end_head and time.monotonic() < deadline:
                time.sleep(0.05)
            sampler.stopping.set()
            sampler.join(5)
            samples = list(sampler.samples)
            lag = latencies(samples, start_head)
            stats = summarize(lag, 1000)
            intervals = [b[0] - a[0] for a, b in pairwise(samples)]
            console.print(
                f"  {load.rate:,.0f} orders/s over HTTP; "
                f"commit->visible p50 {stats.get('p50', 0):.1f} ms, "
                f"p95 {stats.get('p95', 0):.1f} ms, p99 {stats.get('p99', 0):.1f} ms "
                f"({stats.get('count', 0):,} events)"
            )
            p99 = stats.get("p99", float("nan"))
            result.checks = [
                Check.at_most("commit -> visible in availability, p99", p99, 100.0, "ms")
            ]
            result.details = {
                "latency_ms": stats,
                "events_measured": len(lag),
                "events_not_visible": (end_head - start_head) - len(lag),
                "sampling_interval_ms": summarize(intervals, 1000),
                "sampler_error": sampler.error,
                "load": load.to_json(),
                "cpu": cpu,
                "setup": setup,
                "memory_kib": server.memory(),
            }
            result.notes.append(
                f"load: {load.rate:,.0f} orders/s (8 connections, HTTP), p50 "
                f"{load.latency_ms['p50']:.1f} ms; server "
                f"{cpu.get('server_percent_of_one_core', 0):.0f}% of a core, machine "
                f"{cpu.get('machine_busy_percent', 0):.0f}% busy; sampling every "
                f"{result.details['sampling_interval_ms'].get('mean', 0):.1f} ms"
            )
            if load.other:
                result.notes.append(f"{load.other} non-2xx; first: {load.first_error[:160]}")
            if sampler.error:
                result.notes.append(f"sampler: {sampler.error}")
            if not result.passed and ctx.profile:
                with sampling(server.pid, ctx.profiles_dir / "p7_serve.txt") as profile:
                    again = run_load(
                        server.base_url,
                        "orders",
                        seconds=ctx.seconds(10, 4),
                        connections=CALLERS,
                        threads=1,
                        token=ctx.admin_key,
                        skus=SKUS,
                        run_id=f"{ctx.run_id}-p7p",
                        workdir=ctx.workdir,
                    )
                    del again
                result.profiles["serve (API + workers) under load"] = profile
                print_profile("serve (API + workers) under load", profile)
    return result
