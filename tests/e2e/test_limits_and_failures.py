"""Oversized bodies, an unavailable ledger and unexpected failures, as problems."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from domain.errors import LedgerUnavailable

Problem = Callable[..., dict[str, Any]]
ONE_MIB = 1024 * 1024


def _oversized_order() -> bytes:
    note = "x" * 400
    lines = [{"line_id": f"{n}-{note}", "sku": "A", "quantity": 1} for n in range(3000)]
    body = json.dumps({"channel": "shopify", "external_id": "BIG", "lines": lines}).encode()
    assert len(body) > ONE_MIB
    return body


def test_a_body_declared_over_one_mib_is_refused(admin: httpx.Client, problem: Problem) -> None:
    response = admin.post(
        "/v1/orders", content=_oversized_order(), headers={"Content-Type": "application/json"}
    )

    problem(response, 413, "payload-too-large")


def test_a_streamed_body_over_one_mib_is_refused_as_it_arrives(
    admin: httpx.Client, problem: Problem
) -> None:
    body = _oversized_order()

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 64 * 1024):
            yield body[start : start + 64 * 1024]

    # No Content-Length: the request goes out chunked, and only counting can stop it.
    response = admin.post(
        "/v1/orders", content=chunks(), headers={"Content-Type": "application/json"}
    )

    problem(response, 413, "payload-too-large")


def test_a_body_just_under_the_limit_is_read(admin: httpx.Client, problem: Problem) -> None:
    padding = "x" * (ONE_MIB - 200)
    body = json.dumps({"sku": "A", "location": "E2E-WH", "quantity": 1, "reference": padding})

    response = admin.post(
        "/v1/stock/receipts", content=body, headers={"Content-Type": "application/json"}
    )

    # Read and validated (the reference is too long), not refused for its size.
    problem(response, 422, "validation")


def test_an_unavailable_ledger_is_a_503_with_retry_after(
    server: Any,
    admin: httpx.Client,
    fixed: Any,
    problem: Problem,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def unavailable(*args: Any, **kwargs: Any) -> None:
        raise LedgerUnavailable("the event store is unavailable: connection refused")

    monkeypatch.setattr(server.app.state.ledger, "count", unavailable)

    response = admin.post(
        "/v1/stock/counts", json={"sku": "A", "location": fixed.warehouse, "counted": 1}
    )

    body = problem(response, 503, "unavailable")
    assert int(response.headers["retry-after"]) > 0
    assert "connection refused" not in body["detail"]


def test_an_unexpected_error_is_a_500_without_internals(
    server: Any,
    admin: httpx.Client,
    fixed: Any,
    problem: Problem,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("secret-internal-detail")

    monkeypatch.setattr(server.app.state.ledger, "count", broken)

    response = admin.post(
        "/v1/stock/counts", json={"sku": "A", "location": fixed.warehouse, "counted": 1}
    )

    problem(response, 500, "internal")
    assert "secret-internal-detail" not in response.text
    assert "Traceback" not in response.text
    assert response.headers["x-request-id"]
