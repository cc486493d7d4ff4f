"""``GET /ops``: the operations page, server-rendered HTML for business and IT teams.

It shows the order backlog by status, the open discrepancies, the open exceptions with their
reasons, what the NATS relays have yet to publish (unpublished ERP postings), each view's lag and
the latest events. Plain HTML and a little CSS (Jinja2 templates in ``api/templates``): no
JavaScript; the page reloads itself every ``REFRESH_SECONDS``.

**Access.** The page shows business data, so it needs a key holding the ``read`` scope, given
either way:

- ``Authorization: Bearer <key>``, as for every read (scripts, a proxy that adds the header);
- a session cookie, for a person with a browser: without a valid header or cookie the page
  answers 401 with a sign-in form, which posts the key to ``POST /ops/login``. The cookie holds
  the key's *name* and an expiry, signed with HMAC-SHA256 under a secret drawn at random when
  the app starts; never the key. It is ``HttpOnly``, ``SameSite=Strict``, limited to ``/ops``,
  ``Secure`` over HTTPS, and lasts ``SESSION_SECONDS``. A restart (a new secret) ends every
  session, and each API process signs its own: behind a load balancer without sticky sessions a
  person may have to sign in again, which is the price of keeping no shared secret anywhere.

Keys never travel in URLs (they would end up in logs and browser history): there is no ``?key=``.
Responses carry ``Cache-Control: no-store`` and a Content-Security-Policy allowing no scripts.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import psycopg
from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from psycopg import AsyncConnection

from adapters import exceptions as exception_store
from adapters.exceptions import ExceptionRecord
from adapters.postgres import POOL_WAIT_SECONDS
from api.auth import KeyRing, Principal, Scope
from api.metrics import (
    RelayLag,
    ViewLag,
    bounded,
    count_discrepancies,
    outbox_backlog,
    projection_lags,
)
from api.workers import MAX_READY_LAG
from projections.discrepancies import list_discrepancies
from projections.events import event_feed
from projections.orders import orders_by_status

log = logging.getLogger("stockledger.api")

COOKIE_NAME = "stockledger_ops"
COOKIE_PATH = "/ops"
SESSION_SECONDS = 8 * 3600
REFRESH_SECONDS = 30
READ_TIMEOUT_SECONDS = 5.0
RECENT_EVENTS = 20
SHOWN_ROWS = 100
MAX_KEY_LENGTH = 512

ORDER_STATUSES = (
    "reserved",
    "committed",
    "partially_fulfilled",
    "fulfilled",
    "partially_returned",
    "returned",
    "partially_refunded",
    "refunded",
    "cancelled",
)
# Orders still waiting for someone to act on them: the backlog.
OPEN_STATUSES = frozenset({"reserved", "committed", "partially_fulfilled"})
RELAY_TITLES = {"erp-postings": "ERP postings", "event-stream": "Event stream"}

SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    # Not no-referrer: under it browsers send "Origin: null" with the sign-in form's POST.
    "Referrer-Policy": "same-origin",
}

templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
router = APIRouter(prefix="/ops", tags=["ops"], include_in_schema=False)


# --- sessions -------------------------------------------------------------------------------------
def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class OpsSessions:
    """Signs and checks session tokens: ``<name>.<expiry>.<HMAC-SHA256 of both>``."""

    def __init__(self, secret: bytes | None = None, lifetime: int = SESSION_SECONDS) -> None:
        self._secret = secret or secrets.token_bytes(32)
        self.lifetime = lifetime

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._secret, payload.encode("ascii"), hashlib.sha256).digest())

    def issue(self, key_name: str, now: float | None = None) -> str:
        expires = int((now if now is not None else time.time()) + self.lifetime)
        payload = f"{_b64(key_name.encode('utf-8'))}.{expires}"
        return f"{payload}.{self._sign(payload)}"

    def verify(self, token: str, now: float | None = None) -> str | None:
        """The key name the token was issued for, or None (forged, altered or expired)."""
        parts = token.split(".")
        if len(parts) != 3 or len(token) > 1024:
            return None
        name, expires, signature = parts
        if not hmac.compare_digest(self._sign(f"{name}.{expires}"), signature):
            return None
        try:
            if int(expires) < (now if now is not None else time.time()):
                return None
            return _unb64(name).decode("utf-8")
        except ValueError:
            return None


def _sessions(request: Request) -> OpsSessions:
    state = request.app.state
    sessions = getattr(state, "ops_sessions", None)
    if sessions is None:
        sessions = state.ops_sessions = OpsSessions()
    assert isinstance(sessions, OpsSessions)
    return sessions


@dataclass(frozen=True)
class Viewer:
    name: str
    via_cookie: bool


class _Refused(Exception):
    def __init__(self, status: int, message: str | None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _bearer_key(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, key = header.partition(" ")
    return key.strip() if scheme.lower() == "bearer" else ""


def _check_key(keyring: KeyRing, key: str) -> Principal:
    principal = keyring.identify(key) if key and len(key) <= MAX_KEY_LENGTH else None
    if principal is None:
        raise _Refused(401, "That API key is not valid.")
    if not principal.holds(Scope.READ):
        raise _Refused(403, f"The API key {principal.name!r} lacks the read scope.")
    return principal


def _viewer(request: Request) -> Viewer:
    """Who is looking: by the Authorization header, else by the session cookie."""
    key = _bearer_key(request)
    if key is not None:
        return Viewer(_check_key(request.app.state.keyring, key).name, via_cookie=False)
    token = request.cookies.get(COOKIE_NAME)
    if token:
        name = _sessions(request).verify(token)
        if name is not None:
            return Viewer(name, via_cookie=True)
        raise _Refused(401, "Your session has ended; sign in again.")
    raise _Refused(401, None)


# --- what the page shows --------------------------------------------------------------------------
@dataclass
class OpsData:
    head: int = 0
    orders: list[tuple[str, int]] = field(default_factory=list)
    open_orders: int = 0
    total_orders: int = 0
    discrepancies: list[dict[str, Any]] = field(default_factory=list)
    discrepancy_count: int = 0
    exceptions: list[ExceptionRecord] = field(default_factory=list)
    exception_count: int = 0
    relays: list[RelayLag] = field(default_factory=list)
    lags: list[ViewLag] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def unpublished_postings(self) -> int | None:
        return next((r.pending for r in self.relays if r.relay == "erp-postings"), None)

    @property
    def slowest_lag(self) -> int | None:
        return max((lag.lag for lag in self.lags), default=None)


def _status_rows(counts: dict[str, int]) -> list[tuple[str, int]]:
    known = [(status, counts.get(status, 0)) for status in ORDER_STATUSES]
    others = sorted((status, n) for status, n in counts.items() if status not in ORDER_STATUSES)
    return known + others


def _summary(data: dict[str, Any], limit: int = 140) -> str:
    parts = []
    for name, value in data.items():
        if value is None or name in {"sku", "location"}:
            continue
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        parts.append(f"{name}={text}")
    joined = ", ".join(parts)
    return joined if len(joined) <= limit else joined[: limit - 1] + "…"


async def _recent_events(connection: AsyncConnection[Any], mapper: Any) -> list[dict[str, Any]]:
    async with bounded(connection):
        cursor = await connection.execute(
            "SELECT notification_id FROM ledger_events ORDER BY notification_id DESC "
            "OFFSET %s LIMIT 1",
            (RECENT_EVENTS - 1,),
        )
        row = await cursor.fetchone()
        after = int(row[0]) - 1 if row else 0
        feed = await event_feed(connection, mapper, after=after, limit=RECENT_EVENTS)
    events: list[dict[str, Any]] = feed["events"]
    return [{**event, "summary": _summary(event["data"])} for event in reversed(events)]


async def gather(pool: Any, mapper: Any) -> OpsData:
    data = OpsData()
    async with pool.connection(timeout=POOL_WAIT_SECONDS) as connection:
        data.lags = await projection_lags(connection)
        data.head = data.lags[0].head if data.lags else 0
        async with bounded(connection):
            counts = await orders_by_status(connection)
        data.orders = _status_rows(counts)
        data.total_orders = sum(counts.values())
        data.open_orders = sum(n for status, n in counts.items() if status in OPEN_STATUSES)
        data.discrepancy_count = await count_discrepancies(connection)
        async with bounded(connection):
            data.discrepancies = (await list_discrepancies(connection))[:SHOWN_ROWS]
            data.exception_count = await exception_store.acount_open(connection)
            data.exceptions = await exception_store.alist_exceptions(
                connection, status="open", limit=SHOWN_ROWS
            )
        data.relays = await outbox_backlog(connection)
        if mapper is not None:
            data.events = await _recent_events(connection, mapper)
    return data


# --- responses ------------------------------------------------------------------------------------
def _page(request: Request, template: str, status: int, **context: Any) -> HTMLResponse:
    response = templates.TemplateResponse(
        request,
        template,
        {"root_path": request.scope.get("root_path", ""), **context},
        status_code=status,
        headers=SECURITY_HEADERS,
    )
    assert isinstance(response, HTMLResponse)
    return response


def _login_page(request: Request, status: int, message: str | None) -> HTMLResponse:
    response = _page(request, "ops_login.html", status, message=message)
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="stockledger ops"'
    return response


@router.get("", response_class=HTMLResponse)
async def ops_page(request: Request) -> Response:
    try:
        viewer = _viewer(request)
    except _Refused as refused:
        return _login_page(request, refused.status, refused.message)
    pool = getattr(request.app.state, "read_pool", None)
    ledger = getattr(request.app.state, "ledger", None)
    error: str | None = None
    data = OpsData()
    if pool is None:
        error = "The service is starting; the database is not open yet."
    else:
        try:
            data = await asyncio.wait_for(
                gather(pool, getattr(ledger, "mapper", None)), timeout=READ_TIMEOUT_SECONDS
            )
        except (TimeoutError, psycopg.Error, OSError) as failure:
            log.warning("ops page: database reads failed: %s", str(failure).strip() or "timeout")
            error = "The database could not be read in time; the figures below are missing."
    return _page(
        request,
        "ops.html",
        503 if error else 200,
        viewer=viewer,
        data=data,
        error=error,
        refresh=REFRESH_SECONDS,
        generated_at=datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        max_ready_lag=MAX_READY_LAG,
        relay_titles=RELAY_TITLES,
    )


def _same_origin(request: Request) -> bool:
    """A form post comes from this site (a browser always sends ``Origin`` with a POST)."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    return urlsplit(origin).netloc == request.headers.get("host", "")


