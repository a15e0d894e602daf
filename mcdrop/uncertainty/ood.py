"""Out-of-distribution scores from a density over a model's deterministic hidden features (and its logits).

For each chosen hidden layer ``l``, the features ``h`` of the training set are projected on their top ``k``
principal directions, ``r = (h - c) P``, and modelled by class-conditional Gaussians with their own
(Ledoit-Wolf shrunk) covariances, as in DDU (Mukhoti et al. 2023) but in the ``k``-dimensional projection::

    nll_l(h) = -log sum_c pi_c N(r; m_c, S_c) - (k / 2) log 2 pi

Each layer's ``nll_l`` is standardised on held-out in-distribution data, ``z_l = (nll_l - mu_l) / sigma_l``, and
the served ``ood_score`` combines them (higher is more unusual; about 0 for typical inputs):

* ``mean`` (the default; the card's ``calibration.density_combine``): ``ood_score = (1 / L) sum_l z_l`` over the
  model's feature layers (mcdrop's MLP and CNN: every hidden layer's pre-activation and output, and each conv
  block's pooled maps).  Different shifts show in different layers (a far-shift input can collapse into a dense
  region of the last layer but not of the first); against ``max`` it is better on most proxy sets (BENCHMARKS §6,
  "Which layers, combined how");
* ``max`` (calibrations without ``density_combine``): ``ood_score = max_l z_l``, as first shipped, over fewer
  layers.

A classifier's calibration may add its logits as one more standardised score (the card's
``calibration.density_energy_layer`` names the module whose outputs are the logits ``f``): the energy
``E(x) = -log sum_c exp f_c(x)`` (Liu et al. 2020), standardised on the same held-out rows and combined with the
layers' ``z_l`` as one of them.  A density over hidden features cannot see how much evidence the head finds
for any class; the energy can (BENCHMARKS §6, "The logits' energy as one more layer").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, cast

import numpy as np
import torch
from torch import Tensor

__all__ = ["COMBINES", "FeatureDensity", "LayerDensity", "fit_feature_density", "fit_layer_density",
           "standardise_density"]

Combine = Literal["mean", "max"]
COMBINES: tuple[Combine, ...] = ("mean", "max")


@dataclass(frozen=True)
class LayerDensity:
    """Class-conditional Gaussians over one layer's projected features.

    Shapes: center ``(F,)``, projection ``(F, k)``, means ``(C, k)``, whiteners ``(C, k, k)`` (lower Cholesky
    factors ``L_c`` of the precisions, ``S_c^-1 = L_c L_c^T``), log_dets ``(C,)`` (``log det S_c``), log_priors ``(C,)``.
    """

    center: Tensor
    projection: Tensor
    means: Tensor
    whiteners: Tensor
    log_dets: Tensor
    log_priors: Tensor

    def nll(self, h: Tensor) -> Tensor:
        """Negative log density of each row. Shape: ``(B, F)`` -> ``(B,)``."""
        r = (h.to(self.center.dtype) - self.center) @ self.projection  # (B, k)
        k = r.shape[1]
        diff = r.unsqueeze(0) - self.means.unsqueeze(1)  # (C, B, k)
        mahalanobis = torch.bmm(diff, self.whiteners).square().sum(-1)  # (C, B)
        log_norm = 0.5 * (self.log_dets.unsqueeze(1) + k * math.log(2 * math.pi))
        log_joint = self.log_priors.unsqueeze(1) - 0.5 * mahalanobis - log_norm
        return -torch.logsumexp(log_joint, dim=0)

    def tensors(self, prefix: str) -> dict[str, Tensor]:
        return {f"{prefix}.{name}": getattr(self, name).contiguous() for name in
                ("center", "projection", "means", "whiteners", "log_dets", "log_priors")}

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor], prefix: str) -> LayerDensity:
        return cls(**{name: tensors[f"{prefix}.{name}"] for name in
                      ("center", "projection", "means", "whiteners", "log_dets", "log_priors")})


@dataclass(frozen=True)
class FeatureDensity:
    """Densities over several layers and the standardisation of their negative log densities.

    Attributes:
        layers: the feature layers' module names (as in ``model.named_modules()``).
        densities: one :class:`LayerDensity` per layer.
        shift, scale: mean and standard deviation of each layer's ``nll`` (then of the energy, with
            ``energy_layer``) on held-out in-distribution data.
        combine: how :meth:`score` combines the layers' standardised scores, ``"mean"`` or ``"max"``.
        energy_layer: the module whose outputs are the logits, whose energy is one more score; None for none.
    """

    layers: tuple[str, ...]
    densities: tuple[LayerDensity, ...]
    shift: Tensor
    scale: Tensor
    combine: Combine
    energy_layer: str | None = None

    def __post_init__(self) -> None:
        if self.combine not in COMBINES:
            raise ValueError(f"density combine must be one of {', '.join(COMBINES)}, but got {self.combine!r}")
        expected = len(self.layers) + (self.energy_layer is not None)
        if self.shift.shape != (expected,) or self.scale.shape != (expected,):
            raise ValueError(f"a density over {len(self.layers)} layers"
                             f"{' and the energy of ' + repr(self.energy_layer) if self.energy_layer is not None else ''} needs "
                             f"{expected} shifts and scales, but got {tuple(self.shift.shape)} and "
                             f"{tuple(self.scale.shape)}")

    @property
    def captured(self) -> list[str]:
        """The modules whose outputs :meth:`score` reads: the feature layers, then the logits' module if any."""
        return [*self.layers, *([self.energy_layer] if self.energy_layer is not None else [])]

    def raw_scores(self, features: dict[str, Tensor]) -> Tensor:
        """Each layer's ``nll``, then the energy ``-logsumexp(f)`` with ``energy_layer``. Shape: ``(B, L[+1])``."""
        cols = [d.nll(features[name].flatten(1)) for name, d in zip(self.layers, self.densities, strict=True)]
        if self.energy_layer is not None:
            cols.append(-torch.logsumexp(features[self.energy_layer].flatten(1).to(self.shift.dtype), 1))
        return torch.stack(cols, 1)

    def layer_scores(self, features: dict[str, Tensor]) -> Tensor:
        """Standardised scores, ``(raw - mu) / sigma``. Shape: features ``{layer: (B, F_l)}`` -> ``(B, L[+1])``."""
        return (self.raw_scores(features) - self.shift) / self.scale

    def score(self, features: dict[str, Tensor]) -> Tensor:
        """The OOD score, ``mean_l`` or ``max_l`` of ``(nll_l - mu_l) / sigma_l`` (the energy one of the ``l``
        with ``energy_layer``). Shape: ``(B,)``."""
        z = self.layer_scores(features)
        return z.mean(1) if self.combine == "mean" else z.amax(1)

    def tensors(self) -> dict[str, Tensor]:
        out = {"density.shift": self.shift, "density.scale": self.scale}
        for i, d in enumerate(self.densities):
            out.update(d.tensors(f"density.{i}"))
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor], layers: list[str], combine: str,
                     energy_layer: str | None = None) -> FeatureDensity:
        """The density stored by :meth:`tensors`; ``combine`` and ``energy_layer`` are the card's
        (``calibration.density_combine``, ``calibration.density_energy_layer``)."""
        densities = tuple(LayerDensity.from_tensors(tensors, f"density.{i}") for i in range(len(layers)))
        return cls(tuple(layers), densities, tensors["density.shift"], tensors["density.scale"],
                   cast(Combine, combine), energy_layer)


