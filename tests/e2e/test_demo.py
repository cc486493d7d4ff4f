"""``stockledger demo``: a retail day through the real API, its figures checked with the ledger."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from adapters.embedded import EmbeddedNats

STOCKLEDGER = str(Path(sys.executable).with_name("stockledger"))
POSTING_EVENTS = {
    "StockPosition.Received": "GOODS_RECEIPT",
    "StockPosition.Shipped": "GOODS_ISSUE",
    "StockPosition.Sold": "POS_SALE",
    "StockPosition.ReturnReceived": "CUSTOMER_RETURN",
    "StockPosition.TransferDispatched": "TRANSFER_OUT",
    "StockPosition.TransferReceived": "TRANSFER_IN",
    "Order.Refunded": "REFUND",
}


def _run_demo(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [STOCKLEDGER, "demo", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


@pytest.fixture
def demo_env(
    fresh_database_url: Callable[[], str],
    embedded_nats_factory: Callable[..., EmbeddedNats],
    tmp_path: Path,
) -> dict[str, str]:
    return {
        "STOCKLEDGER_DATABASE_URL": fresh_database_url(),
        "STOCKLEDGER_NATS_URL": embedded_nats_factory().url,
        "STOCKLEDGER_DATA_DIR": str(tmp_path / "data"),
        "STOCKLEDGER_PORT": "1",  # nothing answers there: the demo runs its own service
        "STOCKLEDGER_ADMIN_KEY": "demo-admin-key-0123456789",
        "COLUMNS": "160",
    }


def _figures(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.returncode == 0, result.stderr[-2000:]
    start = result.stdout.index("{")
    figures: dict[str, Any] = json.loads(result.stdout[start:])
    return figures


def test_demo_day_ends_with_the_figures_the_ledger_holds(demo_env: dict[str, str]) -> None:
    figures = _figures(_run_demo(demo_env, "--json"))

    assert figures["writes"] > 60
    assert len(figures["orders"]) == 13  # Shopify's fixture order and twelve web orders
    kinds = figures["postings_by_kind"]
    assert kinds["GOODS_RECEIPT"] == 18  # six SKUs received at three locations
    assert kinds["TRANSFER_OUT"] == 2 and kinds["TRANSFER_IN"] == 2
    assert kinds["REFUND"] == 2  # the fixture's refund and the day's refund
    assert kinds["POS_SALE"] == 14 and kinds["CUSTOMER_RETURN"] == 3
    assert kinds["GOODS_ISSUE"] >= 7

    with psycopg.connect(demo_env["STOCKLEDGER_DATABASE_URL"]) as connection:
        # Every posting the demo saw on NATS comes from an event in the log, one for one.
        rows = connection.execute("SELECT topic, count(*) FROM ledger_events GROUP BY topic")
        in_log: dict[str, int] = {}
        for topic, count in rows:
            kind = POSTING_EVENTS.get(topic.split(":", 1)[-1])
            if kind:
                in_log[kind] = in_log.get(kind, 0) + count
        assert kinds == in_log
        # The availability it printed is the view's.
        for channel, by_sku in figures["availability"].items():
            for sku, ats in by_sku.items():
                (expected,) = connection.execute(
                    "SELECT coalesce(sum(GREATEST(a.available - a.safety_stock, 0)), 0) "
                    "FROM view_availability a JOIN view_locations l ON l.code = a.location "
                    "WHERE a.sku = %s AND %s = ANY(l.channels)",
                    (sku, channel),
                ).fetchone() or (0,)
                assert ats == expected, (channel, sku)


def test_demo_refuses_an_unreachable_service_with_one_line(demo_env: dict[str, str]) -> None:
    result = _run_demo(demo_env, "--url", "http://127.0.0.1:1", "--key", "x")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: demo stopped: no stockledger answers at http://127.0.0.1:1"
    ]
