"""``mcdrop calibrate MODEL DATA --target COLUMN``: fit a model folder's calibration on held-out labelled rows.

Fits what the card needs for decisions (:func:`mcdrop.training.imported.calibrate_model`): the temperature
(classification) or the noise precision (homoscedastic regression), the OOD density and threshold, abstention
thresholds and conformal scores for sets and intervals, and rewrites the model folder (or writes ``--output``).

DATA is a CSV file with a header or a Parquet file whose column ``--target`` holds the labels (class indices or
class names, or regression targets) and whose other columns (or ``--columns``) are the inputs; or a ``.npy``
file of inputs ``(N, D)`` with the labels in a separate file ``--labels`` (``.npy``, or a text file with one
label per line).  The rows must not have been used to train the model.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import Any

import numpy as np

from mcdrop.cli.common import CLIError, setup_torch


def add_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(name, help="fit a model's calibration (temperature, OOD, abstention, conformal) on labelled rows",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL", help="model folder or name")
    p.add_argument("data", metavar="DATA", type=Path, help="held-out rows: .csv or .parquet (--target), .npy (--labels)")
    p.add_argument("--target", metavar="COLUMN", help="the label column of a CSV or Parquet file")
    p.add_argument("--labels", metavar="FILE", type=Path, help="labels of a .npy DATA file (.npy, or one per line)")
    p.add_argument("--columns", metavar="A,B,...", help="input columns in order (default: every column but --target)")
    p.add_argument("--task", choices=["classification", "regression", "homoscedastic", "heteroscedastic"],
                   help="check that the model has this task (the card says which it has)")
    p.add_argument("--output", "-o", type=Path, metavar="DIR", help="write the calibrated folder here (default: in place)")
    p.add_argument("--samples", "-n", type=int, default=50, help="MC passes for the MC-mode scores (default 50)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, masks and conformal uniforms (default 0)")
    p.add_argument("--threads", type=int, help="torch threads")
    p.set_defaults(run=run)


def _table(path: Path, target: str | None, columns: str | None) -> tuple[np.ndarray, np.ndarray]:
    suffix = path.suffix.lower()
    if target is None:
        raise CLIError(f"DATA {path} is a {suffix} file: name its label column with --target COLUMN", 2)
    if suffix == ".csv":
        try:
            with open(path, newline="") as fh:
                rows = list(csv.reader(fh))
        except (OSError, UnicodeDecodeError) as err:
            raise CLIError(f"DATA {path}: cannot read it: {err}") from err
        if len(rows) < 2:
            raise CLIError(f"DATA {path} has no rows under its header")
        header, body = rows[0], [r for r in rows[1:] if r]
        names = [h.strip() for h in header]
        table = {n: [r[i] if i < len(r) else "" for r in body] for i, n in enumerate(names)}
    else:
        try:
            import pyarrow.parquet as pq

            data = pq.read_table(path)
        except ImportError as err:
            raise CLIError("reading Parquet needs pyarrow: pip install 'mcdrop[parquet]'", 2) from err
        except Exception as err:
            raise CLIError(f"DATA {path}: not a readable Parquet file: {err}") from err
        names = list(data.column_names)
        table = {n: data.column(n).to_pylist() for n in names}
    if target not in names:
        raise CLIError(f"--target {target!r}: DATA {path} has no such column (its columns: {', '.join(names[:20])})", 2)
    use = [c.strip() for c in columns.split(",")] if columns else [n for n in names if n != target]
    missing = [c for c in use if c not in names]
    if missing:
        raise CLIError(f"--columns: DATA {path} has no column {missing[0]!r}", 2)
    x = np.empty((len(table[target]), len(use)), dtype=np.float32)
    for j, name in enumerate(use):
        for i, value in enumerate(table[name]):
            try:
                x[i, j] = float(value)
            except (TypeError, ValueError):
                raise CLIError(f"DATA {path}: row {i + 1}, column {name!r}: {value!r} is not a number") from None
    return x, _label_array(table[target])


def _label_array(values: list[Any]) -> np.ndarray:
    try:
        return np.asarray([float(v) for v in values], dtype=np.float64)
    except (TypeError, ValueError):
        return np.asarray([str(v).strip() for v in values])


def _npy(path: Path, labels: Path | None) -> tuple[np.ndarray, np.ndarray]:
    if labels is None:
        raise CLIError(f"DATA {path} is a .npy file: give its labels with --labels FILE", 2)
    try:
        x = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise CLIError(f"DATA {path}: not a readable .npy file of numbers: {err}") from err
    try:
        if labels.suffix.lower() == ".npy":
            y = np.load(labels, allow_pickle=False)
        else:
            y = _label_array([line.strip() for line in labels.read_text().splitlines() if line.strip()])
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise CLIError(f"--labels {labels}: cannot read it: {err}") from err
    return np.asarray(x, dtype=np.float32).reshape(len(x), -1), np.asarray(y)


def run(args: argparse.Namespace) -> int:
    from mcdrop.nets.artifacts import ArtifactError, ModelNotFoundError, load_artifact
    from mcdrop.training.imported import CalibrationDataError, calibrate_model

    setup_torch(args.threads)
    if args.samples < 1:
        raise CLIError(f"--samples has to be a positive integer, but got {args.samples}", 2)
    if not args.data.is_file():
        raise CLIError(f"DATA {args.data}: no such file", 2)
    try:
        art = load_artifact(args.model)  # loaded once: checked here, calibrated below
    except ArtifactError as err:
        raise CLIError(str(err), 2 if isinstance(err, ModelNotFoundError) else 1) from err
    card = art.card
    wanted = {"regression": "homoscedastic"}.get(args.task, args.task)
    if wanted is not None and wanted != card.task.value and not (args.task == "regression" and card.task != "classification"):
        raise CLIError(f"--task {args.task}: model {card.name!r} is a {card.task.value} model", 2)
    if args.data.suffix.lower() in (".npy",):
        x, y = _npy(args.data, args.labels)
    elif args.data.suffix.lower() in (".csv", ".parquet", ".pq"):
        x, y = _table(args.data, args.target, args.columns)
    else:
        raise CLIError(f"DATA {args.data}: expected a .csv, .parquet or .npy file", 2)
    try:
        report = calibrate_model(art, x, y, output=args.output, n_samples=args.samples, seed=args.seed)
    except CalibrationDataError as err:
        raise CLIError(f"DATA {args.data}: {err}") from err
    except ArtifactError as err:
        raise CLIError(str(err)) from err
    print("\n".join(report.lines()))
    return 0
