"""An imported network as data: a declarative graph of whitelisted operations, run by :class:`ImportedNet`.

The card's ``architecture`` (``kind: "graph"``) holds plain JSON:

* ``inputs``: per-row shapes of the network's inputs.  A row of ``D`` numbers is split **in order**: input ``i``
  takes the next ``prod(shape_i)`` numbers, reshaped (row-major) to ``shape_i``; ``D`` is the sum.
* ``modules``: the network's layers in the original ``named_modules()`` order, each a class name from
  :data:`MODULES` and its constructor arguments (``{"name": "blocks.0.conv", "type": "Conv2d", "args": {...}}``);
  containers are implied by the dotted names.  Keeping the order keeps each dropout layer's index, hence its
  masks (keyed by (seed, row, sample, layer)), those of the original module.
* ``nodes``: the computation, one operation per node (``placeholder``, ``call_module``, ``call_function`` with a
  name from :data:`FUNCTIONS`, ``call_method`` with a name from :data:`METHODS`, ``get_attr`` of a stored
  tensor), whose arguments are JSON values, ``{"node": name}`` references, ``{"tuple": [...]}``,
  ``{"slice": [start, stop, step]}``, ``{"ellipsis": true}``, ``{"dtype": "float32"}`` or ``{"float": "inf"}``.
* ``output`` (an argument structure) and ``head``: how the output becomes the task's (see :class:`ImportedNet`).

Why this and not ``torch.export`` / TorchScript / pickle: loading a graph here looks strings up in fixed tables
of torch functions and ``nn`` classes and builds modules from numbers, so **no code from the file runs**, and a
name that is not in a table is refused.  ``torch.export.load`` (torch 2.14) unpickles its payloads, falling
back to ``torch.load(weights_only=False)`` (its own docstring: "uses pickle under the hood ... never load data
from an untrusted source"); TorchScript runs the file's code.  The weights are safetensors beside this graph.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as TF

from mcdrop.errors import ModelError
from mcdrop.request import Task
from mcdrop.sampling import layers as mcl

__all__ = ["FUNCTIONS", "METHODS", "MODULES", "GraphFormatError", "ImportedNet", "decode_arg", "module_args"]

GRAPH_FORMAT = 1


class GraphFormatError(ModelError, ValueError):
    """An architecture spec names something outside the tables or is malformed."""


# ------------------------------------------------------------------------------------------------ tables


Args = Callable[[Any], dict[str, Any]]
"""A layer's constructor arguments, read from an instance of its class (the table pairs them; mypy cannot)."""


def _attrs(*names: str) -> Args:
    return lambda m: {n: getattr(m, n) for n in names}


def _with_bias(*names: str) -> Args:
    return lambda m: {**{n: getattr(m, n) for n in names}, "bias": m.bias is not None}


_CONV = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "padding_mode")
_BN = ("num_features", "eps", "momentum", "affine", "track_running_stats")
_POOL = ("kernel_size", "stride", "padding", "dilation", "return_indices", "ceil_mode")
_AVG = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")
_CONVT = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "output_padding", "groups", "dilation",
          "padding_mode")
_NONE = _attrs()

