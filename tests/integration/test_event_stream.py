"""The event stream: every event as a CloudEvents 1.0 envelope on STOCKLEDGER_EVENTS, in order.

The NATS server may be shared: the test reads only the messages whose ids are its own events.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime
from typing import Any

import nats
import psycopg
import pytest
import typer

from adapters.embedded import EmbeddedNats, free_tcp_port
from adapters.nats import (
    EVENT_RELAY,
    EVENTS_STREAM,
    EventStreamSource,
    RelaySettings,
    RelayWorker,
    ensure_streams,
    event_subject,
    read_stream,
    relay_backlog,
)
from api.stream_commands import subscribe_command, tail
from domain.service import FulfillmentLine, Ledger, OrderLine, PosLine, SkuQuantity
from projections.events import event_id

pytestmark = pytest.mark.timeout(60)

FAST = RelaySettings(
    ack_timeout=3.0, idle_wait=0.1, backoff_initial=0.05, backoff_max=0.5, standby_wait=0.2
)

# CloudEvents 1.0 (JSON format): required context attributes and the type of each known one.
REQUIRED = ("specversion", "id", "source", "type")
ATTRIBUTE_TYPES: dict[str, type | tuple[type, ...]] = {
    "specversion": str,
    "id": str,
    "source": str,
    "type": str,
    "subject": str,
    "time": str,
    "datacontenttype": str,
    "dataschema": str,
}
EXTENSION_NAME = re.compile(r"^[a-z0-9]{1,20}$")


def cloudevent_problems(envelope: dict[str, Any]) -> list[str]:
    """What makes an envelope invalid CloudEvents 1.0 JSON (empty when it is valid)."""
    problems = [f"missing {name}" for name in REQUIRED if name not in envelope]
    for name, value in envelope.items():
        if name in ("data", "data_base64"):
            continue
        expected = ATTRIBUTE_TYPES.get(name)
        if expected is None:  # an extension: lower-case alphanumeric name, scalar value
            if not EXTENSION_NAME.match(name):
                problems.append(f"bad extension name {name}")
            if not isinstance(value, str | int | bool):
                problems.append(f"extension {name} is {type(value).__name__}")
        elif not isinstance(value, expected):
            problems.append(f"{name} is {type(value).__name__}")
        elif name in REQUIRED and not value:
            problems.append(f"{name} is empty")
    if envelope.get("specversion") != "1.0":
        problems.append("specversion is not 1.0")
    if "time" in envelope:
        try:
            moment = datetime.fromisoformat(str(envelope["time"]))
        except ValueError:
            problems.append("time is not RFC 3339")
        else:
            if moment.tzinfo is None:
                problems.append("time has no offset")
    return problems


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


async def _read_events(url: str) -> list[Any]:
    client = await nats.connect(url)
    try:
        return await read_stream(client.jetstream(), EVENTS_STREAM)
    finally:
        await client.close()


def _our_events(database_url: str) -> dict[str, tuple[int, int]]:
    """event id -> (position, version) for every event of this test's database."""
    with psycopg.connect(database_url) as connection:
        rows = connection.execute(
            "SELECT notification_id, originator_id, originator_version FROM ledger_events"
        ).fetchall()
    return {str(event_id(aggregate, version)): (pos, version) for pos, aggregate, version in rows}


