"""HTTP load with ``wrk`` (C, event-driven: it is not the bottleneck on two cores).

Each run gets a generated Lua script: a ``request()`` that makes the requests (unique order ids
for writes, random SKUs for reads), a ``response()`` that counts statuses, and a ``done()`` that
prints one ``BENCHJSON`` line with the request count, latency percentiles and status counts.
If wrk is missing, an asyncio httpx client takes its place (and says so).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import CHANNEL, order_body, percentile

_COMMON = r"""
local threads = {}
local counter = 0
ok, conflict, other, first_error = 0, 0, 0, ""
local token = os.getenv("BENCH_TOKEN") or ""
local nskus = tonumber(os.getenv("BENCH_SKUS") or "1000")
local run = os.getenv("BENCH_RUN") or "run"
local path = os.getenv("BENCH_PATH") or "/"
local channel = os.getenv("BENCH_CHANNEL") or "shopify"

function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

function init(args)
  math.randomseed(os.time() * 1000 + (tid or 0) * 7919)
end

function response(status, headers, body)
  if status >= 200 and status < 300 then
    ok = ok + 1
  elseif status == 409 then
    conflict = conflict + 1
  else
    other = other + 1
    if first_error == "" then
      first_error = tostring(status) .. " " .. string.sub(body or "", 1, 200)
    end
  end
end

local function sku(n)
  return string.format("SKU-%07d", n)
end

function done(summary, latency, requests)
  local o, c, x, fe = 0, 0, 0, ""
  for _, t in ipairs(threads) do
    o = o + (t:get("ok") or 0)
    c = c + (t:get("conflict") or 0)
    x = x + (t:get("other") or 0)
    if fe == "" then fe = t:get("first_error") or "" end
  end
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"mean":%.1f,"p50":%d,"p90":%d,"p95":%d,"p99":%d,"p999":%d,"max":%d},' ..
    '"ok":%d,"conflict":%d,"other":%d,"first_error":%q}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(95),
    latency:percentile(99), latency:percentile(99.9), latency.max,
    o, c, x, fe))
end
"""

REQUESTS = {
    "get": r"""
local headers = {}
if token ~= "" then headers["Authorization"] = "Bearer " .. token end
function request()
  return wrk.format("GET", path, headers)
end
""",
    "availability": r"""
local headers = {["Authorization"] = "Bearer " .. token}
function request()
  return wrk.format("GET", "/v1/availability/" .. sku(math.random(nskus)), headers)
end
""",
    "orders": r"""
function request()
  counter = counter + 1
  local ext = run .. "-" .. tid .. "-" .. counter
  local a = math.random(nskus)
  local b = math.random(nskus)
  if b == a then b = (a % nskus) + 1 end
  local body = '{"channel":"' .. channel .. '","external_id":"' .. ext .. '","lines":[' ..
    '{"line_id":"1","sku":"' .. sku(a) .. '","quantity":1},' ..
    '{"line_id":"2","sku":"' .. sku(b) .. '","quantity":1}]}'
  return wrk.format("POST", "/v1/orders", {
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. token,
    ["Idempotency-Key"] = ext,
  }, body)
