"""The Monte Carlo dropout engine: run a model deterministically, or as ``S`` stochastic passes per input.

Conventions, used throughout mcdrop:

* **Samples first.**  MC outputs are ``(S, B, ...)``; uncertainty functions reduce ``S`` to ``(B, ...)``.
* **Explicit randomness.**  Randomness enters only through ``seed`` (an int, or one per row); the global
  torch RNG is never touched.  A row's masks are a function of (seed, row position in its request, sample
  index, dropout layer) alone (:mod:`mcdrop.sampling.rng`), never of the other rows in the batch or of the chunk
  size.  In the **consistent** mode (``sample(..., consistent=True)``) every row takes row position 0, so a
  pass's masks depend on (seed, sample index, layer) alone: the ``S`` passes are ``S`` networks, each applied
  to every row of the pool (the joint samples BatchBALD needs); each row's own samples are distributed as in
  the default mode.
* **Reproducible.**  The same call on the same machine is bit-identical.  Other batch compositions, chunk
  sizes, thread counts or CPUs give the same masks but may round the float32 sums differently: outputs
  agree within 1e-5 of the row's largest output, probabilities and entropies within 1e-5 absolute (README,
  "Reproducibility"; ``tests/tolerances.py``).
* **The model is not touched.**  The engine samples a copy of the module tree that shares the model's
  parameters and buffers (so ``load_state_dict``, ``.to()`` and in-place edits show through) but has its own
  train/eval flags, all eval: BatchNorm and friends use their running statistics, and the caller's model
  keeps its mode.  Calls on one engine from several threads need no lock.

How an MC pass works: in the engine's copy, each dropout module (any class in the registry,
:func:`register_dropout`) runs its keyed function with the keys of the current pass, which the engine
passes down through a context variable (``forward`` signatures are the model's own, so keys cannot travel
as arguments).  The input enters with ``B`` rows; the first dropout layer expands its activation to
``S * B`` rows (sample-major), so everything before it runs once per input and is shared by the ``S``
samples.  A model that combines activations from before and after a dropout layer (a skip connection
around dropout) cannot share that prefix: the first call's probe detects it and replicates the input
instead.  The ``S x B`` (sample, row) pairs run in chunks whose widest activation holds at most
``element_budget`` numbers.

A model class may register a fast path to the same samples (:func:`register_fast_path`): the engine knows none
by name.  :mod:`mcdrop.nets.mlp_plan` registers one for :class:`~mcdrop.nets.models.DropoutMLP` on the CPU, the
fused kernel that skips the units dropout and ReLU zero (``fast=False``, or ``MCDROP_KERNELS=0``, keeps the
generic path); :mod:`mcdrop.nets.cnn_plan` one for :class:`~mcdrop.nets.models.DropoutCNN`, which mixes the
convolution after the first channel dropout per pass from per-channel maps computed once per image
(``fast=False`` keeps the generic path).
"""

from __future__ import annotations

import copy
import logging
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, cast

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from mcdrop.errors import MCDropError, ModelError
from mcdrop.sampling import functional as F
from mcdrop.sampling import rng, runtime
from mcdrop.sampling.layers import MCDropoutLayer

__all__ = [
    "DropoutConfigError",
    "FastPath",
    "KeyedDropout",
    "MCEngine",
    "SamplingCancelled",
    "dropout_layers",
    "keyed_function",
    "register_dropout",
    "register_fast_path",
]

log = logging.getLogger(__name__)

KeyedDropout = Callable[[nn.Module, Tensor, Tensor], Tensor]
"""``(module, x, keys) -> y``: a dropout module's keyed MC pass (x ``(B, *)`` or ``(S*B, *)``, keys ``(S, B)``,
y ``(S*B, *)``)."""


class DropoutConfigError(ModelError, ValueError):
    """The model cannot be sampled in MC mode as it stands; the message says how to fix it."""


class SamplingCancelled(MCDropError, RuntimeError):
    """The caller's ``cancelled`` check returned True between two chunks."""