MODULES: dict[str, tuple[type[nn.Module], Args]] = {
    "Linear": (nn.Linear, _with_bias("in_features", "out_features")),
    "Bilinear": (nn.Bilinear, _with_bias("in1_features", "in2_features", "out_features")),
    "Conv1d": (nn.Conv1d, _with_bias(*_CONV)),
    "Conv2d": (nn.Conv2d, _with_bias(*_CONV)),
    "Conv3d": (nn.Conv3d, _with_bias(*_CONV)),
    "ConvTranspose1d": (nn.ConvTranspose1d, _with_bias(*_CONVT)),
    "ConvTranspose2d": (nn.ConvTranspose2d, _with_bias(*_CONVT)),
    "BatchNorm1d": (nn.BatchNorm1d, _attrs(*_BN)),
    "BatchNorm2d": (nn.BatchNorm2d, _attrs(*_BN)),
    "BatchNorm3d": (nn.BatchNorm3d, _attrs(*_BN)),
    "LayerNorm": (nn.LayerNorm, lambda m: {"normalized_shape": list(m.normalized_shape), "eps": m.eps,
                                           "elementwise_affine": m.elementwise_affine, "bias": m.bias is not None}),
    "GroupNorm": (nn.GroupNorm, _attrs("num_groups", "num_channels", "eps", "affine")),
    "RMSNorm": (nn.RMSNorm, lambda m: {"normalized_shape": list(m.normalized_shape), "eps": m.eps,
                                       "elementwise_affine": m.elementwise_affine}),
    "InstanceNorm1d": (nn.InstanceNorm1d, _attrs(*_BN)),
    "InstanceNorm2d": (nn.InstanceNorm2d, _attrs(*_BN)),
    "MaxPool1d": (nn.MaxPool1d, _attrs(*_POOL)),
    "MaxPool2d": (nn.MaxPool2d, _attrs(*_POOL)),
    "MaxPool3d": (nn.MaxPool3d, _attrs(*_POOL)),
    "AvgPool1d": (nn.AvgPool1d, _attrs(*_AVG[:-1])),
    "AvgPool2d": (nn.AvgPool2d, _attrs(*_AVG)),
    "AvgPool3d": (nn.AvgPool3d, _attrs(*_AVG)),
    "AdaptiveAvgPool1d": (nn.AdaptiveAvgPool1d, _attrs("output_size")),
    "AdaptiveAvgPool2d": (nn.AdaptiveAvgPool2d, _attrs("output_size")),
    "AdaptiveMaxPool1d": (nn.AdaptiveMaxPool1d, _attrs("output_size")),
    "AdaptiveMaxPool2d": (nn.AdaptiveMaxPool2d, _attrs("output_size")),
    "Flatten": (nn.Flatten, _attrs("start_dim", "end_dim")),
    "Unflatten": (nn.Unflatten, lambda m: {"dim": m.dim, "unflattened_size": list(m.unflattened_size)}),
    "Upsample": (nn.Upsample, _attrs("size", "scale_factor", "mode", "align_corners", "recompute_scale_factor")),
    "PixelShuffle": (nn.PixelShuffle, _attrs("upscale_factor")),
    "ZeroPad1d": (nn.ZeroPad1d, _attrs("padding")),
    "ZeroPad2d": (nn.ZeroPad2d, _attrs("padding")),
    "ConstantPad1d": (nn.ConstantPad1d, _attrs("padding", "value")),
    "ConstantPad2d": (nn.ConstantPad2d, _attrs("padding", "value")),
    "ReflectionPad1d": (nn.ReflectionPad1d, _attrs("padding")),
    "ReflectionPad2d": (nn.ReflectionPad2d, _attrs("padding")),
    "ReplicationPad1d": (nn.ReplicationPad1d, _attrs("padding")),
    "ReplicationPad2d": (nn.ReplicationPad2d, _attrs("padding")),
    "Identity": (nn.Identity, _NONE),
    "ReLU": (nn.ReLU, _NONE),
    "ReLU6": (nn.ReLU6, _NONE),
    "LeakyReLU": (nn.LeakyReLU, _attrs("negative_slope")),
    "PReLU": (nn.PReLU, lambda m: {"num_parameters": m.num_parameters}),
    "ELU": (nn.ELU, _attrs("alpha")),
    "CELU": (nn.CELU, _attrs("alpha")),
    "SELU": (nn.SELU, _NONE),
    "GELU": (nn.GELU, _attrs("approximate")),
    "SiLU": (nn.SiLU, _NONE),
    "Mish": (nn.Mish, _NONE),
    "Sigmoid": (nn.Sigmoid, _NONE),
    "Tanh": (nn.Tanh, _NONE),
    "Softplus": (nn.Softplus, _attrs("beta", "threshold")),
    "Softsign": (nn.Softsign, _NONE),
    "Hardtanh": (nn.Hardtanh, _attrs("min_val", "max_val")),
    "Hardswish": (nn.Hardswish, _NONE),
    "Hardsigmoid": (nn.Hardsigmoid, _NONE),
    "LogSigmoid": (nn.LogSigmoid, _NONE),
    "Tanhshrink": (nn.Tanhshrink, _NONE),
    "Hardshrink": (nn.Hardshrink, _attrs("lambd")),
    "Softshrink": (nn.Softshrink, _attrs("lambd")),
    "Threshold": (nn.Threshold, _attrs("threshold", "value")),
    "GLU": (nn.GLU, _attrs("dim")),
    "Softmin": (nn.Softmin, _attrs("dim")),
    "Softmax": (nn.Softmax, _attrs("dim")),
    "LogSoftmax": (nn.LogSoftmax, _attrs("dim")),
    # dropout: sampled with keyed masks in MC mode (mcdrop.sampling.engine's registry)
    "Dropout": (nn.Dropout, _attrs("p")),
    "Dropout1d": (nn.Dropout1d, _attrs("p")),
    "Dropout2d": (nn.Dropout2d, _attrs("p")),
    "Dropout3d": (nn.Dropout3d, _attrs("p")),
    "AlphaDropout": (nn.AlphaDropout, _attrs("p")),
    "FeatureAlphaDropout": (nn.FeatureAlphaDropout, _attrs("p")),
    "mcdrop.Dropout": (mcl.Dropout, _attrs("p")),
    "mcdrop.ChannelDropout": (mcl.ChannelDropout, _attrs("p")),
    "mcdrop.GaussianDropout": (mcl.GaussianDropout, _attrs("p")),
    "mcdrop.DropConnectLinear": (mcl.DropConnectLinear, lambda m: {"in_features": m.in_features,
                                                                   "out_features": m.out_features,
                                                                   "bias": m.bias is not None, "p": m.p}),
}
"""Layers an imported network may use: class name -> (class, its constructor arguments read from an instance).
Classes are matched exactly (a subclass is matched by the registered dropout class it derives from, see
:mod:`mcdrop.nets.export`)."""

