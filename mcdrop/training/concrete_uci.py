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

:class:`ConcreteOptions` changes the recipe (issue 26): a separate Adam learning rate for ``p_logit``, a floor
and a cap on the rates (projections after each step), and the homoscedastic head ``tau mean (y - mu)^2`` with the
dataset's ``tau`` grid searched on a validation split as the grid protocol does (which isolates the effect of
learning ``p`` from that of learning the variance); ``trace_every`` records the rates during training.

``rate_objective="validation"`` learns the rates on held-out rows instead of the training loss, which always
prefers less noise (the collapse): the last ``val_fraction`` (20%) of the training rows are held out; each step the weights take
the training loss with the rates held constant, and the rates take the held-out rows' MC predictive NLL

    -mean_j log (1/S) sum_s N(y_j; mu_s(x_j), sigma_s^2(x_j))     (S relaxed passes, the weights held constant),

the quantity the grid protocol maximises over its rate grid, here followed by gradient; then the network is
retrained on all training rows at the learned rates, as the grid retrains at its chosen rate.  ``keep_best``
takes the rates at the check (every ``ceil(epochs / 200)`` epochs, and after the last) with the lowest full
held-out NLL, common random numbers across checks, as early stopping would (the training itself draws as
without: the same trajectory, another point on it).  The weights and the rates play different games: as the
weights fit the training rows, more noise is the rates' only way to widen the held-out predictive, and on yacht
(55 held-out rows) the input rate runs away to 0.25–0.94 on 8 of 20 splits, with or without ``keep_best``;
``floor`` and ``cap`` at the grid's range (0.005, 0.1) keep the search where the grid searches (BENCHMARKS §7).

The 20 split networks train together as one stacked network (batched matmuls, per-network ``p_logit`` of
shape ``(G,)``), as :func:`mcdrop.training.uci._train_stack` does for the grid.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple

import numpy as np
import torch
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
from mcdrop.sampling.engine import DropoutConfigError
from mcdrop.training.configs import ConfigError, UCIConfig
from mcdrop.training.data import UCIDataset
from mcdrop.training.uci import (
    _standardise,
    heteroscedastic_mixture_ll,
    keyed_dropout_off,
    mean_se,
    score,
    score_heteroscedastic,
)

__all__ = ["ConcreteOptions", "ConcreteSplitResult", "ConcreteUCIResult", "RateObjective", "fit_concrete",
           "heteroscedastic_mixture_ll", "keyed_dropout_off", "run_concrete", "score_deterministic",
           "score_heteroscedastic", "summarize_concrete"]

Log = Callable[[str], None]
INIT_P = 0.1
TEMPERATURE = 0.1
CHECKS = 200  # keep_best: about this many held-out NLL checks a run


class RateObjective(StrEnum):
    """What Concrete dropout's rates are trained to minimise."""

    ELBO = "elbo"
    """The published recipe: the training loss plus the Concrete regulariser (the rates share the weights' loss)."""
    VALIDATION = "validation"
    """The MC predictive NLL of held-out rows, the weights held constant; then a retraining at the learned rates."""


