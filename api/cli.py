"""The ``stockledger`` command."""

from __future__ import annotations

import copy
import logging
import signal
from contextlib import ExitStack
from typing import Annotated, Any, NoReturn

import psycopg
import typer

from adapters.migrations import migrate as apply_migrations
from api.exception_commands import exceptions_app
from api.runtime import Runtime
from api.settings import Settings, SettingsError, load_settings
from api.view_commands import availability_command, history, projections_app

app = typer.Typer(no_args_is_help=True, add_completion=False, help="stockledger: the ledger.")


@app.callback()
def main() -> None:
    """Event-sourced inventory and order ledger for omnichannel retail."""


def _settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as error:
        _fail(str(error))


def _fail(message: str) -> NoReturn:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code=1)


def _database_url(settings: Settings) -> str:
    if not settings.database_url:
        _fail("STOCKLEDGER_DATABASE_URL is not set")
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


@app.command()
def serve(
    api_only: Annotated[
        bool, typer.Option("--api-only", help="Serve the HTTP API without background workers.")
    ] = False,
    workers_only: Annotated[
        bool,
        typer.Option(
            "--workers-only", help="Run the projections and relays; HTTP serves /health, /ready."
        ),
    ] = False,
    host: Annotated[
        str | None,
        typer.Option(help="Interface to listen on (default: STOCKLEDGER_HOST, 127.0.0.1)."),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(min=1, max=65535, help="Port to listen on (default: STOCKLEDGER_PORT, 8000)."),
    ] = None,
) -> None:
    """Run the API, the projections and the relays in one process (or one of the two)."""
    # The web stack loads only for this command, keeping the others quick to start.
    import uvicorn

    from api.app import create_app
    from api.auth import KeyRing, KeysFileError

    if api_only and workers_only:
        _fail("--api-only and --workers-only exclude each other")
    from adapters.embedded import EmbeddedServerError
    from api.runtime import provisioned

    configured = _settings()
    try:
        # A bad keys file is found before any server is started for it.
        KeyRing.load(admin_key=configured.admin_key, keys_file=configured.api_keys_file)
    except KeysFileError as error:
        _fail(str(error))
    servers = ExitStack()
    try:
        runtime = servers.enter_context(provisioned(configured))
    except (EmbeddedServerError, OSError, psycopg.Error) as error:
        _fail(f"cannot start the embedded servers: {str(error).strip().splitlines()[0]}")
    # uvicorn re-raises SIGTERM after its graceful shutdown: turn it into an exit that unwinds,
    # so the embedded servers are stopped too.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    with servers:
        settings = runtime.settings
        url = _database_url(settings)
        try:
            application = create_app(settings, serve_api=not workers_only, run_workers=not api_only)
        except KeysFileError as error:
            _fail(str(error))
        # Fail here with one line, not in the server's start-up with a traceback.
        try:
            applied = apply_migrations(url)
        except Exception as error:
            _fail(f"database not usable: {str(error).strip().splitlines()[0]}")
        if applied:
            typer.echo(f"applied {len(applied)} migrations: {', '.join(applied)}")
        listen_host, listen_port = host or settings.host, port or settings.port
        _announce(runtime, f"http://{listen_host}:{listen_port}")
        _skip_unused_log_record_fields()
        uvicorn.run(
            application,
            host=listen_host,
            port=listen_port,
            # uvloop and httptools when installed (uvicorn[standard]), asyncio and h11 otherwise.
            loop="auto",
            http="auto",
            lifespan="on",
            server_header=False,
            log_config=_log_config(),
        )


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def _announce(runtime: Runtime, url: str) -> None:
    typer.secho(f"stockledger listening on {url}  (API docs: {url}/docs, operations: {url}/ops)")
    typer.echo(f"data folder: {runtime.data_dir}")
    where = "embedded" if runtime.embedded_database else "configured"
    typer.echo(
        f"PostgreSQL: {where}; NATS: {'embedded' if runtime.embedded_nats else 'configured'}"
    )
    if runtime.admin_key and (runtime.admin_key_created or runtime.embedded_database):
        note = "created and kept" if runtime.admin_key_created else "kept"
        typer.echo(f"admin key ({note} in {runtime.data_dir / 'admin.key'}): {runtime.admin_key}")


def _skip_unused_log_record_fields() -> None:
    """Log records without the caller's file, line and function, or the thread's and process's
    names: our JSON lines show none of them, and finding the caller walks the stack on every
    line, one per request for the access log (the logging HOWTO's "Optimization" section)."""
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


def _log_config() -> dict[str, Any]:
    """uvicorn's logging as JSON lines carrying the request's correlation id (api/logs.py),
    extended to our loggers and to warnings from any library."""
    from uvicorn.config import LOGGING_CONFIG

    from api.logs import log_formatters

    config = copy.deepcopy(LOGGING_CONFIG)
    config["formatters"] = log_formatters()
    config["root"] = {"handlers": ["default"], "level": "WARNING"}
    for name in ("stockledger", "domain", "projections", "adapters"):
        config["loggers"][name] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    return config


@app.command()
def subscribe(
    subject: Annotated[
        str | None, typer.Argument(help="NATS subject (default: stockledger.events.>).")
    ] = None,
) -> None:
    """Tail the event stream: one readable line per event."""
    from api.stream_commands import subscribe_command

    subscribe_command(subject)


@app.command()
def demo(
    url: Annotated[
        str | None,
        typer.Option(help="A running stockledger (default: one at HOST:PORT, else embedded)."),
    ] = None,
    key: Annotated[
        str | None, typer.Option(help="Its admin key (default: STOCKLEDGER_ADMIN_KEY).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the end figures as JSON.")] = False,
) -> None:
    """A realistic retail day: locations, stock, Shopify orders, POS sales, a transfer, a return,
    a refund; then availability per channel and the ERP postings it caused."""
    from adapters.embedded import EmbeddedServerError
    from api.demo import DemoError
    from api.demo import run as run_demo

    try:
        run_demo(_settings(), url, key, as_json=as_json)
    except (DemoError, EmbeddedServerError, OSError, psycopg.Error) as error:
        _fail(f"demo stopped: {str(error).strip().splitlines()[0]}")


app.add_typer(projections_app, name="projections")
app.add_typer(exceptions_app, name="exceptions")
app.command("history")(history)
app.command("availability")(availability_command)

if __name__ == "__main__":
    app()
