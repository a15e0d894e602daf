"""Study 7: other noise per hidden layer at the fixed architecture 784-256-256-10 — can it beat dropout?

* dropout: Bernoulli masks at 0.2/0.5 (the reference);
* Gaussian: multiplicative noise ``h (1 + σ ε)``, ``ε ~ N(0, 1)``, ``σ² = p/(1 - p)`` at the same ``p``: the
  same mean and variance as the Bernoulli mask (variance-matched);
* Concrete: the rate of each layer is learned (Gal, Hron & Kendall 2017) from ``P0``, with the regulariser
  :func:`mcdrop.nets.concrete.concrete_penalty` at ``N = 2 n_fitted`` (the ELBO's weight for a loss of one mean
  NLL per row) and length-scale ``LENGTH_SCALE``; it is then sampled as plain dropout at the learned rates.

All are scored on the test set deterministically and by the MC mean of ``N_SAMPLES`` passes (paired by seed).
The Concrete run replaces a grid search: its training time is set against ``len(GRID)²`` reference runs (the
grid of study 1), measured here from the dropout runs.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from mcdrop.nets.models import DropoutMLP
from mcdrop.sampling.layers import Dropout, GaussianDropout
from mcdrop.training.studies.common import (
    COLORS,
    Context,
    StudyResult,
    band,
    comparison_plot,
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
from mcdrop.training.studies.rates import GRID

NAME = "noise"
TITLE = "Study 7: Gaussian multiplicative noise and Concrete dropout vs dropout"
RATES = [0.2, 0.5]
HIDDEN = [256, 256]
EPOCHS = 10
N_SAMPLES = 50
P0, LENGTH_SCALE = 0.1, 1e-4
METRICS = ("accuracy", "nll", "ece")
LABELS = {"dropout": "dropout 0.2/0.5", "gaussian": "Gaussian, σ² = p/(1−p)", "concrete": "Concrete (learned p)"}


def gaussian_mlp(in_features: int, n_classes: int) -> nn.Module:
    """The reference MLP with each ``Dropout(p)`` replaced by ``GaussianDropout(p)``."""
    model = DropoutMLP(in_features, HIDDEN, n_classes, dropout=RATES)
    for i, module in enumerate(model.net):
        if isinstance(module, Dropout):
            model.net[i] = GaussianDropout(module.p)
    return model


def concrete_available() -> bool:
    return importlib.util.find_spec("mcdrop.nets.concrete") is not None


def run(ctx: Context) -> StudyResult:
    epochs = ctx.epochs(EPOCHS)
    methods = ["dropout", "gaussian"] + (["concrete"] if concrete_available() else [])
    n_fitted = round(len(ctx.data.y_train) * 0.9)  # ClassifierConfig's val_fraction 0.1
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    for seed in ctx.seeds:
        for method in methods:
            factory: Callable[[int, int], nn.Module] | None = None
            penalty: Callable[[nn.Module], Any] | None = None
            trace: list[list[float]] = []
            on_epoch = None
            if method == "gaussian":
                factory = gaussian_mlp
            elif method == "concrete":
                from mcdrop.nets.concrete import concrete_mlp, concrete_penalty, learned_rates

                def concrete(d: int, c: int) -> nn.Module:
                    return concrete_mlp(d, HIDDEN, c, p=P0, input_dropout=False)

                factory = concrete

                def penalty(model: nn.Module) -> Any:
                    return concrete_penalty(model, 2 * n_fitted, LENGTH_SCALE)

                def on_epoch(_epoch: int, model: nn.Module, trace: list[list[float]] = trace) -> None:
                    trace.append(list(learned_rates(model).values()))

            model, history = train(ctx, seed, dropout=RATES, epochs=epochs, factory=factory, penalty=penalty,
                                   on_epoch=on_epoch)
            extra: dict[str, Any] = {}
            if method == "concrete":
                from mcdrop.nets.concrete import to_dropout

                extra = {"learned_rates": trace[-1], "rate_trace": trace}
                model = to_dropout(model)  # type: ignore[arg-type]
            metrics = evaluate(model, ctx.data.x_test, ctx.data.y_test, n_samples=N_SAMPLES, seed=seed)
            runs[method].append({**metrics, "train_seconds": history["train_seconds"], **extra})
            ctx.log(f"noise {method} seed {seed}: accuracy {metrics['deterministic']['accuracy']:.4f} "
                    f"(MC {metrics['mc']['accuracy']:.4f}), MC NLL {metrics['mc']['nll']:.4f}"
                    + (f", rates {[round(p, 4) for p in extra['learned_rates']]}" if extra else ""))

    def values(name: str, mode: str, metric: str) -> list[float]:
        return [r[mode][metric] for r in runs[name]]

    summary = {m: {mode: {k: intervals(r, mode, k) for k in METRICS} for mode in ("deterministic", "mc")}
               for m, r in runs.items()}
    diff = {m: {mode: {k: paired_interval(values(m, mode, k), values("dropout", mode, k)) for k in METRICS}
                for mode in ("deterministic", "mc")} for m in methods[1:]}
    results: dict[str, Any] = {"summary": summary, "minus_dropout": diff, "per_seed": runs}
    seconds = {m: t_interval([r["train_seconds"] for r in rs]) for m, rs in runs.items()}
    where = machine()
    grid_cells = len(GRID) ** 2
    parts = []
    for m in methods[1:]:
        d = diff[m]["mc"]
        beats = d["nll"].high < 0 and d["accuracy"].low >= 0
        parts.append(f"{LABELS[m]} − dropout (MC N={N_SAMPLES}): accuracy {d['accuracy'].fmt(2, 100)} pp, NLL "
                     f"{d['nll'].fmt(4)}, ECE {d['ece'].fmt(4)} → {'beats dropout' if beats else 'does not beat dropout'}")
    answer = "; ".join(parts) + "."
    timing_rows = [[LABELS[m], seconds[m].fmt(2), ""] for m in methods]
    if "concrete" in runs:
        rates = np.array([r["learned_rates"] for r in runs["concrete"]])
        learned = {f"layer{j + 1}": t_interval(rates[:, j]) for j in range(rates.shape[1])}
        results["learned_rates"] = learned
        grid_ratio = t_interval(np.array([r["train_seconds"] for r in runs["concrete"]])
                                / (grid_cells * np.array([r["train_seconds"] for r in runs["dropout"]])))
        results["concrete_over_grid_time"] = grid_ratio
        timing_rows.append([f"grid of study 1 ({grid_cells} dropout runs)", f"{seconds['dropout'].mean * grid_cells:.1f}",
                            f"Concrete / grid: {grid_ratio.fmt(3)}"])
        answer += (" Concrete learned rates " + ", ".join(f"{v.fmt(3)} (layer {k[-1]})" for k, v in learned.items())
                   + f" from {P0}, in one training run instead of the {grid_cells}-run grid of study 1 (time: timings.md).")
    else:
        answer += " (Concrete dropout: mcdrop.nets.concrete is not available in this checkout.)"
    rows = [[LABELS[m], *(summary[m][mode][k].fmt(4) for mode in ("deterministic", "mc") for k in METRICS)] for m in methods]
    rows += [[f"{LABELS[m]} − dropout (paired)", *(diff[m][mode][k].fmt(4) for mode in ("deterministic", "mc")
                                                  for k in METRICS)] for m in methods[1:]]
    table = markdown_table(["method", "accuracy (det.)", "NLL (det.)", "ECE (det.)", f"accuracy (MC {N_SAMPLES})",
                            f"NLL (MC {N_SAMPLES})", f"ECE (MC {N_SAMPLES})"], rows)
    tables = [table]
    if "learned_rates" in results:
        tables.append(markdown_table(["Concrete: learned rate", "mean [95% CI]", "reference dropout rate"],
                                     [[f"hidden layer {k[-1]}", v.fmt(4), RATES[int(k[-1]) - 1]]
                                      for k, v in results["learned_rates"].items()]))
    timings = {"machine": where, "train_seconds": seconds,
               "table": f"Training time for {epochs} epochs ({where}):\n\n"
                        + markdown_table(["method", "seconds per run", "note"], timing_rows)}
    if "concrete_over_grid_time" in results:
        timings["concrete_over_grid"] = results.pop("concrete_over_grid_time")

    colors = {"dropout": COLORS["dropout"], "gaussian": COLORS["third"], "concrete": COLORS["fourth"]}
    plots = {"comparison.png": lambda path: comparison_plot(
        path, summary, diff, LABELS, colors, N_SAMPLES, f"784-256-256-10, {epochs} epochs: mean and 95% CI over "
        f"{len(ctx.seeds)} seeds (bottom: paired differences from dropout, same seeds)")}
    if "concrete" in runs and epochs > 1:
        plots["concrete_rates.png"] = lambda path: _rates(path, ctx, runs["concrete"], epochs)
    return StudyResult(NAME, TITLE, answer, results=results, tables=tables, plots=plots, timings=timings,
                       settings={"rates": RATES, "hidden": HIDDEN, "epochs": epochs, "mc_samples": N_SAMPLES,
                                 "concrete": {"p0": P0, "length_scale": LENGTH_SCALE, "temperature": 0.1,
                                              "n_for_penalty": 2 * n_fitted}})


def _rates(path: Path, ctx: Context, runs: list[dict[str, Any]], epochs: int) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    trace = np.array([r["rate_trace"] for r in runs])  # (seeds, epochs, layers)
    x = np.arange(1, epochs + 1)
    for j, color in zip(range(trace.shape[2]), (COLORS["dropout"], COLORS["none"]), strict=False):
        band(ax, x, trace[:, :, j], label=f"hidden layer {j + 1} (reference {RATES[j]})", color=color)
        ax.axhline(RATES[j], color=color, ls=":", lw=0.8)
    ax.axhline(P0, color="grey", ls="--", lw=0.8, label=f"initial rate {P0}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("Concrete dropout rate p")
    ax.set_title(f"Learned rates: mean and 95% band over {len(ctx.seeds)} seeds")
    ax.legend(loc="best")
    save(fig, path)
