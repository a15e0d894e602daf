"""What the studies share: data, seeded training and evaluation, confidence intervals, tables and plots.

Every comparison is summarised over seeds ``0..K-1`` by a Student-t interval,
``mean ± t_{1-α/2, K-1} · s / sqrt(K)``; runs that share a seed (same split, initialisation and batch order)
are compared by the t-interval of their per-seed differences (a paired interval).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats
from torch import Tensor, nn

from mcdrop.io.atomic import atomic_write
from mcdrop.sampling.engine import MCEngine
from mcdrop.training.classifier import train_classifier
from mcdrop.training.configs import ClassifierConfig
from mcdrop.uncertainty import metrics as M

__all__ = [
    "Context",
    "Interval",
    "StudyData",
    "StudyResult",
    "evaluate",
    "load_data",
    "markdown_table",
    "mc_probabilities",
    "paired_interval",
    "pyplot",
    "score",
    "t_interval",
    "train",
    "write_result",
]

LEVEL = 0.95
METRICS = ("accuracy", "nll", "ece", "brier")
COLORS = {"dropout": "#1f77b4", "none": "#ff7f0e", "third": "#2ca02c", "fourth": "#d62728"}


# ------------------------------------------------------------------------------------------- intervals


@dataclass(frozen=True)
class Interval:
    """A mean over ``n`` seeds and its two-sided ``level`` confidence interval ``[low, high]``."""

    mean: float
    low: float
    high: float
    n: int
    level: float = LEVEL

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def excludes(self, value: float = 0.0) -> bool:
        """True when ``value`` lies outside the interval (a difference "significant at 1 - level")."""
        return not self.low <= value <= self.high

    def as_dict(self) -> dict[str, float | int]:
        return {"mean": self.mean, "low": self.low, "high": self.high, "n": self.n, "level": self.level}

    def fmt(self, digits: int = 4, scale: float = 1.0) -> str:
        """``mean [low, high]`` (times ``scale``, e.g. 100 for percentage points)."""
        m, lo, hi = (v * scale for v in (self.mean, self.low, self.high))
        return f"{m:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def t_interval(values: Iterable[float], level: float = LEVEL) -> Interval:
    """Student-t interval of the mean of ``values`` (one per seed): ``mean ± t_{(1+level)/2, n-1} · sem``.

    With identical values the interval is the point; with one value its bounds are NaN.
    """
    a = np.asarray(list(values), dtype=float)
    if a.size == 0:
        raise ValueError("t_interval needs at least one value, but got none")
    mean = float(a.mean())
    if a.size < 2:
        return Interval(mean, math.nan, math.nan, 1, level)
    se = float(stats.sem(a))
    if se == 0.0:
        return Interval(mean, mean, mean, int(a.size), level)
    low, high = stats.t.interval(level, a.size - 1, loc=mean, scale=se)
    return Interval(mean, float(low), float(high), int(a.size), level)


def paired_interval(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, level: float = LEVEL) -> Interval:
    """Interval of the mean per-seed difference ``a_k - b_k`` (runs ``a_k`` and ``b_k`` share seed ``k``)."""
    if len(a) != len(b):
        raise ValueError(f"paired_interval needs one value per seed on both sides, but got {len(a)} and {len(b)}")
    return t_interval(np.subtract(a, b), level)


# ------------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class StudyData:
    """Training and test features ``(N, D)`` in [0, 1] with labels ``(N,)``."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    n_classes: int = 10
    description: str = "Fashion-MNIST"


def load_data(root: str | None = None, *, quick: bool = False) -> StudyData:
    """Fashion-MNIST (60,000 training and 10,000 test images); ``quick``: the first 2,000 and 1,000 of them."""
    from mcdrop.training.data import fashion_mnist_features, load_fashion_mnist

    xi, y = load_fashion_mnist(root, train=True)
    ti, ty = load_fashion_mnist(root, train=False)
    x, xt = fashion_mnist_features(xi), fashion_mnist_features(ti)
    if quick:
        return StudyData(x[:2000], y[:2000], xt[:1000], ty[:1000], 10, "Fashion-MNIST, first 2,000/1,000 rows (quick)")
    return StudyData(x, y, xt, ty, 10, "Fashion-MNIST, 60,000 training (54,000 fitted) and 10,000 test images")


# ------------------------------------------------------------------------------------------- context


