"""Issue 22 item 1, exploration (not shipped): a learned abstention rule over every signal the model has.

    python bench/bench_selector.py --model fashion-mnist-robust --n 10000

Signals per input: each layer's standardised density score and their mean, ``1 - confidence``, the margin between
the two largest mean probabilities, MC predictive entropy, mutual information and variation ratio (MC N = 50).
A logistic regression and a gradient-boosted classifier (scikit-learn) learn P(error) on the temperature split,
clean plus ``--copies`` copies changed by the training augmentation (:func:`mcdrop.training.shift_augment.
shift_augment`); the threshold is the largest whose Clopper-Pearson bound on the error among answered
calibration-split rows is <= 2% (clean rows: ``/clean``; clean and augmented: ``/mix``).  Printed per shifted set
of :mod:`mcdrop.training.shifts` (first ``--n`` test images): answered share, error among answered (errors /
answered), for the service's default rule and each learned one.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from mcdrop.nets.artifacts import load_artifact
from mcdrop.sampling.engine import MCEngine
from mcdrop.training.calibrate import features
from mcdrop.training.classifier import split_indices
from mcdrop.training.configs import ClassifierConfig
from mcdrop.training.data import fashion_mnist_features, load_fashion_mnist
from mcdrop.training.shift_augment import shift_augment
from mcdrop.training.shifts import KINDS, default_answered, kind_of, shifted
from mcdrop.uncertainty import selective
from mcdrop.uncertainty.prediction import predict
from mcdrop.uncertainty.summaries import classification


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="fashion-mnist-robust")
    p.add_argument("--n", type=int, default=2000, help="test images per shifted set")
    p.add_argument("--copies", type=int, default=3, help="augmented copies of each fitting row")
    p.add_argument("--samples", type=int, default=50)
    args = p.parse_args()
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    artifact = load_artifact(args.model)
    cal, engine = artifact.calibration, MCEngine(artifact.model)
    assert cal is not None and cal.density is not None, "a calibrated classifier is needed"

    def signals(rows: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        s = classification(predict(engine, rows, n_samples=args.samples, seed=0).summary)
        captured = features(engine, rows, cal.feature_layers)
        z = cal.density.layer_scores(captured).double().numpy()
        top2 = np.sort(s.probabilities.double().numpy(), 1)[:, -2:]
        unc = 1 - s.confidence.double().numpy()
        assert s.mutual_information is not None and s.variation_ratio is not None
        cols = np.column_stack([z, z.mean(1), unc, top2[:, 1] - top2[:, 0], s.predictive_entropy.double().numpy(),
                                s.mutual_information.double().numpy(), s.variation_ratio.double().numpy()])
        return cols, s.predicted_class.numpy(), unc, cal.density.score(captured).double().numpy()

    config = ClassifierConfig.from_card(artifact.card.training)
    train_x, train_y = load_fashion_mnist(None, train=True)
    parts = split_indices(len(train_y), config)
    xf = fashion_mnist_features(train_x)

    def augmented(part: str, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x, y = xf[parts[part]], train_y[parts[part]].numpy()
        cols, errors, copy = [], [], []
        for c in range(args.copies + 1):
            rows = x if c == 0 else shift_augment(x, torch.Generator().manual_seed(seed + c))
            f, pred, _, _ = signals(rows)
            cols.append(f)
            errors.append((pred != y).astype(int))
            copy.append(np.full(len(y), c))
        return np.vstack(cols), np.concatenate(errors), np.concatenate(copy)

    x_fit, e_fit, _ = augmented("temperature", 100)
    x_cal, e_cal, c_cal = augmented("calibration", 200)
    scaler = StandardScaler().fit(x_fit)
    learned = {"logit": LogisticRegression(max_iter=2000).fit(scaler.transform(x_fit), e_fit),
               "gbm": HistGradientBoostingClassifier(max_iter=200, learning_rate=0.05, max_leaf_nodes=15).fit(x_fit, e_fit)}

    def p_error(name: str, x: np.ndarray) -> np.ndarray:
        return learned[name].predict_proba(scaler.transform(x) if name == "logit" else x)[:, 1]

    thresholds = {}
    for name in learned:
        s = p_error(name, x_cal)
        thresholds[f"{name}/clean"] = (name, selective.risk_threshold(s[c_cal == 0], e_cal[c_cal == 0], 0.02, 0.05))
        thresholds[f"{name}/mix"] = (name, selective.risk_threshold(s, e_cal, 0.02, 0.05))
    test_x, test_y = load_fashion_mnist(None, train=False)
    images, labels = test_x[:args.n].float() / 255, test_y[:args.n].numpy()
    sets = [("clean", images)] + [(f"{k} {s}", shifted(images, k, s)) for k in KINDS for s in (1, 2)]
    print(f"{args.model}: {args.n} test images per set, MC N={args.samples}; fitted on {len(e_fit)} rows "
          f"(error rate {e_fit.mean():.3f}); logistic weights {np.round(learned['logit'].coef_[0], 2).tolist()}\n")
    rules = ["shipped", *thresholds]
    print("| set | kind | accuracy | " + " | ".join(rules) + " |")
    print("|---|---|---:|" + "---:|" * len(rules))
    for name, x in sets:
        f, pred, unc, ood = signals(x.reshape(len(x), -1))
        wrong = pred != labels
        answered = {"shipped": default_answered(cal, {"ood": ood, "unc": unc})}
        answered.update({rule: p_error(model, f) <= t for rule, (model, t) in thresholds.items()})
        cells = [f"{a.mean():.1%}, {wrong[a].mean() if a.any() else float('nan'):.1%} ({int(wrong[a].sum())}/{int(a.sum())})"
                 for a in answered.values()]
        print(f"| {name} | {kind_of(name)} | {1 - wrong.mean():.3f} | " + " | ".join(cells) + " |", flush=True)
    print(f"\n({time.perf_counter() - t0:.0f} s, 2 threads)")


if __name__ == "__main__":
    main()
