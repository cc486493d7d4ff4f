"""Part 3: ``GET /v1/availability/{sku}`` against a trivial endpoint of the same server config.

1,000 SKUs, each stocked at two locations (so two rows per answer), the view caught up; the
product runs as ``stockledger serve --api-only``; ``wrk`` with 32 connections asks for random SKUs.
Targets: >= 0.6x the trivial endpoint's requests/s, p99 <= 20 ms.
"""

from __future__ import annotations

from bench.common import Check, Context, CpuMeter, PartResult, console, prepare_catalog
from bench.p2_http_writes import CONNECTIONS, SKUS, load, trivial_baseline
from bench.profiling import print_profile, sampling
from bench.servers import running_server
from bench.wrk import have_wrk

TITLE = "GET /v1/availability/{sku} over HTTP (32 connections) vs a trivial endpoint"


def run(ctx: Context) -> PartResult:
    result = PartResult("p3", TITLE)
    seconds = ctx.seconds(15, 4)
    with ctx.database("p3") as url:
        setup = prepare_catalog(url, SKUS)
        trivial = trivial_baseline(ctx, url, seconds)
        console.print(
            f"  trivial GET: {trivial.rate:,.0f} req/s (p99 {trivial.latency_ms['p99']:.1f} ms)"
        )
        with running_server(ctx, url, kind="product", api_only=True, label="api") as server:
            load(ctx, server.base_url, "availability", ctx.seconds(3, 1), "warmup")
            meter = CpuMeter(server=server.pid)
            reads = load(ctx, server.base_url, "availability", seconds, "measure")
            reads.raw["cpu"] = meter.stop()
            console.print(
                f"  GET /v1/availability: {reads.rate:,.0f} req/s "
                f"(p99 {reads.latency_ms['p99']:.1f} ms)"
            )
            result.checks = [
                Check.ratio_at_least(
                    "GET availability 2xx/s vs trivial GET",
                    reads.rate,
                    trivial.rate,
                    0.6,
                    "req/s",
                    "trivial GET, same server config",
                ),
                Check.at_most("GET availability p99 latency", reads.latency_ms["p99"], 20.0, "ms"),
            ]
            if not result.passed and ctx.profile:
                with sampling(server.pid, ctx.profiles_dir / "p3_api.txt") as profile:
                    load(ctx, server.base_url, "availability", ctx.seconds(10, 4), "profile")
                result.profiles["api server, GET availability"] = profile
                print_profile("api server, GET availability", profile)
            result.details["server_memory_kib"] = server.memory()
    result.details.update(
        {
            "reads": reads.to_json(),
            "trivial": trivial.to_json(),
            "setup": setup,
            "connections": CONNECTIONS,
        }
    )
    if not have_wrk():
        result.notes.append(
            "wrk not found: load from an asyncio httpx client, which may be the bottleneck"
        )
    if reads.other:
        result.notes.append(f"{reads.other} non-2xx answers; first: {reads.first_error[:160]}")
    result.notes.append(
        f"CPU during the run: server {reads.raw['cpu'].get('server_percent_of_one_core', 0):.0f}% "
        f"of a core, machine {reads.raw['cpu'].get('machine_busy_percent', 0):.0f}% busy "
        f"(trivial: server {trivial.raw['cpu'].get('server_percent_of_one_core', 0):.0f}%)"
    )
    result.notes.append(
        f"latency p50/p99: availability {reads.latency_ms['p50']:.1f}/"
        f"{reads.latency_ms['p99']:.1f} ms, "
        f"trivial {trivial.latency_ms['p50']:.1f}/{trivial.latency_ms['p99']:.1f} ms"
    )
    return result
