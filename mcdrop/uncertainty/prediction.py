"""Predictions with uncertainty: an engine's outputs (deterministic, N passes, or adaptive N) summarised.

The engine runs where the model and ``x`` are (CPU or CUDA); its outputs are summarised on the CPU, so a
:class:`Prediction` always holds CPU tensors.

Adaptive sampling draws rounds of passes, doubling N, until each row's Monte Carlo standard error of its
main estimate (:func:`~mcdrop.uncertainty.summaries.main_stderr`) is at most ``tolerance`` or N reaches the cap;
a row that stops keeps its first N samples, so its answer equals a fixed-N call with the same seed.  The
first round has at least :data:`~mcdrop.request.MIN_ADAPTIVE_SAMPLES` passes: the standard error estimated
from fewer cannot tell whether the tolerance is met.

Decision-based stopping (``stop="decision"``, classifiers) draws rounds of passes (8, 16, 24, 36, ...: half as many
more each round, up to the cap) and stops a row once anytime-valid tests say its decisions (class, and the ``rule``'s
abstention and conformal set) are those of infinitely many passes, with probability at least ``1 - delta``
(:mod:`mcdrop.uncertainty.stopping`).  Only open rows are sampled in a round; a row's first ``n`` passes are the same
whatever the rule, so a row that stops at ``n`` answers as a fixed-``n`` call with the same seed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn

from mcdrop.request import DEFAULT_LEVEL, DEFAULT_MAX_SAMPLES, DEFAULT_N_SAMPLES, MIN_ADAPTIVE_SAMPLES, Mode, Task, new_seed
from mcdrop.sampling.engine import MCEngine
from mcdrop.uncertainty import summaries as U
from mcdrop.uncertainty.stopping import DecisionRule, DecisionTests, interval_settled, next_round
from mcdrop.uncertainty.stopping import settled as settled_decisions

__all__ = ["Prediction", "model_task", "predict"]


@dataclass(frozen=True)
class Prediction:
    """The outcome of :func:`predict`.

    Attributes:
        mode: the mode that ran.
        summary: per-input predictions and uncertainty (``n_samples`` holds the N used per row).
        seed: the seed (or per-row seeds) the masks were drawn with (None in deterministic mode).
        samples: raw model outputs ``(S, B, ...)`` when asked for; with adaptive sampling, entries of rows
            that stopped early are NaN beyond their ``n_samples``.
        features: the deterministic outputs of the modules asked for with ``features`` (``{name: (B, ...)}``).
    """

    mode: Mode
    summary: U.ClassificationSummary | U.RegressionSummary
    seed: int | Tensor | None
    samples: Tensor | None = None
    features: dict[str, Tensor] | None = None


def model_task(model: nn.Module) -> tuple[Task | None, float | None]:
    """A model's task and noise precision, from its ``head`` attribute and ``tau`` buffer (DropoutMLP has both)."""
    head = getattr(model, "head", None)
    tau = getattr(model, "tau", None)
    tau_value = float(tau) if isinstance(tau, Tensor) and tau.numel() == 1 else None
    return (Task(head) if head is not None else None), (None if tau_value is None or math.isnan(tau_value) else tau_value)


