"""Resumable UCI runs: fixed chunks, skipping what the file holds, results independent of interruptions."""

from __future__ import annotations

import json

import pytest

from mcdrop.training import uci_resume as R
from mcdrop.training.concrete_uci import ConcreteOptions
from mcdrop.training.uci import UCIConfig
from tests.training.test_uci import linear_dataset


def test_chunks_are_fixed_by_index():
    assert R.chunks(range(7), 3) == [[0, 1, 2], [3, 4, 5], [6]]
    assert R.chunks([5, 1, 4], 3) == [[1], [4, 5]]  # the chunks that hold the indices, those indices only
    with pytest.raises(ValueError, match="chunk size"):
        R.chunks([0], 0)


def test_key_names_the_run():
    ds = linear_dataset()
    config = UCIConfig(epochs_multiplier=1.0, samples=10)
    assert R.run_key(ds, config, "grid") != R.run_key(ds, UCIConfig(epochs_multiplier=2.0, samples=10), "grid")
    a = R.run_key(ds, config, "concrete", ConcreteOptions(floor=0.01))
    assert a != R.run_key(ds, config, "concrete", ConcreteOptions())
    assert a == R.run_key(ds, config, "concrete", ConcreteOptions(floor=0.01, trace_every=5))  # tracing changes nothing
    beta = UCIConfig(epochs_multiplier=1.0, samples=10, beta_nll=0.5)
    assert R.run_key(ds, beta, "grid-hetero")["beta_nll"] == 0.5
    assert "beta_nll" not in R.run_key(ds, config, "grid-hetero")  # the keys of runs from before the option
    cosine = UCIConfig(epochs_multiplier=1.0, samples=10, lr_schedule="cosine")
    assert R.run_key(ds, cosine, "grid")["lr_schedule"] == "cosine"
    assert "lr_schedule" not in R.run_key(ds, config, "grid")  # constant: as before the option
    # the published recipe's key is what it was before rate_objective existed, so earlier files still match
    assert R.run_key(ds, config, "concrete")["options"] == {"rate_lr": None, "floor": 0.0, "heteroscedastic": True}
    held_out = R.run_key(ds, beta, "concrete", ConcreteOptions(rate_objective="validation", val_passes=4))
    assert held_out["options"]["rate_objective"] == "validation" and held_out["options"]["val_passes"] == 4
    assert held_out["beta_nll"] == 0.5
    assert "keep_best" not in held_out["options"]  # the keys of runs from before the option
    best = ConcreteOptions(rate_objective="validation", keep_best=True)
    assert R.run_key(ds, config, "concrete", best)["options"]["keep_best"] is True
    assert "cap" not in held_out["options"]
    assert R.run_key(ds, config, "concrete", ConcreteOptions(cap=0.1))["options"]["cap"] == 0.1
    with pytest.raises(ValueError, match="protocol has to be one of"):
        R.run_key(ds, config, "bayes")


@pytest.mark.parametrize("protocol", ["grid-hetero", "concrete"])
def test_an_interrupted_run_resumes_to_the_same_results(tmp_path, protocol):
    """Split 0 first, then both: split 0 is not run again and every line equals an uninterrupted run's."""
    ds = linear_dataset(n=200)
    config = UCIConfig(epochs_multiplier=0.5, samples=50, val_samples=20, seed=4)
    resumed, direct = tmp_path / "resumed.jsonl", tmp_path / "direct.jsonl"
    first = R.run_resumable(ds, config, resumed, protocol=protocol, chunk=1, splits=[0])
    assert [line["split"] for line in first] == [0]
    before = resumed.read_text()
    both = R.run_resumable(ds, config, resumed, protocol=protocol, chunk=1)
    assert resumed.read_text().startswith(before) and len(resumed.read_text().splitlines()) == 2
    again = R.run_resumable(ds, config, resumed, protocol=protocol, chunk=1)  # nothing left to run
    assert len(resumed.read_text().splitlines()) == 2 and again == both
    fresh = R.run_resumable(ds, config, direct, protocol=protocol, chunk=1)
    assert [line["result"] for line in both] == [line["result"] for line in fresh]
    # another setting is another run: it does not reuse these lines
    other = R.run_resumable(ds, UCIConfig(epochs_multiplier=0.25, samples=50, val_samples=20, seed=4), direct,
                            protocol=protocol, chunk=1, splits=[1])
    assert len(other) == 1 and len(R.load_results(direct)) == 3
    summary = R.summarise_results(both)
    assert summary["splits"] == 2 and summary["rmse"][1] > 0
    assert json.loads(resumed.read_text().splitlines()[0])["key"]["protocol"] == protocol


def test_unknown_splits_are_refused(tmp_path):
    ds = linear_dataset(n=200)
    with pytest.raises(ValueError, match=r"splits \[5\] do not exist: synthetic has splits 0..1"):
        R.run_resumable(ds, UCIConfig(samples=10), tmp_path / "x.jsonl", protocol="grid", splits=[0, 5])
