"""What every benchmark part shares: servers, fresh databases, percentiles, results and tables.

A part is a function ``run(ctx) -> PartResult``. It measures its workload and its baseline in the
same run, and returns checks (measured, baseline, ratio, target, pass/fail) plus details. The
runner prints each part's table with rich and writes ``<out>/<part>.json``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import secrets
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql
from rich.console import Console
from rich.table import Table

console = Console(highlight=False, width=None if sys.stdout.isatty() else 150)

LOCAL_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
BENCH_DB_PREFIX = "stockledger_bench_"
BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
VENV_BIN = REPO_DIR / ".venv" / "bin"

# Locations every part uses: a warehouse that sources first, and a store.
WAREHOUSE = "WH-1"
STORE = "STORE-1"
CHANNEL = "shopify"


def sku_name(number: int) -> str:
    """SKU names the Lua scripts can produce too (``SKU-0000042``)."""
    return f"SKU-{number:07d}"


def order_body(external_id: str, first: int, second: int) -> dict[str, Any]:
    """A ``POST /v1/orders`` body as the HTTP loads send it: one unit of each of two SKUs."""
    return {
        "channel": CHANNEL,
        "external_id": external_id,
        "lines": [
            {"line_id": "1", "sku": sku_name(first), "quantity": 1},
            {"line_id": "2", "sku": sku_name(second), "quantity": 1},
        ],
    }


# --- percentiles -----------------------------------------------------------------------------
def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0-100), linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    if len(ordered) == 1:
        return float(ordered[0])
    rank = (len(ordered) - 1) * p / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (rank - low))


def summarize(values: Sequence[float], scale: float = 1.0) -> dict[str, float]:
    """count, mean, p50, p95, p99, max (multiplied by ``scale``, e.g. 1000 for ms)."""
    if not values:
        return {"count": 0}
    return {
        "count": len(values),
        "mean": sum(values) / len(values) * scale,
        "p50": percentile(values, 50) * scale,
        "p95": percentile(values, 95) * scale,
        "p99": percentile(values, 99) * scale,
        "max": max(values) * scale,
    }


# --- results ---------------------------------------------------------------------------------
@dataclass
class Check:
    """One target: a measurement beside its baseline."""

    name: str
    measured: float
    unit: str
    target: str  # human-readable, e.g. ">= 0.5x"
    passed: bool
    baseline: float | None = None
    baseline_name: str | None = None
    ratio: float | None = None

    @classmethod
    def ratio_at_least(
        cls,
        name: str,
        measured: float,
        baseline: float,
        minimum: float,
        unit: str,
        baseline_name: str,
    ) -> Check:
        ratio = measured / baseline if baseline else math.nan
        return cls(
            name,
            measured,
            unit,
            f">= {minimum:g}x",
            bool(ratio >= minimum),
            baseline,
            baseline_name,
            ratio,
        )

    @classmethod
    def ratio_at_most(
        cls,
        name: str,
        measured: float,
        baseline: float,
        maximum: float,
        unit: str,
        baseline_name: str,
    ) -> Check:
        ratio = measured / baseline if baseline else math.nan
        return cls(
            name,
            measured,
            unit,
            f"<= {maximum:g}x",
            bool(ratio <= maximum),
            baseline,
            baseline_name,
            ratio,
        )

    @classmethod
    def at_least(cls, name: str, measured: float, minimum: float, unit: str) -> Check:
        return cls(name, measured, unit, f">= {_number(minimum)} {unit}", measured >= minimum)

    @classmethod
    def at_most(cls, name: str, measured: float, maximum: float, unit: str) -> Check:
        return cls(name, measured, unit, f"<= {_number(maximum)} {unit}", measured <= maximum)


@dataclass
class PartResult:
    part: str
    title: str
    checks: list[Check] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    profiles: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0
    quick: bool = False
    started_at: str = ""
    loadavg_before: list[float] = field(default_factory=list)
    loadavg_after: list[float] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.error is None and all(check.passed for check in self.checks)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["passed"] = self.passed
        return data


def _number(value: float | None, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if unit in ("ms",):
        return f"{value:,.1f}"
    if unit in ("MiB",):
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:,.1f}"
    return f"{value:,.2f}"


def check_row(check: Check) -> list[str]:
    unit = check.unit
    measured = f"{_number(check.measured, unit)} {unit}"
    baseline = "-"
    if check.baseline is not None:
        baseline = f"{_number(check.baseline, unit)} {unit}"
        if check.baseline_name:
            baseline += f"\n[dim]{check.baseline_name}[/dim]"
    ratio = f"{check.ratio:.2f}x" if check.ratio is not None else "-"
    verdict = "[green]PASS[/green]" if check.passed else "[bold red]FAIL[/bold red]"
    return [check.name, measured, baseline, ratio, check.target, verdict]


def print_part(result: PartResult) -> None:
    table = Table(title=f"{result.part}: {result.title}", title_justify="left", expand=False)
    for column, justify in (
        ("measure", "left"),
        ("measured", "right"),
        ("baseline", "right"),
        ("ratio", "right"),
        ("target", "left"),
        ("result", "center"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for check in result.checks:
        table.add_row(*check_row(check))
    if result.error:
        table.add_row(
            "[red]error[/red]", result.error[:200], "", "", "", "[bold red]ERROR[/bold red]"
        )
    console.print(table)
    for note in result.notes:
        console.print(f"  [dim]- {note}[/dim]")
    for name, profile in result.profiles.items():
        top = profile.get("top_self", [])[:8]
        if top:
            console.print(
                f"  [yellow]profile {name}[/yellow] "
                f"(top self time, {profile.get('samples')} samples):"
            )
            for entry in top:
                console.print(f"    {entry['percent']:5.1f}%  {entry['frame']}")
    console.print(
        f"  [dim]{result.seconds:.0f}s; load average before {result.loadavg_before}, "
        f"after {result.loadavg_after}[/dim]"
    )


def markdown_table(results: Sequence[PartResult]) -> str:
    lines = [
        "| part | measure | measured | baseline | ratio | target | result |",
        "|---|---|---|---|---|---|---|",
    ]
    for result in results:
        if result.error:
            lines.append(f"| {result.part} | error | {result.error[:80]} | | | | ERROR |")
        for check in result.checks:
            unit = check.unit
            baseline = "-"
            if check.baseline is not None:
                baseline = f"{_number(check.baseline, unit)} {unit}"
                if check.baseline_name:
                    baseline += f" ({check.baseline_name})"
            ratio = f"{check.ratio:.2f}x" if check.ratio is not None else "-"
            lines.append(
                f"| {result.part} | {check.name} | {_number(check.measured, unit)} {unit} | "
                f"{baseline} | {ratio} | {check.target} | "
                f"{'PASS' if check.passed else '**FAIL**'} |"
            )
    return "\n".join(lines)


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)


def loadavg() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["mem_total_kib"] = int(line.split()[1])
    return info


# --- the run's context -----------------------------------------------------------------------
@dataclass
class Context:
    quick: bool
    out: Path
    admin_url: str
    profile: bool = True
    keep_databases: bool = False
    nats_url_option: str | None = None
    run_id: str = field(default_factory=lambda: secrets.token_hex(3))
    admin_key: str = field(default_factory=lambda: "bench_" + secrets.token_urlsafe(32))
    workdir: Path = field(
        default_factory=lambda: Path(tempfile.mkdtemp(prefix="stockledger-bench-"))
    )
    _nats: Any = None
    _embedded_pg: Any = None
    _databases: list[str] = field(default_factory=list)

    # Durations and sizes: full and --quick.
    def seconds(self, full: float, quick: float) -> float:
        return quick if self.quick else full

    def size(self, full: int, quick: int) -> int:
        return quick if self.quick else full

    @property
    def profiles_dir(self) -> Path:
        path = self.out / "profiles"
        path.mkdir(parents=True, exist_ok=True)
        return path

    # --- PostgreSQL ------------------------------------------------------------------------
    @contextlib.contextmanager
    def database(self, label: str, *, migrated: bool = True) -> Iterator[str]:
        """A fresh database on the benchmark's server (migrated), dropped afterwards."""
        name = f"{BENCH_DB_PREFIX}{label}_{self.run_id}_{secrets.token_hex(2)}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        url = with_database(self.admin_url, name)
        self._databases.append(name)
        try:
            if migrated:
                from adapters.migrations import migrate

                migrate(url)
            yield url
        finally:
            if not self.keep_databases:
                drop_database(self.admin_url, name)
                self._databases.remove(name)

    # --- NATS --------------------------------------------------------------------------------
    def nats_url(self) -> str:
        """The benchmark's own JetStream server (embedded, so nobody else's streams are touched)."""
        if self.nats_url_option:
            return self.nats_url_option
        if self._nats is None:
            from adapters.embedded import EmbeddedNats

            self._nats = EmbeddedNats(self.workdir / "nats")
        return str(self._nats.url)

    def close(self) -> None:
        """Stops what the run started and removes its scratch folder (server logs included)."""
        if self._nats is not None:
            self._nats.stop()
            self._nats = None
        for name in list(self._databases):
            if not self.keep_databases:
                with contextlib.suppress(Exception):
                    drop_database(self.admin_url, name)
        if self._embedded_pg is not None:
            self._embedded_pg.stop()
            self._embedded_pg = None
        shutil.rmtree(self.workdir, ignore_errors=True)


