"""Server processes for the HTTP parts: the product (``stockledger serve``) and a trivial app.

Both run through the product's own ``serve`` command, so the uvicorn configuration (event loop,
HTTP parser, logging, lifespan) is the product's whatever it becomes; for the trivial baseline,
``bench.launch`` swaps the application for a bare FastAPI app with one route. Each server is a
separate process, so the load generator and the server never share a GIL.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from adapters.embedded import free_tcp_port
from bench.common import REPO_DIR, VENV_BIN, Context, process_tree

TRIVIAL_PATH = "/bench/trivial"


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path
    rss_samples: list[int] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.process.pid

    def memory(self) -> dict[str, int]:
        """VmRSS and VmHWM (peak) of the server process with its children (the writer), in
        KiB: each summed over the processes."""
        found: dict[str, int] = {}
        for pid in process_tree(self.pid):
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    key, _, value = line.partition(":")
                    if key in ("VmRSS", "VmHWM"):
                        found[key] = found.get(key, 0) + int(value.split()[0])
        return found

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


def _environment(ctx: Context, database_url: str, nats_url: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKLEDGER_")}
    env.update(
        {
            "STOCKLEDGER_DATABASE_URL": database_url,
            "STOCKLEDGER_ADMIN_KEY": ctx.admin_key,
            "STOCKLEDGER_DATA_DIR": str(ctx.workdir / "data"),
            # Reservations must not expire under the benchmark's feet.
            "STOCKLEDGER_RESERVATION_TTL": "0",
        }
    )
    if nats_url:
        env["STOCKLEDGER_NATS_URL"] = nats_url
    return env


@contextlib.contextmanager
def running_server(
    ctx: Context,
    database_url: str,
    *,
    kind: str = "product",
    api_only: bool = True,
    nats_url: str | None = None,
    label: str = "server",
    startup_timeout: float = 90.0,
) -> Iterator[Server]:
    """Starts a server process, waits until it answers /health, and stops it afterwards.

    ``kind`` is ``product`` (``stockledger serve``) or ``trivial`` (the same command serving a
    bare FastAPI app). ``nats_url`` defaults to the benchmark's embedded NATS.
    """
    port = free_tcp_port()
    if nats_url is None:
        nats_url = ctx.nats_url()
    args = ["serve", "--host", "127.0.0.1", "--port", str(port)]
    if api_only:
        args.append("--api-only")
    if kind == "product":
        command = [str(VENV_BIN / "stockledger"), *args]
    else:
        command = [sys.executable, "-m", "bench.launch", kind, *args]
    log_path = ctx.workdir / f"{label}-{port}.log"
    log = log_path.open("wb")
    process = subprocess.Popen(
        command,
        cwd=REPO_DIR,
        env=_environment(ctx, database_url, nats_url),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    server = Server(process, f"http://127.0.0.1:{port}", log_path)
    try:
        health = TRIVIAL_PATH if kind == "trivial" else "/health"
        deadline = time.monotonic() + startup_timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{label} exited at start-up:\n{server.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(server.base_url + health, timeout=1.0).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{label} did not answer in {startup_timeout}s:\n{server.log_tail()}"
                )
            time.sleep(0.2)
        yield server
    finally:
        stop_process(process)
        log.close()


def stop_process(process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """SIGTERM (graceful shutdown), then SIGKILL; only the process this benchmark started."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            process.wait(10)
