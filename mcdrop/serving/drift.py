"""Watching the served inputs drift away from the data a model was calibrated on.

Per model, every served input's ``ood_score`` ``s`` feeds three running statistics:

* **share above the OOD threshold** over a sliding window of the last ``window`` inputs.  The threshold passes
  ``ood_tpr`` (95%) of held-out in-distribution inputs, so without drift the share is about 5% (binomial: over
  500 inputs, 0.05 +- 0.0097);
* **conformal p-values**: ``p_n = (#{r > s_n} + U_n (#{r = s_n} + 1)) / (m + 1)`` with ``r`` the ``m`` reference
  scores (the calibration inputs' scores and every earlier input of the stream) and ``U_n`` uniform.  If the
  calibration inputs and the stream are exchangeable, the ``p_n`` are independent and uniform on [0, 1] (Vovk et
  al. 2005, Thm. 8.1 / smoothed p-values).  Drift towards unusual inputs makes them small.  Their uniformity over
  the window is reported as the Kolmogorov-Smirnov distance ``D = sup_t |F_window(t) - t|`` (without drift,
  ``D`` exceeds ``1.36 / sqrt(window)`` with probability about 5% at any one time);
* a **conformal test martingale** on the p-values: Vovk's *simple jumper* (Vovk et al. 2021, "Retrain or not
  retrain: conformal test martingales for change-point detection") over four betting functions, the linear
  ``f_e(p) = 1 + e (p - 1/2)``, ``e`` in {-1, 0, 1}, and a plug-in bet (Fedorova et al. 2012, "Plug-in
  martingales for testing exchangeability on-line"): the density of the last ``memory`` p-values, a histogram
  of ``bins`` equal bins with one pseudo-count each, ``f(p) = bins (c_b + 1) / (m + bins)`` for ``p`` in bin
  ``b``.  The capital is redistributed evenly over the bets at rate ``jump`` each step.  Each bet is a density on
  [0, 1] fixed before its p-value is seen, so the capital ``S_n`` is a nonnegative martingale with ``S_0 = 1``
  under exchangeability and Ville's inequality gives ``P(sup_n S_n >= 1 / alpha) <= alpha``: the alarm
  (``S_n >= 1 / alpha``, latched) is raised falsely with probability at most ``alpha`` over the whole stream,
  however long it is watched.  The linear bets catch p-values that lean one way (inputs more or less typical
  than the calibration's); the plug-in bet catches other shapes that a histogram of the recent p-values shows,
  e.g. inputs that score *closer to the typical* than calibration inputs do (p-values piled in the middle),
  which the linear bets cannot.

The reference grows with the stream (exactness needs every earlier input); after ``segment`` inputs the monitor
starts a new segment (reference back to the calibration scores, ``S = 1``, alarm cleared), so memory stays
bounded and the false-alarm bound holds per segment.  This module is pure NumPy; :class:`DriftMetrics` puts the
statistics on Prometheus gauges.
"""

from __future__ import annotations

import functools
import math
import threading
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

__all__ = ["DriftMetrics", "DriftMonitor", "DriftState", "Jumper", "ServedModels", "conformal_p_values",
           "drift_metrics", "ks_uniform", "monitors_for"]

DEFAULT_WINDOW = 500
DEFAULT_ALPHA = 0.01
DEFAULT_JUMP = 0.01
DEFAULT_SEGMENT = 100_000
DEFAULT_BINS = 10
DEFAULT_MEMORY = 200


