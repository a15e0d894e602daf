"""`mcdrop score` as a subprocess on real files: every input and output format, bad rows, interruption,
exit codes, and local against remote scoring through a real server."""

from __future__ import annotations

import csv
import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mcdrop.serving.predictor import Predictor
from tests.server import running_server
from tests.tiny_models import write_tiny_models
from tests.tolerances import assert_outputs_close, assert_probabilities_close

pytestmark = [pytest.mark.integration, pytest.mark.slow]
MCDROP = [sys.executable, "-m", "mcdrop.cli.main"]
X = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return write_tiny_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def local(models):
    return Predictor([str(models["tiny-cls"]), str(models["tiny-reg"])])


def mcdrop(*args: object, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*MCDROP, *map(str, args)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "BENTOML_DO_NOT_TRACK": "True"})
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}: {proc.stderr}")
    return proc


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def probabilities(rows: list[dict[str, str]], classes: int = 3) -> np.ndarray:
    return np.array([[float(r[f"probabilities_{c}"]) for c in range(classes)] for r in rows])


def write_csv(path: Path, x: np.ndarray, header: bool = True, ids: bool = False) -> Path:
    lines = []
    if header:
        lines.append(",".join((["id"] if ids else []) + [f"f{i}" for i in range(x.shape[1])]))
    for i, row in enumerate(x):
        lines.append(",".join(([f"item-{i}"] if ids else []) + [repr(float(v)) for v in row]))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_csv_in_csv_out_equals_the_library(tmp_path, models, local):
    src = write_csv(tmp_path / "in.csv", X, ids=True)
    out = tmp_path / "out.csv"
    proc = mcdrop("score", src, "-o", out, "--model", models["tiny-cls"], "--seed", 4, "--samples", 40,
                  "--batch-size", 7, "--id-column", "id")
    assert "wrote 50 rows" in proc.stderr
    rows = read_csv(out)
    assert [r["row"] for r in rows] == [str(i) for i in range(50)]
    assert rows[3]["id"] == "item-3"
    want = local.predict_array(X, n_samples=40, seed=4)
    assert_probabilities_close(probabilities(rows), want.probabilities)
    assert_probabilities_close([float(r["mutual_information"]) for r in rows], want.column("mutual_information"))
    assert [r["class_name"] for r in rows[:3]] == [["a", "b", "c"][c] for c in want.predicted_class[:3]]


def test_every_input_format_gives_the_same_answer(tmp_path, models):
    images = np.random.default_rng(1).integers(0, 256, size=(20, 2, 2), dtype=np.uint8)
    flat = images.reshape(20, 4)
    np.save(tmp_path / "in.npy", images)
    np.savez(tmp_path / "in.npz", other=np.zeros(3), images=images)
    idx = b"\0\0\x08\x03" + np.array([20, 2, 2], dtype=">i4").tobytes() + images.tobytes()
    (tmp_path / "in-idx3-ubyte.gz").write_bytes(gzip.compress(idx))
    write_csv(tmp_path / "in.csv", flat / 255.0, header=False)
    outputs = {}
    for name, extra in [("in.npy", []), ("in.npz", ["--key", "images"]), ("in-idx3-ubyte.gz", []), ("in.csv", [])]:
        out = tmp_path / f"{name}.csv"
        mcdrop("score", tmp_path / name, "-o", out, "--model", models["tiny-cls"], "--seed", 2, "-n", 10, *extra)
        outputs[name] = probabilities(read_csv(out))
    for name, got in outputs.items():  # uint8 inputs were divided by 255 (--scale auto)
        assert_probabilities_close(got, outputs["in.csv"], err_msg=name)


def test_every_output_format_holds_the_same_numbers(tmp_path, models):
    np.save(tmp_path / "in.npy", X)
    common = ["--model", models["tiny-cls"], "--seed", 9, "-n", 16, "--batch-size", 16]
    for suffix in ("csv", "jsonl", "npz"):
        mcdrop("score", tmp_path / "in.npy", "-o", tmp_path / f"out.{suffix}", *common)
    rows = read_csv(tmp_path / "out.csv")
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    archive = np.load(tmp_path / "out.npz")
    assert archive["probabilities"].shape == (50, 3) and archive["row"].tolist() == list(range(50))
    assert archive["class_names"].tolist() == ["a", "b", "c"]
    np.testing.assert_allclose(probabilities(rows), archive["probabilities"], rtol=1e-8)
    np.testing.assert_allclose([line["probabilities"] for line in lines], archive["probabilities"], rtol=1e-12)
    assert [line["row"] for line in lines] == list(range(50))
    np.testing.assert_allclose([line["predictive_entropy"] for line in lines], archive["predictive_entropy"])


