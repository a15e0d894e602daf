"""Load benchmark of the HTTP service on loopback: concurrency C, T seconds, one input row per request.

    python bench/bench_service.py [--concurrency 32] [--seconds 15] [--samples 50] [--client wrk|python]

The load client is wrk (Debian's package; C, one thread, so it takes little of the machine's CPU from the
server) when installed, else a closed-loop httpx script (which itself needs about one core here).

Starts `bentoml serve` with the bundled model on a free loopback port (or uses --url), then for each mode
(deterministic, mc with N = --samples) runs C closed-loop workers for --warmup seconds (discarded), then T seconds
(and at most --max-requests requests with the python client), and reports successful requests/s, errors and p50/p99 latency.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
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


def load_wrk(url: str, body: dict, concurrency: int, seconds: float) -> dict[str, float]:
    """wrk -t1 -cC -dT --latency with a POST script; successes = responses - non-2xx - socket errors."""
    import json
    import re
    import subprocess
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(f"wrk.method = 'POST'\nwrk.headers['Content-Type'] = 'application/json'\n"
                     f"wrk.body = [==[{json.dumps(body)}]==]\n")  # JSON holds ]], hence level 2
    out = subprocess.run(["wrk", "-t1", f"-c{concurrency}", f"-d{seconds:g}s", "--latency", "--timeout", "30s",
                          "-s", script.name, f"{url}/predict"], capture_output=True, text=True, check=True).stdout
    Path(script.name).unlink()

    def ms(label: str) -> float:
        value, unit = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    total = int(re.search(r"(\d+) requests in ([\d.]+)(ms|s|m)", out).group(1))  # type: ignore[union-attr]
    span = re.search(r"requests in ([\d.]+)(ms|s|m)", out).groups()  # type: ignore[union-attr]
    elapsed = float(span[0]) * {"ms": 1e-3, "s": 1.0, "m": 60.0}[span[1]]
    non2xx = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
    sock = sum(map(int, m.groups())) if (m := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)) else 0
    ok = total - non2xx
    kinds = {k: v for k, v in {"non-2xx": non2xx, "socket": sock}.items() if v}
    return {"ok_per_s": ok / elapsed, "ok": ok, "errors": non2xx + sock, "error_kinds": kinds,
            "p50_ms": ms("50"), "p99_ms": ms("99"), "mean_ms": float("nan")}


def request_row(root: str | None) -> tuple[list[float], str]:
    """A realistic row (the first Fashion-MNIST test image, in [0, 1]) when the data is there: the fused MC
    kernel's cost depends on how many units an input activates, and uniform noise activates more than images."""
    from mcdrop.training.data import DataNotFoundError, fashion_mnist_features, load_fashion_mnist, resolve_data_root

    try:
        images, _ = load_fashion_mnist(resolve_data_root(root), train=False)
    except DataNotFoundError:
        return np.random.default_rng(0).random(784).round(4).tolist(), "uniform random pixels (no data found)"
    return fashion_mnist_features(images[:1])[0].flatten().numpy().round(4).tolist(), "Fashion-MNIST test image 0"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running server (default: start one)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of discarded load before each mode")
    parser.add_argument("--max-requests", type=int, default=200_000, help="python client only")
    parser.add_argument("--client", choices=["wrk", "python"], default="wrk" if shutil.which("wrk") else "python")
    parser.add_argument("--data", help="data root with FashionMNIST/ (default: $MCDROP_DATA or ../shared/data); the "
                        "request row is the first test image, or a uniform random row without the data")
    args = parser.parse_args()
    row, source = request_row(args.data)
    print(f"request row: {source}")
    bodies = {
        "deterministic": {"inputs": [row], "mode": "deterministic"},
        f"mc (N = {args.samples})": {"inputs": [row], "mode": "mc", "n_samples": args.samples, "seed": 1},
    }
    from tests.server import running_server

    server = contextlib.nullcontext(args.url) if args.url else running_server()
    with server as url:
        results = {}
        for mode, body in bodies.items():
            # Steady state: a discarded warm-up at the same load first (the first seconds after start-up run
            # slower: interpreter specialisation, allocator growth, the scheduler's measured rate settling).
            for seconds, keep in ((args.warmup, False), (args.seconds, True)):
                r = load_wrk(url, body, args.concurrency, seconds) if args.client == "wrk" \
                    else asyncio.run(load(url, body, args.concurrency, seconds, args.max_requests))
                if keep:
                    results[mode] = r
    print(f"client {args.client}, concurrency {args.concurrency}, {args.seconds:g} s per mode after {args.warmup:g} s of "
          "warm-up, one row per request")
    print("| mode | successful req/s | errors | p50 ms | p99 ms |\n|---|---:|---:|---:|---:|")
    for mode, r in results.items():
        kinds = r["error_kinds"] or ""
        print(f"| {mode} | {r['ok_per_s']:.0f} | {r['errors']} {kinds} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} |")
    det, mc = results.values()
    if det["ok_per_s"]:
        print(f"MC / deterministic throughput: {mc['ok_per_s'] / det['ok_per_s']:.2f}")


if __name__ == "__main__":
    main()