# ---------------------------------------------------------------------------------------------- registry

_REGISTRY: dict[type[nn.Module], KeyedDropout] = {}


_M = TypeVar("_M", bound=nn.Module)


def register_dropout(cls: type[_M], fn: Callable[[_M, Tensor, Tensor], Tensor]) -> None:
    """Let MC mode sample modules of ``cls`` (and its subclasses) with ``fn(module, x, keys)``; ``fn`` is typed
    for ``cls``, so it may read the module's own attributes (``module.p``)."""
    _REGISTRY[cls] = cast(KeyedDropout, fn)  # keyed_function hands fn only modules of cls


def keyed_function(module: nn.Module) -> KeyedDropout | None:
    """The keyed MC pass registered for ``module``'s class (nearest in its MRO), or None."""
    for cls in type(module).__mro__:
        fn = _REGISTRY.get(cls)
        if fn is not None:
            return fn
    return None


register_dropout(MCDropoutLayer, lambda m, x, keys: m.mc_forward(x, keys))
register_dropout(nn.Dropout, lambda m, x, keys: F.mc_dropout(x, keys, m.p))
for _channel in (nn.Dropout1d, nn.Dropout2d, nn.Dropout3d):
    register_dropout(_channel, lambda m, x, keys: F.mc_channel_dropout(x, keys, m.p))
register_dropout(nn.AlphaDropout, lambda m, x, keys: F.mc_alpha_dropout(x, keys, m.p))
register_dropout(nn.FeatureAlphaDropout, lambda m, x, keys: F.mc_alpha_dropout(x, keys, m.p, feature=True))


class FastPath(Protocol):
    """A model-specific way to the engine's MC samples (same masks, same outputs within float32 rounding)."""

    def sample(self, x: Tensor, key: int | Tensor, rows: Tensor, samples: Tensor) -> Tensor | None:
        """Outputs ``(len(samples) * B, ...)`` sample-major for rows ``x`` ``(B, ...)``, or None to decline."""
        ...


FastPathBuilder = Callable[[nn.Module], FastPath | None]
"""``model -> plan``: None when this model (its form, dtype or device, or the machine) does not allow one."""

_FAST_PATHS: dict[type[nn.Module], FastPathBuilder] = {}


def register_fast_path(cls: type[nn.Module], build: FastPathBuilder) -> None:
    """Let the engine sample models of exactly class ``cls`` by the plan ``build(model)`` returns (built on the
    first MC call, on the CPU and float32 only; subclasses, which may change ``forward``, take the generic path)."""
    _FAST_PATHS[cls] = build


