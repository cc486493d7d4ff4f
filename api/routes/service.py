"""Service endpoints for load balancers and orchestrators; they need no key."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from api.problems import problem_response, problem_responses
from api.readiness import ReadinessCheck, run_checks
from api.schemas import HealthOut, ReadinessOut

router = APIRouter(tags=["service"])


@router.get("/health")
async def health() -> HealthOut:
    """The process is up (liveness). Says nothing about the database."""
    return HealthOut()


@router.get("/ready", responses={200: {"model": ReadinessOut}, **problem_responses(503)})
async def ready(request: Request) -> JSONResponse:
    """Ready for traffic: every readiness check passes (database; NATS and projection lag
    once their workers register checks). 503 otherwise."""
    checks: list[ReadinessCheck] = getattr(request.app.state, "readiness_checks", [])
    results = await run_checks(checks)
    summary = {result.name: result.detail for result in results}
    if all(result.ok for result in results):
        return JSONResponse(ReadinessOut(checks=summary).model_dump())
    failing = ", ".join(result.name for result in results if not result.ok)
    return problem_response(
        503, "unavailable", f"not ready: {failing}", extensions={"checks": summary}
    )
