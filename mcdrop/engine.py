"""The Monte Carlo dropout engine: run a model deterministically or as ``S`` stochastic passes.

Conventions, used throughout mcdrop:

* **Samples first.**  MC outputs are ``(S, B, ...)``; uncertainty functions reduce ``S`` to ``(B, ...)``.
* **Explicit randomness.**  Randomness enters only through ``seed`` (an int; unseeded calls draw a fresh
  one from the OS and report it).  The global torch RNG is never touched.  A row's masks are a function
  of (seed, row position in its request, sample index, dropout layer) alone (:mod:`mcdrop.rng`), never of
  the other rows in the batch or of the chunk size.
* **Reproducible.**  The same call on the same machine is bit-identical.  Other batch compositions, chunk
  sizes, thread counts or CPUs give the same masks but may round the float32 sums differently: outputs
  agree within 1e-5 of the row's largest output, probabilities and entropies within 1e-5 absolute (README,
  "Reproducibility"; ``tests/tolerances.py``).
* **State restored.**  The model's train/eval flags are restored after every call, also on error.

How an MC pass works: every module is put in eval mode (BatchNorm and friends use their running
statistics) and each dropout module's ``forward`` is replaced, for the call, by its keyed version.
The input enters with ``B`` rows; the first dropout layer expands its activation to ``S * B`` rows
(sample-major), so everything before it runs once per input and is shared by the ``S`` samples.
``share_prefix=False`` replicates the input instead, for models that combine activations from before
and after a dropout layer (a skip connection around dropout).  The ``S x B`` (sample, row) pairs run in
chunks whose widest activation holds at most ``element_budget`` numbers; rows are chunked before samples
so the shared prefix is recomputed as little as possible.
"""

from __future__ import annotations

import math
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from mcdrop import functional as F
from mcdrop import rng
from mcdrop import uncertainty as U
from mcdrop.layers import MCDropoutLayer
from mcdrop.models import Head

__all__ = ["DropoutConfigError", "MCEngine", "MCResult", "Mode", "dropout_layers"]

KeyedForward = Callable[[Tensor, Tensor], Tensor]


class Mode(StrEnum):
    """How to run the model."""

    DETERMINISTIC = "deterministic"
    """Dropout off: exactly the ``model.eval()`` forward."""
    MC = "mc"
    """Dropout on: ``n_samples`` stochastic forward passes."""


class DropoutConfigError(ValueError):
    """The model cannot be sampled in MC mode as it stands; the message says how to fix it."""


_FUNCTIONAL_DROPOUT = {
    nn.functional.dropout,
    nn.functional.dropout1d,
    nn.functional.dropout2d,
    nn.functional.dropout3d,
    nn.functional.alpha_dropout,
    nn.functional.feature_alpha_dropout,
    torch.dropout,
}


def _keyed_forward(module: nn.Module) -> KeyedForward | None:
    if isinstance(module, MCDropoutLayer):
        return module.mc_forward
    if isinstance(module, (nn.AlphaDropout, nn.FeatureAlphaDropout)):
        return None
    if isinstance(module, nn.Dropout):
        return lambda x, keys: F.mc_dropout(x, keys, module.p)
    if isinstance(module, (nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)):
        return lambda x, keys: F.mc_channel_dropout(x, keys, module.p)
    return None


def dropout_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The dropout modules MC mode switches on, in ``named_modules()`` order."""
    return [(name, m) for name, m in model.named_modules() if _keyed_forward(m) is not None]


@dataclass(frozen=True)
class MCResult:
    """The outcome of :meth:`MCEngine.run`.

    Attributes:
        mode: the mode that ran.
        summary: per-input predictions and uncertainty (``n_samples`` holds the N used per row).
        seed: the seed (or per-row seeds) the masks were drawn with (None in deterministic mode).
        samples: raw model outputs ``(S, B, ...)`` when asked for; with adaptive sampling, entries of
            rows that stopped early are NaN beyond their ``n_samples``.
    """

    mode: Mode
    summary: U.ClassificationSummary | U.RegressionSummary
    seed: int | Tensor | None
    samples: Tensor | None = None


@dataclass
class _Pass:
    key: int | Tensor
    rows: Tensor
    samples: Tensor
    calls: defaultdict[int, int] = field(default_factory=lambda: defaultdict(int))


@dataclass(frozen=True)
class _Probe:
    row_cost: int  # numbers per (sample, row) in the widest activation


class _FunctionalDropoutSpy(TorchFunctionMode):
    """Records functional dropout calls with p > 0 made while a probe pass runs."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, float]] = []

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func in _FUNCTIONAL_DROPOUT:
            p = kwargs.get("p", args[1] if len(args) > 1 else 0.5)
            if float(p) > 0:
                self.calls.append((getattr(func, "__name__", str(func)), float(p)))
        return func(*args, **kwargs)


