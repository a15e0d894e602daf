"""Turn a trained ``nn.Module`` into a model folder that ``mcdrop score`` and ``mcdrop serve`` run.

:func:`export_model` traces the module's ``forward`` with ``torch.fx`` (nothing is executed: layers are recorded,
Python control flow must not depend on the data) and stores the trace as the declarative graph of
:mod:`mcdrop.nets.graph` beside the weights (safetensors).  Loading it never runs code from the files.

* Layers from ``torch.nn`` (:data:`~mcdrop.nets.graph.MODULES`) are kept as layers, at their names; every dropout
  layer keeps its index in ``named_modules()`` order, so MC masks, keyed by (seed, row, sample, layer), are those
  ``MCEngine`` draws on the original module.
* ``F.dropout(x, p, self.training)`` (and ``dropout1d/2d/3d``, ``alpha_dropout``) in ``forward`` becomes a
  dropout layer ``functional_dropout.<k>``, numbered in call order after the module layers (the keys
  ``MCEngine(model, functional_dropout=True)`` gives such calls).  Which calls are live is decided by tracing
  twice, in train and in eval mode: a call whose ``training`` is ``self.training`` (True in the train trace) is
  MC dropout; a literal ``training=False`` is the identity.  Anything else that differs between the two traces
  is refused.
* A plain MLP (``[Dropout,] (Linear, ReLU, Dropout) * n, Linear``) is stored as a
  :class:`~mcdrop.nets.models.DropoutMLP` instead, so the fused CPU kernel samples it.
* Several inputs: ``forward(self, a, b)`` takes one row of numbers split in order, ``a``'s values first (its
  per-row shape from ``example_input``), then ``b``'s.
"""

from __future__ import annotations

import copy
import inspect
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, fx, nn

from mcdrop.errors import ModelError
from mcdrop.nets.artifacts import save_model
from mcdrop.nets.graph import (
    MODULES,
    GraphFormatError,
    ImportedNet,
    dropout_function_layer,
    function_name,
    module_args,
    module_type,
)
from mcdrop.nets.models import DropoutMLP
from mcdrop.request import Task
from mcdrop.sampling.engine import DropoutConfigError, MCEngine, keyed_function
from mcdrop.sampling.layers import Dropout, MCDropoutLayer
from mcdrop.schemas import ModelCard

__all__ = ["ExportError", "export_model", "import_module"]

TASK_ALIASES = {"regression": Task.HOMOSCEDASTIC, "classifier": Task.CLASSIFICATION}


class ExportError(ModelError, ValueError):
    """The module cannot be imported as it stands; the message names the layer or op and what is supported."""


_SUPPORTED = ", ".join(MODULES)


class _Tracer(fx.Tracer):
    """Records ``torch.nn`` layers and dropout layers as leaves; traces through the user's own modules."""

    record_stack_traces = True

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if keyed_function(m) is not None or isinstance(m, MCDropoutLayer) or module_type(m) is not None:
            return True
        return super().is_leaf_module(m, module_qualified_name)


def _where(node: fx.Node) -> str:
    """``file:line: code`` of the user's line that made ``node`` (from the trace's stack)."""
    trace = node.stack_trace or ""
    frames = re.findall(r'File "([^"]+)", line (\d+), in (\w+)\n\s*(.*)', trace)
    frames = [f for f in frames if "/torch/" not in f[0]]
    if not frames:
        return f"node {node.name}"
    file, line, func, code = frames[-1]
    return f"{os.path.basename(file)}:{line} in {func}: {code.strip()}"


