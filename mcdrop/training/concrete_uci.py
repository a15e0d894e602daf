"""The UCI regression benchmark with Concrete dropout: the rates are learned, not grid-searched.

Per split: standardise inputs and target with the training rows' statistics and train ONE network on all
training rows (no validation split, no grid): Concrete dropout (:mod:`mcdrop.nets.concrete`) on the input and
after the single ReLU layer of ``n_hidden`` units, each with its own learned rate, and a heteroscedastic head
``(mu, s = log sigma^2)`` as in Gal, Hron & Kendall (2017), so neither ``p`` nor ``tau`` needs a grid.  Loss per
network, in standardised units (the paper's, twice the Gaussian NLL per row):

    mean_i [exp(-s_i) (y_i - mu_i)^2 + s_i] + sum_layers [l^2/N |W|^2 / (1 - p) + 2/N K (p log p + (1-p) log(1-p))]

``l = config.length_scale`` (10^-2, the grid protocol's prior), ``N`` training rows, ``K`` the dropped units.
Adam (lr, batch, Glorot-uniform kernels and epochs as in :mod:`mcdrop.training.uci`), temperature 0.1,
initial rate 0.1.  The trained network is served as ordinary keyed dropout at the learned rates
(:func:`~mcdrop.nets.concrete.to_dropout`) and scored on the test rows with ``T`` MC passes:

* RMSE of the MC mean ``mean_t mu_t`` (and of the dropout-off prediction beside it),
* LL ``= mean_i [logsumexp_t(-(y_i - mu_ti)^2 / (2 sigma_ti^2) - log sigma_ti) - log T - log(2 pi)/2]``,
  the mixture over passes, each with its own variance.

A learned rate can collapse towards 0 (Adam moves ``p_logit`` by about ``lr`` a step whatever the size of its
gradient, and the entropy term's pull, ``~ K a p (1 - p) 2/N``, vanishes with ``p``); rates below ``2^-17`` are
0 in keyed masks, and a split whose rates are all that small is scored by its deterministic pass (``MC off``
in the table).

The 20 split networks train together as one stacked network (batched matmuls, per-network ``p_logit`` of
shape ``(G,)``), as :func:`mcdrop.training.uci._train_stack` does for the grid.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import special
from torch import Tensor, nn

from mcdrop.nets.concrete import (
    ConcreteDropout,
    concrete_dropout,
    concrete_mlp,
    concrete_regulariser,
    learned_rates,
    logistic_noise,
    to_dropout,
)
from mcdrop.nets.models import DropoutMLP
from mcdrop.request import Task
from mcdrop.sampling import functional as F
from mcdrop.sampling.engine import DropoutConfigError, MCEngine
from mcdrop.sampling.layers import MCDropoutLayer
from mcdrop.training.configs import UCIConfig
from mcdrop.training.data import UCIDataset
from mcdrop.training.uci import _standardise, mean_se
from mcdrop.uncertainty import metrics as M

__all__ = ["ConcreteSplitResult", "ConcreteUCIResult", "fit_concrete", "heteroscedastic_mixture_ll",
           "keyed_dropout_off", "run_concrete", "score_heteroscedastic", "summarize_concrete"]

Log = Callable[[str], None]
INIT_P = 0.1
TEMPERATURE = 0.1


@dataclass
class ConcreteSplitResult:
    split: int
    p_input: float  # learned rates
    p_hidden: float
    rmse: float  # of the MC mean
    rmse_deterministic: float
    ll: float
    mc_off: bool = False  # learned rates ~0 (< 2^-17, or the engine saw identical passes): scored deterministically


@dataclass
class ConcreteUCIResult:
    dataset: str
    n_rows: int
    n_features: int
    epochs: int
    config: UCIConfig
    splits: list[ConcreteSplitResult]
    seconds: float  # training and scoring
    train_seconds: float

    def mean_se(self, name: str) -> tuple[float, float]:
        """Mean and standard error of a split metric over splits (:func:`mcdrop.training.uci.mean_se`)."""
        return mean_se([getattr(s, name) for s in self.splits])


# ---------------------------------------------------------------------------------------------- training


def _train_concrete_stack(
    xs: Tensor, ys: Tensor, *, hidden: int, epochs: int, batch_size: int, lr: float, length_scale: float,
    generator: torch.Generator, init_p: float = INIT_P, temperature: float = TEMPERATURE,
) -> dict[str, Tensor]:
    """Train G one-hidden-layer heteroscedastic Concrete-dropout networks at once, one per data set.

    Args:
        xs, ys: standardised training sets. Shape: ``(G, N, D)``, ``(G, N)``.

    Returns:
        ``w1 (G, D, H)``, ``b1 (G, H)``, ``w2 (G, H, 2)``, ``b2 (G, 2)``, ``p_in (G,)``, ``p_hidden (G,)`` (the
        last two as logits ``p_logit``).
    """
    g, n, d = xs.shape
    bound1, bound2 = math.sqrt(6 / (d + hidden)), math.sqrt(6 / (hidden + 2))
    w1 = ((torch.rand(g, d, hidden, generator=generator) * 2 - 1) * bound1).requires_grad_()
    w2 = ((torch.rand(g, hidden, 2, generator=generator) * 2 - 1) * bound2).requires_grad_()
    b1 = torch.zeros(g, 1, hidden, requires_grad=True)
    b2 = torch.zeros(g, 1, 2, requires_grad=True)
    logit = math.log(init_p) - math.log1p(-init_p)
    a_in = torch.full((g, 1, 1), logit, requires_grad=True)
    a_h = torch.full((g, 1, 1), logit, requires_grad=True)
    opt = torch.optim.Adam([w1, b1, w2, b2, a_in, a_h], lr=lr, foreach=True)
    wr, dr = length_scale**2 / n, 2.0 / n
    net_index = torch.arange(g).view(g, 1)
    for _ in range(epochs):
        order = torch.argsort(torch.rand(g, n, generator=generator), dim=1)
        # the logistic noise of every row of the epoch, in two draws (it does not depend on the rates)
        noise_in = logistic_noise(torch.rand(g, n, d, generator=generator))
        noise_h = logistic_noise(torch.rand(g, n, hidden, generator=generator))
        for start in range(0, n, batch_size):
            stop = start + batch_size
            idx = order[:, start:stop]
            xb, yb = xs[net_index, idx], ys[net_index, idx]
            xb = concrete_dropout(xb, a_in, temperature, noise=noise_in[:, start:stop])
            h = torch.relu(torch.baddbmm(b1, xb, w1))
            h = concrete_dropout(h, a_h, temperature, noise=noise_h[:, start:stop])
            out = torch.baddbmm(b2, h, w2)
            mu, s = out[..., 0], out[..., 1]
            loss = (torch.exp(-s) * (yb - mu) ** 2 + s).mean(1)
            reg = (concrete_regulariser(w1.square().sum((1, 2)), d, a_in.view(g), wr, dr)
                   + concrete_regulariser(w2.square().sum((1, 2)), hidden, a_h.view(g), wr, dr))
            opt.zero_grad(set_to_none=True)
            (loss + reg).sum().backward()
            opt.step()
    return {"w1": w1.detach(), "b1": b1.detach().squeeze(1), "w2": w2.detach(), "b2": b2.detach().squeeze(1),
            "p_in": a_in.detach().view(g), "p_hidden": a_h.detach().view(g)}


def _unstack(weights: dict[str, Tensor], i: int, x_stats: tuple[np.ndarray, np.ndarray],
             y_stats: tuple[float, float]) -> DropoutMLP:
    """Network ``i`` of the stack as a Concrete :class:`DropoutMLP` (input dropout, one hidden layer)."""
    d, hidden = weights["w1"].shape[1:]
    model = concrete_mlp(d, [hidden], 1, p=INIT_P, head=Task.HETEROSCEDASTIC)
    with torch.no_grad():
        drop_in, drop_h = [m for m in model.net if isinstance(m, ConcreteDropout)]  # net: drop, lin, relu, drop, lin
        first, last = [m for m in model.net if isinstance(m, nn.Linear)]
        drop_in.p_logit.fill_(float(weights["p_in"][i]))
        drop_h.p_logit.fill_(float(weights["p_hidden"][i]))
        first.weight.copy_(weights["w1"][i].T)
        first.bias.copy_(weights["b1"][i])
        last.weight.copy_(weights["w2"][i].T)
        last.bias.copy_(weights["b2"][i])
        model.input_shift.copy_(torch.as_tensor(x_stats[0], dtype=torch.float32))
        model.input_scale.copy_(torch.as_tensor(x_stats[1], dtype=torch.float32))
        model.target_shift.fill_(y_stats[0])
        model.target_scale.fill_(y_stats[1])
    return model.eval()


def _fit_many(dataset: UCIDataset, row_sets: Sequence[np.ndarray], config: UCIConfig,
              generator: torch.Generator) -> list[DropoutMLP]:
    """One Concrete network per row set (all at once when the sets have equal sizes)."""
    if len({len(r) for r in row_sets}) > 1:
        return [_fit_many(dataset, [r], config, generator)[0] for r in row_sets]
    x_stats = [_standardise(dataset.x[r]) for r in row_sets]
    y_stats = [(float(dataset.y[r].mean()), float(dataset.y[r].std() or 1.0)) for r in row_sets]
    xs = torch.tensor(np.stack([(dataset.x[r] - m) / s for r, (m, s) in zip(row_sets, x_stats, strict=True)]),
                      dtype=torch.float32)
    ys = torch.tensor(np.stack([(dataset.y[r] - m) / s for r, (m, s) in zip(row_sets, y_stats, strict=True)]),
                      dtype=torch.float32)
    weights = _train_concrete_stack(xs, ys, hidden=dataset.n_hidden, epochs=config.epochs(dataset),
                                    batch_size=config.batch_size, lr=config.lr, length_scale=config.length_scale,
                                    generator=generator)
    return [_unstack(weights, k, x_stats[k], y_stats[k]) for k in range(len(row_sets))]


def fit_concrete(dataset: UCIDataset, config: UCIConfig, rows: np.ndarray | None = None) -> DropoutMLP:
    """One Concrete network on ``rows`` of ``dataset`` (default: every row); serve it with ``to_dropout``."""
    generator = torch.Generator().manual_seed(config.seed)
    rows = np.arange(len(dataset.y)) if rows is None else rows
    return _fit_many(dataset, [rows], config, generator)[0]


# ---------------------------------------------------------------------------------------------- scoring


def heteroscedastic_mixture_ll(samples: Tensor | np.ndarray, target: np.ndarray) -> float:
    """Mean test LL of the mixture of ``T`` Gaussians ``N(mu_t, exp(s_t))``, one per pass.

    Shape: samples ``(T, N, 2)`` (mean, log-variance), target ``(N,)``.
    """
    s = np.asarray(samples, dtype=np.float64)
    y = np.asarray(target, dtype=np.float64)
    mu, log_var = s[..., 0], s[..., 1]
    log_pdf = -0.5 * (y[None] - mu) ** 2 * np.exp(-log_var) - 0.5 * log_var
    ll = special.logsumexp(log_pdf, axis=0) - math.log(s.shape[0]) - 0.5 * math.log(2 * math.pi)
    return float(ll.mean())


def keyed_dropout_off(model: DropoutMLP) -> bool:
    """True when every dropout rate of ``model`` rounds to 0 in keyed masks (``p < 2^-17``): its MC passes are
    all the deterministic pass (the engine then refuses MC mode)."""
    return all(F.quantized_rate(m.p)[2] == 0.0 for m in model.modules() if isinstance(m, MCDropoutLayer))


def score_heteroscedastic(model: DropoutMLP, x: np.ndarray, y: np.ndarray, n_samples: int, seed: int
                          ) -> dict[str, float]:
    """RMSE of the MC mean, the dropout-off RMSE and the mixture LL, from ``n_samples`` batched passes.

    When the learned rates are all below the keyed masks' resolution (:func:`keyed_dropout_off`), or so small
    that the engine's probe sees identical passes and refuses MC mode, the ``T`` passes are taken to be the
    deterministic one and the mixture is that one Gaussian (``mc_off`` = 1).
    """
    engine = MCEngine(model)
    xt = torch.as_tensor(x, dtype=torch.float32)
    mc_off = keyed_dropout_off(model)
    if not mc_off:
        try:
            samples = engine.sample(xt, n_samples, seed=seed).double()  # (T, N, 2) in target units
        except DropoutConfigError:  # the engine's probe saw 32 identical passes: rates of ~1e-5 drop ~nothing
            mc_off = True
    if mc_off:
        samples = engine.deterministic(xt).double()[None]  # (1, N, 2): T identical passes
    return {
        "rmse": M.rmse(samples[..., 0].mean(0), y),
        "rmse_deterministic": M.rmse(engine.deterministic(xt)[:, 0].double(), y),
        "ll": heteroscedastic_mixture_ll(samples, y),
        "mc_off": float(mc_off),
    }


def run_concrete(dataset: UCIDataset, config: UCIConfig, *, log: Log | None = None) -> ConcreteUCIResult:
    """Concrete dropout on the first ``config.splits`` splits: one network per split, all in one stack."""
    log = log or (lambda _m: None)
    start = time.perf_counter()
    splits = dataset.splits[: config.splits] if config.splits else dataset.splits
    generator = torch.Generator().manual_seed(config.seed)
    log(f"{dataset.name}: Concrete dropout, {len(splits)} networks, {config.epochs(dataset)} epochs")
    models = _fit_many(dataset, [train for train, _ in splits], config, generator)
    train_seconds = time.perf_counter() - start
    results = []
    for k, ((_, test), model) in enumerate(zip(splits, models, strict=True)):
        rates = learned_rates(model)
        served = to_dropout(model)
        s = score_heteroscedastic(served, dataset.x[test], dataset.y[test], config.samples, config.seed + 1000 + k)
        results.append(ConcreteSplitResult(k, rates["net.0"], rates["net.3"], s["rmse"], s["rmse_deterministic"],
                                           s["ll"], s["mc_off"] > 0))
    return ConcreteUCIResult(dataset.name, len(dataset.y), dataset.x.shape[1], config.epochs(dataset), config,
                             results, time.perf_counter() - start, train_seconds)


def summarize_concrete(results: Sequence[ConcreteUCIResult]) -> str:
    """A markdown table: mean +- standard error over splits, per dataset, with the learned rates."""
    lines = [
        "| dataset | N | D | splits | epochs | T | RMSE (MC mean) | RMSE (dropout off) | test LL | learned p (input) "
        "| learned p (hidden) | MC off | train time | time |",
        "|---|---:|---:|---:|---:|---:|---|---|---|---|---|---:|---:|---:|",
    ]
    for r in results:
        cells = []
        for name in ("rmse", "rmse_deterministic", "ll"):
            mean, se = r.mean_se(name)
            cells.append(f"{mean:.3f} ± {se:.3f}")
        for name in ("p_input", "p_hidden"):
            mean, se = r.mean_se(name)
            cells.append(f"{mean:.2g} ± {se:.1g}")
        off = sum(s.mc_off for s in r.splits)
        lines.append(f"| {r.dataset} | {r.n_rows} | {r.n_features} | {len(r.splits)} | {r.epochs} | "
                     f"{r.config.samples} | {' | '.join(cells)} | {off} | {r.train_seconds:.0f} s | {r.seconds:.0f} s |")
    return "\n".join(lines)
