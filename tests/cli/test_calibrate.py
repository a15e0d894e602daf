"""`mcdrop calibrate`: real files in, the calibrated folder out; bad data refused in one line naming it."""

from __future__ import annotations

import numpy as np
import pytest

import mcdrop
from mcdrop.cli.main import main
from mcdrop.nets.artifacts import load_artifact
from tests.nets.zoo import case


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    model, example, kwargs = case("mlp_classifier")
    folder = tmp_path_factory.mktemp("cal") / "clf"
    mcdrop.export_model(model, folder, example_input=example, **kwargs)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(int) + (x[:, 1] > 0.5).astype(int)
    return folder, x, y


def _csv(path, x, labels):
    header = ",".join([f"f{i}" for i in range(x.shape[1])] + ["label"])
    rows = [",".join([*(f"{v:.6f}" for v in row), str(lab)]) for row, lab in zip(x, labels, strict=True)]
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


def test_calibrate_a_csv_with_class_names(classifier, tmp_path, capsys):
    folder, x, y = classifier
    names = np.array(["low", "mid", "high"])[y]
    data = _csv(tmp_path / "held.csv", x, names)
    out = tmp_path / "calibrated"
    assert main(["calibrate", str(folder), str(data), "--target", "label", "-o", str(out), "--samples", "10"]) == 0
    text = capsys.readouterr().out
    assert "on 300 rows: density 120, fit 60, calibration 120" in text and "coverage up to 0.9917" in text
    art = load_artifact(out)
    assert art.calibration is not None and art.calibration.supports("coverage", "mc")
    assert art.card.temperature is not None and art.calibration.density is not None


def test_calibrate_a_parquet_column(classifier, tmp_path, capsys):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    folder, x, y = classifier
    table = pa.table({**{f"f{i}": x[:, i] for i in range(6)}, "label": y, "other": np.zeros(len(y))})
    pq.write_table(table, tmp_path / "held.parquet")
    assert main(["calibrate", str(folder), str(tmp_path / "held.parquet"), "--target", "label", "--columns",
                 ",".join(f"f{i}" for i in range(6)), "-o", str(tmp_path / "out"), "-n", "5"]) == 0
    assert "on 300 rows" in capsys.readouterr().out


def test_calibrate_npy_with_a_labels_file(classifier, tmp_path, capsys):
    folder, x, y = classifier
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    assert main(["calibrate", str(folder), str(tmp_path / "x.npy"), "--labels", str(tmp_path / "y.npy"),
                 "-o", str(tmp_path / "out"), "-n", "5"]) == 0
    assert "calibrated clf" in capsys.readouterr().out


@pytest.mark.parametrize(("make", "message"), [
    (lambda x, y: (x[:, :5], y), "the data has 5 input columns, but model 'clf' expects 6 per row"),
    (lambda x, y: (x, np.where(y == 2, 7, y)), "label(s) outside the classes 0..2 of the model, e.g. 7"),
    (lambda x, y: (x, np.array(["dog"] * len(y))), "label 'dog' is neither a class name (low, mid, high)"),
    (lambda x, y: (x[:10], y[:10]), "10 rows are too few to calibrate"),
])
def test_bad_data_is_refused_naming_it(classifier, tmp_path, capsys, make, message):
    folder, x, y = classifier
    bx, by = make(x, y)
    data = _csv(tmp_path / "bad.csv", bx, by)
    assert main(["calibrate", str(folder), str(data), "--target", "label", "-o", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert message in err and str(data) in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_usage_errors(classifier, tmp_path, capsys):
    folder, x, y = classifier
    data = _csv(tmp_path / "d.csv", x, y)
    assert main(["calibrate", str(folder), str(data), "--target", "nope"]) == 2
    assert "--target 'nope': DATA" in capsys.readouterr().err
    assert main(["calibrate", str(folder), str(data), "--target", "label", "--task", "regression"]) == 2
    assert "model 'clf' is a classification model" in capsys.readouterr().err
    np.save(tmp_path / "x.npy", x)
    assert main(["calibrate", str(folder), str(tmp_path / "x.npy")]) == 2
    assert "--labels" in capsys.readouterr().err
