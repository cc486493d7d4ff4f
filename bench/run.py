"""``python -m bench.run [--quick] [--only 1,3] [--out bench/results]``: the benchmark suite.

Each part measures stockledger beside its baseline in the same run, prints a table (measured,
baseline, ratio, target, pass/fail) and writes ``<out>/<part>.json``; the run ends with a summary
table, ``<out>/latest.json`` (every part's latest result) and ``<out>/latest.md``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import signal
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import (
    BENCH_DIR,
    Context,
    PartResult,
    console,
    drop_leftover_databases,
    find_postgres,
    loadavg,
    machine_info,
    markdown_table,
    print_part,
    write_json,
)

PARTS = {
    "1": "bench.p1_commands",
    "2": "bench.p2_http_writes",
    "3": "bench.p3_http_reads",
    "4": "bench.p4_rebuild",
    "5": "bench.p5_erp_relay",
    "6": "bench.p6_hot_sku",
    "7": "bench.p7_visibility",
    "8": "bench.p8_scale",
}
README = BENCH_DIR / "README.md"
TABLE_START = "<!-- bench:table:start -->"
TABLE_END = "<!-- bench:table:end -->"


def _exit_on_sigterm(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short pass: small data, short runs")
    parser.add_argument("--only", default="", help="comma-separated part numbers, e.g. 1,3")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results", help="results folder")
    parser.add_argument("--no-profile", action="store_true", help="no py-spy profile on a miss")
    parser.add_argument("--keep-databases", action="store_true", help="keep the bench databases")
    parser.add_argument(
        "--database-url",
        default=None,
        help="admin URL of the PostgreSQL server to create bench databases on "
        "(default: 127.0.0.1:5432 if it answers, else an embedded server)",
    )
    parser.add_argument(
        "--nats-url", default=None, help="JetStream server (default: an embedded one for the run)"
    )
    parser.add_argument(
        "--update-readme", action="store_true", help="write the summary table into bench/README.md"
    )
    return parser.parse_args(argv)


def run_part(ctx: Context, number: str) -> PartResult:
    module = importlib.import_module(PARTS[number])
    title = getattr(module, "TITLE", module.__name__)
    console.rule(f"[bold]part {number}[/bold]: {title}")
    started = time.perf_counter()
    before = loadavg()
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    try:
        result: PartResult = module.run(ctx)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as error:
        result = PartResult(f"p{number}", title)
        result.error = f"{type(error).__name__}: {error}"
        result.details["traceback"] = traceback.format_exc()
        console.print_exception(max_frames=8)
    result.seconds = time.perf_counter() - started
    result.quick = ctx.quick
    result.started_at = started_at
    result.loadavg_before = before
    result.loadavg_after = loadavg()
    print_part(result)
    write_json(ctx.out / f"{result.part}.json", result.to_json())
    return result


def update_latest(ctx: Context, results: list[PartResult], argv: list[str], began: str) -> None:
    path = ctx.out / "latest.json"
    latest: dict[str, Any] = {}
    if path.exists():
        try:
            latest = json.loads(path.read_text())
        except ValueError:
            latest = {}
    parts = latest.get("parts", {})
    for result in results:
        parts[result.part] = result.to_json()
    latest = {
        "run": {
            "command": "python -m bench.run " + " ".join(argv),
            "quick": ctx.quick,
            "started_at": began,
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": machine_info(),
            "parts_run": [result.part for result in results],
        },
        "parts": dict(sorted(parts.items())),
    }
    write_json(path, latest)
    table = markdown_table(results)
    loads = [r.loadavg_before[0] for r in results if r.loadavg_before] + [
        r.loadavg_after[0] for r in results if r.loadavg_after
    ]
    load = f"; 1-minute load average {min(loads):.1f}-{max(loads):.1f}" if loads else ""
    header = (
        f"Command: `python -m bench.run {' '.join(argv)}`, {began} "
        f"({'quick' if ctx.quick else 'full'} run, {machine_info().get('cpus')} CPUs{load})\n\n"
    )
    (ctx.out / "latest.md").write_text(header + table + "\n")


def write_readme_table(text: str) -> None:
    if not README.exists():
        return
    content = README.read_text()
    if TABLE_START not in content or TABLE_END not in content:
        return
    before, rest = content.split(TABLE_START, 1)
    _, after = rest.split(TABLE_END, 1)
    README.write_text(f"{before}{TABLE_START}\n{text}\n{TABLE_END}{after}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    wanted = [p.strip() for p in args.only.split(",") if p.strip()] or list(PARTS)
    unknown = [p for p in wanted if p not in PARTS]
    if unknown:
        console.print(f"[red]unknown parts: {', '.join(unknown)}[/red] (1-8)")
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    began = datetime.now(UTC).isoformat(timespec="seconds")
    ctx = Context(
        quick=args.quick,
        out=args.out.resolve(),
        admin_url="",
        profile=not args.no_profile,
        keep_databases=args.keep_databases,
        nats_url_option=args.nats_url,
    )
    results: list[PartResult] = []
    try:
        ctx.admin_url, ctx._embedded_pg = find_postgres(ctx.workdir, args.database_url)
        if not args.keep_databases:
            left = drop_leftover_databases(ctx.admin_url)
            if left:
                console.print(
                    f"[dim]dropped {len(left)} bench databases left by an earlier run[/dim]"
                )
        console.print(
            f"stockledger bench: {'quick' if args.quick else 'full'} run of parts "
            f"{', '.join(wanted)}; PostgreSQL {ctx.admin_url.rsplit('@', 1)[-1]}; "
            f"results in {ctx.out}"
        )
        for number in wanted:
            results.append(run_part(ctx, number))
    finally:
        ctx.close()
        if results:
            update_latest(ctx, results, argv, began)
    console.rule("[bold]summary[/bold]")
    from rich.table import Table

    from bench.common import check_row

    table = Table(title_justify="left")
    for column in ("part", "measure", "measured", "baseline", "ratio", "target", "result"):
        table.add_column(column)
    for result in results:
        if result.error:
            table.add_row(
                result.part, "error", result.error[:60], "", "", "", "[bold red]ERROR[/bold red]"
            )
        for check in result.checks:
            table.add_row(result.part, *check_row(check))
    console.print(table)
    console.print(f"JSON: {ctx.out / 'latest.json'} (and one file per part)")
    if args.update_readme:
        write_readme_table((ctx.out / "latest.md").read_text().rstrip())
        console.print(f"table written into {README}")
    return 0 if all(result.passed for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
