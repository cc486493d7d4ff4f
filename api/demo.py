"""``stockledger demo``: a realistic retail day, driven through the HTTP API like any client.

Against a running service (``--url``, or one answering at STOCKLEDGER_HOST:PORT), or else an
embedded one started for the run in the data folder (its data stays there for ``serve``). Ids are
unique per run, so the demo can run again on the same ledger; Shopify's own fixture order keeps
its ids and is applied once.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import random
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table

from api.settings import Settings

console = Console()

WAREHOUSE_EAST = "WH-EAST"
WAREHOUSE_WEST = "WH-WEST"
STORE = "STORE-SOHO"
FIXTURE_SKUS = ("IPOD2008GREEN", "IPOD2008RED", "IPOD2008BLACK")
APPAREL_SKUS = ("TEE-BLK-M", "TEE-WHT-L", "CAP-RED")
SKUS = FIXTURE_SKUS + APPAREL_SKUS


class DemoError(Exception):
    """The demo could not go on; the message says why, in one line."""


@dataclass
class DemoReport:
    run: str
    writes: int = 0
    orders: dict[str, str] = field(default_factory=dict)
    availability: dict[str, dict[str, int]] = field(default_factory=dict)
    postings: list[dict[str, Any]] = field(default_factory=list)
    position: int = 0

    def as_json(self) -> dict[str, Any]:
        kinds: dict[str, int] = {}
        for posting in self.postings:
            kinds[posting["kind"]] = kinds.get(posting["kind"], 0) + 1
        return {
            "run": self.run,
            "writes": self.writes,
            "position": self.position,
            "orders": self.orders,
            "availability": self.availability,
            "postings": len(self.postings),
            "postings_by_kind": kinds,
        }


@dataclass
class Service:
    url: str
    key: str
    webhook_secret: str | None
    nats_url: str | None
    embedded_in: Path | None = None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def service(settings: Settings, url: str | None, key: str | None) -> Iterator[Service]:
    """The running service to drive, or an embedded one for the length of the demo."""
    running = url or f"http://{settings.host}:{settings.port}"
    if url or _answers(running):
        if not _answers(running):
            raise DemoError(f"no stockledger answers at {running}")
        admin_key = key or settings.admin_key or _stored_admin_key(settings)
        if not admin_key:
            raise DemoError("give the admin key with --key or STOCKLEDGER_ADMIN_KEY")
        from api.stream_commands import nats_url

        yield Service(running, admin_key, settings.shopify_webhook_secret, nats_url(settings))
        return
    yield from _embedded(settings)


def _stored_admin_key(settings: Settings) -> str | None:
    path = Path(settings.data_dir) / "admin.key"
    return path.read_text().strip() if path.exists() else None


def _embedded(settings: Settings) -> Iterator[Service]:
    import uvicorn

    from api.app import create_app
    from api.runtime import provisioned

    with ExitStack() as stack:
        runtime = stack.enter_context(provisioned(settings))
        secret = runtime.settings.shopify_webhook_secret or secrets.token_hex(16)
        configured = runtime.settings.model_copy(update={"shopify_webhook_secret": secret})
        port = _free_port()
        server = uvicorn.Server(
            uvicorn.Config(create_app(configured), host="127.0.0.1", port=port, log_level="error")
        )
        thread = threading.Thread(target=server.run, name="demo-server", daemon=True)
        thread.start()
        stack.callback(thread.join, 15)
        stack.callback(setattr, server, "should_exit", True)
        deadline = time.monotonic() + 60
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise DemoError("the embedded service did not start")
            time.sleep(0.05)
        assert configured.admin_key is not None
        yield Service(
            f"http://127.0.0.1:{port}",
            configured.admin_key,
            secret,
            configured.nats_url,
            embedded_in=runtime.data_dir,
        )


class Driver:
    """The HTTP calls of the day, counting writes and remembering the last position."""

    def __init__(self, service: Service, report: DemoReport) -> None:
        self.service = service
        self.report = report
        self.client = httpx.Client(
            base_url=service.url,
            headers={"Authorization": f"Bearer {service.key}"},
            timeout=30.0,
        )

    def close(self) -> None:
        self.client.close()

    def _note(self, response: httpx.Response) -> dict[str, Any]:
        if response.status_code >= 400:
            problem = response.json() if response.content else {}
            raise DemoError(
                f"{response.request.method} {response.request.url.path} answered "
                f"{response.status_code}: {problem.get('detail') or problem.get('title')}"
            )
        self.report.writes += 1
        body: dict[str, Any] = response.json()
        position = body.get("position") or int(response.headers.get("X-Ledger-Position", 0))
        self.report.position = max(self.report.position, int(position or 0))
        return body

    def put(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._note(self.client.put(path, json=body))

    def post(self, path: str, body: dict[str, Any] | None = None, key: str | None = None) -> Any:
        headers = {"Idempotency-Key": key} if key else {}
        return self._note(self.client.post(path, json=body, headers=headers))

    def try_post(self, path: str, body: dict[str, Any]) -> dict[str, Any] | None:
        response = self.client.post(path, json=body)
        if response.status_code == 409:
            return None
        return self._note(response)

    def webhook(self, topic: str, body: bytes, webhook_id: str) -> dict[str, Any]:
        secret = self.service.webhook_secret
        assert secret is not None
        signature = base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest())
        response = httpx.post(
            f"{self.service.url}/v1/webhooks/shopify",
            content=body,
            headers={
                "Content-Type": "application/json",
                "X-Shopify-Topic": topic,
                "X-Shopify-Webhook-Id": webhook_id,
                "X-Shopify-Hmac-Sha256": signature.decode(),
                "X-Shopify-Shop-Domain": "demo.myshopify.com",
            },
            timeout=30.0,
        )
        return self._note(response)

    def get(self, path: str, **params: Any) -> Any:
        response = self.client.get(path, params=params)
        if response.status_code >= 400:
            raise DemoError(f"GET {path} answered {response.status_code}")
        return response.json()


def _fixture(name: str) -> bytes:
    """A Shopify fixture, unwrapped from its REST envelope as a webhook body is."""
    payload = json.loads(files("api").joinpath("demo_fixtures", name).read_bytes())
    if isinstance(payload, dict) and len(payload) == 1:
        (inner,) = payload.values()
        if isinstance(inner, dict):
            payload = inner
    return json.dumps(payload).encode()


def run_day(service: Service, report: DemoReport, progress: Callable[[str], None]) -> None:
    """The day: locations, receipts, Shopify orders, POS sales, a transfer, a return, a refund."""
    # The same day every time: figures on a fresh ledger are reproducible.
    rng = random.Random(20261127)
    api = Driver(service, report)
    try:
        progress("Registering two Shopify warehouses and a store")
        api.put(
            f"/v1/locations/{WAREHOUSE_EAST}",
            {
                "name": "East DC",
                "kind": "warehouse",
                "channels": ["shopify"],
                "priority": 1,
                "external_ids": {"shopify": "905684977"},
            },
        )
        api.put(
            f"/v1/locations/{WAREHOUSE_WEST}",
            {
                "name": "West DC",
                "kind": "warehouse",
                "channels": ["shopify"],
                "priority": 2,
                "external_ids": {"shopify": "905684978"},
            },
        )
        api.put(
            f"/v1/locations/{STORE}",
            {
                "name": "Fifth Avenue store",
                "kind": "store",
                "channels": ["pos"],
                "priority": 1,
                "external_ids": {"shopify": "487838322"},
            },
        )

        progress("Receiving stock")
        for sku in SKUS:
            for location, quantity in ((WAREHOUSE_EAST, 6), (WAREHOUSE_WEST, 30), (STORE, 12)):
                api.post(
                    "/v1/stock/receipts",
                    {
                        "sku": sku,
                        "location": location,
                        "quantity": quantity,
                        "reference": f"PO-{report.run}",
                    },
                    key=f"demo-{report.run}-receipt-{sku}-{location}",
                )
        api.put(
            "/v1/stock/safety-stock", {"sku": "CAP-RED", "location": WAREHOUSE_EAST, "quantity": 2}
        )

        progress("Shopify: the fixture order, its fulfillment and its refund")
        if service.webhook_secret:
            placed = api.webhook("orders/create", _fixture("order.json"), f"demo-{report.run}-o")
            if placed.get("order_id"):
                report.orders["shopify #450789469"] = placed["order_id"]
            api.webhook(
                "fulfillments/create", _fixture("fulfillment_webhook.json"), f"demo-{report.run}-f"
            )
            api.webhook("refunds/create", _fixture("refund.json"), f"demo-{report.run}-r")

        progress("Shopify: a morning of web orders")
        web_orders: list[str] = []
        for number in range(12):
            lines = [
                {"line_id": str(index + 1), "sku": sku, "quantity": rng.randint(1, 4)}
                for index, sku in enumerate(rng.sample(SKUS, rng.randint(1, 3)))
            ]
            body = {
                "channel": "shopify",
                "external_id": f"{report.run}-{1000 + number}",
                "lines": lines,
                "currency": "USD",
                "total": f"{rng.randint(20, 400)}.00",
            }
            answer = api.try_post("/v1/orders", body)
            if answer is not None:
                web_orders.append(answer["order_id"])
        for order_id in web_orders[:9]:
            api.post(f"/v1/orders/{order_id}/payment")
        for number, order_id in enumerate(web_orders[:6]):
            order = api.get(f"/v1/orders/{order_id}", min_position=report.position)
            api.post(
                f"/v1/orders/{order_id}/fulfillments",
                {
                    "fulfillment_id": f"F-{report.run}-{number}",
                    "lines": [
                        {"line_id": line["line_id"], "quantity": line["quantity"]}
                        for line in order["lines"]
                    ],
                },
            )
        if len(web_orders) > 9:
            api.post(f"/v1/orders/{web_orders[9]}/cancellation", {"reason": "customer"})

        progress("Point of sale: the store's day")
        for number in range(15):
            sku = rng.choice(SKUS)
            quantity = -1 if number == 7 else rng.randint(1, 2)
            line: dict[str, Any] = {"sku": sku, "quantity": quantity}
            if quantity < 0:
                line["disposition"] = "restock"
            api.post(
                "/v1/pos/transactions",
                {
                    "transaction_id": f"TILL1-{report.run}-{number:04d}",
                    "location": STORE,
                    "occurred_at": "2026-11-27T10:00:00+00:00",
                    "lines": [line],
                },
            )

        progress("A transfer from the West DC to the store")
        transfer = f"TR-{report.run}"
        api.post(
            "/v1/transfers",
            {
                "transfer_id": transfer,
                "from_location": WAREHOUSE_WEST,
                "to_location": STORE,
                "lines": [{"sku": "TEE-BLK-M", "quantity": 6}, {"sku": "CAP-RED", "quantity": 4}],
            },
        )
        api.post(
            f"/v1/transfers/{transfer}/receipt",
            {"lines": [{"sku": "TEE-BLK-M", "quantity": 6}, {"sku": "CAP-RED", "quantity": 3}]},
        )

        progress("A return and a refund")
        if web_orders:
            first = api.get(f"/v1/orders/{web_orders[0]}", min_position=report.position)
            line = first["lines"][0]
            api.post(
                f"/v1/orders/{web_orders[0]}/returns",
                {
                    "return_id": f"RMA-{report.run}",
                    "lines": [
                        {"line_id": line["line_id"], "quantity": 1, "disposition": "restock"}
                    ],
                },
            )
            api.post(
                f"/v1/orders/{web_orders[0]}/refunds",
                {"refund_id": f"RF-{report.run}", "amount": "19.99", "currency": "USD"},
            )
        for number, order_id in enumerate(web_orders):
            report.orders[f"shopify #{report.run}-{1000 + number}"] = order_id

        progress("Reading availability")
        for channel in ("shopify", "pos"):
            found = api.get(
                "/v1/availability", channel=channel, sku=list(SKUS), min_position=report.position
            )
            report.availability[channel] = {
                item["sku"]: item["available_to_sell"] for item in found["items"]
            }
    finally:
        api.close()


def collect_postings(
    service: Service, report: DemoReport, start_sequence: int, timeout: float = 30.0
) -> None:
    """The ERP postings this run caused, as they arrived on NATS."""
    if not service.nats_url:
        return

    async def read() -> list[dict[str, Any]]:
        from adapters.nats import connect_nats, read_stream

        client = await connect_nats(service.nats_url or "", name="stockledger-demo")
        try:
            js = client.jetstream()
            deadline = time.monotonic() + timeout
            seen: list[dict[str, Any]] = []
            quiet_since = time.monotonic()
            while time.monotonic() < deadline:
                messages = await read_stream(
                    js, "STOCKLEDGER_ERP", start_sequence=start_sequence + len(seen)
                )
                if messages:
                    seen.extend(json.loads(message.data) for message in messages)
                    quiet_since = time.monotonic()
                elif seen and time.monotonic() - quiet_since > 2.0:
                    break
                await asyncio.sleep(0.3)
            return seen
        finally:
            await client.close()

    try:
        report.postings = asyncio.run(read())
    except Exception as error:
        console.print(f"[yellow]ERP postings could not be read from NATS: {error}")


def stream_sequence(service: Service) -> int:
    """The ERP stream's last sequence before the run (0 when it does not exist yet)."""
    if not service.nats_url:
        return 0

    async def last() -> int:
        from adapters.nats import connect_nats, last_sequence

        client = await connect_nats(service.nats_url or "", name="stockledger-demo")
        try:
            return await last_sequence(client.jetstream(), "STOCKLEDGER_ERP")
        except Exception:
            return 0
        finally:
            await client.close()

    try:
        return asyncio.run(last())
    except Exception:
        return 0


