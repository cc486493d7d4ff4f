"""End-to-end fixtures: the real app, served by uvicorn on a free port, over real HTTP.

One server for the session, on its own freshly created database (migrated by the app's own
lifespan). Tests keep out of each other's way with unique SKUs, order ids and keys; the few
fixed locations below exist because the location-limited API keys must name them up front.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from api.app import create_app
from api.settings import Settings

WAREHOUSE = "E2E-WH"
STORE_A = "E2E-STORE-A"
STORE_B = "E2E-STORE-B"

PROBLEM_JSON = "application/problem+json"
STARTUP_TIMEOUT_SECONDS = 60.0


def unique(prefix: str) -> str:
    """A fresh identifier, so tests sharing the server never share state."""
    return f"{prefix}-{uuid4().hex[:10]}"


@dataclass
class LiveServer:
    base_url: str
    app: FastAPI
    keys: dict[str, str] = field(default_factory=dict)
    _clients: list[httpx.Client] = field(default_factory=list)

    def client(self, key_name: str | None = "admin", **headers: str) -> httpx.Client:
        """An HTTP client sending the named key (None: no Authorization header)."""
        all_headers = dict(headers)
        if key_name is not None:
            all_headers["Authorization"] = f"Bearer {self.keys[key_name]}"
        client = httpx.Client(base_url=self.base_url, headers=all_headers, timeout=60.0)
        self._clients.append(client)
        return client

    def close_clients(self) -> None:
        while self._clients:
            self._clients.pop().close()


def _write_keys_file(directory: Path, keys: dict[str, str]) -> Path:
    """Limited keys of every kind; one stored as a plain secret, the rest as SHA-256 digests."""

    def digest(name: str) -> str:
        return hashlib.sha256(keys[name].encode()).hexdigest()

    path = directory / "api-keys.toml"
    path.write_text(
        f"""
[[keys]]
name = "reader"
secret = "{keys["reader"]}"
scopes = ["read"]

[[keys]]
name = "stock-clerk"
secret_sha256 = "{digest("stock-clerk")}"
scopes = ["read", "stock:write"]

[[keys]]
name = "order-sync"
secret_sha256 = "{digest("order-sync")}"
scopes = ["read", "orders:write"]

[[keys]]
name = "till"
secret_sha256 = "{digest("till")}"
scopes = ["pos:write"]

[[keys]]
name = "store-a-stock"
secret_sha256 = "{digest("store-a-stock")}"
scopes = ["stock:write"]
locations = ["{STORE_A}"]

[[keys]]
name = "store-a-orders"
secret_sha256 = "{digest("store-a-orders")}"
scopes = ["orders:write"]
locations = ["{STORE_A}"]

[[keys]]
name = "store-a-till"
secret_sha256 = "{digest("store-a-till")}"
scopes = ["pos:write"]
locations = ["{STORE_A}"]

[[keys]]
name = "store-a-admin"
secret_sha256 = "{digest("store-a-admin")}"
scopes = ["admin"]
locations = ["{STORE_A}"]
""",
        encoding="utf-8",
    )
    return path


def _serve(app: FastAPI) -> tuple[uvicorn.Server, threading.Thread, str]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="e2e-uvicorn", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the app failed to start (see the log above)")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError("the app did not start in time")
        time.sleep(0.05)
    return server, thread, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def live_server(
    _database_factory: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """The app on a fresh database, with an admin key and a keys file of limited keys."""
    database_url: str = _database_factory.create()
    names = [
        "admin",
        "reader",
        "stock-clerk",
        "order-sync",
        "till",
        "store-a-stock",
        "store-a-orders",
        "store-a-till",
        "store-a-admin",
    ]
    keys = {name: f"{name}-{secrets.token_urlsafe(24)}" for name in names}
    keys_file = _write_keys_file(tmp_path_factory.mktemp("keys"), keys)
    settings = Settings(
        database_url=database_url,
        admin_key=keys["admin"],
        api_keys_file=keys_file,
        reservation_ttl="0",
    )
    app = create_app(settings)
    server, thread, base_url = _serve(app)
    live = LiveServer(base_url=base_url, app=app, keys=keys)
    try:
        _register_fixed_locations(live)
        yield live
    finally:
        live.close_clients()
        server.should_exit = True
        thread.join(timeout=30)


def _register_fixed_locations(live: LiveServer) -> None:
    client = live.client()
    for code, body in {
        WAREHOUSE: {
            "name": "E2E warehouse",
            "kind": "warehouse",
            "channels": ["shopify"],
            "priority": 10,
        },
        STORE_A: {"name": "E2E store A", "kind": "store", "channels": ["pos"], "priority": 50},
        STORE_B: {"name": "E2E store B", "kind": "store", "channels": ["pos"], "priority": 60},
    }.items():
        response = client.put(f"/v1/locations/{code}", json=body)
        assert response.status_code == 200, response.text


@pytest.fixture
def server(live_server: LiveServer) -> Iterator[LiveServer]:
    yield live_server
    live_server.close_clients()


@pytest.fixture
def admin(server: LiveServer) -> httpx.Client:
    """A client holding the admin key (every scope, every location)."""
    return server.client("admin")


@pytest.fixture
def client_for(server: LiveServer) -> Callable[..., httpx.Client]:
    """Factory: ``client_for("till")`` is a client sending that key; ``None`` sends none."""
    return server.client


@pytest.fixture
def new_location(admin: httpx.Client) -> Callable[..., str]:
    """Factory: registers a fresh location (by default a shopify-serving warehouse)."""

    def register(
        kind: str = "warehouse", channels: tuple[str, ...] = ("shopify",), priority: int = 100
    ) -> str:
        code = unique("LOC")
        response = admin.put(
            f"/v1/locations/{code}",
            json={"name": code, "kind": kind, "channels": list(channels), "priority": priority},
        )
        assert response.status_code == 200, response.text
        return code

    return register


@pytest.fixture
def stocked(admin: httpx.Client) -> Callable[[str, str, int], None]:
    """Factory: receives ``quantity`` units of a SKU at a location."""

    def receive(sku: str, location: str, quantity: int) -> None:
        response = admin.post(
            "/v1/stock/receipts", json={"sku": sku, "location": location, "quantity": quantity}
        )
        assert response.status_code == 201, response.text

    return receive


def assert_problem(response: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    """The response is an RFC 9457 problem with this status and type slug; returns its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_JSON)
    body: dict[str, Any] = response.json()
    assert body["type"] == slug
    assert body["status"] == status
    assert body["title"]
    return body


