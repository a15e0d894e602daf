"""``mcdrop score INPUT -o OUTPUT``: score a file in bulk, in-process (``--model``) or through a service (``--url``).

INPUT: CSV (header optional; pick feature columns with --columns), Parquet (numeric or fixed-size list
columns; mcdrop[parquet]), NumPy .npy/.npz, or IDX images (optionally .gz); with --engine ray also a
directory of such files.  uint8 inputs (images) are divided by 255 unless --scale says otherwise; inputs
that look like 0-255 pixels for a model expecting [0, 1] get one warning.
OUTPUT: .csv, .jsonl, .npz or .parquet (or - for standard output) with the row number, the prediction,
the probabilities or mean and every uncertainty field.  The file is read, scored and written in chunks
(memory stays flat) and appears only when the run succeeds.  Masks depend on (seed, row number, sample), so the same seed
gives the same numbers locally and remotely, whatever --batch-size.

Exit codes: 0 success, 1 data or runtime error, 2 usage error, 141 standard output closed by its reader.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import os
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from mcdrop.cli.common import INPUT_FLAGS, OUTPUT_FLAGS, CLIError, as_flags, is_terminal, log
from mcdrop.plan import with_seed
from mcdrop.request import DEFAULT_LEVEL, DEFAULT_MAX_SAMPLES, DEFAULT_N_SAMPLES

if TYPE_CHECKING:
    from mcdrop.io.readers import InputFile
    from mcdrop.io.writers import ScoredRows, Writer

Scorer = Callable[[np.ndarray, int], "ScoredRows"]  # (rows (n, D) float32, row number of the first) -> PredictResult
T = TypeVar("T")


def add_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(name, help="score a file of inputs", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", type=Path, metavar="INPUT", help="input file (.csv, .parquet, .npy, .npz, IDX)")
    p.add_argument("--output", "-o", type=Path, required=True, metavar="OUTPUT",
                   help="output file (.csv, .jsonl, .npz, .parquet), or - for standard output (CSV or JSON Lines)")
    p.add_argument("--model", metavar="NAME|PATH",
                       help="score in-process with this model (default: the bundled default model); with --url: "
                            "the served model's name")
    p.add_argument("--url", metavar="URL", help="score through a running mcdrop service instead, e.g. http://127.0.0.1:3000")
    p.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local: this process; ray: Ray Data actors (INPUT may be a directory of files; mcdrop[ray])")
    p.add_argument("--address", metavar="ADDR", help="with --engine ray: the Ray cluster to attach to (default: start a "
                                                     "local one with this machine's cores)")
    p.add_argument("--actors", type=int, metavar="N", help="with --engine ray: actors, each loading the model once "
                                                           "(default: the cores)")
    p.add_argument("--blocks", type=int, metavar="N", help="with --engine ray: blocks the input is spread over "
                                                           "(default: one per part; 4 parts per actor or more)")
    p.add_argument("--mode", choices=["deterministic", "mc"], default="mc", help="dropout off, or MC sampling (default mc)")
    p.add_argument("--samples", "-n", type=int, default=DEFAULT_N_SAMPLES, metavar="N",
                   help=f"MC passes per row (default {DEFAULT_N_SAMPLES})")
    p.add_argument("--seed", type=int, metavar="S", help="seed of the dropout masks (default: random, logged)")
    p.add_argument("--tolerance", type=float, metavar="TOL",
                   help="adaptive sampling: double N until the MC standard error is at most TOL")
    p.add_argument("--stop", choices=["decision", "class"],
                   help="stop each row when its decisions (decision: class, set, abstention; class: the class) will not "
                        "change with more passes, with probability 1 - DELTA; --max-samples caps the passes")
    p.add_argument("--delta", type=float, metavar="DELTA", help="--stop's risk (default 0.001)")
    p.add_argument("--max-samples", type=int, metavar="N",
                   help=f"cap of adaptive sampling (default {DEFAULT_MAX_SAMPLES}, or the server's limit)")
    p.add_argument("--level", type=float, default=DEFAULT_LEVEL,
                   help=f"prediction-interval level for regression ({DEFAULT_LEVEL})")
    p.add_argument("--coverage", type=float, metavar="C",
                   help="conformal prediction sets (classification) or intervals (regression) with this coverage")
    p.add_argument("--set-method", choices=["aps", "raps", "lac", "aps_randomized", "raps_randomized"], default="aps",
                   help="conformal set score (aps); the *_randomized sets may be empty")
    p.add_argument("--selective-risk", type=float, metavar="R",
                   help="abstain so that the error rate among answered rows stays below R (calibrated models)")
    p.add_argument("--selective-coverage", type=float, metavar="C",
                   help="abstain on the least certain rows so that a share C is answered (calibrated models)")
    p.add_argument("--batch-size", type=int, default=1024, metavar="ROWS", help="rows read and scored at a time (1024)")
    p.add_argument("--input-format", choices=["csv", "parquet", "npy", "npz", "idx"], help="default: from INPUT's name")
    p.add_argument("--output-format", choices=["csv", "jsonl", "npz", "parquet"], help="default: from OUTPUT's suffix")
    p.add_argument("--columns", metavar="SPEC", help="CSV/Parquet feature columns: names, 0-based indices or ranges "
                                                     "a:b, comma-separated (default: all but --id-column)")
    p.add_argument("--id-column", metavar="NAME|INDEX", help="CSV/Parquet column copied to the output as 'id'")
    p.add_argument("--header", choices=["auto", "yes", "no"], default="auto", help="CSV header line (default auto)")
    p.add_argument("--max-line-length", type=int, metavar="CHARS",
                   help="CSV: the longest line accepted (default: 16 MiB for the first line, then 64 characters "
                        "per column + 64 KiB, so a file without line breaks is refused without reading it whole)")
    p.add_argument("--key", help=".npz array holding the inputs (default: the only one, or inputs/x/images)")
    p.add_argument("--scale", default="auto", metavar="auto|FLOAT",
                   help="multiply inputs by this (auto: 1/255 for uint8 inputs, else 1)")
    p.add_argument("--skip-bad-rows", action="store_true",
                   help="score the good rows and list the bad ones (row, reason) in --bad-rows")
    p.add_argument("--bad-rows", type=Path, metavar="FILE", help="side file of bad rows (default OUTPUT.bad-rows.csv)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress or log lines, only errors and warnings")
    p.add_argument("--threads", type=int, help="torch threads (local scoring)")
    p.add_argument("--device", default="cpu", metavar="DEVICE",
                   help="where the model runs for local scoring: cpu, cuda, cuda:N or auto (default cpu)")
    p.add_argument("--precision", choices=["float32", "tf32", "bfloat16"], default=None,
                   help="local scoring arithmetic: float32, tf32 (CUDA) or bfloat16 (default $MCDROP_PRECISION, else float32)")
    p.add_argument("--timeout", type=float, default=120.0,
                   help="with --url: seconds each batch may take, its requests and retries together (120)")
    p.set_defaults(run=run)


_FLAGS = {"n_samples": "--samples", "max_samples": "--max-samples", "tolerance": "--tolerance", "seed": "--seed",
          "level": "--level", "mode": "--mode", "coverage": "--coverage", "set_method": "--set-method",
          "selective_risk": "--selective-risk", "selective_coverage": "--selective-coverage", "model": "--model",
          "stop": "--stop", "delta": "--delta"}


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """Request options, validated by the shared schema (:class:`~mcdrop.schemas.RequestOptions`); a bad one
    names its flag (exit 2)."""
    from pydantic import ValidationError

    from mcdrop.schemas import RequestOptions

    options = {name: getattr(args, flag.lstrip("-").replace("-", "_"), None) for name, flag in _FLAGS.items()}
    options["n_samples"] = args.samples
    options = {k: v for k, v in options.items() if v is not None and k != "model"}
    try:
        validated = RequestOptions.model_validate(options, strict=False)
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        name = str(first["loc"][0]) if first.get("loc") else str(first.get("type"))
        flag = _FLAGS.get(name, name)
        value = options.get(name)
        raise CLIError(f"{flag}" + (f" {value!r}" if value is not None else "") + f": {first['msg']}", 2) from err
    if args.batch_size < 1:
        raise CLIError(f"--batch-size has to be a positive number of rows, but got {args.batch_size}", 2)
    seed = with_seed(validated).seed  # the door: one seed for the whole file
    return {**options, "seed": seed} if seed is not None else options


def _scale(spec: str, dtype: np.dtype[Any]) -> float:
    if spec == "auto":
        from mcdrop.inputs import scale_for

        return scale_for(dtype)
    try:
        value = float(spec)
    except ValueError as err:
        raise CLIError(f"--scale {spec!r}: expected 'auto' or a number", 2) from err
    if not np.isfinite(value):
        raise CLIError(f"--scale {spec!r}: expected a finite number", 2)
    return value


def _local(args: argparse.Namespace, options: dict[str, Any]) -> tuple[Scorer, Any]:
    from mcdrop.cli.common import setup_torch
    from mcdrop.nets.artifacts import ArtifactError, ModelNotFoundError
    from mcdrop.sampling.precision import check_precision
    from mcdrop.sampling.runtime import resolve_device
    from mcdrop.schemas import RequestOptions
    from mcdrop.serving.errors import PredictError
    from mcdrop.serving.predictor import Predictor

    setup_torch(args.threads)
    try:
        device = resolve_device(args.device)
    except ValueError as err:
        raise CLIError(f"--device: {err}", 2) from err
    precision = args.precision or os.environ.get("MCDROP_PRECISION", "").strip() or None
    try:
        check_precision(precision, device)
    except ValueError as err:
        raise CLIError(f"{'--precision' if args.precision else 'MCDROP_PRECISION'}: {err}", 2) from err
    try:
        predictor = Predictor([args.model] if args.model else None, device=args.device, precision=precision)
    except (ArtifactError, FileNotFoundError) as err:
        raise CLIError(f"--model: {err}", 2 if isinstance(err, ModelNotFoundError) else 1) from err

    try:  # the model's limits and calibration against the flags, before any row is read
        predictor.check_options(RequestOptions.model_validate(options, strict=False))
    except PredictError as err:
        raise CLIError(f"{_FLAGS.get(err.field or '', err.field or '--model')}: {err}", 2) from err

    def score(x: np.ndarray, first_row: int) -> ScoredRows:
        try:
            return predictor.predict_array(x, row_offset=first_row, **options)
        except PredictError as err:
            raise CLIError(f"rows {first_row}..{first_row + len(x) - 1}: {err}") from err

    return score, predictor.card()


def _remote(args: argparse.Namespace, options: dict[str, Any]) -> tuple[Scorer, Any, Callable[[], None]]:
    from mcdrop.client import Client, ClientError

    client = Client(args.url, timeout=args.timeout)
    try:
        served = client.models()
        card = served.card(args.model)
    except ClientError as err:
        client.close()
        raise CLIError(f"--url {args.url}: {err}") from err
    except KeyError as err:
        client.close()
        raise CLIError(f"--model: {err.args[0]}", 2) from err

    def score(x: np.ndarray, first_row: int) -> ScoredRows:
        try:
            return client.predict(x, model=args.model, row_offset=first_row, **options)
        except ClientError as err:
            raise CLIError(f"rows {first_row}..{first_row + len(x) - 1}: {err}") from err

    return score, card, client.close


def _segments(rows: np.ndarray) -> Iterator[tuple[int, int]]:
    """(start, end) index ranges of consecutive row numbers (bad rows split a chunk)."""
    if len(rows) == 0:
        return
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    edges = [0, *breaks.tolist(), len(rows)]
    yield from itertools.pairwise(edges)


class _Progress:
    """A rich bar with rows/s and ETA on a terminal; a log line every 10 s otherwise; nothing with --quiet.

    The total is in rows, or, for a CSV file (whose rows are not counted ahead: that would read it twice), in
    bytes of the file with ``position`` saying how many have been read, shown as a percentage."""

    def __init__(self, total: int | None, quiet: bool, position: Callable[[], int] | None = None) -> None:
        self.done, self.start, self.last_log = 0, time.perf_counter(), time.perf_counter()
        self.bar: Any = None
        self.quiet, self.total, self.position = quiet, total, position
        if not quiet and is_terminal():
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TaskProgressColumn,
                TextColumn,
                TimeRemainingColumn,
            )

            done = TaskProgressColumn() if position is not None else MofNCompleteColumn()
            self.bar = Progress(TextColumn("scoring"), BarColumn(), done,
                                TextColumn("{task.fields[rate]} rows/s"), TimeRemainingColumn(), transient=True)
            self.task = self.bar.add_task("score", total=total, rate="-")
            self.bar.start()

    def advance(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        rate = self.done / max(now - self.start, 1e-9)
        if self.bar is not None:
            if self.position is not None:
                self.bar.update(self.task, completed=min(self.position(), self.total or 0), rate=f"{rate:,.0f}")
            else:
                self.bar.update(self.task, advance=n, rate=f"{rate:,.0f}")
        elif not self.quiet and now - self.last_log > 10:
            share = f", {100 * self.position() / self.total:.0f}% of the file" if self.position and self.total else ""
            log(f"scored {self.done:,} rows ({rate:,.0f} rows/s{share})")
            self.last_log = now

    def close(self) -> float:
        if self.bar is not None:
            self.bar.stop()
        return time.perf_counter() - self.start


def run(args: argparse.Namespace) -> int:
    from mcdrop.io.readers import InputError, open_input
    from mcdrop.io.writers import OutputError, open_output

    options = _options(args)
    say = (lambda _m: None) if args.quiet else log
    if options.get("seed") is not None and args.seed is None:  # drawn at the door: logged so the run can be repeated
        say(f"seed {options['seed']} (pass --seed {options['seed']} to reproduce)")
    stdout = str(args.output) == "-"
    if not stdout and args.output.resolve() == args.input.resolve():
        raise CLIError(f"--output {args.output} is INPUT; choose another file", 2)
    if args.device != "cpu" and (args.engine == "ray" or args.url):
        raise CLIError("--device applies to local scoring (a server picks its device with MCDROP_DEVICE)", 2)
    if args.precision is not None and (args.engine == "ray" or args.url):
        raise CLIError("--precision applies to local scoring (a server takes MCDROP_PRECISION)", 2)
    if args.engine == "ray":
        return _run_ray(args, options, say)
    for flag in ("address", "actors", "blocks"):
        if getattr(args, flag) is not None:
            raise CLIError(f"--{flag} applies to --engine ray", 2)
    try:
        source = open_input(args.input, format=args.input_format, columns=args.columns, id_column=args.id_column,
                            header=args.header, key=args.key, chunk_rows=args.batch_size,
                            max_line=args.max_line_length)
    except InputError as err:
        raise CLIError(str(err), 2 if err.usage else 1, flags=INPUT_FLAGS) from err
    for note in source.notes:
        say(as_flags(note, INPUT_FLAGS))
    scale = _scale(args.scale, source.dtype)
    close: Callable[[], None] = lambda: None  # noqa: E731
    if args.url:
        score, card, close = _remote(args, options)
    else:
        score, card = _local(args, options)
    try:
        if source.width != card.input_size:
            raise CLIError(f"{args.input}: rows have {source.width} features, but model {card.name!r} expects "
                           f"{card.input_size}" + (" (choose them with --columns)" if source.format in ("csv", "parquet")
                                                   else ""))
        bad_path = args.bad_rows or (None if stdout else args.output.with_name(args.output.name + ".bad-rows.csv"))
        try:
            writer = open_output(args.output, format=args.output_format, with_ids=args.id_column is not None,
                                 class_names=card.class_names)
        except OutputError as err:
            raise CLIError(str(err), 2 if err.usage else 1, flags=OUTPUT_FLAGS) from err
        previous = signal.signal(signal.SIGTERM, _interrupt)
        try:
            n_bad = _score_all(args, source, score, scale, writer, bad_path, in_flight=2 if args.url else 1, card=card)
            writer.commit()
        except BaseException:
            writer.abort()
            raise
        finally:
            signal.signal(signal.SIGTERM, previous)
    finally:
        close()
    where = "standard output" if stdout else args.output
    listed = f"; {n_bad} bad rows listed in {bad_path or 'standard error'}" if n_bad else ""
    say(f"wrote {writer.rows_written:,} rows to {where}{listed}")
    return 0


def _run_ray(args: argparse.Namespace, options: dict[str, Any], say: Callable[[str], None]) -> int:
    """``--engine ray``: plan the parts, score them on Ray Data actors, write the rows in order."""
    from mcdrop.io.readers import InputError, open_input
    from mcdrop.io.writers import OutputError, open_output

    if args.url:
        raise CLIError("--engine ray scores in-process on the actors; it does not combine with --url", 2)
    if (args.actors is not None and args.actors < 1) or (args.blocks is not None and args.blocks < 1):
        raise CLIError("--actors and --blocks have to be positive numbers", 2)
    try:
        from mcdrop.distributed import ray_score
    except ImportError as err:
        raise CLIError(f"--engine ray needs Ray: pip install 'mcdrop[ray]' ({err})", 2) from err
    from mcdrop.nets.artifacts import ArtifactError, ModelNotFoundError, resolve_model
    from mcdrop.schemas import PredictResult

    try:
        files = ray_score.input_files(args.input, args.input_format)
        first = open_input(files[0], format=args.input_format, columns=args.columns, id_column=args.id_column,
                           header=args.header, key=args.key)
        parts, total = ray_score.plan_parts(files, args.input_format, header=args.header, key=args.key,
                                            min_parts=ray_score.PARTS_PER_ACTOR * (args.actors or os.cpu_count() or 1))
    except InputError as err:
        raise CLIError(str(err), 2 if err.usage else 1, flags=INPUT_FLAGS) from err
    for note in first.notes:
        say(as_flags(note, INPUT_FLAGS))
    _, card = _local(args, options)  # checks the model and the options against it before Ray starts
    if first.width != card.input_size:
        raise CLIError(f"{files[0]}: rows have {first.width} features, but model {card.name!r} expects {card.input_size}")
    try:
        sample = next(first.chunks, None)  # the first rows, for the 0-255 warning
    except InputError as err:
        raise CLIError(str(err), flags=INPUT_FLAGS) from err
    if sample is not None:
        _warn_range(sample.x * np.float32(_scale(args.scale, first.dtype)), card)
    try:
        model = str(resolve_model(args.model).resolve())
    except (ArtifactError, ModelNotFoundError) as err:
        raise CLIError(f"--model: {err}", 2) from err
    cores = os.cpu_count() or 1
    actors = args.actors or cores
    job = ray_score.RayJob(model=model, options=options, scale=_scale(args.scale, first.dtype),
                           reader={"columns": args.columns, "id_column": args.id_column, "header": args.header,
                                   "key": args.key}, batch_size=args.batch_size,
                           threads=ray_score.threads_per_actor(cores, actors))
    bad_path = args.bad_rows or (None if str(args.output) == "-" else args.output.with_name(args.output.name + ".bad-rows.csv"))
    try:
        writer = open_output(args.output, format=args.output_format, with_ids=args.id_column is not None,
                             class_names=card.class_names)
    except OutputError as err:
        raise CLIError(str(err), 2 if err.usage else 1, flags=OUTPUT_FLAGS) from err
    import ray

    started = not ray.is_initialized()
    ray_score.start_ray(args.address, cores)
    say(f"scoring {len(parts)} parts of {len(files)} file(s) on {actors} Ray actor(s) x {job.threads} thread(s)")
    progress = _Progress(total, args.quiet)
    bad_rows: list[tuple[int, str]] = []
    meta = {"model": card.name, "model_version": card.version, "task": card.task, "mode": options["mode"],
            "seed": options.get("seed") if options["mode"] == "mc" else None, "class_names": card.class_names}
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        for batch in ray_score.score_parts(parts, job, actors=actors, blocks=args.blocks):
            bad = batch["bad"].astype(str) != ""
            if bad.any():
                found = list(zip(batch["row"][bad].tolist(), batch["bad"][bad].tolist(), strict=True))
                if not args.skip_bad_rows:
                    row, reason = found[0]
                    raise CLIError(f"{args.input}: row {row} {reason} (pass --skip-bad-rows to score the others)")
                bad_rows += found
            good = ~bad
            if good.any():
                columns = {k: v[good] for k, v in batch.items() if k not in ("row", "bad", "id")}
                ids = batch["id"][good].tolist() if "id" in batch else None
                writer.write(batch["row"][good], ids, PredictResult(columns=columns, **meta))
            progress.advance(len(bad))
        if writer.rows_written == 0:
            raise CLIError(f"{args.input}: no rows to score" + (" (every row is bad)" if bad_rows else ""))
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
        seconds = progress.close()
        if started:
            ray.shutdown()
    if bad_rows:
        _write_bad_rows(bad_path, sorted(bad_rows))
    say(f"scored {writer.rows_written:,} rows in {seconds:.1f} s ({writer.rows_written / max(seconds, 1e-9):,.0f} rows/s) "
        f"with Ray" + (f"; {len(bad_rows)} bad rows listed in {bad_path or 'standard error'}" if bad_rows else ""))
    return 0


def _write_bad_rows(path: Path | None, bad_rows: list[tuple[int, str]]) -> None:
    """``row,reason`` lines (RFC 4180), atomically beside OUTPUT, or to standard error when OUTPUT is ``-``."""
    import csv
    import io
    import sys

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["row", "reason"])
    writer.writerows(bad_rows)
    if path is None:
        sys.stderr.write(buf.getvalue())
        return
    from mcdrop.io.atomic import atomic_write
    from mcdrop.io.writers import OutputError, check_target

    try:
        check_target(path)
        atomic_write(path, buf.getvalue())
    except OutputError as err:
        raise CLIError(f"--bad-rows: {err}", 2) from err


def _warn_range(x: np.ndarray, card: Any) -> bool:
    """One stderr line (even with --quiet) if ``x`` looks like 0-255 pixels for a model expecting [0, 1]."""
    from mcdrop.inputs import range_note

    note = range_note(x, card)
    if note:
        log(f"mcdrop score: warning: {note} (--scale {1 / 255!r} divides by 255)")
    return note is not None


def prefetch(chunks: Iterable[T], depth: int = 2) -> Iterator[T]:
    """``chunks`` read ahead by a background thread (at most ``depth`` waiting), in order: the next chunk is parsed
    while this one is scored (the engine releases the GIL); the reader's exceptions are raised here, in turn."""
    import queue
    import threading

    box: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: tuple[str, Any]) -> bool:
        while not stop.is_set():
            try:
                box.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for chunk in chunks:
                if not put(("chunk", chunk)):
                    break
            else:
                put(("end", None))
        except BaseException as err:  # handed to the consumer
            put(("error", err))
        finally:
            if hasattr(chunks, "close"):
                chunks.close()  # the reader's file, when the consumer stopped early

    reader = threading.Thread(target=read, name="mcdrop-reader", daemon=True)
    reader.start()
    try:
        while True:
            kind, value = box.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        reader.join(timeout=5)


