"""Shifted copies of square grey test images, and what a classifier's default decision does on them (issue 22).

Kinds (two strengths each), named by what they were for when the shipped rules and models were made:

* design: translation by 3 / 5 pixels (left or right), Gaussian blur sigma 1.0 / 1.6, additive noise sigma 0.15 / 0.3
  (looked at while choosing ``bench/bench_shift.py``'s combined rule);
* held out: zoom 0.75 / 1.3, a 10 / 14-pixel black square, contrast 0.5 / 0.3, rotation by 15 / 30 degrees (either
  way), not looked at for the rule;
* unseen: pixelation to 14 / 10 pixels a side, gamma 2 / 3, a horizontal shear by 15 / 25 degrees (either way), an
  elastic distortion (a smooth random displacement field made as torchvision's ``ElasticTransform`` makes it,
  alpha 40 / 80, sigma 3, with a 19-pixel blur kernel where torchvision's would be 25): outside both the combined
  rule's design and the ``cnn-robust`` preset's training augmentation (:mod:`mcdrop.training.shift_augment`, which
  covers the design and held-out kinds).

:func:`shift_metrics` scores each set with the service's default decision (:mod:`mcdrop.serving.decisions`:
abstain when ``ood_score`` is above the card's threshold or ``1 - confidence`` above the card's threshold for its
default risk) and reports accuracy, the share answered and the error among answered inputs; ``python -m
mcdrop.training.shifts MODEL_DIR`` writes that table into the card (``metrics.covariate_shift``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision.transforms.v2.functional as F
from torchvision.transforms import InterpolationMode

__all__ = ["DESIGN", "HELD_OUT", "KINDS", "UNSEEN", "default_answered", "kind_of", "shift_metrics", "shifted",
           "signals"]

DESIGN = ("translate", "blur", "noise")
HELD_OUT = ("scale", "occlusion", "contrast", "rotate")
UNSEEN = ("pixelate", "gamma", "shear", "elastic")
KINDS = DESIGN + HELD_OUT + UNSEEN


def kind_of(name: str) -> str:
    """``"clean"``, ``"design"``, ``"held out"`` or ``"unseen"`` for a set named ``"<kind> <strength>"``."""
    base = name.split()[0]
    return "clean" if name == "clean" else "design" if base in DESIGN else "unseen" if base in UNSEEN else "held out"


def shifted(images: torch.Tensor, kind: str, strength: int, seed: int = 0) -> torch.Tensor:
    """``images`` ``(N, 28, 28)`` in [0, 1] -> a shifted copy; ``strength`` 1 (mild) or 2 (strong)."""
    g = torch.Generator().manual_seed(seed)
    x = images.unsqueeze(1)
    if kind == "translate":
        k = (3, 5)[strength - 1]
        sign = torch.randint(0, 2, (len(x),), generator=g) * 2 - 1
        out = torch.stack([F.affine(im, angle=0.0, translate=[int(s) * k, 0], scale=1.0, shear=[0.0])
                           for im, s in zip(x, sign, strict=True)])
    elif kind == "scale":
        s = (0.75, 1.3)[strength - 1]
        out = F.affine(x, angle=0.0, translate=[0, 0], scale=s, shear=[0.0])
    elif kind == "blur":
        sigma = (1.0, 1.6)[strength - 1]
        out = F.gaussian_blur(x, kernel_size=[7, 7], sigma=[sigma, sigma])
    elif kind == "contrast":
        out = F.adjust_contrast(x, (0.5, 0.3)[strength - 1])
    elif kind == "noise":
        out = (x + (0.15, 0.3)[strength - 1] * torch.randn(x.shape, generator=g)).clamp(0, 1)
    elif kind == "rotate":
        angle = (15.0, 30.0)[strength - 1]
        sign = torch.randint(0, 2, (len(x),), generator=g) * 2 - 1
        out = torch.stack([F.rotate(im, float(s) * angle) for im, s in zip(x, sign, strict=True)])
    elif kind == "pixelate":
        small = (14, 10)[strength - 1]
        out = F.resize(F.resize(x, [small, small], antialias=True), [28, 28],
                       interpolation=InterpolationMode.NEAREST)
    elif kind == "gamma":
        out = F.adjust_gamma(x, (2.0, 3.0)[strength - 1])
    elif kind == "shear":
        angle = (15.0, 25.0)[strength - 1]
        sign = torch.randint(0, 2, (len(x),), generator=g) * 2 - 1
        out = torch.stack([F.affine(im, angle=0.0, translate=[0, 0], scale=1.0, shear=[float(s) * angle, 0.0],
                                    interpolation=InterpolationMode.BILINEAR) for im, s in zip(x, sign, strict=True)])
    elif kind == "elastic":
        alpha, side = (40.0, 80.0)[strength - 1], x.shape[-1]
        field = F.gaussian_blur(torch.rand(len(x), 2, side, side, generator=g) * 2 - 1, kernel_size=[19, 19],
                                sigma=[3.0, 3.0]) * alpha / side  # torchvision's ElasticTransform, in [-1, 1] units
        out = torch.stack([F.elastic(im, d.permute(1, 2, 0).unsqueeze(0), fill=[0.0])
                           for im, d in zip(x, field, strict=True)])
    elif kind == "occlusion":
        size = (10, 14)[strength - 1]
        out = x.clone()
        corners = torch.randint(0, 28 - size + 1, (len(x), 2), generator=g)
        for im, (i, j) in zip(out, corners.tolist(), strict=True):
            im[:, i:i + size, j:j + size] = 0.0
    else:
        raise ValueError(f"unknown shift {kind!r}")
    return out.squeeze(1).clamp(0, 1)


def signals(engine: Any, calibration: Any, rows: torch.Tensor, n_samples: int, seed: int) -> dict[str, np.ndarray]:
    """A classifier's decision signals for ``rows`` ``(N, D)``: ``ood`` (``ood_score``), ``mi`` (MC mutual
    information), ``unc`` (``1 - confidence``) and ``pred`` (the predicted class), MC with ``n_samples`` passes."""
    from mcdrop.training.calibrate import features
    from mcdrop.uncertainty.prediction import predict
    from mcdrop.uncertainty.summaries import ClassificationSummary

    s = predict(engine, rows, n_samples=n_samples, seed=seed).summary
    if not isinstance(s, ClassificationSummary):
        raise TypeError("shift metrics need a classifier (predicted classes)")
    ood = calibration.density.score(features(engine, rows, calibration.feature_layers)).double().numpy()
    mi = s.mutual_information  # None only in deterministic mode, which this never asks for
    return {"ood": ood, "mi": np.full(len(rows), np.nan) if mi is None else mi.double().numpy(),
            "unc": 1 - s.confidence.double().numpy(), "pred": s.predicted_class.numpy()}


def default_answered(calibration: Any, sig: dict[str, np.ndarray]) -> np.ndarray:
    """The service's default decision (MC mode): answered where ``ood_score`` and ``1 - confidence`` are both at
    or below the card's thresholds."""
    return (sig["ood"] <= calibration.ood_threshold) & (sig["unc"] <= calibration.uncertainty_threshold("mc"))


