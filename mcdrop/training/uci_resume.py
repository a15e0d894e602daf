"""Resumable UCI runs: per-split results appended to a JSON-lines file, one chunk of splits at a time.

A run over a dataset's splits is cut into fixed chunks (``chunk`` consecutive split indices); each chunk trains
as one stack (:func:`mcdrop.training.uci.run_protocol` or :func:`mcdrop.training.concrete_uci.run_concrete`
with ``only=``) and, when it is done, appends one line per split to the file.  Starting the same run again
skips every chunk whose splits are all in the file, so an interrupted run loses at most the chunk in flight.
Chunk ``c`` (first split ``k0``) trains with the seed ``config.seed + SEED_STRIDE * k0``: a split's result
depends on its chunk, not on when the run was interrupted.

A line is ``{"key": {...}, "split": k, "result": {...}, "chunk": [...], "chunk_seconds": s, "threads": n}``;
``key`` names the run (dataset, protocol, epochs, T, seed, options), and only lines with an equal key count.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from mcdrop.training.concrete_uci import ConcreteOptions, run_concrete
from mcdrop.training.configs import UCIConfig
from mcdrop.training.data import UCIDataset
from mcdrop.training.uci import mean_se, run_protocol

__all__ = ["PROTOCOLS", "SEED_STRIDE", "chunks", "load_results", "run_key", "run_resumable", "summarise_results"]

Log = Callable[[str], None]
PROTOCOLS = ("grid", "grid-hetero", "concrete")
SEED_STRIDE = 10_000


def chunks(indices: Sequence[int], size: int) -> list[list[int]]:
    """The fixed chunks ``[[0..size-1], [size..2 size-1], ...]`` that hold ``indices`` (those indices only)."""
    if size < 1:
        raise ValueError(f"chunk size has to be >= 1, but got {size}")
    out: dict[int, list[int]] = {}
    for k in sorted(set(indices)):
        out.setdefault(k // size, []).append(k)
    return list(out.values())


def run_key(dataset: UCIDataset, config: UCIConfig, protocol: str, options: ConcreteOptions | None = None,
            chunk: int = 5) -> dict[str, Any]:
    """What makes two runs the same run (JSON-serialisable)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol has to be one of {', '.join(PROTOCOLS)}, but got {protocol!r}")
    key: dict[str, Any] = {"dataset": dataset.name, "protocol": protocol, "epochs": config.epochs(dataset),
                           "samples": config.samples, "val_samples": config.val_samples, "seed": config.seed,
                           "chunk": chunk}
    if protocol in ("grid-hetero", "concrete") and config.beta_nll:  # absent at 0, so the keys of earlier runs still match
        key["beta_nll"] = config.beta_nll
    if protocol != "concrete" and config.lr_schedule != "constant":  # absent when constant, as beta_nll at 0
        key["lr_schedule"] = config.lr_schedule
    if protocol == "concrete":
        chosen = asdict(options or ConcreteOptions())
        quiet = ({"trace_every"} | ({"rate_objective", "val_passes"} if chosen["rate_objective"] == "elbo" else set())
                 | (set() if chosen["keep_best"] else {"keep_best"}) | (set() if chosen["cap"] < 1 else {"cap"}))
        key["options"] = {k: v for k, v in chosen.items() if k not in quiet}  # earlier runs' keys still match
    return key


def load_results(path: str | os.PathLike[str], key: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The lines of ``path`` (with ``key`` equal to the given one, if given), in file order; [] if no file."""
    path = Path(path)
    if not path.exists():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [line for line in lines if key is None or line["key"] == key]


def _append(path: Path, lines: list[dict[str, Any]]) -> None:
    """Append whole lines in one ``write`` on an ``O_APPEND`` descriptor (so two runs appending to one file do
    not interleave) and sync them to disk."""
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(fd, data)
        if written != len(data):
            raise OSError(f"{path}: wrote {written} of {len(data)} bytes")
        os.fsync(fd)
    finally:
        os.close(fd)


def run_resumable(dataset: UCIDataset, config: UCIConfig, path: str | os.PathLike[str], *, protocol: str,
                  options: ConcreteOptions | None = None, chunk: int = 5, splits: Sequence[int] | None = None,
                  log: Log | None = None) -> list[dict[str, Any]]:
    """Run ``protocol`` on the split indices ``splits`` (default: the first ``config.splits``, or all) chunk by
    chunk, appending to ``path``; chunks already there are skipped.  Returns this run's lines for those splits.
    """
    log = log or (lambda _m: None)
    path = Path(path)
    key = run_key(dataset, config, protocol, options, chunk)
    wanted = list(splits) if splits is not None else list(range(config.splits or len(dataset.splits)))
    bad = [k for k in wanted if not 0 <= k < len(dataset.splits)]
    if bad:
        raise ValueError(f"splits {bad} do not exist: {dataset.name} has splits 0..{len(dataset.splits) - 1}")
    done = {line["split"] for line in load_results(path, key)}
    for part in chunks(wanted, chunk):
        if set(part) <= done:
            continue
        first = (part[0] // chunk) * chunk
        chunk_config = replace(config, seed=config.seed + SEED_STRIDE * first, splits=None)
        start = time.perf_counter()
        if protocol == "concrete":
            result: Any = run_concrete(dataset, chunk_config, options=options or ConcreteOptions(), only=part, log=log)
            extra = {s.split: {"trace": result.trace.get(s.split, [])} for s in result.splits}
        else:
            result = run_protocol(dataset, chunk_config, heteroscedastic=protocol == "grid-hetero", only=part, log=log)
            extra = {}
        seconds = time.perf_counter() - start
        _append(path, [{"key": key, "split": s.split, "result": asdict(s), "chunk": part, "chunk_seconds": seconds,
                        "threads": torch.get_num_threads(), **extra.get(s.split, {})} for s in result.splits])
        log(f"{dataset.name} {protocol}: splits {part} in {seconds:.0f} s")
    wanted_set = set(wanted)
    return [line for line in load_results(path, key) if line["split"] in wanted_set]


def summarise_results(lines: Sequence[dict[str, Any]], metrics: Sequence[str] = ("rmse", "ll")
                      ) -> dict[str, Any]:
    """Mean and standard error over splits of each metric, the split count and the summed chunk seconds.

    One line per split counts (the last, if a split appears twice)."""
    by_split = {line["split"]: line for line in lines}
    out: dict[str, Any] = {"splits": len(by_split),
                           "seconds": sum({tuple(v["chunk"]): v["chunk_seconds"] for v in by_split.values()}.values())}
    for name in metrics:
        out[name] = mean_se([v["result"][name] for v in by_split.values()]) if by_split else (float("nan"), 0.0)
    return out
