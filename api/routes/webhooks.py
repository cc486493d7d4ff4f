"""Shopify webhooks: ``POST /v1/webhooks/shopify``.

No API key: the ``X-Shopify-Hmac-Sha256`` signature (base64 HMAC-SHA256 of the raw body with
``STOCKLEDGER_SHOPIFY_WEBHOOK_SECRET``, compared in constant time) is the authentication. A
wrong or missing signature is answered 401 and nothing is recorded; without a configured secret
every delivery is answered 503 (Shopify retries for hours, so nothing is lost while it is set).

A verified delivery is applied through ``adapters.shopify`` (``api.inbound``). Shopify delivers
at least once and out of order, so:

- ``X-Shopify-Webhook-Id`` (the same on every retry of a delivery) makes every ledger step
  idempotent and keys the delivery's exception record: ten copies apply once and keep at most
  one exception;
- what cannot be applied (an unknown SKU, an unmapped location, a body that is not JSON, a
  fulfillment or a refund whose order has not arrived) is answered **200**, so Shopify stops
  retrying, and kept as an exception with its business context and raw body; an order's
  ``orders/create`` applies the exceptions that were waiting for it;
- a signed delivery without ``X-Shopify-Topic`` or ``X-Shopify-Webhook-Id`` is answered 400:
  Shopify always sends both, a retry cannot add a header, and without a topic there is nothing
  to apply (without a webhook id, nothing to dedupe on), so the sender is told at once rather
  than an operator later;
- the ledger being unable to record (``LedgerUnavailable``) is answered 503: Shopify retries.
"""

from __future__ import annotations

import logging
import re
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, Field

from adapters import shopify
from api.deps import POSITION_HEADER, LedgerDep, ReadPoolDep, RequestIdDep, SettingsDep
from api.inbound import Applied, Inbound
from api.problems import ApiProblem, problem_responses

log = logging.getLogger("stockledger.api")

router = APIRouter(
    prefix="/v1/webhooks", tags=["webhooks"], responses=problem_responses(400, 401, 413, 503)
)

SIGNATURE_HEADER = "X-Shopify-Hmac-Sha256"
TOPIC_HEADER = "X-Shopify-Topic"
WEBHOOK_ID_HEADER = "X-Shopify-Webhook-Id"
# The webhook id becomes part of idempotency keys (printable ASCII, at most 255 with the step).
_WEBHOOK_ID = re.compile(r"^[!-~]{1,200}$")
_TOPIC = re.compile(r"^[a-z0-9_]{1,64}/[a-z0-9_]{1,64}$")


class WebhookOut(BaseModel):
    """What became of a delivery. Both outcomes answer 200: Shopify must not retry either."""

    status: Literal["applied", "kept-as-exception"]
    topic: str
    webhook_id: str
    order_id: str | None = Field(default=None, description="The ledger's order id")
    external_order_id: str | None = Field(default=None, description="Shopify's order id")
    position: int | None = Field(
        default=None, description="Global position of the last event (also X-Ledger-Position)"
    )
    exception_id: int | None = Field(
        default=None, description="The exception the delivery is kept as (GET /v1/exceptions)"
    )
    kind: str | None = Field(
        default=None,
        description="Why it is kept: unknown-sku, unmapped-location, order-not-yet-known, "
        "malformed, unsupported-topic, or the ledger's refusal (validation, invalid-state...)",
    )
    reason: str | None = None
    resolved_exceptions: list[int] = Field(
        default_factory=list,
        description="Exceptions that waited for this order and are now applied",
    )


async def webhook_secret(settings: SettingsDep) -> str:
    """The secret deliveries are signed with; 503 before anything else when it is not set."""
    secret = settings.shopify_webhook_secret
    if not secret:
        raise ApiProblem(503, "unavailable", "webhook secret not configured")
    return secret


@router.post("/shopify", summary="A Shopify webhook delivery (HMAC-signed, no API key)")
async def shopify_webhook(
    secret: Annotated[str, Depends(webhook_secret)],
    request: Request,
    response: Response,
    ledger: LedgerDep,
    pool: ReadPoolDep,
    request_id: RequestIdDep,
) -> WebhookOut:
    """Verifies, dedupes and applies one delivery (topics: orders/create, orders/paid,
    orders/cancelled, fulfillments/create, refunds/create). Deliveries that cannot be applied
    are answered 200 ``kept-as-exception``."""
    body = await request.body()
    if not shopify.verify_signature(secret, body, request.headers.get(SIGNATURE_HEADER)):
        log.warning(
            "shopify webhook refused: %s signature (request %s)",
            "missing" if SIGNATURE_HEADER.lower() not in request.headers else "wrong",
            request_id,
        )
        raise ApiProblem(
            401,
            "unauthorized",
            f"the {SIGNATURE_HEADER} signature is missing or does not match the body",
        )
    topic = request.headers.get(TOPIC_HEADER, "").strip()
    webhook_id = request.headers.get(WEBHOOK_ID_HEADER, "").strip()
    if not _TOPIC.fullmatch(topic):
        raise ApiProblem(
            400, "bad-request", f"{TOPIC_HEADER} is missing or not a topic like orders/create"
        )
    if not _WEBHOOK_ID.fullmatch(webhook_id):
        raise ApiProblem(
            400,
            "bad-request",
            f"{WEBHOOK_ID_HEADER} is missing or not 1-200 printable characters: "
            "it is what deliveries are deduplicated on",
        )
    outcome = await Inbound(ledger, pool).deliver_shopify(
        topic,
        body,
        webhook_id,
        correlation_id=request_id,
        headers=dict(request.headers),
    )
    if isinstance(outcome, Applied):
        if outcome.position is not None:
            response.headers[POSITION_HEADER] = str(outcome.position)
        return WebhookOut(
            status="applied",
            topic=topic,
            webhook_id=webhook_id,
            order_id=outcome.order_id,
            external_order_id=outcome.external_order_id,
            position=outcome.position,
            resolved_exceptions=outcome.resolved_exceptions,
        )
    return WebhookOut(
        status="kept-as-exception",
        topic=topic,
        webhook_id=webhook_id,
        external_order_id=outcome.record.external_ids.get("order_id"),
        exception_id=outcome.record.id,
        kind=outcome.kind,
        reason=outcome.record.reason,
    )
