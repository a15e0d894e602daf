"""The client's timeout as a deadline for the whole call (issue 21, item 4), bounded in time:

    python bench/bench_client_deadline.py [--trials 5] [--timeout 2] [--trickle 20]

A loopback HTTP server answers every request with its headers at once and then a 40-byte body one byte at a
time over ``--trickle`` seconds (tests/client/test_client_deadline.py's server).  For the blocking and the async
client, the time from the call to its error, median and maximum over the trials, and the error's class.
Before the fix a timeout of 2 s returned after the whole trickle (19.5 s in the issue) with pydantic's error.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mcdrop.client import AsyncClient, Client
from tests.client import test_client_deadline as slow


def one(kind: str, url: str, timeout: float) -> tuple[float, str]:
    x = np.zeros((2, 4), np.float32)
    start = time.monotonic()
    try:
        if kind == "blocking":
            with Client(url, timeout=timeout, max_rows=100) as client:
                client.predict(x, seed=1)
        else:
            async def call() -> None:
                async with AsyncClient(url, timeout=timeout, max_rows=100) as client:
                    await client.predict(x, seed=1)
            asyncio.run(call())
        error = "none"
    except Exception as err:
        error = f"{type(err).__module__}.{type(err).__name__}"
    return time.monotonic() - start, error


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=2.0)
    parser.add_argument("--trickle", type=float, default=20.0)
    args = parser.parse_args()
    slow.TRICKLE_S = args.trickle
    print("| client | timeout (s) | server's trickle (s) | call to error: median (s) | max (s) | error |")
    print("|---|---:|---:|---:|---:|---|")
    for kind in ("blocking", "async"):
        with slow.slow_server("trickle") as url:
            runs = [one(kind, url, args.timeout) for _ in range(args.trials)]
        times = [t for t, _ in runs]
        errors = sorted({e for _, e in runs})
        print(f"| {kind} | {args.timeout:g} | {args.trickle:g} | {statistics.median(times):.2f} | {max(times):.2f} | "
              f"{', '.join(errors)} |")


if __name__ == "__main__":
    main()
