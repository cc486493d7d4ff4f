"""Key secrets and the webhook secret never appear in an answer or in the server's log.

The log is the real one: what ``stockledger serve`` writes (uvicorn's access lines and the
application's JSON lines), read back from the file its output goes to.
"""

from __future__ import annotations

import json
import time
from typing import Any
from uuid import uuid4

import httpx


def test_no_secret_is_ever_answered_or_logged(server: Any, places: Any) -> None:
    unknown = f"sk-unknown-{uuid4().hex}"
    answers: list[httpx.Response] = []
    receipt = {"sku": "SECRET-SKU", "location": places.store_a, "quantity": 1}

    with httpx.Client(base_url=server.base_url, timeout=30) as client:

        def send(method: str, path: str, **options: Any) -> None:
            answers.append(client.request(method, path, **options))

        for name, secret in server.keys.items():
            bearer = {"Authorization": f"Bearer {secret}"}
            # Allowed, refused for scope or location, refused for the body: every path a key
            # can take through the API.
            send("GET", "/v1/locations", headers=bearer)
            send("POST", "/v1/stock/receipts", json=receipt, headers=bearer)
            send("POST", "/v1/stock/receipts", json={**receipt, "quantity": 0}, headers=bearer)
            send("POST", "/v1/orders", content=b"{not json", headers=bearer)
            send("GET", "/v1/orders/not-a-uuid", headers=bearer)
            send("GET", "/nowhere", headers=bearer)
            send("GET", "/ops", headers=bearer)
            send("POST", "/ops/login", data={"key": secret}, follow_redirects=False)
            # Malformed ways of sending it.
            send("GET", "/v1/locations", headers={"Authorization": f"Basic {secret}"})
            send("GET", "/v1/locations", headers={"Authorization": f"Bearer {secret}x"})
            send("GET", "/v1/locations", headers={"Authorization": f"Bearer  {secret} extra"})
            send("GET", "/v1/locations", headers={"Authorization": f"bearer {secret[:-1]}"})
            assert name
        send("GET", "/v1/locations", headers={"Authorization": f"Bearer {unknown}"})
        send("POST", "/ops/login", data={"key": unknown}, follow_redirects=False)
        # The webhook secret: deliveries signed with it, right and wrong.
        body = json.dumps({"id": 1, "line_items": []}).encode()
        for signature in (server.signature(body), server.signature(body, "other-secret"), ""):
            send(
                "POST",
                "/v1/webhooks/shopify",
                content=body,
                headers={
                    "X-Shopify-Topic": "orders/create",
                    "X-Shopify-Webhook-Id": f"leak-{uuid4().hex}",
                    "X-Shopify-Hmac-Sha256": signature,
                },
            )

    time.sleep(0.5)  # the server's last log lines
    log = server.log()
    # The log really is the server's: access lines and the application's own lines.
    assert "GET /v1/locations HTTP/1.1" in log and "ops session opened" in log, log[-2000:]
    secrets = [*server.keys.values(), unknown, server.webhook_secret]
    for secret in secrets:
        assert secret not in log, "a secret is in the server log"
        for response in answers:
            assert secret not in response.text, (response.request.url, response.status_code)
            assert all(secret not in value for value in response.headers.values())
    assert all(response.status_code < 500 for response in answers)
