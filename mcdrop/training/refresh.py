"""Recompute a model folder's conformal figures after the set methods changed, without retraining.

What changes, and only that: the conformal scores in ``calibration.safetensors`` (on the card's calibration
rows, with its ``mc_samples`` and calibration seed; :func:`~mcdrop.training.calibrate.conformal_tensors`), the
calibration rows' OOD scores (``ood.calibration_scores``, the drift monitor's reference) and the
card's ``test_conformal`` (Fashion-MNIST classifiers, on the 10,000 test images) or ``heldout_test_conformal``
(UCI regressors, on their held-out rows), measured by :func:`~mcdrop.training.calibrate.coverage_report` with
the card's ``evaluation_seed``, as ``mcdrop train`` and ``mcdrop evaluate`` do.  The weights, the OOD density and
threshold and the abstention data are kept; the card's sha256s are those of the files written.

With ``--recalibrate`` (Fashion-MNIST classifiers) the whole calibration is fitted again, as ``mcdrop train``
fits it (:func:`~mcdrop.training.classifier.calibrate_and_measure`: the OOD density over the model's current
``feature_layers()`` and the energy of its logits, combined as
:func:`~mcdrop.uncertainty.ood.fit_feature_density` combines them by default, its threshold, the conformal and
abstention data), and the card's ``test_conformal`` and ``ood_proxies`` are
measured again; the weights and temperature are kept.  The card's ``covariate_shift`` table is dropped, since
its decisions used the old OOD score: write it again with ``python -m mcdrop.training.shifts``.

Run ``python -m mcdrop.training.refresh models/fashion-mnist [--recalibrate] [--data-root DIR]``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mcdrop.nets.artifacts import load_artifact, save_model
from mcdrop.request import Mode
from mcdrop.sampling.engine import MCEngine
from mcdrop.schemas import ModelCard
from mcdrop.training.calibrate import conformal_tensors, coverage_report, features
from mcdrop.uncertainty.calibration import Calibration
from mcdrop.uncertainty.prediction import predict
from mcdrop.uncertainty.summaries import classification

__all__ = ["refresh_conformal"]


def _card_samples(metrics: dict[str, Any], prefix: str, default: int) -> int:
    for key in metrics:
        if key.startswith(prefix) and key[len(prefix):].isdigit():
            return int(key[len(prefix):])
    return default


def _calibration_rows(card: ModelCard, config: Any, n_train: int) -> torch.Tensor:
    """The calibration rows the card's training config gives, checked against the count its calibration records."""
    from mcdrop.training.classifier import split_indices

    rows = split_indices(n_train, config)["calibration"]
    if len(rows) != card.calibration["rows"]["calibration"]:
        raise ValueError(f"the card's training config gives {len(rows)} calibration rows, but its calibration "
                         f"says {card.calibration['rows']['calibration']}")
    return rows


