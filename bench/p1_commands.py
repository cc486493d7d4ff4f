"""Part 1: place-order commands per second through the application service.

Workload: 8 concurrent callers (threads) call ``Ledger.place_order`` back to back, each order two
lines of one unit on random SKUs (1,000 SKUs, plenty of stock), sourced from the channel's
locations, with an idempotency key, as the HTTP API would call it.

Baselines, measured in the same run on the same PostgreSQL:
- raw psycopg: one-row ``INSERT`` commits (autocommit) on 4 connections, 4 threads;
- naive eventsourcing: a plain ``eventsourcing.application.Application`` on PostgreSQL (its own
  recorder, table lock per insert) with the same aggregates, one ``save()`` per command: load both
  positions, open the order, reserve, save; retried on a version conflict. 8 callers.

Targets: >= 0.5x the raw commit rate, >= 3x the naive rate.

Beside the check, the same load from 8 callers that are tasks on one event loop
(``Ledger.submit_order``, the future awaited on the loop, as the HTTP API calls the service): how
much of an order's cost is its blocking callers' (threads handing the GIL back and forth).
"""

from __future__ import annotations

import asyncio
import gc
import os
import random
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

import psycopg
from eventsourcing.application import Application
from eventsourcing.persistence import IntegrityError
from psycopg.conninfo import conninfo_to_dict

from adapters.postgres import ledger_env
from adapters.writer_process import WriterProcess
from bench.common import (
    CHANNEL,
    WAREHOUSE,
    Check,
    Context,
    CpuMeter,
    LoadResult,
    PartResult,
    closed_loop,
    console,
    postgres_server_pid,
    process_cpu_seconds,
    setup_catalog,
    sku_name,
    summarize,
)
from bench.profiling import print_profile, profile_call
from bench.sqlstats import counting_statements, per_operation
from domain.base import CommandMetadata, recording_metadata
from domain.keys import order_id, position_id
from domain.order import Movement, Order
from domain.service import CommandContext, Ledger, OrderLine
from domain.stock import StockPosition

TITLE = "place-order commands/s through the service (8 callers)"
CALLERS = 8
RAW_CONNECTIONS = 4
RAW_TARGET = 0.5  # the service's rate, at least, as a share of the raw commits'
SKUS = 1000


# --- baselines -------------------------------------------------------------------------------
def raw_commits(url: str, seconds: float, connections: int = RAW_CONNECTIONS) -> LoadResult:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE bench_raw (id bigserial PRIMARY KEY, payload text NOT NULL, "
            "created_at timestamptz NOT NULL DEFAULT now())"
        )
    payload = "x" * 200
    local = threading.local()
    opened: list[psycopg.Connection[Any]] = []

    def insert(worker: int, n: int) -> None:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = psycopg.connect(url, autocommit=True)
            opened.append(conn)
        conn.execute("INSERT INTO bench_raw (payload) VALUES (%s)", (payload,))

    try:
        return closed_loop(connections, seconds, insert, warmup=1.0)
    finally:
        for conn in opened:
            conn.close()


class NaiveLedger(Application[Any]):
    """eventsourcing as its documentation shows it: one save per command."""

    name = "NaiveLedger"


def naive_env(url: str) -> dict[str, str]:
    params = conninfo_to_dict(url)
    return {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": str(params.get("dbname")),
        "POSTGRES_HOST": str(params.get("host") or "127.0.0.1"),
        "POSTGRES_PORT": str(params.get("port") or "5432"),
        "POSTGRES_USER": str(params.get("user") or "postgres"),
        "POSTGRES_PASSWORD": str(params.get("password") or ""),
        "POSTGRES_POOL_SIZE": str(CALLERS),
        "CREATE_TABLE": "y",
    }


