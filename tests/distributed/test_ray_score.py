"""`mcdrop score --engine ray` on a real local Ray: the same rows, in order, with the same numbers as local scoring,
whatever the number of blocks; .npy, Parquet and CSV, files and directories."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("ray", reason="Ray is not installed (pip install 'mcdrop[ray]')")
pa = pytest.importorskip("pyarrow")

import pyarrow.parquet as pq  # noqa: E402

from mcdrop.distributed import ray_score  # noqa: E402
from mcdrop.serving.predictor import Predictor  # noqa: E402
from tests.tiny_models import write_tiny_models  # noqa: E402
from tests.tolerances import assert_probabilities_close  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow]
X = np.random.default_rng(0).normal(size=(700, 4)).astype(np.float32)
OPTIONS = {"mode": "mc", "n_samples": 12, "seed": 5}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return write_tiny_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def ray_session():
    import ray

    ray_score.start_ray(None, 2)
    yield
    ray.shutdown()


def collect(parts, job, blocks):
    rows, probs, ids = [], [], []
    for batch in ray_score.score_parts(parts, job, actors=2, blocks=blocks, cores=2):
        good = batch["bad"].astype(str) == ""
        rows.append(batch["row"][good])
        if good.any():
            probs.append(batch["probabilities"][good])
            ids += batch["id"][good].tolist() if "id" in batch else []
    return np.concatenate(rows), np.concatenate(probs), ids


@pytest.mark.parametrize("blocks", [1, 2, 7])
def test_npy_parquet_and_csv_give_the_local_answer_on_any_number_of_blocks(tmp_path, models, ray_session, blocks):
    np.save(tmp_path / "x.npy", X)
    folder = tmp_path / "pq"
    folder.mkdir()
    for i, (a, b) in enumerate(((0, 250), (250, 600), (600, 700))):  # row groups of 100 rows in each file
        pq.write_table(pa.table({f"f{j}": X[a:b, j] for j in range(4)}), folder / f"part-{i:02d}.parquet",
                       row_group_size=100)
    csvs = tmp_path / "csv"
    csvs.mkdir()
    for i, (a, b) in enumerate(((0, 400), (400, 700))):
        lines = ["id,f0,f1,f2,f3"] + [f'"r{r},x",' + ",".join(map(repr, map(float, X[r]))) for r in range(a, b)]
        (csvs / f"part-{i}.csv").write_text("\n".join(lines) + "\n")
    want = Predictor([str(models["tiny-cls"])]).predict_array(X, **OPTIONS).probabilities
    for source, reader in ((tmp_path / "x.npy", {}), (folder, {}), (csvs, {"id_column": "id"})):
        files = ray_score.input_files(source, None)
        parts, total = ray_score.plan_parts(files, None, rows_per_part=150, min_parts=2)
        assert total == 700
        job = ray_score.RayJob(model=str(models["tiny-cls"]), options=OPTIONS,
                               reader={"columns": None, "header": "auto", "key": None, **reader, "id_column":
                                       reader.get("id_column")}, scale=1.0, batch_size=64, threads=1)
        rows, probs, ids = collect(parts, job, blocks)
        assert rows.tolist() == list(range(700)), source.name  # global row numbers, in input order
        assert_probabilities_close(probs, want, err_msg=source.name)
        if reader:
            assert ids[:2] == ["r0,x", "r1,x"] and ids[-1] == "r699,x"


def test_the_command_line_engine_matches_local_scoring(tmp_path, models):
    """The CLI end to end (its own local Ray), with a bad row skipped and listed."""
    data = X.copy()
    data[10, 2] = np.nan
    np.save(tmp_path / "x.npy", data)
    common = ["--model", models["tiny-cls"], "--seed", 5, "-n", 12, "--skip-bad-rows", "--quiet"]
    run = lambda *a: subprocess.run([sys.executable, "-m", "mcdrop.cli.main", "score", *map(str, a)],  # noqa: E731
                                    capture_output=True, text=True, timeout=300)
    ray_run = run(tmp_path / "x.npy", "-o", tmp_path / "ray.parquet", "--engine", "ray", "--actors", 2, "--blocks", 3,
                  *common)
    assert ray_run.returncode == 0, ray_run.stderr[-2000:]
    assert run(tmp_path / "x.npy", "-o", tmp_path / "local.parquet", *common).returncode == 0
    a, b = pq.read_table(tmp_path / "ray.parquet"), pq.read_table(tmp_path / "local.parquet")
    assert a.column_names == b.column_names and a["row"].to_pylist() == b["row"].to_pylist()
    assert 10 not in a["row"].to_pylist() and len(a) == 699
    assert_probabilities_close(np.stack(a["probabilities"].to_numpy(zero_copy_only=False)),
                               np.stack(b["probabilities"].to_numpy(zero_copy_only=False)))
    assert (tmp_path / "ray.parquet.bad-rows.csv").read_text().splitlines()[1].startswith("10,")


def test_a_parquet_file_of_one_row_group_is_cut_for_every_actor(tmp_path):
    """20,000 rows in one row group used to be one part ("1 parts"): one actor scored it, the other idled, and
    the progress bar stayed at 0 until the end.  Parts are now row ranges, at least PARTS_PER_ACTOR per actor."""
    x = np.random.default_rng(2).normal(size=(20_000, 4)).astype(np.float32)
    path = tmp_path / "x.parquet"
    pq.write_table(pa.table({f"f{i}": x[:, i] for i in range(4)}), path, row_group_size=20_000)
    parts, total = ray_score.plan_parts([path], None, min_parts=ray_score.PARTS_PER_ACTOR * 2)
    assert total == 20_000 and len(parts) == 8
    assert [(p["lo"], p["hi"]) for p in parts] == [(i * 2500, (i + 1) * 2500) for i in range(8)]


def test_the_command_line_spreads_a_parquet_file_over_all_actors(tmp_path, models):
    x = np.random.default_rng(3).normal(size=(20_000, 4)).astype(np.float32)
    src = tmp_path / "x.parquet"
    pq.write_table(pa.table({f"f{i}": x[:, i] for i in range(4)}), src, row_group_size=20_000)
    out = tmp_path / "ray.parquet"
    proc = subprocess.run([sys.executable, "-m", "mcdrop.cli.main", "score", str(src), "-o", str(out), "--engine", "ray",
                           "--actors", "2", "--model", str(models["tiny-cls"]), "--seed", "5", "-n", "4"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "scoring 8 parts of 1 file(s) on 2 Ray actor(s)" in proc.stderr
    table = pq.read_table(out)
    assert table["row"].to_pylist() == list(range(20_000))
    want = Predictor([str(models["tiny-cls"])]).predict_array(x[:500], mode="mc", n_samples=4, seed=5)
    assert_probabilities_close(np.stack(table["probabilities"].to_numpy(zero_copy_only=False)[:500]), want.probabilities)