def with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))


def drop_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def find_postgres(workdir: Path, explicit: str | None) -> tuple[str, Any]:
    """The admin URL: explicit, else the local server at 127.0.0.1:5432, else an embedded one."""
    if explicit:
        return explicit, None
    with contextlib.suppress(psycopg.Error):
        with psycopg.connect(LOCAL_POSTGRES_URL, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return LOCAL_POSTGRES_URL, None
    from adapters.embedded import EmbeddedPostgres

    server = EmbeddedPostgres(workdir / "postgres")
    return server.url, server


def drop_leftover_databases(admin_url: str) -> list[str]:
    """Drops benchmark databases left by an interrupted run (only ours, by prefix): those nobody
    is connected to and made over ten minutes ago, so a run going on beside this one keeps its."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT d.datname FROM pg_database d WHERE d.datname LIKE %s "
            "AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.datname = d.datname) "
            "AND (pg_stat_file('base/' || d.oid || '/PG_VERSION')).modification "
            "< now() - interval '10 minutes'",
            (BENCH_DB_PREFIX + "%",),
        ).fetchall()
    names = [row[0] for row in rows]
    for name in names:
        drop_database(admin_url, name)
    return names


# --- load helpers ----------------------------------------------------------------------------
@dataclass
class LoadResult:
    operations: int
    errors: int
    seconds: float
    latencies: list[float]
    error_samples: list[str]

    @property
    def rate(self) -> float:
        return self.operations / self.seconds if self.seconds > 0 else 0.0


def closed_loop(
    workers: int,
    seconds: float,
    operation: Callable[[int, int], None],
    *,
    warmup: float = 0.0,
) -> LoadResult:
    """``workers`` threads call ``operation(worker, n)`` back to back for ``seconds``.

    Operations started during ``warmup`` are not counted. Latencies are per counted operation.
    """
    start_barrier = threading.Barrier(workers + 1)
    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[str] = []
    counted = [0]
    window: dict[str, float] = {}

    def work(worker: int) -> None:
        local: list[float] = []
        local_errors: list[str] = []
        n = 0
        start_barrier.wait()
        begin, end = window["begin"], window["end"]
        while True:
            started = time.perf_counter()
            if started >= end:
                break
            n += 1
            try:
                operation(worker, n)
            except Exception as error:  # counted, and a few kept for the report
                if started >= begin:
                    local_errors.append(f"{type(error).__name__}: {error}"[:300])
                continue
            if started >= begin:
                local.append(time.perf_counter() - started)
        with lock:
            latencies.extend(local)
            errors.extend(local_errors)
            counted[0] += len(local)

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(workers)]
    for thread in threads:
        thread.start()
    now = time.perf_counter()
    window["begin"] = now + warmup
    window["end"] = now + warmup + seconds
    start_barrier.wait()
    for thread in threads:
        thread.join()
    # Operations in flight at the end finish after ``end``; measure to the last completion.
    elapsed = max(seconds, time.perf_counter() - window["begin"])
    return LoadResult(counted[0], len(errors), elapsed, latencies, errors[:5])


def setup_catalog(
    ledger: Any, skus: int, *, quantity: int = 100_000_000, threads: int = 16
) -> None:
    """Two locations serving the channel, and stock of ``skus`` SKUs, through the ledger itself."""
    from concurrent.futures import ThreadPoolExecutor

    ledger.register_location(
        WAREHOUSE, name="Warehouse", kind="warehouse", channels=[CHANNEL, "pos"], priority=10
    )
    ledger.register_location(
        STORE, name="Store", kind="store", channels=[CHANNEL, "pos"], priority=20
    )

    def receive(number: int) -> None:
        ledger.receive(sku_name(number), WAREHOUSE, quantity, reference="bench")
        ledger.receive(sku_name(number), STORE, 1000, reference="bench")

    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(receive, range(1, skus + 1)))


def catch_up_views(database_url: str, mapper: Any) -> dict[str, float]:
    """Brings every view to the head of the log with the product's own processor."""
    from psycopg.rows import dict_row

    from projections.base import ProjectionProcessor
    from projections.registry import all_views

    timings = {}
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as connection:
        for projection in all_views(mapper):
            began = time.perf_counter()
            processor = ProjectionProcessor(connection, mapper, projection)
            processor.ensure_tracking()
            processor.catch_up()
            timings[projection.name] = time.perf_counter() - began
    return timings


def mark_relays_caught_up(database_url: str) -> None:
    """Records the relays as having published the whole log (as a long-running service would)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        exists = conn.execute("SELECT to_regclass('relay_positions') IS NOT NULL").fetchone()
        if not exists or not exists[0]:
            return
        head = conn.execute(
            "SELECT coalesce(max(notification_id), 0) FROM ledger_events"
        ).fetchone()
        try:
            from adapters.nats import ERP_RELAY, EVENT_RELAY

            names = (ERP_RELAY, EVENT_RELAY)
        except ImportError:
            names = ("erp-postings", "event-stream")
        for name in names:
            conn.execute(
                "INSERT INTO relay_positions (name, position) VALUES (%s, %s) "
                "ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position",
                (name, head[0] if head else 0),
            )


def prepare_catalog(database_url: str, skus: int) -> dict[str, Any]:
    """Locations and stock of ``skus`` SKUs written through the service, and the views caught up
    (an API-only server runs no view workers)."""
    from adapters.postgres import ledger_env
    from domain.service import Ledger

    began = time.perf_counter()
    ledger = Ledger(env=ledger_env(database_url))
    try:
        setup_catalog(ledger, skus)
        views = catch_up_views(database_url, ledger.mapper)
    finally:
        ledger.close()
    mark_relays_caught_up(database_url)
    return {"skus": skus, "seconds": time.perf_counter() - began, "views_seconds": views}


# --- CPU accounting --------------------------------------------------------------------------
def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (a server's writer process is its child)."""
    found = [pid]
    for current in found:
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{current}/task").iterdir():
                children = (task / "children").read_text().split()
                found.extend(int(child) for child in children)
    return found


def postgres_server_pid(database_url: str) -> int | None:
    """The PostgreSQL server's main process when it runs on this machine (its backends and
    helpers are its children), else None."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        try:
            stat = Path(f"/proc/{row[0] if row else 0}/stat").read_text()
        except OSError:
            return None
    return int(stat.rsplit(")", 1)[1].split()[1])  # the backend's parent


def process_cpu_seconds(pid: int) -> float:
    """CPU seconds used by ``pid`` and its live descendants."""
    total = 0.0
    for member in process_tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / os.sysconf("SC_CLK_TCK")


def _machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine."""
    try:
        values = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except OSError:
        return 0.0, 0.0
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return float(sum(values) - idle), float(sum(values))


class CpuMeter:
    """CPU used by some processes with their children (as % of one core) and by the whole
    machine, over a window."""

    def __init__(self, **pids: int) -> None:
        self.pids = pids
        self.began = time.perf_counter()
        self.start = {name: process_cpu_seconds(pid) for name, pid in pids.items()}
        self.machine = _machine_cpu()

    def stop(self) -> dict[str, float]:
        elapsed = max(time.perf_counter() - self.began, 1e-9)
        found = {
            f"{name}_percent_of_one_core": 100.0
            * (process_cpu_seconds(pid) - self.start[name])
            / elapsed
            for name, pid in self.pids.items()
        }
        busy, total = _machine_cpu()
        if total > self.machine[1]:
            found["machine_busy_percent"] = (
                100.0 * (busy - self.machine[0]) / (total - self.machine[1])
            )
        return found
