"""The log as people and subscribers read it: the global feed and per-aggregate history.

These read the event store itself (it is the source of truth), not a view.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.persistence import Mapper, StoredEvent
from psycopg import AsyncConnection
from psycopg.rows import dict_row

from domain.keys import position_id, uuid5_text
from domain.location import Location
from domain.stock import StockPosition
from projections.availability import PositionRow

MAX_PAGE = 1000
_ENVELOPE_FIELDS = (
    "originator_id",
    "originator_topic",
    "originator_version",
    "timestamp",
    "correlation_id",
    "causation_id",
)


def event_id(originator_id: UUID, version: int) -> str:
    """A stable id per event (a UUID's text): the same on every read and every republish."""
    return uuid5_text(f"event:{originator_id}:{version}")


def category_of(event: Any) -> str:
    aggregate = type(event).__qualname__.split(".")[0]
    return {
        "StockPosition": "stock",
        "Transfer": "stock",
        "Order": "order",
        "Location": "location",
        "LocationDirectory": "location",
    }.get(aggregate, aggregate.lower())


def subject_of(event: Any) -> str:
    """``SKU@LOCATION`` for stock positions, else the aggregate id."""
    if isinstance(event, StockPosition.Event):
        return f"{event.sku}@{event.location}"
    if isinstance(event, Location.Event):
        return str(event.code)
    return str(event.originator_id)


def event_data(event: Any) -> dict[str, Any]:
    return {k: v for k, v in vars(event).items() if k not in _ENVELOPE_FIELDS}


def describe(position: int, event: Any) -> dict[str, Any]:
    """One event as the API's feed shows it."""
    timestamp: datetime = event.timestamp
    return {
        "position": position,
        "id": event_id(event.originator_id, event.originator_version),
        "type": type(event).__name__,
        "aggregate": category_of(event),
        "aggregate_id": str(event.originator_id),
        "subject": subject_of(event),
        "version": event.originator_version,
        "occurred_at": timestamp.isoformat(),
        "correlation_id": event.correlation_id,
        "causation_id": event.causation_id,
        "data": event_data(event),
    }


def _decode(mapper: Mapper[UUID], row: dict[str, Any]) -> Any:
    return mapper.to_domain_event(
        StoredEvent(
            originator_id=row["originator_id"],
            originator_version=row["originator_version"],
            topic=row["topic"],
            state=bytes(row["state"]),
        )
    )


async def event_feed(
    connection: AsyncConnection[Any], mapper: Mapper[UUID], *, after: int, limit: int
) -> dict[str, Any]:
    """``GET /v1/events``: every event after a position, in position order."""
    cursor = await connection.cursor(row_factory=dict_row).execute(
        "SELECT notification_id, originator_id, originator_version, topic, state "
        "FROM ledger_events WHERE notification_id > %s ORDER BY notification_id LIMIT %s",
        (after, min(limit, MAX_PAGE)),
    )
    rows = await cursor.fetchall()
    events = [describe(row["notification_id"], _decode(mapper, row)) for row in rows]
    return {"events": events, "next_after": events[-1]["position"] if events else after}


async def _aggregate_rows(
    connection: AsyncConnection[Any], aggregate_id: UUID
) -> Sequence[dict[str, Any]]:
    cursor = await connection.cursor(row_factory=dict_row).execute(
        "SELECT notification_id, originator_id, originator_version, topic, state "
        "FROM ledger_events WHERE originator_id = %s ORDER BY originator_version",
        (aggregate_id,),
    )
    return await cursor.fetchall()


async def stock_history(
    connection: AsyncConnection[Any],
    mapper: Mapper[UUID],
    sku: str,
    location: str,
    *,
    as_of: datetime | None = None,
    after: int = 0,
    limit: int = 100,
) -> dict[str, Any] | None:
    """A position's events up to ``as_of``, and its buckets as they stood at that moment."""
    rows = await _aggregate_rows(connection, position_id(sku, location))
    if not rows:
        return None
    row_state = PositionRow(sku, location)
    events: list[dict[str, Any]] = []
    last_position = 0
    for row in rows:
        event = _decode(mapper, row)
        if as_of is not None and event.timestamp > as_of:
            break
        event.apply(row_state)
        last_position = row["notification_id"]
        if row["notification_id"] > after and len(events) < min(limit, MAX_PAGE):
            events.append(describe(row["notification_id"], event))
    state = {
        "sku": sku,
        "location": location,
        "as_of": as_of.isoformat() if as_of else None,
        "position": last_position,
        **row_state.figures(),
    }
    return {"events": events, "state": state}


async def order_history(
    connection: AsyncConnection[Any], mapper: Mapper[UUID], order_id: UUID
) -> dict[str, Any] | None:
    rows = await _aggregate_rows(connection, order_id)
    if not rows:
        return None
    return {"events": [describe(row["notification_id"], _decode(mapper, row)) for row in rows]}
