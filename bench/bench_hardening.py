"""Hardening figures against a real server (issue 15), each bounded in time:

    python bench/bench_hardening.py errors     # 15.5 MB bodies of bad cells: time, reply size, memory, log, /livez
    python bench/bench_hardening.py fairness   # 8 maximum-cost requests in flight; one-row latency; abandoned work
    python bench/bench_hardening.py soak [--seconds 300]  # wrk at concurrency 32: the worker's memory over time
    python bench/bench_hardening.py all
    python bench/bench_hardening.py shutdown --trials 20 --after upload|load   # SIGTERM to exit (issue 21)
    python bench/bench_hardening.py admission  # maximum-size requests under one-row traffic (issue 21)
    python bench/bench_hardening.py deadline   # a body trickled at 1 byte/s against the overall deadline (issue 21)

Starts `bentoml serve` with the bundled model on a free loopback port (tests/server.py) for each part and prints
a markdown table.  Memory is the resident set of the server's process tree (psutil); CPU time is the worker's.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import select
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import contextlib

from bench.bench_service import request_row
from mcdrop import wire
from tests.server import running_server


def torch_threads() -> None:
    """The server's threads: 2 (the rules' benchmark setting) unless MCDROP_THREADS says otherwise."""
    os.environ.setdefault("MCDROP_THREADS", "2")


def server_tree(url: str) -> list[psutil.Process]:
    """The `bentoml serve` process listening on ``url``'s port and its descendants."""
    port = url.rsplit(":", 1)[1]
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if "serve" in cmd and port in cmd:
            return [proc, *proc.children(recursive=True)]
    raise RuntimeError(f"no server process for {url}")


def rss_mb(procs: list[psutil.Process]) -> float:
    return sum(p.memory_info().rss for p in procs if p.is_running()) / 2**20


def worker(procs: list[psutil.Process]) -> psutil.Process:
    return max(procs, key=lambda p: p.memory_info().rss)  # the one holding torch and the models