def predict(
    engine: MCEngine,
    x: Tensor,
    *,
    task: Task | str | None = None,
    tau: float | None = None,
    mode: Mode | str = Mode.MC,
    n_samples: int = DEFAULT_N_SAMPLES,
    seed: int | Tensor | None = None,
    rows: Tensor | None = None,
    tolerance: float | None = None,
    max_samples: int | None = None,
    level: float = DEFAULT_LEVEL,
    return_samples: bool = False,
    features: Sequence[str] = (),
    cancelled: Callable[[], bool] | None = None,
    consistent: bool = False,
    stop: str | None = None,
    delta: float = 1e-3,
    rule: DecisionRule | None = None,
) -> Prediction:
    """Predictions with uncertainty for every row of ``x``.

    Args:
        engine: the model's engine.
        x: inputs. Shape: ``(B, *)``.
        task, tau: how outputs are summarised (default: from the model, :func:`model_task`).
        mode: ``deterministic`` or ``mc``.
        n_samples: MC passes; with ``tolerance``, the first round (at least ``MIN_ADAPTIVE_SAMPLES``).
        seed: the masks' seed (or one per row); None draws one, returned in the result.
        rows: row positions for the masks (see :meth:`MCEngine.sample`).
        tolerance: adaptive sampling's target standard error (None: fixed N).
        max_samples: adaptive sampling's cap (default ``DEFAULT_MAX_SAMPLES``, at least the first round).
        level: central interval level (regression).
        return_samples: also return the raw samples.
        features: names of modules whose deterministic outputs to return (e.g. for an OOD density); in MC
            mode they cost one extra deterministic pass.
        cancelled: see :meth:`MCEngine.sample`.
        consistent: one network per pass for every row (see :meth:`MCEngine.sample`); fixed N only.
        stop: ``"decision"``: stop each row when its decisions are settled (regression: when both interval ends
            are known within 5% of the width, :func:`~mcdrop.uncertainty.stopping.interval_settled`), ``"class"``: its class
            (``tolerance`` None);
            rounds start at ``MIN_ADAPTIVE_SAMPLES`` passes, ``max_samples`` caps them (default
            ``DEFAULT_MAX_SAMPLES``).
        delta: decision stopping's risk: the chance that any row's decisions differ from those of its mean.
        rule: the decisions besides the class (abstention threshold, conformal set); default: the class only.
    """
    mode = Mode(mode)
    inferred_task, inferred_tau = model_task(engine.model)
    task = Task(task) if task is not None else inferred_task
    if task is None:
        raise ValueError("predict needs task='classification', 'homoscedastic' or 'heteroscedastic' for a model "
                         "without a head attribute")
    tau = tau if tau is not None else inferred_tau
    captured: dict[str, Tensor] | None
    if mode is Mode.DETERMINISTIC:
        det, captured = engine.deterministic_features(x, features)
        out, captured = det.cpu().unsqueeze(0), _cpu(captured)
        summary = U.summarize(out, task, tau=tau, level=level, sampled=False)
        return Prediction(mode, summary, None, out if return_samples else None, captured if features else None)
    captured = _cpu(engine.deterministic_features(x, features)[1]) if features else None
    seed = new_seed() if seed is None else seed
    if stop is not None:
        if stop not in ("decision", "class"):
            raise ValueError(f"stop has to be 'decision', 'class' or None, but got {stop!r}")
        if tolerance is not None or consistent:
            raise ValueError("stop='decision' decides the number of passes itself: tolerance has to be None and "
                             "consistent False")
        if task is not Task.CLASSIFICATION and stop == "class":
            raise ValueError(f"stop='class' settles a classifier's class, but the task is {task.value}")
        cap = DEFAULT_MAX_SAMPLES if max_samples is None else max_samples
        if cap < 1:
            raise ValueError(f"max_samples has to be a positive number of passes, but got {cap}")
        if task is not Task.CLASSIFICATION:
            samples, used = _sample_interval(engine, x, min(MIN_ADAPTIVE_SAMPLES, cap), cap, delta, seed, rows, task,
                                             tau, level, cancelled)
            return Prediction(mode, _summarize_used(samples, used, task, tau, level, x.shape[0]), seed,
                              samples if return_samples else None, captured)
        rule = rule if rule is not None and stop == "decision" else DecisionRule()
        samples, used = _sample_decision(engine, x, min(MIN_ADAPTIVE_SAMPLES, cap), cap, delta, rule, seed, rows,
                                         cancelled)
        return Prediction(mode, _summarize_used(samples, used, task, tau, level, x.shape[0]), seed,
                          samples if return_samples else None, captured)
    if consistent and tolerance is not None:
        raise ValueError("consistent masks are for fixed n_samples; tolerance has to be None")
    if tolerance is None:
        samples = engine.sample(x, n_samples, seed=seed, rows=rows, cancelled=cancelled, consistent=consistent).cpu()
        return Prediction(mode, U.summarize(samples, task, tau=tau, level=level), seed,
                          samples if return_samples else None, captured)
    if not tolerance > 0:
        raise ValueError(f"tolerance has to be a positive standard error, but got {tolerance}")
    first = max(n_samples, MIN_ADAPTIVE_SAMPLES)
    cap = max(first, DEFAULT_MAX_SAMPLES) if max_samples is None else max_samples
    if cap < first:
        raise ValueError(f"max_samples ({cap}) has to be at least the first round of adaptive sampling ({first} = "
                         f"max(n_samples, {MIN_ADAPTIVE_SAMPLES}))")
    samples, used = _sample_adaptive(engine, x, first, cap, tolerance, seed, rows, task, cancelled)
    return Prediction(mode, _summarize_used(samples, used, task, tau, level, x.shape[0]), seed,
                      samples if return_samples else None, captured)


def _summarize_used(samples: Tensor, used: Tensor, task: Task, tau: float | None, level: float, b: int) -> Any:
    """One summary of rows that used different numbers of passes (``samples`` NaN beyond a row's ``used``)."""
    parts = []
    for n in torch.unique(used).tolist():
        idx = torch.nonzero(used == n).squeeze(1)
        parts.append((idx, U.summarize(samples[:n, idx], task, tau=tau, level=level)))
    return _merge(parts, b)


