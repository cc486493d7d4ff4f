"""CLI commands for the exceptions store: ``stockledger exceptions list|retry``."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Annotated, Any, Literal, NoReturn

import psycopg
import typer
from psycopg_pool import AsyncConnectionPool
from rich.console import Console
from rich.table import Table

from adapters import exceptions as store
from adapters.exceptions import ExceptionRecord
from adapters.postgres import ledger_env
from domain.errors import LedgerUnavailable
from domain.service import Ledger

if TYPE_CHECKING:
    from api.inbound import Applied

exceptions_app = typer.Typer(
    no_args_is_help=True, help="Inputs from the channels that could not be applied."
)
console = Console()

POOL_OPEN_TIMEOUT_SECONDS = 10.0
REASON_WIDTH = 70


def _fail(message: str) -> NoReturn:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code=1)


def _database_url() -> str:
    from api.settings import SettingsError, load_settings

    try:
        url = load_settings().database_url
    except SettingsError as error:
        _fail(str(error))
    if not url:
        _fail("STOCKLEDGER_DATABASE_URL is not set")
    return url


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _ids(record: ExceptionRecord) -> str:
    return ", ".join(f"{name}={value}" for name, value in record.external_ids.items())


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


@exceptions_app.command("list")
def list_command(
    status: Annotated[
        str, typer.Option("--status", help="open, resolved or all.", case_sensitive=False)
    ] = "open",
    channel: Annotated[
        str | None, typer.Option("--channel", help="Only this channel (shopify, pos...).")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=store.MAX_PAGE, help="At most this many.")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """The exceptions, oldest first, with their business context."""
    wanted = status.lower()
    if wanted not in ("open", "resolved", "all"):
        _fail(f"--status must be open, resolved or all, not {status!r}")
    filter_status: Literal["open", "resolved"] | None = (
        None if wanted == "all" else ("open" if wanted == "open" else "resolved")
    )
    url = _database_url()
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=5) as connection:
            records = store.list_exceptions(
                connection, status=filter_status, channel=channel, limit=limit
            )
    except psycopg.Error as error:
        _fail(f"database: {_first_line(error)}")
    if as_json:
        for record in records:
            typer.echo(
                json.dumps(
                    {
                        **record.model_dump(exclude={"payload"}, mode="json"),
                        "message": record.payload_text,
                    }
                )
            )
        return
    if not records:
        typer.echo(f"no {'' if wanted == 'all' else wanted + ' '}exceptions")
        return
    table = Table("id", "channel", "source", "status", "tries", "external ids", "reason", "updated")
    for record in records:
        table.add_row(
            str(record.id),
            record.channel,
            record.source,
            record.status,
            str(record.attempts),
            _ids(record),
            _short(record.reason, REASON_WIDTH),
            record.updated_at.isoformat(timespec="seconds"),
        )
    console.print(table)


@exceptions_app.command("retry")
def retry_command(
    exception_id: Annotated[int, typer.Argument(min=1, help="The exception's id.")],
) -> None:
    """Apply an exception again, after the fix; exits non-zero when it still cannot apply."""
    url = _database_url()
    try:
        ledger = Ledger(env=ledger_env(url))
    except Exception as error:  # any driver error becomes one readable line
        _fail(f"cannot open the ledger: {_first_line(error)}")
    try:
        outcome = asyncio.run(_retry(url, ledger, exception_id))
    except psycopg.Error as error:
        _fail(f"database: {_first_line(error)}")
    except LedgerUnavailable as error:
        _fail(f"the ledger cannot record right now ({_first_line(error)}); try again")
    finally:
        ledger.close()
    if isinstance(outcome, str):
        _fail(outcome)
    typer.echo(_describe(exception_id, outcome))


async def _retry(url: str, ledger: Ledger, exception_id: int) -> Applied | str:
    """The outcome, or one line saying why it did not apply."""
    # The channel adapters load only for this command, keeping ``list`` quick to start.
    from api.inbound import RETRYABLE_CHANNELS, Inbound, RetryFailed

    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        url, min_size=1, max_size=4, kwargs={"autocommit": True}, open=False
    )
    await pool.open(wait=True, timeout=POOL_OPEN_TIMEOUT_SECONDS)
    try:
        async with pool.connection() as connection:
            record = await store.aget(connection, exception_id)
        if record is None:
            return f"exception {exception_id} is not known"
        if record.status != "open":
            return f"exception {exception_id} is already resolved"
        if record.channel not in RETRYABLE_CHANNELS:
            return f"exceptions of channel {record.channel} cannot be retried"
        try:
            return await Inbound(ledger, pool).retry(record, correlation_id="cli:exceptions-retry")
        except RetryFailed as failed:
            return (
                f"exception {exception_id} still cannot be applied "
                f"({failed.kind}, attempt {failed.record.attempts}): {failed.reason}"
            )
    finally:
        await pool.close()


def _describe(exception_id: int, applied: Applied) -> str:
    parts = [f"exception {exception_id} resolved: {applied.channel} {applied.source} applied"]
    if applied.external_order_id:
        parts.append(f"order {applied.external_order_id} ({applied.order_id})")
    if applied.position is not None:
        parts.append(f"position {applied.position}")
    if applied.resolved_exceptions:
        waiting = ", ".join(str(i) for i in applied.resolved_exceptions)
        parts.append(f"also applied exceptions {waiting}")
    return "; ".join(parts)