@dataclass(frozen=True)
class ConcreteOptions:
    """How the rates are learned: the defaults are the published recipe (and BENCHMARKS §7's run).

    Args:
        rate_lr: Adam's learning rate for the rate logits ``p_logit`` (None: the weights' ``config.lr``).
        floor: a lower bound on every rate: after each step ``p_logit`` is clamped to ``>= logit(floor)`` (a
            projected gradient step); 0: none.
        cap: an upper bound on every rate, the same projection (``<= logit(cap)``); 1: none.  The grid searches
            ``p <= 0.1`` on the UCI sets; learned on held-out rows, the input rate can run away far above it.
        heteroscedastic: the ``(mu, log sigma^2)`` head with no grid; False: the homoscedastic head
            ``tau mean (y - mu)^2`` with the dataset's ``tau`` grid, chosen on the validation LL of the last 20%
            of the training rows and retrained on all of them, as the grid protocol does (``tau`` in target
            units, ``tau * std(y)^2`` in the standardised loss).
        trace_every: record both rates every this many epochs (0: not) in ``ConcreteUCIResult.trace``.
        rate_objective: a :class:`RateObjective` (or its value): ``"elbo"``, the published recipe: the rates
            minimise the training loss plus the Concrete regulariser; ``"validation"``: the rates minimise the MC
            predictive NLL of held-out rows (the last ``config.val_fraction`` of the training rows,
            ``val_passes`` relaxed passes a row), then the weights are retrained on all training rows at those
            rates.
        val_passes: ``S``, the passes per held-out row in each rate step (``"validation"`` only).
        keep_best: ``"validation"`` only: keep the rates of the check with the lowest held-out NLL (all held-out
            rows, ``val_passes`` passes a row with the same noise at every check; about 200 checks a run) instead
            of the rates after the last step.  Only the rates are kept: the weights are the last step's (the
            network is retrained at the kept rates), so the homoscedastic head's ``tau`` is chosen with those.
    """

    rate_lr: float | None = None
    floor: float = 0.0
    cap: float = 1.0
    heteroscedastic: bool = True
    trace_every: int = 0
    rate_objective: RateObjective = RateObjective.ELBO
    val_passes: int = 8
    keep_best: bool = False

    def __post_init__(self) -> None:
        if self.rate_lr is not None and not self.rate_lr > 0:
            raise ValueError(f"rate_lr has to be > 0 (or None for the weights' lr), but got {self.rate_lr}")
        if not 0.0 <= self.floor < 1.0:
            raise ValueError(f"floor has to be in [0, 1), but got {self.floor}")
        if not self.floor < self.cap <= 1.0:
            raise ValueError(f"cap has to be in (floor, 1], but got {self.cap} (floor {self.floor})")
        if self.trace_every < 0:
            raise ValueError(f"trace_every has to be >= 0, but got {self.trace_every}")
        if self.rate_objective not in set(RateObjective):
            raise ValueError(f"rate_objective has to be one of {', '.join(RateObjective)}, but got "
                             f"{self.rate_objective!r}")
        object.__setattr__(self, "rate_objective", RateObjective(self.rate_objective))
        if self.val_passes < 2:
            raise ValueError(f"val_passes has to be >= 2 (a mixture over passes), but got {self.val_passes}")
        if self.keep_best and self.rate_objective is not RateObjective.VALIDATION:
            raise ValueError("keep_best picks the rates on held-out rows: it needs rate_objective='validation'")

    def label(self) -> str:
        """A short name, e.g. ``hetero`` or ``homo-tau, rate lr 1e-4, floor 0.005``."""
        parts = ["hetero" if self.heteroscedastic else "homo-tau"]
        if self.rate_lr is not None:
            parts.append(f"rate lr {self.rate_lr:g}")
        if self.floor:
            parts.append(f"floor {self.floor:g}")
        if self.cap < 1:
            parts.append(f"cap {self.cap:g}")
        if self.rate_objective is RateObjective.VALIDATION:
            parts.append(f"rates on held-out NLL (S = {self.val_passes})"
                         + (", best check" if self.keep_best else ""))
        return ", ".join(parts)


@dataclass
class ConcreteSplitResult:
    split: int
    p_input: float  # learned rates
    p_hidden: float
    rmse: float  # of the MC mean
    rmse_deterministic: float
    ll: float
    mc_off: bool = False  # learned rates ~0 (< 2^-17, or the engine saw identical passes): scored deterministically
    tau: float | None = None  # the homoscedastic head's chosen tau
    val_ll: dict[str, float] = field(default_factory=dict)  # homoscedastic: "tau=.." -> validation LL
    rate_epoch: int | None = None  # keep_best: the epoch whose rates were kept


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
    options: ConcreteOptions = field(default_factory=ConcreteOptions)
    trace: dict[int, list[list[float]]] = field(default_factory=dict)  # split -> [[epoch, p_input, p_hidden], ...]

    def mean_se(self, name: str) -> tuple[float, float]:
        """Mean and standard error of a split metric over splits (:func:`mcdrop.training.uci.mean_se`)."""
        return mean_se([getattr(s, name) for s in self.splits])


