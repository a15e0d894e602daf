"""bench/uci_table.py's choice on validation: per split, the run whose grid reached the higher validation LL."""

from __future__ import annotations

import json

from bench.uci_table import choose, with_validation


def _line(split: int, schedule: str | None, rmse: float, ll: float, val: dict[str, float]) -> str:
    key = {"dataset": "yacht", "protocol": "grid-hetero", "epochs": 4000, "beta_nll": 0.5, "lr_schedule": schedule}
    return json.dumps({"key": key, "split": split, "result": {"rmse": rmse, "ll": ll, "val_ll": val}})


def test_each_split_takes_the_run_with_the_better_validation_ll(tmp_path):
    path = tmp_path / "runs.jsonl"
    path.write_text("\n".join([
        _line(0, None, 1.0, -1.0, {"p=0.005": -2.0, "p=0.01": -1.5}),    # constant's best: -1.5
        _line(0, "cosine", 2.0, -2.0, {"p=0.005": -1.6, "p=0.01": -3.0}),  # cosine's best: -1.6, loses
        _line(1, None, 1.1, -1.1, {"p=0.005": -2.0}),
        _line(1, "cosine", 0.9, -0.9, {"p=0.005": -1.9}),                  # wins split 1
        _line(2, None, 5.0, -5.0, {"p=0.005": 0.0}),                       # no cosine run: not chosen on
    ]) + "\n")
    constant = with_validation(path, lr_schedule=None)
    cosine = with_validation(path, lr_schedule="cosine")
    chosen, won = choose(constant, cosine)
    assert chosen == {"yacht": {0: (1.0, -1.0, 4000), 1: (0.9, -0.9, 4000)}}
    assert won == {"yacht": [0, 1]}
