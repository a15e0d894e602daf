"""Load benchmark of the HTTP service on loopback: concurrency C, T seconds, one input row per request.

    python bench/bench_service.py [--concurrency 32] [--seconds 15] [--samples 50]

Starts `bentoml serve` with the bundled model on a free loopback port (or uses --url), then for each mode
(deterministic, mc with N = --samples) runs C closed-loop workers for T seconds (and at most
--max-requests requests) and reports successful requests/s, errors and p50/p99 latency.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


async def load(url: str, body: dict, concurrency: int, seconds: float, max_requests: int) -> dict[str, float]:
    latencies: list[float] = []
    errors: dict[str, int] = {}
    sent = 0
    stop_at = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:

        async def worker() -> None:
            nonlocal sent
            while time.monotonic() < stop_at and sent < max_requests:
                sent += 1
                start = time.perf_counter()
                try:
                    r = await client.post("/predict", json=body)
                    key = None if r.status_code == 200 else str(r.status_code)
                except httpx.HTTPError as err:
                    key = type(err).__name__
                if key is None:
                    latencies.append(time.perf_counter() - start)
                else:
                    errors[key] = errors.get(key, 0) + 1

        began = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.monotonic() - began
    q = np.quantile(latencies, [0.5, 0.99]) * 1e3 if latencies else [float("nan")] * 2
    return {
        "ok_per_s": len(latencies) / elapsed,
        "ok": len(latencies),
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "p50_ms": q[0],
        "p99_ms": q[1],
        "mean_ms": statistics.fmean(latencies) * 1e3 if latencies else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running server (default: start one)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--max-requests", type=int, default=200_000)
    args = parser.parse_args()
    row = np.random.default_rng(0).random(784).round(4).tolist()
    bodies = {
        "deterministic": {"inputs": [row], "mode": "deterministic"},
        f"mc (N = {args.samples})": {"inputs": [row], "mode": "mc", "n_samples": args.samples, "seed": 1},
    }
    from tests.server import running_server

    server = contextlib.nullcontext(args.url) if args.url else running_server()
    with server as url:
        asyncio.run(load(url, bodies["deterministic"], 4, 2.0, 2000))  # warm-up
        results = {
            mode: asyncio.run(load(url, body, args.concurrency, args.seconds, args.max_requests)) for mode, body in bodies.items()
        }
    print(f"concurrency {args.concurrency}, {args.seconds:g} s per mode, one row per request")
    print("| mode | successful req/s | errors | p50 ms | p99 ms |\n|---|---:|---:|---:|---:|")
    for mode, r in results.items():
        kinds = r["error_kinds"] or ""
        print(f"| {mode} | {r['ok_per_s']:.0f} | {r['errors']} {kinds} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} |")
    det, mc = results.values()
    if det["ok_per_s"]:
        print(f"MC / deterministic throughput: {mc['ok_per_s'] / det['ok_per_s']:.2f}")


if __name__ == "__main__":
    main()
