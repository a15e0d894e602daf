"""A calibrated model end to end: stored and checked like the weights, served as OOD scores, conformal sets and
abstentions in both modes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mcdrop.nets.artifacts import ArtifactError, load_artifact
from mcdrop.schemas import PredictRequest
from mcdrop.serving.errors import InvalidRequest
from mcdrop.serving.predictor import Predictor
from tests.tiny_models import blobs, write_calibrated_model


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    return write_calibrated_model(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def predictor(path):
    return Predictor([str(path)])


def test_calibration_is_stored_checked_and_described(path, tmp_path):
    artifact = load_artifact(path)
    card = artifact.card
    assert card.calibration_file == "calibration.safetensors" and len(card.calibration_sha256) == 64
    assert card.calibration["rows"]["calibration"] > 0
    assert card.calibration["feature_layers"] == ["net.0", "net.1", "net.3", "net.4"]  # Linear and ReLU of each layer
    assert card.calibration["density_combine"] == "mean" and artifact.calibration.density.combine == "mean"
    assert card.calibration["density_energy_layer"] == "net.6"  # the last Linear: the logits
    assert artifact.calibration.feature_layers == ["net.0", "net.1", "net.3", "net.4", "net.6"]
    assert artifact.calibration.supports("coverage", "mc") and artifact.calibration.supports("selective_risk", "deterministic")
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(path, broken)
    data = bytearray((broken / "calibration.safetensors").read_bytes())
    data[-1] ^= 1
    (broken / "calibration.safetensors").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"calibration\.safetensors does not match its card"):
        load_artifact(broken)
    card_json = json.loads((path / "card.json").read_text())
    card_json["calibration"]["feature_layers"] = [*card.calibration["feature_layers"], "net.9"]
    (broken / "card.json").write_text(json.dumps(card_json))
    (broken / "calibration.safetensors").write_bytes((path / "calibration.safetensors").read_bytes())
    with pytest.raises(ArtifactError, match="does not fit the calibration"):
        load_artifact(broken)
    card_json["calibration"]["feature_layers"] = card.calibration["feature_layers"]
    card_json["calibration"]["density_energy_layer"] = "net.9"
    (broken / "card.json").write_text(json.dumps(card_json))
    with pytest.raises(ArtifactError, match=r"the calibration reads the outputs of \['net.9'\], which are not modules"):
        load_artifact(broken)
    for wrong, message in (("net.4", r"density_energy_layer is 'net.4', but the architecture's logits are the "
                                      r"outputs of 'net.6'"), (["net.6"], "must be module names")):
        card_json["calibration"]["density_energy_layer"] = wrong
        (broken / "card.json").write_text(json.dumps(card_json))
        with pytest.raises(ArtifactError, match=message):
            load_artifact(broken)


def request(**fields) -> PredictRequest:
    x, _ = blobs(200, seed=5, shift=0.1)
    return PredictRequest.model_validate({"inputs": x.numpy(), "n_samples": 20, "seed": 3, **fields}, strict=False)


@pytest.mark.parametrize("mode", ["mc", "deterministic"])
def test_answers_carry_ood_scores_sets_and_abstentions(predictor, mode):
    result = predictor.predict(request(mode=mode, coverage=0.9))
    preds = result.predictions
    assert all(p.ood_score is not None and p.abstain is not None for p in preds)
    assert all(set(p.prediction_set) <= {0, 1, 2, 3} for p in preds)
    assert all([["a", "b", "c", "d"][c] for c in p.prediction_set] == p.prediction_set_names for p in preds)
    assert all(p.abstain == bool(p.abstain_reasons) for p in preds)
    sizes = result.columns["prediction_set"].sum(1)
    assert 0.5 < sizes.mean() < 4  # informative sets


def test_ood_score_is_the_same_in_both_modes_and_flags_far_inputs(predictor):
    mc = predictor.predict(request())
    det = predictor.predict(request(mode="deterministic"))
    np.testing.assert_array_equal(mc.columns["ood_score"], det.columns["ood_score"])
    far = predictor.predict_array(np.full((5, 8), 5.0), n_samples=10, seed=0)
    assert far.columns["abstain_out_of_distribution"].all()
    assert (far.columns["ood_score"] > np.quantile(mc.columns["ood_score"], 0.99)).all()


def test_requests_choose_their_own_risk_or_coverage(predictor):
    strict = predictor.predict(request(selective_risk=0.01)).columns["abstain_uncertain"].mean()
    loose = predictor.predict(request(selective_risk=0.3)).columns["abstain_uncertain"].mean()
    assert strict >= loose
    half = predictor.predict(request(selective_coverage=0.5)).columns["abstain_uncertain"]
    assert 0.3 < 1 - half.mean() < 0.7  # about half of inputs like the calibration ones are answered


def test_sets_grow_with_coverage_and_keyed_uniforms_make_them_reproducible(predictor):
    small = predictor.predict(request(coverage=0.5, set_method="aps")).columns["prediction_set"].sum(1).mean()
    large = predictor.predict(request(coverage=0.99, set_method="aps")).columns["prediction_set"].sum(1).mean()
    assert large > small
    a = predictor.predict(request(coverage=0.9)).columns["prediction_set"]
    x = request().inputs
    alone = predictor.predict(PredictRequest(inputs=x[7:9], n_samples=20, seed=3, coverage=0.9, row_offset=7))
    np.testing.assert_array_equal(alone.columns["prediction_set"], a[7:9])


def test_a_request_at_another_n_is_noted(predictor):
    assert predictor.predict(request(n_samples=7)).notes and not predictor.predict(request()).notes


def test_an_uncalibrated_mode_or_task_is_refused_by_field(tmp_path_factory):
    from tests.tiny_models import write_tiny_models

    paths = write_tiny_models(tmp_path_factory.mktemp("plain"))
    plain = Predictor([str(paths["tiny-reg"])])
    with pytest.raises(InvalidRequest) as err:
        plain.check(PredictRequest(inputs=torch.zeros(1, 3).numpy(), coverage=0.9))
    assert err.value.field == "coverage"


def test_default_sets_always_name_a_class_and_randomised_ones_are_on_request(predictor):
    """A low coverage (below the tiny model's accuracy) is where randomised APS leaves sets empty; the default
    keeps the top class, and (for the same probabilities) its set does not depend on the seed."""
    default = predictor.predict(request(coverage=0.3, mode="deterministic")).columns
    sets = default["prediction_set"]
    assert sets.sum(1).min() >= 1 and sets[np.arange(len(sets)), default["predicted_class"]].all()
    again = predictor.predict(request(coverage=0.3, mode="deterministic", seed=99)).columns["prediction_set"]
    np.testing.assert_array_equal(sets, again)
    randomised = predictor.predict(request(coverage=0.3, set_method="aps_randomized")).columns["prediction_set"]
    assert (randomised.sum(1) == 0).any()


def test_a_calibration_from_before_non_randomised_sets_serves_only_the_randomised_ones(path, tmp_path):
    """Older calibration files stored randomised APS/RAPS scores under ``aps``/``raps``: they are read as the
    randomised methods, and a request for the new default is refused by field with what to do."""
    import shutil

    from safetensors.torch import load_file, save_file

    from mcdrop.nets.artifacts import sha256

    old = tmp_path / "old"
    shutil.copytree(path, old)
    tensors = load_file(str(old / "calibration.safetensors"))
    for key in [k for k in tensors if k.endswith(("aps", "raps"))]:
        del tensors[key]
    for key in [k for k in tensors if k.endswith("_randomized")]:
        tensors[key.removesuffix("_randomized")] = tensors.pop(key)
    save_file(tensors, str(old / "calibration.safetensors"))
    card = json.loads((old / "card.json").read_text())
    card["calibration_sha256"] = sha256(old / "calibration.safetensors")
    (old / "card.json").write_text(json.dumps(card))
    calibration = load_artifact(old).calibration
    assert calibration.supports("coverage", "mc", "aps_randomized") and not calibration.supports("coverage", "mc", "aps")
    served = Predictor([str(old)])
    with pytest.raises(InvalidRequest, match="recalibrate it or choose aps_randomized") as err:
        served.check(request(coverage=0.9))
    assert err.value.field == "set_method"
    assert served.predict(request(coverage=0.9, set_method="aps_randomized")).columns["prediction_set"].shape == (200, 4)


def test_calibration_without_the_energy_scores_the_layers_alone(path):
    """``energy=False`` fits what calibrations before the energy term fitted: no ``density_energy_layer``, the
    layers' scores alone, and the same layer densities as with it."""
    from mcdrop.training.calibrate import calibrate_classifier

    model = load_artifact(path).model
    x, y = blobs(900, seed=11, shift=0.1)
    parts = {"train": (x[:500], y[:500]), "temperature": (x[500:700], y[500:700]), "calibration": (x[700:], y[700:])}
    fits = {energy: calibrate_classifier(model, **parts, n_classes=4, n_samples=5, dim=8, energy=energy)
            for energy in (False, True)}
    assert "density_energy_layer" not in fits[False].meta and fits[False].density.energy_layer is None
    assert fits[True].meta["density_energy_layer"] == "net.6"
    assert fits[False].feature_layers == fits[True].feature_layers[:-1] == list(fits[True].density.layers)
    assert torch.equal(fits[False].density.shift, fits[True].density.shift[:-1])
