"""Fault-test kit: real ``stockledger serve`` processes, a mixed write load, and the checks.

Everything runs on loopback: each test gets its own database (``fresh_database_url``, or an
``EmbeddedPostgres`` it may stop) and its own NATS (``embedded_nats_factory``, which it may stop),
and starts ``stockledger serve`` as subprocesses on free ports, which it may kill with SIGKILL.

Tests import nothing from here (pytest's importlib mode): the kit comes as the ``kit`` fixture.

What the checks prove, after a fault:

- ``assert_answers_recorded``: every write answered 2xx is in the log, at the position it was
  answered with (its idempotency key is stored with that position, and the event is there);
- ``assert_views_match_a_rebuild``: the live views, caught up, equal views built afresh from the
  log, row for row;
- ``assert_streams_exactly_once``: ``STOCKLEDGER_ERP`` holds exactly the postings the log calls
  for and ``STOCKLEDGER_EVENTS`` exactly one message per event, each once (by ``Nats-Msg-Id``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import httpx
import nats
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row

from adapters.embedded import EmbeddedNats, free_tcp_port
from adapters.erp import OrderLookup, postings_for
from adapters.nats import ERP_STREAM, EVENTS_STREAM, read_stream
from adapters.postgres import ledger_env
from domain.service import Ledger
from projections.base import Recorded, rebuild
from projections.events import event_id
from projections.registry import VIEW_NAMES, all_views

PROBLEM_JSON = "application/problem+json"
STOCKLEDGER = Path(sys.executable).parent / "stockledger"
START_TIMEOUT = 60.0
WAREHOUSE = "WH-1"
STORE = "STORE-1"
VIEW_TABLES = {
    "view_availability": "position_id",
    "view_locations": "code",
    "view_orders": "order_id",
    "view_discrepancies": "position_id",
}


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return
        except (httpx.HTTPError, psycopg.Error):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.1)


def percentile(values: Sequence[float], fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


# --- serve processes -----------------------------------------------------------------------------
@dataclass
class Served:
    """One ``stockledger serve`` subprocess."""

    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path
    admin_key: str

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def client(self, key: str | None = None, timeout: float = 10.0) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key or self.admin_key}"}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def kill(self) -> None:
        """SIGKILL: no shutdown, no flush, connections cut by the kernel."""
        if self.alive():
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def terminate(self, timeout: float = 30.0) -> None:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


class ServeFactory:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: list[Served] = []

    def start(
        self,
        database_url: str,
        nats_url: str,
        admin_key: str,
        *,
        extra_env: dict[str, str] | None = None,
        wait_ready: bool = True,
    ) -> Served:
        port = free_tcp_port()
        number = len(self.started)
        log_path = self.directory / f"serve-{number}.log"
        data_dir = self.directory / f"data-{number}"
        env = {key: value for key, value in os.environ.items() if not key.startswith("STOCKLEDGER")}
        env.update(
            {
                "STOCKLEDGER_DATABASE_URL": database_url,
                "STOCKLEDGER_NATS_URL": nats_url,
                "STOCKLEDGER_ADMIN_KEY": admin_key,
                "STOCKLEDGER_DATA_DIR": str(data_dir),
                "STOCKLEDGER_RESERVATION_TTL": "0",
                "STOCKLEDGER_HOST": "127.0.0.1",
                "STOCKLEDGER_PORT": str(port),
                **(extra_env or {}),
            }
        )
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [str(STOCKLEDGER), "serve"],
                cwd=self.directory,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        served = Served(process, f"http://127.0.0.1:{port}", log_path, admin_key)
        self.started.append(served)
        deadline = time.monotonic() + START_TIMEOUT
        with httpx.Client(base_url=served.base_url, timeout=2.0) as client:
            while True:
                if not served.alive():
                    raise AssertionError(f"serve exited at start-up:\n{served.log()[-3000:]}")
                with contextlib.suppress(httpx.HTTPError):
                    path = "/ready" if wait_ready else "/health"
                    if client.get(path).status_code == 200:
                        return served
                if time.monotonic() > deadline:
                    raise AssertionError(f"serve did not start:\n{served.log()[-3000:]}")
                time.sleep(0.1)

    def stop_all(self) -> None:
        for served in self.started:
            with contextlib.suppress(Exception):
                served.terminate(15)
            with contextlib.suppress(Exception):
                served.kill()


# --- load ----------------------------------------------------------------------------------------
@dataclass
class Answer:
    """One write and what became of it (``status`` None: no answer, the connection failed)."""

    op: str
    method: str
    path: str
    body: dict[str, Any] | None
    key: str
    started: float
    seconds: float
    status: int | None = None
    content_type: str = ""
    response: Any = None
    error: str | None = None
    base_url: str = ""
    replayed: bool = False

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def ledger_key(self) -> str:
        """The idempotency key the ledger stores the write under (a POS sale: its till's id)."""
        if self.op == "pos" and self.body is not None:
            return f"pos:{self.body['transaction_id']}"
        return self.key

    @property
    def position(self) -> int | None:
        if self.ok and isinstance(self.response, dict):
            value = self.response.get("position")
            return int(value) if value is not None else None
        return None


@dataclass
class _ThreadState:
    rng: random.Random
    placed: list[dict[str, Any]] = field(default_factory=list)
    paid: list[dict[str, Any]] = field(default_factory=list)


class Load:
    """A mixed write load (receipts, orders and their lives, POS sales, adjustments) from
    ``threads`` threads, spread over ``base_urls``, each write with its own Idempotency-Key."""

    def __init__(
        self,
        base_urls: Sequence[str],
        admin_key: str,
        skus: Sequence[str],
        *,
        threads: int = 8,
        seed: int = 1,
        pause: float = 0.0,
        max_ops: int = 20_000,
        timeout: float = 10.0,
    ) -> None:
        self.base_urls = list(base_urls)
        self.admin_key = admin_key
        self.skus = list(skus)
        self.threads = threads
        self.seed = seed
        self.pause = pause
        self.max_ops = max_ops
        self.timeout = timeout
        self.answers: list[Answer] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []

    def set_targets(self, base_urls: Sequence[str]) -> None:
        self.base_urls = list(base_urls)

    def start(self) -> Load:
        for number in range(self.threads):
            worker = threading.Thread(
                target=self._run, args=(number,), name=f"load-{number}", daemon=True
            )
            self._workers.append(worker)
            worker.start()
        return self

    def stop(self) -> list[Answer]:
        self._stop.set()
        for worker in self._workers:
            worker.join(self.timeout + 5)
        return self.answers

    def run_for(self, seconds: float) -> list[Answer]:
        self.start()
        time.sleep(seconds)
        return self.stop()

    def count(self) -> int:
        with self._lock:
            return len(self.answers)

    def since(self, moment: float) -> list[Answer]:
        with self._lock:
            return [answer for answer in self.answers if answer.started >= moment]

    def _run(self, number: int) -> None:
        state = _ThreadState(random.Random(self.seed * 1000 + number))
        clients: dict[str, httpx.Client] = {}
        try:
            while not self._stop.is_set() and self.count() < self.max_ops:
                base_url = state.rng.choice(self.base_urls)
                client = clients.get(base_url)
                if client is None:
                    client = clients[base_url] = httpx.Client(
                        base_url=base_url,
                        headers={"Authorization": f"Bearer {self.admin_key}"},
                        timeout=self.timeout,
                    )
                op, method, path, body = self._next(number, state)
                answer = send(client, op, method, path, body)
                with self._lock:
                    self.answers.append(answer)
                self._follow(state, op, body, answer)
                if self.pause:
                    time.sleep(self.pause)
        finally:
            for client in clients.values():
                client.close()

    def _next(
        self, number: int, state: _ThreadState
    ) -> tuple[str, str, str, dict[str, Any] | None]:
        rng = state.rng
        roll = rng.random()
        sku = rng.choice(self.skus)
        unique = uuid4().hex[:12]
        if roll < 0.15 and state.placed:
            order = state.placed.pop(rng.randrange(len(state.placed)))
            return "pay", "POST", f"/v1/orders/{order['order_id']}/payment", None
        if roll < 0.25 and state.paid:
            order = state.paid.pop(0)
            lines = [
                {"line_id": line["line_id"], "quantity": line["quantity"]}
                for line in order["lines"]
            ]
            body = {"fulfillment_id": f"F-{unique}", "lines": lines}
            return "fulfill", "POST", f"/v1/orders/{order['order_id']}/fulfillments", body
        if roll < 0.28 and state.placed:
            order = state.placed.pop(0)
            return "cancel", "POST", f"/v1/orders/{order['order_id']}/cancellation", None
        if roll < 0.50:
            count = rng.choice([1, 1, 2])
            lines = [
                {
                    "line_id": str(n + 1),
                    "sku": rng.choice(self.skus),
                    "quantity": rng.choice([1, 2]),
                }
                for n in range(count)
            ]
            body = {"channel": "shopify", "external_id": f"L{number}-{unique}", "lines": lines}
            return "place", "POST", "/v1/orders", body
        if roll < 0.70:
            body = {"sku": sku, "location": WAREHOUSE, "quantity": rng.randint(1, 4)}
            return "receive", "POST", "/v1/stock/receipts", body
        if roll < 0.90:
            body = {
                "transaction_id": f"T-{unique}",
                "location": STORE,
                "occurred_at": "2026-11-27T10:00:00Z",
                "lines": [{"sku": sku, "quantity": 1}],
            }
            return "pos", "POST", "/v1/pos/transactions", body
        body = {"sku": sku, "location": WAREHOUSE, "delta": rng.choice([1, -1]), "reason": "cycle"}
        return "adjust", "POST", "/v1/stock/adjustments", body

    @staticmethod
    def _follow(state: _ThreadState, op: str, body: dict[str, Any] | None, answer: Answer) -> None:
        if not answer.ok or not isinstance(answer.response, dict):
            return
        if op == "place" and answer.response.get("status") == "reserved":
            state.placed.append(answer.response)
        elif op == "pay":
            state.paid.append(answer.response)


def send(
    client: httpx.Client,
    op: str,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    key: str | None = None,
) -> Answer:
    key = key or f"{op}-{uuid4().hex}"
    started = time.monotonic()
    answer = Answer(op, method, path, body, key, started, 0.0, base_url=str(client.base_url))
    try:
        response = client.request(method, path, json=body, headers={"Idempotency-Key": key})
    except httpx.HTTPError as error:
        answer.error = f"{type(error).__name__}: {error}"
    else:
        answer.status = response.status_code
        answer.content_type = response.headers.get("content-type", "")
        answer.replayed = response.headers.get("idempotent-replayed") == "true"
        try:
            answer.response = response.json()
        except ValueError:
            answer.response = response.text
    answer.seconds = time.monotonic() - started
    return answer


def summary(answers: Sequence[Answer]) -> dict[str, Any]:
    statuses = Counter(str(answer.status) if answer.status else "no answer" for answer in answers)
    seconds = [answer.seconds for answer in answers]
    return {
        "writes": len(answers),
        "statuses": dict(sorted(statuses.items())),
        "p50": round(percentile(seconds, 0.5), 3),
        "p99": round(percentile(seconds, 0.99), 3),
        "max": round(max(seconds, default=0.0), 3),
        "mean": round(statistics.fmean(seconds), 3) if seconds else 0.0,
    }


# --- checks --------------------------------------------------------------------------------------
def setup_stock(client: httpx.Client, skus: Sequence[str], quantity: int) -> None:
    """A Shopify warehouse and a POS store, and ``quantity`` of each SKU at the warehouse."""
    for code, body in {
        WAREHOUSE: {
            "name": "Warehouse",
            "kind": "warehouse",
            "channels": ["shopify"],
            "priority": 1,
        },
        STORE: {"name": "Store", "kind": "store", "channels": ["pos"], "priority": 5},
    }.items():
        response = client.put(f"/v1/locations/{code}", json=body)
        assert response.status_code == 200, response.text
    for sku in skus:
        response = client.post(
            "/v1/stock/receipts", json={"sku": sku, "location": WAREHOUSE, "quantity": quantity}
        )
        assert response.status_code == 201, response.text


def head_position(database_url: str) -> int:
    with psycopg.connect(database_url, autocommit=True) as connection:
        row = connection.execute("SELECT coalesce(max(notification_id), 0) FROM ledger_events")
        return int(row.fetchone()[0])  # type: ignore[index]


def positions(database_url: str) -> dict[str, int]:
    with psycopg.connect(database_url, autocommit=True) as connection:
        views = connection.execute("SELECT name, position FROM projection_positions").fetchall()
        relays = connection.execute("SELECT name, position FROM relay_positions").fetchall()
    return {**{name: int(pos) for name, pos in views}, **{f"relay:{n}": int(p) for n, p in relays}}


def caught_up(database_url: str) -> bool:
    head = head_position(database_url)
    reached = positions(database_url)
    wanted = [*VIEW_NAMES, "relay:erp-postings", "relay:event-stream"]
    return all(reached.get(name, -1) >= head for name in wanted)


def assert_answers_recorded(database_url: str, answers: Sequence[Answer]) -> dict[str, int]:
    """Every 2xx write is in the log at the position it was answered with."""
    ok = [answer for answer in answers if answer.ok]
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as connection:
        stored = {
            row["key"]: row["position"]
            for row in connection.execute(
                "SELECT key, position FROM idempotency_keys WHERE key = ANY(%s)",
                ([answer.ledger_key for answer in ok],),
            ).fetchall()
        }
        present = {
            int(row["notification_id"])
            for row in connection.execute(
                "SELECT notification_id FROM ledger_events WHERE notification_id = ANY(%s)",
                ([answer.position for answer in ok if answer.position is not None],),
            ).fetchall()
        }
    missing = [answer.ledger_key for answer in ok if answer.ledger_key not in stored]
    assert not missing, f"{len(missing)} writes answered 2xx are not in the log: {missing[:5]}"
    moved = [
        (answer.ledger_key, answer.position, stored[answer.ledger_key])
        for answer in ok
        if stored[answer.ledger_key] is not None and stored[answer.ledger_key] != answer.position
    ]
    assert not moved, f"answered at another position than recorded: {moved[:5]}"
    absent = [
        answer.ledger_key
        for answer in ok
        if stored[answer.ledger_key] is not None and answer.position not in present
    ]
    assert not absent, f"events of answered writes are not in the log: {absent[:5]}"
    return {"answered_2xx": len(ok), "found_in_log": len(ok) - len(missing)}


def _rows(database_url: str) -> dict[str, list[dict[str, Any]]]:
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as connection:
        return {
            table: connection.execute(
                f"SELECT * FROM {table} ORDER BY {key}"  # type: ignore[arg-type]
            ).fetchall()
            for table, key in VIEW_TABLES.items()
        }


def _mapper(database_url: str) -> Any:
    ledger = Ledger(env=ledger_env(database_url))
    mapper = ledger.mapper
    ledger.close()
    return mapper


def assert_views_match_a_rebuild(database_url: str) -> dict[str, int]:
    """The live views (caught up; no serve process running) equal views rebuilt from the log."""
    live = _rows(database_url)
    mapper = _mapper(database_url)
    for view in all_views(mapper):
        rebuild(database_url, mapper, view, batch_size=2000)
    rebuilt = _rows(database_url)
    for table in VIEW_TABLES:
        assert rebuilt[table] == live[table], f"{table} differs from a rebuild"
    return {table: len(rows) for table, rows in live.items()}


async def _expected_messages(database_url: str, mapper: Any) -> tuple[set[str], set[str]]:
    events: list[Recorded] = []
    async with await psycopg.AsyncConnection.connect(
        database_url, autocommit=True, row_factory=dict_row
    ) as connection:
        cursor = await connection.execute(
            "SELECT notification_id, originator_id, originator_version, topic, state "
            "FROM ledger_events ORDER BY notification_id"
        )
        from eventsourcing.persistence import StoredEvent

        for row in await cursor.fetchall():
            event = mapper.to_domain_event(
                StoredEvent(
                    originator_id=row["originator_id"],
                    originator_version=row["originator_version"],
                    topic=row["topic"],
                    state=bytes(row["state"]),
                )
            )
            events.append(Recorded(int(row["notification_id"]), event))
        postings = await postings_for(
            connection, OrderLookup(mapper), [recorded.event for recorded in events]
        )
    event_ids = {
        str(event_id(UUID(str(r.event.originator_id)), r.event.originator_version)) for r in events
    }
    posting_ids = {posting.posting_id for posting in postings if posting is not None}
    return event_ids, posting_ids


async def _stored_ids(nats_url: str, stream: str) -> list[str]:
    client = await nats.connect(nats_url, connect_timeout=5, max_reconnect_attempts=1)
    try:
        js = client.jetstream()
        info = await js.stream_info(stream)
        messages = await read_stream(js, stream, limit=1_000_000, timeout=60)
        assert len(messages) == info.state.messages
        return [str(message.headers["Nats-Msg-Id"]) for message in messages]  # type: ignore[index]
    finally:
        await client.close()


def assert_streams_exactly_once(database_url: str, nats_url: str) -> dict[str, int]:
    """Each posting and each event the log calls for is in its stream once, none missing."""
    mapper = _mapper(database_url)
    expected_events, expected_postings = asyncio.run(_expected_messages(database_url, mapper))
    figures: dict[str, int] = {}
    for stream, expected in ((ERP_STREAM, expected_postings), (EVENTS_STREAM, expected_events)):
        stored = asyncio.run(_stored_ids(nats_url, stream))
        copies = Counter(stored)
        twice = [msg_id for msg_id, count in copies.items() if count > 1]
        assert not twice, f"{stream}: {len(twice)} messages stored more than once"
        missing = expected - set(stored)
        assert not missing, f"{stream}: {len(missing)} messages missing"
        extra = set(stored) - expected
        assert not extra, f"{stream}: {len(extra)} messages no event calls for"
        figures[stream] = len(stored)
    return figures


TCP_ESTABLISHED = "01"  # the state column of /proc/net/tcp


def advisory_holders(database_url: str) -> dict[int, int]:
    """Advisory lock key (as PostgreSQL shows it) -> the backend pid holding it."""
    with psycopg.connect(database_url, autocommit=True) as connection:
        rows = connection.execute(
            "SELECT (l.classid::bigint << 32) | l.objid::bigint AS key, l.pid FROM pg_locks l "
            "JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND a.datname = current_database()"
        ).fetchall()
    return {int(key): int(pid) for key, pid in rows}


def backend_owner(
    database_url: str, backends: Sequence[int], processes: Sequence[Served]
) -> dict[int, int]:
    """Backend pid -> the serve process (its pid) whose socket it serves, via /proc."""
    with psycopg.connect(database_url, autocommit=True) as connection:
        ports = dict(
            connection.execute(
                "SELECT pid, client_port FROM pg_stat_activity WHERE pid = ANY(%s)",
                (list(backends),),
            ).fetchall()
        )
    # A local port number is not unique: the kernel reuses it for other destinations, and a
    # closed connection waiting out TIME_WAIT (inode 0) keeps it too. Only established
    # connections to this PostgreSQL's port identify a backend's client.
    server_port = int(conninfo_to_dict(database_url).get("port") or 5432)
    inode_by_port: dict[int, str] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                remote_port = int(fields[2].rsplit(":", 1)[1], 16)
                if fields[3] != TCP_ESTABLISHED or remote_port != server_port:
                    continue
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                inode_by_port[local_port] = fields[9]
    owner_by_inode: dict[str, int] = {}
    for served in processes:
        fd_dir = Path(f"/proc/{served.pid}/fd")
        with contextlib.suppress(OSError):
            for fd in fd_dir.iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:["):
                        owner_by_inode[target[8:-1]] = served.pid
    owners: dict[int, int] = {}
    for backend, port in ports.items():
        inode = inode_by_port.get(int(port)) if port else None
        if inode and inode in owner_by_inode:
            owners[int(backend)] = owner_by_inode[inode]
    return owners


class Kit:
    """What the fault tests share (see the module docstring)."""

    wait_until = staticmethod(wait_until)
    percentile = staticmethod(percentile)
    send = staticmethod(send)
    summary = staticmethod(summary)
    setup_stock = staticmethod(setup_stock)
    head_position = staticmethod(head_position)
    positions = staticmethod(positions)
    caught_up = staticmethod(caught_up)
    assert_answers_recorded = staticmethod(assert_answers_recorded)
    assert_views_match_a_rebuild = staticmethod(assert_views_match_a_rebuild)
    assert_streams_exactly_once = staticmethod(assert_streams_exactly_once)
    advisory_holders = staticmethod(advisory_holders)
    backend_owner = staticmethod(backend_owner)
    problem_json = PROBLEM_JSON
    warehouse = WAREHOUSE
    store = STORE

    def __init__(self, serve: ServeFactory, admin_key: str, directory: Path) -> None:
        self.serve = serve
        self.admin_key = admin_key
        self.directory = directory

    def load(self, base_urls: Sequence[str], skus: Sequence[str], **options: Any) -> Load:
        return Load(base_urls, self.admin_key, skus, **options)


@pytest.fixture
def kit(tmp_path: Path) -> Iterator[Kit]:
    factory = ServeFactory(tmp_path)
    try:
        yield Kit(serve=factory, admin_key=f"faults-{uuid4().hex}", directory=tmp_path)
    finally:
        factory.stop_all()


@pytest.fixture
def private_nats(embedded_nats_factory: Callable[..., EmbeddedNats]) -> EmbeddedNats:
    """A NATS of this test's own (so it may be stopped, and its streams hold only this test's)."""
    return embedded_nats_factory()


def report(title: str, figures: dict[str, Any]) -> None:
    """Prints a test's measured figures (shown with ``pytest -s``; also in the junit properties)."""
    print(f"\n[figures] {title}: {json.dumps(figures, sort_keys=True)}")


@pytest.fixture
def figures(record_property: Callable[[str, Any], None]) -> Callable[[str, dict[str, Any]], None]:
    def record(title: str, values: dict[str, Any]) -> None:
        report(title, values)
        record_property(title, json.dumps(values, sort_keys=True))

    return record
