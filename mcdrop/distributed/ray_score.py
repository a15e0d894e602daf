"""Bulk scoring on Ray Data: ``mcdrop score --engine ray``.

The driver plans the work as *parts* of the input files whose global row numbers it knows from the files'
own metadata: row ranges of ``.npy`` files (their headers give the row counts), row groups of Parquet files
(their footers), whole CSV, IDX and ``.npz`` files (CSV rows are counted once; the others' headers say).
``ray.data.from_items(parts)`` spreads them over the blocks, and ``map_batches`` with an actor pool scores
them: each actor loads the model once (safetensors, sha256-checked; nothing is pickled but plain arrays) and
reads its parts itself with :mod:`mcdrop.io.readers`.  A row's masks depend on (seed, its global row number,
sample), never on the number of blocks, actors or the batch size, so the output equals ``mcdrop score``'s
for the same seed (within the float32 rounding of another process and thread count, README
"Reproducibility").  With ``preserve_order`` the driver receives the scored rows in input order and writes
one output file with the usual writers (atomically, any format).

Resources: with ``actors`` actors on ``cores`` cores, each actor runs ``cores // actors`` torch threads and
asks Ray for ``(cores - 0.5) / actors`` CPUs, so Ray always keeps some CPU for its own tasks (an actor pool
that takes every CPU can starve the rest of the pipeline).
"""

from __future__ import annotations

import csv
import itertools
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mcdrop.io.readers import InputError, detect_format, open_input

__all__ = ["PARTS_PER_ACTOR", "RayJob", "plan_parts", "score_parts"]

ROWS_PER_PART = 50_000
PARTS_PER_ACTOR = 4
"""Parts the CLI asks for per actor (at least): every actor gets work, and the rows come back (in order, so the
progress bar moves) part by part rather than all at the end."""
_FORMATS = ("npy", "parquet", "csv", "idx", "npz")


@dataclass(frozen=True)
class RayJob:
    """What every actor needs: the model, the request options, how to read, and its resources."""

    model: str | None
    options: dict[str, Any]
    reader: dict[str, Any]
    scale: float
    batch_size: int
    threads: int


