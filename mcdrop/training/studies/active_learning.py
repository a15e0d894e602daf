"""Study: Bayesian active learning on Fashion-MNIST, random vs entropy vs BALD vs BatchBALD.

Protocol (Gal, Islam & Ghahramani 2017; Kirsch, van Amersfoort & Gal 2019, shrunk to a CPU budget): start from
``START`` labelled training images drawn at random (per seed), then ``ROUNDS`` times: train the MLP from scratch
on the labelled set, score the pool with MC dropout (``SAMPLES`` passes, consistent masks:
:func:`mcdrop.uncertainty.acquisition.acquire_pool`), label the ``BATCH`` best rows, and record the test accuracy of
the model trained before each acquisition and after the last.  The pool is a fixed random ``POOL`` rows of the
training set (per seed); BatchBALD scores a fresh random ``BATCHBALD_POOL`` of the unlabelled pool each round
(its greedy joint entropy costs ``configurations x passes x rows x classes`` per pick) with up to
``CONFIGS`` sampled label configurations.  Test accuracy is MC (``SAMPLES`` passes) on a fixed ``TEST`` rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mcdrop.nets.models import DropoutMLP
from mcdrop.sampling.engine import MCEngine
from mcdrop.training.studies.common import (
    Context,
    StudyResult,
    band,
    markdown_table,
    paired_interval,
    pyplot,
    save,
    t_interval,
)
from mcdrop.uncertainty.acquisition import acquire_pool

NAME = "active-learning"
TITLE = "Study 8: what to label next (random, entropy, BALD, BatchBALD)"
METHODS = ("random", "entropy", "bald", "batchbald")
LABELS = {"random": "random", "entropy": "max entropy", "bald": "BALD", "batchbald": "BatchBALD"}
COLORS = {"random": "#7f7f7f", "entropy": "#ff7f0e", "bald": "#1f77b4", "batchbald": "#d62728"}
START, BATCH, ROUNDS = 100, 100, 10
POOL, BATCHBALD_POOL, TEST, SAMPLES, CONFIGS = 10_000, 1_000, 2_000, 20, 200
HIDDEN, DROPOUT, STEPS, BATCH_SIZE, LR = [256, 256], [0.2, 0.5], 400, 64, 1e-3
QUICK = {"rounds": 3, "batch": 50, "pool": 1_000, "batchbald_pool": 300, "test": 500, "steps": 100}


def fit(x: Tensor, y: Tensor, seed: int, steps: int, classes: int) -> DropoutMLP:
    """The MLP trained from scratch: Adam, ``steps`` minibatches of 64 drawn with replacement (dropout on)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DropoutMLP(x.shape[1], HIDDEN, classes, dropout=DROPOUT)
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.Adam(model.parameters(), lr=LR)
        model.train()
        for _ in range(steps):
            idx = torch.randint(0, x.shape[0], (min(BATCH_SIZE, x.shape[0]),), generator=gen)
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def accuracy(engine: MCEngine, x: Tensor, y: Tensor, seed: int) -> float:
    probs = engine.sample(x, SAMPLES, seed=seed).softmax(-1).mean(0)
    return float((probs.argmax(1) == y).float().mean())


def curve(ctx: Context, seed: int, method: str, cfg: dict[str, int]) -> list[float]:
    """Test accuracy after training on ``START + r * batch`` labels, ``r = 0..rounds``."""
    gen = torch.Generator().manual_seed(1000 + seed)
    data = ctx.data
    pool = torch.randperm(len(data.y_train), generator=gen)[: cfg["pool"]]
    labelled = pool[:START]
    free = pool[START:]
    x_test, y_test = data.x_test[: cfg["test"]], data.y_test[: cfg["test"]]
    out = []
    for r in range(cfg["rounds"] + 1):
        model = fit(data.x_train[labelled], data.y_train[labelled], seed * 100 + r, cfg["steps"], data.n_classes)
        engine = MCEngine(model)
        out.append(accuracy(engine, x_test, y_test, seed))
        if r == cfg["rounds"]:
            break
        candidates = free
        if method == "batchbald" and free.numel() > cfg["batchbald_pool"]:
            candidates = free[torch.randperm(free.numel(), generator=gen)[: cfg["batchbald_pool"]]]
        x = data.x_train[candidates]
        chunks = (x[i:i + 4096] for i in range(0, x.shape[0], 4096))
        got = acquire_pool(engine, chunks, min(cfg["batch"], candidates.numel()), method, n_samples=SAMPLES,
                           seed=seed * 1000 + r, max_configs=CONFIGS)
        chosen = candidates[got.indices]
        labelled = torch.cat([labelled, chosen])
        keep = torch.ones(len(data.y_train), dtype=torch.bool)
        keep[chosen] = False
        free = free[keep[free]]
    return out


