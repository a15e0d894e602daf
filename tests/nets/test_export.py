"""mcdrop.nets.export: every kind of network imports, loads without running code, and samples as MCEngine does on
the original module (same keyed masks; outputs within tests/tolerances.py)."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import mcdrop
from mcdrop.nets.artifacts import ArtifactError, load_artifact
from mcdrop.nets.export import ExportError
from mcdrop.nets.graph import ImportedNet
from mcdrop.nets.models import DropoutMLP
from mcdrop.sampling.engine import DropoutConfigError, MCEngine
from mcdrop.serving.predictor import Predictor
from tests.nets.zoo import CASES, Original, case, flat
from tests.tolerances import assert_outputs_close

FUNCTIONAL = {"residual_classifier", "two_inputs_regressor"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("imported")
    out = {}
    for name in CASES:
        model, example, kwargs = case(name)
        card = mcdrop.export_model(model, root / name, example_input=example, **kwargs)
        out[name] = (model, example, kwargs, card, root / name)
    return out


@pytest.mark.parametrize("name", CASES)
def test_imported_samples_equal_mcengine_on_the_original(exported, name):
    model, example, kwargs, card, folder = exported[name]
    x = torch.cat([flat(example), flat(example) * 0.5])  # 16 rows
    loaded = load_artifact(folder).model
    want = MCEngine(Original(model, example, kwargs), functional_dropout=name in FUNCTIONAL).sample(x, 20, seed=7)
    got = MCEngine(loaded).sample(x, 20, seed=7)
    assert_outputs_close(got.numpy(), want.numpy(), err_msg=name)
    assert not torch.equal(got[0], got[1]), "MC samples vary"
    # chunking and prefix sharing as for any model: the same samples in small chunks, replicated input, other rows
    small = MCEngine(loaded, element_budget=64, share_prefix=False).sample(x, 20, seed=7)
    assert_outputs_close(small.numpy(), want.numpy(), err_msg=f"{name} chunked")
    alone = MCEngine(loaded).sample(x[3:4], 20, seed=7, rows=torch.tensor([3]))
    assert_outputs_close(alone[:, 0].numpy(), want[:, 3].numpy(), err_msg=f"{name} row alone")
    # deterministic mode is the original's eval forward
    assert_outputs_close(MCEngine(loaded).deterministic(x).numpy(),
                         MCEngine(Original(model, example, kwargs)).deterministic(x).numpy())
    assert card.input_size == x.shape[1] and card.cost and card.cost > 0
    assert model.training is False, "the model's mode is left as it was"


def test_plain_mlps_become_dropout_mlps_for_the_fused_kernel(exported):
    from mcdrop.sampling import kernels

    for name in ("mlp_classifier", "mlp_regressor_b1", "mlp_regressor_k", "mlp_heteroscedastic_columns"):
        model = load_artifact(exported[name][4]).model
        assert isinstance(model, DropoutMLP), name
        assert (MCEngine(model)._fast_path() is not None) == (kernels.load() is not None), name
    for name in ("cnn_classifier", "residual_classifier", "two_inputs_regressor", "heteroscedastic", "binary_logit"):
        assert isinstance(load_artifact(exported[name][4]).model, ImportedNet), name


def test_cards_describe_the_model(exported):
    card = exported["mlp_classifier"][3]
    assert (card.task, card.input_size, card.class_names) == ("classification", 6, ["low", "mid", "high"])
    card = exported["two_inputs_regressor"][3]
    assert card.input_size == 4 + 12 and card.model_extra["inputs"] == [{"name": "table", "shape": [4]},
                                                                       {"name": "sequence", "shape": [2, 6]}]
    assert exported["cnn_classifier"][3].input_shape == [1, 8, 8]


@pytest.mark.parametrize("name", ["mlp_regressor_b1", "two_inputs_regressor", "heteroscedastic", "cnn_classifier"])
def test_the_predictor_serves_imported_models(exported, name):
    _, example, _, card, folder = exported[name]
    x = flat(example).numpy()
    result = Predictor([str(folder)]).predict_array(x, seed=3, n_samples=30)
    assert result.model == card.name
    key = "probabilities" if card.task == "classification" else "mean"
    assert np.isfinite(result.columns[key]).all() and len(result.columns[key]) == len(x)


def test_predict_accepts_a_b1_regressor_module():
    model, example, _ = case("mlp_regressor_b1")
    s = mcdrop.predict(MCEngine(model), example, task="homoscedastic", tau=4.0, n_samples=10, seed=0).summary
    assert s.mean.shape == (8,) and bool((s.variance >= 0.25).all())


# ---------------------------------------------------------------------------------------------- refusals


class WithAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 8)
        self.attn = nn.MultiheadAttention(8, 2)
        self.drop = nn.Dropout(0.2)

    def forward(self, x):
        h = self.fc(x).unsqueeze(0)
        return self.drop(self.attn(h, h, h)[0][0])


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        if x.sum() > 0:
            return F.dropout(self.fc(x), 0.5, self.training)
        return self.fc(x)


class UsesFFT(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return self.drop(self.fc(torch.fft.fft(x).real))


class TrainBranch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        h = self.fc(x)
        return self.drop(h * 0.9 if self.training else h)


def test_forward_branching_on_training_beyond_dropout_is_refused(tmp_path):
    with pytest.raises(ExportError, match="computes something different in train and eval mode"):
        mcdrop.export_model(TrainBranch(), tmp_path / "m", task="classification", example_input=torch.randn(3, 4))


def test_an_unsupported_layer_is_named_with_where_it_is_and_what_is_supported(tmp_path):
    with pytest.raises(ExportError, match=r"layer 'attn' \(MultiheadAttention\) cannot be imported.*supported layers.*Linear"):
        mcdrop.export_model(WithAttention(), tmp_path / "m", task="classification", example_input=torch.randn(3, 4))
    with pytest.raises(ExportError, match=r"test_export.py:\d+ in forward: .*torch.fft.*fft"):
        mcdrop.export_model(UsesFFT(), tmp_path / "m", task="classification", example_input=torch.randn(3, 4))
    with pytest.raises(ExportError, match=r"cannot trace DataDependent.forward.*control flow"):
        mcdrop.export_model(DataDependent(), tmp_path / "m", task="classification", example_input=torch.randn(3, 4))
    assert not (tmp_path / "m").exists()


def test_a_model_without_active_dropout_gets_the_engine_guardrail(tmp_path):
    plain = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(DropoutConfigError, match="has no dropout module"):
        mcdrop.export_model(plain, tmp_path / "m", task="classification", example_input=torch.randn(3, 4))
    zero = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.0), nn.Linear(8, 2))
    with pytest.raises(DropoutConfigError, match="p = 0"):
        mcdrop.export_model(zero, tmp_path / "m", task="classification", example_input=torch.randn(3, 4))
    assert not (tmp_path / "m").exists()


def test_outputs_must_be_named_when_ambiguous(tmp_path):
    model, example, _ = case("mlp_regressor_k")
    with pytest.raises(ExportError, match="3 columns: say which one is the regression target with target="):
        mcdrop.export_model(model, tmp_path / "m", task="regression", tau=1.0, example_input=example)
    with pytest.raises(ExportError, match="noise precision tau"):
        mcdrop.export_model(model, tmp_path / "m", task="regression", target=0, example_input=example)


# ---------------------------------------------------------------------------------------------- safe loading


def test_loading_never_unpickles_a_crafted_file(exported, tmp_path):
    import shutil

    folder = tmp_path / "evil"
    shutil.copytree(exported["cnn_classifier"][4], folder)

    class Boom:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    (folder / "weights.safetensors").write_bytes(pickle.dumps({"w": Boom()}))
    with pytest.raises(ArtifactError, match=r"weights.safetensors does not match its card"):
        load_artifact(folder)
    card = json.loads((folder / "card.json").read_text())  # even with the card's hash updated to match
    from mcdrop.nets.artifacts import sha256

    card["weights_sha256"] = sha256(folder / "weights.safetensors")
    (folder / "card.json").write_text(json.dumps(card))
    with pytest.raises(ArtifactError, match=r"weights.safetensors is not a readable safetensors file"):
        load_artifact(folder)
    assert not (tmp_path / "pwned").exists()


def test_a_graph_naming_code_outside_the_tables_is_refused(exported, tmp_path):
    import shutil

    folder = tmp_path / "evil"
    shutil.copytree(exported["residual_classifier"][4], folder)
    card = json.loads((folder / "card.json").read_text())
    node = next(n for n in card["architecture"]["nodes"] if n["op"] == "call_function")
    node["target"] = "os.system"
    (folder / "card.json").write_text(json.dumps(card))
    with pytest.raises(ArtifactError, match=r"cannot be built: .*calls 'os.system', which is not an allowed function"):
        load_artifact(folder)
    card["architecture"]["nodes"] = [n for n in card["architecture"]["nodes"] if n["op"] != "call_function"]
    card["architecture"]["modules"][0]["type"] = "subprocess.Popen"
    (folder / "card.json").write_text(json.dumps(card))
    with pytest.raises(ArtifactError, match=r"type 'subprocess.Popen', which is not a supported layer"):
        load_artifact(folder)


def test_a_truncated_weights_file_is_refused_naming_it(exported, tmp_path):
    import shutil

    folder = tmp_path / "cut"
    shutil.copytree(exported["two_inputs_regressor"][4], folder)
    data = (folder / "weights.safetensors").read_bytes()
    (folder / "weights.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match=r"cut/weights.safetensors does not match its card"):
        load_artifact(folder)
