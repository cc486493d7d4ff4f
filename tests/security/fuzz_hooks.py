"""Schemathesis hooks for ``test_schemathesis.py`` (loaded through ``SCHEMATHESIS_HOOKS``).

``min_position`` asks a read to wait until the views have reached that position, and to give up
with 504 ``projection-lag`` after 5 s (SPEC §3; ``tests/e2e/test_reads.py`` holds it to that). A
position past the log's head is simply not reached yet, so a fuzzer choosing positions at random
would make almost every such read wait its 5 s and end in that documented 504. Valid positions
past the head the run started with are therefore folded back under it; negative, huge and
non-integer values, which must be refused with 422, are sent as generated.
"""

from __future__ import annotations

import os
from typing import Any

import schemathesis

HEAD = int(os.environ.get("STOCKLEDGER_FUZZ_HEAD", "0"))
LARGEST_VALID = 2**62


def _fold(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool) and HEAD < value <= LARGEST_VALID:
        return value % (HEAD + 1)
    if isinstance(value, str) and value.isdigit() and HEAD < int(value) <= LARGEST_VALID:
        return str(int(value) % (HEAD + 1))
    return value


@schemathesis.hook
def map_case(context: Any, case: Any) -> Any:
    if case.query and "min_position" in case.query:
        case.query["min_position"] = _fold(case.query["min_position"])
    return case