_DROPOUT_FUNCTIONS: dict[str, str] = {
    "torch.nn.functional.dropout": "Dropout", "torch.dropout": "Dropout",
    "torch.nn.functional.dropout1d": "Dropout1d", "torch.nn.functional.dropout2d": "Dropout2d",
    "torch.nn.functional.dropout3d": "Dropout3d", "torch.nn.functional.alpha_dropout": "AlphaDropout",
    "torch.nn.functional.feature_alpha_dropout": "FeatureAlphaDropout",
}
"""Functional dropout calls and the layer each becomes in the imported graph."""

_TORCH = ("add", "sub", "mul", "div", "cat", "concat", "stack", "flatten", "reshape", "squeeze", "unsqueeze",
          "transpose", "permute", "relu", "sigmoid", "tanh", "exp", "log", "sqrt", "abs", "clamp", "clip", "matmul",
          "mean", "sum", "amax", "amin", "maximum", "minimum", "softmax", "log_softmax", "chunk", "split", "where",
          "neg", "square", "pow", "erf", "sin", "cos", "bmm", "einsum", "narrow", "select", "index_select",
          "logsumexp", "rsqrt", "reciprocal", "max", "min", "std", "var", "norm", "addmm", "t", "mm", "cumsum",
          "zeros_like", "ones_like", "full_like", "exp2", "log1p", "expm1", "sign", "floor", "ceil", "round",
          "zeros", "ones", "full", "arange", "tensor", "gather", "topk", "sort", "argmax", "argmin", "roll", "flip",
          "tile", "repeat_interleave", "outer", "diag_embed", "tril", "triu", "split_with_sizes", "unbind", "prod",
          "sigmoid", "softplus", "atan", "tan", "isnan", "nan_to_num", "lerp", "addcmul", "baddbmm", "mv", "dot")
_FUNCTIONAL = ("relu", "relu6", "leaky_relu", "elu", "celu", "selu", "gelu", "silu", "mish", "sigmoid", "tanh",
               "softplus", "softsign", "hardtanh", "hardswish", "hardsigmoid", "logsigmoid", "softmax", "log_softmax",
               "linear", "conv1d", "conv2d", "max_pool1d", "max_pool2d", "avg_pool1d", "avg_pool2d",
               "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_max_pool1d", "adaptive_max_pool2d",
               "layer_norm", "group_norm", "normalize", "pad", "interpolate", "prelu", "glu", "one_hot",
               "batch_norm", "instance_norm", "rms_norm", "conv_transpose1d", "conv_transpose2d", "avg_pool3d",
               "max_pool3d", "pixel_shuffle", "embedding", "scaled_dot_product_attention", "elu_", "hardshrink",
               "softshrink", "tanhshrink", "threshold", "softmin", "cosine_similarity", "pairwise_distance")
_OPERATORS = ("add", "sub", "mul", "truediv", "floordiv", "mod", "neg", "pos", "pow", "matmul", "getitem",
              "eq", "ne", "lt", "le", "gt", "ge", "and_", "or_", "invert")

FUNCTIONS: dict[str, Callable[..., Any]] = {
    **{f"torch.{n}": getattr(torch, n) for n in _TORCH if hasattr(torch, n)},
    **{f"torch.nn.functional.{n}": getattr(TF, n) for n in _FUNCTIONAL if hasattr(TF, n)},
    **{f"operator.{n}": getattr(operator, n) for n in _OPERATORS},
    "getattr": lambda obj, name: _tensor_attr(obj, name),
}
"""Functions an imported graph may call, by the name stored in the graph."""

