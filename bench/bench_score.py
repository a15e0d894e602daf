"""Throughput and peak memory of `mcdrop score`: in-process, through a local server, and on Ray Data actors.

    python bench/bench_score.py [--rows 10000 100000 500000] [--remote-rows 10000 100000] [--mode deterministic]
    python bench/bench_score.py --modes deterministic mc --rows 100000 1000000 --remote-rows 100000 1000000 \\
        --json-rows 100000 --ray-rows 100000 1000000 --actors 1 2 --out bench/results/score-issue13.md

Generates .npy files of uint8 images (N x 784, uniform random pixels; written through a memory map, never
committed) in a temporary folder, scores each with `mcdrop score IN.npy -o OUT.csv --seed 0` and reports wall
seconds (start-up included), rows/s, start-up seconds and peak memory.

* local: `--threads T` in this machine's process.
* remote: `--url` against a local `bentoml serve` of the bundled model (`MCDROP_THREADS=T`), binary `.npy`
  wire (the client's default for arrays).  remote-json: the same with the JSON wire; the CLI has no switch for
  it, so the CLI runs in a wrapper process that makes `mcdrop.client.Client` default to `wire="json"`.
* ray: `--engine ray --actors A` (a private local Ray with this machine's cores, started by the CLI).

Memory: the scoring process tree (the CLI and every descendant: for Ray the driver, GCS, raylet, workers and
actors) is sampled every 0.25 s from /proc/PID/smaps_rollup; "tree PSS" is the peak of the summed PSS
(proportional set size: shared pages, e.g. Ray's object store or torch's libraries, counted once across the
tree), "tree RSS" the peak of the summed RSS (shared pages counted in every process), "driver" the CLI
process's own peak RSS (VmHWM, sampled).  For remote runs the server's tree PSS is sampled the same way.
Start-up: wall seconds minus the CLI's own "scored N rows in S s" (for Ray, S starts after `ray.init` and
includes the actors' start and model loading).

`--single-row` instead measures single-row requests against a local server with wrk (one C thread, Debian's
wrk 4.1): the JSON body (`{"inputs": [row], ...}`, the row printed with 4 decimals, JSON answer) against the
binary one (the same row as a float32 (1, 784) `.npy` body, the options as query parameters,
`Accept: application/x-npy`: a structured `.npy` answer), deterministic and MC, at each `--concurrency`;
each cell `--warmup` seconds discarded, then `--seconds` measured.  The row is the first Fashion-MNIST test
image (`bench_service.request_row`).

    python bench/bench_score.py --single-row --concurrency 8 32 --seconds 20 --warmup 5 --samples 50

`--driver-rates` also times what a Ray driver does per row on its own: receiving nothing but writing the
ordered output (`mcdrop.io.writers`, CSV and Parquet) and reading the input (`mcdrop.io.readers`, .npy).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

JSON_WRAPPER = ("import sys, mcdrop.client as c\n"
                "init = c.Client.__init__\n"
                "def json_init(self, *a, **k):\n"
                "    k.setdefault('wire', 'json')\n"
                "    init(self, *a, **k)\n"
                "c.Client.__init__ = json_init\n"
                "from mcdrop.cli.main import main\n"
                "sys.exit(main(sys.argv[1:]))\n")


def make_input(path: Path, rows: int, seed: int = 0) -> None:
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(rows, 784))
    rng = np.random.default_rng(seed)
    for start in range(0, rows, 50_000):
        n = min(50_000, rows - start)
        out[start : start + n] = rng.integers(0, 256, size=(n, 784), dtype=np.uint8)
    out.flush()
    del out


def _rollup(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in KiB, or (0, 0) once it is gone."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except (OSError, ProcessLookupError):
        return 0, 0
    rss = re.search(r"^Rss:\s+(\d+)", text, re.M)
    pss = re.search(r"^Pss:\s+(\d+)", text, re.M)
    return (int(rss.group(1)) if rss else 0), (int(pss.group(1)) if pss else 0)


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            ppid = int(Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(entry.name))
    return kids


def tree(root: int, exclude: int | None = None) -> list[int]:
    kids, out, todo = _children(), [], [root]
    while todo:
        pid = todo.pop()
        if pid == exclude:
            continue
        out.append(pid)
        todo += kids.get(pid, [])
    return out


class TreeSampler:
    """Peak summed RSS and PSS (MiB) of a process tree, sampled every ``interval`` seconds in a thread."""

    def __init__(self, root: int, exclude: int | None = None, interval: float = 0.25) -> None:
        self.root, self.exclude, self.interval = root, exclude, interval
        self.peak_rss = self.peak_pss = self.root_hwm = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = pss = 0
            for pid in tree(self.root, self.exclude):
                r, p = _rollup(pid)
                rss, pss = rss + r, pss + p
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss / 1024), max(self.peak_pss, pss / 1024)
            try:  # the root's own peak RSS (VmHWM: reset by exec, unlike getrusage's, which a fork inherits)
                hwm = re.search(r"^VmHWM:\s+(\d+)", Path(f"/proc/{self.root}/status").read_text(), re.M)
                self.root_hwm = max(self.root_hwm, int(hwm.group(1)) / 1024 if hwm else 0)
            except OSError:
                pass
            self._stop.wait(self.interval)

    def stop(self) -> TreeSampler:
        self._stop.set()
        self._thread.join()
        return self


@dataclass
class Run:
    where: str
    mode: str
    rows: int
    wall: float
    scoring: float
    driver_mib: float
    tree_pss: float
    tree_rss: float
    server_pss: float | None
    load: str


def timed(cmd: list[str], server_root: int | None = None) -> tuple[float, float, float, TreeSampler, TreeSampler | None]:
    """(wall s, scoring s from the CLI's log, driver peak RSS MiB, tree sampler, server sampler) of one command."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "BENTOML_DO_NOT_TRACK": "True", "RAY_DATA_DISABLE_PROGRESS_BARS": "1"})
    sampler = TreeSampler(proc.pid)
    server = TreeSampler(server_root, exclude=proc.pid) if server_root is not None else None
    stderr = proc.stderr.read() if proc.stderr else ""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    sampler.stop()
    if server:
        server.stop()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{stderr[-3000:]}")
    found = re.findall(r"scored [\d,]+ rows in ([\d.]+) s", stderr)
    scoring = float(found[-1]) if found else float("nan")
    del usage  # ru_maxrss would include this process's own peak, inherited through fork
    return wall, scoring, sampler.root_hwm, sampler, server


def wrk(url: str, path: str, headers: dict[str, str], body_file: Path, concurrency: int, seconds: float
        ) -> dict[str, float]:
    """wrk -t1 -cC -dT --latency, POSTing ``body_file`` (read in Lua as bytes: binary-safe)."""
    script = body_file.with_suffix(".lua")
    lines = ["wrk.method = 'POST'", f"wrk.path = '{path}'",
             *(f"wrk.headers['{k}'] = '{v}'" for k, v in headers.items()),
             f"local f = assert(io.open('{body_file}', 'rb'))", "wrk.body = f:read('*a')", "f:close()"]
    script.write_text("\n".join(lines) + "\n")
    out = subprocess.run(["wrk", "-t1", f"-c{concurrency}", f"-d{seconds:g}s", "--latency", "--timeout", "30s",
                          "-s", str(script), url], capture_output=True, text=True, check=True).stdout

    def ms(label: str) -> float:
        value, unit = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    total, span, unit = re.search(r"(\d+) requests in ([\d.]+)(ms|s|m)", out).groups()  # type: ignore[union-attr]
    elapsed = float(span) * {"ms": 1e-3, "s": 1.0, "m": 60.0}[unit]
    non2xx = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
    sock = sum(map(int, m.groups())) if (m := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)) else 0
    return {"ok_per_s": (int(total) - non2xx) / elapsed, "errors": non2xx + sock, "p50": ms("50"), "p99": ms("99")}


