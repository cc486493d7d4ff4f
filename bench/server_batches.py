"""``python -m bench.server_batches``: the server's own time for the writer's transaction.

PostgreSQL's ``pgbench`` (C, one connection) sends the transaction the ledger's writer sends for a
batch (begin, the table lock, notify, the events' and keys' insert, commit: one message) with 1,
4, 8 and 16 orders of four events and one key each, and, as the baseline, a one-row ``INSERT``
commit. Variants of the 4-order batch leave out the lock, the notify or the keys. It prints a
table and writes JSON (``--out``). Part 1 explains its misses with it: whatever the Python side
costs, one writer cannot record a batch faster than this.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict

from bench.common import Context, console, find_postgres, write_json

# A reservation's state is about this size once encoded.
STATE = "E'\\\\x7b22" + "61" * 300 + "227d'"
SECONDS = 8


def batch_statement(
    orders: int, *, lock: bool = True, notify: bool = True, keys: bool = True
) -> str:
    """The writer's one-message transaction (``adapters.postgres``), for ``orders`` orders; the
    ids are drawn by the server, so every run inserts new rows."""
    events = ",".join(
        f"(gen_random_uuid(),{version},'domain.order:Order.Placed',{STATE})"
        for _ in range(orders)
        for version in range(1, 5)
    )
    parts = ["BEGIN"]
    if lock:
        parts += ["SET LOCAL lock_timeout = '10s'", "LOCK TABLE ledger_events IN EXCLUSIVE MODE"]
    if notify:
        parts.append("NOTIFY ledger_events")
    insert = (
        "WITH ev AS (INSERT INTO ledger_events (originator_id, originator_version, topic, state) "
        f"VALUES {events} RETURNING notification_id, originator_id, originator_version)"
    )
    if keys:
        rows = ",".join(
            "(md5(random()::text || clock_timestamp()::text),'fingerprint','{\"status\":\"ok\"}',"
            "NULL::uuid,NULL::bigint)"
            for _ in range(orders)
        )
        insert += (
            ", ks AS (INSERT INTO idempotency_keys (key, fingerprint, response, position) "
            "SELECT k.key, k.fingerprint, k.response, ev.notification_id FROM (VALUES "
            f"{rows}) AS k(key, fingerprint, response, last_id, last_version) LEFT JOIN ev "
            "ON ev.originator_id = k.last_id AND ev.originator_version = k.last_version)"
        )
    parts += [insert + " SELECT notification_id FROM ev ORDER BY notification_id", "COMMIT"]
    # pgbench sends statements joined by an escaped semicolon as one message, as the writer does.
    return " \\; ".join(parts) + "\n"


ONE_ROW = (
    "INSERT INTO idempotency_keys (key, fingerprint, response) "
    "VALUES (md5(random()::text || clock_timestamp()::text), 'f', 'x');\n"
)


def run_pgbench(url: str, script: Path, seconds: int) -> float:
    """Mean latency in ms of ``script`` on one connection."""
    params = conninfo_to_dict(url)
    command = [
        "pgbench", "-n", "-c", "1", "-T", str(seconds), "-f", str(script),
        "-h", str(params.get("host") or "127.0.0.1"), "-p", str(params.get("port") or 5432),
        "-U", str(params.get("user") or "postgres"), str(params["dbname"]),
    ]  # fmt: skip
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    found = re.search(r"latency average = ([0-9.]+) ms", output)
    if not found:
        raise RuntimeError(f"pgbench printed no latency: {output[-300:]}")
    return float(found.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=None, help="admin URL of the server")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--seconds", type=int, default=SECONDS)
    args = parser.parse_args()
    if shutil.which("pgbench") is None:
        console.print("pgbench is not installed (Debian: postgresql-client)")
        return 2
    ctx = Context(quick=False, out=args.out.resolve(), admin_url="")
    try:
        ctx.admin_url, ctx._embedded_pg = find_postgres(ctx.workdir, args.database_url)
        with ctx.database("server_batches") as url:
            cases: dict[str, tuple[str, int]] = {"one-row INSERT commit (baseline)": (ONE_ROW, 0)}
            for orders in (1, 4, 8, 16):
                cases[f"batch of {orders}"] = (batch_statement(orders), orders)
            cases["batch of 4, no lock"] = (batch_statement(4, lock=False), 4)
            cases["batch of 4, no notify"] = (batch_statement(4, notify=False), 4)
            cases["batch of 4, no keys"] = (batch_statement(4, keys=False), 4)
            results: list[dict[str, object]] = []
            for label, (text, orders) in cases.items():
                script = ctx.workdir / f"{len(results)}.sql"
                script.write_text(text)
                latency = run_pgbench(url, script, args.seconds)
                rate = 1000 / latency * (orders or 1)
                results.append({"case": label, "orders": orders, "ms": latency, "per_second": rate})
                console.print(
                    f"  {label:<34} {latency:6.3f} ms a transaction, "
                    f"{rate:8,.0f} {'orders' if orders else 'commits'}/s"
                )
        write_json(args.out / "server_batches.json", {"seconds": args.seconds, "cases": results})
    finally:
        ctx.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