def test_deterministic_regression_and_adaptive(tmp_path, models, local):
    np.save(tmp_path / "in.npy", X[:, :3])
    mcdrop("score", tmp_path / "in.npy", "-o", tmp_path / "det.jsonl", "--model", models["tiny-reg"],
           "--mode", "deterministic")
    first = json.loads((tmp_path / "det.jsonl").read_text().splitlines()[0])
    assert "epistemic_variance" not in first and first["n_samples"] == 1 and first["variance"] == pytest.approx(0.25)
    mcdrop("score", tmp_path / "in.npy", "-o", tmp_path / "ada.npz", "--model", models["tiny-reg"], "--seed", 1,
           "--tolerance", 0.02, "-n", 16, "--max-samples", 256)
    want = local.predict_array(X[:, :3], model="tiny-reg", seed=1, tolerance=0.02, n_samples=16, max_samples=256)
    np.testing.assert_array_equal(np.load(tmp_path / "ada.npz")["n_samples"], want.n_samples)


def bad_csv(path: Path) -> Path:
    good = [",".join(repr(float(v)) for v in row) for row in X[:10]]
    good[3] = "0.1,0.2,0.3"  # wrong width
    good[5] = "0.1,abc,0.3,0.4"  # non-numeric
    good[8] = "0.1,nan,0.3,0.4"  # NaN
    path.write_text("a,b,c,d\n" + "\n".join(good) + "\n")
    return path


def test_a_bad_row_fails_the_run_naming_it(tmp_path, models):
    out = tmp_path / "out.csv"
    out.write_text("an older result\n")
    proc = mcdrop("score", bad_csv(tmp_path / "in.csv"), "-o", out, "--model", models["tiny-cls"], check=False)
    assert proc.returncode == 1
    assert "row 3 has 3 columns; expected 4" in proc.stderr and "--skip-bad-rows" in proc.stderr
    assert out.read_text() == "an older result\n"  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "out.csv"]  # no temporary files left


def test_skip_bad_rows_scores_the_rest_and_lists_them(tmp_path, models, local):
    out = tmp_path / "out.csv"
    mcdrop("score", bad_csv(tmp_path / "in.csv"), "-o", out, "--model", models["tiny-cls"], "--seed", 5, "-n", 12,
           "--skip-bad-rows")
    rows = read_csv(out)
    assert [int(r["row"]) for r in rows] == [0, 1, 2, 4, 6, 7, 9]
    side = read_csv(tmp_path / "out.csv.bad-rows.csv")
    assert [int(r["row"]) for r in side] == [3, 5, 8]
    assert "column 1 holds 'abc'" in side[1]["reason"] and "NaN" in side[2]["reason"]
    # good rows keep their row numbers, so they get the same masks as in the clean file
    want = local.predict_array(X[:10], n_samples=12, seed=5).probabilities[[0, 1, 2, 4, 6, 7, 9]]
    assert_probabilities_close(probabilities(rows), want)


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--samples", "0"], 2, "--samples 0"),
        (["--mode", "bayes"], 2, "invalid choice"),
        (["--columns", "zz"], 2, "--columns: no column 'zz'"),
        (["--batch-size", "0"], 2, "--batch-size"),
        (["--scale", "x"], 2, "--scale 'x'"),
        (["--model", "no-such-model"], 2, "--model"),
        (["--output-format", "xml"], 2, "invalid choice"),
        (["--device", "gpu"], 2, "--device: device has to be one of cpu, cuda, cuda:N or auto"),
        (["--device", "cuda:0", "--url", "http://127.0.0.1:9"], 2, "--device applies to local scoring"),
    ],
)
def test_usage_and_model_errors(tmp_path, models, args, code, message, cli):
    src = write_csv(tmp_path / "in.csv", X[:3])
    run = cli("score", src, "-o", tmp_path / "out.csv", *(args if "--model" in args else
                                                        ["--model", models["tiny-cls"], *args]))
    assert run.returncode == code, run.stderr
    assert message in run.stderr
    assert "Traceback" not in run.stderr