def single_row(args: argparse.Namespace) -> list[str]:
    """Binary against JSON single-row requests (see the module docs); the table's lines."""
    import json

    import httpx

    from bench.bench_service import request_row
    from mcdrop.wire import NPY, decode_result, encode_npy
    from tests.server import running_server

    row, what = request_row(None)
    x = np.asarray([row], dtype=np.float32)
    modes = {"deterministic": ({"mode": "deterministic"}),
             f"mc N={args.samples}": ({"mode": "mc", "n_samples": args.samples, "seed": 1})}
    out = [f"single-row requests, {what}; wrk -t1, {args.warmup:g} s warm-up then {args.seconds:g} s per cell; "
           f"server MCDROP_THREADS={args.threads}", "",
           "| mode | concurrency | wire | body bytes | req/s | errors | p50 ms | p99 ms | load avg |",
           "|---|---:|---|---:|---:|---:|---:|---:|---|"]
    ratios = []
    with tempfile.TemporaryDirectory(prefix="mcdrop-bench-wrk-") as tmp, \
            running_server({"MCDROP_THREADS": str(args.threads)}) as url:
        folder = Path(tmp)
        for mode, options in modes.items():
            json_file, npy_file = folder / f"{options['mode']}-json.body", folder / f"{options['mode']}-npy.body"
            json_file.write_text(json.dumps({"inputs": [row], **options}))
            npy_file.write_bytes(encode_npy(x))
            query = "&".join(f"{k}={v}" for k, v in options.items())
            # The two answers agree (the same row and seed), so the comparison is like for like.
            a = httpx.post(f"{url}/predict", content=json_file.read_bytes(), headers={"content-type": "application/json"})
            b = httpx.post(f"{url}/predict?{query}", content=npy_file.read_bytes(),
                           headers={"content-type": NPY, "accept": NPY})
            a.raise_for_status()
            b.raise_for_status()
            binary = decode_result(b.content, b.headers["x-mcdrop-meta"])
            assert np.allclose(binary.probabilities[0], a.json()["predictions"][0]["probabilities"], atol=1e-6)
            wires = {"JSON": ("/predict", {"Content-Type": "application/json"}, json_file),
                     ".npy": (f"/predict?{query}", {"Content-Type": NPY, "Accept": NPY}, npy_file)}
            for c in args.concurrency:
                rate = {}
                for wire, (path, headers, body) in wires.items():
                    wrk(url, path, headers, body, c, args.warmup)
                    load = loadavg()
                    r = wrk(url, path, headers, body, c, args.seconds)
                    rate[wire] = r["ok_per_s"]
                    line = (f"| {mode} | {c} | {wire} | {body.stat().st_size:,} | {r['ok_per_s']:,.0f} | {r['errors']} | "
                            f"{r['p50']:.1f} | {r['p99']:.1f} | {load} |")
                    print(line, flush=True)
                    out.append(line)
                ratios.append(f"- {mode}, concurrency {c}: .npy / JSON req/s = {rate['.npy'] / rate['JSON']:.2f}")
    return [*out, "", *ratios]


