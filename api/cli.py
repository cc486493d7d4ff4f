"""The ``stockledger`` command."""

from __future__ import annotations

import typer
from pydantic import ValidationError

from adapters.migrations import migrate as apply_migrations
from api.settings import Settings

app = typer.Typer(no_args_is_help=True, add_completion=False, help="stockledger: the ledger.")


@app.callback()
def main() -> None:
    """Event-sourced inventory and order ledger for omnichannel retail."""


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as error:
        first = error.errors()[0]
        name = "STOCKLEDGER_" + str(first["loc"][0]).upper()
        _fail(f"{name}: {first['msg']}")


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code=1)


def _database_url(settings: Settings) -> str:
    if not settings.database_url:
        _fail("STOCKLEDGER_DATABASE_URL is not set")
    assert settings.database_url is not None
    return settings.database_url


@app.command()
def migrate() -> None:
    """Create or upgrade the database schema (safe to run again)."""
    url = _database_url(_settings())
    try:
        applied = apply_migrations(url)
    except Exception as error:  # any driver or SQL error becomes one readable line
        _fail(f"migration failed: {str(error).strip().splitlines()[0]}")
    if applied:
        typer.echo(f"applied {len(applied)} migrations: {', '.join(applied)}")
    else:
        typer.echo("schema is up to date")


if __name__ == "__main__":
    app()
