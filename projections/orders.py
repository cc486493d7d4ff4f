"""The order view: status, lines and allocations of every order, found by id or channel id.

Each row keeps the order's full state (as a snapshot), so a batch continues from the row itself:
the view needs nothing in memory between batches, and a rebuild can swap under a running worker.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar
from uuid import UUID

from eventsourcing.domain import Snapshot
from eventsourcing.persistence import Mapper, StoredEvent
from eventsourcing.utils import get_topic
from psycopg import AsyncConnection, sql
from psycopg.rows import dict_row

from domain.order import Order
from projections.base import Cursor, Projection, Recorded, Writes, table

ORDER_EVENTS: tuple[type[Any], ...] = tuple(
    value
    for value in vars(Order).values()
    if isinstance(value, type)
    and issubclass(value, Order.Event)
    and value is not Order.Event
    and value is not Order.Created
)
_SNAPSHOT_TOPIC = get_topic(Snapshot)


class OrdersProjection(Projection):
    name: ClassVar[str] = "orders"
    tables: ClassVar[tuple[str, ...]] = ("view_orders",)
    event_classes: ClassVar[tuple[type[Any], ...]] = ORDER_EVENTS

    def __init__(self, mapper: Mapper[UUID]) -> None:
        self.mapper = mapper

    def process(
        self, cursor: Cursor, writes: Writes, batch: Sequence[Recorded], tables: Mapping[str, str]
    ) -> None:
        orders = self._load(cursor, batch, tables)
        changed: dict[UUID, int] = {}
        for recorded in batch:
            event = recorded.event
            mutated = event.mutate(orders.get(event.originator_id))
            assert isinstance(mutated, Order)
            orders[event.originator_id] = mutated
            changed[event.originator_id] = recorded.position
        for order_id, position in changed.items():
            order = orders[order_id]
            snapshot = self.mapper.to_stored_event(_snapshot(order))
            writes.execute(
                sql.SQL(
                    "INSERT INTO {} (order_id, channel, external_id, status, paid, placed_at, "
                    "updated_at, body, state, version, updated_position) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
                    "ON CONFLICT (order_id) DO UPDATE SET status = EXCLUDED.status, "
                    "paid = EXCLUDED.paid, updated_at = EXCLUDED.updated_at, body = EXCLUDED.body, "
                    "state = EXCLUDED.state, version = EXCLUDED.version, "
                    "updated_position = EXCLUDED.updated_position"
                ).format(table(tables, "view_orders")),
                (
                    order_id,
                    order.channel,
                    order.external_id,
                    order.status,
                    order.paid,
                    order.created_on,
                    order.modified_on,
                    json.dumps(order.describe()),
                    snapshot.state,
                    order.version,
                    position,
                ),
            )

    def _load(
        self, cursor: Cursor, batch: Sequence[Recorded], tables: Mapping[str, str]
    ) -> dict[UUID, Order]:
        ids = list({r.event.originator_id for r in batch if not isinstance(r.event, Order.Placed)})
        if not ids:
            return {}
        cursor.execute(
            sql.SQL("SELECT order_id, version, state FROM {} WHERE order_id = ANY(%s)").format(
                table(tables, "view_orders")
            ),
            (ids,),
        )
        orders: dict[UUID, Order] = {}
        for row in cursor.fetchall():
            snapshot = self.mapper.to_domain_event(
                StoredEvent(row["order_id"], row["version"], _SNAPSHOT_TOPIC, bytes(row["state"]))
            )
            orders[row["order_id"]] = snapshot.mutate(None)  # type: ignore[attr-defined]
        return orders


def _snapshot(order: Order) -> Snapshot:
    """The order's state, stamped with its last change (so a rebuild writes identical bytes)."""
    taken = Snapshot.take(order)
    return Snapshot(
        originator_id=taken.originator_id,
        originator_version=taken.originator_version,
        timestamp=order.modified_on,
        topic=taken.topic,
        state=taken.state,
    )


# --- the read model ----------------------------------------------------------------------------
async def get_order(connection: AsyncConnection[Any], order_id: UUID) -> dict[str, Any] | None:
    cursor = await connection.cursor(row_factory=dict_row).execute(
        "SELECT body, updated_position FROM view_orders WHERE order_id = %s", (order_id,)
    )
    row = await cursor.fetchone()
    if row is None:
        return None
    return {**row["body"], "position": int(row["updated_position"])}


async def find_orders(
    connection: AsyncConnection[Any],
    *,
    channel: str | None = None,
    external_id: str | None = None,
    status: str | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    conditions = []
    params: list[Any] = []
    for column, value in (("channel", channel), ("external_id", external_id), ("status", status)):
        if value is not None:
            conditions.append(sql.SQL("{} = %s").format(sql.Identifier(column)))
            params.append(value)
    where = sql.SQL(" WHERE ") + sql.SQL(" AND ").join(conditions) if conditions else sql.SQL("")
    cursor = await connection.cursor(row_factory=dict_row).execute(
        sql.SQL(
            "SELECT body, updated_position FROM view_orders{} ORDER BY placed_at DESC LIMIT %s"
        ).format(where),
        [*params, limit],
    )
    return [
        {**row["body"], "position": int(row["updated_position"])} for row in await cursor.fetchall()
    ]


async def orders_by_status(connection: AsyncConnection[Any]) -> dict[str, int]:
    cursor = await connection.cursor(row_factory=dict_row).execute(
        "SELECT status, count(*) AS n FROM view_orders GROUP BY status"
    )
    return {row["status"]: int(row["n"]) for row in await cursor.fetchall()}


async def unpaid_orders_placed_before(
    connection: AsyncConnection[Any], cutoff: Any, limit: int = 500
) -> list[UUID]:
    """Candidates for reservation expiry (the ledger re-checks each one)."""
    cursor = await connection.cursor(row_factory=dict_row).execute(
        "SELECT order_id FROM view_orders WHERE status = 'reserved' AND NOT paid "
        "AND placed_at < %s ORDER BY placed_at LIMIT %s",
        (cutoff, limit),
    )
    return [row["order_id"] for row in await cursor.fetchall()]
