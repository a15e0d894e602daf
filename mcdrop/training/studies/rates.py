"""Study 1: swap the first and second hidden layers' dropout rates (0.2/0.5 vs 0.5/0.2), and a grid around them.

Every cell ``(p1, p2)`` of ``GRID²`` trains the reference recipe once per seed; test accuracy and NLL are read
deterministically (dropout off) and as the MC mean of ``N_SAMPLES`` passes.  The swap is the paired difference
``m(0.5, 0.2) - m(0.2, 0.5)`` over seeds.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np

from mcdrop.training.studies.common import (
    Context,
    StudyResult,
    evaluate,
    intervals,
    machine,
    markdown_table,
    paired_interval,
    pyplot,
    save,
    t_interval,
    train,
)

NAME = "rates"
TITLE = "Study 1: the two hidden layers' dropout rates, swapped and on a grid"
GRID = (0.1, 0.2, 0.5, 0.7)
QUICK_GRID = (0.2, 0.5)
N_SAMPLES = 50
EPOCHS = 10
REFERENCE, SWAPPED = (0.2, 0.5), (0.5, 0.2)


def run(ctx: Context) -> StudyResult:
    grid = QUICK_GRID if ctx.quick else GRID
    epochs = ctx.epochs(EPOCHS)
    cells: dict[tuple[float, float], list[dict[str, Any]]] = {}
    for p1, p2 in product(grid, grid):
        cells[(p1, p2)] = []
        for seed in ctx.seeds:
            model, history = train(ctx, seed, dropout=[p1, p2], epochs=epochs)
            metrics = evaluate(model, ctx.data.x_test, ctx.data.y_test, n_samples=N_SAMPLES, seed=seed)
            cells[(p1, p2)].append({**metrics, "train_seconds": history["train_seconds"]})
            ctx.log(f"rates {p1}/{p2} seed {seed}: accuracy {metrics['deterministic']['accuracy']:.4f} "
                    f"(MC {metrics['mc']['accuracy']:.4f}), NLL {metrics['deterministic']['nll']:.4f}")

    def value(cell: tuple[float, float], mode: str, metric: str) -> list[float]:
        return [run[mode][metric] for run in cells[cell]]

    summary = {f"{p1}/{p2}": {mode: {m: intervals(runs, mode, m) for m in ("accuracy", "nll", "ece")}
                              for mode in ("deterministic", "mc")}
               for (p1, p2), runs in cells.items()}
    swap = {mode: {m: paired_interval(value(SWAPPED, mode, m), value(REFERENCE, mode, m)) for m in ("accuracy", "nll")}
            for mode in ("deterministic", "mc")}
    def mean_nll(mode: str) -> Callable[[tuple[float, float]], float]:
        return lambda cell: float(np.mean(value(cell, mode, "nll")))

    best = {mode: min(cells, key=mean_nll(mode)) for mode in ("deterministic", "mc")}
    best_vs_ref = {mode: {m: paired_interval(value(best[mode], mode, m), value(REFERENCE, mode, m))
                          for m in ("accuracy", "nll")} for mode in ("deterministic", "mc")}
    grid_seconds = [sum(cells[c][k]["train_seconds"] for c in cells) for k in range(len(ctx.seeds))]

    ref, sw = summary["0.2/0.5"]["deterministic"], summary["0.5/0.2"]["deterministic"]
    d = swap["deterministic"]
    b = best["mc"]
    answer = (
        f"Swapping the rates from 0.2/0.5 to 0.5/0.2 changes test accuracy by {d['accuracy'].fmt(4, 100)} points "
        f"({ref['accuracy'].mean:.4f} -> {sw['accuracy'].mean:.4f}) and test NLL by {d['nll'].fmt(4)} (dropout off); "
        f"MC (N={N_SAMPLES}): accuracy {swap['mc']['accuracy'].fmt(4, 100)} points, NLL {swap['mc']['nll'].fmt(4)}. "
        f"The grid's lowest mean MC NLL is at p1/p2 = {b[0]}/{b[1]} ({summary[f'{b[0]}/{b[1]}']['mc']['nll'].fmt(4)}; "
        f"vs 0.2/0.5: {best_vs_ref['mc']['nll'].fmt(4)})."
    )
    rows = [[f"{p1}/{p2}", s["deterministic"]["accuracy"].fmt(4), s["deterministic"]["nll"].fmt(4),
             s["mc"]["accuracy"].fmt(4), s["mc"]["nll"].fmt(4), s["mc"]["ece"].fmt(4)]
            for (p1, p2), s in ((c, summary[f"{c[0]}/{c[1]}"]) for c in cells)]
    table = markdown_table(["p1/p2", "accuracy (det.)", "NLL (det.)", f"accuracy (MC {N_SAMPLES})",
                            f"NLL (MC {N_SAMPLES})", f"ECE (MC {N_SAMPLES})"], rows)
    swap_rows = [[mode, f"{swap[mode]['accuracy'].fmt(3, 100)} pp", swap[mode]["nll"].fmt(4),
                  f"{best[mode][0]}/{best[mode][1]}", f"{best_vs_ref[mode]['accuracy'].fmt(3, 100)} pp",
                  best_vs_ref[mode]["nll"].fmt(4)] for mode in ("deterministic", "mc")]
    swap_table = markdown_table(["mode", "Δ accuracy 0.5/0.2 − 0.2/0.5", "Δ NLL 0.5/0.2 − 0.2/0.5",
                                 "lowest-NLL cell", "Δ accuracy best − 0.2/0.5", "Δ NLL best − 0.2/0.5"], swap_rows)
    time_ci = t_interval(grid_seconds)
    timings = {"machine": machine(), "grid_train_seconds_per_seed": time_ci,
               "run_train_seconds": t_interval([r["train_seconds"] for runs in cells.values() for r in runs]),
               "table": f"Training the {len(cells)}-cell grid took {time_ci.fmt(1)} s per seed ({machine()})."}

    def heatmap(path: Path) -> None:
        plt = pyplot()
        fig, axes = plt.subplots(2, 2, figsize=(8.4, 7.0))
        for row, mode in enumerate(("deterministic", "mc")):
            for col, (metric, cmap) in enumerate((("accuracy", "viridis"), ("nll", "viridis_r"))):
                ax = axes[row, col]
                cis = [[summary[f"{p1}/{p2}"][mode][metric] for p2 in grid] for p1 in grid]
                mean = np.array([[c.mean for c in r] for r in cis])
                im = ax.imshow(mean, cmap=cmap, origin="lower")
                for i, j in product(range(len(grid)), range(len(grid))):
                    ax.text(j, i, f"{mean[i, j]:.4f}\n±{cis[i][j].half_width:.4f}", ha="center", va="center",
                            fontsize=7, color="black" if _luminance(im.cmap(im.norm(mean[i, j]))) > 0.5 else "white")
                ax.set_xticks(range(len(grid)), [str(p) for p in grid])
                ax.set_yticks(range(len(grid)), [str(p) for p in grid])
                ax.set_xlabel("second hidden layer's rate p2")
                ax.set_ylabel("first hidden layer's rate p1")
                ax.grid(False)
                label = "dropout off" if mode == "deterministic" else f"MC mean, N={N_SAMPLES}"
                ax.set_title(f"test {'accuracy' if metric == 'accuracy' else 'NLL (nats)'}, {label}")
                for cell, mark in ((REFERENCE, "reference"), (SWAPPED, "swapped")):
                    if cell[0] in grid and cell[1] in grid:
                        ax.add_patch(plt.Rectangle((grid.index(cell[1]) - 0.5, grid.index(cell[0]) - 0.5), 1, 1,
                                                   fill=False, ec="red" if mark == "reference" else "magenta", lw=1.6))
                fig.colorbar(im, ax=ax, shrink=0.8)
        fig.suptitle(f"Mean ± 95% CI half-width over {len(ctx.seeds)} seeds; red box 0.2/0.5 (reference), "
                     "magenta 0.5/0.2 (swapped)", fontsize=8)
        save(fig, path)

    return StudyResult(
        NAME, TITLE, answer,
        results={"cells": summary, "per_seed": {f"{p1}/{p2}": runs for (p1, p2), runs in cells.items()},
                 "swap_minus_reference": swap, "best_cell": {m: f"{c[0]}/{c[1]}" for m, c in best.items()},
                 "best_minus_reference": best_vs_ref},
        tables=[table, swap_table], plots={"heatmap.png": heatmap}, timings=timings,
        settings={"grid": list(grid), "epochs": epochs, "mc_samples": N_SAMPLES, "recipe": "ClassifierConfig() defaults"},
    )


def _luminance(rgba: tuple[float, ...]) -> float:
    """Relative luminance of a colour (Rec. 709 weights), to pick black or white text on it."""
    return 0.2126 * rgba[0] + 0.7152 * rgba[1] + 0.0722 * rgba[2]