def _sample_rounds(
    engine: MCEngine, x: Tensor, first: int, cap: int, seed: int | Tensor, rows: Tensor | None,
    cancelled: Callable[[], bool] | None, settled: Callable[[Tensor, Tensor, Tensor], Tensor],
    step: Callable[[int], int] | None = None,
) -> tuple[Tensor, Tensor]:
    """Rounds of passes of the open rows (``first``, then ``step(n)``, default
    :func:`~mcdrop.uncertainty.stopping.next_round`) until ``settled(new, samples, active)`` says each row is done, or the
    cap.  A row's passes are those of a fixed-n request with the same seed (masks keyed by row and sample).  Returns
    samples ``(cap, B, ...)``, NaN beyond a row's passes, and the passes each row used ``(B,)``.  ``settled`` gets the
    round's new samples ``(m - n, A, ...)``, all samples so far ``(m, B, ...)`` (a view: index it by ``active``)
    and the open rows' indices ``(A,)``; it returns a bool ``(A,)``."""
    b = x.shape[0]
    rows = torch.arange(b, dtype=torch.int64, device=x.device) if rows is None else rows.to(x.device)
    out: Tensor | None = None
    used = torch.zeros(b, dtype=torch.int64)
    active = torch.arange(b)
    n = 0
    while active.numel() and n < cap:
        m = first if n == 0 else next_round(n, cap) if step is None else step(n)
        index = active.to(x.device)
        row_seed = seed[active] if isinstance(seed, Tensor) else seed
        new = engine.sample(x[index], m - n, seed=row_seed, rows=rows[index], first_sample=n, cancelled=cancelled).cpu()
        if out is None:
            out = torch.full((cap, b, *new.shape[2:]), math.nan, dtype=new.dtype)
        out[n:m, active] = new
        used[active] = m
        n = m
        done = settled(new, out[:n], active)
        active = active[~done]
    assert out is not None
    return out, used


def _sample_interval(
    engine: MCEngine, x: Tensor, first: int, cap: int, delta: float, seed: int | Tensor, rows: Tensor | None, task: Task,
    tau: float | None, level: float, cancelled: Callable[[], bool] | None,
) -> tuple[Tensor, Tensor]:
    """Regression: rounds of passes of the open rows until both interval ends are known within
    :data:`~mcdrop.uncertainty.stopping.INTERVAL_FRACTION` of the width (or the cap); NaN beyond."""
    noise = 0.0
    if task is Task.HOMOSCEDASTIC:
        if tau is None or not tau > 0:
            raise ValueError(f"a homoscedastic model needs its noise precision tau > 0, but got {tau}")
        noise = 1.0 / tau

    def settled(_new: Tensor, samples: Tensor, active: Tensor) -> Tensor:
        part = samples[:, active]
        if task is Task.HOMOSCEDASTIC:
            return interval_settled(part, noise, level, delta)
        return interval_settled(part[..., 0], part[..., 1].exp(), level, delta)

    return _sample_rounds(engine, x, first, cap, seed, rows, cancelled, settled)


def _sample_decision(
    engine: MCEngine, x: Tensor, first: int, cap: int, delta: float, rule: DecisionRule, seed: int | Tensor,
    rows: Tensor | None, cancelled: Callable[[], bool] | None,
) -> tuple[Tensor, Tensor]:
    """Rounds of passes of the open rows until each row's decisions are settled (or the cap); NaN beyond."""
    tests: list[DecisionTests] = []  # made at the first round, when the number of classes is known

    def settled(new: Tensor, _samples: Tensor, active: Tensor) -> Tensor:
        if not tests:
            tests.append(DecisionTests(x.shape[0], new.shape[-1], delta, rule.levels(), rule.full_grid))
        test = tests[0]
        test.update(torch.softmax(new.double(), -1))
        lower, upper = test.bounds()
        done = settled_decisions(test.mean, lower, upper, rule.select(active))
        test.select(torch.nonzero(~done).squeeze(1))
        return done

    return _sample_rounds(engine, x, first, cap, seed, rows, cancelled, settled)


def _sample_adaptive(
    engine: MCEngine, x: Tensor, first: int, cap: int, tolerance: float, seed: int | Tensor, rows: Tensor | None,
    task: Task, cancelled: Callable[[], bool] | None,
) -> tuple[Tensor, Tensor]:
    """Adaptive sampling: the open rows' passes doubled until the MC standard error of the main estimate is at
    most ``tolerance`` (or the cap); NaN beyond."""

    def settled(_new: Tensor, samples: Tensor, active: Tensor) -> Tensor:
        return (U.main_stderr(samples[:, active], task) <= tolerance).cpu()

    return _sample_rounds(engine, x, first, cap, seed, rows, cancelled, settled, step=lambda n: min(2 * n, cap))


def _cpu(features: dict[str, Tensor]) -> dict[str, Tensor]:
    """Features on the CPU, in float32 at least (a bfloat16 model's hidden activations are widened)."""
    return {name: value.cpu().float() if value.dtype in (torch.bfloat16, torch.float16) else value.cpu()
            for name, value in features.items()}


def _merge(parts: list[tuple[Tensor, Any]], b: int) -> Any:
    """Scatter row-group summaries back into one summary of ``b`` rows."""
    first = parts[0][1]
    merged: dict[str, Any] = {}
    for f in fields(first):
        value = getattr(first, f.name)
        if not isinstance(value, Tensor):
            merged[f.name] = value
            continue
        full = torch.empty((b, *value.shape[1:]), dtype=value.dtype)
        for idx, summary in parts:
            full[idx] = getattr(summary, f.name)
        merged[f.name] = full
    return type(first)(**merged)