def test_every_event_is_published_as_a_valid_cloudevent_in_per_aggregate_order(
    ledger_url: str, ledger: Ledger, nats_url: str
) -> None:
    tag = secrets.token_hex(3).upper()
    wh, st, sku, other = f"WH-{tag}", f"ST-{tag}", f"SKU-{tag}", f"SKU2-{tag}"
    ledger.register_location(wh, name="Warehouse", kind="warehouse", channels=["shopify"])
    ledger.register_location(st, name="Store", kind="store", channels=["pos"])
    for _ in range(5):
        ledger.receive(sku, wh, 2)
        ledger.receive(other, st, 1)
    order = ledger.place_order("shopify", f"o-{tag}", [OrderLine("L1", sku, 3)]).body["order_id"]
    ledger.authorize_payment(order)
    ledger.fulfill_order(order, "F1", [FulfillmentLine("L1", 3)])
    ledger.record_pos_transaction(f"T-{tag}", st, "2024-05-01T10:00:00+02:00", [PosLine(other, 1)])
    ledger.dispatch_transfer(f"TR-{tag}", wh, st, [SkuQuantity(sku, 2)])
    ledger.register_location(wh, name="Main warehouse", kind="warehouse", channels=["shopify"])

    worker = RelayWorker(ledger_url, nats_url, ledger.mapper, EventStreamSource(), settings=FAST)
    worker.start()
    try:

        def caught_up() -> bool:
            with psycopg.connect(ledger_url, autocommit=True) as connection:
                return relay_backlog(connection)[EVENT_RELAY].behind == 0

        wait_until(caught_up, "the event relay to publish everything")
    finally:
        worker.stop()

    ours = _our_events(ledger_url)
    messages = [m for m in asyncio.run(_read_events(nats_url)) if m.headers["Nats-Msg-Id"] in ours]
    envelopes = [json.loads(m.data) for m in messages]
    assert sorted(e["id"] for e in envelopes) == sorted(ours), "every event exactly once"

    for message, envelope in zip(messages, envelopes, strict=True):
        assert cloudevent_problems(envelope) == [], envelope
        assert envelope["source"] == "stockledger"
        assert envelope["datacontenttype"] == "application/json"
        category, event_type = envelope["type"].split(".")[1:]
        assert envelope["type"] == f"stockledger.{category}.{event_type}"
        assert category in {"stock", "order", "location"}
        assert message.subject == f"stockledger.events.{category}.{event_type}"
        assert message.headers["Nats-Msg-Id"] == envelope["id"]
        assert (envelope["ledgerposition"], envelope["ledgerversion"]) == ours[envelope["id"]]
        assert isinstance(envelope["data"], dict)

    # The stream is in log order, so in version order per aggregate (per subject).
    positions = [e["ledgerposition"] for e in envelopes]
    assert positions == sorted(positions)
    versions: dict[str, list[int]] = defaultdict(list)
    for envelope in envelopes:
        versions[envelope["ledgeraggregateid"]].append(envelope["ledgerversion"])
    for aggregate, seen in versions.items():
        assert seen == list(range(1, len(seen) + 1)), aggregate

    received = [e for e in envelopes if e["type"] == "stockledger.stock.Received"]
    assert received[0]["subject"] == f"{sku}@{wh}"
    assert received[0]["data"] == {"sku": sku, "location": wh, "quantity": 2, "reference": None}
    reserved = next(e for e in envelopes if e["type"] == "stockledger.stock.Reserved")
    assert reserved["data"]["order"] == order and reserved["data"]["quantity"] == 3
    placed = next(e for e in envelopes if e["type"] == "stockledger.order.Placed")
    assert placed["subject"] == order
    changed = next(e for e in envelopes if e["type"] == "stockledger.location.Changed")
    assert changed["subject"] == wh and changed["data"]["name"] == "Main warehouse"
    sold = next(e for e in envelopes if e["type"] == "stockledger.stock.Sold")
    assert sold["subject"] == f"{other}@{st}"
    assert sold["data"]["occurred_at"] == "2024-05-01T10:00:00+02:00"


def test_the_validator_rejects_what_is_not_a_cloudevent() -> None:
    good = {"specversion": "1.0", "id": "1", "source": "stockledger", "type": "t", "x1": 3}
    assert cloudevent_problems(good) == []
    assert cloudevent_problems({**good, "specversion": "0.3"}) == ["specversion is not 1.0"]
    assert "missing id" in cloudevent_problems({k: v for k, v in good.items() if k != "id"})
    assert cloudevent_problems({**good, "Bad_Name": 1}) == ["bad extension name Bad_Name"]
    assert cloudevent_problems({**good, "time": "yesterday"}) == ["time is not RFC 3339"]


async def _tail_while_publishing(url: str, envelopes: list[dict[str, Any]]) -> int:
    client = await nats.connect(url)
    try:
        js = client.jetstream()
        await ensure_streams(js)
        await js.publish("stockledger.events.stock.Received", b'{"old": "not shown"}')
        task = asyncio.create_task(tail(url, "stockledger.events.>", limit=len(envelopes)))
        await asyncio.sleep(0.5)  # the subscription is in place
        for envelope in envelopes:
            await js.publish(event_subject(envelope), json.dumps(envelope).encode())
        return await asyncio.wait_for(task, 10)
    finally:
        await client.close()


def test_subscribe_tails_new_events_one_readable_line_each(
    embedded_nats_factory: Callable[..., EmbeddedNats], capsys: pytest.CaptureFixture[str]
) -> None:
    server = embedded_nats_factory()
    envelope = {
        "specversion": "1.0",
        "id": "e-1",
        "source": "stockledger",
        "type": "stockledger.stock.Received",
        "subject": "SKU-1@WH1",
        "time": "2024-05-01T10:00:00+00:00",
        "datacontenttype": "application/json",
        "data": {"sku": "SKU-1", "location": "WH1", "quantity": 3},
        "ledgerposition": 7,
    }
    shown = asyncio.run(_tail_while_publishing(server.url, [envelope, {**envelope, "id": "e-2"}]))
    assert shown == 2
    lines = capsys.readouterr().out.splitlines()
    assert (
        lines
        == [
            "2024-05-01T10:00:00+00:00 #7 stock.Received SKU-1@WH1 "
            '{"sku":"SKU-1","location":"WH1","quantity":3}'
        ]
        * 2
    )


def test_subscribe_says_in_one_line_when_nats_is_unreachable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"nats://127.0.0.1:{free_tcp_port()}"
    monkeypatch.setenv("STOCKLEDGER_NATS_URL", url)
    started = time.monotonic()
    with pytest.raises(typer.Exit) as exited:
        subscribe_command(None)
    assert exited.value.exit_code == 1
    assert time.monotonic() - started < 5
    errors = capsys.readouterr().err.splitlines()
    assert errors[-1].startswith(f"error: cannot reach NATS at {url}")