@dataclass
class Context:
    """One study run: the data, the seeds, quick mode (fewer epochs and a smaller design) and a logger."""

    data: StudyData
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    quick: bool = False
    log: Callable[[str], None] = lambda _msg: None

    def epochs(self, full: int, quick: int = 1) -> int:
        return quick if self.quick else full


@dataclass
class StudyResult:
    """What a study hands back: JSON-able results, the answer sentence, table markdown, plot writers and
    machine-dependent timings (kept out of the table so the same command gives the same table)."""

    name: str
    title: str
    answer: str
    results: dict[str, Any]
    tables: list[str]
    plots: dict[str, Callable[[Path], None]]
    timings: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)


def train(ctx: Context, seed: int, *, factory: Callable[[int, int], nn.Module] | None = None,
          penalty: Callable[[nn.Module], Tensor] | None = None, on_epoch: Callable[[int, nn.Module], None] | None = None,
          **overrides: Any) -> tuple[nn.Module, dict[str, Any]]:
    """The reference recipe (``ClassifierConfig()``: 784-256-256-10, dropout 0.2/0.5, SGD 0.1, batch 256) with
    ``overrides`` and ``seed``, trained on ``ctx.data``'s training rows (90% fitted, 10% held out)."""
    config = replace(ClassifierConfig(), seed=seed, **overrides)
    return train_classifier(config, ctx.data.x_train, ctx.data.y_train, n_classes=ctx.data.n_classes,
                            factory=factory, penalty=penalty, on_epoch=on_epoch)


# ------------------------------------------------------------------------------------------- evaluation


def score(probs: Tensor, y: Tensor) -> dict[str, float]:
    """Accuracy, NLL, ECE (15 bins) and Brier score of predictive probabilities ``(N, C)`` for labels ``(N,)``."""
    return {"accuracy": float((probs.argmax(1) == y).float().mean()), "nll": M.nll(probs, y),
            "ece": M.ece(probs, y, 15), "brier": M.brier(probs, y)}


def has_dropout(model: nn.Module) -> bool:
    return any(getattr(m, "p", 0.0) > 0 for _, m in MCEngine(model).layers)


def mc_probabilities(engine: MCEngine, x: Tensor, checkpoints: Sequence[int], *, seed: int = 0,
                     chunk: int | None = None) -> dict[int, Tensor]:
    """MC predictive probabilities ``mean_{s<N} softmax(f_s(x))`` for every ``N`` in ``checkpoints``.

    The samples are drawn once, up to the largest ``N``, in chunks of passes (masks are keyed by sample index,
    so the first ``N`` passes are exactly the ``N``-sample draw). Shape: x ``(B, D)`` -> ``{N: (B, C)}``.
    """
    wanted, top = sorted(set(checkpoints)), max(checkpoints)
    chunk = chunk or max(1, min(top, (1 << 22) // max(1, x.shape[0])))
    total: Tensor | None = None
    out: dict[int, Tensor] = {}
    done = 0
    while done < top:
        stop = min(top, done + chunk, *(n for n in wanted if n > done))
        p = torch.softmax(engine.sample(x, stop - done, seed=seed, first_sample=done).double(), -1).sum(0)
        total = p if total is None else total + p
        done = stop
        if done in wanted:
            out[done] = (total / done).float()
    return out


def evaluate(model: nn.Module, x: Tensor, y: Tensor, *, n_samples: int = 50, seed: int = 0) -> dict[str, dict[str, float]]:
    """``{"deterministic": score, "mc": score}`` (``mc`` only when the model has dropout with ``p > 0``)."""
    engine = MCEngine(model)
    out = {"deterministic": score(torch.softmax(engine.deterministic(x).double(), -1).float(), y)}
    if has_dropout(model):
        out["mc"] = score(mc_probabilities(engine, x, [n_samples], seed=seed)[n_samples], y)
    return out


def timed(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall-clock seconds of ``repeats`` calls of ``fn``."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def intervals(runs: Sequence[dict[str, Any]], *path: str) -> Interval:
    """The t-interval over runs (one per seed) of the value at ``run[path[0]][path[1]]...``."""
    values = []
    for run in runs:
        v: Any = run
        for key in path:
            v = v[key]
        values.append(float(v))
    return t_interval(values)


# ------------------------------------------------------------------------------------------- output


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend with the house style (imported only when plotting)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 110, "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False,
                         "axes.spines.right": False, "font.size": 9, "legend.fontsize": 8})
    return plt


def save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, format="png")
    pyplot().close(fig)