@router.post("/login", response_class=HTMLResponse)
async def ops_login(request: Request) -> Response:
    if not _same_origin(request):
        return _login_page(request, 403, "Sign in from this site's own form.")
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        return _login_page(request, 415, "Send the sign-in form.")
    fields = parse_qs((await request.body()).decode("utf-8", errors="replace"))
    key = (fields.get("key") or [""])[0].strip()
    try:
        principal = _check_key(request.app.state.keyring, key)
    except _Refused as refused:
        log.info("ops sign-in refused (%d)", refused.status)
        return _login_page(request, refused.status, refused.message)
    log.info("ops session opened for key %r", principal.name)
    response = RedirectResponse(f"{request.scope.get('root_path', '')}/ops", status_code=303)
    sessions = _sessions(request)
    response.set_cookie(
        COOKIE_NAME,
        sessions.issue(principal.name),
        max_age=sessions.lifetime,
        path=COOKIE_PATH,
        secure=request.url.scheme == "https",
        httponly=True,
        samesite="strict",
    )
    response.headers.update(SECURITY_HEADERS)
    return response


@router.post("/logout")
async def ops_logout(request: Request) -> Response:
    response = RedirectResponse(f"{request.scope.get('root_path', '')}/ops", status_code=303)
    response.delete_cookie(
        COOKIE_NAME,
        path=COOKIE_PATH,
        secure=request.url.scheme == "https",
        httponly=True,
        samesite="strict",
    )
    response.headers.update(SECURITY_HEADERS)
    return response
