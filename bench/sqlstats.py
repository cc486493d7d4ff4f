"""Which SQL statements a workload runs, how often and how long they take (this process only).

Patches ``psycopg.Cursor.execute`` while the block runs, so it is used in a diagnostic run after
the measured one, never during it. The empty statement is psycopg_pool's connection check
(``check=ConnectionPool.check_connection``): one round trip per connection checkout.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import psycopg


@contextlib.contextmanager
def counting_statements() -> Iterator[dict[str, Any]]:
    seconds: dict[str, float] = {}
    counts: Counter[str] = Counter()
    lock = threading.Lock()
    original = psycopg.Cursor.execute
    found: dict[str, Any] = {}

    def execute(self: Any, query: Any, params: Any = None, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return original(self, query, params, **kwargs)
        finally:
            elapsed = time.perf_counter() - began
            text = query if isinstance(query, str | bytes) else query.as_string(self.connection)
            if isinstance(text, bytes):
                text = text.decode(errors="replace")
            key = " ".join(text.split())[:110] or "'' (connection check)"
            with lock:
                seconds[key] = seconds.get(key, 0.0) + elapsed
                counts[key] += 1

    psycopg.Cursor.execute = execute  # type: ignore[method-assign]
    try:
        yield found
    finally:
        psycopg.Cursor.execute = original  # type: ignore[method-assign]
        found["statements"] = [
            {
                "statement": key,
                "count": counts[key],
                "seconds": seconds[key],
                "mean_ms": 1000 * seconds[key] / counts[key],
            }
            for key in sorted(seconds, key=seconds.__getitem__, reverse=True)[:15]
        ]


def per_operation(found: dict[str, Any], operations: int) -> list[str]:
    """Readable lines: statements per operation and their mean time."""
    lines = []
    for entry in found.get("statements", []):
        entry["per_operation"] = entry["count"] / max(operations, 1)
        lines.append(
            f"{entry['per_operation']:5.2f}/op  {entry['mean_ms']:6.2f} ms  {entry['statement']}"
        )
    return lines
