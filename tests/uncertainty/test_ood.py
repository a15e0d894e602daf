"""Feature densities: the known Gaussian answer, standardisation, far points score high, storage round trip."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from mcdrop.uncertainty.ood import FeatureDensity, fit_feature_density, fit_layer_density
from tests.conftest import z_bound


def blobs(n: int, seed: int, d: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, size=n)
    centres = np.array([[4.0] * d, [-4.0] * d, [4.0, -4.0] * (d // 2)])
    return torch.tensor(centres[y] + rng.normal(size=(n, d))), torch.tensor(y)


def test_nll_is_the_mixture_density_it_fitted():
    h, y = blobs(3000, 0)
    density = fit_layer_density(h, y, 3, dim=6)  # full dimension: the projection is a rotation
    x = h[:5]
    r = ((x.double() - density.center.double()) @ density.projection.double()).numpy()
    mixture = np.zeros(5)
    for c in range(3):
        precision = (density.whiteners[c].double() @ density.whiteners[c].double().T).numpy()
        cov = np.linalg.inv(precision)
        mixture += math.exp(float(density.log_priors[c])) * stats.multivariate_normal(density.means[c].numpy(), cov).pdf(r)
    np.testing.assert_allclose(density.nll(x).double().numpy(), -np.log(mixture), rtol=1e-4)


def test_standardised_scores_are_typical_inside_and_high_outside():
    train, y = blobs(4000, 1)
    held, _ = blobs(2000, 2)
    fresh, _ = blobs(2000, 3)
    density = fit_feature_density({"h": train}, y, {"h": held}, 3, dim=4)
    inside = density.score({"h": fresh}).double()
    assert abs(float(inside.mean())) < z_bound() * float(inside.std()) / math.sqrt(len(inside)) + 0.05
    far = density.score({"h": torch.zeros(100, 6) + 0.0}).double()  # between the blobs
    assert (far > inside.quantile(0.99)).all()


def test_layers_combine_by_mean_or_max_and_round_trip():
    """Either combination is about 0 on fresh in-distribution rows and flags a row that is far in one layer only
    (the case the first, max-only score was built for); a card without ``density_combine`` reads as max."""
    from mcdrop.request import Task
    from mcdrop.uncertainty.calibration import Calibration

    a, y = blobs(4000, 4)
    b = a * 2 + 1
    fresh, _ = blobs(2000, 5)
    inside = {"l1": fresh, "l2": fresh * 2 + 1}
    one_far = {"l1": fresh[:100], "l2": torch.zeros(100, 6)}  # typical in l1, between the blobs in l2
    for combine in ("mean", "max"):
        density = fit_feature_density({"l1": a, "l2": b}, y, {"l1": a[:1000], "l2": b[:1000]}, 3, dim=3,
                                      combine=combine)
        typical = density.score(inside).double()
        z = density.layer_scores(inside)
        assert torch.equal(density.score(inside), z.mean(1) if combine == "mean" else z.amax(1))
        if combine == "mean":  # the mean of two standardised scores with mean 0
            assert abs(float(typical.mean())) < z_bound() * float(typical.std()) / math.sqrt(len(typical)) + 0.05
        assert (density.score(one_far) > typical.quantile(0.99)).all()
        again = FeatureDensity.from_tensors(density.tensors(), list(density.layers), combine)
        assert torch.equal(again.score(inside), density.score(inside))
    layers = list(density.layers)
    old = Calibration(Task.CLASSIFICATION, {"feature_layers": layers}, density.tensors())
    new = Calibration(Task.CLASSIFICATION, {"feature_layers": layers, "density_combine": "mean"}, density.tensors())
    assert old.density is not None and old.density.combine == "max"
    assert new.density is not None and new.density.combine == "mean"
    with pytest.raises(ValueError, match="density combine must be one of mean, max, but got 'sum'"):
        FeatureDensity.from_tensors(density.tensors(), layers, "sum")


def test_logit_energy_is_one_more_standardised_score():
    """With ``energy_layer`` the logits' energy ``-logsumexp(f)`` is standardised on the held-out rows like a layer:
    about 0 with unit spread on fresh in-distribution rows, high where the logits find little evidence for any
    class; it takes part in the mean, is stored with the density, and a mismatched shift/scale is refused."""
    h, y = blobs(4000, 6)
    held, y_held = blobs(2000, 7)
    fresh, y_fresh = blobs(2000, 8)
    rng = np.random.default_rng(9)

    def logits(labels: torch.Tensor, evidence: float) -> torch.Tensor:  # a confident head: the right logit high
        return torch.tensor(rng.normal(size=(len(labels), 3))) + evidence * torch.nn.functional.one_hot(labels, 3)

    density = fit_feature_density({"h": h}, y, {"h": held, "out": logits(y_held, 6.0)}, 3, dim=4, energy_layer="out")
    assert density.captured == ["h", "out"] and density.shift.shape == (2,)
    inside = {"h": fresh, "out": logits(y_fresh, 6.0)}
    z = density.layer_scores(inside).double()
    se = z_bound() / math.sqrt(len(fresh))  # z ~ (0, 1): its mean's standard error is 1 / sqrt(n)
    assert abs(float(z[:, 1].mean())) < se + 0.05 and abs(float(z[:, 1].std()) - 1) < 0.1
    no_evidence = {"h": fresh[:200], "out": logits(y_fresh[:200], 0.0)}  # typical features, a flat head
    assert float((density.layer_scores(no_evidence)[:, 1] > z[:, 1].quantile(0.99)).double().mean()) > 0.9
    typical = density.score(inside).double()
    assert float((density.score(no_evidence).double() > typical.quantile(0.95)).double().mean()) > 0.9
    equal = {"h": fresh[:2], "out": torch.full((2, 3), 1.5)}  # C equal logits a: E = -(a + log C)
    torch.testing.assert_close(density.raw_scores(equal)[:, 1].double(), torch.full((2,), -(1.5 + math.log(3))),
                               check_dtype=False)
    again = FeatureDensity.from_tensors(density.tensors(), list(density.layers), "mean", "out")
    assert torch.equal(again.score(inside), density.score(inside))
    with pytest.raises(ValueError, match="a density over 1 layers needs 1 shifts and scales, but got"):
        FeatureDensity.from_tensors(density.tensors(), list(density.layers), "mean")
    with pytest.raises(ValueError, match=r"the held-out features lack the outputs of \['out'\]"):
        fit_feature_density({"h": h}, y, {"h": held}, 3, dim=4, energy_layer="out")
