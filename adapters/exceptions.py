"""The exceptions store: inbound input that could not be applied, kept for a person to fix.

A webhook or a message that the ledger refuses (bad JSON, a validation error, an unknown SKU or
location) must not be retried by its sender forever, nor lost: it is acknowledged to the sender
and recorded here with its raw payload and business context (``external_ids``, ``details``), in
status ``open``, until someone retries it after a fix (``mark_attempt`` / ``mark_resolved``).

``key`` dedupes: the same failing input recorded twice (a redelivery after a lost ack) updates
the first record (``attempts`` + 1, latest reason, reopened) instead of adding a second one.

Every function takes a psycopg connection (sync or async variants, prefixed ``a``) and runs in
its own transaction block, so it works on autocommit and non-autocommit connections alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from pydantic import BaseModel, ConfigDict

ExceptionStatus = Literal["open", "resolved"]

MAX_PAGE = 1000

_COLUMNS = (
    "id, channel, source, key, external_ids, reason, payload, details, status, attempts, "
    "created_at, updated_at"
)
_INSERT = (
    "INSERT INTO exceptions (channel, source, key, external_ids, reason, payload, details) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s) "
    "ON CONFLICT (key) DO UPDATE SET attempts = exceptions.attempts + 1, "
    "reason = EXCLUDED.reason, details = EXCLUDED.details, status = 'open', updated_at = now() "
    f"RETURNING {_COLUMNS}"
)
_GET = f"SELECT {_COLUMNS} FROM exceptions WHERE id = %s"
_RESOLVE = (
    "UPDATE exceptions SET status = 'resolved', updated_at = now() WHERE id = %s "
    f"RETURNING {_COLUMNS}"
)
_ATTEMPT = (
    "UPDATE exceptions SET attempts = attempts + 1, reason = %s, status = 'open', "
    f"updated_at = now() WHERE id = %s RETURNING {_COLUMNS}"
)
_COUNT_OPEN = "SELECT count(*) AS open FROM exceptions WHERE status = 'open'"


class ExceptionRecord(BaseModel):
    """One input that could not be applied."""

    model_config = ConfigDict(frozen=True)

    id: int
    channel: str
    #: where it came from: a NATS subject (``stockledger.inbound.pos``) or a webhook topic
    source: str
    key: str | None
    #: the business ids it carries, e.g. ``{"transaction_id": "T-1", "location": "STORE-1"}``
    external_ids: dict[str, str]
    reason: str
    #: the raw body as received
    payload: bytes
    details: dict[str, Any]
    status: ExceptionStatus
    attempts: int
    created_at: datetime
    updated_at: datetime

    @property
    def payload_text(self) -> str:
        return self.payload.decode("utf-8", errors="replace")


def _insert_params(
    channel: str,
    source: str,
    reason: str,
    payload: bytes | str,
    external_ids: Mapping[str, str] | None,
    details: Mapping[str, Any] | None,
    key: str | None,
) -> tuple[Any, ...]:
    raw = payload.encode() if isinstance(payload, str) else bytes(payload)
    ids = {str(name): str(value) for name, value in (external_ids or {}).items()}
    return (channel, source, key, Jsonb(ids), reason, raw, Jsonb(dict(details or {})))


def _list_query(
    status: ExceptionStatus | None, channel: str | None, after_id: int, limit: int
) -> tuple[str, tuple[Any, ...]]:
    clauses = ["id > %s"]
    params: list[Any] = [after_id]
    if status is not None:
        clauses.append("status = %s")
        params.append(status)
    if channel is not None:
        clauses.append("channel = %s")
        params.append(channel)
    params.append(max(1, min(limit, MAX_PAGE)))
    query = f"SELECT {_COLUMNS} FROM exceptions WHERE {' AND '.join(clauses)} ORDER BY id LIMIT %s"
    return query, tuple(params)


def _record_of(row: dict[str, Any] | None) -> ExceptionRecord | None:
    if row is None:
        return None
    return ExceptionRecord.model_validate({**row, "payload": bytes(row["payload"])})


# --- sync ----------------------------------------------------------------------------------------
def record(
    connection: psycopg.Connection[Any],
    *,
    channel: str,
    source: str,
    reason: str,
    payload: bytes | str,
    external_ids: Mapping[str, str] | None = None,
    details: Mapping[str, Any] | None = None,
    key: str | None = None,
) -> ExceptionRecord:
    """Records an input that could not be applied (or counts one more attempt of it, by key)."""
    params = _insert_params(channel, source, reason, payload, external_ids, details, key)
    with connection.transaction(), connection.cursor(row_factory=dict_row) as cursor:
        cursor.execute(_INSERT, params)
        recorded = _record_of(cursor.fetchone())
    assert recorded is not None
    return recorded


def get(connection: psycopg.Connection[Any], exception_id: int) -> ExceptionRecord | None:
    with connection.transaction(), connection.cursor(row_factory=dict_row) as cursor:
        cursor.execute(_GET, (exception_id,))
        return _record_of(cursor.fetchone())


def list_exceptions(
    connection: psycopg.Connection[Any],
    *,
    status: ExceptionStatus | None = "open",
    channel: str | None = None,
    after_id: int = 0,
    limit: int = 100,
) -> list[ExceptionRecord]:
    """Exceptions in id order (oldest first); page with ``after_id`` = the last id seen."""
    query, params = _list_query(status, channel, after_id, limit)
    with connection.transaction(), connection.cursor(row_factory=dict_row) as cursor:
        cursor.execute(query, params)
        return [record for row in cursor.fetchall() if (record := _record_of(row))]


def mark_resolved(connection: psycopg.Connection[Any], exception_id: int) -> ExceptionRecord | None:
    """The input was applied (or dismissed): closes the exception. None if it does not exist."""
    with connection.transaction(), connection.cursor(row_factory=dict_row) as cursor:
        cursor.execute(_RESOLVE, (exception_id,))
        return _record_of(cursor.fetchone())


def mark_attempt(
    connection: psycopg.Connection[Any], exception_id: int, reason: str
) -> ExceptionRecord | None:
    """A retry failed again: counts the attempt and keeps the latest reason."""
    with connection.transaction(), connection.cursor(row_factory=dict_row) as cursor:
        cursor.execute(_ATTEMPT, (reason, exception_id))
        return _record_of(cursor.fetchone())


def count_open(connection: psycopg.Connection[Any]) -> int:
    with connection.transaction(), connection.cursor(row_factory=dict_row) as cursor:
        cursor.execute(_COUNT_OPEN)
        row = cursor.fetchone()
        return int(row["open"]) if row else 0


# --- async ---------------------------------------------------------------------------------------
async def arecord(
    connection: psycopg.AsyncConnection[Any],
    *,
    channel: str,
    source: str,
    reason: str,
    payload: bytes | str,
    external_ids: Mapping[str, str] | None = None,
    details: Mapping[str, Any] | None = None,
    key: str | None = None,
) -> ExceptionRecord:
    params = _insert_params(channel, source, reason, payload, external_ids, details, key)
    async with connection.transaction(), connection.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(_INSERT, params)
        recorded = _record_of(await cursor.fetchone())
    assert recorded is not None
    return recorded


async def aget(
    connection: psycopg.AsyncConnection[Any], exception_id: int
) -> ExceptionRecord | None:
    async with connection.transaction(), connection.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(_GET, (exception_id,))
        return _record_of(await cursor.fetchone())


async def alist_exceptions(
    connection: psycopg.AsyncConnection[Any],
    *,
    status: ExceptionStatus | None = "open",
    channel: str | None = None,
    after_id: int = 0,
    limit: int = 100,
) -> list[ExceptionRecord]:
    query, params = _list_query(status, channel, after_id, limit)
    async with connection.transaction(), connection.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(query, params)
        return [record for row in await cursor.fetchall() if (record := _record_of(row))]


async def amark_resolved(
    connection: psycopg.AsyncConnection[Any], exception_id: int
) -> ExceptionRecord | None:
    async with connection.transaction(), connection.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(_RESOLVE, (exception_id,))
        return _record_of(await cursor.fetchone())


async def amark_attempt(
    connection: psycopg.AsyncConnection[Any], exception_id: int, reason: str
) -> ExceptionRecord | None:
    async with connection.transaction(), connection.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(_ATTEMPT, (reason, exception_id))
        return _record_of(await cursor.fetchone())


async def acount_open(connection: psycopg.AsyncConnection[Any]) -> int:
    async with connection.transaction(), connection.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(_COUNT_OPEN)
        row = await cursor.fetchone()
        return int(row["open"]) if row else 0
