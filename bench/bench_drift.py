"""Issue 22 item 4: how fast the drift monitor raises its alarm on each shifted set, and that clean streams do not.

    python bench/bench_drift.py --model fashion-mnist [--orders 20] [--warm 1000] [--stream 3000]

For a calibrated classifier this scores (``ood_score``, the served density score) the 10,000 Fashion-MNIST test
images and the first ``--stream`` test images under every kind and strength of :mod:`mcdrop.training.shifts`.
Each of ``--orders`` runs feeds a fresh :class:`~mcdrop.serving.drift.DriftMonitor` (the card's calibration scores
as reference, its OOD threshold, alpha = 0.01, the service's defaults otherwise) ``--warm`` clean test images,
then one shifted set in a random order, one input at a time, and records after how many shifted inputs the
alarm is raised (none within ``--stream``: no alarm).  The control streams ``--warm`` + ``--stream`` clean
images (the warm-up's images excluded from the stream); by Ville's inequality at most 1% of such runs may alarm.
The table gives, per set, the share above the OOD threshold, the runs that alarmed and the median (min-max)
shifted inputs before the alarm.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch

from mcdrop.nets.artifacts import load_artifact
from mcdrop.sampling.engine import MCEngine
from mcdrop.serving.drift import DriftMonitor
from mcdrop.training.calibrate import features
from mcdrop.training.data import load_fashion_mnist
from mcdrop.training.shifts import KINDS, kind_of, shifted


def first_alarm(monitor: DriftMonitor, stream: np.ndarray) -> int | None:
    """The 1-based position in ``stream`` at which the monitor's alarm is first raised, None if never."""
    for i, s in enumerate(stream, 1):
        if monitor.update(np.array([s])).alarm:
            return i
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="fashion-mnist")
    p.add_argument("--orders", type=int, default=20, help="random orders per set")
    p.add_argument("--warm", type=int, default=1000, help="clean inputs before the shifted ones")
    p.add_argument("--stream", type=int, default=3000, help="shifted inputs per run (test images shifted)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    artifact = load_artifact(args.model)
    cal, engine = artifact.calibration, MCEngine(artifact.model)
    assert cal is not None and cal.density is not None and cal.ood_reference is not None, "a calibrated classifier"
    assert cal.ood_threshold is not None

    def score(x: torch.Tensor) -> np.ndarray:
        flat = x.reshape(len(x), -1)
        return cal.density.score(features(engine, flat, cal.feature_layers)).double().numpy()  # type: ignore[union-attr]

    test_x, _ = load_fashion_mnist(None, train=False)
    images = test_x.float() / 255
    clean = score(images)
    sets = {f"{kind} {s}": score(shifted(images[:args.stream], kind, s)) for kind in KINDS for s in (1, 2)}
    scored = time.perf_counter() - t0

    reference, threshold = cal.ood_reference, cal.ood_threshold

    def runs(stream_of: Callable[[np.random.Generator], tuple[np.ndarray, np.ndarray]]) -> list[int | None]:
        out = []
        for r in range(args.orders):
            rng = np.random.default_rng(r)
            warm, stream = stream_of(rng)
            monitor = DriftMonitor(reference, threshold, seed=r)
            monitor.update(warm)
            assert not monitor.state().alarm, "an alarm on the clean warm-up"
            out.append(first_alarm(monitor, stream))
        return out

    def clean_stream(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        order = rng.permutation(len(clean))
        return clean[order[:args.warm]], clean[order[args.warm:args.warm + args.stream]]

    rows = [("clean", "", float(np.mean(clean > cal.ood_threshold)), runs(clean_stream))]
    for name, s in sets.items():
        def shifted_stream(rng: np.random.Generator, s: np.ndarray = s) -> tuple[np.ndarray, np.ndarray]:
            return clean[rng.permutation(len(clean))[:args.warm]], s[rng.permutation(len(s))]
        rows.append((name, kind_of(name), float(np.mean(s > cal.ood_threshold)), runs(shifted_stream)))

    print(f"{args.model}: drift alarm (alpha 0.01) after {args.warm} clean test images, {args.orders} random orders "
          f"per set, streams of {args.stream}; scoring {scored:.0f} s, all {time.perf_counter() - t0:.0f} s, "
          f"{args.threads} threads\n")
    print("| stream | kind | above the OOD threshold | runs that alarmed "
          "| shifted inputs to the alarm, median (min-max) of the runs that alarmed |")
    print("|---|---|---:|---:|---:|")
    for name, kind, share, delays in rows:
        hit = [d for d in delays if d is not None]
        when = f"{int(np.median(hit))} ({min(hit)}-{max(hit)})" if hit else "-"
        print(f"| {name} | {kind} | {share:.1%} | {len(hit)} / {len(delays)} | {when} |", flush=True)


if __name__ == "__main__":
    main()