# ---------------------------------------------------------------------------------------------- training


def _logit(p: float) -> float:
    return math.log(p) - math.log1p(-p)


def _train_concrete_stack(
    xs: Tensor, ys: Tensor, *, hidden: int, epochs: int, batch_size: int, lr: float, length_scale: float,
    generator: torch.Generator, init_p: float = INIT_P, temperature: float = TEMPERATURE,
    tau: Tensor | None = None, rate_lr: float | None = None, floor: float = 0.0, cap: float = 1.0,
    trace_every: int = 0,
    val: tuple[Tensor, Tensor] | None = None, val_passes: int = 8, rates: Tensor | None = None, beta: float = 0.0,
    keep_best: bool = False,
) -> dict[str, Tensor]:
    """Train G one-hidden-layer Concrete-dropout networks at once, one per data set.

    Args:
        xs, ys: standardised training sets. Shape: ``(G, N, D)``, ``(G, N)``.
        tau: None for the heteroscedastic head; else each network's precision in standardised units, the
            loss ``tau mean (y - mu)^2``. Shape: ``(G,)``.
        rate_lr, floor, cap, trace_every: as in :class:`ConcreteOptions`.
        val: held-out rows ``(xv (G, V, D), yv (G, V))`` (standardised as ``xs``, ``ys``): the rates learn from
            their MC predictive NLL over ``val_passes`` relaxed passes (a batch of ``batch_size`` rows drawn with
            replacement each step) and not from the training loss, which the weights alone take.
        rates: fixed rates ``(G, 2)`` (input, hidden), not learned; None: learned from ``init_p``.
        beta: heteroscedastic only: the beta-NLL loss ``mean sg(exp(beta s)) [exp(-s)(y - mu)^2 + s]`` (Seitzer et
            al. 2022; ``sg`` stops the gradient), as :func:`mcdrop.training.uci._train_stack`; 0: the NLL.
        keep_best: with ``val``: return the rates of the check with the lowest full held-out NLL (every
            ``ceil(epochs / CHECKS)`` epochs and after the last, the same relaxation noise at each, held for the
            run: ``G S V (D + H)`` floats), not the last ones; the weights stay the last step's.

    Returns:
        ``w1 (G, D, H)``, ``b1 (G, H)``, ``w2 (G, H, O)``, ``b2 (G, O)`` (``O`` = 2 heteroscedastic, else 1),
        ``p_in (G,)``, ``p_hidden (G,)`` (the last two as logits ``p_logit``) and ``trace (E, G, 2)``, the rates
        after every ``trace_every``-th epoch (``E = 0`` without), and ``rate_epoch (G,)``, the epoch whose rates
        are returned (``epochs`` unless ``keep_best``).
    """
    g, n, d = xs.shape
    n_out = 2 if tau is None else 1
    bound1, bound2 = math.sqrt(6 / (d + hidden)), math.sqrt(6 / (hidden + n_out))
    w1 = ((torch.rand(g, d, hidden, generator=generator) * 2 - 1) * bound1).requires_grad_()
    w2 = ((torch.rand(g, hidden, n_out, generator=generator) * 2 - 1) * bound2).requires_grad_()
    b1 = torch.zeros(g, 1, hidden, requires_grad=True)
    b2 = torch.zeros(g, 1, n_out, requires_grad=True)
    learn = rates is None
    if rates is None:
        a_in = torch.full((g, 1, 1), _logit(init_p), requires_grad=True)
        a_h = torch.full((g, 1, 1), _logit(init_p), requires_grad=True)
    else:
        a_in, a_h = torch.logit(rates.to(torch.float64)).float().T.reshape(2, g, 1, 1)
    groups: list[dict[str, Any]] = [{"params": [w1, b1, w2, b2]}]
    if learn:
        groups.append({"params": [a_in, a_h], "lr": rate_lr or lr})
    opt = torch.optim.Adam(groups, lr=lr, foreach=True)
    low = _logit(floor) if floor > 0 and learn else None
    high = _logit(cap) if cap < 1 and learn else None
    wr, dr = length_scale**2 / n, 2.0 / n
    net_index = torch.arange(g).view(g, 1)
    trace = []
    best = keep_best and val is not None and learn
    every = max(1, math.ceil(epochs / CHECKS))
    if best:
        assert val is not None
        checked = (val[0].repeat(1, val_passes, 1), val[1])
        own = torch.Generator().manual_seed(generator.initial_seed() + 1)  # the training draws stay as without
        check_noise = (logistic_noise(torch.rand(checked[0].shape, generator=own)),
                       logistic_noise(torch.rand(g, checked[0].shape[1], hidden, generator=own)))
        best_nll = torch.full((g,), math.inf)
        best_logits = torch.cat([a_in.detach(), a_h.detach()], 1).view(g, 2).clone()
    rate_epoch = torch.full((g,), 0 if best else epochs, dtype=torch.int64)  # 0: no check was finite
    for epoch in range(epochs):
        order = torch.argsort(torch.rand(g, n, generator=generator), dim=1)
        # the logistic noise of every row of the epoch, in two draws (it does not depend on the rates)
        noise_in = logistic_noise(torch.rand(g, n, d, generator=generator))
        noise_h = logistic_noise(torch.rand(g, n, hidden, generator=generator))
        for start in range(0, n, batch_size):
            stop = start + batch_size
            idx = order[:, start:stop]
            xb, yb = xs[net_index, idx], ys[net_index, idx]
            # with held-out rows the rates are constants of the training loss (they learn from those rows)
            r_in, r_h = (a_in.detach(), a_h.detach()) if val is not None or not learn else (a_in, a_h)
            xb = concrete_dropout(xb, r_in, temperature, noise=noise_in[:, start:stop])
            h = torch.relu(torch.baddbmm(b1, xb, w1))
            h = concrete_dropout(h, r_h, temperature, noise=noise_h[:, start:stop])
            out = torch.baddbmm(b2, h, w2)
            if tau is None:
                mu, s = out[..., 0], out[..., 1]
                nll = torch.exp(-s) * (yb - mu) ** 2 + s
                loss = (nll * torch.exp(beta * s.detach()) if beta else nll).mean(1)
            else:
                loss = tau * ((yb - out[..., 0]) ** 2).mean(1)
            reg = (concrete_regulariser(w1.square().sum((1, 2)), d, r_in.view(g), wr, dr)
                   + concrete_regulariser(w2.square().sum((1, 2)), hidden, r_h.view(g), wr, dr))
            total = loss + reg
            if val is not None and learn:
                total = total + _held_out_nll(val, (w1, b1, w2, b2), (a_in, a_h), tau, batch_size, val_passes,
                                              temperature, generator)
            opt.zero_grad(set_to_none=True)
            total.sum().backward()
            opt.step()
            if low is not None or high is not None:
                with torch.no_grad():
                    a_in.clamp_(min=low, max=high)
                    a_h.clamp_(min=low, max=high)
        if best and ((epoch + 1) % every == 0 or epoch + 1 == epochs):
            with torch.no_grad():
                nll = _mixture_nll(*checked, (w1, b1, w2, b2), (a_in, a_h), tau, val_passes, temperature,
                                   check_noise)
            better = nll < best_nll
            best_nll = torch.where(better, nll, best_nll)
            best_logits[better] = torch.cat([a_in.detach(), a_h.detach()], 1).view(g, 2)[better]
            rate_epoch[better] = epoch + 1
        if trace_every and (epoch + 1) % trace_every == 0:
            trace.append(torch.sigmoid(torch.stack([a_in.detach().view(g), a_h.detach().view(g)], -1)))
    logits = best_logits if best else torch.cat([a_in.detach(), a_h.detach()], 1).view(g, 2)
    return {"w1": w1.detach(), "b1": b1.detach().squeeze(1), "w2": w2.detach(), "b2": b2.detach().squeeze(1),
            "p_in": logits[:, 0].contiguous(), "p_hidden": logits[:, 1].contiguous(),
            "trace": torch.stack(trace) if trace else torch.empty(0, g, 2), "rate_epoch": rate_epoch}


