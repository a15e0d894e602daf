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

Speed: the networks of one stage (every split x every grid pair) are independent, so they train
together as one stacked network (batched matmuls, one Adam over stacked parameters, which is elementwise
and therefore G independent Adams); each network draws its own batches and masks.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from mcdrop.nets.models import DropoutMLP
from mcdrop.request import Task
from mcdrop.sampling.engine import MCEngine
from mcdrop.training.configs import UCIConfig
from mcdrop.training.data import UCIDataset
from mcdrop.uncertainty import metrics as M

__all__ = ["SplitResult", "UCIConfig", "UCIResult", "fit_regressor", "holdout_split", "run_protocol", "summarize"]

Log = Callable[[str], None]


@dataclass
class SplitResult:
    split: int
    dropout: float
    tau: float
    rmse: float  # of the MC mean
    rmse_deterministic: float
    ll: float
    val_ll: dict[str, float] = field(default_factory=dict)  # "p=..,tau=.." -> validation LL


@dataclass
class UCIResult:
    dataset: str
    n_rows: int
    n_features: int
    epochs: int
    config: UCIConfig
    splits: list[SplitResult]
    seconds: float

    def mean_se(self, name: str) -> tuple[float, float]:
        """Mean and standard error of a split metric over splits (:func:`mean_se`)."""
        return mean_se([getattr(s, name) for s in self.splits])

    def chosen(self) -> tuple[float, float]:
        """The (p, tau) pair chosen on most splits (ties: the first chosen)."""
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
    batch_size: int, lr: float, generator: torch.Generator,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Train G one-hidden-layer dropout networks at once.

    Args:
        xs, ys: standardised training sets, one per data set ``k``. Shape: ``(K, N, D)``, ``(K, N)``.
        owner: the data set of each network. Shape: ``(G,)``.
        p, decay: each network's dropout rate and weight decay ``lambda``. Shape: ``(G,)``.

    Returns:
        stacked ``W1 (G, D, H)``, ``b1 (G, H)``, ``W2 (G, H)``, ``b2 (G,)``.
    """
    g, (_, n, d) = owner.shape[0], xs.shape
    bound1, bound2 = math.sqrt(6 / (d + hidden)), math.sqrt(6 / (hidden + 1))
    w1 = ((torch.rand(g, d, hidden, generator=generator) * 2 - 1) * bound1).requires_grad_()
    w2 = ((torch.rand(g, hidden, 1, generator=generator) * 2 - 1) * bound2).requires_grad_()
    b1 = torch.zeros(g, 1, hidden, requires_grad=True)
    b2 = torch.zeros(g, 1, 1, requires_grad=True)
    opt = torch.optim.Adam([w1, b1, w2, b2], lr=lr)
    drop_words = torch.round(p * 65536).clamp(0, 65535)
    threshold = (drop_words - 32768).to(torch.int16).view(g, 1, 1)
    scale = (65536 / (65536 - drop_words)).view(g, 1, 1)  # 1 / (1 - p) at the 16-bit rate the masks have
    x_net, y_net = xs[owner], ys[owner]  # (G, N, D), (G, N)
    net_index = torch.arange(g).view(g, 1)
    for _ in range(epochs):
        order = torch.argsort(torch.rand(g, n, generator=generator), dim=1)
        for start in range(0, n, batch_size):
            idx = order[:, start : start + batch_size]
            xb, yb = x_net[net_index, idx], y_net[net_index, idx]
            # (x * m / (1 - p)) @ W == (x * m) @ (W / (1 - p)): the scale goes on the small weight tensors
            xb = torch.where(_keep(xb.shape, threshold, generator), xb, 0.0)
            h = torch.relu(torch.baddbmm(b1, xb, w1 * scale))
            h = torch.where(_keep(h.shape, threshold, generator), h, 0.0)
            out = torch.baddbmm(b2, h, w2 * scale).squeeze(-1)
            loss = ((out - yb) ** 2).mean(1) + decay * (w1.square().sum((1, 2)) + w2.square().sum((1, 2)))
            opt.zero_grad(set_to_none=True)
            loss.sum().backward()
            opt.step()
    return w1.detach(), b1.detach().squeeze(1), w2.detach().squeeze(-1), b2.detach().view(g)


def _unstack(
    weights: tuple[Tensor, Tensor, Tensor, Tensor], i: int, p: float, tau: float,
    x_stats: tuple[np.ndarray, np.ndarray], y_stats: tuple[float, float],
) -> DropoutMLP:
    w1, b1, w2, b2 = weights
    d, hidden = w1.shape[1:]
    model = DropoutMLP(d, [hidden], 1, dropout=p, input_dropout=p, head=Task.HOMOSCEDASTIC, tau=tau)
    with torch.no_grad():
        first, last = [m for m in model.net if isinstance(m, nn.Linear)]
        first.weight.copy_(w1[i].T)
        first.bias.copy_(b1[i])
        last.weight.copy_(w2[i].unsqueeze(0))
        last.bias.copy_(b2[i].view(1))
        model.input_shift.copy_(torch.as_tensor(x_stats[0], dtype=torch.float32))
        model.input_scale.copy_(torch.as_tensor(x_stats[1], dtype=torch.float32))
        model.target_shift.fill_(y_stats[0])
        model.target_scale.fill_(y_stats[1])
    return model.eval()


def _fit_many(
    dataset: UCIDataset, row_sets: Sequence[np.ndarray], pairs: Sequence[Sequence[tuple[float, float]]],
    config: UCIConfig, generator: torch.Generator,
) -> list[list[DropoutMLP]]:
    """Train, for every row set ``k``, one network per ``(p, tau)`` in ``pairs[k]`` (all at once)."""
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
    tau = torch.tensor([pair[1] for pair in flat], dtype=torch.float32)
    n = xs.shape[1]
    decay = config.length_scale**2 * (1 - p) / (2 * n * tau)
    weights = _train_stack(xs, ys, owner, p, decay, hidden=dataset.n_hidden, epochs=config.epochs(dataset),
                           batch_size=config.batch_size, lr=config.lr, generator=generator)
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


def _label(p: float, tau: float) -> str:
    return f"p={p:g},tau={tau:g}"


def run_protocol(dataset: UCIDataset, config: UCIConfig, *, log: Log | None = None) -> UCIResult:
    """The full protocol on the first ``config.splits`` splits; every split's grid trains in one stack."""
    log = log or (lambda _m: None)
    start = time.perf_counter()
    splits = dataset.splits[: config.splits] if config.splits else dataset.splits
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
    best: list[tuple[float, float]] = []
    val_lls: list[dict[str, float]] = []
    for k, models in enumerate(candidates):
        lls = {
            _label(*pair): score(m, dataset.x[val_rows[k]], dataset.y[val_rows[k]], val_samples, config.seed + k)["ll"]
            for pair, m in zip(grid, models, strict=True)
        }
        val_lls.append(lls)
        best.append(grid[int(np.argmax(list(lls.values())))])
    log(f"{dataset.name}: retraining with the chosen pairs {Counter(best).most_common()}")
    finals = _fit_many(dataset, [train for train, _ in splits], [[pair] for pair in best], config, generator)
    results = []
    for k, ((_, test), [model], (p, tau)) in enumerate(zip(splits, finals, best, strict=True)):
        s = score(model, dataset.x[test], dataset.y[test], config.samples, config.seed + 1000 + k)
        results.append(SplitResult(k, p, tau, s["rmse"], s["rmse_deterministic"], s["ll"], val_lls[k]))
    return UCIResult(dataset.name, len(dataset.y), dataset.x.shape[1], config.epochs(dataset), config, results,
                     time.perf_counter() - start)


def holdout_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(training, calibration, test) row indices: a permutation seeded by ``seed`` holds out its first
    ``fraction`` of ``n`` rows, half for the conformal calibration, half for the card's test metrics."""
    perm = np.random.default_rng(seed).permutation(n)
    n_hold = round(fraction * n)
    half = n_hold // 2
    return np.sort(perm[n_hold:]), np.sort(perm[:half]), np.sort(perm[half:n_hold])


def fit_regressor(dataset: UCIDataset, p: float, tau: float, config: UCIConfig, rows: np.ndarray | None = None
                  ) -> DropoutMLP:
    """One network on ``rows`` of ``dataset`` (default: every row) with the given pair."""
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
        lines.append(f"| {r.dataset} | {r.n_rows} | {r.n_features} | {len(r.splits)} | {r.epochs} | {r.config.samples} | "
                     f"{' | '.join(cells)} | ({p:g}, {tau:g}) | {r.seconds:.0f} s |")
    return "\n".join(lines)