def refresh_conformal(directory: str | Path, data_root: str | None = None,
                      log: Callable[[str], None] = lambda _: None, *, recalibrate: bool = False) -> ModelCard:
    """Rewrite ``directory``'s conformal scores and its card's conformal test figures, or with ``recalibrate``
    its whole calibration (see the module docs)."""
    from mcdrop.training.configs import ClassifierConfig
    from mcdrop.training.data import fashion_mnist_features, load_fashion_mnist, load_uci

    artifact = load_artifact(directory)
    card, model, calibration = artifact.card, artifact.model, artifact.calibration
    if calibration is None:
        raise ValueError(f"{artifact.directory} has no calibration: nothing conformal to refresh")
    metrics = dict(card.metrics)
    seed = int(metrics.get("evaluation_seed", 0))
    if recalibrate:
        if card.task != "classification":
            raise ValueError(f"{artifact.directory}: recalibrate refits Fashion-MNIST classifiers, not a "
                             f"{card.task} model")
        return _recalibrate(artifact, metrics, data_root, log)
    if card.task == "classification":
        config = ClassifierConfig.from_card(card.training)
        train_x, train_y = load_fashion_mnist(data_root, train=True)
        rows = _calibration_rows(card, config, len(train_y))
        x_cal, y_cal = fashion_mnist_features(train_x)[rows], train_y[rows]
        engine, n_cal, cal_seed = MCEngine(model), int(calibration.meta["mc_samples"]), int(calibration.meta["seed"])
        tensors = {k: v for k, v in calibration.tensors().items() if not k.startswith("conformal.")}
        for mode in Mode:
            summary = classification(predict(engine, x_cal, mode=mode, n_samples=n_cal, seed=cal_seed).summary)
            probs = summary.probabilities.double()
            tensors.update(conformal_tensors(probs, y_cal, mode, cal_seed))
        if calibration.density is not None:
            ood = calibration.density.score(features(engine, x_cal, calibration.feature_layers)).double().numpy()
            tensors["ood.calibration_scores"] = torch.from_numpy(np.sort(ood))
        calibration = Calibration(card.task, card.calibration, tensors, card.class_names)
        x, y = load_fashion_mnist(data_root, train=False)
        n = _card_samples(metrics, "test_mc_", 50)
        log(f"{card.name}: conformal scores on {len(rows)} calibration rows; coverage on {len(y)} test images, "
            f"MC N={n}, seed {seed}")
        metrics["test_conformal"] = coverage_report(calibration, model, (fashion_mnist_features(x), y), n_samples=n,
                                                    seed=seed)
    else:
        from mcdrop.training.uci import holdout_split

        holdout = card.training["holdout"]
        data = load_uci(str(getattr(card, "dataset", "")), data_root)
        test = holdout_split(len(data.y), holdout["fraction"], holdout["seed"])[2]
        xs, ys = torch.tensor(data.x[test], dtype=torch.float32), torch.tensor(data.y[test], dtype=torch.float32)
        n = min(int(card.training.get("samples", 2000)), 2000)
        log(f"{card.name}: coverage on {len(test)} held-out rows, MC N={n}, seed {seed}")
        metrics["heldout_test_conformal"] = coverage_report(calibration, model, (xs, ys), n_samples=n, seed=seed)
    fields = card.model_dump(mode="json")
    fields["metrics"] = metrics
    return save_model(model, artifact.directory, fields, calibration=calibration, calibration_meta=card.calibration)


def _recalibrate(artifact: Any, metrics: dict[str, Any], data_root: str | None,
                 log: Callable[[str], None]) -> ModelCard:
    from mcdrop.training.classifier import calibrate_and_measure
    from mcdrop.training.configs import ClassifierConfig
    from mcdrop.training.data import fashion_mnist_features, load_fashion_mnist

    card, model = artifact.card, artifact.model
    if card.calibration.get("source") == "mcdrop calibrate" or not card.training:
        raise ValueError(f"{artifact.directory} was not calibrated by mcdrop train on Fashion-MNIST: recalibrating "
                         "would refit it on other rows; use mcdrop calibrate with its own data")
    config = ClassifierConfig.from_card(card.training)
    train_x, train_y = load_fashion_mnist(data_root, train=True)
    test_x, test_y = load_fashion_mnist(data_root, train=False)
    _calibration_rows(card, config, len(train_y))
    n = _card_samples(metrics, "test_mc_", 50)
    if int(card.calibration.get("mc_samples", n)) != n:
        raise ValueError(f"{artifact.directory}: the calibration used {card.calibration['mc_samples']} MC passes and "
                         f"the card's test figures {n}; mcdrop train uses one number for both")
    calibrated, measured = calibrate_and_measure(model, config, fashion_mnist_features(train_x), train_y,
                                                 fashion_mnist_features(test_x), test_y, test_x, n, log=log)
    metrics.update(measured)
    if metrics.pop("covariate_shift", None) is not None:
        log(f"{card.name}: its covariate_shift table is dropped (old OOD score); python -m mcdrop.training.shifts "
            f"{artifact.directory} writes it again")
    fields = card.model_dump(mode="json")
    fields["metrics"] = metrics
    return save_model(model, artifact.directory, fields, calibration=calibrated)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mcdrop.training.refresh", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", type=Path, help="model folders to rewrite")
    p.add_argument("--recalibrate", action="store_true",
                   help="fit the whole calibration again (OOD density and threshold included), as mcdrop train does")
    p.add_argument("--data-root", help="data root (default $MCDROP_DATA or ../shared/data)")
    args = p.parse_args(argv)
    for directory in args.models:
        card = refresh_conformal(directory, args.data_root, log=print, recalibrate=args.recalibrate)
        print(f"{directory}: calibration sha256 {card.calibration_sha256}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