def _held_out_nll(val: tuple[Tensor, Tensor], weights: tuple[Tensor, ...], logits: tuple[Tensor, Tensor],
                  tau: Tensor | None, batch_size: int, passes: int, temperature: float,
                  generator: torch.Generator) -> Tensor:
    """``-mean_j log (1/S) sum_s N(y_j; mu_sj, sigma_sj^2)`` on ``batch_size`` held-out rows drawn with
    replacement, ``S = passes`` relaxed passes each, the weights held constant: the rates' loss (``log(2 pi)/2``
    left out; homoscedastic: ``sigma^2 = 1/tau`` and ``log(tau)/2`` left out, neither depends on the rates).

    Shape: val ``(G, V, D)``, ``(G, V)``; weights ``w1 (G, D, H)``, ``b1 (G, 1, H)``, ``w2 (G, H, O)``,
    ``b2 (G, 1, O)``; logits ``(G, 1, 1)`` each; tau ``(G,)`` or None -> ``(G,)``.
    """
    xv, yv = val
    g, v, _ = xv.shape
    idx = torch.randint(v, (g, batch_size), generator=generator)
    rows = torch.arange(g).view(g, 1)
    x = xv[rows, idx].repeat(1, passes, 1)  # (G, S b, D): pass s of row j at s b + j
    noise = (logistic_noise(torch.rand(x.shape, generator=generator)),
             logistic_noise(torch.rand(g, x.shape[1], weights[0].shape[2], generator=generator)))
    return _mixture_nll(x, yv[rows, idx], weights, logits, tau, passes, temperature, noise)