def run(ctx: Context) -> StudyResult:
    cfg = {"rounds": ROUNDS, "batch": BATCH, "pool": POOL, "batchbald_pool": BATCHBALD_POOL, "test": TEST, "steps": STEPS}
    if ctx.quick:
        cfg.update(QUICK)
    labels = [START + r * cfg["batch"] for r in range(cfg["rounds"] + 1)]
    curves: dict[str, list[list[float]]] = {m: [] for m in METHODS}
    for method in METHODS:
        for seed in ctx.seeds:
            curves[method].append(curve(ctx, seed, method, cfg))
            ctx.log(f"active-learning {method} seed {seed}: accuracy {curves[method][-1][0]:.3f} -> "
                    f"{curves[method][-1][-1]:.3f} at {labels[-1]} labels")
    acc = {m: np.array(c) for m, c in curves.items()}
    final = {m: t_interval(a[:, -1]) for m, a in acc.items()}
    area = {m: t_interval(a.mean(1)) for m, a in acc.items()}
    vs_random = {m: paired_interval(acc[m][:, -1], acc["random"][:, -1]) for m in METHODS if m != "random"}
    area_vs_random = {m: paired_interval(acc[m].mean(1), acc["random"].mean(1)) for m in METHODS if m != "random"}
    best = max(METHODS, key=lambda m: final[m].mean)
    answer = (
        f"After {cfg['rounds']} rounds of {cfg['batch']} ({labels[-1]} labels), test accuracy is "
        + ", ".join(f"{LABELS[m]} {final[m].fmt(3)}" for m in METHODS)
        + f"; {LABELS[best]} is highest on average. Against random (paired over seeds) the final accuracy differs by "
        + ", ".join(f"{LABELS[m]} {vs_random[m].fmt(2, 100)} points" for m in vs_random)
        + "; the mean accuracy over the curve by "
        + ", ".join(f"{LABELS[m]} {area_vs_random[m].fmt(2, 100)} points" for m in area_vs_random)
        + ". An interval that contains 0 means this many seeds cannot tell the method from random."
    )
    rows = [[LABELS[m]] + [t_interval(acc[m][:, r]).fmt(3) for r in range(len(labels))] for m in METHODS]
    table = markdown_table(["method"] + [f"{n} labels" for n in labels], rows)
    diff_table = markdown_table(["method − random (paired)", "final accuracy", "mean accuracy over the curve"],
                                [[LABELS[m], vs_random[m].fmt(4), area_vs_random[m].fmt(4)] for m in vs_random])

    def plot(path: Path) -> None:
        plt = pyplot()
        fig, (ax, dx) = plt.subplots(1, 2, figsize=(11, 4.2))
        for m in METHODS:
            band(ax, labels, acc[m], label=LABELS[m], color=COLORS[m])
            if m != "random":
                band(dx, labels, acc[m] - acc["random"], label=f"{LABELS[m]} − random", color=COLORS[m])
        dx.axhline(0.0, color="black", lw=0.8)
        for a in (ax, dx):
            a.set_xlabel("labelled training images")
        ax.set_ylabel(f"test accuracy (MC, N={SAMPLES}, {cfg['test']} test images)")
        dx.set_ylabel("accuracy − random's, same seed (paired)")
        ax.legend(loc="lower right")
        dx.legend(loc="best")
        ax.set_title("test accuracy", fontsize=9)
        dx.set_title("gain over random acquisition", fontsize=9)
        fig.suptitle(f"Fashion-MNIST active learning from {START} labels, {cfg['batch']} per round: mean and 95% band over "
                     f"{len(ctx.seeds)} seeds", fontsize=9)
        save(fig, path)

    settings: dict[str, Any] = {**cfg, "start": START, "samples": SAMPLES, "configs": CONFIGS,
                                "hidden": HIDDEN, "dropout": DROPOUT, "batch_size": BATCH_SIZE, "lr": LR}
    return StudyResult(NAME, TITLE, answer,
                       results={"labels": labels, "accuracy": {m: acc[m].tolist() for m in METHODS},
                                "final": final, "mean_over_curve": area, "final_minus_random": vs_random,
                                "mean_minus_random": area_vs_random},
                       tables=[table, diff_table], plots={"accuracy.png": plot}, settings=settings)