def test_damaged_model_is_a_data_error(tmp_path, models, cli):
    import shutil

    damaged = tmp_path / "damaged"
    shutil.copytree(models["tiny-cls"], damaged)
    weights = damaged / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-16])
    run = cli("score", write_csv(tmp_path / "in.csv", X[:3]), "-o", tmp_path / "o.csv", "--model", damaged)
    assert run.returncode == 1 and "--model" in run.stderr and "sha256" in run.stderr, run.stderr


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda p: None, "no such file"),
        (lambda p: p.mkdir(), "is a directory"),
        (lambda p: p.write_text(""), "the file is empty"),
        (lambda p: p.write_bytes(b"\xff\xfe\x00binary"), "not UTF-8"),
        (lambda p: write_csv(p, X[:3, :3]), "rows have 3 features, but model 'tiny-cls' expects 4"),
    ],
)
def test_bad_input_files_exit_1_with_one_line(tmp_path, models, setup, message, cli):
    src = tmp_path / "in.csv"
    setup(src)
    run = cli("score", src, "-o", tmp_path / "out.csv", "--model", models["tiny-cls"])
    assert run.returncode == 1 and message in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "out.csv").exists()


def test_truncated_npy_and_unknown_suffix(tmp_path, models, cli):
    np.save(tmp_path / "in.npy", X)
    data = (tmp_path / "in.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(data[: len(data) - 100])
    run = cli("score", tmp_path / "cut.npy", "-o", tmp_path / "out.csv", "--model", models["tiny-cls"])
    assert run.returncode == 1 and "ends early" in run.stderr and not (tmp_path / "out.csv").exists()
    run = cli("score", tmp_path / "in.npy", "-o", tmp_path / "out.xml", "--model", models["tiny-cls"])
    assert run.returncode == 2 and "cannot tell the output format" in run.stderr


@pytest.mark.parametrize(("target", "kind"), [("/dev/null", "a device"), ("fifo", "a FIFO"), (".", "a directory")])
def test_output_must_be_a_regular_file(tmp_path, models, cli, target, kind):
    """As root, `-o /dev/null` used to replace the device with a regular file."""
    import os
    import stat

    np.save(tmp_path / "in.npy", X)
    if target == "fifo":
        os.mkfifo(tmp_path / "fifo")
    path = target if target.startswith("/") else tmp_path / target
    run = cli("score", tmp_path / "in.npy", "-o", path, "--model", models["tiny-cls"], "--output-format", "csv")
    assert run.returncode == 2 and kind in run.stderr and "regular file" in run.stderr
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_standard_output_stale_temporary_files_and_the_umask(tmp_path, models):
    import os
    import stat

    np.save(tmp_path / "in.npy", X[:5])
    proc = mcdrop("score", tmp_path / "in.npy", "-o", "-", "--model", models["tiny-cls"], "--seed", 1, "-q")
    assert proc.stdout.splitlines()[0].startswith("row,predicted_class") and len(proc.stdout.splitlines()) == 6
    (tmp_path / ".out.csv.mcdrop-4194304-x.tmp").write_text("left by a killed run")
    old = os.umask(0o077)
    try:
        mcdrop("score", tmp_path / "in.npy", "-o", tmp_path / "out.csv", "--model", models["tiny-cls"], "--seed", 1)
    finally:
        os.umask(old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npy", "out.csv"]
    assert stat.S_IMODE((tmp_path / "out.csv").stat().st_mode) == 0o600


def test_interrupted_run_leaves_no_output(tmp_path, models):
    np.save(tmp_path / "big.npy", np.random.default_rng(0).normal(size=(200_000, 4)).astype(np.float32))
    out = tmp_path / "out.csv"
    proc = subprocess.Popen([*MCDROP, "score", str(tmp_path / "big.npy"), "-o", str(out), "--model",
                             str(models["tiny-cls"]), "-n", "200", "--batch-size", "64", "--quiet"],
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not any(p.name.startswith(".out.csv") for p in tmp_path.iterdir()):  # the writer has started
        assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.npy"]


def test_local_and_remote_scoring_agree(tmp_path, models):
    src = write_csv(tmp_path / "in.csv", X)
    env = {"MCDROP_SERVE_MODELS": f"{models['tiny-cls']},{models['tiny-reg']}", "MCDROP_MAX_ROWS": "8"}
    with running_server(env) as url:
        for task, name, cols in [("cls", "tiny-cls", "f0,f1,f2,f3"), ("reg", "tiny-reg", "0:3")]:
            common = ["--seed", 21, "-n", 33, "--batch-size", 20, "--columns", cols]
            mcdrop("score", src, "-o", tmp_path / f"remote-{task}.npz", "--url", url, "--model", name, *common)
            mcdrop("score", src, "-o", tmp_path / f"local-{task}.npz", "--model", models[name], *common)
            remote, here = np.load(tmp_path / f"remote-{task}.npz"), np.load(tmp_path / f"local-{task}.npz")
            assert sorted(remote.files) == sorted(here.files)
            for key in here.files:
                if here[key].dtype.kind == "f":
                    # another process: within float32 rounding (tests/tolerances.py)
                    close = assert_probabilities_close if task == "cls" else assert_outputs_close
                    close(remote[key], here[key], err_msg=key)
                else:
                    np.testing.assert_array_equal(remote[key], here[key], err_msg=key)
        proc = mcdrop("score", src, "-o", tmp_path / "x.csv", "--url", url, "--model", "nope", check=False)
        assert proc.returncode == 2 and "unknown model 'nope'" in proc.stderr
    proc = mcdrop("score", src, "-o", tmp_path / "x.csv", "--url", url, check=False)  # server gone
    assert proc.returncode == 1 and "--url" in proc.stderr and "Traceback" not in proc.stderr


def test_precision_flag(tmp_path, models, local):
    """--precision bfloat16 scores on the CPU within the bound stated from bfloat16's unit roundoff; tf32 is refused
    on the CPU with one line; the flag is for local scoring only."""
    import torch

    from mcdrop.sampling.precision import probability_tolerance

    src = write_csv(tmp_path / "in.csv", X[:20])
    mcdrop("score", src, "-o", tmp_path / "bf.csv", "--model", models["tiny-cls"], "-n", "16", "--seed", "3",
           "--precision", "bfloat16")
    want = local.predict_array(X[:20], n_samples=16, seed=3)
    engine = local.served("tiny-cls").engine
    logits = engine.sample(torch.from_numpy(X[:20]), 16, seed=3)
    layers = sum(isinstance(m, torch.nn.Linear) for m in engine.model.modules())
    bound = probability_tolerance("bfloat16", layers, float(logits.abs().max()))
    diff = np.abs(probabilities(read_csv(tmp_path / "bf.csv")) - want.probabilities).max()
    assert diff <= bound
    for args, message in ((["--precision", "tf32"], "--precision: precision 'tf32' needs a CUDA device"),
                          (["--precision", "bfloat16", "--url", "http://127.0.0.1:9"], "--precision applies to local")):
        run = mcdrop("score", src, "-o", tmp_path / "x.csv", "--model", models["tiny-cls"], *args, check=False)
        assert run.returncode == 2 and message in run.stderr and "Traceback" not in run.stderr, run.stderr


def test_prefetch_keeps_order_raises_in_turn_and_stops_the_reader():
    import threading

    from mcdrop.cli.score import prefetch

    assert list(prefetch(iter(range(50)), depth=2)) == list(range(50))

    def failing():
        yield 1
        yield 2
        raise ValueError("bad row 3")

    got = []
    with pytest.raises(ValueError, match="bad row 3"):
        for item in prefetch(failing()):
            got.append(item)
    assert got == [1, 2]
    closed = threading.Event()

    def endless():
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.set()

    for item in prefetch(endless()):
        if item == 5:
            break
    assert closed.wait(5)  # the consumer stopped: the reader closed its source