def _mixture_nll(x: Tensor, y: Tensor, weights: tuple[Tensor, ...], logits: tuple[Tensor, Tensor],
                 tau: Tensor | None, passes: int, temperature: float, noise: tuple[Tensor, Tensor]) -> Tensor:
    """:func:`_held_out_nll` of the rows ``y (G, b)`` given ``x (G, S b, D)`` (pass ``s`` of row ``j`` at
    ``s b + j``) and the logistic noise of both layers ``(G, S b, D)``, ``(G, S b, H)`` -> ``(G,)``."""
    g, batch_size = y.shape
    w1, b1, w2, b2 = (w.detach() for w in weights)
    a_in, a_h = logits
    x = concrete_dropout(x, a_in, temperature, noise=noise[0])
    h = torch.relu(torch.baddbmm(b1, x, w1))
    h = concrete_dropout(h, a_h, temperature, noise=noise[1])
    out = torch.baddbmm(b2, h, w2).view(g, passes, batch_size, -1)
    if tau is None:
        mu, s = out[..., 0], out[..., 1]
        log_density = -0.5 * (torch.exp(-s) * (y[:, None] - mu) ** 2 + s)
    else:
        log_density = -0.5 * tau.view(g, 1, 1) * (y[:, None] - out[..., 0]) ** 2
    return -(torch.logsumexp(log_density, dim=1) - math.log(passes)).mean(1)  # constants dropped


def _unstack(weights: dict[str, Tensor], i: int, x_stats: tuple[np.ndarray, np.ndarray],
             y_stats: tuple[float, float], tau: float | None = None) -> DropoutMLP:
    """Network ``i`` of the stack as a Concrete :class:`DropoutMLP` (input dropout, one hidden layer); ``tau``
    None: the heteroscedastic head, else the homoscedastic one with that precision (target units)."""
    d, hidden = weights["w1"].shape[1:]
    head = Task.HETEROSCEDASTIC if tau is None else Task.HOMOSCEDASTIC
    model = concrete_mlp(d, [hidden], 1, p=INIT_P, head=head, tau=tau)
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


