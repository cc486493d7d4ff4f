"""``stockledger subscribe [SUBJECT]``: tail the event stream (or any stockledger subject).

Reads new messages from the JetStream stream that holds the subject (an ordered consumer
starting at the next message, so copies JetStream dropped as duplicates never show), or, for a
subject no stream holds, from core NATS. One readable line per message; Ctrl-C ends it quietly.

NATS is the one of ``STOCKLEDGER_NATS_URL``, else the embedded server ``stockledger serve``
started in the data folder, else ``nats://127.0.0.1:4222``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

import nats
import typer
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy
from nats.js.errors import NotFoundError

from adapters.embedded import NATS_SUBDIR
from api.settings import Settings, SettingsError, load_settings

DEFAULT_SUBJECT = "stockledger.events.>"
DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
_EMBEDDED_STATE = "nats-server.json"


def nats_url(settings: Settings) -> str:
    if settings.nats_url:
        return settings.nats_url
    state = Path(settings.data_dir) / NATS_SUBDIR / _EMBEDDED_STATE
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        found = json.loads(state.read_text())
        return f"nats://{found['host']}:{int(found['port'])}"
    return DEFAULT_NATS_URL


def describe_message(msg: Msg) -> str:
    """One line for a person: CloudEvents and ERP postings get their own layout."""
    try:
        body: Any = json.loads(msg.data)
    except ValueError:
        return f"{msg.subject} {msg.data[:200]!r}"
    if isinstance(body, dict) and body.get("specversion"):
        data = json.dumps(body.get("data"), separators=(",", ":"), default=str)
        return (
            f"{body.get('time', '')} #{body.get('ledgerposition', '?')} "
            f"{str(body.get('type', '')).removeprefix('stockledger.')} "
            f"{body.get('subject', '')} {data}"
        )
    if isinstance(body, dict) and str(body.get("schema", "")).startswith("stockledger.erp"):
        lines = " ".join(
            f"{line.get('sku')}:{line.get('quantity'):+d}"
            for line in body.get("lines", [])
            if isinstance(line.get("quantity"), int)
        )
        amount = body.get("amount")
        money = f" {amount.get('value')} {amount.get('currency') or ''}".rstrip() if amount else ""
        reference = ",".join(f"{k}={v}" for k, v in (body.get("reference") or {}).items())
        return (
            f"{body.get('occurred_at', '')} {body.get('kind')} @{body.get('location')} "
            f"{lines}{money} [{reference}] {body.get('posting_id')}"
        )
    return f"{msg.subject} {json.dumps(body, separators=(',', ':'), default=str)}"


async def tail(url: str, subject: str, *, limit: int | None = None) -> int:
    """Prints each new message on ``subject`` until cancelled (or ``limit`` messages)."""

    async def quiet(_: Exception) -> None:
        return None

    # A first attempt that fails fast (a clear error; nats-py otherwise retries an unreachable
    # server for minutes), then a connection that rides out restarts of the server.
    probe = await nats.connect(
        url,
        connect_timeout=3,
        allow_reconnect=False,
        max_reconnect_attempts=1,
        reconnect_time_wait=0.2,
        error_cb=quiet,
    )
    await probe.close()
    client = await nats.connect(
        url, connect_timeout=3, max_reconnect_attempts=-1, reconnect_time_wait=1, error_cb=quiet
    )
    seen = 0
    done = asyncio.Event()

    async def show(msg: Msg) -> None:
        nonlocal seen
        print(describe_message(msg), flush=True)
        seen += 1
        if limit is not None and seen >= limit:
            done.set()

    try:
        js = client.jetstream()
        try:
            stream = await js.find_stream_name_by_subject(subject)
        except NotFoundError:
            stream = None
        if stream is not None:
            await js.subscribe(
                subject,
                stream=stream,
                cb=show,
                ordered_consumer=True,
                deliver_policy=DeliverPolicy.NEW,
            )
        else:
            await client.subscribe(subject, cb=show)
        await done.wait()
        return seen
    finally:
        with contextlib.suppress(Exception):
            await client.close()


def subscribe_command(subject: str | None) -> None:
    """Tail the event stream (default ``stockledger.events.>``), one line per message."""
    try:
        url = nats_url(load_settings())
    except SettingsError as error:
        typer.secho(f"error: {error}", err=True, fg=typer.colors.RED)
        raise typer.Exit(code=1) from None
    wanted = subject or DEFAULT_SUBJECT
    typer.secho(f"listening on {wanted} at {url} (Ctrl-C to stop)", err=True, dim=True)
    try:
        asyncio.run(tail(url, wanted))
    except KeyboardInterrupt:
        return
    except (OSError, nats.errors.Error, TimeoutError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        typer.secho(f"error: cannot reach NATS at {url}: {reason}", err=True, fg=typer.colors.RED)
        raise typer.Exit(code=1) from None


if __name__ == "__main__":  # pragma: no cover - a manual entry point
    try:
        subscribe_command(sys.argv[1] if len(sys.argv) > 1 else None)
    except typer.Exit as exit_:
        sys.exit(exit_.exit_code)