@dataclass(frozen=True)
class FixedLocations:
    """Registered at start-up; the location-limited keys are limited to ``store_a``."""

    warehouse: str = WAREHOUSE
    store_a: str = STORE_A
    store_b: str = STORE_B


# Tests import nothing from here (pytest's importlib mode): helpers come as fixtures.
@pytest.fixture
def problem() -> Callable[[httpx.Response, int, str], dict[str, Any]]:
    return assert_problem


@pytest.fixture
def new_id() -> Callable[[str], str]:
    return unique


@pytest.fixture
def fixed(live_server: LiveServer) -> FixedLocations:
    return FixedLocations()


@pytest.fixture
def served_database_url(live_server: LiveServer) -> str:
    """The database the live server runs on (for the CLI and for checks against the log)."""
    url: str = live_server.app.state.settings.database_url
    return url


# --- Shopify webhooks ----------------------------------------------------------------------------
SHOPIFY_FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "shopify"
SHOPIFY_WEBHOOK_SECRET = f"e2e-shopify-{secrets.token_hex(16)}"


def shopify_signature(secret: str, body: bytes) -> str:
    """As Shopify signs a delivery: base64 of the HMAC-SHA256 of the exact body bytes."""
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


@pytest.fixture
def shopify_secret(live_server: LiveServer) -> str:
    """STOCKLEDGER_SHOPIFY_WEBHOOK_SECRET of the served app (read by the route per request)."""
    settings = live_server.app.state.settings
    if settings.shopify_webhook_secret != SHOPIFY_WEBHOOK_SECRET:
        settings.shopify_webhook_secret = SHOPIFY_WEBHOOK_SECRET
    return SHOPIFY_WEBHOOK_SECRET


@pytest.fixture
def shopify_fixture() -> Callable[[str], bytes]:
    """Factory: a webhook body from ../shared/fixtures/shopify, unchanged: a bare resource as
    stored, an enveloped one (``{"order": {...}}``) unwrapped."""

    def load(name: str) -> bytes:
        raw = (SHOPIFY_FIXTURES / name).read_bytes()
        document = json.loads(raw)
        if isinstance(document, dict) and len(document) == 1:
            (inner,) = document.values()
            if isinstance(inner, dict):
                return json.dumps(inner).encode()
        return raw

    return load


@pytest.fixture
def shopify_webhook(server: LiveServer, shopify_secret: str) -> Callable[..., httpx.Response]:
    """Factory: delivers a body as Shopify would (signed, with its headers), without an API key.

    ``signature=None`` signs the body with the app's secret; ``headers`` override or, with a
    None value, remove headers.
    """
    client = server.client(None)

    def deliver(
        topic: str,
        body: bytes | dict[str, Any],
        *,
        webhook_id: str | None = None,
        signature: str | None = None,
        headers: dict[str, str | None] | None = None,
    ) -> httpx.Response:
        raw = json.dumps(body).encode() if isinstance(body, dict) else body
        sent: dict[str, str | None] = {
            "Content-Type": "application/json",
            "X-Shopify-Topic": topic,
            "X-Shopify-Hmac-Sha256": signature or shopify_signature(shopify_secret, raw),
            "X-Shopify-Webhook-Id": webhook_id or str(uuid4()),
            "X-Shopify-Event-Id": str(uuid4()),
            "X-Shopify-Shop-Domain": "e2e-shop.myshopify.com",
            "X-Shopify-API-Version": "2024-10",
            "X-Shopify-Triggered-At": "2026-11-27T10:00:00.000000Z",
        }
        sent.update(headers or {})
        return client.post(
            "/v1/webhooks/shopify",
            content=raw,
            headers={name: value for name, value in sent.items() if value is not None},
        )

    return deliver


@pytest.fixture
def signature_for() -> Callable[[str, bytes], str]:
    return shopify_signature