class _Fitted(NamedTuple):
    models: list[DropoutMLP]
    trace: Tensor  # (E, G, 2) the rates every trace_every epochs
    rate_epochs: list[int]  # the epoch whose rates each network took (keep_best), else the last


def _fit_many(dataset: UCIDataset, row_sets: Sequence[np.ndarray], config: UCIConfig,
              generator: torch.Generator, options: ConcreteOptions = ConcreteOptions(),
              taus: Sequence[float | None] | None = None, val_sets: Sequence[np.ndarray] | None = None,
              rates: Sequence[tuple[float, float]] | None = None) -> _Fitted:
    """One Concrete network per row set (all at once when the sets have equal sizes); ``taus[k]`` the
    homoscedastic precision of network ``k`` in target units (None, or no ``taus``: heteroscedastic);
    ``val_sets[k]`` held-out rows its rates learn from; ``rates[k]`` fixed (input, hidden) rates instead.

    Returns the networks, the rate trace ``(E, G, 2)`` and the epochs whose rates they took."""
    if config.lr_schedule != "constant":  # Concrete's own trainer has one rate (and the rate logits' own)
        raise ConfigError("lr_schedule", f"lr_schedule has to be 'constant' for Concrete dropout, but got "
                                         f"{config.lr_schedule!r}")
    taus = list(taus) if taus is not None else [None] * len(row_sets)
    if config.beta_nll and any(t is not None for t in taus):
        raise ConfigError("beta_nll", f"beta_nll weighs the heteroscedastic head's NLL; the homoscedastic head "
                                      f"has none, but got beta_nll={config.beta_nll}")
    vals: list[np.ndarray | None] = list(val_sets) if val_sets is not None else [None] * len(row_sets)
    fixed: list[tuple[float, float] | None] = list(rates) if rates is not None else [None] * len(row_sets)
    for name, given_list in (("val_sets", vals), ("rates", fixed)):
        if len(given_list) != len(row_sets):
            raise ValueError(f"{name} has to have one entry per row set ({len(row_sets)}), but got {len(given_list)}")
    if len({len(r) for r in row_sets}) > 1 or len({0 if v is None else len(v) for v in vals}) > 1:
        fits = [_fit_many(dataset, [r], config, generator, options, [t], None if v is None else [v],
                          None if f is None else [f])
                for r, t, v, f in zip(row_sets, taus, vals, fixed, strict=True)]
        return _Fitted([m for f in fits for m in f.models], torch.cat([f.trace for f in fits], 1),
                       [e for f in fits for e in f.rate_epochs])
    x_stats = [_standardise(dataset.x[r]) for r in row_sets]
    y_stats = [(float(dataset.y[r].mean()), float(dataset.y[r].std() or 1.0)) for r in row_sets]

    def standardised(sets: Sequence[np.ndarray]) -> tuple[Tensor, Tensor]:
        xs = np.stack([(dataset.x[r] - m) / s for r, (m, s) in zip(sets, x_stats, strict=True)])
        ys = np.stack([(dataset.y[r] - m) / s for r, (m, s) in zip(sets, y_stats, strict=True)])
        return torch.tensor(xs, dtype=torch.float32), torch.tensor(ys, dtype=torch.float32)

    xs, ys = standardised(row_sets)
    if any(t is None for t in taus) and not all(t is None for t in taus):
        raise ValueError("taus have to be all None (heteroscedastic) or all given (homoscedastic)")
    given = [(t, sd) for t, (_, sd) in zip(taus, y_stats, strict=True) if t is not None]
    tau = torch.tensor([t * sd**2 for t, sd in given], dtype=torch.float32) if given else None  # standardised units
    val = standardised([v for v in vals if v is not None]) if vals[0] is not None else None
    fixed_rates = torch.tensor([f for f in fixed if f is not None]) if fixed[0] is not None else None
    weights = _train_concrete_stack(xs, ys, hidden=dataset.n_hidden, epochs=config.epochs(dataset),
                                    batch_size=config.batch_size, lr=config.lr, length_scale=config.length_scale,
                                    generator=generator, tau=tau, rate_lr=options.rate_lr, floor=options.floor,
                                    cap=options.cap,
                                    trace_every=options.trace_every, val=val, val_passes=options.val_passes,
                                    rates=fixed_rates, beta=config.beta_nll if tau is None else 0.0,
                                    keep_best=options.keep_best)
    models = [_unstack(weights, k, x_stats[k], y_stats[k], taus[k]) for k in range(len(row_sets))]
    return _Fitted(models, weights["trace"], weights["rate_epoch"].tolist())