def conformal_p_values(reference: np.ndarray, scores: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Online smoothed conformal p-values of ``scores`` in order: each against ``reference`` (sorted ascending)
    and the scores before it.  Shapes: reference ``(m,)``, scores ``(B,)``, u ``(B,)`` uniforms -> ``(B,)``."""
    s = np.asarray(scores, dtype=np.float64)
    right = np.searchsorted(reference, s, side="right")
    greater = len(reference) - right
    equal = right - np.searchsorted(reference, s, side="left")
    earlier = np.tril(np.ones((len(s), len(s)), dtype=bool), -1)  # earlier[i, j]: j comes before i
    greater = greater + (earlier & (s[None, :] > s[:, None])).sum(1)
    equal = equal + (earlier & (s[None, :] == s[:, None])).sum(1)
    m = len(reference) + np.arange(len(s))
    return (greater + u * (equal + 1)) / (m + 1)


def ks_uniform(p: np.ndarray) -> float:
    """Kolmogorov-Smirnov distance of the empirical distribution of ``p`` ``(n,)`` from uniform on [0, 1]."""
    if len(p) == 0:
        return 0.0
    x = np.sort(p)
    i = np.arange(1, len(x) + 1)
    return float(max((i / len(x) - x).max(), (x - (i - 1) / len(x)).max()))


class Jumper:
    """The simple jumper test martingale over p-values, with linear and plug-in bets (see the module docs).

    Args:
        jump: the share of the capital redistributed evenly over the bets before each step, in (0, 1].
        bins: bins of the plug-in bet's histogram; 0 leaves the plug-in bet out (Vovk's three linear bets).
        memory: the plug-in bet's histogram counts the last ``memory`` p-values.
    """

    LINEAR = (-1.0, 0.0, 1.0)

    def __init__(self, jump: float = DEFAULT_JUMP, bins: int = DEFAULT_BINS, memory: int = DEFAULT_MEMORY) -> None:
        if not 0.0 < jump <= 1.0:
            raise ValueError(f"jump has to be in (0, 1], but got {jump}")
        if bins < 0 or bins == 1 or memory < 1:
            raise ValueError(f"bins has to be 0 or >= 2 and memory >= 1, but got bins={bins}, memory={memory}")
        self.jump, self.bins, self.memory = jump, bins, memory
        self.reset()

    def reset(self) -> None:
        n = len(self.LINEAR) + (self.bins > 0)
        self._capital = [1.0 / n] * n
        self._log_scale = 0.0  # the capital is kept as exp(log_scale) * capital, so it never overflows
        self._counts = [0] * self.bins
        self._recent: deque[int] = deque()

    @property
    def log10_value(self) -> float:
        """``log10 S_n``."""
        return (self._log_scale + math.log(sum(self._capital))) / math.log(10.0)

    @property
    def value(self) -> float:
        """The martingale ``S_n`` (1 before any p-value; ``inf`` beyond float range)."""
        return 10.0 ** self.log10_value if self.log10_value < 300 else math.inf

    def update(self, p: Iterable[float]) -> np.ndarray:
        """Bet on each p-value in turn; returns ``log10 S`` after each. Shape: ``(B,)`` -> ``(B,)``."""
        out = []
        c, jump, scale, bins, counts, recent = self._capital, self.jump, self._log_scale, self.bins, self._counts, self._recent
        for value in p:
            v = float(value)
            share = jump * sum(c) / len(c)
            bets = [1.0 + e * (v - 0.5) for e in self.LINEAR]
            if bins:
                b = min(int(v * bins), bins - 1)
                bets.append(bins * (counts[b] + 1) / (len(recent) + bins))  # the density before p is seen
                counts[b] += 1
                recent.append(b)
                if len(recent) > self.memory:
                    counts[recent.popleft()] -= 1
            c = [((1.0 - jump) * ci + share) * f for ci, f in zip(c, bets, strict=True)]
            total = sum(c)
            if total > 1e100 or total < 1e-100:
                scale += math.log(total)
                c = [ci / total for ci in c]
                total = 1.0
            out.append((scale + math.log(total)) / math.log(10.0))
        self._capital, self._log_scale = c, scale
        return np.asarray(out, dtype=np.float64)


@dataclass(frozen=True)
class DriftState:
    """One model's drift statistics after the last input (see the module docs)."""

    inputs: int
    """Inputs seen in the current segment."""
    window: int
    """Inputs in the sliding window (at most the window size)."""
    ood_share: float
    """Share of the window above the OOD threshold (about ``1 - ood_tpr`` without drift)."""
    ks: float
    """KS distance of the window's p-values from uniform."""
    martingale: float
    """The conformal test martingale ``S_n``."""
    alarm: bool
    """``S_n`` has reached ``1 / alpha`` in this segment (false alarm probability ``<= alpha``)."""


class DriftMonitor:
    """The drift statistics of one model's stream of OOD scores.

    Args:
        reference: OOD scores of the calibration inputs (any order), ``(m,)``.
        threshold: the model's OOD threshold.
        window: inputs in the sliding window.
        alpha: false-alarm probability of the martingale's alarm (threshold ``1 / alpha``).
        jump: the martingale's jumping rate (:class:`Jumper`).
        bins: bins of the martingale's plug-in bet (0: the linear bets alone).
        segment: inputs after which the reference and the martingale start over.
        seed: seed of the p-values' tie-breaking uniforms.
    """

    def __init__(self, reference: np.ndarray, threshold: float, *, window: int = DEFAULT_WINDOW,
                 alpha: float = DEFAULT_ALPHA, jump: float = DEFAULT_JUMP, bins: int = DEFAULT_BINS,
                 segment: int = DEFAULT_SEGMENT, seed: int = 0) -> None:
        reference = np.sort(np.asarray(reference, dtype=np.float64).ravel())
        if len(reference) == 0 or not np.isfinite(reference).all():
            raise ValueError(f"reference has to hold finite calibration scores, but got {len(reference)} values "
                             "with non-finite ones" if len(reference) else "reference has to hold calibration scores, "
                             "but got none")
        if window < 1 or segment < window:
            raise ValueError(f"window has to be >= 1 and segment >= window, but got window={window}, segment={segment}")
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha has to be in (0, 1), but got {alpha}")
        self.calibration, self.threshold, self.alpha, self.segment = reference, float(threshold), alpha, segment
        self._rng = np.random.default_rng(seed)
        self._flags: deque[bool] = deque(maxlen=window)
        self._p: deque[float] = deque(maxlen=window)
        self._martingale = Jumper(jump, bins)
        self._lock = threading.Lock()
        self._restart()

    def _restart(self) -> None:
        self._reference = self.calibration
        self._inputs, self._alarm = 0, False
        self._martingale.reset()

    def update(self, scores: np.ndarray) -> DriftState:
        """Take the OOD scores of served inputs, in the order served (non-finite ones are skipped)."""
        s = np.asarray(scores, dtype=np.float64).ravel()
        s = s[np.isfinite(s)]
        with self._lock:
            while len(s):
                room = self.segment - self._inputs
                if room == 0:
                    self._restart()
                    continue
                part, s = s[:room], s[room:]
                self._take(part)
            return self._state()

    def _take(self, s: np.ndarray) -> None:
        for start in range(0, len(s), 1024):  # the p-values compare each input with the earlier ones of its chunk
            part = s[start:start + 1024]
            p = conformal_p_values(self._reference, part, self._rng.random(len(part)))
            ordered = np.sort(part)
            self._reference = np.insert(self._reference, np.searchsorted(self._reference, ordered), ordered)
            self._inputs += len(part)
            path = self._martingale.update(p)
            self._alarm = self._alarm or bool((path >= -math.log10(self.alpha)).any())
            self._flags.extend((part > self.threshold).tolist())
            self._p.extend(p.tolist())

    def state(self) -> DriftState:
        with self._lock:
            return self._state()

    def _state(self) -> DriftState:
        n = len(self._flags)
        return DriftState(inputs=self._inputs, window=n, ood_share=sum(self._flags) / n if n else 0.0,
                          ks=ks_uniform(np.asarray(self._p)), martingale=self._martingale.value, alarm=self._alarm)


