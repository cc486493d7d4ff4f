"""Part 4: rebuilding the availability view from 1,000,000 events, against decoding the same log.

The log: about 1,000,000 stock events (100,000 with --quick) over 50,000 positions (10,000),
interleaved across positions as a live log is: openings, receipts, reservations, payments,
shipments, releases, POS sales, adjustments, counts. Generated with the domain's aggregates and
the ledger's mapper, written with COPY (``bench.datagen``).

Measured: ``projections.base.rebuild`` of the availability view (beside the live one, then the
swap), as ``stockledger projections rebuild availability`` runs it. Baseline: reading the same
log with eventsourcing's ``select_notifications`` in sections of the same size and decoding every
event with the mapper (no view work). The table is read once before both, so both run warm.
Targets: >= 50,000 events/s and >= 0.5x the decode rate.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from adapters.postgres import ledger_env
from bench import datagen
from bench.common import Check, Context, CpuMeter, PartResult, console
from bench.profiling import print_profile, profile_call
from bench.sqlstats import counting_statements, per_operation
from domain.service import Ledger
from projections.availability import AvailabilityProjection
from projections.base import ProjectionProcessor, rebuild

TITLE = "rebuild the availability view vs decoding the same log"
BATCH = 5000


def decode_log(ledger: Ledger, batch: int = BATCH) -> tuple[int, float]:
    recorder, mapper = ledger.recorder, ledger.mapper
    began = time.perf_counter()
    count, start = 0, 1
    while True:
        notifications = recorder.select_notifications(start, batch)
        for notification in notifications:
            mapper.to_domain_event(notification)
        count += len(notifications)
        if len(notifications) < batch:
            break
        start = notifications[-1].id + 1
    return count, time.perf_counter() - began


def partial_rebuild(url: str, mapper: Any, events: int) -> int:
    """The rebuild's main loop (the view built in memory, then written) over the first ``events``
    of the log, into scratch tables (for a profile that does not take as long as the whole
    rebuild)."""
    projection = AvailabilityProjection()
    tables = {name: f"{name}__profile" for name in projection.tables}
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as connection:
        for live, scratch in tables.items():
            connection.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(scratch)))
            connection.execute(
                sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING ALL)").format(
                    sql.Identifier(scratch), sql.Identifier(live)
                )
            )
        connection.execute(
            "INSERT INTO projection_positions (name, position) VALUES ('bench-profile', 0) "
            "ON CONFLICT (name) DO UPDATE SET position = 0"
        )
        processor = ProjectionProcessor(
            connection,
            mapper,
            projection,
            tracking_name="bench-profile",
            tables=tables,
            batch_size=BATCH,
        )
        done = processor.build_in_memory(projection.in_memory(), max_rows=events, stop=events)
        for scratch in tables.values():
            connection.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(scratch)))
        connection.execute("DELETE FROM projection_positions WHERE name = 'bench-profile'")
    return done


def run(ctx: Context) -> PartResult:
    result = PartResult("p4", TITLE)
    events = ctx.size(1_000_000, 100_000)
    positions = ctx.size(50_000, 10_000)
    with ctx.database("p4") as url:
        datagen.register_locations(url)
        console.print(f"  generating {events:,} events over {positions:,} positions...")
        generated = datagen.mixed_stock_log(url, events, positions)
        console.print(f"  generated {generated['events']:,} events in {generated['seconds']:.1f}s")
        with psycopg.connect(url) as conn:
            row = conn.execute(
                "SELECT count(*), sum(octet_length(state)) FROM ledger_events"
            ).fetchone()
            total_events, total_bytes = (int(row[0]), int(row[1])) if row else (0, 0)
        ledger = Ledger(env=ledger_env(url))
        try:
            meter = CpuMeter()
            decoded, decode_seconds = decode_log(ledger)
            decode_cpu = meter.stop()
            decode_rate = decoded / decode_seconds
            console.print(
                f"  decode: {decoded:,} events in {decode_seconds:.1f}s = {decode_rate:,.0f}/s"
            )
            meter = CpuMeter()
            report = rebuild(url, ledger.mapper, AvailabilityProjection(), batch_size=BATCH)
            rebuild_cpu = meter.stop()
            console.print(
                f"  rebuild: {report.events:,} events in {report.seconds:.1f}s = "
                f"{report.events_per_second:,.0f}/s"
            )
            with psycopg.connect(url) as conn:
                rows = conn.execute("SELECT count(*) FROM view_availability").fetchone()
            result.checks = [
                Check.at_least("rebuild events/s", report.events_per_second, 50_000, "events/s"),
                Check.ratio_at_least(
                    "rebuild events/s vs decode",
                    report.events_per_second,
                    decode_rate,
                    0.5,
                    "events/s",
                    "select_notifications + mapper",
                ),
            ]
            result.details = {
                "log": {
                    "events": total_events,
                    "bytes": total_bytes,
                    "positions": positions,
                    "generation": generated,
                },
                "rebuild": {
                    "events": report.events,
                    "seconds": report.seconds,
                    "events_per_second": report.events_per_second,
                    "view_rows": int(rows[0]) if rows else None,
                    "cpu": rebuild_cpu,
                },
                "decode": {
                    "events": decoded,
                    "seconds": decode_seconds,
                    "events_per_second": decode_rate,
                    "cpu": decode_cpu,
                },
                "batch_size": BATCH,
                "reference": {"decode_events_per_second": 105_000},
            }
            result.notes.append(
                f"{total_events:,} events ({total_bytes / 2**20:.0f} MiB of state); "
                f"view rows after "
                f"rebuild: {result.details['rebuild']['view_rows']:,}; machine busy "
                f"{rebuild_cpu.get('machine_busy_percent', 0):.0f}% during the rebuild"
            )
            if not result.passed and ctx.profile:
                profile = profile_call(
                    "p4_rebuild",
                    ctx.profiles_dir,
                    lambda: partial_rebuild(url, ledger.mapper, min(total_events, 200_000)),
                    idle=True,
                )
                result.profiles["rebuild"] = profile
                print_profile("rebuild", profile)
                traced_events = min(total_events, 100_000)
                with counting_statements() as found:
                    began = time.perf_counter()
                    partial_rebuild(url, ledger.mapper, traced_events)
                    traced_seconds = time.perf_counter() - began
                batches = max(1, traced_events // BATCH)
                lines = per_operation(found, batches)
                sql_seconds = sum(e["seconds"] for e in found["statements"])
                result.details["sql_per_batch"] = found["statements"]
                console.print(
                    f"  SQL per batch of {BATCH} (separate traced run over "
                    f"{traced_events:,} events: {sql_seconds:.1f}s of {traced_seconds:.1f}s in SQL)"
                )
                for line in lines[:6]:
                    console.print(f"    {line}")
        finally:
            ledger.close()
    return result