def naive_commands(url: str, seconds: float, run_id: str) -> tuple[LoadResult, dict[str, int]]:
    app = NaiveLedger(env=naive_env(url))
    stats = {"conflicts": 0}
    try:
        positions = []
        for number in range(1, SKUS + 1):
            sku = sku_name(number)
            position = StockPosition.open(
                StockPosition.Opened, position_id(sku, WAREHOUSE), sku=sku, location=WAREHOUSE
            )
            position.receive(100_000_000, "bench")
            positions.append(position)
        app.save(*positions)
        randoms = [random.Random(i) for i in range(CALLERS)]

        def place(worker: int, n: int) -> None:
            rng = randoms[worker]
            external = f"naive-{run_id}-{worker}-{n}"
            a, b = rng.sample(range(1, SKUS + 1), 2)
            for _ in range(10):
                try:
                    with recording_metadata(CommandMetadata(external, external)):
                        get = app.repository.get
                        first: StockPosition = get(position_id(sku_name(a), WAREHOUSE))
                        second: StockPosition = get(position_id(sku_name(b), WAREHOUSE))
                        order = Order.open(
                            Order.Placed,
                            order_id(CHANNEL, external),
                            channel=CHANNEL,
                            external_id=external,
                            lines=[
                                {
                                    "line_id": "1",
                                    "sku": sku_name(a),
                                    "quantity": 1,
                                    "location": None,
                                },
                                {
                                    "line_id": "2",
                                    "sku": sku_name(b),
                                    "quantity": 1,
                                    "location": None,
                                },
                            ],
                            currency=None,
                            total=None,
                            allow_backorder=False,
                        )
                        first.reserve(str(order.id), "1", 1)
                        second.reserve(str(order.id), "2", 1)
                        order.record_reservations(
                            [
                                Movement("1", sku_name(a), WAREHOUSE, 1),
                                Movement("2", sku_name(b), WAREHOUSE, 1),
                            ],
                            {},
                        )
                        app.save(order, first, second)
                    return
                except IntegrityError:
                    stats["conflicts"] += 1
            raise RuntimeError("naive command lost 10 races")

        return closed_loop(CALLERS, seconds, place, warmup=1.0), stats
    finally:
        app.close()


# --- the service -----------------------------------------------------------------------------
def random_order(rng: random.Random, name: str) -> tuple[str, list[OrderLine], CommandContext]:
    """An order's external id (``name`` and a random suffix), its lines (one unit each of two
    random SKUs) and its context (the id as the idempotency key), as the API would pass them."""
    external = f"{name}-{rng.getrandbits(32):08x}"
    a, b = rng.sample(range(1, SKUS + 1), 2)
    lines = [OrderLine("1", sku_name(a), 1), OrderLine("2", sku_name(b), 1)]
    return external, lines, CommandContext(idempotency_key=external)


def service_load(ledger: Ledger, seconds: float, run_id: str, warmup: float = 1.0) -> LoadResult:
    randoms = [random.Random(100 + i) for i in range(CALLERS)]

    def place(worker: int, n: int) -> None:
        external, lines, context = random_order(randoms[worker], f"svc-{run_id}-{worker}-{n}")
        ledger.place_order(CHANNEL, external, lines, context=context)

    return closed_loop(CALLERS, seconds, place, warmup=warmup)


def with_costs(
    ledger: Ledger, load: Callable[[], LoadResult]
) -> tuple[LoadResult, float, dict[str, int]]:
    """Runs ``load``; returns it with the process's CPU seconds and the writer's counters
    (batches, commands, conflicts, stale refusals) over it."""
    before = ledger.writer_stats
    cpu = time.process_time()
    result = load()
    cpu = time.process_time() - cpu
    after = ledger.writer_stats
    return result, cpu, {name: after.get(name, 0) - before.get(name, 0) for name in after}


def loop_callers_load(
    ledger: Ledger, seconds: float, run_id: str, warmup: float = 1.0
) -> LoadResult:
    """``service_load`` with the callers as tasks on one event loop (uvloop, as ``serve`` runs
    when it is installed): each submits its order and awaits the writer's answer there."""
    latencies: list[float] = []
    errors: list[str] = []

    async def load() -> float:
        clock = time.perf_counter  # uvloop's loop.time() counts whole milliseconds
        begin = clock() + warmup
        end = begin + seconds

        async def caller(worker: int) -> None:
            rng = random.Random(300 + worker)
            n = 0
            while (started := clock()) < end:
                n += 1
                external, lines, context = random_order(rng, f"loop-{run_id}-{worker}-{n}")
                try:
                    future = ledger.submit_order(CHANNEL, external, lines, context=context)
                    await asyncio.wrap_future(future)
                except Exception as error:  # counted, and a few kept for the report
                    if started >= begin:
                        errors.append(f"{type(error).__name__}: {error}"[:300])
                    continue
                if started >= begin:
                    latencies.append(clock() - started)

        await asyncio.gather(*(caller(worker) for worker in range(CALLERS)))
        return clock() - begin

    run: Callable[[Coroutine[Any, Any, float]], float] = asyncio.run
    try:
        import uvloop

        run = uvloop.run
    except ImportError:  # pragma: no cover - uvicorn[standard] brings it on Linux
        pass
    elapsed = run(load())
    return LoadResult(len(latencies), len(errors), min(elapsed, seconds), latencies, errors[:5])


