"""What the channels send: Shopify deliveries and POS messages, applied or kept as exceptions.

Shared by the webhook route, the exceptions API and the ``stockledger exceptions`` CLI, so a
delivery and its retry go through the same code:

- a Shopify delivery is applied by ``adapters.shopify`` with a ``Mapping`` read from the views
  (Shopify location ids through ``external_ids.shopify``; a SKU is known when any position has
  it); a miss is checked again against the write model, so a view that lags the log never turns
  a valid delivery into an exception;
- a POS exception is retried with ``adapters.nats.apply_pos_message``, the inbound consumer's own
  parsing and application;
- what cannot be applied is kept in the exceptions store (``adapters.exceptions``) with its
  business context and raw body, keyed ``shopify:<webhook id>`` so that redeliveries of one
  webhook make one record;
- once an ``orders/create`` is applied, the exceptions waiting for that order (a fulfillment, a
  refund, a payment or a cancellation that arrived first) are retried, oldest first.

The ledger's use cases block, so they run in worker threads (``anyio.to_thread``); the mapping's
view queries run from there on the event loop's connection pool (``anyio.from_thread``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import anyio.from_thread
import anyio.to_thread
from psycopg_pool import AsyncConnectionPool

from adapters import exceptions as store
from adapters import shopify
from adapters.exceptions import ExceptionRecord
from adapters.nats import apply_pos_message
from domain.errors import DomainError, LedgerUnavailable
from domain.keys import SKU_PATTERN
from domain.keys import order_id as order_uuid
from domain.service import Ledger

log = logging.getLogger("stockledger.inbound")

SHOPIFY = shopify.CHANNEL
POS = "pos"
RETRYABLE_CHANNELS = (SHOPIFY, POS)
# Headers of a delivery kept with its exception: where it came from and when.
SHOPIFY_CONTEXT_HEADERS = {
    "x-shopify-shop-domain": "shop_domain",
    "x-shopify-event-id": "event_id",
    "x-shopify-triggered-at": "triggered_at",
    "x-shopify-api-version": "api_version",
}

ViewQuery = Callable[[str, tuple[Any, ...]], list[tuple[Any, ...]]]

_LOCATION_BY_SHOPIFY_ID = (
    "SELECT code FROM view_locations WHERE external_ids->>'shopify' = %s "
    "ORDER BY priority, code LIMIT 1"
)
_SKU_KNOWN = "SELECT 1 FROM view_availability WHERE sku = %s LIMIT 1"
_AWAITING = (
    "SELECT id FROM exceptions WHERE status = 'open' AND channel = %s "
    "AND details->>'kind' = %s AND details->>'awaiting_order' = %s ORDER BY id"
)
_OPEN_BY_KEY = "SELECT id FROM exceptions WHERE key = %s AND status = 'open'"


def shopify_exception_key(webhook_id: str) -> str:
    return f"{SHOPIFY}:{webhook_id}"


# --- the mapping ---------------------------------------------------------------------------------
def shopify_mapping(ledger: Ledger, query: ViewQuery) -> shopify.Mapping:
    """Shopify's ids in ledger terms, for one delivery (answers are memoised for its length).

    The views answer first (one indexed query); a miss is asked again of the write model, which
    never lags. A location found in the view is confirmed against the write model too, so a
    mapping just moved to another location is never used stale.
    """
    locations: dict[str, str | None] = {}
    skus: dict[str, bool] = {}

    def location_for(shopify_id: str) -> str | None:
        if shopify_id not in locations:
            rows = query(_LOCATION_BY_SHOPIFY_ID, (shopify_id,))
            code = str(rows[0][0]) if rows else None
            if code is not None:
                found = ledger.get_location(code)
                if found is None or found.external_ids.get(SHOPIFY) != shopify_id:
                    code = None
            if code is None:
                mapped = [
                    loc
                    for loc in ledger.list_locations()
                    if loc.external_ids.get(SHOPIFY) == shopify_id
                ]
                mapped.sort(key=lambda loc: (loc.priority, loc.code))
                code = mapped[0].code if mapped else None
            locations[shopify_id] = code
        return locations[shopify_id]

    def sku_known(sku: str) -> bool:
        if sku not in skus:
            if not SKU_PATTERN.fullmatch(sku):
                skus[sku] = False
            elif query(_SKU_KNOWN, (sku,)):
                skus[sku] = True  # positions are never removed: a hit is final
            else:
                skus[sku] = any(
                    ledger.get_position(sku, loc.code) is not None
                    for loc in ledger.list_locations()
                )
        return skus[sku]

    return shopify.Mapping(location_for=location_for, sku_known=sku_known)


# --- outcomes ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Applied:
    """A delivery or a retried exception that the ledger recorded (or had already recorded)."""

    channel: str
    source: str
    order_id: str | None = None
    external_order_id: str | None = None
    position: int | None = None
    result: dict[str, Any] | None = None
    #: exceptions that were waiting for this order and are now applied
    resolved_exceptions: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class Kept:
    """A delivery that could not be applied: the exception it is kept as."""

    record: ExceptionRecord
    kind: str


class RetryFailed(Exception):
    """A retried exception still cannot be applied; its attempt has been counted."""

    def __init__(self, record: ExceptionRecord, reason: str, kind: str) -> None:
        super().__init__(reason)
        self.record = record
        self.reason = reason
        self.kind = kind


def _json_safe(value: Mapping[str, Any]) -> dict[str, Any]:
    safe: dict[str, Any] = json.loads(json.dumps(dict(value), default=str))
    return safe


def _shopify_ids(topic: str, body: Mapping[str, Any] | None) -> dict[str, str]:
    """The business ids of a Shopify resource, for an exception record."""
    if not body:
        return {}
    names = {
        "fulfillments/create": (("order_id", "order_id"), ("id", "fulfillment_id")),
        "refunds/create": (("order_id", "order_id"), ("id", "refund_id")),
    }.get(topic, (("id", "order_id"),))
    return {
        name: str(body[key])
        for key, name in names
        if isinstance(body.get(key), str | int) and not isinstance(body.get(key), bool)
    }


def _pos_kind(reason: str) -> str:
    if reason.startswith("invalid JSON"):
        return "malformed"
    slug = reason.split(":", 1)[0].strip()
    return slug or "not-applicable"


# --- the blocking part (worker threads) ----------------------------------------------------------
def apply_shopify(
    ledger: Ledger,
    mapping: shopify.Mapping,
    topic: str,
    payload: bytes,
    webhook_id: str,
    *,
    correlation_id: str | None = None,
) -> Applied:
    """Parses and applies one delivery; raises ``NotApplicable`` (a refusal by the ledger
    included) when it cannot be applied, and ``LedgerUnavailable`` when nothing could be
    recorded."""
    body = shopify.parse(payload)
    try:
        outcome = shopify.apply(
            ledger, mapping, topic, body, webhook_id, correlation_id=correlation_id
        )
    except DomainError as error:
        raise shopify.NotApplicable(
            f"{error.slug}: {error.detail}",
            kind=error.slug,
            external_ids=_shopify_ids(topic, body),
            details=_json_safe(error.context),
        ) from None
    results = [r.body for r in outcome.results]
    return Applied(
        SHOPIFY,
        topic,
        order_id=outcome.order_id,
        external_order_id=outcome.external_order_id,
        position=outcome.position,
        result=results[-1] if results else None,
    )


def apply_pos(ledger: Ledger, payload: bytes, *, correlation_id: str | None = None) -> Applied:
    applied = apply_pos_message(ledger, payload, correlation_id=correlation_id)
    if applied.outcome != "applied" or applied.result is None:
        raise shopify.NotApplicable(
            applied.reason, kind=_pos_kind(applied.reason), external_ids=applied.external_ids
        )
    return Applied(
        POS,
        "transaction",
        position=applied.result.position,
        result=applied.result.body,
    )


# --- the whole of it -----------------------------------------------------------------------------
class Inbound:
    """Applies channel input through ``ledger`` and keeps what fails in the exceptions store.

    ``pool`` gives autocommit connections (the API's read pool, or the CLI's own); call from
    async code, under asyncio.
    """

    def __init__(self, ledger: Ledger, pool: AsyncConnectionPool[Any]) -> None:
        self.ledger = ledger
        self.pool = pool

    # --- Shopify deliveries ----------------------------------------------------------------
    async def deliver_shopify(
        self,
        topic: str,
        payload: bytes,
        webhook_id: str,
        *,
        correlation_id: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Applied | Kept:
        """One verified delivery: applied, or kept as an exception (once per webhook id)."""
        try:
            applied = await anyio.to_thread.run_sync(
                self._apply_shopify, topic, payload, webhook_id, correlation_id
            )
        except shopify.NotApplicable as error:
            record = await self._keep_shopify(topic, payload, webhook_id, error, headers or {})
            if error.kind == shopify.AWAITING_ORDER and await self._order_exists(error):
                # The order was placed meanwhile, and its own pass over the waiting exceptions
                # may have run before this one was recorded: apply it now.
                try:
                    return await self.retry(record, correlation_id=correlation_id)
                except RetryFailed as still:
                    return Kept(still.record, still.kind)
            return Kept(record, error.kind)
        # A redelivery that applies now closes the exception an earlier one left open.
        key = shopify_exception_key(webhook_id)
        async with self.pool.connection() as connection:
            cursor = await connection.execute(_OPEN_BY_KEY, (key,))
            stale = [int(row[0]) for row in await cursor.fetchall()]
            for exception_id in stale:
                await store.amark_resolved(connection, exception_id)
        return await self._after_applied(applied, correlation_id)

    def _apply_shopify(
        self, topic: str, payload: bytes, webhook_id: str, correlation_id: str | None
    ) -> Applied:
        mapping = shopify_mapping(self.ledger, self._view_query)
        return apply_shopify(
            self.ledger, mapping, topic, payload, webhook_id, correlation_id=correlation_id
        )

    def _view_query(self, query: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        """Runs a read on the event loop's pool, from a worker thread."""

        async def fetch() -> list[tuple[Any, ...]]:
            async with self.pool.connection() as connection:
                cursor = await connection.execute(query, params)
                return [tuple(row) for row in await cursor.fetchall()]

        rows: list[tuple[Any, ...]] = anyio.from_thread.run(fetch)
        return rows

    async def _keep_shopify(
        self,
        topic: str,
        payload: bytes,
        webhook_id: str,
        error: shopify.NotApplicable,
        headers: Mapping[str, str],
    ) -> ExceptionRecord:
        context = {
            name: headers[header]
            for header, name in SHOPIFY_CONTEXT_HEADERS.items()
            if headers.get(header)
        }
        details = {
            **_json_safe(error.details),
            "kind": error.kind,
            "topic": topic,
            "webhook_id": webhook_id,
            **context,
        }
        external_ids = error.external_ids or _shopify_ids(topic, _loads(payload))
        async with self.pool.connection() as connection:
            record = await store.arecord(
                connection,
                channel=SHOPIFY,
                source=topic,
                reason=error.reason,
                payload=payload,
                external_ids=external_ids,
                details=details,
                key=shopify_exception_key(webhook_id),
            )
        log.warning(
            "shopify %s delivery %s kept as exception %d: %s",
            topic,
            webhook_id,
            record.id,
            error.reason,
        )
        return record

    async def _order_exists(self, error: shopify.NotApplicable) -> bool:
        awaiting = error.details.get("awaiting_order")
        if not awaiting:
            return False
        found = await anyio.to_thread.run_sync(
            self.ledger.get_order, order_uuid(SHOPIFY, str(awaiting))
        )
        return found is not None

    async def _after_applied(self, applied: Applied, correlation_id: str | None) -> Applied:
        if applied.channel != SHOPIFY or applied.source != "orders/create":
            return applied
        if not applied.external_order_id:
            return applied
        resolved = await self.resolve_awaiting(
            applied.external_order_id, correlation_id=correlation_id
        )
        return replace(applied, resolved_exceptions=resolved)

    async def resolve_awaiting(
        self, external_order_id: str, *, correlation_id: str | None = None
    ) -> list[int]:
        """Retries, oldest first, the open exceptions waiting for this Shopify order; returns
        those now applied. One that still fails keeps its new reason; the others go on."""
        async with self.pool.connection() as connection:
            cursor = await connection.execute(
                _AWAITING, (SHOPIFY, shopify.AWAITING_ORDER, external_order_id)
            )
            waiting = [int(row[0]) for row in await cursor.fetchall()]
        resolved: list[int] = []
        for exception_id in waiting:
            async with self.pool.connection() as connection:
                record = await store.aget(connection, exception_id)
            if record is None or record.status != "open":
                continue
            try:
                await self.retry(record, correlation_id=correlation_id)
            except RetryFailed as still:
                log.warning(
                    "exception %d, waiting for shopify order %s, still not applicable: %s",
                    exception_id,
                    external_order_id,
                    still.reason,
                )
                continue
            except LedgerUnavailable as error:
                log.warning("exception %d not retried: %s", exception_id, error)
                break
            resolved.append(exception_id)
        return resolved

    # --- retries ---------------------------------------------------------------------------
    async def retry(self, record: ExceptionRecord, *, correlation_id: str | None = None) -> Applied:
        """Applies a kept input again: resolved when it applies (and returns what it did);
        ``RetryFailed`` with the attempt counted when it still cannot be applied.
        ``LedgerUnavailable`` leaves the exception as it was."""
        if record.channel not in RETRYABLE_CHANNELS:
            raise ValueError(f"exceptions of channel {record.channel!r} cannot be retried")
        try:
            applied = await anyio.to_thread.run_sync(self._apply_record, record, correlation_id)
        except shopify.NotApplicable as error:
            updated = await self._attempt_failed(record, error)
            raise RetryFailed(updated, error.reason, error.kind) from None
        async with self.pool.connection() as connection:
            await store.amark_resolved(connection, record.id)
        log.info("exception %d (%s %s) applied on retry", record.id, record.channel, record.source)
        return await self._after_applied(applied, correlation_id)

    def _apply_record(self, record: ExceptionRecord, correlation_id: str | None) -> Applied:
        if record.channel == SHOPIFY:
            webhook_id = str(
                record.details.get("webhook_id")
                or (record.key or "").removeprefix(f"{SHOPIFY}:")
                or f"exception-{record.id}"
            )
            mapping = shopify_mapping(self.ledger, self._view_query)
            return apply_shopify(
                self.ledger,
                mapping,
                record.source,
                record.payload,
                webhook_id,
                correlation_id=correlation_id,
            )
        return apply_pos(self.ledger, record.payload, correlation_id=correlation_id)

    async def _attempt_failed(
        self, record: ExceptionRecord, error: shopify.NotApplicable
    ) -> ExceptionRecord:
        async with self.pool.connection() as connection:
            if record.key is None:
                updated = await store.amark_attempt(connection, record.id, error.reason)
                return updated or record
            # Recording under the same key counts the attempt and keeps the latest reason and
            # details (the kind may have changed: the order arrived, but a SKU is unknown).
            return await store.arecord(
                connection,
                channel=record.channel,
                source=record.source,
                reason=error.reason,
                payload=record.payload,
                external_ids={**record.external_ids, **error.external_ids},
                details={**record.details, **_json_safe(error.details), "kind": error.kind},
                key=record.key,
            )


def _loads(payload: bytes) -> dict[str, Any] | None:
    try:
        body = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):  # see shopify.parse
        return None
    return body if isinstance(body, dict) else None
