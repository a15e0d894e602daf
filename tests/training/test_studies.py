"""The chapter's studies: the interval helpers against scipy.stats, every study end to end in quick mode on
synthetic data (files and result structure), the same table for the same command, and the CLI's errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import stats

from mcdrop.nets.models import DropoutMLP
from mcdrop.sampling.engine import MCEngine
from mcdrop.training.studies import STUDIES, load_study
from mcdrop.training.studies.activations import layer_variances
from mcdrop.training.studies.common import (
    Context,
    Interval,
    StudyData,
    mc_probabilities,
    paired_interval,
    t_interval,
    write_result,
)
from mcdrop.training.studies.weight_decay import verdict
from tests.conftest import ALPHA, SHARED_DATA, needs_data


def blobs(n: int, seed: int, classes: int = 4, dim: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Features in [0, 1]: class k lights up feature block k, plus uniform noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(classes, (n,), generator=g)
    x = 0.3 * torch.rand(n, dim, generator=g)
    block = dim // classes
    for k in range(classes):
        x[y == k, k * block:(k + 1) * block] += 0.6
    return x, y


def tiny_data() -> StudyData:
    x, y = blobs(300, 0)
    xt, yt = blobs(120, 1)
    return StudyData(x, y, xt, yt, 4, "synthetic blobs")


# ----------------------------------------------------------------------------------------- intervals


def test_t_interval_is_scipys_t_interval():
    values = np.random.default_rng(0).normal(1.0, 2.0, size=5)
    ci = t_interval(values, 0.9)
    low, high = stats.t.interval(0.9, 4, loc=values.mean(), scale=stats.sem(values))
    assert (ci.mean, ci.n, ci.level) == (pytest.approx(values.mean()), 5, 0.9)
    assert ci.low == pytest.approx(low) and ci.high == pytest.approx(high)


def test_t_interval_covers_the_mean_at_its_level():
    """Of M intervals from 3 normal draws each, the number covering the true mean is Binomial(M, 0.95)."""
    rng = np.random.default_rng(1)
    m = 4000
    intervals = [t_interval(rng.normal(0.3, 1.5, size=3)) for _ in range(m)]
    covered = sum(ci.low <= 0.3 <= ci.high for ci in intervals)
    assert stats.binomtest(covered, m, 0.95).pvalue > ALPHA


def test_paired_interval_is_the_interval_of_differences_and_edge_cases():
    a, b = [0.9, 0.8, 0.85], [0.7, 0.75, 0.7]
    assert paired_interval(a, b) == t_interval(np.subtract(a, b))
    point = t_interval([2.0, 2.0, 2.0])
    assert (point.low, point.high) == (2.0, 2.0) and not point.excludes(2.0) and point.excludes(0.0)
    single = t_interval([1.0])
    assert single.n == 1 and math.isnan(single.low) and math.isnan(single.high)
    with pytest.raises(ValueError, match="one value per seed"):
        paired_interval([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="at least one value"):
        t_interval([])


def test_interaction_verdicts():
    zero = Interval(0.001, -0.002, 0.004, 3)
    negative = Interval(-0.01, -0.015, -0.005, 3)
    positive = Interval(0.01, 0.005, 0.015, 3)
    assert verdict(zero, 0.02, 0.01).startswith("additive")
    assert verdict(positive, 0.03, 0.01) == "superadditive"
    assert verdict(negative, 0.015, 0.01) == "diminishing"  # both help, together less than their sum, more than one
    assert verdict(negative, 0.005, 0.01) == "cancelling"  # together worse than the better alone


# ----------------------------------------------------------------------------------------- helpers


def test_mc_probabilities_checkpoints_are_prefixes_of_one_draw():
    torch.manual_seed(0)
    model = DropoutMLP(16, [32], 4, dropout=0.5).eval()
    x, _ = blobs(20, 2)
    engine = MCEngine(model)
    got = mc_probabilities(engine, x, [1, 3, 7], seed=5, chunk=2)
    for n, p in got.items():
        direct = torch.softmax(engine.sample(x, n, seed=5).double(), -1).mean(0).float()
        torch.testing.assert_close(p, direct, rtol=0, atol=1e-6)


def test_layer_variances_post_equals_pre_without_dropout_and_exceeds_it_with():
    torch.manual_seed(0)
    model = DropoutMLP(16, [64, 64], 4, dropout=[0.0, 0.0])
    x, _ = blobs(500, 3)
    v = layer_variances(model, x, [0.0, 0.0], seed=0)
    assert v["pre"] == v["post"]
    w = layer_variances(model, x, [0.5, 0.5], seed=0)
    assert w["pre"] == v["pre"]
    # Var[h m / (1-p)] = Var[h] + p/(1-p) E[h^2] > Var[h] for p = 0.5: a one-sided check far beyond noise
    assert all(post > pre for pre, post in zip(w["pre"], w["post"], strict=True))


# ----------------------------------------------------------------------------------------- studies


def check_intervals(node: object) -> int:
    """Every {mean, low, high} in the results is ordered low <= mean <= high; returns how many were seen."""
    seen = 0
    if isinstance(node, dict):
        if {"mean", "low", "high", "n"} <= node.keys():
            assert node["n"] >= 2 and node["low"] <= node["mean"] + 1e-12 and node["mean"] <= node["high"] + 1e-12, node
            return 1
        for value in node.values():
            seen += check_intervals(value)
    elif isinstance(node, list):
        for value in node:
            seen += check_intervals(value)
    return seen


@pytest.mark.parametrize("name", list(STUDIES))
def test_every_study_runs_quick_and_writes_its_files(name, tmp_path):
    torch.set_num_threads(2)
    ctx = Context(tiny_data(), seeds=[0, 1], quick=True)
    result = load_study(name).run(ctx)
    written = write_result(result, ctx, tmp_path, f"mcdrop study {name} --quick")
    assert result.plots and all(p.exists() and p.stat().st_size > 0 for p in written)
    for png in tmp_path.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    payload = json.loads((tmp_path / "results.json").read_text())
    assert payload["study"] == name and payload["seeds"] == [0, 1] and payload["answer"] == result.answer
    assert check_intervals(payload["results"]) > 0
    table = (tmp_path / "table.md").read_text()
    assert result.answer in table and "|---|" in table


def test_same_command_gives_the_same_table(tmp_path):
    tables = []
    for k in range(2):
        ctx = Context(tiny_data(), seeds=[0, 1], quick=True)
        result = load_study("rates").run(ctx)
        result.plots = {}
        write_result(result, ctx, tmp_path / str(k), "same")
        tables.append((tmp_path / str(k) / "table.md").read_text())
    assert tables[0] == tables[1]


# ----------------------------------------------------------------------------------------- CLI


def test_cli_lists_studies_and_rejects_bad_input(cli, tmp_path):
    run = cli("study", "--list")
    assert run.returncode == 0 and all(name in run.stdout for name in STUDIES)
    run = cli("study", "dropin", "-o", tmp_path)
    assert run.returncode == 2 and "unknown study 'dropin'" in run.stderr and "rates" in run.stderr
    run = cli("study", "rates", "-o", tmp_path, "--seeds", "1")
    assert run.returncode == 2 and "--seeds" in run.stderr
    run = cli("study", "rates")
    assert run.returncode == 2 and "--output" in run.stderr
    run = cli("study", "rates", "-o", tmp_path, "--data-root", tmp_path / "nowhere")
    assert run.returncode == 1 and "Fashion-MNIST not found" in run.stderr and "Traceback" not in run.stderr


@needs_data("FashionMNIST", "raw")
def test_cli_runs_a_quick_study_on_fashion_mnist(cli, tmp_path):
    run = cli("study", "activations", "-o", tmp_path, "--quick", "--seeds", "2", "--data-root", SHARED_DATA)
    assert run.returncode == 0, run.stderr
    assert {"results.json", "table.md", "variance.png"} <= {p.name for p in tmp_path.iterdir()}
    assert json.loads((tmp_path / "results.json").read_text())["quick"] is True