def print_report(report: DemoReport, service: Service) -> None:
    table = Table("SKU", "Shopify ATS", "POS ATS", title="Available to sell, per channel")
    for sku in SKUS:
        table.add_row(
            sku,
            str(report.availability.get("shopify", {}).get(sku, 0)),
            str(report.availability.get("pos", {}).get(sku, 0)),
        )
    console.print(table)
    postings = Table("kind", "location", "lines", "reference", title="ERP postings this day caused")
    for posting in report.postings:
        lines = " ".join(f"{line['sku']}:{line['quantity']:+d}" for line in posting["lines"])
        reference = posting.get("reference") or {}
        ref = ", ".join(f"{k}={v}" for k, v in reference.items() if v and k != "order_id")
        amount = posting.get("amount")
        if amount:
            lines = f"{amount['value']} {amount['currency']}" + (f"  {lines}" if lines else "")
        postings.add_row(posting["kind"], posting.get("location") or "-", lines, ref)
    console.print(postings)
    console.print(
        f"{report.writes} writes, {len(report.orders)} orders, {len(report.postings)} ERP "
        f"postings; the ledger is at position {report.position}."
    )
    console.print("Where to look next:")
    if service.embedded_in is not None:
        console.print(
            f"  the day is kept in {service.embedded_in}: run `stockledger serve`, then open"
        )
        console.print("  operations page  http://127.0.0.1:8000/ops   API docs  /docs")
    else:
        console.print(f"  operations page  {service.url}/ops")
        console.print(f"  API docs         {service.url}/docs")
    console.print("  event stream     stockledger subscribe")
    console.print("  history          stockledger history TEE-BLK-M STORE-SOHO")


def run(settings: Settings, url: str | None, key: str | None, *, as_json: bool) -> DemoReport:
    report = DemoReport(run=secrets.token_hex(3))
    with service(settings, url, key) as target:
        start = stream_sequence(target) + 1
        steps = 8
        with Progress(
            TextColumn("{task.description}"), BarColumn(), console=console, transient=as_json
        ) as bar:
            task = bar.add_task("A retail day", total=steps)

            def advance(step: str) -> None:
                bar.update(task, description=step, advance=1)

            run_day(target, report, advance)
            bar.update(task, description="Waiting for the ERP postings", completed=steps)
            collect_postings(target, report, start)
        if as_json:
            console.print_json(json.dumps(report.as_json()))
        else:
            print_report(report, target)
    return report
