"""``mcdrop acquire POOL -k K --method M``: the K rows of an unlabelled pool to label next, best first.

POOL is read in chunks (CSV, Parquet, .npy, .npz or IDX, as ``mcdrop score`` reads); every chunk gets
``--samples`` MC passes with consistent masks (one network per pass for the whole pool), so the answer does
not depend on --batch-size.  bald, entropy and margin keep a running top K (memory stays flat); batchbald
keeps the pool's class probabilities (samples x rows x classes float32) and selects greedily at the end, at
a cost per pick of up to 1,000 label configurations x samples x rows x classes (subsample a large pool first);
random runs no passes.  With --url the pool is sent to a running service's ``POST /acquire`` in one request.
Output: CSV ``rank,row,score`` (row: the row number in POOL) to OUTPUT or standard output.

Exit codes: 0 success, 1 data or runtime error, 2 usage error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from mcdrop.cli.common import INPUT_FLAGS, CLIError, log
from mcdrop.io.atomic import atomic_write
from mcdrop.plan import draw_seed
from mcdrop.request import DEFAULT_N_SAMPLES

METHODS = ("bald", "batchbald", "entropy", "margin", "random")


def add_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(name, help="choose the pool rows to label next", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pool", type=Path, metavar="POOL", help="unlabelled inputs (.csv, .parquet, .npy, .npz, IDX)")
    p.add_argument("-k", type=int, required=True, metavar="K", help="how many rows to choose")
    p.add_argument("--method", choices=METHODS, default="bald", help="acquisition function (default bald)")
    p.add_argument("--samples", "-n", type=int, default=DEFAULT_N_SAMPLES, metavar="N",
                   help=f"MC passes per row (default {DEFAULT_N_SAMPLES})")
    p.add_argument("--seed", type=int, metavar="S", help="seed of the masks and of random (default: random, logged)")
    p.add_argument("--model", metavar="NAME|PATH", help="classifier (default: the bundled default model); with --url: "
                                                        "the served model's name")
    p.add_argument("--url", metavar="URL", help="ask a running mcdrop service instead (the pool in one request)")
    p.add_argument("--output", "-o", type=Path, metavar="OUTPUT", help="CSV file (default: standard output)")
    p.add_argument("--batch-size", type=int, default=4096, metavar="ROWS", help="rows read at a time (4096)")
    p.add_argument("--input-format", choices=["csv", "parquet", "npy", "npz", "idx"], help="default: from POOL's name")
    p.add_argument("--columns", metavar="SPEC", help="CSV/Parquet feature columns (as in mcdrop score)")
    p.add_argument("--key", help=".npz array holding the inputs")
    p.add_argument("--scale", default="auto", metavar="auto|FLOAT", help="multiply inputs by this (auto: 1/255 for "
                                                                         "uint8 images, else 1)")
    p.add_argument("--threads", type=int, help="torch threads")
    p.add_argument("--quiet", "-q", action="store_true", help="no log lines, only errors")
    p.set_defaults(run=run)


def _check_flags(args: argparse.Namespace) -> None:
    if args.k < 1:
        raise CLIError(f"-k: has to be a positive number of rows, but got {args.k}", 2)
    if args.samples < 1:
        raise CLIError(f"--samples: has to be a positive number of passes, but got {args.samples}", 2)
    if args.batch_size < 1:
        raise CLIError(f"--batch-size: has to be a positive number of rows, but got {args.batch_size}", 2)
    if args.seed is not None and not 0 <= args.seed < 1 << 63:
        raise CLIError(f"--seed: has to be in [0, 2**63), but got {args.seed}", 2)


def _chunks(args: argparse.Namespace, source: Any, scale: float, rows: list[np.ndarray]) -> Any:
    for chunk in source.chunks:
        if chunk.bad:
            row, reason = chunk.bad[0]
            raise CLIError(f"{args.pool}: row {row}: {reason}")
        rows.append(chunk.rows)
        yield chunk.x * np.float32(scale) if scale != 1.0 else chunk.x


def run(args: argparse.Namespace) -> int:
    from mcdrop.cli.score import _scale
    from mcdrop.io.readers import InputError, open_input

    _check_flags(args)
    seed = args.seed if args.seed is not None else draw_seed()  # the door
    try:
        source = open_input(args.pool, format=args.input_format, columns=args.columns, key=args.key,
                            chunk_rows=args.batch_size)
    except InputError as err:
        raise CLIError(str(err), 2 if err.usage else 1, flags=INPUT_FLAGS) from err
    scale = _scale(args.scale, source.dtype)
    rows: list[np.ndarray] = []
    if args.url:
        indices, scores = _remote(args, np.concatenate(list(_chunks(args, source, scale, rows))), seed)
    else:
        indices, scores = _local(args, source, scale, rows, seed)
    file_rows = np.concatenate(rows)
    lines = ["rank,row,score"] + [f"{r},{int(file_rows[i])},{s:.9g}" for r, (i, s) in enumerate(zip(indices, scores,
                                                                                                      strict=True))]
    text = "\n".join(lines) + "\n"
    if args.output:
        try:
            atomic_write(args.output, text)
        except OSError as err:
            raise CLIError(f"--output {args.output}: cannot write: {err.strerror or err}") from err
    else:
        sys.stdout.write(text)
    if not args.quiet:
        log(f"mcdrop acquire: {args.method}, {len(indices)} of {len(file_rows)} rows, {args.samples} passes, seed {seed}")
    return 0


def _local(args: argparse.Namespace, source: Any, scale: float, rows: list[np.ndarray], seed: int
           ) -> tuple[list[int], list[float]]:
    import torch

    from mcdrop.cli.common import setup_torch
    from mcdrop.nets.artifacts import ArtifactError, ModelNotFoundError
    from mcdrop.request import Task
    from mcdrop.serving.predictor import Predictor
    from mcdrop.uncertainty.acquisition import acquire_pool

    setup_torch(args.threads)
    try:
        served = Predictor([args.model] if args.model else None).served()
    except (ArtifactError, FileNotFoundError) as err:
        raise CLIError(f"--model: {err}", 2 if isinstance(err, ModelNotFoundError) else 1) from err
    card = served.card
    if card.task is not Task.CLASSIFICATION:
        raise CLIError(f"--model: acquisition scores class probabilities, but {card.name!r} is a {card.task.value} model", 2)
    if source.width != card.input_size:
        raise CLIError(f"{args.pool}: rows have {source.width} features, but model {card.name!r} expects {card.input_size}")
    chunks = (torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)) for x in _chunks(args, source, scale, rows))
    try:
        got = acquire_pool(served.engine, chunks, args.k, args.method, n_samples=args.samples, seed=seed)
    except ValueError as err:
        if str(err).startswith("k has to be"):
            raise CLIError(f"-k: {err}", 2) from err
        raise
    return got.indices.tolist(), got.scores.tolist()


def _remote(args: argparse.Namespace, pool: np.ndarray, seed: int) -> tuple[list[int], list[float]]:
    from mcdrop.client import APIError, Client, ClientError

    try:
        with Client(args.url) as client:
            got = client.acquire(pool, args.k, method=args.method, n_samples=args.samples, seed=seed, model=args.model)
    except ValueError as err:
        raise CLIError(str(err), 2) from err
    except APIError as err:
        raise CLIError(f"{args.url}: HTTP {err.status}: {err.message}") from err
    except ClientError as err:
        raise CLIError(f"{args.url}: {err}") from err
    return got.indices, got.scores