def timeline(ledger: Ledger, seconds: float, run_id: str) -> dict[str, float]:
    """Where a command's time goes, in ms (means): waiting in the writer's queue, preparing its
    batch, the batch's round trip to the database, answering the batch, and the whole call. The
    writer's methods are wrapped on this ledger for the run, then restored."""
    committer, recorder = ledger.committer, ledger.committer._recorder
    spans: dict[str, list[float]] = {
        name: [] for name in ("queue", "prepare", "round_trip", "answer", "call")
    }
    clock = time.perf_counter
    marks: dict[str, float] = {}
    submitted: dict[int, float] = {}
    submit, process, complete = committer.submit, committer._process, committer._complete
    insert = recorder.insert_events_with_keys

    def timed_submit(command: Any) -> Any:
        submitted[id(command)] = clock()
        return submit(command)

    def timed_process(batch: list[Any], *args: Any, **kwargs: Any) -> Any:
        marks["taken"] = now = clock()
        spans["queue"].extend(now - submitted.pop(id(c), now) for c in batch)
        return process(batch, *args, **kwargs)

    def timed_insert(*args: Any) -> Any:
        marks["sent"] = clock()
        spans["prepare"].append(marks["sent"] - marks["taken"])
        try:
            return insert(*args)
        finally:
            marks["recorded"] = clock()
            spans["round_trip"].append(marks["recorded"] - marks["sent"])

    def timed_complete(*args: Any) -> Any:
        try:
            return complete(*args)
        finally:
            spans["answer"].append(clock() - marks.get("recorded", clock()))

    committer.submit = timed_submit  # type: ignore[method-assign]
    committer._process = timed_process  # type: ignore[method-assign]
    committer._complete = timed_complete  # type: ignore[method-assign, assignment]
    recorder.insert_events_with_keys = timed_insert  # type: ignore[method-assign, assignment]
    try:
        load = service_load(ledger, seconds, run_id, warmup=0.5)
    finally:
        del committer.submit, committer._process, committer._complete
        del recorder.insert_events_with_keys
    spans["call"] = list(load.latencies)
    figures = {name: 1000 * sum(values) / len(values) for name, values in spans.items() if values}
    figures["orders_per_second"] = load.rate
    return figures