def shift_metrics(artifact: Any, images: torch.Tensor, labels: np.ndarray, *, n_samples: int = 50, seed: int = 0,
                  kinds: tuple[str, ...] = KINDS) -> dict[str, dict[str, Any]]:
    """Per set (``clean`` and ``"<kind> <strength>"``): ``accuracy`` of the MC prediction, ``answered`` (the share
    not withheld by the default rule), ``error_among_answered`` (None when none is answered), ``answered_n`` and
    ``errors_n``.  ``images`` ``(N, H, W)`` in [0, 1]; ``artifact`` a loaded classifier with a calibration."""
    from mcdrop.sampling.engine import MCEngine

    engine = MCEngine(artifact.model)
    sets = [("clean", images)] + [(f"{k} {s}", shifted(images, k, s)) for k in kinds for s in (1, 2)]
    out = {}
    for name, x in sets:
        sig = signals(engine, artifact.calibration, x.reshape(len(x), -1), n_samples, seed)
        answered = default_answered(artifact.calibration, sig)
        wrong = sig["pred"] != labels
        n_ans, n_err = int(answered.sum()), int(wrong[answered].sum())
        out[name] = {"accuracy": float(1 - wrong.mean()), "answered": float(answered.mean()),
                     "error_among_answered": n_err / n_ans if n_ans else None,
                     "answered_n": n_ans, "errors_n": n_err}
    return out


def _percent(share: float | None) -> str:
    return "n/a" if share is None else f"{share:.1%}"


def main(argv: list[str] | None = None) -> int:
    """Write ``metrics.covariate_shift`` (the first ``--n`` Fashion-MNIST test images) into a model folder's card."""
    from mcdrop.nets.artifacts import load_artifact, render_card
    from mcdrop.training.data import load_fashion_mnist

    p = argparse.ArgumentParser(prog="python -m mcdrop.training.shifts", description=main.__doc__)
    p.add_argument("model", type=Path, help="a model folder (its card.json is rewritten)")
    p.add_argument("--n", type=int, default=2000, help="test images per set")
    p.add_argument("--samples", type=int, default=50)
    p.add_argument("--data-root", help="data root (default $MCDROP_DATA or ../shared/data)")
    args = p.parse_args(argv)
    artifact = load_artifact(args.model)
    x, y = load_fashion_mnist(args.data_root, train=False)
    table = shift_metrics(artifact, x[:args.n].float() / 255, y[:args.n].numpy(), n_samples=args.samples)
    card = artifact.card.model_copy(deep=True)
    card.metrics["covariate_shift"] = {"images": args.n, "n_samples": args.samples, "seed": 0, "sets": table}
    (args.model / "card.json").write_text(card.model_dump_json(indent=2) + "\n")  # as the model's writer does
    (args.model / "card.md").write_text(render_card(card))
    for name, row in table.items():
        print(f"{name}: accuracy {row['accuracy']:.3f}, answered {row['answered']:.1%}, error among answered "
              f"{_percent(row['error_among_answered'])} ({row['errors_n']}/{row['answered_n']})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
