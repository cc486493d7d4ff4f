"""The two busiest requests, answered before FastAPI's layers.

``GET /v1/availability/{sku}`` and ``POST /v1/orders`` spent most of their time in FastAPI's
layers (its body limit, exception handling, routing, parameter and dependency resolution,
response validation), none of which a plain request needs. A plain request is answered here by
the functions the routes themselves use: the key checked by the same dependency, the SKU by the
same pattern, the order body read the same way into the same model, failures (a refused key, a
refused order, an unreachable database) answered by the app's own exception handlers.

Plain means: no query string, no ``root_path``, and for an order a JSON body and headers the
route would accept. Anything else takes the route's way (the order body, already read, handed
on as it came), so parameters, malformed bodies and their 422 answers stay FastAPI's. Sits just
inside the request middleware: ids, logs, limits and metrics are the same either way.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request, Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.routes import orders, reads

_JSON = b"application/json"


class HotRoutes:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # The routes themselves, so their requests are counted under their templates.
        self._availability = _route(
            reads.router.routes, reads.router.prefix + reads.AVAILABILITY_ROUTE
        )
        self._orders = _route(orders.router.routes, orders.ORDERS_PATH, "POST")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope["query_string"] and not scope.get("root_path"):
            path: str = scope["path"]
            method: str = scope["method"]
            if method == "GET" and path.startswith(reads.AVAILABILITY_PREFIX):
                sku = path[len(reads.AVAILABILITY_PREFIX) :]
                if reads.plain_sku(sku):
                    await _answer(
                        scope,
                        receive,
                        send,
                        self._availability,
                        lambda request: reads.answer_availability(request, sku),
                    )
                    return
            elif method == "POST" and path == orders.ORDERS_PATH and _json_body(scope):
                request = Request(scope, receive)
                body = await request.body()  # over the size limit: the request middleware's 413
                key_values = request.headers.getlist("idempotency-key")
                key = key_values[0] if key_values else None
                order = orders.plain_placement(body, key) if len(key_values) <= 1 else None
                if order is None:
                    await self.app(scope, _replaying(body, receive), send)
                    return
                await _answer(
                    scope,
                    receive,
                    send,
                    self._orders,
                    lambda request: orders.answer_placement(request, order, key),
                    request,
                )
                return
        await self.app(scope, receive, send)


async def _answer(
    scope: Scope,
    receive: Receive,
    send: Send,
    route: BaseRoute,
    answer: Callable[[Request], Awaitable[Response]],
    request: Request | None = None,
) -> None:
    scope["route"] = route
    request = request or Request(scope, receive)
    try:
        response = await answer(request)
    except Exception as error:
        response = await _problem_for(request, error)
    await response(scope, receive, send)


async def _problem_for(request: Request, error: Exception) -> Response:
    """The app's answer to ``error``, as its exception handlers give it on the route's way; an
    error they do not name is raised, to the request middleware's 500."""
    handlers = request.app.exception_handlers
    for kind in type(error).__mro__:
        handler = handlers.get(kind)
        if handler is not None and kind is not Exception:
            response: Response = await handler(request, error)
            return response
    raise error


def _json_body(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-type":
            media_type = value.split(b";", 1)[0].strip().lower()
            return bool(media_type == _JSON)
    return False


def _replaying(body: bytes, receive: Receive) -> Receive:
    """``receive`` for the route's way, which reads the body again: first the body as it came."""
    pending = True

    async def replay() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _route(routes: list[BaseRoute], path: str, method: str = "GET") -> Any:
    return next(
        route
        for route in routes
        if getattr(route, "path", None) == path and method in getattr(route, "methods", ())
    )