def stages(path: Path, url: str, mode: str, samples: int, threads: int, batch_size: int) -> list[str]:
    """Where remote scoring's time goes, one request at a time in this process: milliseconds per request
    (median) of each stage of `mcdrop score --url`, against the same chunk scored in-process."""
    import statistics

    import httpx
    import torch

    from mcdrop.client import _json_body, _query, build_request
    from mcdrop.io.readers import open_input
    from mcdrop.io.writers import open_output
    from mcdrop.schemas import PredictRequest
    from mcdrop.serving.predictor import Predictor
    from mcdrop.wire import NPY, decode_npy, decode_result, encode_npy

    torch.set_num_threads(threads)
    options = {"mode": mode, "n_samples": samples, "seed": 0}
    predictor = Predictor(None)
    times: dict[str, list[float]] = {}

    def clock(name: str, fn):
        start = time.perf_counter()
        value = fn()
        times.setdefault(name, []).append((time.perf_counter() - start) * 1e3)
        return value

    folder = path.parent
    local_out = open_output(folder / "stages-local.csv", format="csv", with_ids=False,
                            class_names=predictor.card().class_names)
    remote_out = open_output(folder / "stages-remote.csv", format="csv", with_ids=False,
                             class_names=predictor.card().class_names)
    with httpx.Client(base_url=url, timeout=120) as http:
        for i, chunk in enumerate(open_input(path, format="npy", chunk_rows=batch_size).chunks):
            if i >= 40:
                break
            x = clock("read+scale uint8 -> float32", lambda c=chunk: c.x * np.float32(1 / 255))
            first = int(chunk.rows[0])
            request, _ = clock("client: build+validate request", lambda x=x, f=first: build_request(
                x, {**options, "row_offset": f}))
            body = clock("client: encode .npy", lambda r=request: encode_npy(r.inputs))
            clock("client: encode JSON (for comparison)", lambda r=request: _json_body(r))
            clock("server-side decode+validate .npy (here)", lambda b=body, f=first: PredictRequest.model_validate(
                {"inputs": decode_npy(b), "mode": mode, "n_samples": str(samples), "seed": "0", "row_offset": str(f)},
                strict=False))
            answer = clock("HTTP round trip (server decode+compute+encode)", lambda b=body, r=request: http.post(
                "/predict", content=b, params=_query(r), headers={"content-type": NPY, "accept": NPY}))
            answer.raise_for_status()
            result = clock("client: decode answer", lambda a=answer: decode_result(a.content, a.headers["x-mcdrop-meta"]))
            clock("write CSV (remote)", lambda c=chunk, r=result: remote_out.write(c.rows, None, r))
            local = clock("local: predict_array (compute)", lambda x=x, f=first: predictor.predict_array(
                x, row_offset=f, **options))
            clock("write CSV (local)", lambda c=chunk, r=local: local_out.write(c.rows, None, r))
    local_out.abort()
    remote_out.abort()
    return [f"| {name} | {statistics.median(v[1:]):.2f} |" for name, v in times.items()]


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def driver_rates(folder: Path, rows: int) -> list[str]:
    """Rows/s of the driver's own work: writing the ordered output, and reading .npy input, for ``rows`` rows."""
    from mcdrop.io.readers import open_input
    from mcdrop.io.writers import open_output
    from mcdrop.schemas import PredictResult

    rng = np.random.default_rng(0)
    n = 1024
    probs = rng.dirichlet(np.ones(10), size=n).astype(np.float32)
    columns = {"predicted_class": probs.argmax(1), "confidence": probs.max(1), "probabilities": probs,
               **{k: probs[:, 0].copy() for k in ("predictive_entropy", "expected_entropy", "mutual_information",
                                                  "variation_ratio")},
               "probability_std": probs, "probability_stderr": probs, "n_samples": np.full(n, 10)}
    names = [f"c{i}" for i in range(10)]

    def result(k: int) -> PredictResult:
        return PredictResult(model="fashion-mnist", model_version="1", task="classification", mode="mc", seed=0,
                             columns={c: v[:k] for c, v in columns.items()}, class_names=names)

    lines = []
    for fmt in ("csv", "parquet"):
        path = folder / f"rates.{fmt}"
        writer = open_output(path, format=fmt, with_ids=False, class_names=names)
        start = time.perf_counter()
        for first in range(0, rows, n):
            k = min(n, rows - first)
            writer.write(np.arange(first, first + k), None, result(k))
        writer.commit()
        seconds = time.perf_counter() - start
        size = path.stat().st_size
        lines.append(f"| write {fmt} (MC result columns) | {rows:,} | {seconds:.2f} | {rows / seconds:,.0f} | "
                     f"{size / seconds / 2**20:,.0f} MiB/s |")
        path.unlink()
    source = folder / f"in-{rows}.npy"
    if source.exists():
        start = time.perf_counter()
        total = 0
        for chunk in open_input(source, format="npy", chunk_rows=1024).chunks:
            total += len(chunk.x)
        seconds = time.perf_counter() - start
        lines.append(f"| read .npy uint8 (page cache) | {rows:,} | {seconds:.2f} | {rows / seconds:,.0f} | "
                     f"{rows * 784 / seconds / 2**20:,.0f} MiB/s |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="*", default=[10_000, 100_000, 500_000], help="local runs")
    parser.add_argument("--remote-rows", type=int, nargs="*", default=[10_000, 100_000], help="--url, .npy wire")
    parser.add_argument("--json-rows", type=int, nargs="*", default=[], help="--url, JSON wire")
    parser.add_argument("--ray-rows", type=int, nargs="*", default=[], help="--engine ray")
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2], help="Ray actors (one run per count)")
    parser.add_argument("--mode", choices=["deterministic", "mc"], default="deterministic")
    parser.add_argument("--modes", nargs="+", choices=["deterministic", "mc"], help="several modes (overrides --mode)")
    parser.add_argument("--mc-max-rows", type=int, help="skip MC runs above this many rows")
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--output-format", default="csv", choices=["csv", "parquet", "npz", "jsonl"])
    parser.add_argument("--driver-rates", type=int, metavar="ROWS", help="also time writing/reading ROWS rows")
    parser.add_argument("--out", type=Path, help="also write the tables (markdown) here")
    parser.add_argument("--stages", type=int, metavar="ROWS", help="time the stages of remote scoring, one request at "
                        "a time (median ms per --batch-size request, 40 requests from a ROWS-row input)")
    parser.add_argument("--single-row", action="store_true", help="wrk: binary against JSON single-row requests")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8, 32], help="--single-row: wrk connections")
    parser.add_argument("--seconds", type=float, default=20.0, help="--single-row: measured seconds per cell")
    parser.add_argument("--warmup", type=float, default=5.0, help="--single-row: discarded seconds before each cell")
    args = parser.parse_args()
    if args.single_row:
        text = "\n".join(single_row(args))
        print("\n" + text)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(f"Command: `{' '.join(['python', *sys.argv])}`\n\n{text}\n")
        return
    modes = args.modes or [args.mode]
    mcdrop = str(Path(sys.executable).with_name("mcdrop"))
    results: list[Run] = []
    every = sorted(set(args.rows) | set(args.remote_rows) | set(args.json_rows) | set(args.ray_rows)
                   | ({args.driver_rates} if args.driver_rates else set()))

    def flags(mode: str) -> list[str]:
        return ["--mode", mode, "--samples", str(args.samples), "--seed", "0", "--batch-size", str(args.batch_size)]

    def wanted(mode: str, rows: int) -> bool:
        return not (mode == "mc" and args.mc_max_rows is not None and rows > args.mc_max_rows)

    def record(where: str, mode: str, rows: int, cmd: list[str], server_root: int | None = None) -> None:
        load = loadavg()
        wall, scoring, driver, sampler, server = timed(cmd, server_root)
        label = mode + (f" N={args.samples}" if mode == "mc" else "")
        run = Run(where, label, rows, wall, scoring, driver, sampler.peak_pss, sampler.peak_rss,
                  server.peak_pss if server else None, load)
        results.append(run)
        print(f"{where:>14} {label:>13} {rows:>9,}: {wall:6.1f} s ({wall - scoring:.1f} start-up), "
              f"{rows / wall:8,.0f} rows/s, driver {driver:.0f} MiB, tree PSS {sampler.peak_pss:.0f} MiB "
              f"(RSS {sampler.peak_rss:.0f})" + (f", server PSS {server.peak_pss:.0f} MiB" if server else "")
              + f"  [load {load}]", flush=True)

    with tempfile.TemporaryDirectory(prefix="mcdrop-bench-score-") as tmp:
        folder = Path(tmp)
        for rows in every:
            make_input(folder / f"in-{rows}.npy", rows)
        out = str(folder / f"out.{args.output_format}")

        def source(rows: int) -> list[str]:
            return [str(folder / f"in-{rows}.npy"), "-o", out]

        for mode in modes:
            for rows in args.rows:
                if wanted(mode, rows):
                    record("local", mode, rows, [mcdrop, "score", *source(rows), "--threads", str(args.threads),
                                                 *flags(mode)])
        if args.remote_rows or args.json_rows:
            from tests.server import running_server

            with running_server({"MCDROP_THREADS": str(args.threads)}) as url:
                for mode in modes:
                    for rows in args.remote_rows:
                        if wanted(mode, rows):
                            record("remote .npy", mode, rows, [mcdrop, "score", *source(rows), "--url", url,
                                                               *flags(mode)], server_root=os.getpid())
                    for rows in args.json_rows:
                        if wanted(mode, rows):
                            record("remote JSON", mode, rows, [sys.executable, "-c", JSON_WRAPPER, "score",
                                                               *source(rows), "--url", url, *flags(mode)],
                                   server_root=os.getpid())
        for mode in modes:
            for rows in args.ray_rows:
                for actors in args.actors:
                    if wanted(mode, rows):
                        record(f"ray {actors} actor" + ("s" if actors > 1 else ""), mode, rows,
                               [mcdrop, "score", *source(rows), "--engine", "ray", "--actors", str(actors),
                                *flags(mode)])
        rates = driver_rates(folder, args.driver_rates) if args.driver_rates else []
        profile = []
        if args.stages:
            from tests.server import running_server

            make_input(folder / "stages.npy", args.stages)
            with running_server({"MCDROP_THREADS": str(args.threads)}) as url:
                for mode in modes:
                    label = mode + (f" N={args.samples}" if mode == "mc" else "")
                    profile += ["", f"Stages of remote scoring, {label}, one {args.batch_size}-row request at a time "
                                f"(median ms per request, load {loadavg()}):", "", "| stage | ms |", "|---|---:|",
                                *stages(folder / "stages.npy", url, mode, args.samples, args.threads, args.batch_size)]

    names = re.findall(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
    cpu = f"{names[0].strip() if names else platform.machine()}, {os.cpu_count()} cores"
    lines = [f"mcdrop score, 784 uint8 features per row (uniform random pixels), {args.output_format.upper()} output, "
             f"--batch-size {args.batch_size}, torch threads {args.threads} (local, server; Ray: cores // actors per "
             f"actor), {cpu}", "",
             "| mode | where | rows | wall s | start-up s | rows/s | driver peak RSS MiB | tree peak PSS MiB | "
             "tree peak RSS MiB | server peak PSS MiB | load avg |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in results:
        lines.append(f"| {r.mode} | {r.where} | {r.rows:,} | {r.wall:.1f} | {r.wall - r.scoring:.1f} | "
                     f"{r.rows / r.wall:,.0f} | {r.driver_mib:.0f} | {r.tree_pss:.0f} | {r.tree_rss:.0f} | "
                     + (f"{r.server_pss:.0f}" if r.server_pss is not None else "") + f" | {r.load} |")
    local = {(r.mode, r.rows): r for r in results if r.where == "local"}
    ratios = [f"- {r.mode}, {r.rows:,} rows: {r.where} / local = {local[(r.mode, r.rows)].wall / r.wall:.2f} "
              f"(scoring time only, start-up left out: {local[(r.mode, r.rows)].scoring / r.scoring:.2f})"
              for r in results if r.where != "local" and (r.mode, r.rows) in local]
    if ratios:
        lines += ["", "Throughput against local (same run; wall time with start-up, and scoring time only):", *ratios]
    if rates:
        lines += ["", "Driver-side rates (this process, one thread):", "",
                  "| step | rows | seconds | rows/s | bytes/s |", "|---|---:|---:|---:|---:|", *rates]
    text = "\n".join(lines + profile)
    print("\n" + text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(f"Command: `{' '.join(['python', *sys.argv])}`\n\n{text}\n")


if __name__ == "__main__":
    main()
