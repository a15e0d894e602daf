"""Imported models through the real doors: a `bentoml serve` subprocess called by the client, and `mcdrop score` on
files; the samples are MCEngine's on the original module, GET /models describes each imported model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mcdrop
from mcdrop.cli.main import main
from mcdrop.client import APIError, Client
from mcdrop.sampling.engine import MCEngine
from tests.nets.zoo import Original, case, flat
from tests.server import running_server
from tests.tolerances import assert_outputs_close, assert_probabilities_close

SERVED = {"skip_cnn": False, "two_inputs_regressor": True, "heteroscedastic": False}  # name: functional dropout


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    out = {}
    for name in SERVED:
        model, example, kwargs = case(name)
        mcdrop.export_model(model, root / name, example_input=example, **kwargs)
        out[name] = (model, example, kwargs, root / name)
    return out


def _want(name, folders, n=20, seed=5):
    model, example, kwargs, _ = folders[name]
    x = flat(example)
    return x, MCEngine(Original(model, example, kwargs), functional_dropout=SERVED[name]).sample(x, n, seed=seed)


@pytest.mark.integration
@pytest.mark.slow
def test_a_real_server_serves_imported_models_with_the_original_samples(folders):
    models = ",".join(str(folders[name][3]) for name in SERVED)
    with running_server(env={"MCDROP_SERVE_MODELS": models, "MCDROP_THREADS": "1"}) as url, Client(url) as client:
        listing = client.models()
        assert [c.name for c in listing.models] == list(SERVED) and listing.default == "skip_cnn"
        cnn = listing.card("skip_cnn")
        assert (cnn.task, cnn.input_size, cnn.class_names, cnn.input_shape) == ("classification", 72, ["0", "1", "2"],
                                                                                 [2, 6, 6])
        assert cnn.cost and cnn.cost > 0 and cnn.architecture["kind"] == "graph"
        assert listing.card("two_inputs_regressor").input_size == 16
        assert listing.card("heteroscedastic").task == "heteroscedastic"
        for name in SERVED:
            x, want = _want(name, folders)
            answer = client.predict(x.numpy(), model=name, seed=5, n_samples=20, return_samples=True)
            assert_outputs_close(np.asarray(answer.samples), want.numpy(), err_msg=name)
        with pytest.raises(APIError, match="expects 16 features per row") as err:  # a 4xx naming the field
            client.predict(np.zeros((1, 15), dtype=np.float32), model="two_inputs_regressor")
        assert err.value.status == 400 and err.value.field == "inputs"


def test_mcdrop_score_on_an_imported_folder(folders, tmp_path):
    for name in ("skip_cnn", "heteroscedastic"):
        x, want = _want(name, folders)
        np.save(tmp_path / "x.npy", x.numpy())
        out = tmp_path / f"{name}.npz"
        assert main(["score", str(tmp_path / "x.npy"), "-o", str(out), "--model", str(folders[name][3]), "--seed", "5",
                     "--samples", "20", "--quiet"]) == 0
        got = np.load(out)
        if name == "skip_cnn":
            probs = torch.softmax(want, -1).mean(0).numpy()
            assert_probabilities_close(got["probabilities"], probs)
        else:
            assert_outputs_close(got["mean"], want[..., 0].mean(0).numpy())
