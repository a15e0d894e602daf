"""Decision-based stopping on the shipped classifier and the Fashion-MNIST test set, CPU.

    python bench/bench_stopping.py [--rows 10000] [--threads 2] [--seed 1] [--data DIR] [--score]

1. In-process through the predictor (the answer's decisions as the service computes them), one seed for every run,
so a row's first n passes are the same in every run.  For each configuration: mean passes per row, rows/s, and
the rows whose decisions differ from those of fixed N = 2000: the class, the abstention (the card's default
risk), the 90% LAC conformal set.  ``stop=class`` settles the class only; ``stop=decision`` the class and the
abstention and the 90% LAC set.
3. ``--service``: a real server (``bentoml serve`` of the bundled model), the test set in requests of 1,000 rows
(.npy bodies, one at a time), rows/s of fixed N = 50 and of ``stop=class`` (cap 50), median of ``--repeats``.
2. ``--score``: ``mcdrop score`` end to end on the test set's IDX file (10,000 images, read, scored, written to
CSV), wall-clock seconds of fixed N = 50 and of the stopping runs, median of ``--repeats``.
"""

from __future__ import annotations

import argparse
import csv
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mcdrop.schemas import Limits
from mcdrop.serving.predictor import Predictor
from mcdrop.training.data import fashion_mnist_features, load_fashion_mnist


def run(predictor: Predictor, x: np.ndarray, **options: object) -> tuple[dict[str, np.ndarray], float]:
    start = time.perf_counter()
    parts = [predictor.predict_array(x[i:i + 1000], row_offset=i, coverage=0.9, set_method="lac", **options)
             for i in range(0, len(x), 1000)]
    seconds = time.perf_counter() - start
    cols = {k: np.concatenate([p.columns[k] for p in parts]) for k in ("predicted_class", "abstain", "prediction_set",
                                                                        "n_samples")}
    return cols, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=10000)
    parser.add_argument("--score", action="store_true", help="only section 2: mcdrop score end to end")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--service", action="store_true", help="only section 3: through a real server")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--data", default="/work/shared/data")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    images, _ = load_fashion_mnist(args.data, train=False)
    x = fashion_mnist_features(images[: args.rows]).numpy()
    predictor = Predictor(limits=Limits(max_rows=1000, max_samples=2000))
    with open("/proc/cpuinfo") as info:
        cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")),
                   platform.processor())
    print(f"# {cpu}, {args.threads} threads, {len(x)} Fashion-MNIST test rows, seed {args.seed}")
    if args.score:
        score_section(args)
        return
    if args.service:
        service_section(args, x)
        return
    ref, ref_s = run(predictor, x, n_samples=2000, seed=args.seed)
    configs = [("fixed N=50", {"n_samples": 50}),
               ("stop=class, delta=1e-3, cap 2000", {"stop": "class", "max_samples": 2000}),
               ("stop=class, delta=1e-3, cap 100", {"stop": "class", "max_samples": 100}),
               ("stop=class, delta=1e-3, cap 50", {"stop": "class", "max_samples": 50}),
               ("stop=class, delta=1e-2, cap 50", {"stop": "class", "max_samples": 50, "delta": 1e-2}),
               ("stop=decision, delta=1e-3, cap 2000", {"stop": "decision", "max_samples": 2000}),
               ("stop=decision, delta=1e-3, cap 200", {"stop": "decision", "max_samples": 200})]
    print("| run | mean passes | passes vs N=50 | rows/s | class differs | abstain differs | set differs | at cap |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| fixed N=2000 (reference) | 2000 | | {len(x) / ref_s:.0f} | | | | |")
    for name, options in configs:
        got, seconds = run(predictor, x, seed=args.seed, **options)
        n = got["n_samples"]
        cap = options.get("max_samples", 50)
        diff = {k: int((got[k] != ref[k]).reshape(len(x), -1).any(1).sum()) for k in ("predicted_class", "abstain",
                                                                                      "prediction_set")}
        print(f"| {name} | {n.mean():.1f} | {50 / n.mean():.2f}x | {len(x) / seconds:.0f} | {diff['predicted_class']} | "
              f"{diff['abstain']} | {diff['prediction_set']} | {int((n >= cap).sum())} |", flush=True)


SCORE_RUNS = {"fixed N=50": ["--samples", "50"],
              "--stop class --max-samples 50": ["--stop", "class", "--max-samples", "50"],
              "--stop class --max-samples 50 --delta 0.01": ["--stop", "class", "--max-samples", "50", "--delta", "0.01"],
              "--stop decision --max-samples 200": ["--stop", "decision", "--max-samples", "200"]}


def score_section(args: argparse.Namespace) -> None:
    images = Path(args.data) / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte.gz"
    print("| `mcdrop score` t10k images (10,000 rows) | seconds (median) | rows/s | vs fixed N=50 | mean passes |")
    print("|---|---|---|---|---|")
    base = None
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.csv"
        for name, flags in SCORE_RUNS.items():
            times = []
            for _ in range(args.repeats):
                cmd = [sys.executable, "-m", "mcdrop.cli.main", "score", str(images), "-o", str(out), "--seed",
                       str(args.seed), "--threads", str(args.threads), "-q", *flags]
                start = time.perf_counter()
                subprocess.run(cmd, check=True)
                times.append(time.perf_counter() - start)
            seconds = statistics.median(times)
            with out.open(newline="") as fh:
                rows = list(csv.DictReader(fh))
            passes = sum(int(r["n_samples"]) for r in rows) / len(rows)
            base = base or seconds
            print(f"| {name} | {seconds:.2f} | {len(rows) / seconds:.0f} | {base / seconds:.2f}x | {passes:.1f} |",
                  flush=True)


def service_section(args: argparse.Namespace, x: np.ndarray) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from mcdrop.client import Client
    from tests.server import running_server

    runs = {"fixed N=50": {"n_samples": 50}, "stop=class, cap 50": {"stop": "class", "max_samples": 50},
            "stop=class, cap 50, delta 0.01": {"stop": "class", "max_samples": 50, "delta": 0.01}}
    print("| service, 1,000-row .npy requests | seconds (median) | rows/s | vs fixed N=50 | mean passes |")
    print("|---|---|---|---|---|")
    env = {"MCDROP_MAX_ROWS": "1000", "MCDROP_REQUEST_TIMEOUT": "600"}  # a slow start-up estimate must not refuse
    with running_server(env) as url, Client(url, timeout=600) as client:
        client.predict(x[:10], n_samples=2, seed=0)
        base = None
        for name, options in runs.items():
            times, passes = [], 0.0
            for _ in range(args.repeats):
                start = time.perf_counter()
                result = client.predict(x, seed=args.seed, **options)
                times.append(time.perf_counter() - start)
                passes = float(result.n_samples.mean())
            seconds = statistics.median(times)
            base = base or seconds
            print(f"| {name} | {seconds:.2f} | {len(x) / seconds:.0f} | {base / seconds:.2f}x | {passes:.1f} |", flush=True)


if __name__ == "__main__":
    main()