def _trace(model: nn.Module, training: bool) -> fx.Graph:
    flags = {m: m.training for m in model.modules()}
    before = set(vars(model))
    try:
        model.train(training)
        return _Tracer().trace(model)
    except ExportError:
        raise
    except Exception as err:  # fx raises TraceError, TypeError, RuntimeError ... on data-dependent Python
        raise ExportError(
            f"cannot trace {type(model).__name__}.forward: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            " (the importer records forward with torch.fx: Python control flow must not depend on tensor values, "
            "and forward must take tensors and return a tensor or a tuple of tensors)") from err
    finally:
        for m, flag in flags.items():
            m.training = flag
        for name in set(vars(model)) - before:  # fx stores tensor constants on the root
            if name.startswith("_tensor_constant"):
                delattr(model, name)


def _signature_args(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    if fn is torch.dropout:
        names = ("input", "p", "train")
        bound = dict(zip(names, args, strict=False))
        bound.update(kwargs)
        return {"input": bound["input"], "p": bound["p"], "training": bound["train"]}
    sig = inspect.signature(fn).bind(*args, **kwargs)
    sig.apply_defaults()
    return dict(sig.arguments)


def _resolve(model: nn.Module, target: str) -> Any:
    obj: Any = model
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


class _Converter:
    """One pass over the train-mode trace, checked against the eval-mode trace, building the graph spec."""

    def __init__(self, model: nn.Module, train: fx.Graph, evaluation: fx.Graph) -> None:
        self.model = model
        self.alias: dict[str, Any] = {}
        self.nodes: list[dict[str, Any]] = []
        self.extra_modules: list[dict[str, Any]] = []
        self.tensors: list[dict[str, Any]] = []
        self.used: set[str] = set()
        self.placeholders: list[str] = []
        self.output: Any = None
        train_nodes, eval_nodes = list(train.nodes), list(evaluation.nodes)
        self._check_same(train_nodes, eval_nodes)
        for node in train_nodes:
            self._convert(node)

    # ------------------------------------------------------------------ encoding

    def encode(self, value: Any, node: fx.Node) -> Any:
        if isinstance(value, fx.Node):
            return self.alias.get(value.name, {"node": value.name})
        if isinstance(value, torch.Size):
            value = tuple(value)
        if isinstance(value, tuple):
            return {"tuple": [self.encode(v, node) for v in value]}
        if isinstance(value, list):
            return [self.encode(v, node) for v in value]
        if isinstance(value, dict):
            return {"dict": {str(k): self.encode(v, node) for k, v in value.items()}}
        if isinstance(value, slice):
            return {"slice": [self.encode(v, node) for v in (value.start, value.stop, value.step)]}
        if value is Ellipsis:
            return {"ellipsis": True}
        if isinstance(value, torch.dtype):
            return {"dtype": str(value).removeprefix("torch.")}
        if isinstance(value, float) and not math.isfinite(value):
            return {"float": repr(value)}
        if value is None or isinstance(value, bool | int | float | str):
            return value
        raise ExportError(f"{_where(node)}: an argument of type {type(value).__name__} ({value!r:.60}) cannot be "
                          "stored in an imported graph (numbers, strings, tuples, slices and dtypes can)")

    # ------------------------------------------------------------------ checks

    def _check_same(self, train: list[fx.Node], evaluation: list[fx.Node]) -> None:
        def key(n: fx.Node) -> tuple[Any, ...]:
            args = n.args
            name = function_name(n.target) if n.op == "call_function" else None
            if name is not None and dropout_function_layer(name) is not None:
                args = args[:2]  # the training flag may differ: that is what the two traces find
                return n.op, n.target, repr(args), repr({k: v for k, v in n.kwargs.items() if k not in ("training", "train")})
            return n.op, n.target, repr(args), repr(n.kwargs)

        for a, b in zip(train, evaluation, strict=False):
            if key(a) != key(b):
                raise ExportError(f"{_where(a)}: {type(self.model).__name__}.forward computes something different in "
                                  "train and eval mode (besides dropout), which an imported model cannot represent; "
                                  "branch on self.training only to call dropout")
        if len(train) != len(evaluation):
            raise ExportError(f"{type(self.model).__name__}.forward runs {len(train)} operations in train mode but "
                              f"{len(evaluation)} in eval mode; branch on self.training only to call dropout")

    # ------------------------------------------------------------------ nodes

    def _convert(self, node: fx.Node) -> None:
        if node.op == "placeholder":
            self.placeholders.append(node.name)
            self.nodes.append({"name": node.name, "op": "placeholder", "target": node.name})
            return
        if node.op == "output":
            self.output = self.encode(node.args[0], node)
            return
        if node.op == "get_attr":
            value = _resolve(self.model, str(node.target))
            if not isinstance(value, Tensor):
                raise ExportError(f"{_where(node)}: forward reads {node.target!r}, a {type(value).__name__}, not a tensor")
            key = f"t{len(self.tensors)}"
            self.tensors.append({"target": str(node.target), "key": key, "shape": list(value.shape),
                                 "dtype": str(value.dtype).removeprefix("torch."), "value": value.detach()})
            self.nodes.append({"name": node.name, "op": "get_attr", "target": str(node.target)})
            return
        args = [self.encode(a, node) for a in node.args]
        kwargs = {str(k): self.encode(v, node) for k, v in node.kwargs.items()}
        entry = {"name": node.name, "op": node.op, "args": args, "kwargs": kwargs}
        if node.op == "call_module":
            target = str(node.target)
            module = self.model.get_submodule(target)
            if _layer_type(module) is None:
                raise ExportError(
                    f"layer {target!r} ({type(module).__name__}) cannot be imported: it is not one of the supported layers "
                    f"({_SUPPORTED}); rewrite it from supported layers and torch functions, or score the model in "
                    "Python with MCEngine")
            self.used.add(target)
            self.nodes.append({**entry, "target": target})
        elif node.op == "call_function":
            name = function_name(node.target)
            if name is None:
                fn = getattr(node.target, "__module__", "") + "." + getattr(node.target, "__name__", str(node.target))
                raise ExportError(f"{_where(node)}: forward calls {fn.lstrip('.')}, which an imported graph cannot "
                                  "represent; supported: torch.nn layers, functional dropout, elementwise and shape "
                                  "functions of torch and torch.nn.functional (mcdrop.nets.graph.FUNCTIONS)")
            layer = dropout_function_layer(name)
            if layer is not None:
                self._functional_dropout(node, name, layer)
                return
            self.nodes.append({**entry, "target": name})
        elif node.op == "call_method":
            from mcdrop.nets.graph import METHODS

            if node.target not in METHODS:
                raise ExportError(f"{_where(node)}: forward calls the tensor method .{node.target}(), which an imported "
                                  f"graph cannot represent; supported methods: {', '.join(sorted(METHODS))}")
            self.nodes.append({**entry, "target": str(node.target)})
        else:  # pragma: no cover - fx has no other ops
            raise ExportError(f"{_where(node)}: unsupported fx op {node.op}")

    def _functional_dropout(self, node: fx.Node, name: str, layer: str) -> None:
        fn = node.target
        bound = _signature_args(fn, tuple(node.args), dict(node.kwargs))
        p, training, x = bound.get("p", 0.5), bound.get("training", True), bound.get("input")
        if isinstance(p, fx.Node) or isinstance(training, fx.Node):
            raise ExportError(f"{_where(node)}: {name} with a rate or training flag computed in forward cannot be "
                              "imported; pass numbers (training=self.training)")
        if not training or float(p) == 0.0:
            self.alias[node.name] = self.encode(x, node)  # the identity
            return
        target = f"functional_dropout.{len(self.extra_modules)}"
        self.extra_modules.append({"name": target, "type": layer, "args": {"p": float(p)}})
        self.nodes.append({"name": node.name, "op": "call_module", "target": target, "args": [self.encode(x, node)],
                           "kwargs": {}})


def _layer_type(module: nn.Module) -> str | None:
    """The :data:`MODULES` name for ``module``: its class, or for a subclass of a dropout class the class it derives
    from (MC mode samples it with that class's keyed function, as ``MCEngine`` does on the original)."""
    name = module_type(module)
    if name is not None:
        return name
    if keyed_function(module) is None:
        return None
    for cls in type(module).__mro__:
        for key, (table_cls, _) in MODULES.items():
            if cls is table_cls:
                return key
    return None


def _module_specs(model: nn.Module, used: set[str]) -> list[dict[str, Any]]:
    """Every dropout layer (used or not: it holds an index) and every used layer, in ``named_modules()`` order."""
    specs = []
    leaves: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(leaf + ".") for leaf in leaves):
            continue
        is_dropout = keyed_function(module) is not None
        if name in used or (is_dropout and name):
            kind = _layer_type(module)
            if kind is None:
                raise ExportError(f"layer {name!r} ({type(module).__name__}) is a dropout class mcdrop samples, but not "
                                  f"one the importer can store; supported: {_SUPPORTED}")
            cls = MODULES[kind][0]
            args = module_args(module) if type(module) is cls else MODULES[kind][1](module)
            specs.append({"name": name, "type": kind, "args": args})
            leaves.append(name)
        elif not name and is_dropout:
            raise ExportError(f"the model itself is a dropout layer ({type(module).__name__}): nothing to import")
    return specs


def _features_node(nodes: list[dict[str, Any]], specs: dict[str, str]) -> tuple[list[dict[str, Any]], str | None]:
    """Insert an Identity layer ``mcdrop_features`` on the input of the last Linear (the OOD density's features)."""
    last = None
    for i, node in enumerate(nodes):
        if node["op"] == "call_module" and specs.get(node["target"]) == "Linear":
            last = i
    if last is None or not nodes[last]["args"] or not isinstance(nodes[last]["args"][0], dict) \
            or "node" not in nodes[last]["args"][0]:
        return nodes, None
    source = nodes[last]["args"][0]["node"]
    at = next(i for i, n in enumerate(nodes) if n["name"] == source) + 1
    probe = {"name": "mcdrop_features", "op": "call_module", "target": "mcdrop_features", "args": [{"node": source}],
             "kwargs": {}}
    return [*nodes[:at], probe, *nodes[at:]], "mcdrop_features"


def _head(task: Task, columns: int, *, target: int | None, mean: int | None, log_variance: int | None) -> dict[str, Any]:
    if task is Task.CLASSIFICATION:
        return {"task": task.value}  # one column: a binary classifier's logit z, served as logits [0, z]
    if task is Task.HOMOSCEDASTIC:
        if target is None:
            if columns != 1:
                raise ExportError(f"the model outputs {columns} columns: say which one is the regression target with "
                                  f"target=<column in 0..{columns - 1}> (one target per model folder)")
            target = 0
        if not 0 <= target < columns:
            raise ExportError(f"target={target}, but the model outputs {columns} column(s) (0..{columns - 1})")
        return {"task": task.value, "columns": [target]}
    if columns < 2:
        raise ExportError(f"a heteroscedastic model outputs a mean and a log-variance, but this one outputs {columns} column")
    mean = 0 if mean is None else mean
    log_variance = 1 if log_variance is None else log_variance
    for name, value in (("mean", mean), ("log_variance", log_variance)):
        if not 0 <= value < columns:
            raise ExportError(f"{name}={value}, but the model outputs {columns} columns (0..{columns - 1})")
    if mean == log_variance:
        raise ExportError(f"mean and log_variance name the same output column ({mean})")
    return {"task": task.value, "columns": [mean, log_variance]}


def _examples(example_input: Tensor | Sequence[Tensor]) -> list[Tensor]:
    examples = [example_input] if isinstance(example_input, Tensor) else list(example_input)
    if not examples or not all(isinstance(t, Tensor) and t.dim() >= 1 and t.shape[0] >= 1 for t in examples):
        raise ExportError("example_input must be a tensor (B, ...) or a tuple of them, one per input of forward, with "
                          "at least one row")
    rows = {t.shape[0] for t in examples}
    if len(rows) != 1:
        raise ExportError(f"example_input tensors must have the same number of rows, but got {sorted(rows)}")
    return [t.detach().float().cpu() for t in examples]


def _eval_output(model: nn.Module, examples: list[Tensor]) -> Any:
    flags = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.inference_mode():
            return model(*examples)
    finally:
        for m, flag in flags.items():
            m.training = flag


def import_module(model: nn.Module, *, task: Task | str, example_input: Tensor | Sequence[Tensor],
                  target: int | None = None, mean: int | None = None, log_variance: int | None = None,
                  tau: float | None = None, fast: bool = True) -> nn.Module:
    """The module as mcdrop stores it (an :class:`~mcdrop.nets.graph.ImportedNet`, or a
    :class:`~mcdrop.nets.models.DropoutMLP` for a plain MLP), holding copies of its weights; see
    :func:`export_model` for the arguments.  Raises :class:`ExportError` naming what cannot be imported and
    :class:`~mcdrop.sampling.engine.DropoutConfigError` for a model without active dropout."""
    task = TASK_ALIASES.get(str(task)) or Task(task)
    examples = _examples(example_input)
    tensors = [*model.parameters(), *model.buffers()]
    if any(t.device.type != "cpu" for t in tensors):
        model = copy.deepcopy(model).cpu()  # the caller's model stays where it is
    train_graph, eval_graph = _trace(model, True), _trace(model, False)
    conv = _Converter(model, train_graph, eval_graph)
    if len(conv.placeholders) != len(examples):
        raise ExportError(f"{type(model).__name__}.forward takes {len(conv.placeholders)} input(s) "
                          f"({', '.join(conv.placeholders)}), but example_input has {len(examples)}")
    reference = _eval_output(model, examples)
    outputs = list(reference) if isinstance(reference, tuple | list) else [reference]
    if not all(isinstance(t, Tensor) and t.dim() >= 1 and t.shape[0] == examples[0].shape[0] for t in outputs):
        raise ExportError("forward must return a tensor (B, ...) or a tuple of them, one row per input row")
    if task is Task.CLASSIFICATION and (len(outputs) != 1 or outputs[0].dim() != 2):
        raise ExportError(f"a classifier must return logits of shape (B, C) (or (B, 1): one logit of class 1), but "
                          f"forward returned {[tuple(t.shape) for t in outputs]}")
    columns = sum(math.prod(t.shape[1:]) for t in outputs)
    head = _head(task, columns, target=target, mean=mean, log_variance=log_variance)
    if task is Task.HOMOSCEDASTIC:
        if tau is None or not tau > 0:
            raise ExportError(f"a homoscedastic regressor needs its noise precision tau > 0 (1 / the noise variance in "
                              f"target units, e.g. 1 / validation MSE), but got {tau}; `mcdrop calibrate` refits it")
        head["tau"] = float(tau)
    specs = _module_specs(model, conv.used) + conv.extra_modules
    types = {s["name"]: s["type"] for s in specs}
    nodes, features = _features_node(conv.nodes, types)
    if features is not None:
        if any(s["name"].split(".")[0] == features for s in specs):
            nodes, features = conv.nodes, None
        else:
            specs.append({"name": features, "type": "Identity", "args": {}})  # last: dropout indices are unchanged
    inputs = [{"name": name, "shape": list(t.shape[1:])} for name, t in zip(conv.placeholders, examples, strict=True)]
    try:
        imported = ImportedNet(inputs=inputs, modules=specs, nodes=nodes, output=conv.output, head=head,
                               tensors=[{k: v for k, v in t.items() if k != "value"} for t in conv.tensors],
                               features=features)
    except GraphFormatError as err:
        raise ExportError(str(err)) from err
    with torch.no_grad():
        for spec in specs:
            if spec["name"] in types and not spec["name"].startswith(("functional_dropout.", "mcdrop_features")):
                imported.layers.get_submodule(spec["name"]).load_state_dict(model.get_submodule(spec["name"]).state_dict())
        for t in conv.tensors:
            getattr(imported.attr_tensors, t["key"]).copy_(t["value"])
        if tau is not None:
            imported.tau.fill_(float(tau))
    net: nn.Module = imported.eval()
    if fast and not conv.extra_modules:
        mlp = _as_dropout_mlp(imported, model, head, tau)
        if mlp is not None:
            net = mlp
    _verify(net, model, examples, reference, head)
    return net


def _verify(net: nn.Module, model: nn.Module, examples: list[Tensor], reference: Any, head: dict[str, Any]) -> None:
    """The stored network computes the original's eval outputs, and MC mode samples it (guardrails apply)."""
    flat = torch.cat([t.reshape(t.shape[0], -1) for t in examples], dim=1)
    engine = MCEngine(net)
    got = engine.deterministic(flat)
    helper = ImportedNet.__new__(ImportedNet)
    helper.head, helper.head_spec = Task(head["task"]), head
    helper.temperature = torch.ones(())
    want = ImportedNet.apply_head(helper, reference)
    scale = want.abs().amax().clamp_min(1.0)
    if got.shape != want.shape or not bool(((got - want).abs() <= 1e-4 * scale).all()):
        diff = float((got - want).abs().max()) if got.shape == want.shape else float("nan")
        raise ExportError(f"the imported graph of {type(model).__name__} does not reproduce its eval outputs (largest "
                          f"difference {diff:.3g}, shapes {tuple(got.shape)} vs {tuple(want.shape)}); please report this "
                          "model to mcdrop")
    try:
        engine.sample(flat[:2], 2, seed=0)
    except DropoutConfigError as err:
        raise DropoutConfigError(str(err).replace("ImportedNet", type(model).__name__)) from None


def _as_dropout_mlp(net: nn.Module, model: nn.Module, head: dict[str, Any], tau: float | None) -> DropoutMLP | None:
    """The same network as a DropoutMLP (the fused kernel's model) when it is ``[Dropout,] (Linear, ReLU, Dropout) * n,
    Linear`` on one flat input with biases, and these are all of its dropout layers; else None."""
    if not isinstance(net, ImportedNet) or len(net.inputs) != 1 or len(net.inputs[0]["shape"]) != 1:
        return None
    chain = [n for n in net.nodes if n["op"] != "placeholder" and n["target"] != "mcdrop_features"]
    if any(n["op"] != "call_module" for n in chain) or net.tensor_spec:
        return None
    previous = net.nodes[0]["name"]
    for n in chain:  # a straight line: each node consumes the previous one only
        if n["args"] != [{"node": previous}] or n["kwargs"]:
            return None
        previous = n["name"]
    if net.output != {"node": previous}:
        return None
    mods = [net.layers.get_submodule(n["target"]) for n in chain]
    kinds = [type(m) for m in mods]
    pos, input_dropout = 0, 0.0
    if kinds and kinds[0] in (nn.Dropout, Dropout):
        input_dropout, pos = float(cast(nn.Dropout | Dropout, mods[0]).p), 1  # exact types checked above: a cast
    linears: list[nn.Linear] = []
    rates: list[float] = []
    drops = (nn.Dropout, Dropout)
    while pos + 3 <= len(mods) and kinds[pos] is nn.Linear and kinds[pos + 1] is nn.ReLU and kinds[pos + 2] in drops:
        linears.append(cast(nn.Linear, mods[pos]))
        rates.append(float(cast(nn.Dropout | Dropout, mods[pos + 2]).p))
        pos += 3
    if pos != len(mods) - 1 or kinds[pos] is not nn.Linear or not linears:
        return None
    linears.append(cast(nn.Linear, mods[pos]))
    if any(lin.bias is None for lin in linears):
        return None
    if len(chain) - (1 if input_dropout else 0) != 3 * len(rates) + 1:
        return None
    n_dropouts = sum(1 for _, m in model.named_modules() if keyed_function(m) is not None)
    has_input = kinds[0] in drops
    if n_dropouts != len(rates) + int(has_input) or (has_input and input_dropout == 0.0):
        return None  # another dropout layer holds an index, or Dropout(0) on the input (DropoutMLP has none there)
    task = Task(head["task"])
    last = linears[-1]
    if task is Task.CLASSIFICATION and last.out_features < 2:
        return None  # a binary logit: the graph's head turns it into [0, z]
    rows = list(range(last.out_features)) if task is Task.CLASSIFICATION else head["columns"]
    out_features = last.out_features if task is Task.CLASSIFICATION else 1
    mlp = DropoutMLP(linears[0].in_features, [lin.out_features for lin in linears[:-1]], out_features,
                     dropout=rates, input_dropout=input_dropout, head=task, tau=tau)
    with torch.no_grad():
        mlp_linears = [m for m in mlp.net if isinstance(m, nn.Linear)]
        for src, dst in zip(linears, mlp_linears, strict=True):
            w: Tensor = src.weight
            b: Tensor = src.bias
            if src is last:
                w, b = w[rows], b[rows]
            dst.weight.copy_(w)
            dst.bias.copy_(b)
    return mlp.eval()


def export_model(model: nn.Module, directory: str | os.PathLike[str], *, task: Task | str,
                 example_input: Tensor | Sequence[Tensor], name: str | None = None, version: str = "1",
                 class_names: Sequence[str] | None = None, target: int | None = None, mean: int | None = None,
                 log_variance: int | None = None, tau: float | None = None, description: str = "",
                 normalisation: str = "as the model was trained", data: str = "", fast: bool = True) -> ModelCard:
    """Write ``model`` (a trained ``nn.Module`` with dropout) as a model folder ``directory`` that
    ``mcdrop score --model``, ``mcdrop serve --models`` and :func:`mcdrop.load_artifact` take; returns its card.

    The folder holds ``weights.safetensors``, ``card.json`` (with the declarative graph and every file's sha256)
    and ``card.md``; it is written whole or not at all.  The model is traced, not run in training mode, and
    is left as it was.

    Args:
        model: the trained network; ``forward`` takes one tensor per input, batch first.
        directory: the folder to write (replaced if it exists); its name is the model's name by default.
        task: ``classification`` (forward returns logits ``(B, C)``), ``homoscedastic`` or ``regression`` (one
            target column, constant noise ``1 / tau``), or ``heteroscedastic`` (a mean and a log-variance column).
        example_input: a few rows of real inputs, a tensor or a tuple (one per input of forward); they fix each
            input's per-row shape (a served row is the inputs' values concatenated in this order) and check the
            import.
        name, version, description, normalisation, data: the card's fields (``normalisation`` tells clients how to
            prepare a row).
        class_names: classification: one name per logit.
        target: regression: the output column that is the target when forward returns several (a tuple of
            outputs counts as their columns side by side).
        mean, log_variance: heteroscedastic: the columns of the mean and the log-variance (default 0 and 1).
        tau: homoscedastic: the noise precision ``1 / sigma^2`` in target units (``mcdrop calibrate`` refits it).
        fast: store a plain MLP as a DropoutMLP so the fused CPU kernel samples it.

    Raises:
        ExportError: a layer, op or output the importer cannot represent (the message names it and where it is).
        DropoutConfigError: the model has no active dropout (MC samples would be identical).
    """
    directory = Path(directory)
    task_value = TASK_ALIASES.get(str(task)) or Task(task)
    net = import_module(model, task=task_value, example_input=example_input, target=target, mean=mean,
                        log_variance=log_variance, tau=tau, fast=fast)
    examples = _examples(example_input)
    if isinstance(net, ImportedNet):
        size, shape = net.in_features, (list(net.inputs[0]["shape"]) if len(net.inputs) == 1 else [net.in_features])
    else:
        assert isinstance(net, DropoutMLP)  # import_module's fast path
        size = shape_size = net.in_features
        shape = [shape_size]
    out = MCEngine(net).deterministic(torch.cat([t.reshape(t.shape[0], -1) for t in examples], dim=1))
    if task_value is Task.CLASSIFICATION:
        n_classes = out.shape[1]
        names = list(class_names) if class_names is not None else [str(i) for i in range(n_classes)]
        if len(names) != n_classes:
            raise ExportError(f"class_names has {len(names)} names, but the model outputs {n_classes} logits")
    elif class_names is not None:
        raise ExportError("class_names is for classifiers; this model is a regressor")
    else:
        names = None
    card: dict[str, Any] = {
        "name": name or directory.resolve().name, "version": version, "task": task_value.value,
        "description": description or f"{type(model).__name__} imported with mcdrop.export_model",
        "input_shape": shape, "input_size": size, "normalisation": normalisation, "class_names": names,
        "tau": float(tau) if tau is not None else None, "data": data,
        "training": {"imported_from": f"{type(model).__module__}.{type(model).__qualname__}"},
        "inputs": [{"name": i["name"], "shape": i["shape"]} for i in net.inputs] if isinstance(net, ImportedNet)
        else [{"name": "x", "shape": shape}],
    }
    return save_model(net, directory, card)
