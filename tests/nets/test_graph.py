"""mcdrop.nets.graph: every table entry round-trips, and a stored graph can only name what the tables hold."""

from __future__ import annotations

import inspect

import pytest
import torch

from mcdrop.nets.graph import METHODS, MODULES, GraphFormatError, ImportedNet, decode_arg, module_args


def _instance(name: str) -> torch.nn.Module:
    cls = MODULES[name][0]
    special = {"LayerNorm": {"normalized_shape": [4]}, "RMSNorm": {"normalized_shape": [4]},
               "GroupNorm": {"num_groups": 2, "num_channels": 4}, "Unflatten": {"dim": 1, "unflattened_size": (2, 2)}}
    if name in special:
        return cls(**special[name])
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    return cls(**{p.name: 3 for p in params if p.default is inspect.Parameter.empty and p.kind is p.POSITIONAL_OR_KEYWORD})


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_layer_round_trips_through_its_arguments(name):
    module = _instance(name)
    args = module_args(module)
    rebuilt = MODULES[name][0](**args)
    assert module_args(rebuilt) == args
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in module.state_dict().items()}


def test_methods_are_tensor_methods():
    assert all(hasattr(torch.Tensor, m) for m in METHODS)


def test_arguments_decode_only_known_tags():
    env = {"a": torch.ones(2)}
    assert decode_arg({"tuple": [1, {"slice": [None, 2, None]}, {"ellipsis": True}]}, env) == (1, slice(None, 2), ...)
    assert decode_arg({"node": "a"}, env) is env["a"]
    assert decode_arg({"dtype": "float64"}, env) is torch.float64
    for bad, message in [({"node": "b"}, "not computed before"), ({"code": "import os"}, "unknown argument tag"),
                         ({"dtype": "object"}, "unknown dtype"), ({"a": 1, "b": 2}, "one-key")]:
        with pytest.raises(GraphFormatError, match=message):
            decode_arg(bad, env)


def _net(nodes, modules=(), **kw):
    spec = {"inputs": [{"name": "x", "shape": [3]}], "modules": list(modules), "head": {"task": "classification"},
            "nodes": [{"name": "x", "op": "placeholder", "target": "x"}, *nodes], "output": {"node": nodes[-1]["name"]}}
    return ImportedNet(**{**spec, **kw})


def test_a_graph_runs_and_refuses_what_is_not_in_the_tables():
    net = _net([{"name": "y", "op": "call_module", "target": "fc", "args": [{"node": "x"}], "kwargs": {}},
                {"name": "z", "op": "call_function", "target": "torch.nn.functional.relu", "args": [{"node": "y"}],
                 "kwargs": {}}], modules=[{"name": "fc", "type": "Linear", "args": {"in_features": 3, "out_features": 2,
                                                                                     "bias": True}}])
    assert net(torch.ones(4, 3)).shape == (4, 2)
    with pytest.raises(GraphFormatError, match="method 'numpy', which is not allowed"):
        _net([{"name": "y", "op": "call_method", "target": "numpy", "args": [{"node": "x"}], "kwargs": {}}])
    with pytest.raises(GraphFormatError, match=r"'builtins.eval', which is not an allowed function"):
        _net([{"name": "y", "op": "call_function", "target": "builtins.eval", "args": ["1"], "kwargs": {}}])
    with pytest.raises(GraphFormatError, match=r"type 'torch.nn.Module', which is not a supported layer"):
        _net([{"name": "y", "op": "call_module", "target": "m", "args": [], "kwargs": {}}],
             modules=[{"name": "m", "type": "torch.nn.Module", "args": {}}])
    with pytest.raises(GraphFormatError, match=r"reads attribute \['__class__'\]: only tensor attributes"):
        _net([{"name": "y", "op": "call_function", "target": "getattr", "args": [{"node": "x"}, "__class__"], "kwargs": {}}])
    with pytest.raises(ValueError, match="input rows have 4 values, but this network expects 3"):
        _net([{"name": "y", "op": "call_function", "target": "torch.relu", "args": [{"node": "x"}], "kwargs": {}}])(
            torch.ones(2, 4))
