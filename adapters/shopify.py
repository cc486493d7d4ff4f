"""Shopify in: verified webhooks translated into the ledger's commands.

Webhook bodies are the bare resource (an order, a fulfillment, a refund). Each topic maps to one
or a few use cases of the ledger; every command carries an idempotency key derived from the
delivery's ``X-Shopify-Webhook-Id`` and its step, so a redelivery (Shopify delivers at least once,
retries for hours and does not keep order) replays instead of recording twice, and a delivery
interrupted half-way completes on the next one.

What cannot be applied (an unknown SKU, an unmapped location, an order not yet received) raises
``NotApplicable`` with its business context; the caller keeps it as an exception and answers 200
so Shopify stops retrying.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from domain.committer import WriteResult
from domain.errors import AlreadyExists, InvalidTransition
from domain.keys import order_id as order_uuid
from domain.service import (
    CommandContext,
    FulfillmentLine,
    Ledger,
    LineQuantity,
    OrderLine,
    ReturnLine,
)

CHANNEL = "shopify"
TOPICS = (
    "orders/create",
    "orders/paid",
    "orders/cancelled",
    "fulfillments/create",
    "refunds/create",
)
PAID_STATUSES = ("authorized", "paid", "partially_paid")
FAILED_FULFILLMENT_STATUSES = ("cancelled", "failure", "error")

# Reasons an exception waits for the order: applied again automatically once it is placed.
AWAITING_ORDER = "order-not-yet-known"


def verify_signature(secret: str, body: bytes, signature: str | None) -> bool:
    """Shopify's ``X-Shopify-Hmac-Sha256``: base64 HMAC-SHA256 of the raw body, compared in
    constant time."""
    if not secret or not signature:
        return False
    expected = base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest())
    return hmac.compare_digest(expected, signature.strip().encode())


class NotApplicable(Exception):
    """The delivery is valid but cannot be applied now; kept as an exception for a person."""

    def __init__(
        self,
        reason: str,
        *,
        kind: str,
        external_ids: dict[str, str] | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind
        self.external_ids = external_ids or {}
        self.details = details or {}


@dataclass
class Outcome:
    """What a delivery did: the order it concerns and the last write's answer."""

    topic: str
    order_id: str | None = None
    external_order_id: str | None = None
    results: list[WriteResult] = field(default_factory=list)

    @property
    def position(self) -> int | None:
        positions = [r.position for r in self.results if r.position is not None]
        return max(positions) if positions else None


@dataclass(frozen=True)
class Mapping:
    """How Shopify's ids meet the ledger's: its location ids, and which SKUs the ledger knows."""

    location_for: Callable[[str], str | None]
    sku_known: Callable[[str], bool]


