"""The UCI regression benchmark by the published MC-dropout protocol (Gal & Ghahramani 2016).

Per split: standardise inputs and target with the training rows' statistics; for every ``(p, tau)`` of
the grid train on the first 80% of the training rows (index-file order) and score the log-likelihood of
the last 20%; retrain on all training rows with the best pair; report on the test rows

* RMSE of the MC mean ``mean_t yhat_t`` (and of the dropout-off prediction beside it),
* LL ``= mean_i [logsumexp_t(-tau/2 (y_i - yhat_ti)^2) - log T - log(2 pi)/2 + log(tau)/2]``,

``yhat_t`` being ``T`` stochastic passes in the original target units, drawn by the batched
:class:`~mcdrop.sampling.engine.MCEngine`.  Network: dropout ``p`` on the input, one ReLU layer of ``n_hidden``
units, dropout ``p``, a linear output; loss ``mean (y - f(x))^2 + lambda (|W_1|^2 + |W_2|^2)`` with
``lambda = l^2 (1 - p) / (2 N tau)``, ``l = 1e-2``; Adam (lr 1e-3), batch 128, Glorot-uniform kernels.

Heteroscedastic variant (``heteroscedastic=True``): the output layer gives a mean and a log-variance
``(mu, s)`` (the :attr:`Task.HETEROSCEDASTIC` head), the loss is twice the Gaussian NLL per row plus the prior,
``mean [exp(-s) (y - mu)^2 + s] + lambda (|W_1|^2 + |W_2|^2)`` with ``lambda = l^2 (1 - p) / (2 N)`` (with ``s``
held at ``-log tau`` this is ``tau`` times the homoscedastic loss, so the prior is the same), the grid is over
``p`` only (``tau`` is learned per input), and the predictive is the mixture of the ``T`` passes' Gaussians:
``LL = mean_i [logsumexp_t log N(y_i; mu_ti, exp(s_ti))] - log T``; its variance is the mean of the passes'
variances (aleatoric) plus the variance of their means (epistemic) (:func:`mixture_moments`).

Speed: the networks of one stage (every split x every grid pair) are independent, so they train
together as one stacked network (batched matmuls, one Adam over stacked parameters, which is elementwise
and therefore G independent Adams); each network draws its own batches and masks.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from scipy import special
from torch import Tensor, nn

from mcdrop.nets.models import DropoutMLP
from mcdrop.request import Task
from mcdrop.sampling import functional as F
from mcdrop.sampling.engine import DropoutConfigError, MCEngine
from mcdrop.sampling.layers import MCDropoutLayer
from mcdrop.training import stack_kernel
from mcdrop.training.configs import ConfigError, UCIConfig
from mcdrop.training.data import UCIDataset
from mcdrop.uncertainty import metrics as M

__all__ = ["SplitResult", "UCIConfig", "UCIResult", "fit_regressor", "heteroscedastic_mixture_ll", "holdout_split",
           "keyed_dropout_off", "mixture_moments", "run_protocol", "score", "score_heteroscedastic", "summarize"]

Log = Callable[[str], None]


@dataclass
class SplitResult:
    split: int
    dropout: float
    tau: float | None  # None: heteroscedastic head (the noise is predicted, not searched)
    rmse: float  # of the MC mean
    rmse_deterministic: float
    ll: float
    val_ll: dict[str, float] = field(default_factory=dict)  # "p=..,tau=.." (or "p=..") -> validation LL
    mc_off: bool = False  # heteroscedastic only: the engine refused MC mode, scored by the deterministic pass
    lr_schedule: str | None = None  # lr_schedule "chosen": the schedule this split took


@dataclass
class UCIResult:
    dataset: str
    n_rows: int
    n_features: int
    epochs: int
    config: UCIConfig
    splits: list[SplitResult]
    seconds: float
    head: str = Task.HOMOSCEDASTIC.value

    def mean_se(self, name: str) -> tuple[float, float]:
        """Mean and standard error of a split metric over splits (:func:`mean_se`)."""
        return mean_se([getattr(s, name) for s in self.splits])

    def chosen(self) -> tuple[float, float | None]:
        """The (p, tau) pair chosen on most splits (ties: the first chosen); tau None when heteroscedastic."""
        return Counter((s.dropout, s.tau) for s in self.splits).most_common(1)[0][0]


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error (std with ddof=1 over sqrt(K); 0 for one value)."""
    v = np.asarray(values, dtype=np.float64)
    se = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else 0.0
    return float(v.mean()), se