def dropout_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The dropout modules MC mode switches on, in ``named_modules()`` order."""
    return [(name, m) for name, m in model.named_modules() if keyed_function(m) is not None]


# ---------------------------------------------------------------------------------------------- passes


@dataclass
class _Pass:
    """The keys of one chunk: the call's key (or per-row keys), the chunk's row positions and sample indices."""

    key: int | Tensor
    rows: Tensor
    samples: Tensor
    calls: dict[int, int] = field(default_factory=dict)


_PASS: ContextVar[_Pass | None] = ContextVar("mcdrop_pass", default=None)
_CAPTURE: ContextVar[dict[str, Tensor] | None] = ContextVar("mcdrop_capture", default=None)


def _capture_hook(name: str) -> Callable[[nn.Module, Any, Any], None]:
    def hook(module: nn.Module, args: Any, output: Any) -> None:
        store = _CAPTURE.get()
        if store is not None and isinstance(output, Tensor):
            store[name] = output

    return hook


def _keyed_forward(index: int, original: nn.Module, replica: nn.Module, fn: KeyedDropout) -> Callable[..., Tensor]:
    """The replica's forward: the keyed pass inside an MC pass, the eval forward otherwise."""
    eval_forward = type(replica).forward

    def forward(x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        state = _PASS.get()
        if state is None:
            return eval_forward(replica, x, *args, **kwargs)
        call = state.calls.get(index, 0)
        state.calls[index] = call + 1
        return fn(original, x, rng.stream_keys(state.key, (index, call), state.rows, state.samples))

    return forward


_REPLICA_TYPES: dict[type[nn.Module], type[nn.Module]] = {}


def _replica_getattr(self: nn.Module, name: str) -> Any:
    """Children from the replica's own tree; everything else (parameters, buffers, plain attributes) live from
    the original module, so later changes to the model show through."""
    own = self.__dict__
    modules = own.get("_modules")
    if modules is not None and name in modules:
        return modules[name]
    original = own.get("_mcdrop_original")
    if original is None:
        raise AttributeError(f"{type(self).__name__!r} replica has no attribute {name!r}")
    return getattr(original, name)


def _replica_type(cls: type[nn.Module]) -> type[nn.Module]:
    replica = _REPLICA_TYPES.get(cls)
    if replica is None:
        replica = type(cls.__name__, (cls,), {"__getattr__": _replica_getattr, "__module__": cls.__module__,
                                              "__qualname__": cls.__qualname__})
        _REPLICA_TYPES[cls] = replica
    return replica


def _replica(model: nn.Module) -> tuple[nn.Module, list[tuple[str, nn.Module]]]:
    """A copy of the module tree in eval mode, with the dropout modules' forwards keyed.

    Each replica module holds only its own train/eval flag, children and hook dictionaries (the probe and the
    feature capture hook the replica, never the model); every other attribute, parameters and buffers
    included, is read from the original module when used.
    """
    layers: list[tuple[str, nn.Module]] = []

    def clone(module: nn.Module, prefix: str) -> nn.Module:
        twin = object.__new__(_replica_type(type(module)))
        own: dict[str, Any] = {k: copy.copy(v) for k, v in module.__dict__.items() if "hooks" in k and isinstance(v, dict)}
        own.update(training=False, _mcdrop_original=module, _modules={
            name: None if child is None else clone(child, f"{prefix}{name}.") for name, child in module._modules.items()})
        twin.__dict__.update(own)
        fn = keyed_function(module)
        if fn is not None:
            twin.__dict__["forward"] = _keyed_forward(len(layers), module, twin, fn)
            layers.append((prefix[:-1], module))
        return twin

    return clone(model, ""), layers


_KEYED_FUNCTIONAL: dict[Any, Callable[[Tensor, Tensor, float], Tensor]] = {
    nn.functional.dropout: F.mc_dropout, torch.dropout: F.mc_dropout,
    nn.functional.dropout1d: F.mc_channel_dropout, nn.functional.dropout2d: F.mc_channel_dropout,
    nn.functional.dropout3d: F.mc_channel_dropout, nn.functional.alpha_dropout: F.mc_alpha_dropout,
    nn.functional.feature_alpha_dropout: lambda x, keys, p: F.mc_alpha_dropout(x, keys, p, feature=True),
}


def _dropout_p(args: Any, kwargs: dict[str, Any]) -> float:
    """The rate of a functional dropout call (``F.dropout(input, p=0.5, ...)`` and its kin)."""
    return float(kwargs.get("p", args[1] if len(args) > 1 else 0.5))


class _FunctionalDropoutSpy(TorchFunctionMode):
    """Records functional dropout calls with p > 0 made while a probe pass runs."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, float]] = []

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func in _KEYED_FUNCTIONAL:
            p = _dropout_p(args, kwargs)
            if p > 0:
                self.calls.append((getattr(func, "__name__", str(func)), p))
        return func(*args, **kwargs)


class _FunctionalDropoutKeyer(TorchFunctionMode):
    """Inside an MC pass of ``MCEngine(..., functional_dropout=True)``: the ``k``-th functional dropout call with
    p > 0 (in call order) becomes keyed dropout of layer ``first + k`` (after the modules), call 0."""

    def __init__(self, state: _Pass, first: int) -> None:
        super().__init__()
        self.state, self.first, self.count = state, first, 0

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        keyed = _KEYED_FUNCTIONAL.get(func)
        if keyed is None:
            return func(*args, **kwargs)
        x = kwargs["input"] if "input" in kwargs else args[0]
        p = _dropout_p(args, kwargs)
        if p == 0.0:
            return x
        index = self.first + self.count
        self.count += 1
        self.state.calls[index] = self.state.calls.get(index, 0) + 1
        return keyed(x, rng.stream_keys(self.state.key, (index, 0), self.state.rows, self.state.samples), p)


@dataclass(frozen=True)
class _Probe:
    row_cost: int  # numbers per (sample, row) in the widest activation
    share_prefix: bool


_PROBE_SAMPLES = 32
"""MC passes of the probe: enough that small rates (p = 0.005 on a few units) still change some output."""


# ---------------------------------------------------------------------------------------------- engine


class MCEngine:
    """Runs ``model`` deterministically or as Monte Carlo dropout samples.

    Args:
        model: any ``nn.Module`` whose dim 0 is the batch, with dropout modules of a registered class
            (mcdrop's layers, ``nn.Dropout``, ``nn.Dropout1d/2d/3d``, ``nn.AlphaDropout``,
            ``nn.FeatureAlphaDropout``; see :func:`register_dropout`).
        element_budget: the most numbers the widest activation of one chunk may hold; None sizes it for the
            input's device (:func:`mcdrop.sampling.runtime.element_budget_for`: 2**24 on a CPU, more on a large GPU).
        share_prefix: compute the layers before the first dropout once per input (True), replicate the
            input for every sample (False), or decide with the first call's probe (None).
        fast: take the fast path registered for the model's class (:func:`register_fast_path`; for a
            :class:`~mcdrop.nets.models.DropoutMLP`, the fused kernel; for a DropoutCNN, the per-channel
            mixing of :mod:`mcdrop.nets.cnn_plan`) when one is available; False always takes
            the generic path.
        functional_dropout: also sample functional dropout calls in ``forward`` (``F.dropout(x, p,
            self.training)``, ``dropout1d/2d/3d``, ``alpha_dropout``): the ``k``-th call with p > 0 in a pass is
            keyed as layer ``len(layers) + k`` (the numbering :func:`mcdrop.export_model` gives them).  Every such
            call is sampled, whatever its ``training`` argument; False refuses a model that makes them.
    """

    def __init__(self, model: nn.Module, *, element_budget: int | None = None, share_prefix: bool | None = None,
                 fast: bool = True, functional_dropout: bool = False) -> None:
        if element_budget is not None and element_budget < 1:
            raise ValueError(f"element_budget has to be a positive number of elements, but got {element_budget}")
        self.model = model
        self.element_budget = None if element_budget is None else int(element_budget)
        self.share_prefix = share_prefix
        self.fast = fast
        self.functional_dropout = functional_dropout
        self._plan: FastPath | None = None
        self._plan_built = False
        self._lock = threading.Lock()  # guards (re)building the replica and the probe cache only
        self._signature: tuple[int, ...] = ()
        self._replica = model  # built on first use
        self._layers: list[tuple[str, nn.Module]] = []
        self._probes: dict[tuple[Any, ...], _Probe] = {}
        self._hooked: set[str] = set()
        self._current()

    # ----------------------------------------------------------------- public

    @property
    def layers(self) -> list[tuple[str, nn.Module]]:
        """The model's dropout modules the engine samples, in ``named_modules()`` order."""
        return self._current()[1]

    def deterministic(self, x: Tensor) -> Tensor:
        """The eval-mode forward (dropout off), without gradients. Shape: ``(B, *)`` -> ``(B, ...)``."""
        return self.deterministic_features(x, ())[0]

    def deterministic_features(self, x: Tensor, layers: Sequence[str]) -> tuple[Tensor, dict[str, Tensor]]:
        """The eval-mode forward and the outputs of the modules named ``layers`` (``named_modules()`` names)
        during it, e.g. hidden activations for an OOD density. Shapes: ``(B, *)`` -> ``(B, ...)``, ``{name: (B, ...)}``."""
        replica, _ = self._current()
        self._hook(replica, layers)
        store: dict[str, Tensor] = {}
        pass_token, capture_token = _PASS.set(None), _CAPTURE.set(store)
        try:
            with torch.inference_mode():
                out = replica(x)
        finally:
            _PASS.reset(pass_token)
            _CAPTURE.reset(capture_token)
        missing = [name for name in layers if name not in store]
        if missing:
            raise ValueError(f"feature layers {missing} produced no tensor in the forward pass of {type(self.model).__name__}")
        return out, {name: store[name] for name in layers}

    def sample(
        self,
        x: Tensor,
        n_samples: int,
        *,
        seed: int | Tensor | None = None,
        rows: Tensor | None = None,
        first_sample: int = 0,
        cancelled: Callable[[], bool] | None = None,
        consistent: bool = False,
    ) -> Tensor:
        """``n_samples`` stochastic forward passes of every row of ``x``.

        Args:
            x: inputs. Shape: ``(B, *)``.
            n_samples: number of passes ``S`` (>= 1).
            seed: the masks' seed, or one seed per row (int64, shape ``(B,)``: rows of requests with different
                seeds can share one call); None draws a fresh one (results are then random).
            rows: each input's row position for the masks, default ``0..B-1``. Shape: ``(B,)``.
            first_sample: index of the first sample (samples ``first_sample .. first_sample + S - 1``).
            cancelled: checked before every chunk; when it returns True, :class:`SamplingCancelled` is raised.
            consistent: one network per pass for all rows (every row at position 0; ``rows`` must be None).

        Returns:
            model outputs. Shape: ``(S, B, ...)``.
        """
        if not isinstance(n_samples, int) or isinstance(n_samples, bool) or n_samples < 1:
            raise ValueError(f"n_samples has to be a positive int, but got {n_samples!r}")
        b = x.shape[0]
        if consistent and rows is not None:
            raise ValueError("consistent=True gives every row position 0, so rows has to be None")
        if consistent:
            rows = torch.zeros(b, dtype=torch.int64, device=x.device)
        rows = torch.arange(b, dtype=torch.int64, device=x.device) if rows is None else rows.to(x.device, torch.int64)
        if rows.shape != (b,):
            raise ValueError(f"rows needs one position per input row, shape ({b},), but got {tuple(rows.shape)}")
        if b and (int(rows.min()) < 0 or int(rows.max()) >= rng.MAX_ROWS):
            raise ValueError(f"row positions have to be in [0, 2**31), but got {int(rows.min())}..{int(rows.max())}")
        if first_sample < 0 or first_sample + n_samples > rng.MAX_SAMPLES:
            raise ValueError(f"sample indices have to be in [0, 2**32), but got {first_sample}..{first_sample + n_samples - 1}")
        key = _call_key(seed, b, x.device)
        replica, _ = self._current()
        probe = self._probe(replica, x)
        out: Tensor | None = None
        with torch.inference_mode():
            plan = self._fast_path() if x.device.type == "cpu" and x.dtype == torch.float32 else None
            budget = self.element_budget or runtime.element_budget_for(x.device)
            for r0, r1, s0, s1 in self._chunks(b, n_samples, probe.row_cost, budget):
                if cancelled is not None and cancelled():
                    raise SamplingCancelled(f"sampling stopped after {s0} of {n_samples} passes of rows {r0}..{b - 1}")
                samples = torch.arange(first_sample + s0, first_sample + s1, dtype=torch.int64, device=x.device)
                chunk_key = key[r0:r1] if isinstance(key, Tensor) else key
                flat = plan.sample(x[r0:r1], chunk_key, rows[r0:r1], samples) if plan is not None else None
                if flat is not None:
                    y = flat.view(s1 - s0, r1 - r0, *flat.shape[1:])
                else:
                    y = self._mc_pass(replica, x[r0:r1], _Pass(chunk_key, rows[r0:r1], samples), probe.share_prefix)
                if out is None:
                    out = torch.empty((n_samples, b, *y.shape[2:]), dtype=y.dtype, device=y.device)
                out[s0:s1, r0:r1] = y
        assert out is not None
        return out

    # ----------------------------------------------------------------- internals

    def _hook(self, replica: nn.Module, layers: Sequence[str]) -> None:
        """Install (once per replica) the hooks that copy the named modules' outputs into a capture."""
        todo = [name for name in layers if name not in self._hooked]
        if not todo:
            return
        modules = dict(replica.named_modules())
        with self._lock:
            for name in todo:
                if name not in modules:
                    raise ValueError(f"{type(self.model).__name__} has no module named {name!r} to take features from")
                if name not in self._hooked:
                    modules[name].register_forward_hook(_capture_hook(name))
                    self._hooked.add(name)

    def _current(self) -> tuple[nn.Module, list[tuple[str, nn.Module]]]:
        """The replica, rebuilt if the model's module tree changed since it was made."""
        signature = tuple(map(id, self.model.modules()))
        if signature != self._signature:
            with self._lock:
                if signature != self._signature:
                    self._replica, self._layers = _replica(self.model)
                    self._probes, self._hooked = {}, set()
                    self._plan, self._plan_built = None, False
                    self._signature = signature
        return self._replica, self._layers

    def _fast_path(self) -> FastPath | None:
        """The registered fast path for the model, built (which may compile a kernel) on the first MC call."""
        if not self._plan_built:
            with self._lock:
                if not self._plan_built:
                    build = _FAST_PATHS.get(type(self.model)) if self.fast else None
                    self._plan = build(self.model) if build is not None else None
                    self._plan_built = True
        return self._plan

    def _mc_pass(self, replica: nn.Module, x: Tensor, state: _Pass, share: bool) -> Tensor:
        s, b = state.samples.numel(), state.rows.numel()
        inp = x if share else x.repeat(s, *([1] * (x.dim() - 1)))
        token = _PASS.set(state)
        try:
            if self.functional_dropout:
                with _FunctionalDropoutKeyer(state, len(self._layers)):
                    y = replica(inp)
            else:
                y = replica(inp)
        finally:
            _PASS.reset(token)
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

    def _check_layers(self) -> None:
        name = type(self.model).__name__
        if self.functional_dropout:
            return  # functional calls are only seen in a pass: the probe's checks apply
        if not self._layers:
            raise DropoutConfigError(
                f"{name} has no dropout module, so MC mode has nothing to sample. Add mcdrop.Dropout or "
                "torch.nn.Dropout layers (functional dropout calls cannot be switched on), or register your "
                "dropout class with mcdrop.sampling.engine.register_dropout"
            )
        if all(float(getattr(m, "p", 1.0)) == 0.0 for _, m in self._layers):
            names = ", ".join(n or "<root>" for n, _ in self._layers)
            raise DropoutConfigError(
                f"every dropout module of {name} has p = 0 ({names}), so all MC samples would be identical; "
                "train the model with dropout p > 0"
            )

    def _probe(self, replica: nn.Module, x: Tensor) -> _Probe:
        """Once per input shape: check that MC passes vary, decide whether the prefix can be shared, and
        measure the widest activation per (sample, row)."""
        signature = (tuple(x.shape[1:]), x.dtype, x.device)
        probe = self._probes.get(signature)
        if probe is not None:
            return probe
        self._check_layers()
        probe_x = x[:1]
        if x.dtype.is_floating_point:
            gen = torch.Generator(device=x.device).manual_seed(0)
            probe_x = torch.cat([probe_x, torch.randn(probe_x.shape, generator=gen, dtype=x.dtype, device=x.device)])
        n = probe_x.shape[0]
        state = lambda: _Pass(rng.seed_key(0), torch.arange(n, device=x.device),  # noqa: E731
                              torch.arange(_PROBE_SAMPLES, device=x.device))
        with torch.inference_mode():
            replicated, widths = self._probe_pass(replica, probe_x, state(), share=False)
            share = self.share_prefix
            if share is None:
                try:
                    shared, _ = self._probe_pass(replica, probe_x, state(), share=True)
                except DropoutConfigError:
                    raise
                except Exception:  # the prefix cannot be shared (e.g. a skip connection around dropout)
                    shared = None
                share = shared is not None and _close(shared, replicated)
                if not share:
                    log.info("%s combines activations from before and after dropout: its MC passes replicate "
                             "the input instead of sharing the layers before the first dropout",
                             type(self.model).__name__)
            elif share:
                replicated, widths = self._probe_pass(replica, probe_x, state(), share=True)
        if torch.equal(replicated, replicated[:1].expand_as(replicated)):
            raise DropoutConfigError(
                f"{_PROBE_SAMPLES} MC passes of {type(self.model).__name__} gave identical outputs: its dropout "
                "modules have no effect on the output (are they applied to the output path in forward()?)"
            )
        probe = _Probe(max([*widths, math.prod(replicated.shape[2:]), 1]), share)
        with self._lock:
            self._probes[signature] = probe
        return probe

    def _probe_pass(self, replica: nn.Module, x: Tensor, state: _Pass, *, share: bool) -> tuple[Tensor, list[int]]:
        """One probe pass, recording the width of every activation of ``S * B`` rows on the replica only."""
        rows = _PROBE_SAMPLES * x.shape[0]
        widths: list[int] = []

        def record(module: nn.Module, args: Any, output: Any) -> None:
            if isinstance(output, Tensor) and output.dim() and output.shape[0] == rows:
                widths.append(output[0].numel())
            weight = getattr(module, "weight", None)
            if keyed_function(module) is not None and isinstance(weight, Tensor):  # DropConnect: a mask per weight
                widths.append(weight.numel())

        handles = [m.register_forward_hook(record) for m in replica.modules()]
        spy = _FunctionalDropoutSpy()
        try:
            with spy:
                y = self._mc_pass(replica, x, state, share)
        except DropoutConfigError as err:
            if spy.calls:
                raise self._functional_error(spy) from err
            raise
        finally:
            for handle in handles:
                handle.remove()
        if spy.calls:
            raise self._functional_error(spy)
        return y, widths

    def _functional_error(self, spy: _FunctionalDropoutSpy) -> DropoutConfigError:
        name, p = spy.calls[0]
        return DropoutConfigError(
            f"{type(self.model).__name__}.forward calls {name}(p={p}), which MC mode cannot switch on (only "
            "dropout modules are sampled). Replace the functional call with an nn.Dropout or mcdrop.Dropout module, "
            "or pass functional_dropout=True"
        )

    def _chunks(self, b: int, s: int, row_cost: int, budget: int) -> Iterator[tuple[int, int, int, int]]:
        """(row start, row end, sample start, sample end) covering ``b x s`` pairs within the budget."""
        pairs = max(1, budget // row_cost)
        if s <= pairs:
            rows_per = max(1, pairs // s)
            for r0 in range(0, b, rows_per):
                yield r0, min(b, r0 + rows_per), 0, s
        else:
            for r0 in range(b):
                for s0 in range(0, s, pairs):
                    yield r0, r0 + 1, s0, min(s, s0 + pairs)


def _close(a: Tensor, b: Tensor) -> bool:
    """Equal within float32 rounding of a different summation order (the probe's two paths)."""
    if a.shape != b.shape:
        return False
    scale = b.abs().flatten(2).amax(-1, keepdim=True).clamp_min(1.0) if b.dim() > 2 else b.abs().clamp_min(1.0)
    diff = (a - b).abs().flatten(2) if b.dim() > 2 else (a - b).abs()
    return bool((diff <= 1e-4 * scale).all())


def _call_key(seed: int | Tensor | None, b: int, device: torch.device) -> int | Tensor:
    if seed is None:
        return rng.seed_key(rng.new_seed())
    if isinstance(seed, Tensor):
        if seed.shape != (b,):
            raise ValueError(f"per-row seeds need shape ({b},), but got {tuple(seed.shape)}")
        return rng.seed_keys(seed.to(device))
    return rng.seed_key(seed)
