"""``python -m bench.instructions``: the instructions an order costs, counted by valgrind.

Timings on a shared two-core machine drift, by a factor of two within an hour at times; the
instructions a piece of work executes do not. Each scenario runs twice under ``valgrind
--tool=callgrind``: its warm-up alone, then its warm-up and N orders more. The difference over N
is what one more order costs in the process, start-up and warm-up excluded; the same build
gives the same figure to within a fraction of a percent, so a change to the write path is
measured by running this before and after it.

- ``writer``: the ledger on the in-memory store, one thread: N place-order commands made (the
  service's checks, as a caller makes them), then run through the writer's batch processing,
  8 at a time (bench p1's "a command alone"). After 200 orders of warm-up.
- ``request``: ``POST /v1/orders`` through the ASGI app in-process (no uvicorn: its HTTP parsing
  and socket writes are not counted), one request after another (concurrent ones would batch
  differently from run to run, and so count differently), each of the two runs on a fresh
  PostgreSQL database with bench p2's catalog. After 1,500 orders of warm-up (every position
  loaded once).

It prints a table and writes JSON (``--out``). Needs ``valgrind`` (Debian's package).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

from bench.common import (
    REPO_DIR,
    Context,
    console,
    find_postgres,
    order_body,
    prepare_catalog,
    setup_catalog,
    write_json,
)

ORDERS = 1000
SCENARIOS = ("writer", "request")
SKUS = 1000
REQUEST_WARMUP = 1500


# --- the scenarios, run in a child process under valgrind ----------------------------------
def writer_orders(orders: int) -> None:
    from adapters.memory import MEMORY_ENV
    from bench.p1_commands import writer_alone
    from domain.service import Ledger

    ledger = Ledger(env={**MEMORY_ENV, "STOCKLEDGER_RESERVATION_TTL": "0"})
    setup_catalog(ledger, SKUS, threads=1)
    made = [writer_alone(ledger, "warm-up", orders=200, freeze_heap=False)]
    if orders:
        made.append(writer_alone(ledger, "counted", orders=orders, freeze_heap=False))
    if any(figures["failed"] for figures in made):
        raise SystemExit("some orders were refused: the count would not be of placed orders")


def request_orders(orders: int, database_url: str) -> None:
    os.environ.update(
        {
            "STOCKLEDGER_DATABASE_URL": database_url,
            "STOCKLEDGER_ADMIN_KEY": "instructions-" + "k" * 32,
            "STOCKLEDGER_RESERVATION_TTL": "0",
        }
    )
    from starlette.types import Message

    from api.app import create_app

    app = create_app(run_workers=False)
    authorization = b"Bearer " + os.environ["STOCKLEDGER_ADMIN_KEY"].encode()
    rng = random.Random(11)

    async def post(name: str) -> int:
        a, b = rng.sample(range(1, SKUS + 1), 2)
        body = json.dumps(order_body(name, a, b), separators=(",", ":")).encode()
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/v1/orders",
            "raw_path": b"/v1/orders",
            "query_string": b"",
            "root_path": "",
            "headers": [
                (b"host", b"bench"),
                (b"content-type", b"application/json"),
                (b"authorization", authorization),
                (b"idempotency-key", name.encode()),
                (b"content-length", str(len(body)).encode()),
            ],
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 8000),
            "state": {},
        }
        delivered = False
        statuses: list[int] = []

        async def receive() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.Event().wait()  # the client stays connected
            raise AssertionError("unreachable")

        async def send(message: Message) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        await app(scope, receive, send)
        return statuses[0]

    async def place(first: int, count: int) -> None:
        for n in range(first, first + count):
            status = await post(f"instructions-{n}")
            if status != 201:
                raise SystemExit(f"an order was not placed: {status}")

    async def lifespan_and_orders() -> None:
        incoming: asyncio.Queue[Message] = asyncio.Queue()
        outgoing: asyncio.Queue[Message] = asyncio.Queue()
        scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
        running = asyncio.create_task(app(scope, incoming.get, outgoing.put))
        await incoming.put({"type": "lifespan.startup"})
        started = await outgoing.get()
        if started["type"] != "lifespan.startup.complete":
            raise SystemExit(f"the app did not start: {started}")
        await place(0, REQUEST_WARMUP)
        await place(REQUEST_WARMUP, orders)
        await incoming.put({"type": "lifespan.shutdown"})
        await outgoing.get()
        await running

    import uvloop

    uvloop.run(lifespan_and_orders())


# --- the parent: two counts a scenario ---------------------------------------------------
def count_instructions(scenario: str, orders: int, database_url: str | None) -> int:
    command = [
        "valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
        sys.executable, "-m", "bench.instructions", "--child", scenario, "--orders", str(orders),
    ]  # fmt: skip
    if database_url:
        command += ["--database-url", database_url]
    # Hash randomisation changes set and dict layouts, and so the count, from run to run.
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO_DIR, env=env)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or not found:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"{scenario} under valgrind failed: {last}")
    return int(found.group(1))


def count_on_fresh_database(ctx: Context, orders: int) -> int:
    with ctx.database("instructions") as url:
        prepare_catalog(url, SKUS)
        return count_instructions("request", orders, url)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=ORDERS)
    parser.add_argument("--only", default=",".join(SCENARIOS), help="writer,request")
    parser.add_argument("--database-url", default=None, help="admin URL of the server")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--child", choices=SCENARIOS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "writer":
        writer_orders(args.orders)
        return 0
    if args.child == "request":
        request_orders(args.orders, args.database_url)
        return 0
    scenarios = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(scenarios) - set(SCENARIOS))
    if unknown or not scenarios or args.orders < 1:
        console.print(f"--only takes {', '.join(SCENARIOS)}; --orders at least 1")
        return 2
    if shutil.which("valgrind") is None:
        console.print("valgrind is not installed (Debian: valgrind)")
        return 2
    ctx = Context(quick=False, out=args.out.resolve(), admin_url="")
    results: list[dict[str, object]] = []
    try:
        for scenario in scenarios:
            if scenario == "request":
                ctx.admin_url, ctx._embedded_pg = find_postgres(ctx.workdir, args.database_url)
                base = count_on_fresh_database(ctx, 0)
                counted = count_on_fresh_database(ctx, args.orders)
            else:
                base = count_instructions(scenario, 0, None)
                counted = count_instructions(scenario, args.orders, None)
            per_order = (counted - base) / args.orders
            results.append(
                {
                    "scenario": scenario,
                    "orders": args.orders,
                    "instructions_warm_up_only": base,
                    "instructions_with_orders": counted,
                    "instructions_per_order": per_order,
                }
            )
            console.print(
                f"  {scenario:<8} {per_order:12,.0f} instructions an order "
                f"({args.orders:,} orders; warm-up alone {base:,}, with them {counted:,})"
            )
        write_json(args.out / "instructions.json", {"scenarios": results})
    finally:
        ctx.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
