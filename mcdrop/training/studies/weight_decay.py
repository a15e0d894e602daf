"""Study 5: dropout vs weight decay and both together, on the same architecture (a 2 × K factorial design).

Every cell (dropout ∈ {off, 0.2/0.5}) × (weight decay λ ∈ ``DECAYS``) trains once per seed; the cells of one
seed share its split, initialisation and batch order, so effects are paired by seed.  With the test metric
``m`` oriented so that larger is better (accuracy, −NLL), the effects relative to (off, 0) are
``D = m(on, 0) − m(off, 0)``, ``W = m(off, λ) − m(off, 0)``, ``B = m(on, λ) − m(off, 0)``, and the interaction
contrast ``I = B − D − W = m(on, λ) − m(on, 0) − m(off, λ) + m(off, 0)``.  Verdict: additive when I's 95% interval
holds 0; else superadditive when I > 0; else cancelling when B is below the better single effect
``max(D, W)``; else diminishing.
"""

from __future__ import annotations

from itertools import product
from pathlib import Path
from typing import Any

import numpy as np

from mcdrop.training.studies.common import (
    COLORS,
    Context,
    Interval,
    StudyResult,
    evaluate,
    intervals,
    markdown_table,
    pyplot,
    save,
    t_interval,
    train,
)

NAME = "weight-decay"
TITLE = "Study 5: dropout vs weight decay, and both"
DECAYS = (0.0, 5e-4, 2e-3)
QUICK_DECAYS = (0.0, 2e-3)
DROPOUT = {"off": [0.0, 0.0], "0.2/0.5": [0.2, 0.5]}
EPOCHS = 20
ORIENT = {"accuracy": 1.0, "nll": -1.0}  # larger-is-better orientation of each metric


def verdict(interaction: Interval, both: float, best_single: float) -> str:
    """The module docstring's rule, on effects oriented larger-is-better."""
    if not interaction.excludes(0.0):
        return "additive (interaction CI holds 0)"
    if interaction.mean > 0:
        return "superadditive"
    return "cancelling" if both < best_single else "diminishing"


def run(ctx: Context) -> StudyResult:
    decays = QUICK_DECAYS if ctx.quick else DECAYS
    epochs = ctx.epochs(EPOCHS)
    runs: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for (name, rates), wd in product(DROPOUT.items(), decays):
        runs[(name, wd)] = []
        for seed in ctx.seeds:
            model, _ = train(ctx, seed, dropout=rates, weight_decay=wd, epochs=epochs)
            runs[(name, wd)].append(evaluate(model, ctx.data.x_test, ctx.data.y_test)["deterministic"])
            ctx.log(f"weight-decay dropout {name} λ={wd:g} seed {seed}: accuracy {runs[(name, wd)][-1]['accuracy']:.4f}")

    def values(cell: tuple[str, float], metric: str) -> np.ndarray:
        return ORIENT[metric] * np.array([r[metric] for r in runs[cell]])

    cells = {f"dropout {n}, wd {wd:g}": {m: intervals(r, m) for m in ("accuracy", "nll", "ece")}
             for (n, wd), r in runs.items()}
    contrasts: dict[str, dict[str, Any]] = {}
    for wd in decays[1:]:
        for metric in ORIENT:
            base = values(("off", 0.0), metric)
            d = values(("0.2/0.5", 0.0), metric) - base
            w = values(("off", wd), metric) - base
            b = values(("0.2/0.5", wd), metric) - base
            inter = t_interval(b - d - w)
            contrasts[f"wd {wd:g}, {metric}"] = {
                "dropout_effect": t_interval(d), "decay_effect": t_interval(w), "both_effect": t_interval(b),
                "sum_of_effects": t_interval(d + w), "interaction": inter,
                "verdict": verdict(inter, float(b.mean()), float(max(d.mean(), w.mean()))),
            }

    sign = {"accuracy": 100.0, "nll": 1.0}
    rows = [[key, *(f"{c[k].fmt(3, sign[key.split(', ')[1]])}" for k in
                    ("dropout_effect", "decay_effect", "both_effect", "sum_of_effects", "interaction")), c["verdict"]]
            for key, c in contrasts.items()]
    contrast_table = markdown_table(["λ, metric (larger is better; accuracy in pp, −NLL in nats)", "dropout D",
                                     "weight decay W", "both B", "D + W", "interaction I = B − D − W", "verdict"], rows)
    cell_table = markdown_table(["cell", "test accuracy", "test NLL", "test ECE"],
                                [[k, v["accuracy"].fmt(4), v["nll"].fmt(4), v["ece"].fmt(4)] for k, v in cells.items()])
    top = f"wd {decays[-1]:g}"
    acc, nll = contrasts[f"{top}, accuracy"], contrasts[f"{top}, nll"]
    answer = (
        f"At λ={decays[-1]:g} ({epochs} epochs, dropout off at test): dropout alone changes accuracy by "
        f"{acc['dropout_effect'].fmt(2, 100)} pp, weight decay alone by {acc['decay_effect'].fmt(2, 100)} pp, both by "
        f"{acc['both_effect'].fmt(2, 100)} pp; the interaction contrast is {acc['interaction'].fmt(2, 100)} pp → "
        f"{acc['verdict']}. In NLL (−NLL, nats) the interaction is {nll['interaction'].fmt(4)} → {nll['verdict']}."
        + "".join(f" At λ={wd:g}: accuracy interaction {contrasts[f'wd {wd:g}, accuracy']['interaction'].fmt(2, 100)} pp "
                  f"({contrasts[f'wd {wd:g}, accuracy']['verdict']}), NLL {contrasts[f'wd {wd:g}, nll']['verdict']}."
                  for wd in decays[1:-1])
    )

    def plot(path: Path) -> None:
        plt = pyplot()
        fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.8))
        xs = np.arange(len(decays))
        for ax, metric, label in ((axes[0], "accuracy", "test accuracy"), (axes[1], "nll", "test NLL (nats)")):
            for offset, (name, color) in zip((-0.04, 0.04), (("off", COLORS["none"]), ("0.2/0.5", COLORS["dropout"])),
                                              strict=True):
                cis = [cells[f"dropout {name}, wd {wd:g}"][metric] for wd in decays]
                mean = np.array([c.mean for c in cis])
                err = np.array([[c.mean - c.low for c in cis], [c.high - c.mean for c in cis]])
                ax.errorbar(xs + offset, mean, yerr=err, fmt="o-", color=color, capsize=3,
                            label="dropout off" if name == "off" else "dropout 0.2/0.5")
            ax.set_xticks(xs, [f"{wd:g}" for wd in decays])
            ax.set_xlabel("weight decay λ (SGD)")
            ax.set_ylabel(label)
            ax.set_title(f"{label}: parallel lines = additive effects")
        axes[0].legend(loc="best")
        fig.suptitle(f"Interaction plot, {epochs} epochs, dropout off at test: mean and 95% CI over {len(ctx.seeds)} seeds",
                     fontsize=9)
        save(fig, path)

    return StudyResult(
        NAME, TITLE, answer,
        results={"cells": cells, "contrasts": contrasts,
                 "per_seed": {f"dropout {n}, wd {wd:g}": r for (n, wd), r in runs.items()}},
        tables=[cell_table, contrast_table], plots={"interaction.png": plot},
        settings={"decays": list(decays), "dropout": DROPOUT, "epochs": epochs, "evaluation": "deterministic"},
    )
