"""Structured logs: JSON lines that carry the request's correlation id, and never a key."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from api.logs import JsonLogFormatter


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonLogFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@contextmanager
def captured(*names: str) -> Iterator[_Lines]:
    handler = _Lines()
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(handler)
            logger.setLevel(level)


def test_lines_logged_while_handling_a_request_carry_its_id(server: Any) -> None:
    request_id = "ops-login-check-42"
    secret = "definitely-not-a-key-0123456789"
    with captured("stockledger.api", "uvicorn.access") as handler:
        response = httpx.post(
            f"{server.base_url}/ops/login",
            data={"key": secret},
            headers={"X-Request-Id": request_id, "Authorization": f"Bearer {secret}"},
        )
        assert response.status_code == 401
        assert response.headers["X-Request-Id"] == request_id
    records = [json.loads(line) for line in handler.lines]
    ours = [r for r in records if r.get("correlation_id") == request_id]
    assert {r["logger"] for r in ours} == {"stockledger.api", "uvicorn.access"}, records
    refusal = next(r for r in ours if r["logger"] == "stockledger.api")
    assert refusal["level"] == "INFO" and "refused" in refusal["message"]
    assert refusal["time"].endswith("+00:00")
    access = next(r for r in ours if r["logger"] == "uvicorn.access")
    assert access["http_method"] == "POST"
    assert access["http_path"] == "/ops/login"
    assert access["http_status"] == 401
    assert all(secret not in line for line in handler.lines)


def test_serve_logs_json_and_masks_bearer_tokens() -> None:
    script = (
        "import logging, logging.config\n"
        "from api.cli import _log_config\n"
        "logging.config.dictConfig(_log_config())\n"
        "logging.getLogger('stockledger.api').info('header was %s', 'Bearer s3cr3t-key-value')\n"
        "try:\n"
        "    raise ValueError('Authorization: bearer another-s3cr3t')\n"
        "except ValueError:\n"
        "    logging.getLogger('stockledger.api').exception('failed')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert [line["message"] for line in lines] == ["header was Bearer [redacted]", "failed"]
    assert "bearer [redacted]" in lines[1]["exc_info"]
    assert "s3cr3t" not in done.stderr
    assert all(
        line["logger"] == "stockledger.api" and "correlation_id" not in line for line in lines
    )