def fit_concrete(dataset: UCIDataset, config: UCIConfig, rows: np.ndarray | None = None,
                 options: ConcreteOptions = ConcreteOptions(), tau: float | None = None) -> DropoutMLP:
    """One Concrete network on ``rows`` of ``dataset`` (default: every row); serve it with ``to_dropout``.

    ``tau``: the homoscedastic head's precision (target units); None: heteroscedastic.  With
    ``options.rate_objective`` ``"validation"`` the rates learn on the last ``config.val_fraction`` of ``rows``
    and the network is then retrained on all of them at those rates."""
    generator = torch.Generator().manual_seed(config.seed)
    rows = np.arange(len(dataset.y)) if rows is None else rows
    if options.rate_objective is not RateObjective.VALIDATION:
        return _fit_many(dataset, [rows], config, generator, options, [tau]).models[0]
    fit, held_out = _held_out_split(rows, config)
    [first] = _fit_many(dataset, [fit], config, generator, options, [tau], [held_out]).models
    rates = learned_rates(first)
    return _fit_many(dataset, [rows], config, generator, options, [tau],
                     rates=[(rates["net.0"], rates["net.3"])]).models[0]


def _held_out_split(rows: np.ndarray, config: UCIConfig) -> tuple[np.ndarray, np.ndarray]:
    """The first rows and the last ``config.val_fraction`` of them, as the grid protocol splits."""
    n_fit = len(rows) - round(config.val_fraction * len(rows))
    return rows[:n_fit], rows[n_fit:]


# ---------------------------------------------------------------------------------------------- scoring


def _score(model: DropoutMLP, x: np.ndarray, y: np.ndarray, n_samples: int, seed: int) -> dict[str, float]:
    """Score the trained Concrete ``model`` served as keyed dropout (:func:`to_dropout`)."""
    served = to_dropout(model)
    if served.head is Task.HETEROSCEDASTIC:
        return score_heteroscedastic(served, x, y, n_samples, seed)
    if keyed_dropout_off(served):
        return {**score_deterministic(served, x, y), "mc_off": 1.0}
    try:
        return {**score(served, x, y, n_samples, seed), "mc_off": 0.0}
    except DropoutConfigError:
        return {**score_deterministic(served, x, y), "mc_off": 1.0}


def _rates(model: DropoutMLP) -> tuple[float, float]:
    """The (input, hidden) learned rates of a one-hidden-layer Concrete network."""
    rates = learned_rates(model)
    return rates["net.0"], rates["net.3"]


