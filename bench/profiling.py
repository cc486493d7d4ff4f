"""Sampling profiles with py-spy, of this process or of a server process, and their hotspots.

py-spy samples from outside (no instrumentation, ``--nonblocking``), so the profiled run behaves
much like the measured one. The raw collapsed stacks are kept in ``<out>/profiles/``; the summary
lists the frames with the most self time and the project's own frames with the most total time.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench.common import VENV_BIN, console

# The product's code; bench/ frames (the load generators) are left out of "project" rankings.
PROJECT_DIRS = ("domain/", "adapters/", "projections/", "api/")
SAMPLES_PER_SECOND = 250
_PROJECT = re.compile(r"/(domain|adapters|projections|api|bench)/[^/]+\.py$")
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def py_spy() -> str | None:
    candidate = VENV_BIN / "py-spy"
    if candidate.exists():
        return str(candidate)
    return shutil.which("py-spy")


@contextlib.contextmanager
def sampling(
    pid: int,
    output: Path,
    *,
    rate: int = SAMPLES_PER_SECOND,
    gil: bool = False,
    idle: bool = False,
    only_thread: str | None = None,
) -> Iterator[dict[str, Any]]:
    """Records ``pid`` while the block runs; the summary is in the yielded dict afterwards.

    By default only threads running Python or C code are sampled (CPU time); ``idle`` samples
    waiting threads too (wall time: where a single-threaded loop waits for the database)."""
    summary: dict[str, Any] = {
        "mode": (
            "wall time (idle threads included)"
            if idle
            else "the thread holding the GIL"
            if gil
            else "CPU time (active threads)"
        )
    }
    binary = py_spy()
    if binary is None:
        summary["error"] = "py-spy is not installed (pip install -e '.[bench]')"
        yield summary
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    command = [
        binary,
        "record",
        "--pid",
        str(pid),
        "--rate",
        str(rate),
        "--format",
        "raw",
        "--output",
        str(output),
        "--nonblocking",
        "--threads",
        "--subprocesses",  # a server's writer process
    ]
    if gil:
        command.append("--gil")
    if idle:
        command.append("--idle")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    time.sleep(0.5)  # let it attach
    try:
        yield summary
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
        try:
            log = process.communicate(timeout=60)[0].decode(errors="replace")
        except subprocess.TimeoutExpired:
            process.kill()
            log = process.communicate()[0].decode(errors="replace")
        if output.exists():
            summary.update(summarize_raw(output, only_thread=only_thread))
            summary["file"] = str(output)
        else:
            summary["error"] = log.strip().splitlines()[-1] if log.strip() else "no output"


def profile_call(
    name: str,
    output_dir: Path,
    workload: Callable[[], Any],
    *,
    idle: bool = False,
    gil: bool = False,
) -> dict[str, Any]:
    """Profiles this process while ``workload()`` runs. With ``gil``, only the thread holding
    the GIL is sampled, and ``gil_held`` is the share of the run's time that one did."""
    output = output_dir / f"{name}.txt"
    # Wall time: every idle thread would count, so keep to the thread doing the work.
    only = "MainThread" if idle else None
    with sampling(os.getpid(), output, idle=idle, gil=gil, only_thread=only) as summary:
        started = time.monotonic()
        workload()
        seconds = time.monotonic() - started
    if gil and summary.get("samples"):
        summary["gil_held"] = summary["samples"] / (seconds * SAMPLES_PER_SECOND)
    return summary


def _frame_key(frame: str) -> str:
    match = _FRAME.match(frame)
    if not match:
        return frame
    path = match.group("file") or ""
    return f"{match.group('func')} ({_short(path)})"


def _short(path: str) -> str:
    """py-spy already prints paths relative to sys.path; shorten the absolute ones too."""
    if not path.startswith("/"):
        return path
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1]
    match = _PROJECT.search(path)
    if match:
        return path[match.start(1) :]
    return path.rsplit("/", 1)[-1]


