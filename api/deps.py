"""Dependencies the routes share: the ledger, the read pool, the command context.

All ``async def``, even those that do not wait: FastAPI runs a plain ``def`` dependency in a
worker thread, and that hop cost more than the rest of a cheap read together.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Future
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Header, Request, Response
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from api.settings import Settings
from domain.committer import WriteResult
from domain.errors import LedgerUnavailable
from domain.service import CommandContext, Ledger

POSITION_HEADER = "X-Ledger-Position"
REPLAYED_HEADER = "Idempotent-Replayed"
IDEMPOTENCY_KEY_PATTERN = r"^[!-~]{1,255}$"

Model = TypeVar("Model", bound=BaseModel)


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_ledger(request: Request) -> Ledger:
    ledger: Ledger = request.app.state.ledger
    return ledger


async def get_read_pool(request: Request) -> AsyncConnectionPool:
    pool: AsyncConnectionPool = request.app.state.read_pool
    return pool


async def get_request_id(request: Request) -> str:
    request_id: str = request.state.request_id
    return request_id


async def get_command_context(
    request: Request,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=255,
            pattern=IDEMPOTENCY_KEY_PATTERN,
            description=(
                "Makes the write safe to retry: the same key with the same body returns the "
                "first answer; with another body it is refused (409 idempotency-key-reused)."
            ),
        ),
    ] = None,
) -> CommandContext:
    # The request id read here rather than through ``get_request_id``: every write resolves
    # this, and each level of dependencies costs FastAPI a resolution per request.
    return CommandContext(idempotency_key=idempotency_key, correlation_id=request.state.request_id)


SettingsDep = Annotated[Settings, Depends(get_settings)]
LedgerDep = Annotated[Ledger, Depends(get_ledger)]
ReadPoolDep = Annotated[AsyncConnectionPool, Depends(get_read_pool)]
RequestIdDep = Annotated[str, Depends(get_request_id)]
CommandContextDep = Annotated[CommandContext, Depends(get_command_context)]


def written(model: type[Model], result: WriteResult, response: Response) -> Model:
    """The answer to a write: the ledger's body plus ``position``, mirrored in headers."""
    body: dict[str, Any] = {**result.body, "position": result.position}
    if result.position is not None:
        response.headers[POSITION_HEADER] = str(result.position)
    if result.replayed:
        response.headers[REPLAYED_HEADER] = "true"
    return model.model_validate(body)


async def awaited(ledger: Ledger, future: Future[WriteResult]) -> WriteResult:
    """A submitted write's answer, waited for on the event loop rather than in a worker thread
    (a hop there and back for every write). A request that stops waiting cancels only its own
    waiter: the write finishes as it would have.

    One waiter that the write's future settles, rather than ``asyncio.shield`` over
    ``asyncio.wrap_future``: those chain three futures with callbacks both ways, about twice
    the cost on every write."""
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[WriteResult] = loop.create_future()
    future.add_done_callback(lambda done: loop.call_soon_threadsafe(_settle, answer, done))
    try:
        async with asyncio.timeout(ledger.COMMAND_TIMEOUT):
            result = await answer
    except TimeoutError:
        raise LedgerUnavailable(ledger.COMMAND_TIMED_OUT) from None
    if result.position is None:
        result = await run_in_threadpool(ledger.with_position, result)  # reads the log's head
    return result


def _settle(answer: asyncio.Future[WriteResult], done: Future[WriteResult]) -> None:
    if answer.cancelled():
        return  # nobody waits for it any more
    if done.cancelled():
        answer.cancel()
        return
    error = done.exception()
    if error is None:
        answer.set_result(done.result())
    else:
        answer.set_exception(error)