end
""",
}


@dataclass
class HttpResult:
    requests: int
    seconds: float
    ok: int
    conflict: int
    other: int
    socket_errors: dict[str, int]
    latency_ms: dict[str, float]
    first_error: str = ""
    tool: str = "wrk"
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        """Successful (2xx) responses per second."""
        return self.ok / self.seconds if self.seconds else 0.0

    @property
    def all_rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "tool": self.tool,
            "requests": self.requests,
            "seconds": self.seconds,
            "ok": self.ok,
            "conflict": self.conflict,
            "other": self.other,
            "ok_per_second": self.rate,
            "requests_per_second": self.all_rate,
            "socket_errors": self.socket_errors,
            "latency_ms": self.latency_ms,
            "first_error": self.first_error,
            "cpu": self.raw.get("cpu", {}),
        }


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


def run_load(
    base_url: str,
    kind: str,
    *,
    seconds: float,
    connections: int,
    threads: int = 2,
    token: str = "",
    skus: int = 1000,
    path: str = "/",
    run_id: str = "run",
    workdir: Path,
    wait: bool = True,
) -> HttpResult | subprocess.Popen[bytes]:
    """Drives ``kind`` requests (get, availability, orders) at ``base_url``.

    With ``wait=False`` (wrk only) returns the running wrk process; ``finish()`` reads its result.
    """
    env = {
        **os.environ,
        "BENCH_TOKEN": token,
        "BENCH_SKUS": str(skus),
        "BENCH_RUN": run_id,
        "BENCH_PATH": path,
        "BENCH_CHANNEL": CHANNEL,
    }
    if not have_wrk():
        return asyncio.run(
            _httpx_load(base_url, kind, seconds, connections, token, skus, path, run_id)
        )
    script = workdir / f"wrk-{kind}.lua"
    script.write_text(_COMMON + REQUESTS[kind])
    command = [
        "wrk",
        f"-t{max(1, min(threads, connections))}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        base_url,
    ]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if not wait:
        return process
    return finish(process)


def finish(process: subprocess.Popen[bytes]) -> HttpResult:
    output = process.communicate()[0].decode(errors="replace")
    for line in output.splitlines():
        if line.startswith("BENCHJSON "):
            data = json.loads(line[len("BENCHJSON ") :])
            latency = {k: v / 1000.0 for k, v in data["latency_us"].items()}
            return HttpResult(
                requests=data["requests"],
                seconds=data["duration_us"] / 1e6,
                ok=data["ok"],
                conflict=data["conflict"],
                other=data["other"],
                socket_errors=data["errors"],
                latency_ms=latency,
                first_error=data.get("first_error", ""),
                raw=data,
            )
    raise RuntimeError(f"wrk gave no result:\n{output[-2000:]}")


# --- fallback: an asyncio client -------------------------------------------------------------
async def _httpx_load(
    base_url: str,
    kind: str,
    seconds: float,
    connections: int,
    token: str,
    skus: int,
    path: str,
    run_id: str,
) -> HttpResult:
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    latencies: list[float] = []
    counts = {"ok": 0, "conflict": 0, "other": 0}
    first_error = [""]
    end = time.perf_counter() + seconds

    async with httpx.AsyncClient(
        base_url=base_url, headers=headers, limits=limits, timeout=10
    ) as client:

        async def worker(number: int) -> None:
            n = 0
            while time.perf_counter() < end:
                n += 1
                started = time.perf_counter()
                if kind == "orders":
                    a, b = random.sample(range(1, skus + 1), 2)
                    ext = f"{run_id}-{number}-{n}"
                    response = await client.post(
                        "/v1/orders", json=order_body(ext, a, b), headers={"Idempotency-Key": ext}
                    )
                elif kind == "availability":
                    response = await client.get(
                        f"/v1/availability/SKU-{random.randint(1, skus):07d}"
                    )
                else:
                    response = await client.get(path)
                latencies.append(time.perf_counter() - started)
                if 200 <= response.status_code < 300:
                    counts["ok"] += 1
                elif response.status_code == 409:
                    counts["conflict"] += 1
                else:
                    counts["other"] += 1
                    first_error[0] = (
                        first_error[0] or f"{response.status_code} {response.text[:200]}"
                    )

        began = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(connections)))
        elapsed = time.perf_counter() - began
    return HttpResult(
        requests=len(latencies),
        seconds=elapsed,
        ok=counts["ok"],
        conflict=counts["conflict"],
        other=counts["other"],
        socket_errors={},
        latency_ms={
            "mean": sum(latencies) / max(len(latencies), 1) * 1000,
            **{f"p{p}": percentile(latencies, p) * 1000 for p in (50, 90, 95, 99)},
            "max": max(latencies, default=0) * 1000,
        },
        first_error=first_error[0],
        tool="httpx (wrk not found: the client may be the bottleneck)",
    )