def fit_layer_density(h: Tensor, labels: Tensor, n_classes: int, dim: int = 128) -> LayerDensity:
    """Fit :class:`LayerDensity` to features ``h`` ``(N, F)`` of classes ``labels`` ``(N,)``.

    The projection keeps the top ``min(dim, F)`` principal directions of the centred features; each class's
    covariance in it is the Ledoit-Wolf shrinkage estimate (scikit-learn), so it is well conditioned however
    few members a class has.  Fitting uses float64; the result is float32.
    """
    from sklearn.covariance import ledoit_wolf

    x = h.flatten(1).double().numpy()
    y = labels.numpy()
    center = x.mean(0)
    cov = np.cov(x - center, rowvar=False)
    _, eigvecs = np.linalg.eigh(cov)
    k = min(dim, x.shape[1])
    projection = eigvecs[:, ::-1][:, :k].copy()
    r = (x - center) @ projection
    means, whiteners, log_dets, counts = [], [], [], []
    for c in range(n_classes):
        rc = r[y == c]
        if len(rc) < 2:
            raise ValueError(f"class {c} has {len(rc)} training rows; a density needs at least 2 per class")
        m = rc.mean(0)
        shrunk, _ = ledoit_wolf(rc - m, assume_centered=True)
        precision = np.linalg.inv(shrunk)
        whiteners.append(np.linalg.cholesky((precision + precision.T) / 2))
        log_dets.append(np.linalg.slogdet(shrunk)[1])
        means.append(m)
        counts.append(len(rc))
    t = lambda a: torch.tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
    priors = np.asarray(counts, dtype=np.float64) / sum(counts)
    return LayerDensity(t(center), t(projection), t(means), t(whiteners), t(log_dets), t(np.log(priors)))


def fit_feature_density(train: dict[str, Tensor], labels: Tensor, held_out: dict[str, Tensor], n_classes: int,
                        dim: int = 128, combine: Combine = "mean", energy_layer: str | None = None) -> FeatureDensity:
    """Fit a density per layer of ``train`` (except ``energy_layer``) and standardise each, and the energy of
    ``energy_layer``'s logits, on ``held_out`` (:func:`standardise_density`). Shapes: ``{layer: (N, F_l)}``,
    labels ``(N,)``."""
    layers = tuple(name for name in train if name != energy_layer)
    densities = tuple(fit_layer_density(train[name], labels, n_classes, dim) for name in layers)
    return standardise_density(layers, densities, held_out, combine, energy_layer)


def standardise_density(layers: tuple[str, ...], densities: tuple[LayerDensity, ...], held_out: dict[str, Tensor],
                        combine: Combine = "mean", energy_layer: str | None = None) -> FeatureDensity:
    """The :class:`FeatureDensity` of fitted layer ``densities`` (and the energy of ``energy_layer``'s logits),
    each score standardised by its mean and standard deviation on ``held_out`` (in-distribution rows the densities
    were not fitted on)."""
    unit = torch.ones(len(layers) + (energy_layer is not None))
    raw_density = FeatureDensity(layers, densities, unit - 1, unit, combine, energy_layer)
    missing = [name for name in raw_density.captured if name not in held_out]
    if missing:
        raise ValueError(f"the held-out features lack the outputs of {missing}")
    raw = raw_density.raw_scores(held_out)
    return FeatureDensity(layers, densities, raw.mean(0), raw.std(0).clamp_min(1e-6), combine, energy_layer)
