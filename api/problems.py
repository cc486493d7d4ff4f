"""Every error as RFC 9457 ``application/problem+json``.

The ``type`` member is the problem's bare slug (``insufficient-stock``, ``not-found``...): a
relative URI reference, stable, and what clients match on. Domain errors bring their own slug,
status and context (added as extension members); everything else is mapped here. Bodies never
carry stack traces, request bodies or secrets.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

import psycopg
from eventsourcing.persistence import InterfaceError, OperationalError
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

from domain.errors import DomainError, LedgerUnavailable

log = logging.getLogger("stockledger.api")

PROBLEM_MEDIA_TYPE = "application/problem+json"
# How long a client should wait before retrying when the ledger cannot record (seconds).
RETRY_AFTER_SECONDS = 2
# Members of the problem itself; a domain error's context must not overwrite them.
_RESERVED_MEMBERS = frozenset({"type", "title", "status", "detail", "instance"})

# Slugs for HTTP-level errors that do not come from the domain.
_SLUG_BY_STATUS: dict[int, str] = {
    400: "bad-request",
    401: "unauthorized",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    406: "not-acceptable",
    409: "conflict",
    413: "payload-too-large",
    415: "unsupported-media-type",
    422: "validation",
    429: "too-many-requests",
    500: "internal",
    503: "unavailable",
    504: "timeout",
}

_TITLE_BY_SLUG: dict[str, str] = {
    "validation": "The request is not valid",
    "unauthorized": "A valid API key is required",
    "forbidden": "This API key may not do this",
    "not-found": "Not found",
    "insufficient-stock": "Insufficient stock",
    "idempotency-key-reused": "Idempotency key reused with a different request",
    "already-exists": "Already exists",
    "invalid-state": "Not allowed in the current state",
    "payload-too-large": "Request body too large",
    "method-not-allowed": "Method not allowed",
    "unavailable": "Service unavailable",
    "internal": "Internal server error",
}


class ProblemResponse(JSONResponse):
    media_type = PROBLEM_MEDIA_TYPE


class Problem(BaseModel):
    """An RFC 9457 problem; domain context appears as extra members."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="Stable slug of the problem, e.g. insufficient-stock")
    title: str
    status: int
    detail: str | None = None


