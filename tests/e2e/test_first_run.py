"""First run: ``stockledger serve`` with no configuration, on a fresh data folder, then again."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

STOCKLEDGER = str(Path(sys.executable).with_name("stockledger"))
READY_TIMEOUT_SECONDS = 90.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve(data_dir: Path, port: int) -> tuple[subprocess.Popen[str], float]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("STOCKLEDGER_")}
    env.update({"STOCKLEDGER_DATA_DIR": str(data_dir), "STOCKLEDGER_PORT": str(port)})
    started = time.monotonic()
    process = subprocess.Popen(
        [STOCKLEDGER, "serve"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    while time.monotonic() - started < READY_TIMEOUT_SECONDS:
        assert process.poll() is None, process.stdout.read() if process.stdout else ""
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                return process, time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    process.kill()
    raise AssertionError("serve did not become ready")


def _stop(process: subprocess.Popen[str]) -> str:
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=60)
    return output


def _data_processes(data_dir: Path) -> list[str]:
    listing = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True)
    return [line for line in listing.stdout.splitlines() if str(data_dir) in line]


def test_serve_with_no_configuration_starts_embedded_servers_and_keeps_data(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    port = _free_port()

    first, first_ready = _serve(data_dir, port)
    try:
        key = (data_dir / "admin.key").read_text().strip()
        client = httpx.Client(
            base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"}
        )
        client.put(
            "/v1/locations/WH1",
            json={
                "name": "Main",
                "kind": "warehouse",
                "channels": ["shopify"],
                "priority": 1,
                "external_ids": {},
            },
        ).raise_for_status()
        receipt = client.post(
            "/v1/stock/receipts", json={"sku": "FIRST-RUN", "location": "WH1", "quantity": 7}
        )
        assert receipt.status_code == 201
    finally:
        output = _stop(first)
    assert "data folder:" in output and str(data_dir) in output
    assert "admin key (created and kept in" in output and key in output
    assert _data_processes(data_dir) == [], "the embedded servers outlived serve"

    second, second_ready = _serve(data_dir, port)
    try:
        assert (data_dir / "admin.key").read_text().strip() == key
        view = client.get(
            "/v1/availability/FIRST-RUN", params={"min_position": receipt.json()["position"]}
        )
        assert view.status_code == 200
        assert view.json()["channels"] == {"shopify": 7}
    finally:
        _stop(second)
        client.close()
    print(
        f"ready on a fresh data folder in {first_ready:.1f} s, on a second start in "
        f"{second_ready:.1f} s"
    )
