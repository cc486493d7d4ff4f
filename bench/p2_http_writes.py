"""Part 2: ``POST /v1/orders`` through HTTP, 32 connections, against a trivial endpoint.

The product runs as ``stockledger serve --api-only`` in its own process; the baseline is a bare
FastAPI app with one trivial ``GET`` route, started through the same ``serve`` command (same
uvicorn configuration). Load: ``wrk`` with 32 connections, each order two lines of one unit on
random SKUs of 1,000 (sourced), a unique external id and ``Idempotency-Key`` per request.
Rates count 2xx answers only. Target: >= 0.3x the trivial endpoint's requests/s.
"""

from __future__ import annotations

import os

from bench.common import (
    Check,
    Context,
    CpuMeter,
    PartResult,
    console,
    postgres_server_pid,
    prepare_catalog,
)
from bench.profiling import print_profile, sampling
from bench.servers import TRIVIAL_PATH, running_server
from bench.wrk import HttpResult, have_wrk, run_load

TITLE = "POST /v1/orders over HTTP (32 connections) vs a trivial endpoint"
CONNECTIONS = 32
TARGET = 0.3
SKUS = 1000


def load(ctx: Context, base_url: str, kind: str, seconds: float, tag: str) -> HttpResult:
    result = run_load(
        base_url,
        kind,
        seconds=seconds,
        connections=CONNECTIONS,
        token=ctx.admin_key,
        skus=SKUS,
        path=TRIVIAL_PATH,
        run_id=f"{ctx.run_id}-{tag}",
        workdir=ctx.workdir,
    )
    assert isinstance(result, HttpResult)
    return result


def trivial_baseline(ctx: Context, database_url: str, seconds: float) -> HttpResult:
    with running_server(ctx, database_url, kind="trivial", label="trivial") as server:
        load(ctx, server.base_url, "get", ctx.seconds(3, 1), "trivial-warmup")
        meter = CpuMeter(server=server.pid)
        result = load(ctx, server.base_url, "get", seconds, "trivial")
        result.raw["cpu"] = meter.stop()
        return result


def cpu_budget(orders: HttpResult, trivial: HttpResult) -> dict[str, float]:
    """The CPU an order took in the server's processes and PostgreSQL's, and the cores that
    would take at the target rate (empty when PostgreSQL's processes were not measured)."""
    cpu = orders.raw["cpu"]
    if "postgres_percent_of_one_core" not in cpu or not orders.rate:
        return {}
    server_us = 1e4 * cpu["server_percent_of_one_core"] / orders.rate
    postgres_us = 1e4 * cpu["postgres_percent_of_one_core"] / orders.rate
    target_rate = TARGET * trivial.rate
    return {
        "server_us": server_us,
        "postgres_us": postgres_us,
        "target_rate": target_rate,
        "cores_at_target": target_rate * (server_us + postgres_us) / 1e6,
    }


def run(ctx: Context) -> PartResult:
    result = PartResult("p2", TITLE)
    seconds = ctx.seconds(15, 4)
    with ctx.database("p2") as url:
        setup = prepare_catalog(url, SKUS)
        trivial = trivial_baseline(ctx, url, seconds)
        console.print(
            f"  trivial GET: {trivial.rate:,.0f} req/s (p99 {trivial.latency_ms['p99']:.1f} ms)"
        )
        with running_server(ctx, url, kind="product", api_only=True, label="api") as server:
            load(ctx, server.base_url, "orders", ctx.seconds(3, 1), "warmup")
            postgres = postgres_server_pid(url)
            meter = CpuMeter(server=server.pid, **({"postgres": postgres} if postgres else {}))
            orders = load(ctx, server.base_url, "orders", seconds, "measure")
            orders.raw["cpu"] = meter.stop()
            console.print(
                f"  POST /v1/orders: {orders.rate:,.0f} req/s 2xx "
                f"(p99 {orders.latency_ms['p99']:.1f} ms, "
                f"{orders.other + orders.conflict} non-2xx)"
            )
            result.checks = [
                Check.ratio_at_least(
                    "POST /v1/orders 2xx/s vs trivial GET",
                    orders.rate,
                    trivial.rate,
                    TARGET,
                    "req/s",
                    "trivial GET, same server config",
                )
            ]
            if not result.passed and ctx.profile:
                with sampling(server.pid, ctx.profiles_dir / "p2_api.txt", gil=True) as profile:
                    load(ctx, server.base_url, "orders", ctx.seconds(10, 4), "profile")
                result.profiles["api server, POST /v1/orders"] = profile
                print_profile("api server, POST /v1/orders", profile)
            result.details["server_memory_kib"] = server.memory()
    result.details.update(
        {
            "orders": orders.to_json(),
            "trivial": trivial.to_json(),
            "setup": setup,
            "connections": CONNECTIONS,
            "reference": {"trivial_uvloop_httptools": 10000},
        }
    )
    if not have_wrk():
        result.notes.append(
            "wrk not found: load from an asyncio httpx client, which may be the bottleneck"
        )
    if orders.other or orders.conflict:
        result.notes.append(
            f"{orders.other + orders.conflict} non-2xx answers; first: {orders.first_error[:160]}"
        )
    result.notes.append(
        f"CPU during the run: server {orders.raw['cpu'].get('server_percent_of_one_core', 0):.0f}% "
        f"of a core, machine {orders.raw['cpu'].get('machine_busy_percent', 0):.0f}% busy "
        f"(trivial: server {trivial.raw['cpu'].get('server_percent_of_one_core', 0):.0f}%)"
    )
    budget = cpu_budget(orders, trivial)
    if budget:
        result.details["cpu_budget"] = budget
        result.notes.append(
            f"CPU an order: the server (API and writer processes) {budget['server_us']:.0f} µs, "
            f"PostgreSQL {budget['postgres_us']:.0f} µs; at the target "
            f"({budget['target_rate']:,.0f}/s) they alone would keep "
            f"{budget['cores_at_target']:.2f} of the machine's {os.cpu_count()} cores busy"
        )
    result.notes.append(
        f"latency p50/p99: orders {orders.latency_ms['p50']:.1f}/"
        f"{orders.latency_ms['p99']:.1f} ms, "
        f"trivial {trivial.latency_ms['p50']:.1f}/{trivial.latency_ms['p99']:.1f} ms"
    )
    return result