class FieldError(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ValidationProblem(Problem):
    errors: list[FieldError] = Field(default_factory=list)


class ApiProblem(Exception):
    """An error decided by the API layer itself (authentication, authorisation...)."""

    def __init__(
        self,
        status: int,
        slug: str,
        detail: str,
        *,
        headers: Mapping[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.slug = slug
        self.detail = detail
        self.headers = dict(headers or {})
        self.extensions = extensions


class Unauthorized(ApiProblem):
    def __init__(self, detail: str) -> None:
        super().__init__(401, "unauthorized", detail, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(ApiProblem):
    def __init__(self, detail: str, **extensions: Any) -> None:
        super().__init__(403, "forbidden", detail, **extensions)


class PayloadTooLarge(StarletteHTTPException):
    """Raised from ``receive`` so FastAPI's body reading passes it through unchanged."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body exceeds {limit} bytes")


def title_for(slug: str, status: int) -> str:
    if slug in _TITLE_BY_SLUG:
        return _TITLE_BY_SLUG[slug]
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return slug.replace("-", " ").capitalize()


def problem_response(
    status: int,
    slug: str,
    detail: str | None = None,
    *,
    headers: Mapping[str, str] | None = None,
    extensions: Mapping[str, Any] | None = None,
) -> ProblemResponse:
    body: dict[str, Any] = {"type": slug, "title": title_for(slug, status), "status": status}
    if detail is not None:
        body["detail"] = detail
    body.update(
        (key, value) for key, value in (extensions or {}).items() if key not in _RESERVED_MEMBERS
    )
    return ProblemResponse(body, status_code=status, headers=dict(headers or {}))


def _field_errors(errors: Sequence[Any]) -> list[dict[str, Any]]:
    # Only where and what: pydantic's `input` and `ctx` would echo the request (maybe secrets).
    return [
        {
            "loc": [part if isinstance(part, int) else str(part) for part in error.get("loc", ())],
            "msg": str(error.get("msg", "")),
            "type": str(error.get("type", "")),
        }
        for error in errors
    ]


# --- exception handlers ---------------------------------------------------------------------------
async def _domain_error(request: Request, exc: Exception) -> ProblemResponse:
    assert isinstance(exc, DomainError)
    return problem_response(exc.status, exc.slug, exc.detail, extensions=exc.context)


async def _api_problem(request: Request, exc: Exception) -> ProblemResponse:
    assert isinstance(exc, ApiProblem)
    return problem_response(
        exc.status, exc.slug, exc.detail, headers=exc.headers, extensions=exc.extensions
    )


async def _ledger_unavailable(request: Request, exc: Exception) -> ProblemResponse:
    log.warning("ledger unavailable: %s", exc)
    return problem_response(
        503,
        "unavailable",
        "the ledger cannot record right now; retry shortly",
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


async def _database_unreachable(request: Request, exc: Exception) -> ProblemResponse:
    # A read (or a write's look-up) could not reach PostgreSQL, or gave up waiting for it.
    log.warning("database unavailable: %s", type(exc).__name__)
    return problem_response(
        503,
        "unavailable",
        "the database cannot be reached or did not answer in time; retry shortly",
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


async def _request_validation(request: Request, exc: Exception) -> ProblemResponse:
    assert isinstance(exc, RequestValidationError)
    errors = _field_errors(exc.errors())
    if errors:
        first = errors[0]
        where = ".".join(str(part) for part in first["loc"])
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        detail = f"{where}: {first['msg']}{more}"
    else:
        detail = "the request is not valid"
    return problem_response(422, "validation", detail, extensions={"errors": errors})


async def _http_exception(request: Request, exc: Exception) -> ProblemResponse:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    slug = _SLUG_BY_STATUS.get(status) or ("internal" if status >= 500 else "bad-request")
    detail: str | None = exc.detail if isinstance(exc.detail, str) else None
    headers = dict(exc.headers or {})
    if status == 404:
        detail = f"nothing at {request.method} {request.url.path}"
    elif status == 405:
        detail = f"{request.method} is not allowed on {request.url.path}"
        allowed = _allowed_methods(request)
        if allowed:
            headers["Allow"] = ", ".join(allowed)
    return problem_response(status, slug, detail, headers=headers)


def _allowed_methods(request: Request) -> list[str]:
    """The methods the OpenAPI document lists for this path. Starlette's own ``Allow`` names only
    the first matching route's, and a path may be served by two (``POST``, ``GET /v1/orders``)."""
    path = request.url.path
    methods: set[str] = set()
    for template, item in request.app.openapi().get("paths", {}).items():
        pattern, _, _ = compile_path(template)
        if pattern.match(path):
            methods.update(method.upper() for method in item if method.isalpha())
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods)


async def _unexpected(request: Request, exc: Exception) -> ProblemResponse:
    # Last resort for errors raised outside the routes (ServerErrorMiddleware re-raises after).
    return internal_error_response()


def internal_error_response() -> ProblemResponse:
    return problem_response(500, "internal", "an unexpected error occurred; it has been logged")


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(DomainError, _domain_error)
    app.add_exception_handler(ApiProblem, _api_problem)
    app.add_exception_handler(LedgerUnavailable, _ledger_unavailable)
    # Connection failures and pool timeouts (psycopg's, and eventsourcing's wrapping of them).
    for unreachable in (
        psycopg.OperationalError,
        psycopg.InterfaceError,
        OperationalError,
        InterfaceError,
    ):
        app.add_exception_handler(unreachable, _database_unreachable)
    app.add_exception_handler(RequestValidationError, _request_validation)
    app.add_exception_handler(StarletteHTTPException, _http_exception)
    app.add_exception_handler(Exception, _unexpected)


# --- OpenAPI --------------------------------------------------------------------------------------
def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries documenting the given error statuses as problems."""
    documented: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        model: type[Problem] = ValidationProblem if status == 422 else Problem
        documented[status] = {
            "model": model,
            "description": title_for(_SLUG_BY_STATUS.get(status, "internal"), status),
        }
    return documented


def use_problem_media_type(schema: dict[str, Any]) -> dict[str, Any]:
    """Documents error responses under ``application/problem+json``, as they are sent."""
    for path_item in schema.get("paths", {}).values():
        for operation in path_item.values():
            if not isinstance(operation, dict):
                continue
            for status, response in operation.get("responses", {}).items():
                content = response.get("content")
                if not str(status).isdigit() or int(status) < 400 or not content:
                    continue
                if "application/json" in content:
                    content[PROBLEM_MEDIA_TYPE] = content.pop("application/json")
    return schema
