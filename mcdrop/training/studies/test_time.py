"""Study 4: why dropout is off at test time, and when to turn it on.

The reference model of each seed is scored on the test set deterministically (dropout off: the weight-scaling
approximation ``E[f(x)] ≈ f(x; E[m])``) and by the MC mean ``p_N = (1/N) Σ_{s<N} softmax(f(x; m_s))`` for every
``N`` in ``NS``; the passes are drawn once up to the largest ``N`` (the first ``N`` keyed passes are the
``N``-sample draw).  MC − deterministic is paired by seed.  The cost per ``N`` is the engine's wall-clock time
for ``N`` passes of the test images, scaled to 10,000 images (median of ``REPEATS``; machine-dependent).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mcdrop.sampling.engine import MCEngine
from mcdrop.training.studies.common import (
    COLORS,
    Context,
    StudyResult,
    band,
    machine,
    markdown_table,
    paired_interval,
    pyplot,
    save,
    score,
    t_interval,
    timed,
    train,
)

NAME = "test-time"
TITLE = "Study 4: dropout at test time — deterministic vs MC as N grows, and its cost"
NS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
QUICK_NS = (1, 2, 5, 10)
EPOCHS = 10
REPEATS, QUICK_REPEATS = 3, 1
METRICS = ("accuracy", "nll", "ece")


def mc_moments(engine: MCEngine, x: torch.Tensor, checkpoints: tuple[int, ...], *, seed: int,
               chunk: int = 50) -> dict[int, tuple[torch.Tensor, float]]:
    """For each ``N``: the MC mean ``p_N`` ``(B, C)`` and the mean over rows of the MC standard error of its top
    class, ``sqrt(s²_N / N)`` with ``s²_N`` the sample variance of that class's probability over the ``N`` passes
    (NaN for ``N = 1``).  The passes are drawn once, in chunks, up to the largest ``N``."""
    s1: torch.Tensor | None = None
    s2: torch.Tensor | None = None
    out: dict[int, tuple[torch.Tensor, float]] = {}
    done = 0
    for stop in sorted(set(checkpoints)):
        while done < stop:
            step = min(chunk, stop - done)
            p = torch.softmax(engine.sample(x, step, seed=seed, first_sample=done).double(), -1)
            s1 = p.sum(0) if s1 is None else s1 + p.sum(0)
            s2 = p.square().sum(0) if s2 is None else s2 + p.square().sum(0)
            done += step
        assert s1 is not None and s2 is not None
        mean = s1 / stop
        top = mean.argmax(1, keepdim=True)
        if stop > 1:
            var = ((s2 / stop).gather(1, top) - mean.gather(1, top).square()).clamp_min(0) * stop / (stop - 1)
            se = float((var / stop).sqrt().mean())
        else:
            se = float("nan")
        out[stop] = (mean.float(), se)
    return out


def run(ctx: Context) -> StudyResult:
    ns = QUICK_NS if ctx.quick else NS
    x, y = ctx.data.x_test, ctx.data.y_test
    runs: list[dict[str, Any]] = []
    engines = []
    for seed in ctx.seeds:
        model, _ = train(ctx, seed, epochs=ctx.epochs(EPOCHS))
        engine = MCEngine(model)
        det_scores = score(torch.softmax(engine.deterministic(x).double(), -1).float(), y)
        mc_scores = {n: {**score(p, y), "mc_se_top_probability": se}
                     for n, (p, se) in mc_moments(engine, x, ns, seed=seed).items()}
        runs.append({"deterministic": det_scores, "mc": mc_scores})
        engines.append(engine)
        ctx.log(f"test-time seed {seed}: deterministic NLL {det_scores['nll']:.4f}, "
                f"MC N={ns[-1]} NLL {mc_scores[ns[-1]]['nll']:.4f}")

    def mc(metric: str, n: int) -> list[float]:
        return [r["mc"][n][metric] for r in runs]

    def det(metric: str) -> list[float]:
        return [r["deterministic"][metric] for r in runs]

    summary: dict[str, Any] = {"deterministic": {m: t_interval(det(m)) for m in METRICS},
                               "mc": {n: {m: t_interval(mc(m, n)) for m in METRICS} for n in ns},
                               "mc_minus_deterministic": {n: {m: paired_interval(mc(m, n), det(m)) for m in METRICS}
                                                          for n in ns}}
    diff = summary["mc_minus_deterministic"]

    first_better = {"accuracy": next((n for n in ns if diff[n]["accuracy"].low > 0), None),
                    "nll": next((n for n in ns if diff[n]["nll"].high < 0), None),
                    "ece": next((n for n in ns if diff[n]["ece"].high < 0), None)}
    first_worse_n1 = {m: diff[ns[0]][m] for m in METRICS}
    top = ns[-1]
    summary["mc_se_top_probability"] = {n: t_interval(mc("mc_se_top_probability", n)) for n in ns[1:]}
    d, b = summary["deterministic"], diff[top]

    better = [m for m in METRICS if first_better[m] is not None]
    worse = [m for m in METRICS if first_better[m] is None]
    verdict = " The MC mean is"
    if better:
        verdict += (" better than dropout off (95% CI over seeds wholly on the better side) in "
                    + ", ".join(f"{m} from N = {first_better[m]}" for m in better) + (";" if worse else "."))
    if worse:
        verdict += f" {'' if not better else 'it is '}not better than dropout off in {' or '.join(worse)} at any N up to {top}."

    answer = (
        f"One dropout pass (N=1) − dropout off: accuracy {first_worse_n1['accuracy'].fmt(2, 100)} points, "
        f"NLL {first_worse_n1['nll'].fmt(3)} (one pass is one random subnetwork; dropout off approximates the average "
        f"of all of them in a single pass).{verdict} MC − dropout off at "
        f"N={top}: accuracy {b['accuracy'].fmt(2, 100)} points, NLL {b['nll'].fmt(4)}, "
        f"ECE {b['ece'].fmt(4)} (deterministic: accuracy {d['accuracy'].mean:.4f}, NLL {d['nll'].mean:.4f}, "
        f"ECE {d['ece'].mean:.4f}). The MC standard error of the top-class probability falls as 1/√N, from "
        f"{summary['mc_se_top_probability'][ns[1]].mean:.4f} at N={ns[1]} to {summary['mc_se_top_probability'][top].mean:.5f} "
        f"at N={top} (mean over images)."
    )
    rows = [["deterministic", d["accuracy"].fmt(4), d["nll"].fmt(4), d["ece"].fmt(4), "", "", ""]]
    rows += [[f"MC N={n}", summary["mc"][n]["accuracy"].fmt(4), summary["mc"][n]["nll"].fmt(4),
              summary["mc"][n]["ece"].fmt(4), f"{diff[n]['accuracy'].fmt(2, 100)} pp", diff[n]["nll"].fmt(4),
              diff[n]["ece"].fmt(4)] for n in ns]
    table = markdown_table(["mode", "accuracy", "NLL", "ECE", "Δ accuracy (MC − det.)", "Δ NLL", "Δ ECE"], rows)
    se_rows = [[f"N={n}", summary["mc_se_top_probability"][n].fmt(5),
                *(f"{float(np.std(mc(m, n), ddof=1) / np.sqrt(len(runs))):.5f}" for m in METRICS)] for n in ns[1:]]
    se_table = markdown_table(["N", "MC standard error of the top-class probability (mean over images)",
                               "standard error over seeds: accuracy", "NLL", "ECE"], se_rows)

    # cost: one engine, the same test images, every N (median of a few repeats), per 10,000 images
    repeats = QUICK_REPEATS if ctx.quick else REPEATS
    engine = engines[0]
    det_cost = timed(lambda: engine.deterministic(x), repeats) * 10_000 / len(x)
    cost = {n: timed(partial(engine.sample, x, n, seed=0), repeats) * 10_000 / len(x) for n in ns}
    where = machine()
    timing_rows = [["deterministic", f"{det_cost:.4f}", ""]]
    timing_rows += [[f"MC N={n}", f"{c:.4f}", f"{c / n * 1000:.2f}"] for n, c in cost.items()]
    timings = {"machine": where, "repeats": repeats, "deterministic_seconds_per_10k": det_cost,
               "mc_seconds_per_10k": cost,
               "table": f"Engine cost on {len(x):,} test images, scaled to 10,000, median of {repeats} ({where}):\n\n"
                        + markdown_table(["mode", "seconds per 10,000 images", "ms per pass per 10,000"], timing_rows)}

    def plot(path: Path) -> None:
        plt = pyplot()
        fig, axes = plt.subplots(2, 2, figsize=(9.5, 7.0))
        labels = {"accuracy": "test accuracy", "nll": "test NLL (nats)", "ece": "test ECE (15 bins)"}
        for ax, metric in zip(axes.flat[:3], METRICS, strict=True):
            per_seed = np.array([[r["mc"][n][metric] - r["deterministic"][metric] for n in ns] for r in runs])
            band(ax, ns, per_seed, label="MC mean of N passes − dropout off (paired by seed)",
                 color=COLORS["dropout"], style="o-")
            ax.axhline(0.0, color=COLORS["none"], ls="--", label="dropout off (0)")
            ax.set_xscale("log")
            ax.set_xlabel("MC passes N")
            ax.set_ylabel(f"Δ {labels[metric]}")
            d0 = summary["deterministic"][metric]
            ax.set_title(f"{labels[metric]}: MC − dropout off\n(dropout off: {d0.mean:.4f})")
            if metric == "nll" and len(ns) > 2:  # N=1 and 2 are far off the scale of the rest
                lo, hi = min(per_seed[:, 2:].min(), 0.0), max(per_seed[:, 2:].max(), 0.0)
                ax.set_ylim(lo - 0.3 * (hi - lo), hi + 0.6 * (hi - lo))
                ax.text(0.98, 0.97, f"N=1: +{diff[ns[0]]['nll'].mean:.3f}, N=2: +{diff[ns[1]]['nll'].mean:.3f} "
                        "(off scale)", transform=ax.transAxes, fontsize=7, va="top", ha="right")
        axes[0, 0].legend(loc="lower right")
        ax = axes[1, 1]
        ax.plot(list(cost), list(cost.values()), "o-", color=COLORS["dropout"], label="MC, engine.sample")
        ax.axhline(det_cost, color=COLORS["none"], ls="--", label="deterministic")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("MC passes N")
        ax.set_ylabel("seconds per 10,000 images")
        ax.set_title(f"engine cost (median of {repeats}; {torch.get_num_threads()} torch threads)")
        ax.legend(loc="upper left")
        fig.suptitle(f"Reference model, {len(x):,} test images: paired difference MC − dropout off, mean and 95% band "
                     f"over {len(runs)} seeds", fontsize=9)
        save(fig, path)

    return StudyResult(
        NAME, TITLE, answer,
        results={"summary": summary, "first_n_mc_better": first_better, "per_seed": runs},
        tables=[table, se_table], plots={"test_time.png": plot}, timings=timings,
        settings={"ns": list(ns), "epochs": ctx.epochs(EPOCHS), "test_images": len(x), "mc_seed": "the training seed"},
    )