METHODS = frozenset({
    "view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "permute", "transpose", "contiguous", "size",
    "dim", "expand", "expand_as", "view_as", "reshape_as", "repeat", "chunk", "split", "narrow", "select",
    "mean", "sum", "amax", "amin", "max", "min", "std", "var", "norm", "relu", "sigmoid", "tanh", "exp", "log",
    "sqrt", "abs", "clamp", "clip", "pow", "neg", "softmax", "log_softmax", "matmul", "mm", "bmm", "add", "sub",
    "mul", "div", "t", "float", "double", "to", "type_as", "masked_fill", "square", "logsumexp", "cumsum",
    "__getitem__", "rsqrt", "reciprocal", "sign", "floor", "ceil", "round", "exp2", "log1p", "expm1",
    "new_zeros", "new_ones", "new_full", "gather", "topk", "sort", "argmax", "argmin", "roll", "flip",
    "tile", "repeat_interleave", "unbind", "prod", "tril", "triu", "cumprod", "long",
    "int", "bool", "half", "detach", "clone", "any", "all", "nan_to_num", "lerp", "addcmul", "masked_fill_",
    "sin", "cos", "atan", "tan", "index_select", "unfold", "movedim", "swapaxes", "diagonal",
})
"""Tensor methods an imported graph may call."""

_TENSOR_ATTRS = frozenset({"shape", "T", "mT", "ndim", "dtype", "device"})
_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16,
           "int64": torch.int64, "int32": torch.int32, "bool": torch.bool}


def _tensor_attr(obj: Any, name: str) -> Any:
    if not isinstance(obj, Tensor) or name not in _TENSOR_ATTRS:
        raise GraphFormatError(f"getattr({type(obj).__name__}, {name!r}) is not allowed: only tensor attributes "
                               f"{sorted(_TENSOR_ATTRS)}")
    return getattr(obj, name)


def function_name(fn: Any) -> str | None:
    """The table name of a traced function (``FUNCTIONS`` or a functional dropout), or None."""
    for table in (FUNCTIONS,):
        for name, value in table.items():
            if value is fn:
                return name
    if fn is getattr:
        return "getattr"
    for name in _DROPOUT_FUNCTIONS:
        module, _, attr = name.rpartition(".")
        owner = TF if module == "torch.nn.functional" else torch
        if getattr(owner, attr, None) is fn:
            return name
    return None


def dropout_function_layer(name: str) -> str | None:
    """The layer class (a :data:`MODULES` key) a functional dropout call becomes, or None."""
    return _DROPOUT_FUNCTIONS.get(name)


def module_args(module: nn.Module) -> dict[str, Any]:
    """A supported module's constructor arguments as JSON (tuples become lists)."""
    name = module_type(module)
    if name is None:
        raise GraphFormatError(f"{type(module).__name__} is not a supported layer")
    return _json(MODULES[name][1](module))


def module_type(module: nn.Module) -> str | None:
    """The :data:`MODULES` name of ``module``'s class (exact match), or None."""
    for name, (cls, _) in MODULES.items():
        if type(module) is cls:
            return name
    return None


def _json(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_json(v) for v in value]
    if isinstance(value, dict):
        return {k: _json(v) for k, v in value.items()}
    return value


# ------------------------------------------------------------------------------------------------ arguments


def decode_arg(value: Any, env: dict[str, Any]) -> Any:
    """An argument of the stored graph as a Python value, node references looked up in ``env``."""
    if isinstance(value, list):
        return [decode_arg(v, env) for v in value]
    if isinstance(value, dict):
        if len(value) != 1:
            raise GraphFormatError(f"malformed argument {value!r}: expected a one-key tagged object")
        (tag, inner), = value.items()
        if tag == "node":
            if inner not in env:
                raise GraphFormatError(f"argument refers to node {inner!r}, which is not computed before it")
            return env[inner]
        if tag == "tuple":
            return tuple(decode_arg(v, env) for v in inner)
        if tag == "slice":
            return slice(*(decode_arg(v, env) for v in inner))
        if tag == "ellipsis":
            return Ellipsis
        if tag == "dtype":
            if inner not in _DTYPES:
                raise GraphFormatError(f"unknown dtype {inner!r}: expected one of {sorted(_DTYPES)}")
            return _DTYPES[inner]
        if tag == "float":
            return float(inner)  # inf, -inf, nan
        if tag == "dict":
            return {k: decode_arg(v, env) for k, v in inner.items()}
        raise GraphFormatError(f"unknown argument tag {tag!r}")
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise GraphFormatError(f"malformed argument {value!r}")


