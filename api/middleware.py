"""The one middleware every request passes: request id, correlation id, metrics, body limit,
and the last-resort 500.

One pure ASGI layer rather than a stack of them: each layer costs a call and a wrapped
``send`` per request, which on a cheap read is a visible share of the time. Pure ASGI rather
than ``BaseHTTPMiddleware`` so streamed bodies are counted as they arrive and nothing is
buffered on the way. In order, for each request it:

- gives it an id (the caller's ``X-Request-Id`` when that is a plain token, else a new one),
  kept in ``scope["state"]["request_id"]`` (``request.state.request_id``), echoed in the
  answer's ``X-Request-Id`` and used as the correlation id of the events the request records;
- puts the id in ``api.logs.correlation_id`` for the time of the request, so every line logged
  meanwhile (uvicorn's access line included) carries it;
- refuses bodies over ``max_bytes`` with 413: a declared ``Content-Length`` before the app runs,
  a chunked body as soon as what was received passes the limit;
- turns an exception nobody handled into a 500 problem, logged once with its traceback;
- counts and times the request for ``/metrics`` (``api.metrics.Metrics.observe``), the 413s
  and 500s above included.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.logs import correlation_id
from api.metrics import KNOWN_METHODS, WRITE_METHODS, Metrics, problem_type, route_labels
from api.problems import (
    PROBLEM_MEDIA_TYPE,
    PayloadTooLarge,
    internal_error_response,
    problem_response,
)

log = logging.getLogger("stockledger.api")

_REQUEST_ID_HEADER = b"x-request-id"
# A caller's request id is kept only if it is a plain token; anything else is replaced.
_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:@/+=-]{1,128}$")
_PROBLEM_MEDIA_TYPE = PROBLEM_MEDIA_TYPE.encode("ascii")
# Enough of a refusal's problem body to find its ``type``, for the write-outcome metrics.
_PROBLEM_BODY_LIMIT = 4096


class _RequestIds:
    """New request ids: this process's random prefix and a count. Unique across processes like
    a UUID4 (the ids become events' correlation ids in a shared log), in the same 32 hex digits,
    without a system call per request: ``os.urandom`` lets go of the GIL, and getting it back
    from the ledger's and the views' threads could hold up the event loop."""

    def __init__(self) -> None:
        self.restart()

    def restart(self) -> None:
        self._prefix = os.urandom(8).hex()
        self._count = itertools.count(1)

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._count):016x}"


new_request_id = _RequestIds()
os.register_at_fork(after_in_child=new_request_id.restart)  # a forked process starts afresh


class RequestMiddleware:
    def __init__(self, app: ASGIApp, *, metrics: Metrics, max_bytes: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id, declared_length, chunked = _read_headers(scope)
        if request_id is None:
            request_id = new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        request_id_value = request_id.encode("ascii")
        method = scope["method"]
        if method not in KNOWN_METHODS:
            method = "OTHER"  # a method a client made up: label values must stay few
        status = 500
        response_started = False
        # Only a refused write's problem body is kept: its type labels the command's outcome.
        problem: bytearray | None = None

        async def answering(message: Message) -> None:
            nonlocal status, response_started, problem
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                headers = [
                    (name, value)
                    for name, value in message.get("headers", ())
                    if name.lower() != _REQUEST_ID_HEADER
                ]
                headers.append((_REQUEST_ID_HEADER, request_id_value))
                if status >= 400 and method in WRITE_METHODS and _is_problem(headers):
                    problem = bytearray()
                message = {**message, "headers": headers}
            elif problem is not None and message["type"] == "http.response.body":
                room = _PROBLEM_BODY_LIMIT - len(problem)
                if room > 0:
                    problem.extend(message.get("body", b"")[:room])
            await send(message)

        received = 0

        async def counting() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise PayloadTooLarge(self.max_bytes)
            return message

        token = correlation_id.set(request_id)
        try:
            if declared_length > self.max_bytes:
                await self._refuse_body(scope, receive, answering)
                return
            # A body with a declared length is framed by it (HTTP/1.1): only a chunked one
            # can grow past what was checked above, so only that one is counted.
            await self.app(scope, counting if chunked else receive, answering)
        except PayloadTooLarge:
            # Read outside a route (the routes answer it themselves): nobody answered yet.
            if response_started:
                raise
            await self._refuse_body(scope, receive, answering)
        except Exception:
            log.exception(
                "unexpected error in %s %s (request %s)",
                scope.get("method"),
                scope.get("path"),
                request_id,
            )
            if response_started:
                raise
            await internal_error_response()(scope, receive, answering)
        finally:
            correlation_id.reset(token)
            route, command = route_labels(scope)
            self.metrics.observe(
                method=method,
                route=route,
                command=command,
                status=status,
                problem_type=problem_type(bytes(problem)) if problem else None,
                seconds=time.perf_counter() - started,
            )

    async def _refuse_body(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem_response(
            413, "payload-too-large", f"the request body exceeds {self.max_bytes} bytes"
        )
        await response(scope, receive, send)


def _read_headers(scope: Scope) -> tuple[str | None, int, bool]:
    """In one pass: the caller's request id if usable, the declared body length (0 if none or
    unreadable), and whether the body comes chunked."""
    request_id: str | None = None
    declared_length = 0
    chunked = False
    for name, value in scope["headers"]:
        if name == _REQUEST_ID_HEADER:
            if _REQUEST_ID.match(value):
                request_id = value.decode("ascii")
        elif name == b"content-length":
            try:
                declared_length = int(value)
            except ValueError:
                declared_length = 0
        elif name == b"transfer-encoding":
            chunked = True
    return request_id, declared_length, chunked


def _is_problem(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name.lower() == b"content-type":
            return bytes(value).startswith(_PROBLEM_MEDIA_TYPE)
    return False