def input_files(path: Path, fmt: str | None) -> list[Path]:
    """``path`` itself, or the readable files of a directory in name order (zero-pad numbered file names)."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        files = [p for p in files if fmt is not None or _known(p)]
        if not files:
            raise InputError(f"{path}: the directory holds no input files (.npy, .parquet, .csv, .npz, IDX)")
        return files
    return [path]


def _known(path: Path) -> bool:
    try:
        detect_format(path)
    except InputError:
        return False
    return True


def _csv_rows(path: Path, header: str) -> int:
    with path.open("r", newline="", encoding="utf-8-sig") as fh:
        records = [r for r in csv.reader(fh) if any(c.strip() for c in r)]
    if not records:
        return 0
    first = [c.strip() for c in records[0]]
    numeric = all(_is_number(c) for c in first)
    has_header = header == "yes" or (header == "auto" and not numeric)
    return len(records) - (1 if has_header else 0)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def plan_parts(files: list[Path], fmt: str | None, *, header: str = "auto", key: str | None = None,
               rows_per_part: int = ROWS_PER_PART, min_parts: int = 1) -> tuple[list[dict[str, Any]], int]:
    """Parts of ``files``, each with the global row number its file starts at (``offset``), and the rows in all.

    ``.npy`` and Parquet files are cut into row ranges of at most ``rows_per_part`` rows, and into at least
    ``min_parts`` parts (so every actor has work, and progress advances part by part; a Parquet part reads only
    the row groups its range overlaps); other files are one part each.
    """
    parts: list[dict[str, Any]] = []
    offset = 0
    for path in files:
        kind = fmt or detect_format(path)
        if kind not in _FORMATS:
            raise InputError(f"{path}: Ray scoring reads {', '.join(_FORMATS)}, not {kind}")
        base = {"path": str(path.resolve()), "format": kind, "lo": -1, "hi": -1, "groups": ""}
        if kind in ("npy", "parquet"):
            n = open_input(path, format=kind).n_rows or 0
            step = max(1, min(rows_per_part, math.ceil(n / min_parts)))
            for lo in range(0, n, step):
                parts.append({**base, "offset": offset, "lo": lo, "hi": min(n, lo + step)})
        elif kind == "csv":
            n = _csv_rows(path, header)
            parts.append({**base, "offset": offset})
        else:
            n = open_input(path, format=kind, key=key).n_rows or 0
            parts.append({**base, "offset": offset})
        offset += n
    return parts, offset


class Scorer:
    """The actor: loads the model once, then scores the parts it is given (see the module docs)."""

    def __init__(self, job: RayJob) -> None:
        import torch

        from mcdrop.sampling.runtime import tune_allocator
        from mcdrop.serving.predictor import Predictor

        tune_allocator()
        torch.set_num_threads(job.threads)
        self.job = job
        self.predictor = Predictor([job.model] if job.model else None)
        # Every output batch has the same columns (Ray joins them): bad rows get fill values of the right shape.
        width = self.predictor.card().input_size
        self.template = self.predictor.predict_array(np.zeros((1, width), np.float32), **job.options).columns

    def __call__(self, batch: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        for i in range(len(batch["path"])):
            yield from self._part({k: v[i] for k, v in batch.items()})

    def _part(self, part: dict[str, Any]) -> Iterator[dict[str, np.ndarray]]:
        job = self.job
        rows = (int(part["lo"]), int(part["hi"])) if int(part["hi"]) >= 0 else None
        groups = [int(g) for g in str(part["groups"]).split(",")] if str(part["groups"]) else None
        source = open_input(part["path"], format=str(part["format"]), chunk_rows=job.batch_size, rows=rows,
                            row_groups=groups, **job.reader)
        shift = int(part["offset"])  # chunks number rows within their file; the file starts at this global row
        with_ids = job.reader.get("id_column") is not None
        for chunk in source.chunks:
            n_good, n_bad = len(chunk.x), len(chunk.bad)
            if n_good:
                x = chunk.x * np.float32(job.scale) if job.scale != 1.0 else chunk.x
                numbers = chunk.rows + shift
                columns = (self.predictor.predict_array(x, row_offset=int(numbers[0]), **job.options)
                           if _consecutive(numbers) else _scattered(self.predictor, x, numbers, job.options)).columns
            out: dict[str, np.ndarray] = {
                "row": np.concatenate([chunk.rows + shift, np.array([r for r, _ in chunk.bad], dtype=np.int64) + shift]),
                "bad": np.array([""] * n_good + [why for _, why in chunk.bad], dtype=object),
            }
            for name, value in self.template.items():
                fill = np.full((n_bad, *value.shape[1:]), _FILL[value.dtype.kind], dtype=value.dtype)
                out[name] = np.concatenate([np.asarray(columns[name]), fill]) if n_good else fill
            if with_ids:
                out["id"] = np.array([*(chunk.ids or [""] * n_good), *[""] * n_bad], dtype=object)
            if n_good + n_bad:
                yield out


_FILL = {"f": np.nan, "i": -1, "u": 0, "b": False}


def _consecutive(rows: np.ndarray) -> bool:
    return bool(len(rows) == 0 or (rows[-1] - rows[0] == len(rows) - 1))


def _scattered(predictor: Any, x: np.ndarray, rows: np.ndarray, options: dict[str, Any]) -> Any:
    """Rows split by bad rows: score each consecutive run at its own row numbers, then join."""
    from mcdrop.schemas import PredictResult

    breaks = [0, *(np.flatnonzero(np.diff(rows) != 1) + 1).tolist(), len(rows)]
    parts = [predictor.predict_array(x[a:b], row_offset=int(rows[a]), **options)
             for a, b in itertools.pairwise(breaks)]
    return PredictResult.concat(parts)


def start_ray(address: str | None, cores: int) -> None:
    """Attach to the cluster at ``address``, or start a private local Ray with ``cores`` CPUs, quietly."""
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    import ray

    logging.getLogger("ray").setLevel(logging.ERROR)
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
    else:
        ray.init(address="local", num_cpus=cores, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.ERROR, object_store_memory=512 << 20)


def score_parts(parts: list[dict[str, Any]], job: RayJob, *, actors: int, blocks: int | None = None,
                cores: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """The scored rows in input order, as batches of columns (``row``, ``bad``, ``id``, the result's fields)."""
    import ray
    import ray.data

    for name in ("ray", "ray.data", "ray.data._internal.execution.streaming_executor"):
        logging.getLogger(name).setLevel(logging.ERROR)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False
    cores = cores or int(ray.cluster_resources().get("CPU", 1))
    n_blocks = min(blocks or len(parts), len(parts))
    ds = ray.data.from_items(parts, override_num_blocks=n_blocks)
    scored = ds.map_batches(Scorer, fn_constructor_kwargs={"job": job}, batch_size=1, batch_format="numpy",
                            compute=ray.data.ActorPoolStrategy(size=min(actors, n_blocks)),
                            num_cpus=max(0.1, (cores - 0.5) / actors), max_restarts=0)
    yield from scored.iter_batches(batch_size=None, batch_format="numpy")


def threads_per_actor(cores: int, actors: int) -> int:
    return max(1, math.floor(cores / actors))
