"""The availability view: every bucket per SKU and location, and available-to-sell per channel.

The handler replays stock events onto plain rows with the domain's own ``apply`` methods, so the
view can never disagree with the aggregate about what an event means.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar
from uuid import UUID

from psycopg import AsyncConnection, sql
from psycopg.rows import dict_row, tuple_row

from domain.location import Location
from domain.stock import BUCKETS, StockPosition, stock_figures
from projections.base import (
    Cursor,
    Executes,
    InMemoryView,
    Projection,
    Recorded,
    Writes,
    table,
)

STOCK_EVENTS: tuple[type[Any], ...] = tuple(
    value
    for value in vars(StockPosition).values()
    if isinstance(value, type)
    and issubclass(value, StockPosition.Event)
    and value is not StockPosition.Event
)
LOCATION_EVENTS: tuple[type[Any], ...] = (Location.Registered, Location.Changed)
POSITION_COLUMNS = ("position_id", "sku", "location", *BUCKETS, "version", "updated_position")


class PositionRow:
    """A view row that stock events can be applied to, as they are to the aggregate."""

    # Slots: a rebuild holds every row of the view in memory.
    __slots__ = ("sku", "location", "version", "updated_position", *BUCKETS)

    def __init__(
        self,
        sku: str,
        location: str,
        version: int = 0,
        updated_position: int = 0,
        **buckets: int,
    ) -> None:
        self.sku = sku
        self.location = location
        self.version = version
        self.updated_position = updated_position
        for name in BUCKETS:
            setattr(self, name, buckets.get(name, 0))

    def figures(self) -> dict[str, int]:
        return stock_figures({name: getattr(self, name) for name in BUCKETS})


class AvailabilityRows(InMemoryView):
    """Rows of the view as events change them: positions by id, locations by code.

    The live view loads the rows a batch touches into one and upserts them; a rebuild applies
    the whole log to an empty one and writes it with ``COPY``.
    """

    def __init__(self, positions: dict[UUID, PositionRow] | None = None) -> None:
        self.positions = positions if positions is not None else {}
        self.locations: dict[str, tuple[dict[str, Any], int]] = {}

    def apply(
        self,
        position: int,
        originator_id: UUID,
        originator_version: int,
        event_class: type[Any],
        event: Any,
    ) -> None:
        if issubclass(event_class, StockPosition.Event):
            if issubclass(event_class, StockPosition.Opened):
                self.positions[originator_id] = PositionRow(event.sku, event.location)
            row = self.positions[originator_id]
            # The domain's own rule, whether ``event`` is the event or a stand-in for it.
            event_class.apply(event, row)
            row.version = originator_version
            row.updated_position = position
        elif issubclass(event_class, (Location.Registered, Location.Changed)):
            self.locations[event.code] = (
                {
                    "code": event.code,
                    "name": event.name,
                    "kind": event.kind,
                    "channels": list(event.channels),
                    "priority": event.priority,
                    "external_ids": dict(event.external_ids),
                },
                position,
            )

    def __len__(self) -> int:
        return len(self.positions) + len(self.locations)

    def write(self, cursor: Cursor, tables: Mapping[str, str]) -> None:
        with cursor.copy(
            sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
                table(tables, "view_availability"),
                sql.SQL(", ").join(map(sql.Identifier, POSITION_COLUMNS)),
            )
        ) as copy:
            copy.set_types(["uuid", "text", "text", *["int8"] * (len(POSITION_COLUMNS) - 3)])
            for position_id, row in self.positions.items():
                copy.write_row(
                    (position_id, *[getattr(row, column) for column in POSITION_COLUMNS[1:]])
                )
        self.upsert_locations(cursor, tables)

    def upsert_positions(self, cursor: Executes, tables: Mapping[str, str]) -> None:
        if not self.positions:
            return
        rows = list(self.positions.values())
        values: list[list[Any]] = [
            list(self.positions),
            *[[getattr(row, column) for row in rows] for column in POSITION_COLUMNS[1:]],
        ]
        types = ["uuid", "text", "text", *["bigint"] * (len(POSITION_COLUMNS) - 3)]
        statement = sql.SQL(
            "INSERT INTO {table} ({columns}) SELECT * FROM unnest({arrays}) "
            "ON CONFLICT (position_id) DO UPDATE SET {updates}"
        ).format(
            table=table(tables, "view_availability"),
            columns=sql.SQL(", ").join(map(sql.Identifier, POSITION_COLUMNS)),
            arrays=sql.SQL(", ").join(sql.SQL(f"%s::{kind}[]") for kind in types),
            updates=sql.SQL(", ").join(
                sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(column))
                for column in POSITION_COLUMNS[3:]
            ),
        )
        cursor.execute(statement, values)

    def upsert_locations(self, cursor: Executes, tables: Mapping[str, str]) -> None:
        for details, position in self.locations.values():
            cursor.execute(
                sql.SQL(
                    "INSERT INTO {} (code, name, kind, channels, priority, external_ids, "
                    "updated_position) VALUES (%s, %s, %s, %s, %s, %s, %s) "
                    "ON CONFLICT (code) DO UPDATE SET name = EXCLUDED.name, kind = EXCLUDED.kind, "
                    "channels = EXCLUDED.channels, priority = EXCLUDED.priority, "
                    "external_ids = EXCLUDED.external_ids, "
                    "updated_position = EXCLUDED.updated_position"
                ).format(table(tables, "view_locations")),
                (
                    details["code"],
                    details["name"],
                    details["kind"],
                    details["channels"],
                    details["priority"],
                    json.dumps(details["external_ids"]),
                    position,
                ),
            )


class AvailabilityProjection(Projection):
    name: ClassVar[str] = "availability"
    tables: ClassVar[tuple[str, ...]] = ("view_availability", "view_locations")
    event_classes: ClassVar[tuple[type[Any], ...]] = STOCK_EVENTS + LOCATION_EVENTS

    def process(
        self, cursor: Cursor, writes: Writes, batch: Sequence[Recorded], tables: Mapping[str, str]
    ) -> None:
        # Every row loaded is touched by the batch, so every row held is written back.
        rows = AvailabilityRows(self._load(cursor, batch, tables))
        for recorded in batch:
            event = recorded.event
            rows.apply(
                recorded.position, event.originator_id, event.originator_version, type(event), event
            )
        rows.upsert_positions(writes, tables)
        rows.upsert_locations(writes, tables)

    def in_memory(self) -> AvailabilityRows:
        return AvailabilityRows()

    @staticmethod
    def _load(
        cursor: Cursor, batch: Sequence[Recorded], tables: Mapping[str, str]
    ) -> dict[UUID, PositionRow]:
        ids = list(
            {
                r.event.originator_id
                for r in batch
                if isinstance(r.event, StockPosition.Event)
                and not isinstance(r.event, StockPosition.Opened)
            }
        )
        if not ids:
            return {}
        cursor.execute(
            sql.SQL("SELECT * FROM {} WHERE position_id = ANY(%s)").format(
                table(tables, "view_availability")
            ),
            (ids,),
        )
        return {
            row["position_id"]: PositionRow(
                row["sku"],
                row["location"],
                version=row["version"],
                updated_position=row["updated_position"],
                **{bucket: row[bucket] for bucket in BUCKETS},
            )
            for row in cursor.fetchall()
        }


# --- the read model ----------------------------------------------------------------------------
async def view_position(connection: AsyncConnection[Any], name: str) -> int:
    cursor = await connection.cursor(row_factory=dict_row).execute(
        "SELECT position FROM projection_positions WHERE name = %s", (name,)
    )
    row = await cursor.fetchone()
    return int(_field(row, "position") or 0)


def _field(row: Any, name: str) -> Any:
    if row is None:
        return None
    return row[name] if isinstance(row, Mapping) else row[0]


async def sku_availability(connection: AsyncConnection[Any], sku: str) -> dict[str, Any]:
    """``GET /v1/availability/{sku}``: every location's buckets and each channel's ATS."""
    return (await skus_availability(connection, [sku]))[sku]


async def skus_availability(
    connection: AsyncConnection[Any], skus: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """``sku_availability`` of many distinct SKUs in one statement (the API answers concurrent
    reads together), by SKU."""
    # One statement: the rows and the view's position come from the same snapshot. Each SKU an
    # index probe: OFFSET 0 keeps the planner from flattening the lateral subquery into a join,
    # which it may run as a scan of the whole view (it does while the view has no statistics,
    # at four times the cost). Plain tuples of just the columns needed: the API's busiest read.
    buckets = ", ".join(f"a.{bucket}" for bucket in BUCKETS)
    cursor = await connection.cursor(row_factory=tuple_row).execute(
        f"SELECT p.view_position, s.sku, a.location, {buckets}, l.channels FROM "
        "(SELECT coalesce((SELECT position FROM projection_positions WHERE name = %s), 0) "
        "AS view_position) p CROSS JOIN unnest(%s::text[]) AS s(sku) "
        "LEFT JOIN LATERAL (SELECT * FROM view_availability WHERE sku = s.sku OFFSET 0) a ON true "
        "LEFT JOIN view_locations l ON l.code = a.location ORDER BY s.sku, a.location",
        (AvailabilityProjection.name, list(skus)),
        prepare=True,
    )
    found = await cursor.fetchall()
    position = int(found[0][0]) if found else 0
    answers: dict[str, dict[str, Any]] = {
        sku: {"sku": sku, "position": position, "locations": [], "channels": {}} for sku in skus
    }
    for _, sku, location, *values, location_channels in found:
        if location is None:
            continue  # a SKU that is nowhere: its row only carries the position
        answer = answers[sku]
        view = {"location": location, **stock_figures(dict(zip(BUCKETS, values, strict=True)))}
        answer["locations"].append(view)
        channels = answer["channels"]
        for channel in location_channels or []:
            channels[channel] = channels.get(channel, 0) + view["available_to_sell"]
    return answers


async def channel_availability(
    connection: AsyncConnection[Any], channel: str, skus: Sequence[str]
) -> dict[str, Any]:
    """``GET /v1/availability?channel=&sku=``: ATS for many SKUs at once, in request order."""
    # One statement, as for one SKU: the figures are never older than the position they claim.
    cursor = await connection.cursor(row_factory=tuple_row).execute(
        "SELECT p.view_position, s.sku, s.ats FROM "
        "(SELECT coalesce((SELECT position FROM projection_positions WHERE name = %s), 0) "
        "AS view_position) p "
        "LEFT JOIN (SELECT a.sku, sum(GREATEST(a.available - a.safety_stock, 0)) AS ats "
        "FROM view_availability a JOIN view_locations l ON l.code = a.location "
        "WHERE a.sku = ANY(%s) AND %s = ANY(l.channels) GROUP BY a.sku) s ON true",
        (AvailabilityProjection.name, list(skus), channel),
    )
    rows = await cursor.fetchall()
    position = int(rows[0][0]) if rows else 0
    found = {sku: int(ats) for _, sku, ats in rows if sku is not None}
    return {
        "channel": channel,
        "position": position,
        "items": [{"sku": sku, "available_to_sell": found.get(sku, 0)} for sku in skus],
    }


async def list_locations(connection: AsyncConnection[Any]) -> list[dict[str, Any]]:
    cursor = await connection.cursor(row_factory=dict_row).execute(
        "SELECT code, name, kind, channels, priority, external_ids FROM view_locations "
        "ORDER BY priority, code"
    )
    return [
        {
            "code": row["code"],
            "name": row["name"],
            "kind": row["kind"],
            "channels": list(row["channels"]),
            "priority": row["priority"],
            "external_ids": row["external_ids"],
        }
        for row in await cursor.fetchall()
    ]