_PROBE_SAMPLES = 32
"""MC passes of the probe: enough that small rates (p = 0.005 on a few units) still change some output."""


class MCEngine:
    """Runs ``model`` in deterministic or Monte Carlo mode and summarises the outputs.

    Args:
        model: any ``nn.Module`` whose dim 0 is the batch, with dropout modules (mcdrop's, or
            ``nn.Dropout``/``nn.Dropout1d/2d/3d``) for MC mode.
        task: how outputs are summarised, a :class:`~mcdrop.models.Head`; inferred from a
            :class:`~mcdrop.models.DropoutMLP`'s head, otherwise required for :meth:`run`.
        tau: noise precision of a homoscedastic regression model (default: the model's ``tau`` buffer).
        element_budget: the most numbers the widest activation of one chunk may hold.
        share_prefix: compute the layers before the first dropout once per input (see module docs).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        task: Head | str | None = None,
        tau: float | None = None,
        element_budget: int = 1 << 24,
        share_prefix: bool = True,
    ) -> None:
        if element_budget < 1:
            raise ValueError(f"element_budget has to be a positive number of elements, but got {element_budget}")
        self.model = model
        head = getattr(model, "head", None) if task is None else task
        self.task = Head(head) if head is not None else None
        model_tau = getattr(model, "tau", None)
        self.tau = tau if tau is not None else (float(model_tau) if isinstance(model_tau, Tensor) else None)
        self.element_budget = int(element_budget)
        self.share_prefix = share_prefix
        self._layers = [(name, m, _keyed_forward(m)) for name, m in dropout_layers(model)]
        self._pass: _Pass | None = None
        self._lock = threading.RLock()
        self._probes: dict[tuple[Any, ...], _Probe] = {}
        self._spy_widths: list[int] | None = None

    # ----------------------------------------------------------------- raw outputs

    def deterministic(self, x: Tensor) -> Tensor:
        """The ``model.eval()`` forward, without gradients. Shape: ``(B, *)`` -> model output ``(B, ...)``."""
        with self._lock, torch.inference_mode(), self._eval_state():
            return self.model(x)

    def sample(
        self, x: Tensor, n_samples: int, *, seed: int | None = None, rows: Tensor | None = None, first_sample: int = 0
    ) -> Tensor:
        """``n_samples`` stochastic forward passes of every row of ``x``.

        Args:
            x: inputs. Shape: ``(B, *)``.
            n_samples: number of passes ``S`` (>= 1).
            seed: the masks' seed, or one seed per row (int64, shape ``(B,)``: rows of requests with different
                seeds can share one call); None draws a fresh one (then results are random).
            rows: each input's row position for the masks, default ``0..B-1``. Shape: ``(B,)``.
            first_sample: index of the first sample (samples ``first_sample .. first_sample + S - 1``).

        Returns:
            model outputs. Shape: ``(S, B, ...)``.
        """
        if not isinstance(n_samples, int) or isinstance(n_samples, bool) or n_samples < 1:
            raise ValueError(f"n_samples has to be a positive int, but got {n_samples!r}")
        b = x.shape[0]
        rows = torch.arange(b, dtype=torch.int64, device=x.device) if rows is None else rows.to(x.device, torch.int64)
        if rows.shape != (b,):
            raise ValueError(f"rows needs one position per input row, shape ({b},), but got {tuple(rows.shape)}")
        if b and (int(rows.min()) < 0 or int(rows.max()) >= rng.MAX_ROWS):
            raise ValueError(f"row positions have to be in [0, 2**31), but got {int(rows.min())}..{int(rows.max())}")
        if first_sample < 0 or first_sample + n_samples > rng.MAX_SAMPLES:
            raise ValueError(f"sample indices have to be in [0, 2**32), but got {first_sample}..{first_sample + n_samples - 1}")
        key = _call_key(seed, b, x.device)
        with self._lock, torch.inference_mode(), self._mc_state():
            probe = self._probe(x)
            out: Tensor | None = None
            for r0, r1, s0, s1 in self._chunks(b, n_samples, probe.row_cost):
                samples = torch.arange(first_sample + s0, first_sample + s1, dtype=torch.int64, device=x.device)
                chunk_key = key[r0:r1] if isinstance(key, Tensor) else key
                y = self._mc_pass(x[r0:r1], _Pass(chunk_key, rows[r0:r1], samples))
                if out is None:
                    out = torch.empty((n_samples, b, *y.shape[2:]), dtype=y.dtype, device=y.device)
                out[s0:s1, r0:r1] = y
            assert out is not None
            return out

    # ----------------------------------------------------------------- summaries

    def run(
        self,
        x: Tensor,
        *,
        mode: Mode | str = Mode.MC,
        n_samples: int = 50,
        seed: int | None = None,
        rows: Tensor | None = None,
        tolerance: float | None = None,
        max_samples: int | None = None,
        level: float = 0.95,
        return_samples: bool = False,
    ) -> MCResult:
        """Predictions with uncertainty: the one entry point the predictor, service and CLI use.

        Args:
            x: inputs. Shape: ``(B, *)``.
            mode: ``deterministic`` or ``mc``.
            n_samples: MC passes; with ``tolerance`` the number of the first round.
            seed: see :meth:`sample`; the seed used is returned.
            rows: row positions for the masks (see :meth:`sample`).
            tolerance: adaptive sampling: sample in rounds (doubling N) until each row's Monte Carlo
                standard error of its main estimate (largest over classes of the mean probability's, or
                the regression mean's) is at most ``tolerance``, or N reaches ``max_samples``.
            max_samples: cap of adaptive sampling (default ``max(n_samples, 1000)``).
            level: central interval level for regression.
            return_samples: also return the raw samples.
        """
        mode = Mode(mode)
        task = self._require_task()
        if mode is Mode.DETERMINISTIC:
            out = self.deterministic(x).unsqueeze(0)
            return MCResult(mode, self._summarize(out, sampled=False, level=level), None, out if return_samples else None)
        seed = rng.new_seed() if seed is None else seed
        if tolerance is None:
            samples = self.sample(x, n_samples, seed=seed, rows=rows)
            return MCResult(mode, self._summarize(samples, sampled=True, level=level), seed, samples if return_samples else None)
        if not tolerance > 0:
            raise ValueError(f"tolerance has to be a positive standard error, but got {tolerance}")
        cap = max(n_samples, 1000) if max_samples is None else max_samples
        if cap < n_samples:
            raise ValueError(f"max_samples ({cap}) has to be at least n_samples ({n_samples})")
        samples, used = self._sample_adaptive(x, n_samples, cap, tolerance, seed, rows, task)
        parts = []
        for n in torch.unique(used).tolist():
            idx = torch.nonzero(used == n).squeeze(1)
            parts.append((idx, self._summarize(samples[:n, idx], sampled=True, level=level)))
        return MCResult(mode, _merge(parts, x.shape[0]), seed, samples if return_samples else None)

    # ----------------------------------------------------------------- internals

    def _require_task(self) -> Head:
        if self.task is None:
            raise ValueError(
                "the engine needs task='classification', 'homoscedastic' or 'heteroscedastic' to "
                "summarise this model's outputs: pass MCEngine(model, task=...)"
            )
        if self.task is Head.HOMOSCEDASTIC and not (self.tau is not None and self.tau > 0):
            raise ValueError(f"a homoscedastic model needs its noise precision: pass MCEngine(model, tau=...), got {self.tau}")
        return self.task

    def _summarize(self, out: Tensor, *, sampled: bool, level: float) -> U.ClassificationSummary | U.RegressionSummary:
        if self.task is Head.CLASSIFICATION:
            return U.summarize_classification(out, sampled=sampled)
        if self.task is Head.HOMOSCEDASTIC:
            return U.summarize_regression(out, 1.0 / self.tau, level=level, sampled=sampled)  # type: ignore[operator]
        return U.summarize_regression(out[..., 0], out[..., 1].exp(), level=level, sampled=sampled)

    def _stderr(self, out: Tensor, task: Head) -> Tensor:
        if task is Head.CLASSIFICATION:
            return U.classification_stderr(torch.log_softmax(out, -1))
        return U.regression_stderr(out if task is Head.HOMOSCEDASTIC else out[..., 0])

    def _sample_adaptive(
        self, x: Tensor, first: int, cap: int, tolerance: float, seed: int, rows: Tensor | None, task: Head
    ) -> tuple[Tensor, Tensor]:
        b = x.shape[0]
        rows = torch.arange(b, dtype=torch.int64, device=x.device) if rows is None else rows
        first_out = self.sample(x, first, seed=seed, rows=rows)
        out = torch.full((cap, *first_out.shape[1:]), math.nan, dtype=first_out.dtype, device=first_out.device)
        out[:first] = first_out
        used = torch.full((b,), first, dtype=torch.int64)
        active = torch.arange(b)
        n = first
        while active.numel() and n < cap:
            done = self._stderr(out[:n, active], task) <= tolerance
            active = active[~done.cpu()]
            if not active.numel():
                break
            m = min(2 * n, cap)
            row_seed = seed[active] if isinstance(seed, Tensor) else seed
            out[n:m, active] = self.sample(x[active], m - n, seed=row_seed, rows=rows[active], first_sample=n)
            used[active] = m
            n = m
        return out, used

    @contextmanager
    def _eval_state(self) -> Iterator[None]:
        flags = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        try:
            yield
        finally:
            for m, flag in flags:
                m.training = flag

    @contextmanager
    def _mc_state(self) -> Iterator[None]:
        if not self._layers:
            raise DropoutConfigError(
                f"{type(self.model).__name__} has no dropout module, so MC mode has nothing to sample. Add "
                "mcdrop.Dropout or torch.nn.Dropout layers (functional dropout calls cannot be switched on)."
            )
        if all(float(m.p) == 0.0 for _, m, _ in self._layers):  # type: ignore[arg-type]
            names = ", ".join(name or "<root>" for name, _, _ in self._layers)
            raise DropoutConfigError(
                f"every dropout module of {type(self.model).__name__} has p = 0 ({names}), so "
                "all MC samples would be identical; train the model with dropout p > 0"
            )
        with self._eval_state():
            for index, (_, module, keyed) in enumerate(self._layers):
                module.forward = self._make_forward(index, module, keyed)  # type: ignore[method-assign,arg-type]
            try:
                yield
            finally:
                for _, module, _ in self._layers:
                    module.__dict__.pop("forward", None)
                self._pass = None

    def _make_forward(self, index: int, module: nn.Module, keyed: KeyedForward) -> Callable[..., Tensor]:
        is_dropconnect = hasattr(module, "in_features") and hasattr(module, "out_features")

        def forward(x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
            state = self._pass
            assert state is not None, "mcdrop's MC forward ran outside an MC pass"
            call = state.calls[index]
            state.calls[index] = call + 1
            keys = rng.stream_keys(state.key, (index, call), state.rows, state.samples)
            y = keyed(x, keys)
            if self._spy_widths is not None and is_dropconnect:
                self._spy_widths.append(module.in_features * module.out_features)
            return y

        return forward

    def _mc_pass(self, x: Tensor, state: _Pass) -> Tensor:
        s, b = state.samples.numel(), state.rows.numel()
        self._pass = state
        inp = x if self.share_prefix else x.repeat(s, *([1] * (x.dim() - 1)))
        try:
            y = self.model(inp)
        except RuntimeError as err:
            if self.share_prefix and ("size" in str(err) or "shape" in str(err)):
                raise DropoutConfigError(
                    f"the MC pass failed with: {err}. If the model combines activations from before and after a "
                    "dropout layer (e.g. a skip connection around dropout), use MCEngine(model, share_prefix=False)"
                ) from err
            raise
        if not state.calls:
            raise DropoutConfigError(
                f"none of the {len(self._layers)} dropout modules of {type(self.model).__name__} "
                "ran during forward, so MC samples would be identical; apply them in forward()"
            )
        if y.shape[0] != s * b:
            raise DropoutConfigError(
                f"the model returned {y.shape[0]} rows for an MC pass of {b} rows x {s} samples "
                f"(expected {s * b}); mcdrop needs batch-first outputs, one row per input row"
            )
        return y.reshape(s, b, *y.shape[1:])

    def _probe(self, x: Tensor) -> _Probe:
        """Once per input shape: check that MC passes vary, and measure the widest activation per (sample, row)."""
        signature = (tuple(x.shape[1:]), x.dtype, x.device)
        probe = self._probes.get(signature)
        if probe is not None:
            return probe
        probe_x = x[:1]
        if x.dtype.is_floating_point:
            gen = torch.Generator(device=x.device).manual_seed(0)
            noise = torch.randn(probe_x.shape, generator=gen, dtype=x.dtype, device=x.device)
            probe_x = torch.cat([probe_x, noise])
        n_rows = probe_x.shape[0]
        widths: list[int] = []

        def record(module: nn.Module, args: Any, output: Any) -> None:
            if isinstance(output, Tensor) and output.dim() and output.shape[0] == _PROBE_SAMPLES * n_rows:
                widths.append(output[0].numel())

        handle = nn.modules.module.register_module_forward_hook(record)
        self._spy_widths = widths
        spy = _FunctionalDropoutSpy()
        failure: DropoutConfigError | None = None
        try:
            with spy:
                rows = torch.arange(n_rows, dtype=torch.int64, device=x.device)
                samples = torch.arange(_PROBE_SAMPLES, device=x.device)
                y = self._mc_pass(probe_x, _Pass(rng.seed_key(0), rows, samples))
        except DropoutConfigError as err:
            failure = err
        finally:
            handle.remove()
            self._spy_widths = None
        if spy.calls:
            name, p = spy.calls[0]
            raise DropoutConfigError(
                f"{type(self.model).__name__}.forward calls {name}(p={p}), which MC mode cannot switch on "
                "(only dropout modules are sampled). Replace the functional call with an nn.Dropout or mcdrop.Dropout "
                "module"
            ) from failure
        if failure is not None:
            raise failure
        if torch.equal(y, y[:1].expand_as(y)):
            raise DropoutConfigError(
                f"{_PROBE_SAMPLES} MC passes of {type(self.model).__name__} gave identical outputs: its dropout modules have no "
                "effect on the output (are they applied to the output path in forward()?)"
            )
        probe = _Probe(row_cost=max([*widths, math.prod(y.shape[2:]), 1]))
        self._probes[signature] = probe
        return probe

    def _chunks(self, b: int, s: int, row_cost: int) -> Iterator[tuple[int, int, int, int]]:
        """(row start, row end, sample start, sample end) covering ``b x s`` pairs within the budget."""
        pairs = max(1, self.element_budget // row_cost)
        if s <= pairs:
            rows_per = max(1, pairs // s)
            for r0 in range(0, b, rows_per):
                yield r0, min(b, r0 + rows_per), 0, s
        else:
            for r0 in range(b):
                for s0 in range(0, s, pairs):
                    yield r0, r0 + 1, s0, min(s, s0 + pairs)


def _call_key(seed: int | Tensor | None, b: int, device: torch.device) -> int | Tensor:
    if seed is None:
        return rng.seed_key(rng.new_seed())
    if isinstance(seed, Tensor):
        if seed.shape != (b,):
            raise ValueError(f"per-row seeds need shape ({b},), but got {tuple(seed.shape)}")
        return rng.seed_keys(seed.to(device))
    return rng.seed_key(seed)


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
