"""Study 3: the variance of each hidden layer's activations over training, with and without dropout.

On a fixed batch of ``BATCH`` training rows, before training (epoch 0) and after every epoch, for hidden layer
``k`` with ReLU output ``h`` ``(B, H)``:

* pre-dropout: ``v_pre = mean_j Var_i[h_ij]``, the across-input variance of a unit, averaged over units (what
  the next layer sees at test time, dropout off);
* post-dropout: the same of ``h * m / (1 - p)``, ``m ~ Bernoulli(1 - p)`` (what it sees in training).  For one
  unit, ``Var[h m/(1-p)] = Var[h] + p/(1-p) · E[h²]``: dropout adds noise proportional to the second moment.

Masks come from a generator seeded per epoch, so measuring never draws from the training's RNG.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from mcdrop.nets.models import DropoutMLP
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

NAME = "activations"
TITLE = "Study 3: the variance of each hidden layer's activations over training"
EPOCHS, QUICK_EPOCHS = 20, 2
BATCH = 1000
MODELS = {"dropout": [0.2, 0.5], "none": [0.0, 0.0]}
LABELS = {"dropout": "dropout 0.2/0.5", "none": "no dropout"}


def layer_variances(model: DropoutMLP, x: Tensor, rates: list[float], seed: int) -> dict[str, list[float]]:
    """``{"pre": [v_l], "post": [v_l]}`` per hidden layer (module docstring), model in eval mode."""
    relus = [m for m in model.net if isinstance(m, nn.ReLU)]
    seen: list[Tensor] = []
    handles = [r.register_forward_hook(lambda _m, _a, out: seen.append(out.detach().clone())) for r in relus]
    was_training = model.training
    try:
        model.eval()
        with torch.inference_mode():
            model(x)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    g = torch.Generator().manual_seed(seed)
    pre, post = [], []
    for act, p in zip(seen, rates, strict=True):
        pre.append(float(act.var(0).mean()))
        kept = act * torch.empty_like(act).bernoulli_(1.0 - p, generator=g) / (1.0 - p) if p > 0 else act
        post.append(float(kept.var(0).mean()))
    return {"pre": pre, "post": post}


def trajectory(ctx: Context, seed: int, rates: list[float], epochs: int) -> dict[str, list[list[float]]]:
    """Per epoch 0..E: pre- and post-dropout variances of each hidden layer on the fixed batch."""
    config = ClassifierConfig(seed=seed)
    fitted = split_indices(len(ctx.data.y_train), config)["train"]
    batch = ctx.data.x_train[fitted[:BATCH]]
    out: dict[str, list[list[float]]] = {"pre": [], "post": []}

    def record(epoch: int, model: nn.Module) -> None:
        v = layer_variances(model, batch, rates, seed=1000 * seed + epoch)  # type: ignore[arg-type]
        out["pre"].append(v["pre"])
        out["post"].append(v["post"])

    def factory(in_features: int, n_classes: int) -> nn.Module:
        model = DropoutMLP(in_features, config.hidden, n_classes, dropout=rates)
        xt = ctx.data.x_train[fitted]
        model.input_shift.fill_(float(xt.mean()))  # as train_classifier sets it, so epoch 0 sees trained inputs
        model.input_scale.fill_(float(xt.std()))
        record(0, model)
        return model

    train(ctx, seed, dropout=rates, epochs=epochs, factory=factory, on_epoch=lambda e, m: record(e + 1, m))
    return out


def run(ctx: Context) -> StudyResult:
    epochs = QUICK_EPOCHS if ctx.quick else EPOCHS
    runs = {name: [trajectory(ctx, seed, rates, epochs) for seed in ctx.seeds] for name, rates in MODELS.items()}

    def arr(name: str, kind: str, layer: int) -> np.ndarray:  # (seeds, epochs + 1)
        return np.array([[v[layer] for v in r[kind]] for r in runs[name]])

    n_layers = len(MODELS["dropout"])
    summary = {name: {f"layer{k + 1}": {kind: {"epoch0": t_interval(arr(name, kind, k)[:, 0]),
                                                f"epoch{epochs}": t_interval(arr(name, kind, k)[:, -1])}
                                         for kind in ("pre", "post")} for k in range(n_layers)} for name in MODELS}
    ratio = {f"layer{k + 1}": {kind: t_interval(arr("dropout", kind, k)[:, -1] / arr("none", "pre", k)[:, -1])
                               for kind in ("pre", "post")} for k in range(n_layers)}
    growth = {name: {f"layer{k + 1}": t_interval(arr(name, "pre", k)[:, -1] / arr(name, "pre", k)[:, 0])
                     for k in range(n_layers)} for name in MODELS}
    diff = {f"layer{k + 1}": paired_interval(arr("dropout", "pre", k)[:, -1], arr("none", "pre", k)[:, -1])
            for k in range(n_layers)}

    parts = []
    for k in range(n_layers):
        key = f"layer{k + 1}"
        parts.append(f"layer {k + 1}: the pre-dropout variance grows {growth['none'][key].fmt(2)}× without dropout and "
                     f"{growth['dropout'][key].fmt(2)}× with it; at epoch {epochs} the dropout model's is "
                     f"{ratio[key]['pre'].fmt(2)}× the plain model's (post-dropout {ratio[key]['post'].fmt(2)}×)")
    answer = "Over training " + "; ".join(parts) + "."
    rows = []
    for name in MODELS:
        for k in range(n_layers):
            s = summary[name][f"layer{k + 1}"]
            rows.append([LABELS[name], k + 1, s["pre"]["epoch0"].fmt(4), s["pre"][f"epoch{epochs}"].fmt(4),
                         s["post"][f"epoch{epochs}"].fmt(4), growth[name][f"layer{k + 1}"].fmt(2)])
    table = markdown_table(["model", "hidden layer", "pre-dropout variance, epoch 0", f"pre-dropout, epoch {epochs}",
                            f"post-dropout, epoch {epochs}", f"growth epoch 0 → {epochs}"], rows)
    ratio_table = markdown_table(
        ["hidden layer", f"dropout / no dropout, pre (epoch {epochs})", "dropout post / no dropout",
         "dropout − no dropout, pre (paired)"],
        [[k + 1, ratio[f"layer{k + 1}"]["pre"].fmt(3), ratio[f"layer{k + 1}"]["post"].fmt(3), diff[f"layer{k + 1}"].fmt(4)]
         for k in range(n_layers)])

    def plot(path: Path) -> None:
        plt = pyplot()
        from matplotlib.ticker import MaxNLocator

        fig, axes = plt.subplots(1, n_layers, figsize=(5 * n_layers, 3.9))
        x = np.arange(epochs + 1)
        for k, ax in enumerate(np.atleast_1d(axes)):
            band(ax, x, arr("none", "pre", k), label=LABELS["none"], color=COLORS["none"])
            band(ax, x, arr("dropout", "pre", k), label=f"{LABELS['dropout']}: before dropout (test-time input)",
                 color=COLORS["dropout"])
            band(ax, x, arr("dropout", "post", k), label=f"{LABELS['dropout']}: after dropout (training-time input)",
                 color=COLORS["dropout"], style="--")
            ax.set_xlabel("epoch (0 = initialisation)")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel("mean per-unit variance over 1,000 inputs")
            ax.set_title(f"hidden layer {k + 1} (ReLU output, p = {MODELS['dropout'][k]} with dropout)")
            ax.set_yscale("log")
        np.atleast_1d(axes)[-1].legend(loc="lower right")
        fig.suptitle(f"Activation variance during training: mean and 95% band over {len(ctx.seeds)} seeds", fontsize=9)
        save(fig, path)

    return StudyResult(
        NAME, TITLE, answer,
        results={"summary": summary, "dropout_over_none": ratio, "growth": growth, "dropout_minus_none_pre": diff,
                 "trajectories": runs},
        tables=[table, ratio_table], plots={"variance.png": plot},
        settings={"epochs": epochs, "batch_rows": BATCH, "models": MODELS},
    )
