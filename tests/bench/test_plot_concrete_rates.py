"""bench/plot_concrete_rates.py draws every traced run of the dataset asked for, and the kept rates of keep_best runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _line(split: int, options: dict, rate_epoch: int | None) -> str:
    key = {"dataset": "energy", "protocol": "concrete", "epochs": 80, "beta_nll": 0.5,
           "options": {"rate_lr": None, "floor": 0.0, "heteroscedastic": True, **options}}
    trace = [[40, 0.08 - 0.01 * split, 0.07], [80, 0.05, 0.04 + 0.01 * split]]
    result = {"split": split, "p_input": 0.08, "p_hidden": 0.07, "rmse": 0.5, "ll": -0.8, "rate_epoch": rate_epoch}
    return json.dumps({"key": key, "split": split, "result": result, "trace": trace})


def test_plots_the_traced_runs_and_the_kept_rates(tmp_path):
    runs = tmp_path / "runs.jsonl"
    held_out = {"rate_objective": "validation", "val_passes": 8, "keep_best": True, "cap": 0.1}
    runs.write_text("\n".join([_line(0, {}, None), _line(1, {}, None), _line(0, held_out, 40),
                               _line(1, held_out, 80)]) + "\n")
    out = tmp_path / "rates.png"
    proc = subprocess.run([sys.executable, "bench/plot_concrete_rates.py", "--dataset", "energy", "-o", str(out),
                           str(runs)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert out.stat().st_size > 10_000 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    missing = subprocess.run([sys.executable, "bench/plot_concrete_rates.py", "--dataset", "yacht", "-o",
                              str(tmp_path / "none.png"), str(runs)], cwd=ROOT, capture_output=True, text=True,
                             timeout=300)
    assert missing.returncode != 0 and "no traced Concrete runs of yacht" in missing.stderr