def parse(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise NotApplicable(f"the body is not JSON: {error}", kind="malformed") from None
    except (ValueError, RecursionError) as error:
        # JSON, but beyond what is parsed: an integer of over 4,300 digits (ValueError), or
        # arrays or objects nested deeper than Python's recursion limit (RecursionError).
        raise NotApplicable(f"the body is not usable JSON: {error}", kind="malformed") from None
    if not isinstance(payload, dict):
        raise NotApplicable("the body is not a JSON object", kind="malformed")
    return payload


def apply(
    ledger: Ledger,
    mapping: Mapping,
    topic: str,
    payload: dict[str, Any],
    webhook_id: str,
    *,
    correlation_id: str | None = None,
) -> Outcome:
    """Applies one delivery; raises ``NotApplicable`` when it cannot be applied now."""
    steps = _Steps(webhook_id, correlation_id)
    if topic == "orders/create":
        return _order_created(ledger, mapping, payload, steps)
    if topic == "orders/paid":
        return _order_paid(ledger, payload, steps)
    if topic == "orders/cancelled":
        return _order_cancelled(ledger, payload, steps)
    if topic == "fulfillments/create":
        return _fulfillment_created(ledger, mapping, payload, steps)
    if topic == "refunds/create":
        return _refund_created(ledger, mapping, payload, steps)
    raise NotApplicable(
        f"topic {topic!r} is not handled (handled: {', '.join(TOPICS)})", kind="unsupported-topic"
    )


@dataclass(frozen=True)
class _Steps:
    webhook_id: str
    correlation_id: str | None

    def context(self, step: str) -> CommandContext:
        return CommandContext(
            idempotency_key=f"shopify:{self.webhook_id}:{step}",
            correlation_id=self.correlation_id,
        )


def _id(payload: dict[str, Any], name: str, what: str) -> str:
    value = payload.get(name)
    if value is None or isinstance(value, bool) or str(value).strip() == "":
        raise NotApplicable(f"the {what} has no {name}", kind="malformed")
    return str(value)


def _quantity(item: dict[str, Any], what: str) -> int:
    quantity = item.get("quantity")
    if isinstance(quantity, bool) or not isinstance(quantity, int) or quantity < 0:
        raise NotApplicable(f"{what} has no valid quantity", kind="malformed")
    return quantity


def _location(mapping: Mapping, shopify_location: Any, ids: dict[str, str]) -> str | None:
    if shopify_location is None:
        return None
    code = mapping.location_for(str(shopify_location))
    if code is None:
        raise NotApplicable(
            f"Shopify location {shopify_location} is not mapped to a ledger location "
            "(set external_ids.shopify on the location)",
            kind="unmapped-location",
            external_ids={**ids, "shopify_location_id": str(shopify_location)},
        )
    return code


def _require_order(ledger: Ledger, external_id: str, ids: dict[str, str]) -> str:
    the_id = order_uuid(CHANNEL, external_id)
    if ledger.get_order(the_id) is None:
        raise NotApplicable(
            f"Shopify order {external_id} is not known yet",
            kind=AWAITING_ORDER,
            external_ids=ids,
            details={"awaiting_order": external_id},
        )
    return str(the_id)


def _order_created(
    ledger: Ledger, mapping: Mapping, order: dict[str, Any], steps: _Steps
) -> Outcome:
    external_id = _id(order, "id", "order")
    ids = {"order_id": external_id}
    location = _location(mapping, order.get("location_id"), ids)
    lines: list[OrderLine] = []
    unknown: list[str] = []
    for item in order.get("line_items") or []:
        line_id = _id(item, "id", "line item")
        quantity = _quantity(item, f"line item {line_id}")
        if quantity == 0:
            continue
        sku = str(item.get("sku") or "").strip()
        if not sku:
            raise NotApplicable(
                f"line item {line_id} has no SKU", kind="unknown-sku", external_ids=ids
            )
        if not mapping.sku_known(sku):
            unknown.append(sku)
        lines.append(OrderLine(line_id, sku, quantity, location))
    if unknown:
        raise NotApplicable(
            f"SKU {', '.join(sorted(set(unknown)))} is not known to the ledger",
            kind="unknown-sku",
            external_ids=ids,
            details={"skus": sorted(set(unknown))},
        )
    if not lines:
        raise NotApplicable("the order has no line items to reserve", kind="malformed")
    outcome = Outcome("orders/create", external_order_id=external_id)
    try:
        # Shopify has already sold these units: record the order whatever the stock, and
        # backorder what cannot be reserved, rather than lose it.
        placed = ledger.place_order(
            CHANNEL,
            external_id,
            lines,
            currency=order.get("currency"),
            total=order.get("total_price"),
            allow_backorder=True,
            context=steps.context("place"),
        )
    except AlreadyExists:
        placed = None
    outcome.order_id = str(order_uuid(CHANNEL, external_id))
    if placed is not None:
        outcome.results.append(placed)
    if order.get("financial_status") in PAID_STATUSES:
        outcome.results.append(
            ledger.authorize_payment(outcome.order_id, context=steps.context("payment"))
        )
    if order.get("cancelled_at"):
        outcome.results.append(
            _tolerating_done(
                lambda: ledger.cancel_order(
                    outcome.order_id or "",
                    order.get("cancel_reason") or "cancelled",
                    context=steps.context("cancel"),
                ),
                cancelling=True,
            )
        )
    return outcome


def _order_paid(ledger: Ledger, order: dict[str, Any], steps: _Steps) -> Outcome:
    external_id = _id(order, "id", "order")
    the_id = _require_order(ledger, external_id, {"order_id": external_id})
    outcome = Outcome("orders/paid", the_id, external_id)
    outcome.results.append(
        _tolerating_done(lambda: ledger.authorize_payment(the_id, context=steps.context("payment")))
    )
    return outcome


def _order_cancelled(ledger: Ledger, order: dict[str, Any], steps: _Steps) -> Outcome:
    external_id = _id(order, "id", "order")
    the_id = _require_order(ledger, external_id, {"order_id": external_id})
    outcome = Outcome("orders/cancelled", the_id, external_id)
    reason = str(order.get("cancel_reason") or "cancelled")
    outcome.results.append(
        _tolerating_done(
            lambda: ledger.cancel_order(the_id, reason, context=steps.context("cancel")),
            cancelling=True,
        )
    )
    return outcome


def _fulfillment_created(
    ledger: Ledger, mapping: Mapping, fulfillment: dict[str, Any], steps: _Steps
) -> Outcome:
    fulfillment_id = _id(fulfillment, "id", "fulfillment")
    external_id = _id(fulfillment, "order_id", "fulfillment")
    ids = {"order_id": external_id, "fulfillment_id": fulfillment_id}
    if str(fulfillment.get("status") or "").lower() in FAILED_FULFILLMENT_STATUSES:
        return Outcome("fulfillments/create", external_order_id=external_id)
    location = _location(mapping, fulfillment.get("location_id"), ids)
    the_id = _require_order(ledger, external_id, ids)
    lines = [
        FulfillmentLine(_id(item, "id", "line item"), quantity, location)
        for item in fulfillment.get("line_items") or []
        if (quantity := _quantity(item, "a fulfilled line item")) > 0
    ]
    if not lines:
        raise NotApplicable("the fulfillment has no line items", kind="malformed", external_ids=ids)
    outcome = Outcome("fulfillments/create", the_id, external_id)
    outcome.results.append(
        _tolerating_done(
            lambda: ledger.fulfill_order(
                the_id, fulfillment_id, lines, context=steps.context("fulfill")
            )
        )
    )
    return outcome


def _refund_amount(refund: dict[str, Any]) -> tuple[Decimal, str | None]:
    total = Decimal(0)
    currency: str | None = None
    for transaction in refund.get("transactions") or []:
        if transaction.get("kind") != "refund":
            continue
        if transaction.get("status") not in (None, "success"):
            continue
        try:
            total += Decimal(str(transaction.get("amount")))
        except InvalidOperation:
            raise NotApplicable(
                "a refund transaction has no valid amount", kind="malformed"
            ) from None
        currency = currency or transaction.get("currency")
    return total, currency


def _refund_created(
    ledger: Ledger, mapping: Mapping, refund: dict[str, Any], steps: _Steps
) -> Outcome:
    refund_id = _id(refund, "id", "refund")
    external_id = _id(refund, "order_id", "refund")
    ids = {"order_id": external_id, "refund_id": refund_id}
    the_id = _require_order(ledger, external_id, ids)
    amount, currency = _refund_amount(refund)
    items = refund.get("refund_line_items") or []
    lines = [
        {"line_id": _id(item, "line_item_id", "refund line"), "quantity": quantity}
        for item in items
        if (quantity := _quantity(item, "a refund line")) > 0
    ]
    outcome = Outcome("refunds/create", the_id, external_id)
    outcome.results.append(
        _tolerating_done(
            lambda: ledger.refund_order(
                the_id, refund_id, amount, currency, lines, context=steps.context("refund")
            )
        )
    )
    returns, cancels, return_location = _restock_plan(ledger, mapping, refund, the_id, ids)
    if returns:
        outcome.results.append(
            _tolerating_done(
                lambda: ledger.return_order(
                    the_id,
                    f"refund-{refund_id}",
                    returns,
                    location=return_location,
                    context=steps.context("return"),
                )
            )
        )
    if cancels:
        outcome.results.append(
            _tolerating_done(
                lambda: ledger.cancel_order_lines(
                    the_id, cancels, "refunded", context=steps.context("cancel-lines")
                )
            )
        )
    return outcome


def _restock_plan(
    ledger: Ledger,
    mapping: Mapping,
    refund: dict[str, Any],
    the_id: str,
    ids: dict[str, str],
) -> tuple[list[ReturnLine], list[LineQuantity], str | None]:
    """Refunded units that go back to stock: shipped ones come back as a restocked return,
    unshipped ones give up their reservation."""
    order = ledger.get_order(the_id)
    if order is None:
        return [], [], None
    legacy_restock = bool(refund.get("restock"))
    returns: list[ReturnLine] = []
    cancels: list[LineQuantity] = []
    location: str | None = None
    for item in refund.get("refund_line_items") or []:
        restock_type = item.get("restock_type")
        if (restock_type is None and legacy_restock) or restock_type == "legacy_restock":
            # Shopify's value for a refund made with the deprecated ``restock`` flag: restocked.
            restock_type = "return"
        if restock_type not in ("return", "cancel"):
            continue
        line_id = str(item.get("line_item_id"))
        quantity = int(item.get("quantity") or 0)
        if quantity <= 0:
            continue
        location = location or _location(mapping, item.get("location_id"), ids)
        shipped_back = order.shipped_of(line_id) - order.returned.get(line_id, 0)
        returned = min(quantity, max(shipped_back, 0)) if restock_type == "return" else 0
        outstanding = order.quantity_of(line_id) - order.shipped_of(line_id)
        cancelled = min(quantity - returned, max(outstanding, 0))
        if returned:
            returns.append(ReturnLine(line_id, returned, "restock"))
        if cancelled:
            cancels.append(LineQuantity(line_id, cancelled))
    return returns, cancels, location


def _tolerating_done(write: Callable[[], WriteResult], *, cancelling: bool = False) -> WriteResult:
    """A step whose effect is already recorded (by an earlier delivery under another webhook id)
    is done; so is cancelling an order that is already cancelled."""
    try:
        return write()
    except AlreadyExists as error:
        return WriteResult({"already_recorded": error.detail}, None)
    except InvalidTransition as error:
        if cancelling and "is cancelled" in error.detail:
            return WriteResult({"already_recorded": error.detail}, None)
        raise