def writer_alone(
    ledger: Ledger,
    run_id: str,
    orders: int = 2000,
    batch: int = 8,
    postgres_pid: int | None = None,
    freeze_heap: bool = True,
) -> dict[str, float]:
    """A command's cost with nothing else running: one thread makes ``orders`` place-order
    commands (the service's checks, as a caller would), then hands them to the writer's batch
    processing itself, ``batch`` at a time: no queue, no callers, no GIL to share. Figures in
    µs per order, the recording call's in ms per batch; with ``postgres_pid`` (the server's
    main process), the CPU of all the server's processes while the batches were written.

    With ``freeze_heap``, what the process holds already (the benchmark's earlier loads, the
    cached aggregates) is out of the collector's reach meanwhile, as `serve` puts its own: a
    full collection walking it all landed in the making now and then and multiplied its figure.
    (The instruction counts leave it, so that they count the same collections as before.)"""
    committer, recorder = ledger.committer, ledger.committer._recorder
    commands: list[Any] = []
    recording = {"wall": 0.0, "cpu": 0.0, "calls": 0}
    insert = recorder.insert_events_with_keys

    def capture(command: Any) -> Any:
        commands.append(command)
        return command.future

    def timed_insert(*args: Any) -> Any:
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            return insert(*args)
        finally:
            recording["wall"] += time.perf_counter() - wall
            recording["cpu"] += time.thread_time() - cpu
            recording["calls"] += 1

    rng = random.Random(7)
    committer.submit = capture  # type: ignore[method-assign]
    recorder.insert_events_with_keys = timed_insert  # type: ignore[method-assign, assignment]
    if freeze_heap:
        gc.collect()
        gc.freeze()
    try:
        made = time.process_time()
        for n in range(orders):
            external, lines, context = random_order(rng, f"alone-{run_id}-{n}")
            ledger.submit_order(CHANNEL, external, lines, context=context)
        made = time.process_time() - made
        wall, cpu = time.perf_counter(), time.process_time()
        server = process_cpu_seconds(postgres_pid) if postgres_pid else 0.0
        for start in range(0, orders, batch):
            committer._process(commands[start : start + batch])
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        server = process_cpu_seconds(postgres_pid) - server if postgres_pid else 0.0
    finally:
        if freeze_heap:
            gc.unfreeze()
        del committer.submit, recorder.insert_events_with_keys
    failed = sum(1 for command in commands if command.future.exception() is not None)
    calls = recording["calls"] or 1
    figures = {
        "batch": batch,
        "orders": orders,
        "failed": failed,
        "make_us": 1e6 * made / orders,
        "write_cpu_us": 1e6 * cpu / orders,
        "write_wall_us": 1e6 * wall / orders,
        "recording_wall_ms": 1000 * recording["wall"] / calls,
        "recording_cpu_ms": 1000 * recording["cpu"] / calls,
        "orders_per_second": orders / wall,
    }
    if postgres_pid:
        figures["postgres_cpu_us"] = 1e6 * server / orders
    return figures


def cpu_ceilings(alone: dict[str, float]) -> dict[str, float]:
    """The most orders a second that the CPU of "a command alone" leaves room for, however well
    the work overlapped: the service's part runs under its one interpreter lock (the callers
    are its threads), and all of it, PostgreSQL's included, on the machine's cores."""
    service = alone["make_us"] + alone["write_cpu_us"]
    ceilings = {"service_cpu_us": service, "interpreter_orders_per_second": 1e6 / service}
    if "postgres_cpu_us" in alone:
        every_process = service + alone["postgres_cpu_us"]
        ceilings["every_process_cpu_us"] = every_process
        ceilings["machine_orders_per_second"] = (os.cpu_count() or 1) * 1e6 / every_process
    return ceilings


def describe_ceilings(ceilings: dict[str, float], target_rate: float) -> str:
    text = (
        f"CPU ceilings: the service's {ceilings['service_cpu_us']:.0f} µs an order under one "
        f"interpreter lock allow at most {ceilings['interpreter_orders_per_second']:,.0f}/s"
    )
    if "machine_orders_per_second" in ceilings:
        text += (
            f"; with PostgreSQL's, {ceilings['every_process_cpu_us']:.0f} µs on "
            f"{os.cpu_count()} cores, at most {ceilings['machine_orders_per_second']:,.0f}/s"
        )
    return f"{text}; the target is {target_rate:,.0f}/s"


