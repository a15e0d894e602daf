"""Writers: every format holds the same numbers, RFC 4180 quoting, atomic and umask-respecting, never a device."""

from __future__ import annotations

import csv
import json
import os
import stat

import numpy as np
import pyarrow.parquet as pq
import pytest

from mcdrop.io.writers import OutputError, clean_stale, open_output
from mcdrop.schemas import PredictResult


def result(n: int = 3) -> PredictResult:
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), size=n)
    columns = {"predicted_class": probs.argmax(1), "confidence": probs.max(1), "probabilities": probs,
               "mutual_information": rng.uniform(size=n), "n_samples": np.full(n, 20),
               "prediction_set": probs > 0.2, "abstain": probs.max(1) < 0.5,
               "abstain_out_of_distribution": np.zeros(n, bool), "abstain_uncertain": probs.max(1) < 0.5}
    return PredictResult(model="m", model_version="1", task="classification", mode="mc", seed=1, columns=columns,
                         class_names=["a, one", 'b "two"', "c"])


def write(path, fmt=None, ids=None):
    r = result()
    writer = open_output(path, format=fmt, with_ids=ids is not None, class_names=r.class_names)
    writer.write(np.arange(3), ids, r)
    writer.commit()
    return r


def test_every_format_holds_the_same_columns(tmp_path):
    r = write(tmp_path / "o.csv", ids=["x,1", "y", 'z"'])
    rows = list(csv.DictReader((tmp_path / "o.csv").open(newline="")))
    assert [row["id"] for row in rows] == ["x,1", "y", 'z"'] and rows[0]["class_name"] == r.class_names[r.predicted_class[0]]
    assert np.allclose([[float(row[f"probabilities_{c}"]) for c in range(3)] for row in rows], r.probabilities)
    assert [row["prediction_set"] for row in rows] == [";".join(map(str, np.flatnonzero(m))) for m in r.columns["prediction_set"]]
    assert {row["abstain"] for row in rows} <= {"true", "false"}
    write(tmp_path / "o.jsonl")
    lines = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert np.allclose([line["probabilities"] for line in lines], r.probabilities)
    assert lines[0]["prediction_set"] == np.flatnonzero(r.columns["prediction_set"][0]).tolist()
    write(tmp_path / "o.npz")
    archive = np.load(tmp_path / "o.npz")
    assert np.array_equal(archive["probabilities"], r.probabilities) and archive["prediction_set"].dtype == bool
    write(tmp_path / "o.parquet")
    table = pq.read_table(tmp_path / "o.parquet")
    assert np.allclose(np.stack(table["probabilities"].to_numpy(zero_copy_only=False)), r.probabilities)
    assert table["row"].to_pylist() == [0, 1, 2] and table["class_name"].to_pylist()[0] == r.class_names[r.predicted_class[0]]


def test_output_respects_the_umask_and_leaves_no_temporary_files(tmp_path):
    old = os.umask(0o027)
    try:
        write(tmp_path / "o.csv")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "o.csv").stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.csv"]


def test_devices_fifos_and_directories_are_refused(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    for target, kind in ((tmp_path / "fifo", "a FIFO"), (tmp_path, "a directory"), ("/dev/null", "a device")):
        with pytest.raises(OutputError, match=kind) as err:
            open_output(f"{target}" if target != tmp_path else tmp_path, format="csv")
        assert err.value.usage
    os.symlink("/dev/null", tmp_path / "link.csv")
    with pytest.raises(OutputError, match="a device"):
        open_output(tmp_path / "link.csv")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_stale_temporary_files_of_dead_runs_are_removed(tmp_path):
    dead = 2**22 + 12345  # above the default pid_max: no such process
    (tmp_path / f".o.csv.mcdrop-{dead}-abc.tmp").write_text("half")
    (tmp_path / f".o.csv.mcdrop-{dead}-def.parts").mkdir()
    (tmp_path / f".o.csv.mcdrop-{os.getpid()}-live.tmp").write_text("ours")
    (tmp_path / ".other.csv.mcdrop-1-x.tmp").write_text("another output's")
    removed = clean_stale(tmp_path / "o.csv")
    assert sorted(p.name for p in removed) == [f".o.csv.mcdrop-{dead}-abc.tmp", f".o.csv.mcdrop-{dead}-def.parts"]
    assert (tmp_path / f".o.csv.mcdrop-{os.getpid()}-live.tmp").exists()


def test_aborted_output_leaves_the_old_file(tmp_path):
    (tmp_path / "o.csv").write_text("older\n")
    writer = open_output(tmp_path / "o.csv")
    writer.write(np.arange(3), None, result())
    writer.abort()
    assert (tmp_path / "o.csv").read_text() == "older\n" and len(list(tmp_path.iterdir())) == 1


def test_standard_output_takes_csv_and_jsonl_only():
    with pytest.raises(OutputError, match="standard output"):
        open_output("-", format="npz")
