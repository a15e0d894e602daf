"""A report a person can look at: PNG plots (matplotlib) and one HTML page that shows them with the numbers.

Classifier (on its test images, MC with the card's N and deterministic): reliability diagram; histograms of
confidence, mutual information and the OOD score; risk-coverage curves with the default abstention point;
in- versus out-of-distribution score histograms on a proxy set and ROC curves on every proxy; conformal
coverage and mean set size by level.  Regressor (on rows it was not trained on): expected against observed
interval coverage (Gaussian mixture and conformal); residuals against the predicted standard deviation.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from mcdrop.io.atomic import atomic_write
from mcdrop.request import Mode
from mcdrop.sampling.engine import MCEngine
from mcdrop.schemas import ModelCard
from mcdrop.training.calibrate import LEVELS, coverage_report, features, ood_metrics, ood_scores
from mcdrop.uncertainty import conformal, selective
from mcdrop.uncertainty.calibration import Calibration
from mcdrop.uncertainty.prediction import predict
from mcdrop.uncertainty.summaries import classification, regression

__all__ = ["classifier_report", "regressor_report", "write_page"]

MC_COLOR, DET_COLOR, OOD_COLOR = "#1f77b4", "#ff7f0e", "#d62728"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 110, "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False,
                         "axes.spines.right": False, "font.size": 9})
    return plt


def _save(fig: Any, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, format="png")
    _pyplot().close(fig)
    return path.name


def _reliability(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    conf, pred = probs.max(1), probs.argmax(1)
    idx = np.clip(np.ceil(conf * bins).astype(int) - 1, 0, bins - 1)
    acc = np.array([(pred[idx == b] == labels[idx == b]).mean() if (idx == b).any() else np.nan for b in range(bins)])
    mean_conf = np.array([conf[idx == b].mean() if (idx == b).any() else np.nan for b in range(bins)])
    counts = np.bincount(idx, minlength=bins)
    return mean_conf, acc, counts


def _roc(inside: np.ndarray, outside: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    thresholds = np.unique(np.concatenate([inside, outside]))[::-1]
    tpr = np.array([(outside >= t).mean() for t in thresholds])
    fpr = np.array([(inside >= t).mean() for t in thresholds])
    return np.r_[0.0, fpr, 1.0], np.r_[0.0, tpr, 1.0]


def classifier_report(model: Any, card: ModelCard, calibration: Calibration | None, x: Tensor, y: Tensor,
                      proxies: dict[str, Tensor], out: Path, *, n_samples: int = 50, seed: int = 0) -> dict[str, Any]:
    """Write the classifier's plots into ``out``; return the page's sections (figures and numbers) and ``metrics``:
    ``test_conformal`` and ``ood_proxies`` as the card stores them (the same functions compute both)."""
    plt = _pyplot()
    engine = MCEngine(model)
    labels = y.numpy()
    runs = {mode: classification(predict(engine, x, mode=mode, n_samples=n_samples, seed=seed).summary) for mode in Mode}
    probs = {mode: s.probabilities.double().numpy() for mode, s in runs.items()}
    sections: list[dict[str, Any]] = []

    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="perfect calibration")
    numbers = {}
    for mode, color in ((Mode.DETERMINISTIC, DET_COLOR), (Mode.MC, MC_COLOR)):
        conf, acc, counts = _reliability(probs[mode], labels)
        keep = counts > 0
        ece = float(np.nansum(np.abs(acc - conf)[keep] * counts[keep]) / counts.sum())
        numbers[f"ECE ({mode.value})"] = f"{ece:.4f}"
        numbers[f"accuracy ({mode.value})"] = f"{(probs[mode].argmax(1) == labels).mean():.4f}"
        ax.plot(conf[keep], acc[keep], marker="o", ms=4, color=color,
                label=f"{'MC, N=' + str(n_samples) if mode is Mode.MC else 'deterministic'} (ECE {ece:.3f})")
    ax.set(xlabel="confidence (mean probability of the predicted class)", ylabel="accuracy in the bin",
           title="Reliability diagram (15 bins)", xlim=(0, 1.01), ylim=(0, 1.01))
    ax.legend(loc="upper left", fontsize=8)
    sections.append({"title": "Calibration", "figure": _save(fig, out / "reliability.png"), "numbers": numbers,
                     "text": "Points on the diagonal mean the stated confidence is the observed accuracy."})

    mc = runs[Mode.MC]
    ood_in = calibration.density.score(features(engine, x, calibration.feature_layers)).numpy() \
        if calibration is not None and calibration.density is not None else None
    assert mc.mutual_information is not None  # an MC summary has it
    panels = [("confidence (MC)", mc.confidence.numpy(), None),
              ("mutual information (MC, nats)", mc.mutual_information.numpy(), None),
              ("OOD score", ood_in, calibration.ood_threshold if calibration else None)]
    panels = [p for p in panels if p[1] is not None]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.0 * len(panels), 3.2))
    for ax, (name, values, line) in zip(np.atleast_1d(axes), panels, strict=True):
        ax.hist(values, bins=50, color=MC_COLOR, alpha=0.85)
        if line is not None:
            ax.axvline(line, color=OOD_COLOR, lw=1.5, label=f"abstention threshold {line:.2f}")
            ax.legend(fontsize=8)
        ax.set(xlabel=name, ylabel="test images", yscale="log")
    sections.append({"title": "Uncertainty on the test images", "figure": _save(fig, out / "uncertainty.png"),
                     "numbers": {"mean MI": f"{mc.mutual_information.mean():.4f}",
                                 **({"OOD threshold": f"{calibration.ood_threshold:.3f}"} if calibration else {})},
                     "text": "Most test images are confidently classified; the OOD threshold passes "
                             f"{calibration.meta.get('ood_tpr', 0.95):.0%} of held-out in-distribution images."
                     if calibration else ""})

    measured = coverage_report(calibration, model, (x, y), n_samples=n_samples, seed=seed, summaries=runs) \
        if calibration is not None else {}
    measured_ood: dict[str, Any] = {}
    fig, ax = plt.subplots(figsize=(4.8, 3.8))
    numbers = {}
    for mode, color in ((Mode.DETERMINISTIC, DET_COLOR), (Mode.MC, MC_COLOR)):
        u = 1 - probs[mode].max(1)
        wrong = (probs[mode].argmax(1) != labels).astype(float)
        curve = selective.risk_coverage(u, wrong, points=50)
        ax.plot([c for c, _, _ in curve], [r for _, r, _ in curve], color=color, label=mode.value)
        if "abstention" in measured.get(mode.value, {}):
            point = measured[mode.value]["abstention"]
            ax.plot([point["coverage"]], [point["risk"]], marker="*", ms=12, color=color)
            numbers[f"uncertainty threshold alone ({mode.value})"] = (f"answers {point['coverage']:.1%}, error rate "
                                                                      f"{point['risk']:.2%}")
            if "with_ood_flag" in point:
                both = point["with_ood_flag"]
                numbers[f"service default, with the OOD flag ({mode.value})"] = (
                    f"answers {both['coverage']:.1%}, error rate {both['risk']:.2%}")
    if calibration is not None:
        ax.axhline(calibration.default_risk, color="grey", ls=":", lw=1, label=f"target risk {calibration.default_risk:.0%}")
    ax.set(xlabel="coverage (share of inputs answered)", ylabel="error rate among answered", title="Risk-coverage",
           xlim=(0, 1))
    ax.legend(fontsize=8)
    sections.append({"title": "Abstention", "figure": _save(fig, out / "risk_coverage.png"), "numbers": numbers,
                     "text": "Answering only the most confident inputs lowers the error rate; the stars are the "
                             "card's default thresholds (chosen on held-out training images), applied to the test "
                             "images."})

    if proxies:
        inside_all = ood_scores(engine, calibration, x, n_samples=n_samples, seed=seed, mc=runs[Mode.MC],
                                deterministic=runs[Mode.DETERMINISTIC])
        outside_all = {name: ood_scores(engine, calibration, images, n_samples=n_samples, seed=seed)
                       for name, images in proxies.items()}
        metrics = ood_metrics(inside_all, outside_all)
        measured_ood = metrics
        names = {"OOD score": "ood_score", "mutual information": "mc_mutual_information"}
        shown = "characters" if "characters" in proxies else next(iter(proxies))
        kinds = [k for k in ("OOD score", "mutual information") if names[k] in inside_all]
        fig, axes = plt.subplots(1, len(kinds) + 1, figsize=(4.2 * (len(kinds) + 1), 3.4))
        for ax, kind in zip(axes[:-1], kinds, strict=True):
            inside, outside = inside_all[names[kind]], outside_all[shown][names[kind]]
            bins = np.histogram_bin_edges(np.concatenate([inside, outside]), bins=60)
            ax.hist(inside, bins=bins, alpha=0.6, density=True, color=MC_COLOR, label="Fashion-MNIST test")
            ax.hist(outside, bins=bins, alpha=0.6, density=True, color=OOD_COLOR, label=f"proxy: {shown}")
            ax.set(xlabel=kind, ylabel="density", title=f"In vs out: {kind}")
            ax.legend(fontsize=8)
        ax = axes[-1]
        numbers = {}
        main = kinds[0]
        for name, scores_out in outside_all.items():
            fpr, tpr = _roc(inside_all[names[main]], scores_out[names[main]])
            auc = metrics[name][names[main]]["auroc"]
            ax.plot(fpr, tpr, label=f"{name} (AUROC {auc:.3f})")
            numbers[f"AUROC {name} ({main})"] = f"{auc:.3f}"
        ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1)
        ax.set(xlabel="false-positive rate (Fashion-MNIST flagged)", ylabel="true-positive rate (proxy flagged)",
               title=f"ROC of the {main}")
        ax.legend(fontsize=7)
        sections.append({"title": "Out-of-distribution proxies", "figure": _save(fig, out / "ood.png"),
                         "numbers": numbers, "text": "How well each score tells the test images from images the "
                         "model was not trained for: digits, letters, and flipped, rotated, inverted and noise "
                         "images made from the test set (mcdrop.training.proxies). An AUROC of 1 separates them "
                         "perfectly, 0.5 not at all; flipped and rotated clothes are the hardest."})

    if calibration is not None and calibration.scores:
        levels = [float(v) for v in np.linspace(0.5, 0.99, 12)]
        curves = coverage_report(calibration, model, (x, y), n_samples=n_samples, seed=seed, levels=levels,
                                 summaries=runs)[Mode.MC.value]
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8.6, 3.6))
        numbers = {}
        methods = [m for m in conformal.METHODS if f"{m}@{levels[0]:g}" in curves]
        for method in methods:
            ax1.plot(levels, [curves[f"{method}@{lv:g}"]["coverage"] for lv in levels], marker=".", label=method)
            ax2.plot(levels, [curves[f"{method}@{lv:g}"]["mean_size"] for lv in levels], marker=".", label=method)
        for method in methods:
            for level in LEVELS:
                at = measured[Mode.MC.value][f"{method}@{level:g}"]
                numbers[f"{method} at {level:g}"] = (f"coverage {at['coverage']:.4f}, mean size {at['mean_size']:.2f}, "
                                                     f"empty {at['empty']:.1%}")
        ax1.plot([0.5, 1], [0.5, 1], color="grey", ls="--", lw=1)
        ax1.set(xlabel="requested coverage", ylabel="test coverage", title="Conformal coverage (MC)")
        ax2.set(xlabel="requested coverage", ylabel="mean set size (classes)", title="Conformal set size (MC)")
        ax1.legend(fontsize=7)
        ax2.legend(fontsize=7)
        sections.append({"title": "Conformal prediction sets", "figure": _save(fig, out / "conformal.png"),
                         "numbers": numbers, "text": "A set holds the true class at least as often as requested "
                         "(on images like the calibration ones). aps, raps and lac always name the top class, so "
                         "below the model's accuracy they are the top class alone and cover more than asked; the "
                         "randomised variants hit the level more exactly by leaving some sets empty, at random."})
    return {"model": card.name, "sections": sections,
            "metrics": {"test_conformal": measured, "ood_proxies": measured_ood}}


def regressor_report(model: Any, card: ModelCard, calibration: Calibration | None, x: Tensor, y: Tensor, out: Path,
                     *, n_samples: int = 1000, seed: int = 0, what: str = "held-out rows") -> dict[str, Any]:
    """Write the regressor's plots into ``out``; return the page's sections."""
    plt = _pyplot()
    engine = MCEngine(model)
    target = y.double().numpy()
    sections: list[dict[str, Any]] = []
    levels = np.linspace(0.1, 0.99, 15)
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1)
    numbers = {}
    for mode, color in ((Mode.DETERMINISTIC, DET_COLOR), (Mode.MC, MC_COLOR)):
        observed = []
        for level in levels:
            s = regression(predict(engine, x, mode=mode, n_samples=n_samples, seed=seed, level=float(level)).summary)
            observed.append(float(((target >= s.interval_low.double().numpy()) &
                                   (target <= s.interval_high.double().numpy())).mean()))
        ax.plot(levels, observed, marker="o", ms=3, color=color, label=f"{mode.value} (Gaussian mixture)")
        numbers[f"observed at 0.90 ({mode.value})"] = f"{np.interp(0.9, levels, observed):.3f}"
        if calibration is not None and calibration.supports("coverage", mode):
            s = regression(predict(engine, x, mode=mode, n_samples=n_samples, seed=seed).summary)
            mean, std = s.mean.double().numpy(), s.std.double().numpy()
            conf_obs = [float((np.abs(target - mean) <= calibration.conformal_threshold(mode, "", float(lv)) * std).mean())
                        for lv in levels]
            ax.plot(levels, conf_obs, ls="--", color=color, label=f"{mode.value} (conformal)")
    ax.set(xlabel="requested interval level", ylabel=f"observed coverage ({what})", title="Interval calibration")
    ax.legend(fontsize=8)
    sections.append({"title": "Intervals", "figure": _save(fig, out / "interval_calibration.png"), "numbers": numbers,
                     "text": "Points above the diagonal are conservative intervals, below it overconfident ones."})
    s = regression(predict(engine, x, n_samples=n_samples, seed=seed).summary)
    mean, std = s.mean.double().numpy(), s.std.double().numpy()
    fig, ax = plt.subplots(figsize=(4.6, 4.0))
    ax.scatter(std, target - mean, s=8, alpha=0.6, color=MC_COLOR)
    grid = np.linspace(0, std.max() * 1.05, 50)
    for k, ls in ((1, "--"), (2, ":")):
        ax.plot(grid, k * grid, color="grey", ls=ls, lw=1, label=f"±{k} predicted std")
        ax.plot(grid, -k * grid, color="grey", ls=ls, lw=1)
    ax.set(xlabel="predicted standard deviation (MC)", ylabel="residual (observed - mean)", title="Residuals vs std")
    ax.legend(fontsize=8)
    rmse = float(np.sqrt(np.mean((target - mean) ** 2)))
    sections.append({"title": "Residuals", "figure": _save(fig, out / "residuals.png"),
                     "numbers": {"RMSE": f"{rmse:.3f}", "mean predicted std": f"{std.mean():.3f}",
                                 "rank correlation |residual| vs std":
                                     f"{_spearman(np.abs(target - mean), std):.3f}"},
                     "text": "Larger predicted spread should go with larger errors."})
    return {"model": card.name, "sections": sections}


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy import stats

    return float(stats.spearmanr(a, b).statistic)


def write_page(out: Path, report: dict[str, Any], card: ModelCard, notes: Sequence[str] = ()) -> Path:
    """``index.html``: every section's figure beside its numbers, and the card's headline metrics; ``metrics.json``:
    the report's figures in the card's layout (``test_conformal``, ``ood_proxies``), when it has them."""
    esc = html.escape
    parts = [f"<h1>{esc(card.name)} v{esc(card.version)}</h1>", f"<p>{esc(card.description)}</p>"]
    parts += [f"<p class=note>{esc(n)}</p>" for n in notes]
    for section in report["sections"]:
        rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(str(v))}</td></tr>" for k, v in section["numbers"].items())
        parts.append(f"<section><h2>{esc(section['title'])}</h2><div class=row><img src=\"{esc(section['figure'])}\" "
                     f"alt=\"{esc(section['title'])}\"><div><p>{esc(section.get('text', ''))}</p><table>{rows}</table>"
                     "</div></div></section>")
    metrics = json.dumps({k: v for k, v in card.metrics.items() if k.startswith("test_") or k.startswith("protocol")},
                         indent=1)[:6000]
    parts.append(f"<section><h2>Card metrics</h2><pre>{esc(metrics)}</pre></section>")
    page = ("<!doctype html><html><head><meta charset=utf-8><title>mcdrop report: " + esc(card.name) + "</title><style>"
            "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}"
            "section{border-top:1px solid #ddd;padding-top:.5em;margin-top:1.5em}.row{display:flex;gap:1.5em;"
            "align-items:flex-start;flex-wrap:wrap}img{max-width:100%;border:1px solid #eee}table{border-collapse:"
            "collapse;font-size:.9em}th{text-align:left;padding:.2em .8em .2em 0;font-weight:600}td{padding:.2em 0}"
            "pre{background:#f7f7f7;padding:.8em;font-size:.8em;overflow:auto}.note{color:#555}</style></head><body>"
            + "".join(parts) + "</body></html>")
    path = out / "index.html"
    atomic_write(path, page)
    if report.get("metrics"):
        atomic_write(out / "metrics.json", json.dumps(report["metrics"], indent=1) + "\n")
    return path
