"""Schema migrations with yoyo: plain SQL files in ``migrations/``, applied once each, in order."""

from __future__ import annotations

from importlib.resources import files

from psycopg.conninfo import conninfo_to_dict, make_conninfo
from yoyo import get_backend, read_migrations
from yoyo.migrations import MigrationList


def _yoyo_url(database_url: str) -> str:
    params = conninfo_to_dict(database_url)
    user = params.get("user") or "postgres"
    password = params.get("password")
    host = params.get("host") or "127.0.0.1"
    port = params.get("port") or "5432"
    dbname = params.get("dbname") or "postgres"
    auth = f"{user}:{password}@" if password else f"{user}@"
    if str(host).startswith("/"):
        return f"postgresql+psycopg://{auth}/{dbname}?host={host}&port={port}"
    return f"postgresql+psycopg://{auth}{host}:{port}/{dbname}"


def migrate(database_url: str) -> list[str]:
    """Applies the migrations not yet applied; returns their ids. Safe to run again."""
    make_conninfo(database_url)  # fails early, with libpq's message, on a malformed URL
    backend = get_backend(_yoyo_url(database_url))
    # Only the SQL files: the folder is also a package so that the files install with it.
    migrations = MigrationList(
        m for m in read_migrations(str(files("migrations"))) if m.path.endswith(".sql")
    )
    with backend.lock():
        pending = backend.to_apply(migrations)
        backend.apply_migrations(pending)
    return [migration.id for migration in pending]
