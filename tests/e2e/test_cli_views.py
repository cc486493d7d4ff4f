"""The view commands of the ``stockledger`` CLI, run as a separate process against the database
the live server writes to: ``projections status|rebuild``, ``history`` and ``availability``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

NewId = Callable[[str], str]
Cli = Callable[..., subprocess.CompletedProcess[str]]

STOCKLEDGER = Path(sys.executable).parent / "stockledger"
VIEWS = ("availability", "orders", "discrepancies")
VIEW_TABLES = {
    "view_availability": "position_id",
    "view_locations": "code",
    "view_orders": "order_id",
    "view_discrepancies": "position_id",
}
UNREACHABLE_DATABASE = "postgresql://nobody@127.0.0.1:1/none"


def _environment(database_url: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKLEDGER_")}
    # Wide, uncoloured, UTF-8 output, so tables are not wrapped and read the same everywhere.
    env.update(COLUMNS="220", PYTHONIOENCODING="utf-8", NO_COLOR="1", TERM="dumb")
    if database_url is not None:
        env["STOCKLEDGER_DATABASE_URL"] = database_url
    return env


def _run(database_url: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(STOCKLEDGER), *args],
        env=_environment(database_url),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def cli(served_database_url: str) -> Cli:
    """Runs ``stockledger ARGS...`` against the live server's database."""

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return _run(served_database_url, *args)

    return run


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr
    return result.stdout


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The command failed with exit 1 and a single readable line (no traceback)."""
    assert result.returncode == 1, f"{result.stdout}\n{result.stderr}"
    output = (result.stdout + result.stderr).strip()
    assert "Traceback" not in output
    lines = output.splitlines()
    assert len(lines) == 1, output
    assert lines[0].startswith("error: ")
    return lines[0]


def _figures(output: str) -> dict[str, str]:
    """``figure │ value`` rows of a printed table."""
    return dict(re.findall(r"^\W*([a-z_]+)\s*[│|]\s*(\S+)\s*[│|]", output, flags=re.MULTILINE))


def _post(admin: httpx.Client, path: str, body: dict[str, Any], method: str = "POST") -> int:
    response = admin.request(method, path, json=body)
    assert response.status_code in (200, 201), response.text
    position: int = response.json()["position"]
    return position


def _catch_up(admin: httpx.Client, position: int) -> None:
    """Waits (with read-your-writes) until every view has reached the position."""
    for path in ("/v1/availability/ANY", "/v1/orders", "/v1/discrepancies"):
        response = admin.get(path, params={"min_position": position})
        assert response.status_code == 200, response.text


def _dump_views(database_url: str) -> dict[str, list[tuple[Any, ...]]]:
    with psycopg.connect(database_url) as connection:
        return {
            name: connection.execute(f"SELECT * FROM {name} ORDER BY {key}").fetchall()
            for name, key in VIEW_TABLES.items()
        }


@pytest.fixture
def busy_ledger(admin: httpx.Client, fixed: Any, new_id: NewId) -> dict[str, Any]:
    """Stock, an order and a discrepancy, all caught up by every view."""
    sku = new_id("SKU")
    _post(
        admin,
        "/v1/stock/receipts",
        {"sku": sku, "location": fixed.warehouse, "quantity": 8},
    )
    order = admin.post(
        "/v1/orders",
        json={
            "channel": "shopify",
            "external_id": new_id("SO"),
            "lines": [{"line_id": "1", "sku": sku, "quantity": 3}],
        },
    ).json()
    _post(admin, f"/v1/orders/{order['order_id']}/payment", {})
    last = _post(
        admin,
        "/v1/pos/transactions",
        {
            "transaction_id": new_id("POS"),
            "location": fixed.store_b,
            "occurred_at": "2025-06-01T14:05:00+02:00",
            "lines": [{"sku": sku, "quantity": 2}],
        },
    )
    _catch_up(admin, last)
    return {"sku": sku, "order_id": order["order_id"], "position": last}


# --------------------------------------------------------------------------- projections


def test_projections_status_shows_every_view_with_no_lag_once_caught_up(
    cli: Cli, busy_ledger: dict[str, Any]
) -> None:
    output = _ok(cli("projections", "status"))

    head = int(re.search(r"log head: (\d+)", output).group(1))  # type: ignore[union-attr]
    assert head >= busy_ledger["position"]
    for name in VIEWS:
        row = re.search(rf"^\W*{name}\W+(\d+)\W+(\d+)\W", output, flags=re.MULTILINE)
        assert row, output
        assert (int(row.group(1)), int(row.group(2))) == (head, 0), output


def test_rebuilding_every_view_reports_its_speed_and_changes_no_view(
    cli: Cli,
    busy_ledger: dict[str, Any],
    served_database_url: str,
    client_for: Callable[..., httpx.Client],
) -> None:
    before = _dump_views(served_database_url)
    reader = client_for("reader")
    path = f"/v1/availability/{busy_ledger['sku']}"
    expected = reader.get(path).json()["locations"]
    answers: list[tuple[int, Any]] = []
    done = threading.Event()

    def keep_reading() -> None:
        while not done.is_set():
            response = reader.get(path)
            answers.append((response.status_code, response.json().get("locations")))

    readers = threading.Thread(target=keep_reading)
    readers.start()
    try:
        rebuilt = cli("projections", "rebuild", "--all")
    finally:
        done.set()
        readers.join()

    output = _ok(rebuilt)
    for name in VIEWS:
        assert re.search(
            rf"^{name}: \d+ events in [\d.]+ s \([\d,]+ events/s\), now at position \d+$",
            output,
            flags=re.MULTILINE,
        ), output
    assert _dump_views(served_database_url) == before
    # Reads went on throughout, and always saw the same figures.
    assert answers
    assert {status for status, _ in answers} == {200}
    assert all(locations == expected for _, locations in answers)


def test_a_view_can_be_rebuilt_again_and_then_keeps_up_with_new_writes(
    cli: Cli,
    admin: httpx.Client,
    busy_ledger: dict[str, Any],
    fixed: Any,
    served_database_url: str,
) -> None:
    for _ in range(2):
        output = _ok(cli("projections", "rebuild", "availability"))
        assert "events/s" in output
        assert "orders:" not in output

    position = _post(
        admin,
        "/v1/stock/receipts",
        {"sku": busy_ledger["sku"], "location": fixed.warehouse, "quantity": 1},
    )
    response = admin.get(
        f"/v1/availability/{busy_ledger['sku']}", params={"min_position": position}
    )

    assert response.status_code == 200, response.text
    [warehouse] = [r for r in response.json()["locations"] if r["location"] == fixed.warehouse]
    assert warehouse["available"] == 8 - 3 + 1
    assert warehouse["committed"] == 3
    with psycopg.connect(served_database_url) as connection:
        leftovers = connection.execute(
            "SELECT tablename FROM pg_tables WHERE tablename LIKE 'view\\_%\\_\\_%'"
        ).fetchall()
    assert leftovers == []


def test_rebuilding_an_unknown_view_fails_with_one_line(cli: Cli) -> None:
    line = _one_line_error(cli("projections", "rebuild", "nonsense"))

    assert "nonsense" in line
    assert all(name in line for name in VIEWS)


def test_rebuild_needs_a_view_name_or_all(cli: Cli) -> None:
    _one_line_error(cli("projections", "rebuild"))
    _one_line_error(cli("projections", "rebuild", "orders", "--all"))


# --------------------------------------------------------------------------- history


def test_history_of_a_position_lists_its_events_and_current_figures(
    cli: Cli, admin: httpx.Client, fixed: Any, new_id: NewId
) -> None:
    sku = f"{new_id('TEE')}/BLUE"
    _post(admin, "/v1/stock/receipts", {"sku": sku, "location": fixed.warehouse, "quantity": 10})
    _post(
        admin,
        "/v1/stock/adjustments",
        {"sku": sku, "location": fixed.warehouse, "delta": -4, "reason": "shrinkage"},
    )

    output = _ok(cli("history", sku, fixed.warehouse))

    assert output.index("Opened") < output.index("Received") < output.index("Adjusted")
    assert f"{sku} at {fixed.warehouse} as of now:" in output
    figures = _figures(output)
    assert (figures["available"], figures["on_hand"], figures["available_to_sell"]) == (
        "6",
        "6",
        "6",
    )


def test_history_as_of_a_moment_shows_the_figures_of_that_moment(
    cli: Cli, admin: httpx.Client, fixed: Any, new_id: NewId
) -> None:
    sku = new_id("SKU")
    _post(admin, "/v1/stock/receipts", {"sku": sku, "location": fixed.warehouse, "quantity": 10})
    time.sleep(0.002)
    between = datetime.now(UTC).isoformat()
    time.sleep(0.002)
    _post(
        admin,
        "/v1/stock/adjustments",
        {"sku": sku, "location": fixed.warehouse, "delta": -4, "reason": "shrinkage"},
    )

    then = _ok(cli("history", sku, fixed.warehouse, "--as-of", between))
    now = _ok(cli("history", sku, fixed.warehouse))

    assert _figures(then)["available"] == "10"
    assert "Adjusted" not in then
    assert f"as of {between}" in then
    assert _figures(now)["available"] == "6"


def test_history_of_an_order_lists_its_events(cli: Cli, busy_ledger: dict[str, Any]) -> None:
    output = _ok(cli("history", "--order", busy_ledger["order_id"]))

    assert output.index("Placed") < output.index("LinesReserved")
    assert output.index("LinesReserved") < output.index("PaymentAuthorized")


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("history", "NEVER-STOCKED", "E2E-WH"), ("NEVER-STOCKED", "E2E-WH")),
        (("history", "--order", "not-an-id"), ("not-an-id",)),
        (("history", "--order", "00000000-0000-4000-8000-000000000000"), ("not known",)),
        (("history", "bad sku!", "E2E-WH"), ("SKU",)),
        (("history",), ("--order",)),
    ],
)
def test_history_of_nothing_known_fails_with_one_line(
    cli: Cli, live_server: Any, args: tuple[str, ...], words: tuple[str, ...]
) -> None:
    line = _one_line_error(cli(*args))

    assert all(word in line for word in words), line


# --------------------------------------------------------------------------- availability


def test_availability_on_one_channel_prints_its_ats(
    cli: Cli, admin: httpx.Client, fixed: Any, new_id: NewId
) -> None:
    sku = new_id("SKU")
    _post(admin, "/v1/stock/receipts", {"sku": sku, "location": fixed.warehouse, "quantity": 7})
    _post(admin, "/v1/stock/receipts", {"sku": sku, "location": fixed.store_a, "quantity": 5})
    last = _post(
        admin,
        "/v1/stock/safety-stock",
        {"sku": sku, "location": fixed.warehouse, "quantity": 2},
        method="PUT",
    )
    _catch_up(admin, last)

    shopify = _ok(cli("availability", sku, "--channel", "shopify"))
    pos = _ok(cli("availability", sku, "--channel", "pos"))
    elsewhere = _ok(cli("availability", sku, "--channel", "marketplace"))

    assert shopify.strip() == f"{sku} on shopify: 5 available to sell"
    assert pos.strip() == f"{sku} on pos: 5 available to sell"
    assert elsewhere.strip() == f"{sku} on marketplace: 0 available to sell"


def test_availability_prints_every_location_and_channel(
    cli: Cli, busy_ledger: dict[str, Any], fixed: Any
) -> None:
    output = _ok(cli("availability", busy_ledger["sku"]))

    rows = {
        match[0]: match[1:]
        for match in re.findall(
            r"^\W*([A-Z0-9-]+)\s*[│|]\s*(-?\d+)\s*[│|]\s*(-?\d+)\s*[│|]\s*(-?\d+)\s*[│|]\s*(-?\d+)",
            output,
            flags=re.MULTILINE,
        )
    }
    # on_hand, available, reserved, committed
    assert rows[fixed.warehouse] == ("8", "5", "0", "3")
    assert rows[fixed.store_b] == ("-2", "-2", "0", "0")
    assert "shopify: 5 available to sell" in output
    assert "pos: 0 available to sell" in output
    assert f"(view at position {busy_ledger['position']})" in output


def test_availability_of_a_malformed_sku_fails_with_one_line(cli: Cli) -> None:
    _one_line_error(cli("availability", "bad sku!"))


# --------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    "args",
    [
        ("projections", "status"),
        ("projections", "rebuild", "--all"),
        ("projections", "rebuild", "orders"),
        ("history", "SKU-1", "E2E-WH"),
        ("history", "--order", "00000000-0000-4000-8000-000000000000"),
        ("availability", "SKU-1"),
    ],
)
def test_a_view_command_without_a_database_url_fails_with_one_line(args: tuple[str, ...]) -> None:
    line = _one_line_error(_run(None, *args))

    assert line == "error: STOCKLEDGER_DATABASE_URL is not set"


def test_a_view_command_with_a_bad_ledger_setting_fails_with_one_line_naming_it() -> None:
    result = subprocess.run(
        [str(STOCKLEDGER), "projections", "status"],
        env=_environment(UNREACHABLE_DATABASE) | {"STOCKLEDGER_AGGREGATE_CACHE_SIZE": "many"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    line = _one_line_error(result)

    assert line.startswith("error: STOCKLEDGER_AGGREGATE_CACHE_SIZE: ")


@pytest.mark.parametrize(
    "args", [("projections", "status"), ("availability", "SKU-1", "--channel", "shopify")]
)
def test_a_view_command_against_an_unreachable_database_fails_with_one_line(
    args: tuple[str, ...],
) -> None:
    line = _one_line_error(_run(UNREACHABLE_DATABASE, *args))

    assert line.startswith("error: database:")
