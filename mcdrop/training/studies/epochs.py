"""Study 2: many more epochs with and without dropout; where overfitting begins.

After every epoch the model (dropout off) is scored on a fixed subset of its training rows and on the test set.
Overfitting begins, by this study's definition, at the epoch ``e* = argmin_e NLL_test(e)`` (1-based): after it
the test NLL rises while the training NLL keeps falling.  ``e*`` and the final generalisation gap
``NLL_test - NLL_train`` are summarised over seeds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mcdrop.training.classifier import split_indices
from mcdrop.training.configs import ClassifierConfig
from mcdrop.training.studies.common import (
    COLORS,
    Context,
    StudyResult,
    band,
    markdown_table,
    paired_interval,
    pyplot,
    save,
    t_interval,
    train,
)

NAME = "epochs"
TITLE = "Study 2: many more epochs with and without dropout"
EPOCHS, QUICK_EPOCHS = 60, 3
TRAIN_ROWS = 10_000  # training rows scored per epoch (a fixed subset of the fitted rows)
MODELS = {"dropout": [0.2, 0.5], "none": [0.0, 0.0]}
LABELS = {"dropout": "dropout 0.2/0.5", "none": "no dropout"}


def _scores(model: nn.Module, x: Tensor, y: Tensor) -> tuple[float, float]:
    with torch.inference_mode():
        logits = model(x)
    return float(nn.functional.cross_entropy(logits, y)), float((logits.argmax(1) == y).float().mean())


def curves(ctx: Context, seed: int, dropout: list[float], epochs: int) -> dict[str, list[float]]:
    """Per-epoch train/test NLL and accuracy (dropout off) and the running training loss (dropout on)."""
    rows = split_indices(len(ctx.data.y_train), ClassifierConfig(seed=seed))["train"][:TRAIN_ROWS]
    x_fit, y_fit = ctx.data.x_train[rows], ctx.data.y_train[rows]
    out: dict[str, list[float]] = {k: [] for k in ("train_nll", "train_accuracy", "test_nll", "test_accuracy")}

    def on_epoch(_epoch: int, model: nn.Module) -> None:
        model.eval()
        for part, (x, y) in (("train", (x_fit, y_fit)), ("test", (ctx.data.x_test, ctx.data.y_test))):
            nll, acc = _scores(model, x, y)
            out[f"{part}_nll"].append(nll)
            out[f"{part}_accuracy"].append(acc)
        model.train()

    _, history = train(ctx, seed, dropout=dropout, epochs=epochs, on_epoch=on_epoch)
    out["running_loss"] = history["loss"]
    return out


def run(ctx: Context) -> StudyResult:
    epochs = QUICK_EPOCHS if ctx.quick else EPOCHS
    runs: dict[str, list[dict[str, list[float]]]] = {name: [] for name in MODELS}
    for name, rates in MODELS.items():
        for seed in ctx.seeds:
            runs[name].append(curves(ctx, seed, rates, epochs))
            best = int(np.argmin(runs[name][-1]["test_nll"])) + 1
            ctx.log(f"epochs {name} seed {seed}: lowest test NLL at epoch {best}, final test accuracy "
                    f"{runs[name][-1]['test_accuracy'][-1]:.4f}")

    def arr(name: str, key: str) -> np.ndarray:
        return np.array([r[key] for r in runs[name]])

    stats: dict[str, dict[str, Any]] = {}
    for name in MODELS:
        nll_test = arr(name, "test_nll")
        stats[name] = {
            "best_epoch": t_interval(nll_test.argmin(1) + 1),
            "best_test_nll": t_interval(nll_test.min(1)),
            "best_test_accuracy": t_interval(arr(name, "test_accuracy").max(1)),
            "final_test_nll": t_interval(nll_test[:, -1]),
            "final_test_accuracy": t_interval(arr(name, "test_accuracy")[:, -1]),
            "final_train_accuracy": t_interval(arr(name, "train_accuracy")[:, -1]),
            "final_gap_nll": t_interval(nll_test[:, -1] - arr(name, "train_nll")[:, -1]),
            "nll_rise_after_best": t_interval(nll_test[:, -1] - nll_test.min(1)),
        }
    diff = {key: paired_interval(_last(arr("dropout", k)), _last(arr("none", k)))
            for key, k in (("final_test_accuracy", "test_accuracy"), ("final_test_nll", "test_nll"))}
    diff["best_epoch"] = paired_interval(arr("dropout", "test_nll").argmin(1) + 1.0, arr("none", "test_nll").argmin(1) + 1.0)
    diff["best_test_nll"] = paired_interval(arr("dropout", "test_nll").min(1), arr("none", "test_nll").min(1))

    d, n = stats["dropout"], stats["none"]
    answer = (
        f"Without dropout the test NLL is lowest at epoch {n['best_epoch'].fmt(1)} and then rises by "
        f"{n['nll_rise_after_best'].fmt(3)} nats by epoch {epochs} (train accuracy {n['final_train_accuracy'].mean:.3f}); "
        f"with dropout 0.2/0.5 the minimum comes at epoch {d['best_epoch'].fmt(1)} (later by "
        f"{diff['best_epoch'].fmt(1)} epochs) and the rise is {d['nll_rise_after_best'].fmt(3)}. "
        f"At epoch {epochs}, dropout's test accuracy differs by {diff['final_test_accuracy'].fmt(2, 100)} points and its "
        f"test NLL by {diff['final_test_nll'].fmt(3)}."
    )
    rows = [[LABELS[name], s["best_epoch"].fmt(1), s["best_test_nll"].fmt(4), s["best_test_accuracy"].fmt(4),
             s["final_test_nll"].fmt(4), s["final_test_accuracy"].fmt(4), s["final_train_accuracy"].fmt(4),
             s["final_gap_nll"].fmt(4)] for name, s in stats.items()]
    table = markdown_table(["model", "epoch of lowest test NLL", "lowest test NLL", "best test accuracy",
                            f"test NLL at {epochs}", f"test accuracy at {epochs}", f"train accuracy at {epochs}",
                            f"NLL gap test − train at {epochs}"], rows)
    diff_table = markdown_table(["dropout − no dropout (paired)", "value"],
                                [[k.replace("_", " "), v.fmt(4)] for k, v in diff.items()])

    def plot(path: Path) -> None:
        plt = pyplot()
        from matplotlib.ticker import MaxNLocator

        fig, axes = plt.subplots(1, 2, figsize=(10, 4.0))
        x = np.arange(1, epochs + 1)
        for ax, metric, label in ((axes[0], "nll", "NLL (nats), dropout off"), (axes[1], "accuracy", "accuracy, dropout off")):
            for row, name in enumerate(MODELS):
                color = COLORS[name]
                band(ax, x, arr(name, f"train_{metric}"), label=f"{LABELS[name]}: train", color=color, style="--")
                band(ax, x, arr(name, f"test_{metric}"), label=f"{LABELS[name]}: test", color=color)
                if metric == "nll":
                    best = stats[name]["best_epoch"]
                    ax.axvline(best.mean, color=color, lw=0.8, ls=":")
                    ax.text(best.mean, 0.98 - 0.1 * row, f" {LABELS[name]}: min test NLL\n at epoch {best.mean:.1f}",
                            color=color, fontsize=7, va="top", transform=ax.get_xaxis_transform())
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel(label)
        axes[0].set_yscale("log")
        axes[0].set_title("train (10,000 fitted rows) and test NLL")
        axes[1].set_title("train and test accuracy")
        means = [arr(n, f"{p}_accuracy").mean(0) for n in MODELS for p in ("train", "test")]
        axes[1].set_ylim(min(m.min() for m in means) - 0.02, min(1.0, max(m.max() for m in means) + 0.01))
        axes[1].legend(loc="lower right")
        fig.suptitle(f"Reference recipe (784-256-256-10, SGD 0.1, batch 256) for {epochs} epochs: mean and 95% band "
                     f"over {len(ctx.seeds)} seeds", fontsize=9)
        save(fig, path)

    return StudyResult(
        NAME, TITLE, answer,
        results={"summary": stats, "dropout_minus_none": diff, "curves": runs},
        tables=[table, diff_table], plots={"curves.png": plot},
        settings={"epochs": epochs, "train_rows_scored": TRAIN_ROWS, "models": MODELS},
    )


def _last(a: np.ndarray) -> np.ndarray:
    return a[:, -1]
