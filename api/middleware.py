"""Pure ASGI middleware: request ids, the request body limit, and the last-resort 500.

Pure ASGI rather than ``BaseHTTPMiddleware`` so streamed bodies are counted as they arrive and
nothing is buffered on the way.
"""

from __future__ import annotations

import logging
import re
from uuid import uuid4

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.problems import PayloadTooLarge, internal_error_response, problem_response

log = logging.getLogger("stockledger.api")

REQUEST_ID_HEADER = "X-Request-Id"
# A caller's request id is kept only if it is a plain token; anything else is replaced.
_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:@/+=-]{1,128}$")


class RequestIdMiddleware:
    """Gives every request an id (the caller's ``X-Request-Id``, or a new one) and echoes it.

    The id is kept in ``scope["state"]["request_id"]`` (``request.state.request_id``) and becomes
    the correlation id of the events the request records.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _incoming_request_id(scope) or uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (name, value)
                    for name, value in message.get("headers", [])
                    if name.lower() != b"x-request-id"
                ]
                headers.append((b"x-request-id", request_id.encode("ascii")))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_id)


def _incoming_request_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id" and _REQUEST_ID.match(value):
            return str(value.decode("ascii"))
    return None


class UnexpectedErrorMiddleware:
    """Turns an exception no handler took into a 500 problem, logged once with its traceback.

    Sits inside the request-id middleware, so even a 500 carries ``X-Request-Id``.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        response_started = False

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except PayloadTooLarge:
            raise  # the body limit, outside this middleware, answers it
        except Exception:
            request_id = scope.get("state", {}).get("request_id")
            log.exception(
                "unexpected error in %s %s (request %s)",
                scope.get("method"),
                scope.get("path"),
                request_id,
            )
            if response_started:
                raise
            await internal_error_response()(scope, receive, send)


class BodySizeLimitMiddleware:
    """Refuses request bodies over ``max_bytes`` with 413, whether declared or streamed.

    A declared ``Content-Length`` over the limit is refused before the app runs; a body without
    one (chunked) is counted as it is received, and refused as soon as it passes the limit.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if _declared_length(scope) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        received = 0
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise PayloadTooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except PayloadTooLarge:
            # Read outside a route (a middleware, say): nobody turned it into a response yet.
            if response_started:
                raise
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem_response(
            413, "payload-too-large", f"the request body exceeds {self.max_bytes} bytes"
        )
        await response(scope, receive, send)


def _declared_length(scope: Scope) -> int:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return 0
    return 0