def run(ctx: Context) -> PartResult:
    result = PartResult("p1", TITLE)
    seconds = ctx.seconds(15, 4)
    with ctx.database("p1_raw") as url:
        raw = raw_commits(url, seconds)
    console.print(
        f"  raw psycopg one-row commits, {RAW_CONNECTIONS} connections: {raw.rate:,.0f}/s"
    )
    with ctx.database("p1_naive", migrated=False) as url:
        naive, naive_stats = naive_commands(url, seconds, ctx.run_id)
    console.print(f"  naive eventsourcing save per command, {CALLERS} callers: {naive.rate:,.0f}/s")
    with ctx.database("p1_service") as url:
        ledger = Ledger(env=ledger_env(url, STOCKLEDGER_RESERVATION_TTL="0"))
        try:
            setup_catalog(ledger, SKUS)
            service, cpu, counters = with_costs(
                ledger, lambda: service_load(ledger, seconds, ctx.run_id)
            )
            console.print(
                f"  service place_order, {CALLERS} callers: {service.rate:,.0f}/s, "
                f"{1e6 * cpu / max(service.operations, 1):,.0f} µs of the process's CPU an order "
                f"({cpu / service.seconds if service.seconds else 0:.2f} cores busy)"
            )
            batches, commands = counters["batches"], counters["commands"]
            result.checks = [
                Check.ratio_at_least(
                    "orders/s vs raw 1-row commits (4 conns)",
                    service.rate,
                    raw.rate,
                    RAW_TARGET,
                    "/s",
                    "raw psycopg INSERT+commit",
                ),
                Check.ratio_at_least(
                    "orders/s vs naive eventsourcing",
                    service.rate,
                    naive.rate,
                    3.0,
                    "/s",
                    "save() per command",
                ),
            ]
            result.details = {
                "service": {
                    "orders_per_second": service.rate,
                    "orders": service.operations,
                    "errors": service.errors,
                    "error_samples": service.error_samples,
                    "latency_ms": summarize(service.latencies, 1000),
                    # The process's CPU (callers, writer, drivers) per order, all threads.
                    "cpu_us_per_order": 1e6 * cpu / max(service.operations, 1),
                    "cores_busy": cpu / service.seconds if service.seconds else None,
                    "committer": {
                        "batches": batches,
                        "commands": commands,
                        "commands_per_batch": commands / batches if batches else None,
                        "conflicts": counters["conflicts"],
                        "stale_refusals": counters["stale_refusals"],
                    },
                },
                "raw": {
                    "commits_per_second": raw.rate,
                    "latency_ms": summarize(raw.latencies, 1000),
                    "errors": raw.errors,
                },
                "naive": {
                    "commands_per_second": naive.rate,
                    "latency_ms": summarize(naive.latencies, 1000),
                    "errors": naive.errors,
                    "error_samples": naive.error_samples,
                    "conflict_retries": naive_stats["conflicts"],
                },
                "seconds_per_measurement": seconds,
                "reference": {
                    "raw_4_connections": 8100,
                    "eventsourcing_create_save_4_threads": 1350,
                },
            }
            result.notes.append(
                f"service: {service.operations:,} orders, {service.errors} errors, latency p50 "
                f"{result.details['service']['latency_ms'].get('p50', 0):.1f} ms / p99 "
                f"{result.details['service']['latency_ms'].get('p99', 0):.1f} ms; "
                f"{commands / batches if batches else 0:.1f} commands per batch"
            )
            if service.errors:
                result.notes.append(f"service errors: {service.error_samples[:2]}")
            on_loop, loop_cpu, loop_counters = with_costs(
                ledger, lambda: loop_callers_load(ledger, seconds, ctx.run_id)
            )
            loop_batch = loop_counters["commands"] / max(loop_counters["batches"], 1)
            result.details["loop_callers"] = {
                "orders_per_second": on_loop.rate,
                "orders": on_loop.operations,
                "errors": on_loop.errors,
                "latency_ms": summarize(on_loop.latencies, 1000),
                "cpu_us_per_order": 1e6 * loop_cpu / max(on_loop.operations, 1),
                "commands_per_batch": loop_batch,
            }
            result.notes.append(
                f"the same load from {CALLERS} tasks on one event loop (submit_order, awaited "
                f"as the API does): {on_loop.rate:,.0f}/s ({on_loop.rate / raw.rate:.2f}x raw), "
                f"{1e6 * loop_cpu / max(on_loop.operations, 1):,.0f} µs of CPU an order, "
                f"{loop_batch:.1f} commands per batch, {on_loop.errors} errors "
                "(not the check: its callers are threads)"
            )
            if not result.passed and ctx.profile:
                alone = writer_alone(ledger, ctx.run_id, postgres_pid=postgres_server_pid(url))
                result.details["writer_alone"] = alone
                console.print(
                    f"  a command alone (one thread, batches of {alone['batch']:.0f}): made in "
                    f"{alone['make_us']:.0f} µs of CPU, written in {alone['write_cpu_us']:.0f} µs "
                    f"of CPU and {alone['write_wall_us']:.0f} µs in all; recording a batch "
                    f"{alone['recording_wall_ms']:.2f} ms ({alone['recording_cpu_ms']:.2f} ms of "
                    f"it CPU): {alone['orders_per_second']:,.0f} orders/s from one thread"
                )
                ceilings = cpu_ceilings(alone)
                result.details["cpu_ceilings"] = ceilings
                console.print(f"  {describe_ceilings(ceilings, RAW_TARGET * raw.rate)}")
                steps = timeline(ledger, ctx.seconds(8, 3), ctx.run_id + "t")
                result.details["timeline_ms"] = steps
                console.print(
                    "  a command's time (ms, means, separate run at "
                    f"{steps['orders_per_second']:,.0f}/s): queue {steps.get('queue', 0):.2f}, "
                    f"batch preparation {steps.get('prepare', 0):.2f}, round trip "
                    f"{steps.get('round_trip', 0):.2f}, answering {steps.get('answer', 0):.2f}; "
                    f"whole call {steps.get('call', 0):.2f}"
                )
                # Little's law: 8 closed-loop callers at rate X each take 8 / X per call.
                target_rate = RAW_TARGET * raw.rate
                budget_ms = 1000 * CALLERS / target_rate
                result.details["call_budget_ms_at_target"] = budget_ms
                console.print(
                    f"  at the target ({target_rate:,.0f}/s) each of the {CALLERS} callers has "
                    f"{budget_ms:.2f} ms a call, all of it included (Little's law); recording one "
                    f"batch of {alone['batch']:.0f} alone took {alone['recording_wall_ms']:.2f} ms"
                )
                profile = profile_call(
                    "p1_service",
                    ctx.profiles_dir,
                    lambda: service_load(ledger, ctx.seconds(10, 4), ctx.run_id + "p", warmup=0),
                    gil=True,
                )
                if "gil_held" in profile:
                    held = 100 * profile["gil_held"]
                    console.print(f"  the GIL was held {held:.0f}% of the time")
                result.profiles["service place_order"] = profile
                print_profile("service place_order", profile)
                with counting_statements() as found:
                    traced = service_load(ledger, ctx.seconds(5, 3), ctx.run_id + "s", warmup=0)
                lines = per_operation(found, traced.operations)
                result.details["sql_per_order"] = found["statements"]
                console.print("  SQL statements per order (separate run, traced):")
                for line in lines[:10]:
                    console.print(f"    {line}")
        finally:
            ledger.close()
    with ctx.database("p1_writer_process") as url:
        writer_process_load(ctx, url, seconds, result)
    return result


