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
import torch
from torch import Tensor

from mcdrop.core import conformal, selective
from mcdrop.core.calibration import Calibration
from mcdrop.core.engine import MCEngine
from mcdrop.core.prediction import predict
from mcdrop.request import Mode
from mcdrop.schemas import ModelCard
from mcdrop.training.calibrate import features

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
    """Write the classifier's plots into ``out``; return the page's sections (figures and numbers)."""
    plt = _pyplot()
    engine = MCEngine(model)
    labels = y.numpy()
    runs = {mode: predict(engine, x, mode=mode, n_samples=n_samples, seed=seed).summary for mode in Mode}
    probs = {mode: s.probabilities.double().numpy() for mode, s in runs.items()}  # type: ignore[union-attr]
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
    panels = [("confidence (MC)", mc.confidence.numpy(), None),  # type: ignore[union-attr]
              ("mutual information (MC, nats)", mc.mutual_information.numpy(), None),  # type: ignore[union-attr]
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
                     "numbers": {"mean MI": f"{mc.mutual_information.mean():.4f}",  # type: ignore[union-attr]
                                 **({"OOD threshold": f"{calibration.ood_threshold:.3f}"} if calibration else {})},
                     "text": "Most test images are confidently classified; the OOD threshold passes "
                             f"{calibration.meta.get('ood_tpr', 0.95):.0%} of held-out in-distribution images."
                     if calibration else ""})

    fig, ax = plt.subplots(figsize=(4.8, 3.8))
    numbers = {}
    for mode, color in ((Mode.DETERMINISTIC, DET_COLOR), (Mode.MC, MC_COLOR)):
        u = 1 - probs[mode].max(1)
        wrong = (probs[mode].argmax(1) != labels).astype(float)
        curve = selective.risk_coverage(u, wrong, points=50)
        ax.plot([c for c, _, _ in curve], [r for _, r, _ in curve], color=color, label=mode.value)
        if calibration is not None and mode.value in calibration.selective:
            t = calibration.uncertainty_threshold(mode)
            answered = u <= t
            risk = float(wrong[answered].mean()) if answered.any() else 0.0
            ax.plot([answered.mean()], [risk], marker="*", ms=12, color=color)
            numbers[f"default abstention ({mode.value})"] = f"answers {answered.mean():.1%}, error rate {risk:.2%}"
    if calibration is not None:
        ax.axhline(calibration.default_risk, color="grey", ls=":", lw=1, label=f"target risk {calibration.default_risk:.0%}")
    ax.set(xlabel="coverage (share of inputs answered)", ylabel="error rate among answered", title="Risk-coverage",
           xlim=(0, 1))
    ax.legend(fontsize=8)
    sections.append({"title": "Abstention", "figure": _save(fig, out / "risk_coverage.png"), "numbers": numbers,
                     "text": "Answering only the most confident inputs lowers the error rate; the stars are the "
                             "card's default thresholds, chosen on the calibration split."})

    if proxies:
        mi_in = mc.mutual_information.numpy()  # type: ignore[union-attr]
        scores_out: dict[str, dict[str, np.ndarray]] = {}
        for name, images in proxies.items():
            s = predict(engine, images, n_samples=n_samples, seed=seed + 1).summary
            scores_out[name] = {"mutual information": s.mutual_information.numpy()}  # type: ignore[union-attr]
            if ood_in is not None:
                scores_out[name]["OOD score"] = calibration.density.score(  # type: ignore[union-attr]
                    features(engine, images, calibration.feature_layers)).numpy()  # type: ignore[union-attr]
        shown = "characters" if "characters" in proxies else next(iter(proxies))
        kinds = ["OOD score", "mutual information"] if ood_in is not None else ["mutual information"]
        fig, axes = plt.subplots(1, len(kinds) + 1, figsize=(4.2 * (len(kinds) + 1), 3.4))
        for ax, kind in zip(axes[:-1], kinds, strict=True):
            inside = ood_in if kind == "OOD score" else mi_in
            bins = np.histogram_bin_edges(np.concatenate([inside, scores_out[shown][kind]]), bins=60)
            ax.hist(inside, bins=bins, alpha=0.6, density=True, color=MC_COLOR, label="Fashion-MNIST test")
            ax.hist(scores_out[shown][kind], bins=bins, alpha=0.6, density=True, color=OOD_COLOR, label=f"proxy: {shown}")
            ax.set(xlabel=kind, ylabel="density", title=f"In vs out: {kind}")
            ax.legend(fontsize=8)
        ax = axes[-1]
        numbers = {}
        main = "OOD score" if ood_in is not None else "mutual information"
        for name, kinds_out in scores_out.items():
            inside = ood_in if main == "OOD score" else mi_in
            fpr, tpr = _roc(inside, kinds_out[main])
            auc = float(np.trapezoid(tpr, fpr))
            ax.plot(fpr, tpr, label=f"{name} (AUROC {auc:.3f})")
            numbers[f"AUROC {name} ({main})"] = f"{auc:.3f}"
        ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1)
        ax.set(xlabel="false-positive rate (Fashion-MNIST flagged)", ylabel="true-positive rate (proxy flagged)",
               title=f"ROC of the {main}")
        ax.legend(fontsize=7)
        sections.append({"title": "Out-of-distribution proxies", "figure": _save(fig, out / "ood.png"),
                         "numbers": numbers, "text": "Proxy sets made here (mcdrop.training.proxies); the held-back "
                         "set the service is judged on is not among them."})

    if calibration is not None and calibration.scores:
        levels = np.linspace(0.5, 0.99, 12)
        rows = torch.arange(len(y), dtype=torch.int64)
        u = conformal.keyed_uniforms(seed, rows)
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8.6, 3.6))
        numbers = {}
        p = torch.from_numpy(probs[Mode.MC])
        for method in conformal.METHODS:
            set_scores = conformal.set_scores(p, method, u, calibration.lam, calibration.k_reg)
            cov, size = [], []
            for level in levels:
                sets = set_scores <= calibration.conformal_threshold(Mode.MC, method, float(level))
                cov.append(float(sets[torch.arange(len(y)), y].double().mean()))
                size.append(float(sets.sum(1).double().mean()))
            ax1.plot(levels, cov, marker=".", label=method)
            ax2.plot(levels, size, marker=".", label=method)
            at = list(levels).index(min(levels, key=lambda v: abs(v - 0.9)))
            numbers[f"{method} at {levels[at]:.2f}"] = f"coverage {cov[at]:.3f}, mean size {size[at]:.2f}"
        ax1.plot([0.5, 1], [0.5, 1], color="grey", ls="--", lw=1)
        ax1.set(xlabel="requested coverage", ylabel="test coverage", title="Conformal coverage (MC)")
        ax2.set(xlabel="requested coverage", ylabel="mean set size (classes)", title="Conformal set size (MC)")
        ax1.legend(fontsize=8)
        ax2.legend(fontsize=8)
        sections.append({"title": "Conformal prediction sets", "figure": _save(fig, out / "conformal.png"),
                         "numbers": numbers, "text": "Coverage tracks the request (finite-sample guarantee); APS "
                         "and RAPS adapt the set size to the input's difficulty, LAC gives the smallest sets."})
    return {"model": card.name, "sections": sections}


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
            s = predict(engine, x, mode=mode, n_samples=n_samples, seed=seed, level=float(level)).summary
            observed.append(float(((target >= s.interval_low.double().numpy()) &  # type: ignore[union-attr]
                                   (target <= s.interval_high.double().numpy())).mean()))  # type: ignore[union-attr]
        ax.plot(levels, observed, marker="o", ms=3, color=color, label=f"{mode.value} (Gaussian mixture)")
        numbers[f"observed at 0.90 ({mode.value})"] = f"{np.interp(0.9, levels, observed):.3f}"
        if calibration is not None and calibration.supports("coverage", mode):
            s = predict(engine, x, mode=mode, n_samples=n_samples, seed=seed).summary
            mean, std = s.mean.double().numpy(), s.std.double().numpy()  # type: ignore[union-attr]
            conf_obs = [float((np.abs(target - mean) <= calibration.conformal_threshold(mode, "", float(lv)) * std).mean())
                        for lv in levels]
            ax.plot(levels, conf_obs, ls="--", color=color, label=f"{mode.value} (conformal)")
    ax.set(xlabel="requested interval level", ylabel=f"observed coverage ({what})", title="Interval calibration")
    ax.legend(fontsize=8)
    sections.append({"title": "Intervals", "figure": _save(fig, out / "interval_calibration.png"), "numbers": numbers,
                     "text": "Points above the diagonal are conservative intervals, below it overconfident ones."})
    s = predict(engine, x, n_samples=n_samples, seed=seed).summary
    mean, std = s.mean.double().numpy(), s.std.double().numpy()  # type: ignore[union-attr]
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
    """``index.html``: every section's figure beside its numbers, and the card's headline metrics."""
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
    path.write_text(page)
    return path
