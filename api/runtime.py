"""The servers a process runs against: the configured ones, or embedded ones in the data folder.

With no database URL, an embedded PostgreSQL (the ``pgserver`` wheel's binaries) runs in
``<data dir>/postgres``; with no NATS URL, an embedded ``nats-server`` with JetStream runs in
``<data dir>/nats``. They are real servers, stopped when the process is done with them, and a
second start reuses their data. With no key configured, an admin key is created once and kept in
``<data dir>/admin.key``.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from adapters.embedded import EmbeddedNats, EmbeddedPostgres
from api.settings import Settings

DATABASE_NAME = "stockledger"
ADMIN_KEY_FILE = "admin.key"


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    data_dir: Path
    embedded_database: bool
    embedded_nats: bool
    admin_key: str | None
    admin_key_created: bool


def _ensure_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as connection:
        exists = connection.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
        ).fetchone()
        if not exists:
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def _admin_key(path: Path) -> tuple[str, bool]:
    if path.exists():
        key = path.read_text().strip()
        if key:
            return key, False
    key = "sl_" + secrets.token_urlsafe(32)
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(key + "\n")
    return key, True


@contextmanager
def provisioned(settings: Settings) -> Iterator[Runtime]:
    """Settings completed with embedded servers where none are configured; stops what it starts."""
    data_dir = settings.data_dir.expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        database_url = settings.database_url
        if not database_url:
            postgres = EmbeddedPostgres.in_data_dir(data_dir)
            stack.callback(postgres.stop)
            _ensure_database(postgres.url, DATABASE_NAME)
            database_url = postgres.url_for(DATABASE_NAME)
        nats_url = settings.nats_url
        if not nats_url:
            nats = EmbeddedNats.in_data_dir(data_dir)
            stack.callback(nats.stop)
            nats_url = nats.url
        admin_key, created = settings.admin_key, False
        if not admin_key and not settings.api_keys_file:
            admin_key, created = _admin_key(data_dir / ADMIN_KEY_FILE)
        completed = settings.model_copy(
            update={"database_url": database_url, "nats_url": nats_url, "admin_key": admin_key}
        )
        yield Runtime(
            settings=completed,
            data_dir=data_dir,
            embedded_database=not settings.database_url,
            embedded_nats=not settings.nats_url,
            admin_key=admin_key,
            admin_key_created=created,
        )
