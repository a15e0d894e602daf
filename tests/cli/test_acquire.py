"""`mcdrop acquire` on real files (subprocess), locally and against a real server."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from mcdrop.serving.predictor import Predictor
from mcdrop.uncertainty.acquisition import acquire
from tests.server import running_server
from tests.tiny_models import write_tiny_models
from tests.tolerances import assert_probabilities_close

POOL = np.random.default_rng(1).normal(size=(50, 4)).astype(np.float32)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return write_tiny_models(tmp_path_factory.mktemp("models"))


def mcdrop(*args: object, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "mcdrop.cli.main", *map(str, args)], capture_output=True, text=True,
                          timeout=120)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def table(text: str) -> tuple[list[int], list[float]]:
    lines = text.strip().splitlines()
    assert lines[0] == "rank,row,score"
    rows = [line.split(",") for line in lines[1:]]
    assert [int(r[0]) for r in rows] == list(range(len(rows)))
    return [int(r[1]) for r in rows], [float(r[2]) for r in rows]


@pytest.mark.parametrize("method", ["bald", "batchbald", "random"])
def test_streamed_pool_gives_the_library_answer_whatever_the_batch_size(models, tmp_path, method):
    pool = tmp_path / "pool.npy"
    np.save(pool, POOL)
    small = mcdrop("acquire", pool, "-k", 6, "--method", method, "--model", models["tiny-cls"], "-n", 24,
                   "--seed", 5, "--batch-size", 7)
    rows, scores = table(small.stdout)
    engine = Predictor([str(models["tiny-cls"])]).served().engine
    probs = engine.sample(torch.from_numpy(POOL), 24, seed=5, consistent=True).softmax(-1)
    want = acquire(probs, 6, method, seed=5)
    assert rows == want.indices.tolist()
    assert_probabilities_close(scores, want.scores.numpy())
    out = tmp_path / "chosen.csv"
    mcdrop("acquire", pool, "-k", 6, "--method", method, "--model", models["tiny-cls"], "-n", 24, "--seed", 5,
           "--batch-size", 50, "-o", out)
    assert table(out.read_text())[0] == rows


def test_csv_pool_rows_are_file_row_numbers(models, tmp_path):
    pool = tmp_path / "pool.csv"
    np.savetxt(pool, POOL, delimiter=",", header="a,b,c,d", comments="", fmt="%.9g")
    got = table(mcdrop("acquire", pool, "-k", 4, "--method", "entropy", "--model", models["tiny-cls"], "--seed", 1,
                       "--batch-size", 9).stdout)[0]
    npy = tmp_path / "pool.npy"
    np.save(npy, POOL)
    assert got == table(mcdrop("acquire", npy, "-k", 4, "--method", "entropy", "--model", models["tiny-cls"],
                               "--seed", 1).stdout)[0]


@pytest.mark.parametrize(("args", "code", "message"), [
    (["-k", 0], 2, "-k: has to be a positive"),
    (["-k", 51], 2, "-k: k has to be between 1 and the pool's 50 rows"),
    (["-k", 2, "--samples", 0], 2, "--samples"),
    (["-k", 2, "--model", "tiny-reg"], 2, "is a homoscedastic model"),
])
def test_bad_flags_exit_with_one_line(models, tmp_path, args, code, message):
    pool = tmp_path / "pool.npy"
    np.save(pool, POOL)
    args = [str(models["tiny-reg"]) if a == "tiny-reg" else a for a in args]
    if "--model" not in args:
        args += ["--model", models["tiny-cls"]]
    proc = mcdrop("acquire", pool, *args, check=False)
    assert proc.returncode == code, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_missing_pool_is_named(tmp_path):
    proc = mcdrop("acquire", tmp_path / "nope.npy", "-k", 1, check=False)
    assert proc.returncode == 1 and "nope.npy: no such file" in proc.stderr


@pytest.mark.integration
def test_url_asks_a_real_server(models, tmp_path):
    pool = tmp_path / "pool.npy"
    np.save(pool, POOL)
    local = mcdrop("acquire", pool, "-k", 5, "--method", "bald", "--model", models["tiny-cls"], "-n", 16, "--seed", 2)
    with running_server({"MCDROP_SERVE_MODELS": str(models["tiny-cls"])}) as url:
        remote = mcdrop("acquire", pool, "-k", 5, "--method", "bald", "--url", url, "-n", 16, "--seed", 2)
    assert table(remote.stdout)[0] == table(local.stdout)[0]
