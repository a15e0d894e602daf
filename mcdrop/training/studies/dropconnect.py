"""Study 6: dropout on the weights (DropConnect) vs on the activations, at the same architecture and rates.

Dropout after hidden layer ``l`` at rate ``p_l`` zeroes unit ``j`` of ``h_l`` for every weight it feeds; the
rate-matched DropConnect model instead drops each weight of the next linear layer independently,
``y = x (W ⊙ M / (1 - p_l))^T + b``, ``M_ij ~ Bernoulli(1 - p_l)``: the same mean and per-weight keep rate, finer
noise.  (Training shares one weight mask per mini-batch, as :func:`mcdrop.sampling.functional.dropconnect_linear`
does; MC passes draw one per (sample, row).)  Both are scored on the test set deterministically and by the MC
mean of ``N_SAMPLES`` passes; differences are paired by seed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from mcdrop.nets.models import DropoutMLP
from mcdrop.sampling.layers import DropConnectLinear
from mcdrop.training.studies.common import (
    COLORS,
    Context,
    StudyResult,
    comparison_plot,
    evaluate,
    intervals,
    machine,
    markdown_table,
    paired_interval,
    t_interval,
    train,
)

NAME = "dropconnect"
TITLE = "Study 6: DropConnect (dropout on the weights) vs dropout on the activations"
RATES = [0.2, 0.5]
HIDDEN = [256, 256]
EPOCHS = 10
N_SAMPLES, QUICK_SAMPLES = 20, 5  # DropConnect's MC masks are per (sample, row, weight): 68k per pass-row here
METRICS = ("accuracy", "nll", "ece")
LABELS = {"dropout": "dropout 0.2/0.5 (activations)", "dropconnect": "DropConnect 0.2/0.5 (weights)"}


def dropconnect_mlp(in_features: int, n_classes: int, hidden: list[int] = HIDDEN, rates: list[float] = RATES) -> nn.Module:
    """``Linear -> ReLU -> (DropConnectLinear(p_l) -> ReLU)* -> DropConnectLinear(p_L)``, with DropoutMLP's buffers
    and forward: a :class:`DropoutMLP` (no dropout) whose linear layers after hidden layer ``l`` drop weights."""
    model = DropoutMLP(in_features, hidden, n_classes, dropout=0.0)
    layers: list[nn.Module] = []
    rate = iter(rates)
    for module in model.net:
        if isinstance(module, nn.Linear) and layers:
            layers.append(DropConnectLinear(module.in_features, module.out_features, p=next(rate)))
        elif isinstance(module, (nn.Linear, nn.ReLU)):
            layers.append(module)
    model.net = nn.Sequential(*layers)
    return model


def run(ctx: Context) -> StudyResult:
    n_samples = QUICK_SAMPLES if ctx.quick else N_SAMPLES
    epochs = ctx.epochs(EPOCHS)
    runs: dict[str, list[dict[str, Any]]] = {"dropout": [], "dropconnect": []}
    for seed in ctx.seeds:
        for name in runs:
            factory = dropconnect_mlp if name == "dropconnect" else None
            model, history = train(ctx, seed, dropout=RATES, epochs=epochs, factory=factory)
            metrics = evaluate(model, ctx.data.x_test, ctx.data.y_test, n_samples=n_samples, seed=seed)
            runs[name].append({**metrics, "train_seconds": history["train_seconds"]})
            ctx.log(f"dropconnect {name} seed {seed}: accuracy {metrics['deterministic']['accuracy']:.4f} "
                    f"(MC {metrics['mc']['accuracy']:.4f}) in {history['train_seconds']:.1f} s")

    def values(name: str, mode: str, metric: str) -> list[float]:
        return [r[mode][metric] for r in runs[name]]

    summary = {name: {mode: {m: intervals(r, mode, m) for m in METRICS} for mode in ("deterministic", "mc")}
               for name, r in runs.items()}
    diff = {mode: {m: paired_interval(values("dropconnect", mode, m), values("dropout", mode, m)) for m in METRICS}
            for mode in ("deterministic", "mc")}
    seconds = {name: t_interval([r["train_seconds"] for r in rs]) for name, rs in runs.items()}
    time_ratio = t_interval(np.array([r["train_seconds"] for r in runs["dropconnect"]])
                            / np.array([r["train_seconds"] for r in runs["dropout"]]))
    dc, do = summary["dropconnect"], summary["dropout"]
    answer = (
        f"DropConnect − dropout, MC (N={n_samples}): accuracy {diff['mc']['accuracy'].fmt(2, 100)} pp, NLL "
        f"{diff['mc']['nll'].fmt(4)}, ECE {diff['mc']['ece'].fmt(4)}; dropout off: accuracy "
        f"{diff['deterministic']['accuracy'].fmt(2, 100)} pp, NLL {diff['deterministic']['nll'].fmt(4)} "
        f"(DropConnect MC accuracy {dc['mc']['accuracy'].mean:.4f} vs {do['mc']['accuracy'].mean:.4f}). "
        "Training times: timings.md."
    )
    rows = [[LABELS[name], *(summary[name][mode][m].fmt(4) for mode in ("deterministic", "mc") for m in METRICS)]
            for name in runs]
    rows.append(["DropConnect − dropout (paired)", *(diff[mode][m].fmt(4) for mode in ("deterministic", "mc")
                                                      for m in METRICS)])
    table = markdown_table(["model", "accuracy (det.)", "NLL (det.)", "ECE (det.)", f"accuracy (MC {n_samples})",
                            f"NLL (MC {n_samples})", f"ECE (MC {n_samples})"], rows)
    where = machine()
    timings = {"machine": where, "train_seconds": seconds, "dropconnect_over_dropout": time_ratio,
               "table": f"Training time for {epochs} epochs ({where}):\n\n" + markdown_table(
                   ["model", "seconds", "ratio to dropout (paired)"],
                   [[LABELS["dropout"], seconds["dropout"].fmt(2), ""],
                    [LABELS["dropconnect"], seconds["dropconnect"].fmt(2), time_ratio.fmt(3)]])}

    def plot(path: Path) -> None:
        comparison_plot(path, summary, {"dropconnect": diff}, LABELS,
                        {"dropout": COLORS["dropout"], "dropconnect": COLORS["third"]}, n_samples,
                        f"784-256-256-10, {epochs} epochs: mean and 95% CI over {len(ctx.seeds)} seeds (bottom: paired "
                        "differences, same seeds)")

    return StudyResult(
        NAME, TITLE, answer,
        results={"summary": summary, "dropconnect_minus_dropout": diff, "per_seed": runs},
        tables=[table], plots={"comparison.png": plot}, timings=timings,
        settings={"rates": RATES, "hidden": HIDDEN, "epochs": epochs, "mc_samples": n_samples},
    )