def writer_process_load(ctx: Context, url: str, seconds: float, result: PartResult) -> None:
    """The check's load with the writes recorded by a writer process, as ``serve`` records them
    (not the check: the service's own writer is a thread of the callers' process). On a
    database of its own, its catalog made through the writer process, so that it starts with
    the same aggregates loaded as the check's writer."""
    env = ledger_env(url, STOCKLEDGER_RESERVATION_TTL="0")
    ledger = Ledger(env=env)
    try:
        writer = WriterProcess(env).start()
        ledger.forward_writes(writer)
        setup_catalog(ledger, SKUS)
        assert writer.pid is not None
        meter = CpuMeter(writer=writer.pid)
        forwarded, cpu, counters = with_costs(
            ledger, lambda: service_load(ledger, seconds, ctx.run_id + "w")
        )
        writer_cpu = meter.stop()["writer_percent_of_one_core"] / 100 * forwarded.seconds
    finally:
        ledger.close()
    orders = max(forwarded.operations, 1)
    batch = counters.get("commands", 0) / max(counters.get("batches", 0), 1)
    result.details["writer_process"] = {
        "orders_per_second": forwarded.rate,
        "orders": forwarded.operations,
        "errors": forwarded.errors,
        "latency_ms": summarize(forwarded.latencies, 1000),
        "callers_cpu_us_per_order": 1e6 * cpu / orders,
        "writer_cpu_us_per_order": 1e6 * writer_cpu / orders,
        "commands_per_batch": batch,
    }
    result.notes.append(
        f"the same load with a writer process (as serve records writes): {forwarded.rate:,.0f}/s, "
        f"{1e6 * cpu / orders:,.0f} µs of the callers' process's CPU and "
        f"{1e6 * writer_cpu / orders:,.0f} µs of the writer's an order, {batch:.1f} commands per "
        f"batch, {forwarded.errors} errors (not the check)"
    )