# ------------------------------------------------------------------------------------------------ the network


class ImportedNet(nn.Module):
    """A network rebuilt from its declarative graph (see the module docs).

    Head (``head["task"]``): the output (a tensor, or a tuple of tensors concatenated along dim 1 after each is
    made ``(B, k_i)``) becomes ``(B, C)`` logits divided by the ``temperature`` buffer (classification; one logit
    ``z`` becomes ``[0, z]``, so class 1 has probability ``sigmoid(z)``), ``(B,)``
    column ``columns[0]`` (homoscedastic) or ``(B, 2)`` columns ``[mean, log-variance]`` (heteroscedastic).

    Shape: input ``(B, D)`` (or ``(B, *)``, flattened), ``D`` the sum of the inputs' per-row sizes ->
    ``(B, C)``, ``(B,)`` or ``(B, 2)``.
    """

    temperature: Tensor  # buffers, registered in __init__
    tau: Tensor

    def __init__(self, *, inputs: Sequence[dict[str, Any]], modules: Sequence[dict[str, Any]],
                 nodes: Sequence[dict[str, Any]], output: Any, head: dict[str, Any], tensors: Sequence[dict[str, Any]] = (),
                 format: int = GRAPH_FORMAT, features: str | None = None) -> None:
        super().__init__()
        if format != GRAPH_FORMAT:
            raise GraphFormatError(f"graph format {format} is not supported (this mcdrop reads format {GRAPH_FORMAT})")
        self.inputs: list[dict[str, Any]] = [{"name": str(i["name"]), "shape": [int(d) for d in i["shape"]]} for i in inputs]
        self.modules_spec = [dict(m) for m in modules]
        self.nodes = [dict(n) for n in nodes]
        self.output, self.head_spec, self.features = output, dict(head), features
        self.tensor_spec = [dict(t) for t in tensors]
        self.head = Task(self.head_spec["task"])  # read by mcdrop.uncertainty.prediction.model_task
        self.sizes = [math.prod(i["shape"]) for i in self.inputs]
        self.in_features = sum(self.sizes)
        self.layers = nn.Module()  # the network's layers at their original names (no clash with these attributes)
        for spec in self.modules_spec:
            kind = spec.get("type")
            if kind not in MODULES:
                raise GraphFormatError(f"layer {spec.get('name')!r} has type {kind!r}, which is not a supported layer")
            cls = MODULES[kind][0]
            try:
                module = cls(**spec.get("args", {}))
            except (TypeError, ValueError) as err:
                raise GraphFormatError(f"layer {spec['name']!r} ({kind}) cannot be built from {spec.get('args')}: {err}") from err
            self._install(str(spec["name"]), module)
        store = nn.Module()
        for t in self.tensor_spec:
            dtype = _DTYPES.get(t.get("dtype", "float32"))
            if dtype is None:
                raise GraphFormatError(f"stored tensor {t.get('target')!r} has unknown dtype {t.get('dtype')!r}")
            store.register_buffer(str(t["key"]), torch.zeros([int(d) for d in t["shape"]], dtype=dtype))
        self.attr_tensors = store
        self.register_buffer("temperature", torch.ones(()))
        tau = self.head_spec.get("tau")
        self.register_buffer("tau", torch.tensor(float(tau) if tau is not None else math.nan))
        self._check_nodes()

    def _install(self, name: str, module: nn.Module) -> None:
        parent: nn.Module = self.layers
        *path, leaf = name.split(".")
        for part in path:
            child = parent._modules.get(part)
            if child is None:
                child = nn.Module()
                parent.add_module(part, child)
            parent = child
        if leaf in parent._modules or hasattr(type(parent), leaf) or leaf in parent.__dict__:
            raise GraphFormatError(f"layer name {name!r} is used twice or clashes with an attribute")
        parent.add_module(leaf, module)

    def _check_nodes(self) -> None:
        names = {spec["name"] for spec in self.modules_spec}
        keys = {t["target"]: t["key"] for t in self.tensor_spec}
        self._tensor_keys = keys
        placeholders = 0
        for node in self.nodes:
            op, target = node.get("op"), node.get("target")
            if op == "placeholder":
                placeholders += 1
            elif op == "call_module" and target not in names:
                raise GraphFormatError(f"node {node.get('name')!r} calls layer {target!r}, which the graph does not define")
            elif op == "call_function" and target not in FUNCTIONS:
                raise GraphFormatError(f"node {node.get('name')!r} calls {target!r}, which is not an allowed function")
            elif op == "call_function" and target == "getattr" and (len(node.get("args", [])) != 2
                                                                    or node["args"][1] not in _TENSOR_ATTRS):
                raise GraphFormatError(f"node {node.get('name')!r} reads attribute {node.get('args', [None])[1:]!r}: only "
                                       f"tensor attributes {sorted(_TENSOR_ATTRS)} are allowed")
            elif op == "call_method" and target not in METHODS:
                raise GraphFormatError(f"node {node.get('name')!r} calls method {target!r}, which is not allowed")
            elif op == "get_attr" and target not in keys:
                raise GraphFormatError(f"node {node.get('name')!r} reads {target!r}, which the graph does not store")
            elif op not in ("placeholder", "call_module", "call_function", "call_method", "get_attr"):
                raise GraphFormatError(f"node {node.get('name')!r} has unknown op {op!r}")
        if placeholders != len(self.inputs):
            raise GraphFormatError(f"the graph has {placeholders} inputs but describes {len(self.inputs)}")

    def config(self) -> dict[str, Any]:
        """The card's ``architecture`` (JSON)."""
        return {"kind": "graph", "format": GRAPH_FORMAT, "inputs": self.inputs, "modules": self.modules_spec,
                "tensors": self.tensor_spec, "nodes": self.nodes, "output": self.output, "head": self.head_spec,
                "features": self.features}

    def feature_layers(self) -> list[str]:
        """The module whose output is the last hidden features (the input of the output layer), for an OOD density."""
        return [f"layers.{self.features}"] if self.features else []

    def split_inputs(self, x: Tensor) -> list[Tensor]:
        """A batch of rows ``(B, D)`` as the network's inputs (see the module docs)."""
        flat = x.reshape(x.shape[0], -1)
        if flat.shape[1] != self.in_features:
            raise ValueError(f"input rows have {flat.shape[1]} values, but this network expects {self.in_features} "
                             f"({' + '.join(str(s) for s in self.sizes)} for inputs "
                             f"{', '.join(i['name'] for i in self.inputs)})")
        parts, start = [], 0
        for spec, size in zip(self.inputs, self.sizes, strict=True):
            parts.append(flat[:, start:start + size].reshape(x.shape[0], *spec["shape"]))
            start += size
        return parts

    def forward(self, x: Tensor) -> Tensor:
        inputs = iter(self.split_inputs(x))
        env: dict[str, Any] = {}
        for node in self.nodes:
            op, target = node["op"], node["target"]
            if op == "placeholder":
                env[node["name"]] = next(inputs)
                continue
            if op == "get_attr":
                env[node["name"]] = getattr(self.attr_tensors, self._tensor_keys[target])
                continue
            args = decode_arg(node.get("args", []), env)
            kwargs = decode_arg({"dict": node.get("kwargs", {})}, env)
            if op == "call_module":
                value = self.layers.get_submodule(target)(*args, **kwargs)  # the engine's replica: its own children
            elif op == "call_function":
                value = FUNCTIONS[target](*args, **kwargs)
            else:  # call_method
                if not args or not isinstance(args[0], Tensor):
                    raise GraphFormatError(f"node {node['name']!r}: method {target!r} called on a non-tensor")
                value = getattr(args[0], target)(*args[1:], **kwargs)
            env[node["name"]] = value
        return self.apply_head(decode_arg(self.output, env))

    def apply_head(self, out: Any) -> Tensor:
        """The task's output from the graph's output (see the class docs)."""
        if isinstance(out, list | tuple):
            out = torch.cat([t.reshape(t.shape[0], -1) for t in out], dim=1)
        if out.dim() == 1:
            out = out.unsqueeze(1)
        if self.head is Task.CLASSIFICATION:
            if out.shape[1] == 1:  # one logit z (binary): logits [0, z], so softmax gives sigmoid(z) for class 1
                out = torch.cat([torch.zeros_like(out), out], dim=1)
            return out / self.temperature
        columns = self.head_spec["columns"]
        if self.head is Task.HOMOSCEDASTIC:
            return out[:, columns[0]]
        return torch.stack([out[:, columns[0]], out[:, columns[1]]], dim=-1)