def _is_project(frame: str) -> bool:
    return any(f"({d}" in frame for d in PROJECT_DIRS)


def summarize_raw(path: Path, top: int = 20, only_thread: str | None = None) -> dict[str, Any]:
    """Self and total time per function (line numbers folded), from py-spy's raw stacks;
    ``only_thread`` keeps the samples of threads whose name contains it."""
    self_time: Counter[str] = Counter()
    total_time: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    by_thread: dict[str, tuple[Counter[str], Counter[str]]] = {}
    samples = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        thread = "main"
        if frames and frames[0].startswith(("thread (", "process ")):
            # "thread (1234): name": fold the ids away so threads of a pool add up
            thread = re.sub(r"\s*\(\d+\)|0x[0-9a-fA-F]+|(?<=-)\d+", "", frames[0])
            frames = frames[1:]
        if only_thread and only_thread not in thread:
            continue
        keys = [_frame_key(frame) for frame in frames]
        if any(key.startswith("sampling (bench/profiling.py") for key in keys):
            continue  # the profiler's own start-up and teardown
        threads[thread] += count
        samples += count
        own_self, own_total = by_thread.setdefault(thread, (Counter(), Counter()))
        if keys:
            self_time[keys[-1]] += count
            own_self[keys[-1]] += count
        for key in set(keys):
            total_time[key] += count
            own_total[key] += count

    def share(counter: Counter[str], only_project: bool = False) -> list[dict[str, Any]]:
        return _share(counter, samples, top, only_project=only_project)

    busiest = threads.most_common(1)[0][0] if threads else None
    busiest_summary: dict[str, Any] = {}
    if busiest is not None:
        own_self, own_total = by_thread[busiest]
        busiest_summary = {
            "thread": busiest,
            "samples": threads[busiest],
            "top_self": _share(own_self, samples, top),
            "top_total_project": _share(own_total, samples, top, only_project=True),
        }
    return {
        "samples": samples,
        "busiest_thread": busiest_summary,
        "top_self": share(self_time),
        "top_total_project": share(total_time, only_project=True),
        "top_total": share(total_time),
        "threads": {name: count for name, count in threads.most_common(12)},
    }


def _share(
    counter: Counter[str], samples: int, top: int, *, only_project: bool = False
) -> list[dict[str, Any]]:
    """The top frames with their share of all samples (so thread shares add up)."""
    rows = []
    for frame, count in counter.most_common():
        if only_project and not _is_project(frame):
            continue
        rows.append({"frame": frame, "samples": count, "percent": 100.0 * count / max(samples, 1)})
        if len(rows) >= top:
            break
    return rows


def print_profile(name: str, summary: dict[str, Any], lines: int = 12) -> None:
    if summary.get("error"):
        console.print(f"  [yellow]profile {name}: {summary['error']}[/yellow]")
        return
    console.print(
        f"  [yellow]profile {name}[/yellow] ({summary.get('mode', 'CPU time')}): "
        f"{summary.get('samples')} samples, {summary.get('file')}"
    )
    console.print("    self time:")
    for entry in summary.get("top_self", [])[:lines]:
        console.print(f"      {entry['percent']:5.1f}%  {entry['frame']}")
    console.print("    total time, project code:")
    for entry in summary.get("top_total_project", [])[:lines]:
        console.print(f"      {entry['percent']:5.1f}%  {entry['frame']}")
    threads = summary.get("threads", {})
    if threads:
        shares = ", ".join(
            f"{name} {100.0 * count / max(summary['samples'], 1):.0f}%"
            for name, count in list(threads.items())[:6]
        )
        console.print(f"    threads (share of samples): {shares}")
    busiest = summary.get("busiest_thread") or {}
    if busiest:
        console.print(f"    busiest thread {busiest['thread']!r}, self time:")
        for entry in busiest.get("top_self", [])[:lines]:
            console.print(f"      {entry['percent']:5.1f}%  {entry['frame']}")