def score_deterministic(model: DropoutMLP, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """A homoscedastic model scored by its dropout-off pass alone: the LL of ``N(f(x), 1/tau)``."""
    f = model(torch.as_tensor(x, dtype=torch.float32)).detach().double().numpy()
    tau = float(model.tau)
    ll = -0.5 * tau * (np.asarray(y) - f) ** 2 - 0.5 * math.log(2 * math.pi) + 0.5 * math.log(tau)
    rmse = float(np.sqrt(np.mean((np.asarray(y) - f) ** 2)))
    return {"rmse": rmse, "rmse_deterministic": rmse, "ll": float(ll.mean())}


def run_concrete(dataset: UCIDataset, config: UCIConfig, *, log: Log | None = None,
                 options: ConcreteOptions = ConcreteOptions(), only: Sequence[int] | None = None) -> ConcreteUCIResult:
    """Concrete dropout on the first ``config.splits`` splits (or the split indices ``only``).

    Heteroscedastic: one network per split, all in one stack.  Homoscedastic: one network per (split, tau) on
    the first 80% of the training rows, tau chosen on the rest's LL, one network per split retrained on all.
    ``options.rate_objective == "validation"``: the rates learn on those held-out rows (with the chosen tau's
    network, homoscedastic: tau is chosen on the rows the rates were fitted to, as the grid chooses (p, tau)
    jointly on one validation split) and the network per split is retrained on all training rows at those
    rates; the trace is then that of the learning run.
    """
    log = log or (lambda _m: None)
    start = time.perf_counter()
    indices = list(only) if only is not None else list(range(config.splits or len(dataset.splits)))
    splits = [dataset.splits[k] for k in indices]
    generator = torch.Generator().manual_seed(config.seed)
    epochs = config.epochs(dataset)
    chosen: list[float | None] = [None] * len(splits)
    val_lls: list[dict[str, float]] = [{} for _ in splits]
    on_val = options.rate_objective is RateObjective.VALIDATION
    rates: list[tuple[float, float]] | None = None
    rate_epochs: list[int | None] = [None] * len(splits)
    trace = torch.empty(0, len(splits), 2)
    fit_rows, val_rows = map(list, zip(*(_held_out_split(train, config) for train, _ in splits), strict=True))
    if not options.heteroscedastic:
        taus = list(dataset.tau_values)
        log(f"{dataset.name}: Concrete dropout ({options.label()}), tau grid: {len(splits)} x {len(taus)} networks, "
            f"{epochs} epochs")
        candidates, cand_trace, cand_epochs = _fit_many(
            dataset, [r for r in fit_rows for _ in taus], config, generator, options, taus * len(splits),
            [r for r in val_rows for _ in taus] if on_val else None)
        val_samples = config.val_samples or config.samples
        best = []
        for j, k in enumerate(indices):
            for i, t in enumerate(taus):
                model = candidates[j * len(taus) + i]
                got = _score(model, dataset.x[val_rows[j]], dataset.y[val_rows[j]], val_samples, config.seed + k)
                val_lls[j][f"tau={t:g}"] = got["ll"]
            best.append(j * len(taus) + int(np.argmax(list(val_lls[j].values()))))
            chosen[j] = taus[best[-1] - j * len(taus)]
        if on_val:
            rates = [_rates(candidates[b]) for b in best]
            trace = cand_trace[:, best]
            rate_epochs = [cand_epochs[b] for b in best]
    elif on_val:
        log(f"{dataset.name}: Concrete dropout ({options.label()}), rates on held-out rows: {len(splits)} networks, "
            f"{epochs} epochs")
        candidates, trace, learnt = _fit_many(dataset, fit_rows, config, generator, options, val_sets=val_rows)
        rates = [_rates(m) for m in candidates]
        rate_epochs = list(learnt)
    log(f"{dataset.name}: Concrete dropout ({options.label()}), {len(splits)} networks, {epochs} epochs"
        + (" at the learned rates" if on_val else ""))
    models, final_trace, _ = _fit_many(dataset, [train for train, _ in splits], config, generator, options, chosen,
                                       rates=rates)
    if not on_val:
        trace = final_trace
    train_seconds = time.perf_counter() - start
    results = []
    for j, (k, (_, test), model) in enumerate(zip(indices, splits, models, strict=True)):
        p_input, p_hidden = _rates(model)
        s = _score(model, dataset.x[test], dataset.y[test], config.samples, config.seed + 1000 + k)
        results.append(ConcreteSplitResult(k, p_input, p_hidden, s["rmse"], s["rmse_deterministic"],
                                           s["ll"], s["mc_off"] > 0, chosen[j], val_lls[j],
                                           rate_epochs[j] if options.keep_best else None))
    every = options.trace_every
    traced = {k: [[(e + 1) * every, *map(float, trace[e, j])] for e in range(trace.shape[0])]
              for j, k in enumerate(indices)} if every else {}
    return ConcreteUCIResult(dataset.name, len(dataset.y), dataset.x.shape[1], epochs, config, results,
                             time.perf_counter() - start, train_seconds, options, traced)


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