class LivezProbe:
    """Polls /livez every 0.1 s in a thread; the worst latency (a timed-out probe counts as its timeout)."""

    def __init__(self, url: str) -> None:
        self.url, self.latencies, self._stop = url, [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=5.0) as client:
            while not self._stop.is_set():
                start = time.perf_counter()
                with contextlib.suppress(httpx.HTTPError):
                    client.get("/livez")
                self.latencies.append(time.perf_counter() - start)
                time.sleep(0.1)

    def __enter__(self) -> LivezProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def errors() -> list[str]:
    rows = ["| bad body | size MB | status | seconds | reply bytes | server RSS before -> after MB | log lines "
            "(bytes) | worst /livez ms |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    def fill(cell: object) -> str:  # as many 784-cell rows as fit in 15.5 MB (the limit is 16 MiB)
        row = json.dumps([cell] * 784)
        return json.dumps({"inputs": [[cell] * 784] * int(15.5e6 // (len(row) + 2))})

    bodies = {
        "rows of 784 strings \"a\"": fill("a"),
        "rows of 784 numbers 1e39 (beyond float32)": fill(1e39),
        "rows of 784 booleans": fill(True),
        "rows of 784 nulls": fill(None),
    }
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "server.log"
        with running_server(log_path=log) as url:
            procs = server_tree(url)
            with httpx.Client(base_url=url, timeout=120) as client:
                client.post("/predict", json={"inputs": [request_row(None)[0]]})  # warm
                for name, body in bodies.items():
                    before, lines, size = rss_mb(procs), log.read_bytes().count(b"\n"), log.stat().st_size
                    with LivezProbe(url) as probe:
                        start = time.perf_counter()
                        r = client.post("/predict", content=body, headers={"content-type": "application/json"})
                        elapsed = time.perf_counter() - start
                        time.sleep(0.3)
                    after = rss_mb(procs)
                    new_lines = log.read_bytes().count(b"\n") - lines
                    rows.append(f"| {name} | {len(body) / 1e6:.1f} | {r.status_code} | {elapsed:.2f} | {len(r.content):,} "
                                f"| {before:.0f} -> {after:.0f} | {new_lines} ({log.stat().st_size - size:,}) "
                                f"| {max(probe.latencies) * 1e3:.0f} |")
                    print(rows[-1], flush=True)
    return rows


def fairness(big: int = 8, rows_per_big: int = 1024, samples: int = 1000, give_up_s: float = 3.0) -> list[str]:
    """Two phases on one server with the default settings.  (1) ``big`` requests of rows_per_big x samples passes
    (the default cost limit's size) sent at once while a closed loop sends one-row MC requests: each big request's
    answer and the one-row latencies.  (2) The same ``big`` requests from clients that give up after
    ``give_up_s``: the worker's CPU time in the 5 s after the last one gave up (work nobody waits for)."""
    x = np.random.default_rng(0).random((rows_per_big, 784), dtype=np.float32)
    body = wire.encode_npy(x)
    one = {"inputs": [request_row(None)[0]], "n_samples": 50, "seed": 1}
    outcomes: list[tuple[int, float]] = []
    small: list[float] = []
    done = threading.Event()
    with running_server() as url:
        procs = server_tree(url)
        work = worker(procs)

        def send_big(i: int, timeout: float) -> None:
            with httpx.Client(base_url=url, timeout=timeout) as client:
                start = time.perf_counter()
                try:
                    r = client.post("/predict", content=body, params={"n_samples": samples, "seed": i},
                                    headers={"content-type": wire.NPY})
                    outcomes.append((r.status_code, time.perf_counter() - start))
                except httpx.TimeoutException:
                    outcomes.append((0, time.perf_counter() - start))

        def send_small() -> None:
            with httpx.Client(base_url=url, timeout=60) as client:
                while not done.is_set():
                    start = time.perf_counter()
                    r = client.post("/predict", json=one)
                    if r.status_code == 200:
                        small.append(time.perf_counter() - start)

        def burst(timeout: float) -> None:
            threads = [threading.Thread(target=send_big, args=(i, timeout)) for i in range(big)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()

        loop = threading.Thread(target=send_small)
        loop.start()
        burst(300.0)
        done.set()
        loop.join()
        answered = sorted(outcomes, key=lambda o: o[1])
        outcomes.clear()
        burst(give_up_s)
        cpu_before = sum(work.cpu_times()[:2])
        time.sleep(5.0)
        idle_cpu = sum(work.cpu_times()[:2]) - cpu_before
        with httpx.Client(base_url=url, timeout=30) as client:
            start = time.perf_counter()
            after = client.post("/predict", json=one).status_code, time.perf_counter() - start
    p99 = float(np.percentile(small, 99)) if small else float("nan")
    return [
        f"{big} requests of {rows_per_big} rows x {samples} passes at once (default settings: 60 s deadline): "
        + ", ".join(f"{s} after {t:.1f} s" for s, t in answered) + ".",
        f"One-row MC N = 50 requests meanwhile (closed loop, one at a time): {len(small)} answered, median "
        f"{statistics.median(small) * 1e3:.0f} ms, p99 {p99 * 1e3:.0f} ms, max {max(small) * 1e3:.0f} ms.",
        f"The same {big} requests from clients that give up after {give_up_s:g} s: worker CPU time in the next 5 s "
        f"{idle_cpu:.2f} s; a one-row request then: {after[0]} in {after[1] * 1e3:.0f} ms.",
    ]


def soak(seconds: float, warmup: float = 30.0, concurrency: int = 32) -> list[str]:
    body = {"inputs": [request_row(None)[0]], "mode": "mc", "n_samples": 50, "seed": 1}
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(f"wrk.method = 'POST'\nwrk.headers['Content-Type'] = 'application/json'\n"
                     f"wrk.body = [==[{json.dumps(body)}]==]\n")
    samples: list[tuple[float, float]] = []
    with running_server() as url:
        procs = server_tree(url)

        def wrk(duration: float) -> str:
            return subprocess.run(["wrk", "-t1", f"-c{concurrency}", f"-d{duration:g}s", "--latency", "-s", script.name,
                                   f"{url}/predict"], capture_output=True, text=True, check=True).stdout

        wrk(warmup)
        start = time.monotonic()
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                samples.append((time.monotonic() - start, rss_mb(procs)))
                stop.wait(10.0)

        sampler = threading.Thread(target=sample)
        sampler.start()
        out = wrk(seconds)
        stop.set()
        sampler.join()
        samples.append((time.monotonic() - start, rss_mb(procs)))
    Path(script.name).unlink()
    requests = int(out.split(" requests in ")[0].split()[-1])
    p99 = next(line.split()[1] for line in out.splitlines() if line.strip().startswith("99%"))
    first, last, top = samples[0][1], samples[-1][1], max(m for _, m in samples)
    trace = ", ".join(f"{t:.0f} s: {m:.0f}" for t, m in samples[:: max(1, len(samples) // 8)])
    return [f"Soak: {seconds:g} s of MC N = 50 at concurrency {concurrency} after {warmup:g} s of warm-up; {requests:,} "
            f"requests, p99 {p99}. Server RSS {first:.0f} MB at the start, {last:.0f} MB at the end ({last - first:+.0f} "
            f"MB, {(last - first) * 2**20 / max(requests, 1):+.0f} bytes per request), highest {top:.0f} MB.",
            f"RSS over time (MB): {trace}."]


def _one_row_request(port: int, width: int = 784) -> bytes:
    body = json.dumps({"inputs": [[0.5] * width], "n_samples": 50}).encode()
    return (f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def _abandon_uploads(port: int, count: int = 3) -> None:
    """Headers and part of a body, then close (issue 21's first finding)."""
    for _ in range(count):
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(_one_row_request(port).replace(b"Content-Length: ", b"Content-Length: 9")[:-20])
            time.sleep(0.2)


def _load_then_close(port: int, width: int, seconds: float = 3.0, connections: int = 32) -> int:
    """Keep-alive one-row MC requests on ``connections`` sockets for ``seconds``, then each sends one more request
    and closes at once with a reset (as a load generator ends its run).  Returns the requests answered."""
    request, stop, answered = _one_row_request(port, width), time.monotonic() + seconds, [0]

    def client() -> None:
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.settimeout(30)
            while time.monotonic() < stop:
                s.sendall(request)
                reply = s.recv(65536)
                while b"\r\n\r\n" not in reply:
                    reply += s.recv(65536)
                head, _, rest = reply.partition(b"\r\n\r\n")
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(
                    b"content-length")))
                while len(rest) < length:
                    rest += s.recv(65536)
                answered[0] += 1
            s.sendall(request)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")

    threads = [threading.Thread(target=client) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return answered[0]


def shutdown(trials: int, after: str, bound: float = 60.0, tiny: bool = False) -> list[str]:
    """Per trial: a fresh server, abandoned uploads or a burst of load ending in resets, then SIGTERM to the main
    process; the time until it and every worker are gone (at most ``bound`` s, then SIGKILL).  ``tiny`` serves a
    4-feature model (the HTTP layer is the same; a server starts in a few seconds instead of tens on a busy
    machine)."""
    from tests.server import group_alive, server_process
    from tests.tiny_models import write_tiny_models

    times: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        env = {"MCDROP_SERVE_MODELS": str(write_tiny_models(Path(tmp))["tiny-cls"])} if tiny else {}
        for trial in range(trials):
            with server_process(env) as (url, proc):
                port = int(url.rsplit(":", 1)[1])
                width = httpx.get(f"{url}/models").json()["models"][0]["input_size"]
                if after == "upload":
                    _abandon_uploads(port)
                else:
                    _load_then_close(port, width)
                time.sleep(0.3)
                start = time.monotonic()
                os.kill(proc.pid, signal.SIGTERM)
                while time.monotonic() - start < bound and (proc.poll() is None or group_alive(proc.pid)):
                    time.sleep(0.05)
                gone = proc.poll() is not None and not group_alive(proc.pid)
                times.append(time.monotonic() - start if gone else math.inf)
            print(f"trial {trial + 1}: {times[-1]:.2f} s", flush=True)
    done = [t for t in times if math.isfinite(t)]
    what = "abandoned uploads (3 per trial)" if after == "upload" else "3 s of load at 32 connections ending in resets"
    what += " (tiny model)" if tiny else " (bundled model)"
    return [f"SIGTERM after {what}: {trials} trials, {len(done)} stopped within {bound:g} s"
            + (f"; median {statistics.median(done):.2f} s, max {max(done):.2f} s" if done else "")
            + f"; target < 15 s in every trial: {'met' if len(done) == trials and max(done) < 15 else 'NOT met'}."]


def admission(big: int = 8, rows: int = 1024, passes: int = 1000) -> list[str]:
    """``big`` maximum-size requests (rows x passes, the default cost limit), one at a time, while a closed loop
    sends one-row MC requests: how many were admitted and answered, and the one-row latencies."""
    x = np.random.default_rng(0).random((rows, 784), dtype=np.float32)
    body = wire.encode_npy(x)
    one = {"inputs": [request_row(None)[0]], "n_samples": 50, "seed": 1}
    small: list[float] = []
    outcomes: list[tuple[int, float, str]] = []
    done = threading.Event()
    with running_server() as url:
        def send_small() -> None:
            with httpx.Client(base_url=url, timeout=60) as client:
                while not done.is_set():
                    start = time.perf_counter()
                    if client.post("/predict", json=one).status_code == 200:
                        small.append(time.perf_counter() - start)

        loop = threading.Thread(target=send_small)
        loop.start()
        time.sleep(2.0)
        with httpx.Client(base_url=url, timeout=120) as client:
            for i in range(big):
                start = time.perf_counter()
                r = client.post("/predict", content=body, params={"n_samples": passes, "seed": i},
                                headers={"content-type": wire.NPY})
                outcomes.append((r.status_code, time.perf_counter() - start, r.text[:160] if r.status_code != 200 else ""))
        done.set()
        loop.join()
    ok = [t for s, t, _ in outcomes if s == 200]
    refusal = next((m for s, _, m in outcomes if s != 200), "")
    p99 = float(np.percentile(small, 99)) if small else float("nan")
    return [f"{big} requests of {rows} rows x {passes} passes (cost 2.0e12, the limit /models advertises), one at a "
            f"time, while one-row MC N = 50 requests flow: {len(ok)} of {big} admitted and answered"
            + (f" (median {statistics.median(ok):.1f} s, max {max(ok):.1f} s)" if ok else "")
            + (f"; first refusal: {refusal}" if refusal else "") + ".",
            f"One-row requests meanwhile: {len(small)} answered, median {statistics.median(small) * 1e3:.0f} ms, p99 "
            f"{p99 * 1e3:.0f} ms, max {max(small) * 1e3:.0f} ms; target p99 < 1 s: {'met' if p99 < 1 else 'NOT met'}."]


def deadline(seconds: float = 120.0) -> list[str]:
    """A body announced as 1,000 bytes, sent at 1 byte per second: when the server answers and closes."""
    with running_server() as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
                      "Content-Length: 1000\r\n\r\n".encode())
            start, reply = time.monotonic(), b""
            while time.monotonic() - start < seconds:
                if select.select([s], [], [], 1.0)[0]:
                    reply = s.recv(4096)
                    break
                s.sendall(b" ")
            elapsed = time.monotonic() - start
    status = reply.split(b"\r\n", 1)[0].decode() if reply else f"no answer within {seconds:g} s"
    return [f"A body trickled at 1 byte/s (default settings: MCDROP_BODY_TIMEOUT 30 s between pieces, "
            f"MCDROP_BODY_DEADLINE 60 s in all): {status} after {elapsed:.1f} s."]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=["errors", "fairness", "soak", "shutdown", "admission", "deadline", "all"])
    parser.add_argument("--seconds", type=float, default=300.0, help="soak duration")
    parser.add_argument("--trials", type=int, default=20, help="shutdown trials")
    parser.add_argument("--after", choices=["upload", "load"], default="upload", help="what precedes SIGTERM (shutdown)")
    parser.add_argument("--bound", type=float, default=60.0, help="seconds a shutdown trial waits before SIGKILL")
    parser.add_argument("--tiny", action="store_true", help="shutdown: serve a tiny model (faster start)")
    parser.add_argument("--trickle-seconds", type=float, default=120.0, help="longest trickle (deadline)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `timeout` stops the run: its servers are stopped too
    torch_threads()
    parts = ["errors", "fairness", "soak"] if args.part == "all" else [args.part]
    runs = {"errors": errors, "fairness": fairness, "soak": lambda: soak(args.seconds), "admission": admission,
            "deadline": lambda: deadline(args.trickle_seconds),
            "shutdown": lambda: shutdown(args.trials, args.after, args.bound, args.tiny)}
    out: list[str] = []
    for part in parts:
        lines = runs[part]()
        out += [f"### {part}", "", *lines, ""]
        print("\n".join(out[-len(lines) - 3:]), flush=True)
    print("\n".join(out))


if __name__ == "__main__":
    main()
