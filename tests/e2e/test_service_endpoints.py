"""Service endpoints, request ids, and errors for routes that do not exist."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

Problem = Callable[..., dict[str, Any]]


def test_health_answers_without_a_key(client_for: Callable[..., httpx.Client]) -> None:
    response = client_for(None).get("/health")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_ready_reports_the_database_reachable(client_for: Callable[..., httpx.Client]) -> None:
    response = client_for(None).get("/ready")

    assert response.status_code == 200
    assert response.json()["checks"]["database"] == "ok"


def test_every_response_carries_a_generated_request_id(admin: httpx.Client) -> None:
    first = admin.get("/health").headers["x-request-id"]
    second = admin.get("/health").headers["x-request-id"]

    assert first and second and first != second


def test_a_callers_request_id_is_echoed(admin: httpx.Client) -> None:
    response = admin.get("/health", headers={"X-Request-Id": "trace-42.abc"})

    assert response.headers["x-request-id"] == "trace-42.abc"


def test_a_malformed_request_id_is_replaced(admin: httpx.Client) -> None:
    response = admin.get("/health", headers={"X-Request-Id": "bad id with spaces"})

    assert response.headers["x-request-id"] != "bad id with spaces"


def test_unknown_route_is_a_not_found_problem(admin: httpx.Client, problem: Problem) -> None:
    response = admin.get("/v1/no-such-thing")

    problem(response, 404, "not-found")
    assert "x-request-id" in response.headers


def test_wrong_method_is_a_method_not_allowed_problem(
    admin: httpx.Client, problem: Problem
) -> None:
    response = admin.delete("/v1/stock/receipts")

    problem(response, 405, "method-not-allowed")
    assert "POST" in response.headers["allow"]


def test_openapi_documents_the_writes_and_problem_responses(
    client_for: Callable[..., httpx.Client],
) -> None:
    schema = client_for(None).get("/openapi.json").json()

    receipts = schema["paths"]["/v1/stock/receipts"]["post"]
    assert "application/problem+json" in receipts["responses"]["409"]["content"]
    assert "application/problem+json" in receipts["responses"]["422"]["content"]
    quantity = schema["components"]["schemas"]["ReceiptIn"]["properties"]["quantity"]
    assert quantity["minimum"] == 1
    assert client_for(None).get("/docs").status_code == 200


def test_openapi_links_lead_from_a_placed_order_to_its_follow_ups(
    client_for: Callable[..., httpx.Client],
) -> None:
    schema = client_for(None).get("/openapi.json").json()
    operation_ids = {
        operation["operationId"]
        for path_item in schema["paths"].values()
        for operation in path_item.values()
    }

    links = schema["paths"]["/v1/orders"]["post"]["responses"]["201"]["links"]

    assert {link["operationId"] for link in links.values()} <= operation_ids
    assert "orders-authorize_payment" in operation_ids