class DriftMetrics:
    """The drift statistics of the served models on Prometheus gauges (``/metrics``), one label per model:
    ``mcdrop_drift_ood_share``, ``mcdrop_drift_pvalue_ks``, ``mcdrop_drift_martingale``, ``mcdrop_drift_alarm``,
    ``mcdrop_drift_inputs``.  Gauges are process-wide: use :func:`drift_metrics`, then :meth:`watch` the served
    models and :meth:`observe` each answer's OOD scores."""

    def __init__(self) -> None:
        import prometheus_client as m

        def gauge(name: str, doc: str) -> m.Gauge:
            return m.Gauge(name=name, documentation=doc, labelnames=["model"], multiprocess_mode="mostrecent")

        self.share = gauge("mcdrop_drift_ood_share", "Share of the last inputs above the model's OOD threshold "
                           "(about 0.05 without drift)")
        self.ks = gauge("mcdrop_drift_pvalue_ks", "Kolmogorov-Smirnov distance from uniform of the last inputs' "
                        "conformal p-values (OOD score against calibration)")
        self.martingale = gauge("mcdrop_drift_martingale", "Conformal test martingale of the inputs' p-values "
                                "(alarm at 1/alpha = 100: false alarm probability <= 1%)")
        self.alarm = gauge("mcdrop_drift_alarm", "1 once the martingale reached 1/alpha in this segment")
        self.inputs = gauge("mcdrop_drift_inputs", "Inputs watched in the current segment")
        self.monitors: dict[str, DriftMonitor] = {}

    def watch(self, monitors: dict[str, DriftMonitor]) -> None:
        """Watch these models (by name), replacing any watched before."""
        self.monitors = dict(monitors)

    def observe(self, model: str, ood_scores: np.ndarray | None) -> None:
        monitor = self.monitors.get(model)
        if monitor is None or ood_scores is None or len(ood_scores) == 0:
            return
        state = monitor.update(ood_scores)
        self.share.labels(model=model).set(state.ood_share)
        self.ks.labels(model=model).set(state.ks)
        self.martingale.labels(model=model).set(min(state.martingale, 1e300))
        self.alarm.labels(model=model).set(float(state.alarm))
        self.inputs.labels(model=model).set(state.inputs)


class _Reference(Protocol):
    @property
    def ood_reference(self) -> np.ndarray | None: ...

    @property
    def ood_threshold(self) -> float | None: ...


class _Served(Protocol):
    @property
    def calibration(self) -> _Reference | None: ...


class _Named(Protocol):
    @property
    def name(self) -> str: ...


class ServedModels(Protocol):
    """What :func:`monitors_for` needs of a predictor (:class:`~mcdrop.serving.predictor.Predictor` is one): the
    cards of the served models, and each model's calibration (its calibration inputs' OOD scores and threshold)."""

    @property
    def cards(self) -> Sequence[_Named]: ...

    def served(self, name: str) -> _Served: ...


def monitors_for(predictor: ServedModels, **options: Any) -> dict[str, DriftMonitor]:
    """A monitor for every served model whose calibration has an OOD threshold and its calibration inputs' OOD
    scores (``Calibration.ood_reference``); ``options`` go to :class:`DriftMonitor`."""
    out = {}
    for card in predictor.cards:
        calibration = predictor.served(card.name).calibration
        if calibration is None:
            continue
        reference, threshold = calibration.ood_reference, calibration.ood_threshold
        if reference is not None and threshold is not None:
            out[card.name] = DriftMonitor(reference, threshold, **options)
    return out


@functools.cache
def drift_metrics() -> DriftMetrics:
    """The process's drift gauges (created on first use; Prometheus registries are process-wide)."""
    return DriftMetrics()
