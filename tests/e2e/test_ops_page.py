"""``GET /ops``: the operations page, after a small realistic scenario, on its own database.

The figures must be exact (orders by status, the discrepancy, the exception), so this module runs
its own app on a fresh database rather than the shared live server. The page is checked over plain
HTTP (access rules, headers, escaping) and in a real headless Chromium (Debian's ``chromium``,
driven by Playwright, which uses that binary and downloads nothing): sign in through the form, read
what the page shows, take a screenshot (``STOCKLEDGER_OPS_SCREENSHOT`` names a file to keep it).
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import uvicorn

from adapters import exceptions as exception_store
from api.app import create_app
from api.settings import Settings
from projections.registry import VIEW_NAMES

CHROMIUM = Path("/usr/bin/chromium")
WAREHOUSE = "OPS-WH"
STORE = "OPS-STORE"
EXCEPTION_REASON = "unknown SKU GHOST-404 on line 2"
HOSTILE_REASON = "<script>alert('x')</script> bad input"
EXPECTED_STATUSES = {
    "reserved": 2,
    "committed": 1,
    "partially_fulfilled": 1,
    "fulfilled": 1,
    "cancelled": 1,
    "refunded": 0,
}


@dataclass
class OpsServer:
    base_url: str
    keys: dict[str, str]
    database_url: str
    discrepancy_sku: str
    last_position: int

    def client(self, key: str | None = None, **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.keys[key]}"} if key else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=30, **kwargs)


def _serve(app: Any) -> tuple[uvicorn.Server, threading.Thread, str]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive(), "the app failed to start"
        assert time.monotonic() < deadline, "the app did not start in time"
        time.sleep(0.05)
    return server, thread, f"http://127.0.0.1:{port}"


def _scenario(client: httpx.Client) -> tuple[str, int]:
    """Locations, receipts, six orders in five statuses, a POS sale beyond the shelf."""

    def ok(response: httpx.Response) -> httpx.Response:
        assert response.status_code in {200, 201}, response.text
        return response

    for code, kind, channels, priority in (
        (WAREHOUSE, "warehouse", ["shopify"], 10),
        (STORE, "store", ["pos"], 50),
    ):
        ok(
            client.put(
                f"/v1/locations/{code}",
                json={
                    "name": code.title(),
                    "kind": kind,
                    "channels": channels,
                    "priority": priority,
                },
            )
        )
    for sku, location, quantity in (
        ("TEE-BLK-M", WAREHOUSE, 40),
        ("MUG-WHT", WAREHOUSE, 12),
        ("CAP-RED", STORE, 3),
    ):
        ok(
            client.post(
                "/v1/stock/receipts", json={"sku": sku, "location": location, "quantity": quantity}
            )
        )

    def place(external_id: str, quantity: int = 1) -> str:
        body = {
            "channel": "shopify",
            "external_id": external_id,
            "lines": [{"line_id": "1", "sku": "TEE-BLK-M", "quantity": quantity}],
            "currency": "EUR",
            "total": "20.00",
        }
        return str(ok(client.post("/v1/orders", json=body)).json()["order_id"])

    place("#1001")
    place("#1002")
    ok(client.post(f"/v1/orders/{place('#1003')}/payment"))
    for external_id, shipped in (("#1004", 2), ("#1005", 1)):
        order_id = place(external_id, quantity=2)
        ok(client.post(f"/v1/orders/{order_id}/payment"))
        fulfillment = {
            "fulfillment_id": f"F{external_id}",
            "lines": [{"line_id": "1", "quantity": shipped}],
        }
        ok(client.post(f"/v1/orders/{order_id}/fulfillments", json=fulfillment))
    ok(client.post(f"/v1/orders/{place('#1006')}/cancellation", json={"reason": "customer"}))
    sale = ok(
        client.post(
            "/v1/pos/transactions",
            json={
                "transaction_id": "TILL-7-0042",
                "location": STORE,
                "occurred_at": datetime.now(UTC).isoformat(),
                "lines": [{"sku": "CAP-RED", "quantity": 5}],
            },
        )
    )
    return "CAP-RED", int(sale.headers["X-Ledger-Position"])


@pytest.fixture(scope="module")
def ops_server(
    _database_factory: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OpsServer]:
    database_url: str = _database_factory.create()
    keys = {name: f"{name}-{secrets.token_urlsafe(24)}" for name in ("admin", "reader", "till")}
    keys_file = tmp_path_factory.mktemp("ops-keys") / "keys.toml"
    till_digest = hashlib.sha256(keys["till"].encode()).hexdigest()
    keys_file.write_text(
        f'[[keys]]\nname = "ops-reader"\nsecret = "{keys["reader"]}"\nscopes = ["read"]\n\n'
        f'[[keys]]\nname = "till"\nsecret_sha256 = "{till_digest}"\nscopes = ["pos:write"]\n',
        encoding="utf-8",
    )
    app = create_app(
        Settings(
            database_url=database_url,
            admin_key=keys["admin"],
            api_keys_file=keys_file,
            reservation_ttl="0",
        )
    )
    server, thread, base_url = _serve(app)
    try:
        with httpx.Client(
            base_url=base_url, headers={"Authorization": f"Bearer {keys['admin']}"}, timeout=30
        ) as admin:
            sku, last_position = _scenario(admin)
        with psycopg.connect(database_url, autocommit=True) as connection:
            exception_store.record(
                connection,
                channel="shopify",
                source="orders/create",
                reason=EXCEPTION_REASON,
                payload=b'{"id": 820982911946154508}',
                external_ids={"order_id": "820982911946154508"},
                key="shopify:webhook:ops-1",
            )
            exception_store.record(
                connection,
                channel="pos",
                source="stockledger.inbound.pos",
                reason=HOSTILE_REASON,
                payload=b"{",
                key="pos:ops-2",
            )
            deadline = time.monotonic() + 30
            while True:
                row = connection.execute(
                    "SELECT min(position) FROM projection_positions WHERE name = ANY(%s)",
                    (list(VIEW_NAMES),),
                ).fetchone()
                if row and row[0] is not None and row[0] >= last_position:
                    break
                assert time.monotonic() < deadline, "the views did not catch up"
                time.sleep(0.1)
        yield OpsServer(base_url, keys, database_url, sku, last_position)
    finally:
        server.should_exit = True
        thread.join(timeout=30)


# --- over plain HTTP ---------------------------------------------------------------------------
def test_without_a_key_the_page_is_a_sign_in_form(ops_server: OpsServer) -> None:
    with ops_server.client() as anonymous:
        response = anonymous.get("/ops")
        with_key_in_url = anonymous.get("/ops", params={"key": ops_server.keys["reader"]})
    assert response.status_code == 401
    assert response.headers["content-type"].startswith("text/html")
    assert 'action="/ops/login"' in response.text and 'name="key"' in response.text
    assert "orders-by-status" not in response.text
    assert response.headers["cache-control"] == "no-store"
    assert "script-src" not in response.headers["content-security-policy"]
    assert "default-src 'none'" in response.headers["content-security-policy"]
    # A key in the URL is not a way in.
    assert with_key_in_url.status_code == 401


def test_a_read_key_in_the_header_opens_the_page(ops_server: OpsServer) -> None:
    with ops_server.client("reader") as reader, ops_server.client("till") as till:
        page = reader.get("/ops")
        refused = till.get("/ops")
    assert page.status_code == 200, page.text
    assert 'id="orders-by-status"' in page.text and ops_server.discrepancy_sku in page.text
    assert "signed in as <strong>ops-reader</strong>" in page.text
    assert refused.status_code == 403
    assert "lacks the read scope" in refused.text


def test_sign_in_sets_a_signed_cookie_never_the_key(ops_server: OpsServer) -> None:
    reader_key = ops_server.keys["reader"]
    with ops_server.client() as browser:
        wrong = browser.post("/ops/login", data={"key": "not-a-key"})
        assert wrong.status_code == 401 and "not valid" in wrong.text
        assert "set-cookie" not in wrong.headers
        no_read = browser.post("/ops/login", data={"key": ops_server.keys["till"]})
        assert no_read.status_code == 403 and "set-cookie" not in no_read.headers
        cross_site = browser.post(
            "/ops/login", data={"key": reader_key}, headers={"Origin": "http://evil.example"}
        )
        assert cross_site.status_code == 403 and "set-cookie" not in cross_site.headers

        signed_in = browser.post("/ops/login", data={"key": reader_key})
        assert signed_in.status_code == 303
        assert signed_in.headers["location"] == "/ops"
        cookie = signed_in.headers["set-cookie"]
        assert cookie.startswith("stockledger_ops=")
        assert reader_key not in cookie
        for attribute in ("HttpOnly", "SameSite=strict", "Path=/ops", "Max-Age="):
            assert attribute.lower() in cookie.lower()
        page = browser.get("/ops")
        assert page.status_code == 200 and "ops-reader" in page.text

        token = browser.cookies["stockledger_ops"]
        name, expires, signature = token.split(".")
        # An altered cookie (a longer life under the same signature) is refused.
        browser.cookies.clear()
        browser.cookies.set("stockledger_ops", f"{name}.{int(expires) + 10**6}.{signature}")
        refused = browser.get("/ops")
        assert refused.status_code == 401 and "session has ended" in refused.text

        browser.cookies.clear()
        browser.cookies.set("stockledger_ops", token)
        signed_out = browser.post("/ops/logout")
        assert signed_out.status_code == 303
        assert 'stockledger_ops=""' in signed_out.headers["set-cookie"]


def test_input_from_outside_is_escaped(ops_server: OpsServer) -> None:
    with ops_server.client("reader") as reader:
        page = reader.get("/ops").text
    assert "<script>" not in page
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; bad input" in page


# --- in a real browser -------------------------------------------------------------------------
def _chromium() -> Path:
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium)")
    return CHROMIUM


def _cell_texts(page: Any, selector: str) -> list[str]:
    return [text.strip() for text in page.locator(selector).all_inner_texts()]


def test_the_page_in_headless_chromium(ops_server: OpsServer, tmp_path: Path) -> None:
    executable = _chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(executable),
            args=["--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"],
        )
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            page = context.new_page()
            # Signing in: the form, a wrong key, then the reader's key.
            first = page.goto(f"{ops_server.base_url}/ops")
            assert first is not None and first.status == 401
            page.fill("#key", "wrong-key")
            page.click("button[type=submit]")
            assert "not valid" in page.inner_text("[role=alert]")
            sign_in = tmp_path / "ops-sign-in.png"
            page.screenshot(path=str(sign_in))
            page.fill("#key", ops_server.keys["reader"])
            with page.expect_navigation():
                page.click("button[type=submit]")
            assert page.url == f"{ops_server.base_url}/ops"
            assert "signed in as ops-reader" in page.inner_text("header")

            cookies = context.cookies()
            assert [cookie["name"] for cookie in cookies] == ["stockledger_ops"]
            assert cookies[0]["httpOnly"] and cookies[0]["sameSite"] == "Strict"
            assert ops_server.keys["reader"] not in cookies[0]["value"]

            # Orders by status: exact counts from the scenario.
            for status, count in EXPECTED_STATUSES.items():
                cells = _cell_texts(page, f"#orders-by-status tr[data-status={status}] td")
                assert cells == [status.replace("_", " "), str(count)], status
            assert _cell_texts(page, "#orders-by-status tfoot td") == ["Total", "6"]
            assert page.inner_text("#tile-open-orders .value") == "4"

            # The discrepancy: 5 sold at the store, 3 on the books.
            row = _cell_texts(page, f"#discrepancies tr[data-sku={ops_server.discrepancy_sku}] td")
            assert row[:3] == [ops_server.discrepancy_sku, STORE, "2"]
            assert page.inner_text("#tile-discrepancies .value") == "1"

            # The exceptions, with their reasons (the hostile one shown as text).
            reasons = _cell_texts(page, "#exceptions td.reason")
            assert reasons == [EXCEPTION_REASON, HOSTILE_REASON]
            assert "order_id=820982911946154508" in page.inner_text("#exceptions")
            assert page.inner_text("#tile-exceptions .value") == "2"

            # Projection lag: every view, caught up.
            for view in VIEW_NAMES:
                lag = _cell_texts(page, f"#projection-lag tr[data-view={view}] td.lag")
                assert lag == ["0"], view
            assert "caught up" in page.inner_text("#projection-lag")

            # Unpublished postings per relay (no relay runs here: all of them wait).
            pending = _cell_texts(page, "#relays tr[data-relay=erp-postings] td.pending")
            assert len(pending) == 1 and re.fullmatch(r"\d+", pending[0])
            assert int(pending[0]) > 0
            assert page.locator("#relays tr[data-relay=event-stream]").count() == 1

            # The latest events, newest first, ending at the POS sale's position.
            positions = [
                int(p) for p in _cell_texts(page, "#recent-events tr[data-position] td.position")
            ]
            assert len(positions) == 20
            assert positions == sorted(positions, reverse=True)
            assert positions[0] == ops_server.last_position
            assert "Sold" in page.inner_text("#recent-events")

            screenshot = tmp_path / "ops.png"
            page.screenshot(path=str(screenshot), full_page=True)
            assert screenshot.stat().st_size > 10_000
            keep = os.environ.get("STOCKLEDGER_OPS_SCREENSHOT")
            if keep:
                shutil.copyfile(screenshot, keep)
                shutil.copyfile(sign_in, Path(keep).with_name(f"{Path(keep).stem}-sign-in.png"))

            # Signing out ends the session.
            with page.expect_navigation():
                page.click("header button[type=submit]")
            assert page.locator("#key").count() == 1
            assert context.cookies() == []
        finally:
            browser.close()
