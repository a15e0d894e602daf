"""Plot Concrete dropout's learned rates over training, one panel per layer, one colour per variant.

    .venv/bin/python bench/plot_concrete_rates.py --dataset energy -o bench/results/concrete-rates-energy.png \\
        bench/results/uci26-concrete-default.jsonl bench/results/uci26-concrete-floor.jsonl ...

Reads the ``trace`` of each split from resumable-run files (``bench/bench_uci_resumable.py --trace-every``):
the median over splits as a line, the range over splits as a band; the grid's rates (0.005-0.1) shaded; with
``--keep-best`` runs, the rates each split kept as dots at the epoch they were taken.
"""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from mcdrop.training.concrete_uci import ConcreteOptions, RateObjective
from mcdrop.training.uci_resume import load_results


def label(key: dict) -> str:
    """The run's options as :meth:`ConcreteOptions.label` names them, with beta-NLL and the epochs."""
    known = {f.name for f in fields(ConcreteOptions)}
    options = ConcreteOptions(**{k: v for k, v in key["options"].items() if k in known})
    parts = [options.label()]
    if key.get("beta_nll"):
        parts.append(f"β-NLL {key['beta_nll']:g}")
    if options.rate_objective is RateObjective.ELBO:
        parts.append("rates on the training loss (ELBO)")
    return ", ".join(parts) + f", {key['epochs']} epochs"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("-o", "--output", type=Path, required=True)
    args = ap.parse_args()
    runs: dict[str, list[dict]] = {}
    for f in args.files:
        for line in load_results(f):
            if line["key"]["dataset"] == args.dataset and line["key"]["protocol"] == "concrete" and line.get("trace"):
                runs.setdefault(label(line["key"]), []).append(line)
    if not runs:
        raise SystemExit(f"no traced Concrete runs of {args.dataset} in {', '.join(map(str, args.files))}")
    entries = len(runs) + sum(any(line["result"].get("rate_epoch") for line in lines) for lines in runs.values()) + 1
    height = 4.6 + 0.2 * entries
    fig, axes = plt.subplots(1, 2, figsize=(11, height), sharey=True)
    for (name, lines), colour in zip(runs.items(), plt.cm.tab10.colors, strict=False):
        trace = np.array([line["trace"] for line in lines])  # (splits, E, 3): epoch, p_input, p_hidden
        epochs = trace[0, :, 0]
        for ax, col in zip(axes, (1, 2), strict=True):
            ax.fill_between(epochs, trace[:, :, col].min(0), trace[:, :, col].max(0), color=colour, alpha=0.2)
            ax.plot(epochs, np.median(trace[:, :, col], 0), color=colour, label=f"{name}, {len(lines)} splits")
            kept = [(line["result"]["rate_epoch"], line["result"]["p_input" if col == 1 else "p_hidden"])
                    for line in lines if line["result"].get("rate_epoch")]
            if kept:  # keep_best: the rates each split kept, at the check they were taken
                ax.scatter(*zip(*kept, strict=True), color=colour, edgecolor="k", s=22, zorder=3,
                           label="  the rates kept by each split (keep_best)" if col == 2 else None)
    for ax, title in zip(axes, ("input layer", "hidden layer"), strict=True):
        ax.axhspan(0.005, 0.1, color="0.9", zorder=0, label="the grid's rates (0.005–0.1)")
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_title(f"{args.dataset}: learned p, {title}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("p (median over splits; band: min–max)")
    handles, labels = axes[1].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower left", ncol=1, frameon=False)
    fig.tight_layout(rect=(0, (0.2 * entries + 0.15) / height, 1, 1))
    fig.savefig(args.output, dpi=110)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
