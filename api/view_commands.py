"""CLI commands that read or rebuild the views: ``projections``, ``history``, ``availability``."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import contextmanager
from datetime import datetime
from typing import Annotated, Any, TypeVar
from uuid import UUID

import psycopg
import typer
from psycopg.rows import dict_row
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from adapters.postgres import ledger_env
from domain.errors import ValidationFailed
from domain.keys import check_location, check_sku
from domain.service import Ledger
from projections import availability, events
from projections.base import rebuild
from projections.registry import VIEW_NAMES, view

projections_app = typer.Typer(no_args_is_help=True, help="Inspect and rebuild the views.")
console = Console()
T = TypeVar("T")


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code=1)


def database_url() -> str:
    from api.settings import SettingsError, load_settings

    try:
        url = load_settings().database_url
    except SettingsError as error:
        _fail(str(error))
    if not url:
        _fail("STOCKLEDGER_DATABASE_URL is not set")
    assert url is not None
    return url


@contextmanager
def _ledger(url: str) -> Any:
    try:
        ledger = Ledger(env=ledger_env(url))
    except Exception as error:
        _fail(f"cannot open the ledger: {str(error).strip().splitlines()[0]}")
    try:
        yield ledger
    finally:
        ledger.close()


def _read(url: str, query: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]]) -> T:
    async def run() -> T:
        async with await psycopg.AsyncConnection.connect(
            url, autocommit=True, row_factory=dict_row
        ) as connection:
            return await query(connection)

    try:
        return asyncio.run(run())
    except psycopg.Error as error:
        _fail(f"database: {str(error).strip().splitlines()[0]}")
        raise


@projections_app.command("status")
def projections_status() -> None:
    """Each view's position and how far it lags the log."""
    url = database_url()

    async def query(connection: psycopg.AsyncConnection[Any]) -> tuple[int, dict[str, Any]]:
        head_cursor = await connection.execute(
            "SELECT coalesce(max(notification_id), 0) AS head FROM ledger_events"
        )
        head_row = await head_cursor.fetchone()
        cursor = await connection.execute(
            "SELECT name, position, updated_at FROM projection_positions"
        )
        return int(head_row["head"] if head_row else 0), {
            row["name"]: row for row in await cursor.fetchall()
        }

    head, rows = _read(url, query)
    table = Table("view", "position", "lag (events)", "updated")
    for name in VIEW_NAMES:
        row = rows.get(name)
        position = int(row["position"]) if row else 0
        updated = row["updated_at"].isoformat(timespec="seconds") if row else "never"
        table.add_row(name, str(position), str(max(0, head - position)), updated)
    console.print(table)
    console.print(f"log head: {head}")


@projections_app.command("rebuild")
def projections_rebuild(
    name: Annotated[
        str | None, typer.Argument(help="availability, orders or discrepancies")
    ] = None,
    all_views: Annotated[bool, typer.Option("--all", help="Rebuild every view.")] = False,
) -> None:
    """Rebuild views beside the live ones and swap them in when caught up (reads never stop)."""
    if all_views == (name is not None):
        _fail("name one view, or pass --all")
    names = list(VIEW_NAMES) if all_views else [name or ""]
    unknown = [n for n in names if n not in VIEW_NAMES]
    if unknown:
        _fail(f"unknown view {unknown[0]!r}: choose from {', '.join(VIEW_NAMES)}")
    url = database_url()
    with _ledger(url) as ledger:
        head = ledger.recorder.max_notification_id() or 0
        for view_name in names:
            projection = view(view_name, ledger.mapper)
            with Progress(
                TextColumn(f"[bold]{view_name}"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total} positions"),
                TimeElapsedColumn(),
                console=console,
                transient=False,
            ) as progress:
                task = progress.add_task(view_name, total=max(head, 1))

                def advance(_: int, reached: int, task: Any = task) -> None:
                    progress.update(task, completed=min(reached, head))

                try:
                    report = rebuild(url, ledger.mapper, projection, progress=advance)
                except psycopg.Error as error:
                    _fail(f"rebuild of {view_name} failed: {str(error).strip().splitlines()[0]}")
                    raise
                progress.update(task, completed=head)
            console.print(
                f"{view_name}: {report.events} events in {report.seconds:.2f} s "
                f"({report.events_per_second:,.0f} events/s), now at position {report.position}"
            )


def history(
    sku: Annotated[str | None, typer.Argument(help="SKU")] = None,
    location: Annotated[str | None, typer.Argument(help="location code")] = None,
    as_of: Annotated[
        datetime | None, typer.Option("--as-of", help="State at this moment (ISO 8601).")
    ] = None,
    order: Annotated[
        str | None, typer.Option("--order", help="An order's history instead.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 100,
) -> None:
    """What happened to a stock position (and its state at a moment), or to an order."""
    url = database_url()
    with _ledger(url) as ledger:
        if order is not None:
            try:
                order_id = UUID(order)
            except ValueError:
                _fail(f"order {order!r} is not an order id")
                raise
            found = _read(url, lambda c: events.order_history(c, ledger.mapper, order_id))
            if found is None:
                _fail(f"order {order} is not known")
            assert found is not None
            _print_events(found["events"])
            return
        if sku is None or location is None:
            _fail("give SKU and LOCATION, or --order ID")
        assert sku is not None and location is not None
        try:
            check_sku(sku)
            check_location(location)
        except ValidationFailed as error:
            _fail(error.detail)
        moment = as_of
        if moment is not None and moment.tzinfo is None:
            moment = moment.astimezone()
        result = _read(
            url,
            lambda c: events.stock_history(
                c, ledger.mapper, sku, location, as_of=moment, limit=limit
            ),
        )
        if result is None:
            _fail(f"no stock of {sku} has ever been at {location}")
        assert result is not None
        _print_events(result["events"])
        state = result["state"]
        table = Table("figure", "value")
        for key, value in state.items():
            if key not in ("sku", "location", "as_of"):
                table.add_row(key, str(value))
        when = state["as_of"] or "now"
        console.print(f"{sku} at {location} as of {when}:")
        console.print(table)


def _print_events(rows: list[dict[str, Any]]) -> None:
    table = Table("position", "time", "type", "subject", "data")
    for row in rows:
        data = ", ".join(
            f"{k}={v}" for k, v in row["data"].items() if k not in ("sku", "location", "code")
        )
        table.add_row(
            str(row["position"]), row["occurred_at"][:23], row["type"], row["subject"], data
        )
    console.print(table)


def availability_command(
    sku: Annotated[str, typer.Argument(help="SKU")],
    channel: Annotated[str | None, typer.Option("--channel", help="One channel's ATS.")] = None,
) -> None:
    """Available-to-sell of a SKU, per location and per channel."""
    try:
        check_sku(sku)
    except ValidationFailed as error:
        _fail(error.detail)
    url = database_url()
    result = _read(url, lambda c: availability.sku_availability(c, sku))
    if channel is not None:
        console.print(f"{sku} on {channel}: {result['channels'].get(channel, 0)} available to sell")
        return
    columns = [
        "location",
        "on_hand",
        "available",
        "reserved",
        "committed",
        "damaged",
        "returned",
        "in_transit",
        "safety_stock",
        "available_to_sell",
    ]
    table = Table(*columns)
    for row in result["locations"]:
        table.add_row(*(str(row[c]) for c in columns))
    console.print(table)
    for name, ats in sorted(result["channels"].items()):
        console.print(f"{name}: {ats} available to sell")
    console.print(f"(view at position {result['position']})")