def _interrupt(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def _score_all(args: argparse.Namespace, source: InputFile, score: Scorer, scale: float, writer: Writer,
               bad_path: Path | None, *, in_flight: int = 1, card: Any = None) -> int:
    """Read, score and write chunk by chunk.  ``in_flight`` > 1 (remote scoring) keeps that many requests
    going at once, so the client encodes the next chunk while the server computes this one; answers are
    written in input order.  Warns once if the inputs look like 0-255 pixels for a model expecting [0, 1]."""
    from concurrent.futures import Future, ThreadPoolExecutor

    from mcdrop.io.readers import InputError

    bytes_read = source.position if source.n_rows is None else None
    progress = _Progress(source.n_rows if bytes_read is None else source.size, args.quiet, bytes_read)
    bad_rows: list[tuple[int, str]] = []
    pool = ThreadPoolExecutor(max_workers=in_flight) if in_flight > 1 else None
    pending: collections.deque[tuple[np.ndarray, list[str] | None, Future[Any]]] = collections.deque()

    def drain(keep: int) -> None:
        while len(pending) > keep:
            rows, ids, answer = pending.popleft()
            writer.write(rows, ids, answer.result())
            progress.advance(len(rows))

    def submit(x: np.ndarray, first_row: int) -> Future[Any]:
        if pool is not None:
            return pool.submit(score, x, first_row)
        done: Future[Any] = Future()
        done.set_result(score(x, first_row))
        return done

    try:
        for chunk in prefetch(source.chunks):
            if chunk.bad:
                if not args.skip_bad_rows:
                    row, reason = chunk.bad[0]
                    raise CLIError(f"{args.input}: row {row} {reason} (pass --skip-bad-rows to score the others)")
                bad_rows += chunk.bad
            x = chunk.x * np.float32(scale) if scale != 1.0 else chunk.x
            if card is not None and _warn_range(x, card):
                card = None  # once
            for a, b in _segments(chunk.rows):
                ids = chunk.ids[a:b] if chunk.ids is not None else None
                pending.append((chunk.rows[a:b], ids, submit(x[a:b], int(chunk.rows[a]))))
                drain(in_flight - 1)
            progress.advance(len(chunk.bad))
        drain(0)
    except InputError as err:
        raise CLIError(str(err), flags=INPUT_FLAGS) from err
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        seconds = progress.close()
    if not args.quiet:
        log(f"scored {writer.rows_written:,} rows in {seconds:.1f} s ({writer.rows_written / max(seconds, 1e-9):,.0f} rows/s)")
    if bad_rows:
        _write_bad_rows(bad_path, bad_rows)
    if writer.rows_written == 0:
        raise CLIError(f"{args.input}: no rows to score" + (" (every row is bad)" if bad_rows else ""))
    return len(bad_rows)
