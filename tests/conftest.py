"""Session-wide server fixtures shared by integration and e2e tests.

PostgreSQL and NATS come from, in order: ``STOCKLEDGER_TEST_DATABASE_URL`` /
``STOCKLEDGER_TEST_NATS_URL``; the usual local servers (127.0.0.1:5432, 127.0.0.1:4222) if they
answer; otherwise embedded servers started in a temp dir for the session.
``STOCKLEDGER_TEST_FORCE_EMBEDDED=1`` skips the first two and always uses embedded servers
(isolated from anything else running on the machine).

Nothing domain-specific lives here; per-suite conftests under tests/unit, tests/integration and
tests/e2e build on these fixtures.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import nats
import psycopg
import pytest
from nats.js.errors import NotFoundError
from psycopg import sql

from adapters.embedded import EmbeddedNats, EmbeddedPostgres, is_reachable

LOCAL_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
LOCAL_NATS_URL = "nats://127.0.0.1:4222"
# Streams the product creates; a shared server keeps them between runs, so each run starts clean.
STREAMS = ("STOCKLEDGER_ERP", "STOCKLEDGER_EVENTS")
TEST_DB_PREFIX = "stockledger_test_"


def _force_embedded() -> bool:
    return os.environ.get("STOCKLEDGER_TEST_FORCE_EMBEDDED", "").strip().lower() in {
        "1",
        "true",
        "yes",
        "on",
    }


def _with_database(url: str, database: str) -> str:
    """Same server URL, another database (keeps query params such as ``?host=``)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))


def _postgres_connectable(url: str) -> bool:
    parts = urlsplit(url)
    if parts.hostname and not is_reachable(parts.hostname, parts.port or 5432, timeout=0.5):
        return False
    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


# --------------------------------------------------------------------------- PostgreSQL


@pytest.fixture(scope="session")
def postgres_admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a server's admin database (``postgres``) where test databases get created."""
    if not _force_embedded():
        env_url = os.environ.get("STOCKLEDGER_TEST_DATABASE_URL")
        if env_url:
            yield env_url
            return
        if _postgres_connectable(LOCAL_POSTGRES_URL):
            yield LOCAL_POSTGRES_URL
            return
    pgdata = tmp_path_factory.mktemp("embedded-postgres") / "postgres"
    with EmbeddedPostgres(pgdata) as server:
        yield server.url


class _DatabaseFactory:
    """Creates ``stockledger_test_<hex>`` databases and drops them all at the end."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.created: list[str] = []

    def create(self) -> str:
        name = TEST_DB_PREFIX + secrets.token_hex(6)
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        self.created.append(name)
        return _with_database(self.admin_url, name)

    def drop_all(self) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            for name in reversed(self.created):
                # Pools or a killed app may still hold connections; they must not block the drop.
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = %s AND pid <> pg_backend_pid()",
                    (name,),
                )
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )
        self.created.clear()


@pytest.fixture(scope="session")
def _database_factory(postgres_admin_url: str) -> Iterator[_DatabaseFactory]:
    factory = _DatabaseFactory(postgres_admin_url)
    yield factory
    factory.drop_all()


@pytest.fixture(scope="session")
def database_url(_database_factory: _DatabaseFactory) -> str:
    """A fresh, empty database for the whole session (dropped at the end)."""
    return _database_factory.create()


@pytest.fixture
def fresh_database_url(_database_factory: _DatabaseFactory) -> Callable[[], str]:
    """Factory: each call creates another empty database and returns its URL.

    For tests that must not see each other's data; all are dropped at session end.
    """
    return _database_factory.create


# --------------------------------------------------------------------------- NATS


async def _reset_streams(url: str, streams: tuple[str, ...]) -> None:
    nc = await nats.connect(url, connect_timeout=3, max_reconnect_attempts=0)
    try:
        js = nc.jetstream()
        await js.account_info()  # fails fast if the server has no JetStream
        for name in streams:
            with contextlib.suppress(NotFoundError):
                await js.delete_stream(name)
    finally:
        await nc.close()


def _shared_nats_usable(url: str) -> bool:
    """Reachable, with JetStream; resets our streams as a side effect."""
    parts = urlsplit(url)
    if parts.hostname and not is_reachable(parts.hostname, parts.port or 4222, timeout=0.5):
        return False
    try:
        asyncio.run(_reset_streams(url, STREAMS))
    except Exception:
        return False
    return True


@pytest.fixture(scope="session")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a JetStream-enabled NATS server whose product streams start empty.

    Note: on a shared server the reset deletes the streams for everyone, so two test sessions
    against the same server interfere; use STOCKLEDGER_TEST_FORCE_EMBEDDED=1 to isolate.
    """
    if not _force_embedded():
        env_url = os.environ.get("STOCKLEDGER_TEST_NATS_URL")
        if env_url:
            asyncio.run(_reset_streams(env_url, STREAMS))  # explicit config: errors surface
            yield env_url
            return
        if _shared_nats_usable(LOCAL_NATS_URL):
            yield LOCAL_NATS_URL
            return
    store = tmp_path_factory.mktemp("embedded-nats") / "nats"
    with EmbeddedNats(store) as server:
        yield server.url


@pytest.fixture
def embedded_nats_factory(tmp_path: Path) -> Iterator[Callable[..., EmbeddedNats]]:
    """Factory: ``start(port=None)`` runs a private ``EmbeddedNats`` (stopped at teardown).

    For tests that stop, restart or kill NATS; ``server.stop()`` / ``server.start()`` restarts
    on the same port with the same store.
    """
    servers: list[EmbeddedNats] = []

    def start(port: int | None = None) -> EmbeddedNats:
        server = EmbeddedNats(tmp_path / f"nats-{len(servers)}", port=port)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