# ---------------------------------------------------------------------------------------------- training


def _standardise(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std over rows (std 0 becomes 1, as in the published code)."""
    mean, std = a.mean(0), a.std(0)
    return mean, np.where(std == 0, 1.0, std)


def _keep(shape: torch.Size, threshold: Tensor, generator: torch.Generator) -> Tensor:
    """Keep masks ``u >= p`` from 16-bit uniforms (three per 63-bit random word, about 4x faster than
    ``torch.rand``); ``p`` is thereby rounded to a multiple of 2^-16."""
    n = math.prod(shape)
    words = torch.empty((n + 2) // 3, dtype=torch.int64).random_(generator=generator)  # uniform on [0, 2^63)
    u = words.view(torch.int16).view(-1, 4)[:, :3].reshape(-1)[:n].view(shape)  # the three low 16-bit lanes
    return u >= threshold


def _train_stack(
    xs: Tensor, ys: Tensor, owner: Tensor, p: Tensor, decay: Tensor, *, hidden: int, epochs: int,
    batch_size: int, lr: float, generator: torch.Generator, heteroscedastic: bool = False, beta: float = 0.0,
    lr_schedule: str = "constant", compiled: bool = True,
    on_epoch: Callable[[int, tuple[Tensor, Tensor, Tensor, Tensor]], None] | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Train G one-hidden-layer dropout networks at once.

    Args:
        xs, ys: standardised training sets, one per data set ``k``. Shape: ``(K, N, D)``, ``(K, N)``.
        owner: the data set of each network. Shape: ``(G,)``.
        p, decay: each network's dropout rate and weight decay ``lambda``. Shape: ``(G,)``.
        heteroscedastic: two outputs ``(mu, s = log sigma^2)`` and the loss ``mean [exp(-s)(y - mu)^2 + s]``
            instead of one output and ``mean (y - f)^2``.
        beta: heteroscedastic only: the beta-NLL loss ``mean sg(exp(beta s)) [exp(-s)(y - mu)^2 + s]``, ``sg`` a
            stop-gradient (Seitzer et al. 2022): rows the network calls noisy keep pulling the mean.
        lr_schedule: ``"constant"``, or ``"cosine"``: epoch ``e`` of ``E`` at ``lr (1 + cos(pi e / E)) / 2``.
        compiled: take each step's gradients from the compiled step (``stack.c``, :mod:`.stack_kernel`) where it
            builds; it draws the same batches and masks as the torch step and agrees with autograd to float32
            rounding (the sums run in another order).
        on_epoch: called after each epoch with its index and the (live) parameters ``(W1, b1, W2, b2)``.

    Returns:
        stacked ``W1 (G, D, H)``, ``b1 (G, H)``, ``W2 (G, H)``, ``b2 (G,)``; heteroscedastic:
        ``W2 (G, H, 2)``, ``b2 (G, 2)``.
    """
    g, (_, n, d) = owner.shape[0], xs.shape
    n_out = 2 if heteroscedastic else 1
    bound1, bound2 = math.sqrt(6 / (d + hidden)), math.sqrt(6 / (hidden + n_out))
    w1 = ((torch.rand(g, d, hidden, generator=generator) * 2 - 1) * bound1).requires_grad_()
    w2 = ((torch.rand(g, hidden, n_out, generator=generator) * 2 - 1) * bound2).requires_grad_()
    b1 = torch.zeros(g, 1, hidden, requires_grad=True)
    b2 = torch.zeros(g, 1, n_out, requires_grad=True)
    opt = torch.optim.Adam([w1, b1, w2, b2], lr=lr)
    drop_words = torch.round(p * 65536).clamp(0, 65535)
    threshold = (drop_words - 32768).to(torch.int16).view(g, 1, 1)
    scale = (65536 / (65536 - drop_words)).view(g, 1, 1)  # 1 / (1 - p) at the 16-bit rate the masks have
    params = (w1, b1, w2, b2)
    kernel = stack_kernel.load() if compiled else None
    if kernel is not None:
        grads = (torch.empty_like(w1), torch.empty_like(b1), torch.empty_like(w2), torch.empty_like(b2))
        for param, grad in zip(params, grads, strict=True):
            param.grad = grad
        rates = (threshold.view(g).contiguous(), scale.view(g).float().contiguous(), decay.float().contiguous())
        xs, ys, owner = xs.contiguous(), ys.contiguous(), owner.contiguous()
    x_net, y_net = (xs[owner], ys[owner]) if kernel is None else (xs, ys)  # torch step: (G, N, D), (G, N)
    net_index = torch.arange(g).view(g, 1)
    for epoch in range(epochs):
        if lr_schedule == "cosine":
            opt.param_groups[0]["lr"] = lr * (1 + math.cos(math.pi * epoch / epochs)) / 2
        order = torch.argsort(torch.rand(g, n, generator=generator), dim=1)
        for start in range(0, n, batch_size):
            idx = order[:, start : start + batch_size]
            if kernel is not None:  # the same random words, in the same order, as the two _keep calls below
                rows = idx.numel()
                words_in = torch.empty((rows * d + 2) // 3, dtype=torch.int64).random_(generator=generator)
                words_hidden = torch.empty((rows * hidden + 2) // 3, dtype=torch.int64).random_(generator=generator)
                kernel.grad(xs, ys, owner, idx.contiguous(), words_in, words_hidden, *rates, params, grads, beta)
                opt.step()
                continue
            xb, yb = x_net[net_index, idx], y_net[net_index, idx]
            # (x * m / (1 - p)) @ W == (x * m) @ (W / (1 - p)): the scale goes on the small weight tensors
            xb = torch.where(_keep(xb.shape, threshold, generator), xb, 0.0)
            h = torch.relu(torch.baddbmm(b1, xb, w1 * scale))
            h = torch.where(_keep(h.shape, threshold, generator), h, 0.0)
            out = torch.baddbmm(b2, h, w2 * scale)
            if heteroscedastic:
                s = out[..., 1]
                nll = torch.exp(-s) * (yb - out[..., 0]) ** 2 + s
                fit = (nll * torch.exp(beta * s.detach()) if beta else nll).mean(1)
            else:
                fit = ((out.squeeze(-1) - yb) ** 2).mean(1)
            loss = fit + decay * (w1.square().sum((1, 2)) + w2.square().sum((1, 2)))
            opt.zero_grad(set_to_none=True)
            loss.sum().backward()
            opt.step()
        if on_epoch is not None:
            on_epoch(epoch, params)
    if heteroscedastic:
        return w1.detach(), b1.detach().squeeze(1), w2.detach(), b2.detach().squeeze(1)
    return w1.detach(), b1.detach().squeeze(1), w2.detach().squeeze(-1), b2.detach().view(g)


def _unstack(
    weights: tuple[Tensor, Tensor, Tensor, Tensor], i: int, p: float, tau: float | None,
    x_stats: tuple[np.ndarray, np.ndarray], y_stats: tuple[float, float],
) -> DropoutMLP:
    """Network ``i`` of the stack as a :class:`DropoutMLP`; ``tau`` None: the heteroscedastic head."""
    w1, b1, w2, b2 = weights
    d, hidden = w1.shape[1:]
    head = Task.HETEROSCEDASTIC if tau is None else Task.HOMOSCEDASTIC
    model = DropoutMLP(d, [hidden], 1, dropout=p, input_dropout=p, head=head, tau=tau)
    with torch.no_grad():
        first, last = [m for m in model.net if isinstance(m, nn.Linear)]
        first.weight.copy_(w1[i].T)
        first.bias.copy_(b1[i])
        last.weight.copy_(w2[i].reshape(hidden, -1).T)
        last.bias.copy_(b2[i].reshape(-1))
        model.input_shift.copy_(torch.as_tensor(x_stats[0], dtype=torch.float32))
        model.input_scale.copy_(torch.as_tensor(x_stats[1], dtype=torch.float32))
        model.target_shift.fill_(y_stats[0])
        model.target_scale.fill_(y_stats[1])
    return model.eval()


def _fit_many(
    dataset: UCIDataset, row_sets: Sequence[np.ndarray], pairs: Sequence[Sequence[tuple[float, float | None]]],
    config: UCIConfig, generator: torch.Generator,
) -> list[list[DropoutMLP]]:
    """Train, for every row set ``k``, one network per ``(p, tau)`` in ``pairs[k]`` (all at once).

    ``tau`` None: a heteroscedastic network with ``lambda = l^2 (1 - p) / (2 N)`` (all pairs alike)."""
    if config.lr_schedule not in ("constant", "cosine"):
        raise ConfigError("lr_schedule", f"lr_schedule has to be 'constant' or 'cosine' to train one network "
                                         f"('chosen' is a choice between runs: run_protocol), but got "
                                         f"{config.lr_schedule!r}")
    sizes = {len(r) for r in row_sets}
    if len(sizes) > 1:  # stacking needs equal sizes; train each row set on its own
        return [_fit_many(dataset, [r], [pp], config, generator)[0] for r, pp in zip(row_sets, pairs, strict=True)]
    x_stats = [_standardise(dataset.x[r]) for r in row_sets]
    y_stats = [(float(dataset.y[r].mean()), float(dataset.y[r].std() or 1.0)) for r in row_sets]
    xs = torch.tensor(np.stack([(dataset.x[r] - m) / s for r, (m, s) in zip(row_sets, x_stats, strict=True)]),
                      dtype=torch.float32)
    ys = torch.tensor(np.stack([(dataset.y[r] - m) / s for r, (m, s) in zip(row_sets, y_stats, strict=True)]),
                      dtype=torch.float32)
    owner = torch.tensor([k for k, pp in enumerate(pairs) for _ in pp])
    flat = [pair for pp in pairs for pair in pp]
    p = torch.tensor([pair[0] for pair in flat], dtype=torch.float32)
    hetero = {pair[1] is None for pair in flat}
    if len(hetero) != 1:
        raise ValueError("pairs have to be all homoscedastic (tau given) or all heteroscedastic (tau None)")
    heteroscedastic = hetero.pop()
    tau = torch.tensor([1.0 if heteroscedastic else pair[1] for pair in flat], dtype=torch.float32)
    n = xs.shape[1]
    decay = config.length_scale**2 * (1 - p) / (2 * n * tau)
    weights = _train_stack(xs, ys, owner, p, decay, hidden=dataset.n_hidden, epochs=config.epochs(dataset),
                           batch_size=config.batch_size, lr=config.lr, generator=generator,
                           heteroscedastic=heteroscedastic, beta=config.beta_nll if heteroscedastic else 0.0,
                           lr_schedule=config.lr_schedule)
    models: list[list[DropoutMLP]] = [[] for _ in row_sets]
    for i, (k, (pi, ti)) in enumerate(zip(owner.tolist(), flat, strict=True)):
        models[k].append(_unstack(weights, i, pi, ti, x_stats[k], y_stats[k]))
    return models


# ---------------------------------------------------------------------------------------------- scoring


def score(model: DropoutMLP, x: np.ndarray, y: np.ndarray, n_samples: int, seed: int) -> dict[str, float]:
    """RMSE of the MC mean, the dropout-off RMSE and the protocol's LL, from ``n_samples`` batched passes."""
    engine = MCEngine(model)
    xt = torch.as_tensor(x, dtype=torch.float32)
    samples = engine.sample(xt, n_samples, seed=seed)  # (T, N) in target units
    return {
        "rmse": M.rmse(samples.double().mean(0), y),
        "rmse_deterministic": M.rmse(engine.deterministic(xt).double(), y),
        "ll": M.gaussian_mixture_ll(samples, y, float(model.tau)),
    }


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


def mixture_moments(samples: Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, aleatoric and epistemic variance of the equal-weight mixture of ``N(mu_t, exp(s_t))``.

    ``mean = mean_t mu_t``; the mixture's variance is ``aleatoric + epistemic`` with ``aleatoric = mean_t
    exp(s_t)`` and ``epistemic = mean_t (mu_t - mean)^2`` (the passes' means' variance, ddof 0).
    Shape: samples ``(T, N, 2)`` -> three ``(N,)``.
    """
    s = np.asarray(samples, dtype=np.float64)
    mean = s[..., 0].mean(0)
    return mean, np.exp(s[..., 1]).mean(0), ((s[..., 0] - mean) ** 2).mean(0)


def keyed_dropout_off(model: DropoutMLP) -> bool:
    """True when every dropout rate of ``model`` rounds to 0 in keyed masks (``p < 2^-17``): its MC passes are
    all the deterministic pass (the engine then refuses MC mode)."""
    return all(F.quantized_rate(m.p)[2] == 0.0 for m in model.modules() if isinstance(m, MCDropoutLayer))


def score_heteroscedastic(model: DropoutMLP, x: np.ndarray, y: np.ndarray, n_samples: int, seed: int
                          ) -> dict[str, float]:
    """RMSE of the MC mean, the dropout-off RMSE and the mixture LL, from ``n_samples`` batched passes.

    When the rates are all below the keyed masks' resolution (:func:`keyed_dropout_off`), or so small that the
    engine's probe sees identical passes and refuses MC mode, the ``T`` passes are taken to be the
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


def _label(p: float, tau: float | None) -> str:
    return f"p={p:g}" if tau is None else f"p={p:g},tau={tau:g}"


def _score(model: DropoutMLP, x: np.ndarray, y: np.ndarray, n_samples: int, seed: int) -> dict[str, float]:
    if model.head is Task.HETEROSCEDASTIC:
        return score_heteroscedastic(model, x, y, n_samples, seed)
    return score(model, x, y, n_samples, seed)


def run_protocol(dataset: UCIDataset, config: UCIConfig, *, log: Log | None = None, heteroscedastic: bool = False,
                 only: Sequence[int] | None = None) -> UCIResult:
    """The full protocol on the first ``config.splits`` splits; every split's grid trains in one stack.

    Args:
        heteroscedastic: the heteroscedastic network; its grid is the dataset's dropout rates alone.
        only: run just these split indices (e.g. one chunk of a resumable run: :mod:`mcdrop.training.uci_resume`);
            the seeds of split ``k``'s scoring depend on ``k`` only, its training on ``config.seed`` and the set.

    ``config.lr_schedule == "chosen"``: the protocol runs once per schedule (constant, cosine), each exactly as
    on its own, and each split keeps the run whose grid reached the higher validation LL (its best pair's;
    ties: constant), a grid search over (p, tau, schedule) on the same validation rows.
    """
    if config.lr_schedule == "chosen":
        return _choose_schedule(dataset, config, log=log, heteroscedastic=heteroscedastic, only=only)
    log = log or (lambda _m: None)
    start = time.perf_counter()
    indices = list(only) if only is not None else list(range(config.splits or len(dataset.splits)))
    splits = [dataset.splits[k] for k in indices]
    if heteroscedastic:
        grid: list[tuple[float, float | None]] = [(p, None) for p in dataset.dropout_rates]
    else:
        grid = [(p, t) for p in dataset.dropout_rates for t in dataset.tau_values]
    generator = torch.Generator().manual_seed(config.seed)
    val_samples = config.val_samples or config.samples

    fit_rows, val_rows = [], []
    for train, _ in splits:
        n_fit = len(train) - round(config.val_fraction * len(train))
        fit_rows.append(train[:n_fit])
        val_rows.append(train[n_fit:])
    log(f"{dataset.name}: grid search, {len(splits)} splits x {len(grid)} pairs, {config.epochs(dataset)} epochs")
    candidates = _fit_many(dataset, fit_rows, [grid] * len(splits), config, generator)
    best: list[tuple[float, float | None]] = []
    val_lls: list[dict[str, float]] = []
    for j, (k, models) in enumerate(zip(indices, candidates, strict=True)):
        lls = {
            _label(*pair): _score(m, dataset.x[val_rows[j]], dataset.y[val_rows[j]], val_samples, config.seed + k)["ll"]
            for pair, m in zip(grid, models, strict=True)
        }
        val_lls.append(lls)
        best.append(grid[int(np.argmax(list(lls.values())))])
    log(f"{dataset.name}: retraining with the chosen pairs {Counter(best).most_common()}")
    finals = _fit_many(dataset, [train for train, _ in splits], [[pair] for pair in best], config, generator)
    results = []
    for j, (k, (_, test), [model], (p, tau)) in enumerate(zip(indices, splits, finals, best, strict=True)):
        s = _score(model, dataset.x[test], dataset.y[test], config.samples, config.seed + 1000 + k)
        results.append(SplitResult(k, p, tau, s["rmse"], s["rmse_deterministic"], s["ll"], val_lls[j],
                                   bool(s.get("mc_off", 0.0))))
    head = Task.HETEROSCEDASTIC if heteroscedastic else Task.HOMOSCEDASTIC
    return UCIResult(dataset.name, len(dataset.y), dataset.x.shape[1], config.epochs(dataset), config, results,
                     time.perf_counter() - start, head.value)


def _choose_schedule(dataset: UCIDataset, config: UCIConfig, *, log: Log | None, heteroscedastic: bool,
                     only: Sequence[int] | None) -> UCIResult:
    """:func:`run_protocol` with the learning-rate schedule chosen per split on validation LL."""
    runs = [run_protocol(dataset, replace(config, lr_schedule=s), log=log, heteroscedastic=heteroscedastic, only=only)
            for s in ("constant", "cosine")]

    def best_val(s: SplitResult) -> float:
        return max((v for v in s.val_ll.values() if math.isfinite(v)), default=-math.inf)

    splits = []
    for per in zip(*(r.splits for r in runs), strict=True):
        won = max(range(len(runs)), key=lambda i: best_val(per[i]))  # the first of equals: constant
        merged = {f"{r.config.lr_schedule} {k}": v for r, s in zip(runs, per, strict=True) for k, v in s.val_ll.items()}
        splits.append(replace(per[won], val_ll=merged, lr_schedule=runs[won].config.lr_schedule))
    first = runs[0]
    return UCIResult(first.dataset, first.n_rows, first.n_features, first.epochs, config, splits,
                     sum(r.seconds for r in runs), first.head)


def holdout_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(training, calibration, test) row indices: a permutation seeded by ``seed`` holds out its first
    ``fraction`` of ``n`` rows, half for the conformal calibration, half for the card's test metrics."""
    perm = np.random.default_rng(seed).permutation(n)
    n_hold = round(fraction * n)
    half = n_hold // 2
    return np.sort(perm[n_hold:]), np.sort(perm[:half]), np.sort(perm[half:n_hold])


def fit_regressor(dataset: UCIDataset, p: float, tau: float | None, config: UCIConfig,
                  rows: np.ndarray | None = None) -> DropoutMLP:
    """One network on ``rows`` of ``dataset`` (default: every row) with the given pair (``tau`` None: the
    heteroscedastic network)."""
    generator = torch.Generator().manual_seed(config.seed)
    rows = np.arange(len(dataset.y)) if rows is None else rows
    return _fit_many(dataset, [rows], [[(p, tau)]], config, generator)[0][0]


def summarize(results: Sequence[UCIResult]) -> str:
    """A markdown table: mean +- standard error over splits, per dataset."""
    lines = [
        "| dataset | N | D | splits | epochs | T | RMSE (MC mean) | RMSE (dropout off) | test LL | most chosen (p, τ) | time |",
        "|---|---:|---:|---:|---:|---:|---|---|---|---|---:|",
    ]
    for r in results:
        cells = []
        for name in ("rmse", "rmse_deterministic", "ll"):
            mean, se = r.mean_se(name)
            cells.append(f"{mean:.3f} ± {se:.3f}")
        p, tau = r.chosen()
        chosen = f"({p:g}, {tau:g})" if tau is not None else f"({p:g}, learned)"
        lines.append(f"| {r.dataset} | {r.n_rows} | {r.n_features} | {len(r.splits)} | {r.epochs} | {r.config.samples} | "
                     f"{' | '.join(cells)} | {chosen} | {r.seconds:.0f} s |")
    return "\n".join(lines)
