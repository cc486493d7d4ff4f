"""The discrepancy view: positions where a fact took more than the ledger held, until cleared."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from psycopg import AsyncConnection, sql
from psycopg.rows import dict_row

from domain.stock import StockPosition
from projections.base import Cursor, Projection, Recorded, Writes, table


class DiscrepanciesProjection(Projection):
    name: ClassVar[str] = "discrepancies"
    tables: ClassVar[tuple[str, ...]] = ("view_discrepancies",)
    event_classes: ClassVar[tuple[type[Any], ...]] = (
        StockPosition.DiscrepancyRecorded,
        StockPosition.DiscrepancyCleared,
    )

    def process(
        self, cursor: Cursor, writes: Writes, batch: Sequence[Recorded], tables: Mapping[str, str]
    ) -> None:
        target = table(tables, "view_discrepancies")
        for recorded in batch:
            event: Any = recorded.event
            if isinstance(event, StockPosition.DiscrepancyRecorded):
                writes.execute(
                    sql.SQL(
                        "INSERT INTO {} (position_id, sku, location, shortfall, cause, "
                        "recorded_at, updated_position) VALUES (%s, %s, %s, %s, %s, %s, %s) "
                        "ON CONFLICT (position_id) DO UPDATE SET shortfall = EXCLUDED.shortfall, "
                        "cause = EXCLUDED.cause, recorded_at = EXCLUDED.recorded_at, "
                        "updated_position = EXCLUDED.updated_position"
                    ).format(target),
                    (
                        event.originator_id,
                        event.sku,
                        event.location,
                        event.shortfall,
                        event.cause,
                        event.timestamp,
                        recorded.position,
                    ),
                )
            else:
                writes.execute(
                    sql.SQL("DELETE FROM {} WHERE position_id = %s").format(target),
                    (event.originator_id,),
                )


async def list_discrepancies(connection: AsyncConnection[Any]) -> list[dict[str, Any]]:
    cursor = await connection.cursor(row_factory=dict_row).execute(
        "SELECT sku, location, shortfall, cause, recorded_at, updated_position "
        "FROM view_discrepancies ORDER BY recorded_at DESC"
    )
    return [
        {
            "sku": row["sku"],
            "location": row["location"],
            "shortfall": int(row["shortfall"]),
            "cause": row["cause"],
            "recorded_at": row["recorded_at"].isoformat(),
            "position": int(row["updated_position"]),
        }
        for row in await cursor.fetchall()
    ]
