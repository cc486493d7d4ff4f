"""Hostile-input fixtures: one real ``stockledger serve`` process, its keys and its log.

The server runs as a subprocess (as in production: uvicorn, JSON log lines on stdout, written to a
file the tests read back), on its own fresh database and its own NATS, with a keys file holding a
key for every "wrong" case: each lacking exactly one write scope, and keys limited to another
location. Tests import nothing from here (pytest's importlib mode): helpers come as fixtures.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from adapters.embedded import EmbeddedNats, free_tcp_port

STOCKLEDGER = Path(sys.executable).parent / "stockledger"
PROBLEM_JSON = "application/problem+json"
STORE_A = "SEC-STORE-A"
STORE_A2 = "SEC-STORE-A2"
STORE_B = "SEC-STORE-B"

# name -> (scopes, locations or None); each "no-*" key holds every write scope but one.
KEYS: dict[str, tuple[list[str], list[str] | None]] = {
    "reader": (["read"], None),
    "no-stock": (["read", "orders:write", "pos:write"], None),
    "no-orders": (["read", "stock:write", "pos:write"], None),
    "no-pos": (["read", "stock:write", "orders:write"], None),
    "no-admin": (["read", "stock:write", "orders:write", "pos:write"], None),
    "store-b": (["read", "stock:write", "orders:write", "pos:write"], [STORE_B]),
    "store-b-admin": (["admin"], [STORE_B]),
}


@dataclass
class Server:
    base_url: str
    database_url: str
    log_path: Path
    process: subprocess.Popen[bytes]
    keys: dict[str, str]
    webhook_secret: str
    _clients: list[httpx.Client] = field(default_factory=list)

    def client(self, key_name: str | None = "admin", **headers: str) -> httpx.Client:
        sent = dict(headers)
        if key_name is not None:
            sent["Authorization"] = f"Bearer {self.keys[key_name]}"
        client = httpx.Client(base_url=self.base_url, headers=sent, timeout=30.0)
        self._clients.append(client)
        return client

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def ledger_state(self) -> tuple[int, int, int, int]:
        """What a refused request must leave unchanged: the log's head, the stored idempotency
        keys, and the exceptions (their number and attempts)."""
        with psycopg.connect(self.database_url, autocommit=True) as connection:
            row = connection.execute(
                "SELECT (SELECT coalesce(max(notification_id), 0) FROM ledger_events), "
                "(SELECT count(*) FROM idempotency_keys), "
                "(SELECT count(*) FROM exceptions), "
                "(SELECT coalesce(sum(attempts), 0) FROM exceptions)"
            ).fetchone()
        assert row is not None
        return int(row[0]), int(row[1]), int(row[2]), int(row[3])

    def signature(self, body: bytes, secret: str | None = None) -> str:
        key = (secret or self.webhook_secret).encode()
        return base64.b64encode(hmac.new(key, body, hashlib.sha256).digest()).decode()


def _keys_file(directory: Path, secrets_by_name: dict[str, str]) -> Path:
    blocks = []
    for number, (name, (scopes, locations)) in enumerate(KEYS.items()):
        secret = secrets_by_name[name]
        stored = (
            f'secret = "{secret}"'
            if number == 0
            else f'secret_sha256 = "{hashlib.sha256(secret.encode()).hexdigest()}"'
        )
        lines = [
            "[[keys]]",
            f'name = "{name}"',
            stored,
            "scopes = [" + ", ".join(f'"{scope}"' for scope in scopes) + "]",
        ]
        if locations:
            lines.append("locations = [" + ", ".join(f'"{code}"' for code in locations) + "]")
        blocks.append("\n".join(lines))
    path = directory / "keys.toml"
    path.write_text("\n\n".join(blocks) + "\n")
    return path


@pytest.fixture(scope="session")
def security_server(
    _database_factory: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    directory = tmp_path_factory.mktemp("security")
    database_url: str = _database_factory.create()
    keys = {name: f"{name}-{secrets.token_urlsafe(24)}" for name in ["admin", *KEYS]}
    webhook_secret = f"whsec-{secrets.token_hex(20)}"
    port = free_tcp_port()
    log_path = directory / "serve.log"
    env = {key: value for key, value in os.environ.items() if not key.startswith("STOCKLEDGER")}
    with EmbeddedNats(directory / "nats") as nats_server:
        env.update(
            {
                "STOCKLEDGER_DATABASE_URL": database_url,
                "STOCKLEDGER_NATS_URL": nats_server.url,
                "STOCKLEDGER_ADMIN_KEY": keys["admin"],
                "STOCKLEDGER_API_KEYS_FILE": str(_keys_file(directory, keys)),
                "STOCKLEDGER_SHOPIFY_WEBHOOK_SECRET": webhook_secret,
                "STOCKLEDGER_DATA_DIR": str(directory / "data"),
                "STOCKLEDGER_RESERVATION_TTL": "0",
                "STOCKLEDGER_PORT": str(port),
            }
        )
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [str(STOCKLEDGER), "serve"],
                cwd=directory,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        server = Server(
            f"http://127.0.0.1:{port}", database_url, log_path, process, keys, webhook_secret
        )
        try:
            _wait_ready(server)
            _register_locations(server)
            yield server
        finally:
            for client in server._clients:
                client.close()
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(10)


def _wait_ready(server: Server) -> None:
    deadline = time.monotonic() + 60
    with httpx.Client(base_url=server.base_url, timeout=2) as client:
        while True:
            if server.process.poll() is not None:
                raise RuntimeError(f"serve exited:\n{server.log()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if client.get("/ready").status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"serve did not start:\n{server.log()[-3000:]}")
            time.sleep(0.1)


def _register_locations(server: Server) -> None:
    client = server.client()
    for code, channels in ((STORE_A, ["shopify", "pos"]), (STORE_A2, ["pos"]), (STORE_B, ["pos"])):
        response = client.put(
            f"/v1/locations/{code}",
            json={"name": code, "kind": "store", "channels": channels, "priority": 10},
        )
        assert response.status_code == 200, response.text


@pytest.fixture
def server(security_server: Server) -> Server:
    return security_server


@pytest.fixture
def admin(security_server: Server) -> httpx.Client:
    return security_server.client()


@dataclass(frozen=True)
class Places:
    store_a: str = STORE_A
    store_a2: str = STORE_A2
    store_b: str = STORE_B


@pytest.fixture
def places() -> Places:
    return Places()


def assert_problem(response: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.text[:500])
    assert response.headers["content-type"].startswith(PROBLEM_JSON), response.headers
    body: dict[str, Any] = response.json()
    assert body["type"] == slug, body
    assert body["status"] == status
    return body


@pytest.fixture
def problem() -> Callable[[httpx.Response, int, str], dict[str, Any]]:
    return assert_problem
