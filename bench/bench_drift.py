"""Issue 22 item 4: how fast the drift monitor raises its alarm on each shifted set, and that clean streams do not.

    python bench/bench_drift.py --model fashion-mnist [--orders 20] [--warm 1000] [--stream 3000] [--bins 10]
    python bench/bench_drift.py --synthetic

With ``--synthetic`` the scores are drawn instead: 3,000 standard normal reference scores (threshold: their 95%
quantile), clean inputs from the same normal, shifted inputs from a normal moved by 1, 0.5 or 0.25 standard
deviations, or narrowed to 0.5 (inputs closer to the typical than the calibration's: p-values piled in the
middle) or widened to 1.5; each with the martingale's linear bets alone (``bins`` 0) and with the plug-in bet.

For a calibrated classifier this scores (``ood_score``, the served density score) the 10,000 Fashion-MNIST test
images and the first ``--stream`` test images under every kind and strength of :mod:`mcdrop.training.shifts`.
Each of ``--orders`` runs feeds a fresh :class:`~mcdrop.serving.drift.DriftMonitor` (the card's calibration scores
as reference, its OOD threshold, alpha = 0.01, the service's defaults otherwise) ``--warm`` clean test images,
then one shifted set in a random order, one input at a time, and records after how many shifted inputs the
alarm is raised (none within ``--stream``: no alarm; runs whose alarm came during the warm-up, false alarms, are
counted apart).  The control streams ``--warm`` + ``--stream`` clean
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
from mcdrop.serving.drift import DEFAULT_BINS, DriftMonitor
from mcdrop.training.calibrate import features
from mcdrop.training.data import load_fashion_mnist
from mcdrop.training.shifts import KINDS, kind_of, shifted


def first_alarm(monitor: DriftMonitor, stream: np.ndarray) -> int | None:
    """The 1-based position in ``stream`` at which the monitor's alarm is first raised, None if never."""
    for i, s in enumerate(stream, 1):
        if monitor.update(np.array([s])).alarm:
            return i
    return None


Streams = Callable[[np.random.Generator], tuple[np.ndarray, np.ndarray]]


def delays(reference: np.ndarray, threshold: float, bins: int, orders: int, streams: Streams) -> list[int | None]:
    """Per random order ``r``: the shifted inputs until the alarm of a fresh monitor fed the clean ``warm`` then
    ``stream``, ``(warm, stream) = streams(rng)`` with ``rng`` seeded by ``r``."""
    out = []
    for r in range(orders):
        warm, stream = streams(np.random.default_rng(r))
        monitor = DriftMonitor(reference, threshold, bins=bins, seed=10**6 + r)  # its uniforms: not the streams' bits
        early = monitor.update(warm).alarm  # a false alarm (Ville: probability <= alpha per run)
        out.append(0 if early else first_alarm(monitor, stream))
    return out


def summary(found: list[int | None]) -> tuple[str, str]:
    """``("alarmed / runs", "median (min-max)")`` of the runs' delays (0: the alarm came during the warm-up; those
    runs are left out of both)."""
    hit, early = [d for d in found if d], found.count(0)
    runs = f"{len(hit)} / {len(found) - early}" + (f" ({early} alarmed during the warm-up)" if early else "")
    return runs, f"{np.median(hit):g} ({min(hit)}-{max(hit)})" if hit else "-"


def synthetic(args: argparse.Namespace) -> None:
    reference = np.random.default_rng(12345).normal(size=3000)
    threshold = float(np.quantile(reference, 0.95))
    shifts = {"none": (0.0, 1.0), "mean +1 sd": (1.0, 1.0), "mean +0.5 sd": (0.5, 1.0), "mean +0.25 sd": (0.25, 1.0),
              "sd 0.5": (0.0, 0.5), "sd 1.5": (0.0, 1.5)}
    print(f"synthetic normal scores: drift alarm (alpha 0.01) after {args.warm} clean inputs, {args.orders} random "
          f"streams per shift of {args.stream} inputs\n")
    print("| shifted scores | linear bets: alarmed | inputs to the alarm | with the plug-in bet: alarmed "
          "| inputs to the alarm |")
    print("|---|---:|---:|---:|---:|")
    for name, (loc, sd) in shifts.items():
        cells = []
        for bins in (0, args.bins):
            found = delays(reference, threshold, bins, args.orders, lambda rng, loc=loc, sd=sd: (
                rng.normal(size=args.warm), rng.normal(loc, sd, size=args.stream)))
            cells.extend(summary(found))
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="fashion-mnist")
    p.add_argument("--orders", type=int, default=20, help="random orders per set")
    p.add_argument("--warm", type=int, default=1000, help="clean inputs before the shifted ones")
    p.add_argument("--stream", type=int, default=3000, help="shifted inputs per run (test images shifted)")
    p.add_argument("--bins", type=int, default=DEFAULT_BINS, help="the martingale's plug-in bet (0: none)")
    p.add_argument("--synthetic", action="store_true", help="normal scores instead of a model's (see above)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    if args.synthetic:
        synthetic(args)
        return
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

    def runs(streams: Streams) -> list[int | None]:
        return delays(reference, threshold, args.bins, args.orders, streams)

    def clean_stream(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        order = rng.permutation(len(clean))
        return clean[order[:args.warm]], clean[order[args.warm:args.warm + args.stream]]

    rows = [("clean", "", float(np.mean(clean > cal.ood_threshold)), runs(clean_stream))]
    for name, s in sets.items():
        def shifted_stream(rng: np.random.Generator, s: np.ndarray = s) -> tuple[np.ndarray, np.ndarray]:
            return clean[rng.permutation(len(clean))[:args.warm]], s[rng.permutation(len(s))]
        rows.append((name, kind_of(name), float(np.mean(s > cal.ood_threshold)), runs(shifted_stream)))

    print(f"{args.model}: drift alarm (alpha 0.01, plug-in bet bins {args.bins}) after {args.warm} clean test images, "
          f"{args.orders} random orders per set, streams of {args.stream}; scoring {scored:.0f} s, "
          f"all {time.perf_counter() - t0:.0f} s, "
          f"{args.threads} threads\n")
    print("| stream | kind | above the OOD threshold | runs that alarmed "
          "| shifted inputs to the alarm, median (min-max) of the runs that alarmed |")
    print("|---|---|---:|---:|---:|")
    for name, kind, share, found in rows:
        alarmed, when = summary(found)
        print(f"| {name} | {kind} | {share:.1%} | {alarmed} | {when} |", flush=True)

if __name__ == "__main__":
    main()
