"""Part 5: the ERP relay publishing 100,000 postings, against nats-py publish_async.

The log holds exactly 100,000 posting-worthy events (20,000 with --quick): goods receipts, POS
sales and returns, adjustments, and shipments of orders placed in the same log (the relay looks
those orders up), generated with the domain's aggregates (``bench.datagen.posting_log``).

Measured: ``adapters.nats.drain_relay`` with the ERP source and default settings, from position 0
to the head: read, decode, map to postings, publish with ``Nats-Msg-Id``, wait for every ack,
record the position, batch after batch, into an empty ``STOCKLEDGER_ERP`` stream.
Baseline: the same messages (subjects, bodies, headers, computed beforehand by the relay's own
source), published with nats-py's ``publish_async`` as documented (default pending limit of
4,000, no ``wait_stall``) and every ack awaited,
into an empty stream of the same configuration. Both on the benchmark's own NATS server; the
baseline first, and its messages freed before the relay runs (a fix: the relay used to run with
them still in memory, and paid for the collector's full passes over them).
Target: >= 0.4x the baseline's messages/s.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import nats
import psycopg
from eventsourcing.persistence import StoredEvent
from nats.js.errors import NotFoundError

from adapters.nats import (
    ERP_RELAY,
    ERP_STREAM,
    MSG_ID,
    ErpPostingSource,
    Outgoing,
    RelaySettings,
    drain_relay,
    ensure_streams,
    last_sequence,
)
from bench import datagen
from bench.common import Check, Context, CpuMeter, PartResult, console
from bench.profiling import print_profile, profile_call
from projections.base import Recorded

TITLE = "ERP relay: 100,000 postings with acks and Nats-Msg-Id vs publish_async"


async def relay_messages(url: str, mapper: Any, batch: int = 1000) -> list[Outgoing]:
    """The messages the relay sends for the log, from its own source (not timed)."""
    source = ErpPostingSource(mapper)
    topics = list(source.topics())
    messages: list[Outgoing] = []
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        start = 0
        while True:
            cursor = await conn.execute(
                "SELECT notification_id, originator_id, originator_version, topic, state "
                "FROM ledger_events WHERE notification_id > %s AND topic = ANY(%s) "
                "ORDER BY notification_id LIMIT %s",
                (start, topics, batch),
            )
            rows = await cursor.fetchall()
            if not rows:
                return messages
            recorded = [
                Recorded(
                    row[0],
                    mapper.to_domain_event(
                        StoredEvent(
                            originator_id=row[1],
                            originator_version=row[2],
                            topic=row[3],
                            state=bytes(row[4]),
                        )
                    ),
                )
                for row in rows
            ]
            messages.extend(await source.prepare(conn, recorded))
            start = rows[-1][0]


async def empty_stream(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        with contextlib.suppress(NotFoundError):
            await js.delete_stream(ERP_STREAM)
        await ensure_streams(js)
    finally:
        await nc.close()


async def stream_count(nats_url: str) -> int:
    nc = await nats.connect(nats_url)
    try:
        return await last_sequence(nc.jetstream(), ERP_STREAM)
    finally:
        await nc.close()


async def publish_async_baseline(nats_url: str, messages: list[Outgoing]) -> float:
    await empty_stream(nats_url)
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        began = time.perf_counter()
        futures = [
            await js.publish_async(
                message.subject,
                message.payload,
                headers={**message.headers, MSG_ID: message.msg_id},
            )
            for message in messages
        ]
        await asyncio.gather(*futures)
        return time.perf_counter() - began
    finally:
        await nc.close()


def reset_relay(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DELETE FROM relay_positions WHERE name = %s", (ERP_RELAY,))


def drain(url: str, nats_url: str, mapper: Any) -> tuple[Any, float]:
    reset_relay(url)
    asyncio.run(empty_stream(nats_url))
    began = time.perf_counter()
    outcome = asyncio.run(
        drain_relay(url, nats_url, mapper, ErpPostingSource(mapper), settings=RelaySettings())
    )
    return outcome, time.perf_counter() - began


def run(ctx: Context) -> PartResult:
    result = PartResult("p5", TITLE)
    postings = ctx.size(100_000, 20_000)
    nats_url = ctx.nats_url()
    with ctx.database("p5") as url:
        datagen.register_locations(url)
        generated = datagen.posting_log(url, postings)
        console.print(f"  log: {generated['events']:,} events, {generated['postings']:,} postings")
        mapper = datagen.ledger_mapper()
        messages = asyncio.run(relay_messages(url, mapper))
        meter = CpuMeter()
        baseline_seconds = asyncio.run(publish_async_baseline(nats_url, messages))
        baseline_cpu = meter.stop()
        baseline_stored = asyncio.run(stream_count(nats_url))
        baseline_messages = len(messages)
        # Freed before the relay runs: kept, they were 100,000 more objects for every full pass
        # of the garbage collector during the relay to sweep (in a full run, 2.6 s of the
        # relay's collection time with them, 1.4 s without), a cost that is the baseline's.
        del messages
        baseline_rate = baseline_messages / baseline_seconds
        console.print(
            f"  publish_async: {baseline_messages:,} messages in {baseline_seconds:.1f}s = "
            f"{baseline_rate:,.0f}/s"
        )
        meter = CpuMeter()
        outcome, relay_seconds = drain(url, nats_url, mapper)
        relay_cpu = meter.stop()
        relay_stored = asyncio.run(stream_count(nats_url))
        relay_rate = outcome.published / relay_seconds
        console.print(
            f"  relay: {outcome.published:,} postings ({outcome.events:,} events read) in "
            f"{relay_seconds:.1f}s = {relay_rate:,.0f}/s"
        )
        result.checks = [
            Check.ratio_at_least(
                "relay postings/s vs publish_async",
                relay_rate,
                baseline_rate,
                0.4,
                "msg/s",
                "nats-py publish_async, same messages",
            )
        ]
        result.details = {
            "log": generated,
            "relay": {
                "postings": outcome.published,
                "events": outcome.events,
                "duplicates": outcome.duplicates,
                "seconds": relay_seconds,
                "postings_per_second": relay_rate,
                "stream_messages": relay_stored,
                "cpu": relay_cpu,
                "batch_size": RelaySettings().batch_size,
            },
            "baseline": {
                "messages": baseline_messages,
                "seconds": baseline_seconds,
                "messages_per_second": baseline_rate,
                "stream_messages": baseline_stored,
                "cpu": baseline_cpu,
            },
            "reference": {"publish_async": 35_000, "publish_awaiting_each_ack": 4_000},
        }
        if relay_stored != postings or baseline_stored != postings:
            result.notes.append(
                f"stream holds {relay_stored:,} (relay) / {baseline_stored:,} (baseline) messages, "
                f"expected {postings:,}"
            )
        result.notes.append(
            f"machine busy {relay_cpu.get('machine_busy_percent', 0):.0f}% during the relay, "
            f"{baseline_cpu.get('machine_busy_percent', 0):.0f}% during the baseline"
        )
        if not result.passed and ctx.profile:
            profile = profile_call(
                "p5_relay", ctx.profiles_dir, lambda: drain(url, nats_url, mapper), idle=True
            )
            result.profiles["relay drain"] = profile
            print_profile("relay drain", profile)
    return result