def band(ax: Any, x: Sequence[float] | np.ndarray, per_seed: np.ndarray, *, label: str, color: str, style: str = "-") -> None:
    """Plot the mean over seeds (rows of ``per_seed``) with its 95% t-interval as a shaded band."""
    per_seed = np.asarray(per_seed, dtype=float)
    mean = per_seed.mean(0)
    ax.plot(x, mean, style, color=color, label=label, lw=1.4)
    if per_seed.shape[0] > 1:
        half = stats.t.ppf((1 + LEVEL) / 2, per_seed.shape[0] - 1) * stats.sem(per_seed, axis=0)
        ax.fill_between(x, mean - half, mean + half, color=color, alpha=0.2, lw=0)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Interval):
        return value.as_dict()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_result(result: StudyResult, ctx: Context, out: Path, command: str) -> list[Path]:
    """Write ``out/results.json``, ``out/table.md``, ``out/timings.md`` (when timed) and the PNG plots."""
    out.mkdir(parents=True, exist_ok=True)
    payload = {"study": result.name, "title": result.title, "command": command, "answer": result.answer,
               "seeds": ctx.seeds, "quick": ctx.quick, "data": ctx.data.description, "settings": result.settings,
               "results": result.results, "timings": result.timings}
    written = [out / "results.json", out / "table.md"]
    atomic_write(out / "results.json", json.dumps(_jsonable(payload), indent=1) + "\n")
    body = [f"# {result.title}", "", f"`{command}` ({ctx.data.description}; seeds {ctx.seeds}; 95% t-intervals over "
            "seeds, paired where runs share a seed)", "", result.answer, ""]
    for table in result.tables:
        body += [table, ""]
    atomic_write(out / "table.md", "\n".join(body))
    if result.timings.get("table"):
        atomic_write(out / "timings.md", result.timings["table"] + "\n")
        written.append(out / "timings.md")
    for name, draw in result.plots.items():
        draw(out / name)
        written.append(out / name)
    return written


def machine() -> str:
    """The CPU model (from /proc/cpuinfo when readable), its core count and torch's thread count."""
    import os

    name = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def comparison_plot(path: Path, summary: dict[str, Any], diff: dict[str, Any], labels: dict[str, str],
                    colors: dict[str, str], n_samples: int, title: str,
                    metrics: Sequence[str] = ("accuracy", "nll", "ece")) -> None:
    """Top row: each method's test metric per mode (dropout off, MC) with its 95% CI over seeds; bottom row: the
    paired difference of each other method minus the first (``diff[method][mode][metric]``), with the zero line."""
    plt = pyplot()
    names = {"accuracy": "test accuracy", "nll": "test NLL (nats)", "ece": "test ECE (15 bins)"}
    modes = ("deterministic", "mc")
    ticks = ["dropout off", f"MC, N={n_samples}"]
    methods = list(summary)
    fig, axes = plt.subplots(2, len(metrics), figsize=(3.7 * len(metrics), 6.2), sharex=True)
    for col, metric in enumerate(metrics):
        for row, group in ((0, methods), (1, methods[1:])):
            ax = axes[row, col]
            width = 0.6 / max(1, len(group))
            for k, m in enumerate(group):
                cis = [summary[m][mode][metric] if row == 0 else diff[m][mode][metric] for mode in modes]
                x = np.arange(2) + (k - (len(group) - 1) / 2) * width
                label = labels[m] if row == 0 else None
                ax.errorbar(x, [c.mean for c in cis], yerr=[[c.mean - c.low for c in cis], [c.high - c.mean for c in cis]],
                            fmt="o", color=colors[m], capsize=3, label=label)
            if row == 1:
                ax.axhline(0.0, color="black", lw=0.8)
                ax.set_ylabel(f"Δ {names[metric]}: method − {labels[methods[0]].split(' (')[0]}")
            else:
                ax.set_ylabel(names[metric])
            ax.set_xticks(range(2), ticks)
            ax.set_xlim(-0.5, 1.5)
        axes[0, col].set_title(names[metric])
    axes[0, 0].legend(loc="best", fontsize=7)
    fig.suptitle(title, fontsize=9)
    save(fig, path)
