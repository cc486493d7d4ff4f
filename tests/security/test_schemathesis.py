"""A property-based fuzz run of the whole HTTP API from its own OpenAPI document (Schemathesis).

Schemathesis reads ``/openapi.json`` of the served process and sends, for every operation,
requests generated from the schema: its examples, the boundaries of every constraint (the
coverage phase: lengths, ranges, patterns, missing and extra fields, wrong types) and random
valid and invalid data (fuzzing), with the admin key. Every answer must pass its checks: no
server error, a status code, content type, headers and body that the schema documents, and
invalid data refused.

Excluded, and why:

- ``positive_data_acceptance``: it expects every schema-valid request to be accepted (2xx), but
  the ledger refuses much that is well-formed: an order for stock that does not exist (409
  insufficient-stock), a payment for an order never placed (404), a transfer received twice
  (409). Those are documented answers, not defects.
- ``use_after_free`` and ``ensure_resource_availability``: they assume REST resources that can
  be created then deleted; nothing in a ledger is deleted, and a placed order's follow-ups may
  rightly be refused by its state.
- ``ignored_auth``: it sends requests without the key and expects a refusal; the service
  endpoints (``/health``, ``/metrics``, ``/ready``) are deliberately open and webhooks use a
  signature rather than a key. The key table in ``test_write_authorization.py`` proves that
  every write refuses a missing, wrong, under-scoped or misplaced key.

``fuzz_hooks.py`` keeps ``min_position`` under the log's head (see there why).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

ST = Path(sys.executable).parent / "st"
HERE = Path(__file__).resolve().parent
EXCLUDED = [
    "positive_data_acceptance",
    "use_after_free",
    "ensure_resource_availability",
    "ignored_auth",
]
MAX_EXAMPLES = int(os.environ.get("STOCKLEDGER_FUZZ_EXAMPLES", "30"))
TIME_BUDGET_SECONDS = 150


@pytest.mark.timeout(TIME_BUDGET_SECONDS + 60)
def test_the_whole_api_survives_a_schemathesis_run(
    server: Any, tmp_path: Path, record_property: Any
) -> None:
    report = tmp_path / "junit.xml"
    command = [
        str(ST),
        "run",
        f"{server.base_url}/openapi.json",
        "--header",
        f"Authorization: Bearer {server.keys['admin']}",
        "--checks",
        "all",
        "--exclude-checks",
        ",".join(EXCLUDED),
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        "20261127",
        # One worker: Python 3.11's ast.parse (which Hypothesis calls to describe strategies)
        # can fail spuriously when threads use it at once (CPython gh-106905).
        "--workers",
        "1",
        "--request-timeout",
        "10",
        "--max-response-time",
        "5",
        "--suppress-health-check",
        "all",
        "--report",
        "junit",
        "--report-junit-path",
        str(report),
        "--output-sanitize",
        "true",
    ]
    started = time.monotonic()
    run = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=TIME_BUDGET_SECONDS + 30,
        cwd=tmp_path,
        env={
            **os.environ,
            "NO_COLOR": "1",
            "PYTHONPATH": str(HERE),
            "SCHEMATHESIS_HOOKS": "fuzz_hooks",
            "STOCKLEDGER_FUZZ_HEAD": str(server.ledger_state()[0]),
        },
    )
    elapsed = time.monotonic() - started
    output = run.stdout + run.stderr
    cases = re.search(r"(\d+) generated, (\d+) passed", output)
    operations = re.search(r"Tested: (\d+)", output)
    figures = {
        "seconds": round(elapsed),
        "operations": int(operations.group(1)) if operations else None,
        "cases": int(cases.group(1)) if cases else None,
        "passed": int(cases.group(2)) if cases else None,
        "excluded_checks": EXCLUDED,
    }
    record_property("schemathesis", str(figures))
    print(f"\n[figures] schemathesis: {figures}")
    assert run.returncode == 0, output[-6000:]
    assert cases is not None and cases.group(1) == cases.group(2), output[-3000:]
    assert operations is not None and int(operations.group(1)) >= 30
    assert server.keys["admin"] not in output
