"""Chunked readers of input files for bulk scoring: CSV, Parquet, NumPy ``.npy``/``.npz`` and IDX (optionally
gzipped).

Every reader yields :class:`Chunk` s of at most ``chunk_rows`` rows, so memory stays flat however large the file:
``.npy`` is memory-mapped, ``.npz`` members and IDX files are streamed, Parquet is read a record batch at a time
(pyarrow), and CSV a block of lines at a time, by ``pyarrow.csv`` while the lines hold no quote and by the ``csv``
module from the first quote on (RFC 4180: quoted fields may hold commas, quotes and line breaks), with the same
rows, values and reasons either way; a UTF-8 byte-order mark is dropped; CRLF and blank lines are fine; no line
may be longer than :class:`LineBound` allows, so a file without line breaks is refused after a bounded read
instead of being read whole. Rows are numbered from 0 in file order, header excluded. A bad row (wrong width, non-numeric, NaN or
infinite) is reported in ``Chunk.bad`` with its reason. ``InputFile.notes`` says what was decided for the user
(e.g. whether the first CSV line is a header), so the CLI can log it.
"""

from __future__ import annotations

import csv
import gzip
import itertools
import math
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

import numpy as np

from mcdrop.errors import DataError

__all__ = ["Chunk", "InputError", "InputFile", "LineBound", "open_input"]

_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_NPZ_KEYS = ("inputs", "x", "images", "features", "X")


class InputError(DataError, ValueError):
    """The input file (or a flag describing it: ``usage=True``) is unusable; the message names it and what
    was expected."""

    def __init__(self, message: str, *, usage: bool = False) -> None:
        super().__init__(message)
        self.usage = usage


@dataclass
class Chunk:
    start: int  # row number of the chunk's first row
    x: np.ndarray  # good rows, float32 (n_good, width)
    rows: np.ndarray  # their row numbers, int64 (n_good,)
    ids: list[str] | None = None  # their ids (CSV --id-column), if any
    bad: list[tuple[int, str]] = field(default_factory=list)  # (row number, reason)


@dataclass
class InputFile:
    """An opened input: its format, width, row count (None for CSV until read) and the chunk iterator."""

    path: Path
    format: str
    width: int
    n_rows: int | None
    dtype: np.dtype[Any]
    chunks: Iterator[Chunk]
    columns: list[str] | None = None
    notes: list[str] = field(default_factory=list)
    size: int | None = None  # CSV: the file's bytes, the total of ``position`` (its rows are not counted ahead)
    position: Callable[[], int] | None = None  # CSV: about how many bytes have been read (characters)


def _check(block: np.ndarray, start: int, rows: np.ndarray | None = None) -> Chunk:
    """Drop non-finite rows into ``bad``."""
    x = block.astype(np.float32, copy=False)
    rows = np.arange(start, start + len(x), dtype=np.int64) if rows is None else rows
    finite = np.isfinite(x).all(1)
    if finite.all():
        return Chunk(start, x, rows)
    bad = [(int(r), "holds NaN or infinity, or a value beyond the float32 range; expected finite numbers") for r in rows[~finite]]
    return Chunk(start, x[finite], rows[finite], bad=bad)


# ------------------------------------------------------------------------------------- binary streams


def _stream(fh: IO[bytes], dtype: np.dtype[Any], row_shape: tuple[int, ...], n_rows: int, chunk_rows: int,
            name: str) -> Iterator[Chunk]:
    width = math.prod(row_shape)
    row_bytes = dtype.itemsize * width
    try:
        for start in range(0, n_rows, chunk_rows):
            n = min(chunk_rows, n_rows - start)
            data = fh.read(n * row_bytes)
            if len(data) != n * row_bytes:
                raise InputError(f"{name}: the file ends early, at row {start + len(data) // row_bytes} of the "
                                 f"{n_rows} its header announces (truncated?)")
            yield _check(np.frombuffer(data, dtype=dtype).reshape(n, width), start)
    finally:
        fh.close()


def _npy_header(fh: IO[bytes], name: str, allow_fortran: bool = False) -> tuple[tuple[int, ...], np.dtype[Any]]:
    try:
        version = np.lib.format.read_magic(fh)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(fh)
    except ValueError as err:
        raise InputError(f"{name}: not a NumPy .npy array ({err})") from err
    if fortran and len(shape) > 1 and not allow_fortran:
        raise InputError(f"{name}: a Fortran-ordered array cannot be streamed; save it with np.ascontiguousarray")
    if dtype.hasobject or dtype.kind not in "biuf":
        raise InputError(f"{name}: holds {dtype} values; expected numbers (bool, int, uint or float)")
    if len(shape) < 2:
        raise InputError(f"{name}: has shape {shape}; expected rows of features, shaped (rows, features) or (rows, h, w)")
    return shape, dtype


def _open_npy(path: Path, chunk_rows: int, rows: tuple[int, int] | None = None) -> InputFile:
    with path.open("rb") as fh:
        shape, dtype = _npy_header(fh, str(path), allow_fortran=True)
        offset = fh.tell()
    expected = offset + math.prod(shape) * dtype.itemsize
    size = path.stat().st_size
    if size < expected:
        raise InputError(f"{path}: the file ends early: its header announces {shape[0]} rows ({expected} bytes), but "
                         f"it holds {size} bytes (truncated?)")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as err:
        raise InputError(f"{path}: cannot map the array: {err}") from err
    lo, hi = rows if rows is not None else (0, shape[0])
    if not 0 <= lo <= hi <= shape[0]:
        raise InputError(f"{path}: rows {lo}..{hi} are outside its {shape[0]} rows")
    chunks = _mapped(array, chunk_rows, lo, hi)
    return InputFile(path, "npy", math.prod(shape[1:]), hi - lo, array.dtype, chunks)


def _mapped(array: np.ndarray, chunk_rows: int, lo: int, hi: int) -> Iterator[Chunk]:
    width = math.prod(array.shape[1:])
    for start in range(lo, hi, chunk_rows):
        block = np.ascontiguousarray(array[start:min(hi, start + chunk_rows)]).reshape(-1, width)
        yield _check(block, start)


def _open_npz(path: Path, key: str | None, chunk_rows: int) -> InputFile:
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as err:
        raise InputError(f"{path}: not a NumPy .npz archive ({err})") from err
    keys = [n[:-4] for n in archive.namelist() if n.endswith(".npy")]
    if key is None:
        key = keys[0] if len(keys) == 1 else next((k for k in _NPZ_KEYS if k in keys), None)
        if key is None:
            raise InputError(f"{path}: holds arrays {keys}; choose the inputs with `key`")
    if key not in keys:
        raise InputError(f"`key` {key!r}: {path} holds no such array; it holds {keys}", usage=True)
    fh = archive.open(key + ".npy")
    shape, dtype = _npy_header(fh, f"{path}[{key}]")
    chunks = _stream(fh, dtype, shape[1:], shape[0], chunk_rows, f"{path}[{key}]")
    return InputFile(path, "npz", math.prod(shape[1:]), shape[0], dtype, chunks)


def _open_idx(path: Path, chunk_rows: int) -> InputFile:
    fh = cast(IO[bytes], gzip.open(path, "rb")) if path.suffix == ".gz" else path.open("rb")  # noqa: SIM115 - streamed
    try:
        magic = fh.read(4)
        if len(magic) != 4 or magic[:2] != b"\0\0" or magic[2] not in _IDX_TYPES or magic[3] < 1:
            raise InputError(f"{path}: not an IDX file (its first bytes are {magic!r}; expected 0 0 type ndim)")
        dims = np.frombuffer(fh.read(4 * magic[3]), dtype=">i4").tolist()
    except (OSError, EOFError) as err:
        fh.close()
        raise InputError(f"{path}: cannot read an IDX header: {err}") from err
    except InputError:
        fh.close()
        raise
    if len(dims) < 2:
        fh.close()
        raise InputError(f"{path}: an IDX file of shape {tuple(dims)} holds labels, not inputs; expected images")
    dtype = np.dtype(_IDX_TYPES[magic[2]])
    chunks = _stream(fh, dtype, tuple(dims[1:]), dims[0], chunk_rows, str(path))
    return InputFile(path, "idx", math.prod(dims[1:]), dims[0], dtype, chunks)


# ------------------------------------------------------------------------------------------------ CSV

FIRST_LINE_MAX = 1 << 24
"""Characters the first CSV line may hold (its width is not known before it is read)."""
CHARS_PER_CELL = 64
"""Characters a CSV line may spend per column (a float32 takes at most 16; ids and text need slack)."""
LINE_SLACK = 1 << 16


class LineBound:
    """The longest CSV line accepted: ``FIRST_LINE_MAX`` for the first line, then ``max(64 x columns, 8 x the
    first line) + 64 KiB``, or ``fixed`` (``open_input(max_line=...)``) for every line.  Lines are read with
    ``readline(bound + 1)``, so memory stays within the bound whatever the file."""

    def __init__(self, fixed: int | None = None) -> None:
        if fixed is not None and fixed < 1:
            raise InputError(f"`max_line` {fixed}: expected a positive number of characters", usage=True)
        self.fixed = fixed
        self.consumed = 0  # characters read so far: about the bytes, for progress
        self.line_number = 0  # lines read so far: the last one read, for error messages
        self.last = ""  # the last line read
        self.limit = fixed or FIRST_LINE_MAX
        self.why = "the limit given" if fixed else "the limit for the first line"

    def set_width(self, n_cols: int, first_line: int) -> None:
        if self.fixed is None:
            self.limit = max(CHARS_PER_CELL * n_cols, 8 * first_line) + LINE_SLACK
            self.why = f"the limit for rows of {n_cols} columns"

    def lines(self, fh: IO[str], name: str) -> Iterator[str]:
        """``fh``'s lines (line breaks kept), refusing one longer than the bound with an :class:`InputError`."""
        while True:
            line = fh.readline(self.limit + 1)
            if not line:
                return
            self.line_number += 1
            if len(line) > self.limit and line[-1] not in "\r\n":
                raise InputError(f"{name}: line {self.line_number} is longer than {self.limit:,} characters ({self.why}); "
                                 "expected CSV rows separated by line breaks (a larger `max_line` allows longer lines)")
            self.consumed += len(line)
            self.last = line
            yield line



def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _select(spec: str | None, names: list[str], exclude: int | None, param: str = "columns") -> list[int]:
    """Column indices from ``columns`` (names, 0-based indices, ``a:b`` ranges; default: all but the id); errors
    name ``param``, the parameter ``spec`` came from."""
    if spec is None:
        return [i for i in range(len(names)) if i != exclude]
    out: list[int] = []
    for part in (p.strip() for p in spec.split(",")):
        if ":" in part:
            a, _, b = part.partition(":")
            try:
                out += range(len(names))[slice(int(a) if a else None, int(b) if b else None)]
            except ValueError as err:
                raise InputError(f"`{param}`: {part!r} is not a range of column indices like 1:785", usage=True) from err
        elif part in names:
            out.append(names.index(part))
        elif part.lstrip("-").isdigit() and -len(names) <= int(part) < len(names):
            out.append(int(part) % len(names))
        else:
            raise InputError(f"`{param}`: no column {part!r}; the file has {len(names)} columns"
                             + (f" named {', '.join(names[:8])}{', ...' if len(names) > 8 else ''}" if names else ""), usage=True)
    if not out:
        raise InputError(f"`{param}` {spec!r} selects no columns", usage=True)
    return out


def _open_csv(path: Path, columns: str | None, id_column: str | None, header: str, chunk_rows: int,
              max_line: int | None = None) -> InputFile:
    bound = LineBound(max_line)
    fh = path.open("r", newline="", encoding="utf-8-sig")  # -sig: a byte-order mark is not part of the first cell
    lines = bound.lines(fh, str(path))
    records = csv.reader(lines)  # pulls one line at a time, so after a record ``lines`` is at the next one
    try:
        first = next((r for r in records if any(c.strip() for c in r)), None)
    except csv.Error as err:
        fh.close()
        raise InputError(f"{path}: line {bound.line_number}: not CSV ({err})") from err
    except InputError:
        fh.close()
        raise
    if first is None:
        fh.close()
        raise InputError(f"{path}: the file is empty; expected CSV rows of numbers")
    cells = [c.strip() for c in first]
    bound.set_width(len(cells), sum(len(c) + 1 for c in first))
    numeric = all(_is_number(c) for c in cells)
    has_header = header == "yes" or (header == "auto" and not numeric)
    notes = []
    if header == "auto":
        notes.append(f"{path.name}: the first line is a header (it holds names: {', '.join(cells[:4])}"
                     f"{', ...' if len(cells) > 4 else ''}); pass `header` 'no' if it is data" if has_header else
                     f"{path.name}: no header (the first line holds numbers); pass `header` 'yes' if it is one")
    names = cells if has_header else [str(i) for i in range(len(cells))]
    id_index = None
    if id_column is not None:
        id_index = _select(id_column, names, None, "id_column")[0]
    use = _select(columns, names, id_index)
    # the first row again when it is data: as its line where that line is the whole record (no quote), else as
    # the record the csv module read
    head, pending = ([], []) if has_header else ([bound.last], []) if '"' not in bound.last else ([], [first])
    chunks = _csv_chunks(fh, lines, bound, head, pending, len(names), use, id_index, chunk_rows, str(path))
    return InputFile(path, "csv", len(use), None, np.dtype(np.float32), chunks, [names[i] for i in use], notes,
                     size=path.stat().st_size, position=lambda: bound.consumed)


def _csv_chunks(fh: IO[str], lines: Iterator[str], bound: LineBound, head: list[str], pending: list[list[str]],
                n_cols: int, use: list[int], id_index: int | None, chunk_rows: int, name: str) -> Iterator[Chunk]:
    """The data records, ``chunk_rows`` at a time: the lines ``head``, else the records ``pending``, then the rest
    of ``lines``.  Blocks of plain lines (no quote character, so one record per line) are parsed by Arrow; the
    first quote hands the rest of the file to the ``csv`` module, whose quoted fields may span lines.  Both give
    the same rows, row numbers and reasons."""
    start, before, rows = 0, 0, None
    try:
        if pending:
            yield _parse_block(pending, start, n_cols, use, id_index, name)
            start += len(pending)
        source = itertools.chain(head, lines)
        while True:
            block = list(itertools.islice(source, chunk_rows))
            if not block:
                return
            if any('"' in line for line in block):
                before = bound.line_number - len(block)  # lines read before the csv module's first
                break
            block = [line for line in block if line.strip()]  # blank lines (e.g. trailing) are not rows
            if block:
                chunk = _arrow_block(block, start, n_cols, use, id_index)
                if chunk is None:  # something Arrow does not parse exactly as the csv module: the csv module
                    records = [r for r in csv.reader(block) if any(c.strip() for c in r)]
                    chunk = _parse_block(records, start, n_cols, use, id_index, name)
                    start += len(records)
                else:
                    start += len(block)
                yield chunk
        rows = csv.reader(itertools.chain(block, source))
        while True:
            read = list(itertools.islice(rows, chunk_rows))
            if not read:
                return
            records = [r for r in read if any(c.strip() for c in r)]
            if records:
                yield _parse_block(records, start, n_cols, use, id_index, name)
                start += len(records)
    except UnicodeDecodeError as err:
        raise InputError(f"{name}: near row {start}: not UTF-8 text ({err.reason}); expected CSV") from err
    except csv.Error as err:
        line = bound.line_number if rows is None else before + rows.line_num
        raise InputError(f"{name}: line {line}: not CSV ({err})") from err
    finally:
        fh.close()


def _arrow_block(lines: list[str], start: int, n_cols: int, use: list[int], id_index: int | None) -> Chunk | None:
    """Lines without quotes, one record each, parsed by ``pyarrow.csv``; None where the ``csv`` module's path could
    differ (a short or long row, an empty cell, a cell Arrow does not read as a number, any bad row, whose reason
    that path words), so that path takes the block.  Numbers are parsed to float64 and then rounded to float32, as
    ``float()`` and NumPy do."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    if id_index is not None and id_index in use:  # one column read both as numbers and as ids
        return None
    names = [str(i) for i in range(n_cols)]
    types = {names[i]: pa.float64() for i in use}
    if id_index is not None:
        types[names[id_index]] = pa.string()
    wanted = list(dict.fromkeys([names[i] for i in use] + ([names[id_index]] if id_index is not None else [])))
    data = "".join(lines).encode()
    try:
        table = pacsv.read_csv(
            pa.BufferReader(data),
            read_options=pacsv.ReadOptions(column_names=names, use_threads=False, block_size=len(data) + 1),
            parse_options=pacsv.ParseOptions(quote_char=False, newlines_in_values=False),
            convert_options=pacsv.ConvertOptions(column_types=types, include_columns=wanted,
                                                 strings_can_be_null=False, null_values=[]))
    except pa.ArrowException:  # any row Arrow cannot read as asked: the csv module reads the block
        return None
    if table.num_rows != len(lines):
        return None
    x = np.empty((len(lines), len(use)), dtype=np.float32)
    with np.errstate(over="ignore"):  # beyond float32: infinity, refused by _check as the csv path does
        for j, i in enumerate(use):
            x[:, j] = table.column(names[i]).to_numpy()
    chunk = _check(x, start)
    if chunk.bad:  # e.g. ``nan(ind)``, which Arrow reads as NaN and float() refuses: the csv path names the cell
        return None
    if id_index is not None:
        chunk.ids = [v.strip() for v in table.column(names[id_index]).to_pylist()]
    return chunk


def _parse_block(block: list[list[str]], start: int, n_cols: int, use: list[int], id_index: int | None,
                 name: str) -> Chunk:
    ids = [r[id_index].strip() if len(r) > id_index else "" for r in block] if id_index is not None else None
    if all(len(r) == n_cols for r in block):
        try:
            with np.errstate(over="ignore"):  # beyond float32: infinity, refused by _check
                values = np.array([[r[i] for i in use] for r in block], dtype=np.float32)
        except ValueError:
            pass  # a non-numeric cell somewhere: find it record by record
        else:
            chunk = _check(values, start)
            if ids is not None:
                keep = set(chunk.rows.tolist())
                chunk.ids = [i for r, i in enumerate(ids, start) if r in keep] if chunk.bad else ids
            return chunk
    good, rows, good_ids, bad = [], [], [], []
    for r, cells in enumerate(block, start):
        if len(cells) != n_cols:
            bad.append((r, f"has {len(cells)} columns; expected {n_cols} like the first row"))
            continue
        try:
            row = [float(cells[i]) for i in use]
        except ValueError:
            col = next(i for i in use if not _is_number(cells[i]))
            bad.append((r, f"column {col} holds {cells[col].strip()[:40]!r}; expected a number"))
            continue
        with np.errstate(over="ignore"):  # as the block path rounds: 3.4028235e38 is float32's largest, 1e39 inf
            finite = bool(np.isfinite(np.asarray(row, dtype=np.float32)).all())
        if not finite:
            bad.append((r, "holds NaN or infinity, or a value beyond the float32 range; expected finite numbers"))
            continue
        good.append(row)
        rows.append(r)
        if ids is not None:
            good_ids.append(ids[r - start])
    x = np.asarray(good, dtype=np.float32).reshape(len(good), len(use))
    return Chunk(start, x, np.asarray(rows, dtype=np.int64), good_ids if ids is not None else None, bad)


def _open_parquet(path: Path, columns: str | None, id_column: str | None, chunk_rows: int,
                  row_groups: list[int] | None = None, rows: tuple[int, int] | None = None) -> InputFile:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as err:
        raise InputError("reading Parquet needs pyarrow: pip install 'mcdrop[parquet]'", usage=True) from err
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise InputError(f"{path}: not a Parquet file ({err})") from err
    schema = parquet.schema_arrow
    names = schema.names
    id_index = _select(id_column, names, None, "id_column")[0] if id_column is not None else None
    use = _select(columns, names, id_index)
    width = 0
    for i in use:
        kind = schema.field(i).type
        if pa.types.is_fixed_size_list(kind) and (pa.types.is_integer(kind.value_type) or pa.types.is_floating(kind.value_type)):
            width += kind.list_size
        elif pa.types.is_integer(kind) or pa.types.is_floating(kind):
            width += 1
        else:
            raise InputError(f"{path}: column {names[i]!r} holds {kind}; expected numbers or fixed-size lists of numbers "
                             "(choose the feature columns with `columns`)", usage=columns is not None)
    read = [names[i] for i in use] + ([names[id_index]] if id_index is not None else [])
    meta = parquet.metadata
    groups = list(range(meta.num_row_groups)) if row_groups is None else sorted(row_groups)
    first = sum(meta.row_group(g).num_rows for g in range(groups[0])) if groups else 0
    if groups and groups != list(range(groups[0], groups[0] + len(groups))):
        raise InputError(f"{path}: row groups {row_groups} are not consecutive")
    n_rows = sum(meta.row_group(g).num_rows for g in groups)
    if rows is not None:  # a row range: read the row groups it overlaps, keep its rows
        lo, hi = rows
        if row_groups is not None or not 0 <= lo <= hi <= meta.num_rows:
            raise InputError(f"{path}: rows {lo}..{hi} are outside its {meta.num_rows} rows (or combined with row groups)")
        starts = np.cumsum([0] + [meta.row_group(g).num_rows for g in range(meta.num_row_groups)])
        groups = [g for g in range(meta.num_row_groups) if starts[g] < hi and starts[g + 1] > lo]
        first, n_rows = int(starts[groups[0]]) if groups else lo, hi - lo
    chunks = _parquet_chunks(parquet, read, [names[i] for i in use], None if id_index is None else names[id_index],
                             chunk_rows, groups, first, rows)
    return InputFile(path, "parquet", width, n_rows, np.dtype(np.float32), chunks, [names[i] for i in use])


def _parquet_chunks(parquet: Any, read: list[str], features: list[str], id_name: str | None,
                    chunk_rows: int, groups: list[int], start: int, rows: tuple[int, int] | None = None) -> Iterator[Chunk]:
    import pyarrow as pa

    if not groups:
        return
    lo, hi = rows if rows is not None else (start, None)
    for batch in parquet.iter_batches(batch_size=chunk_rows, columns=read, row_groups=groups):
        if hi is not None:  # only the rows of [lo, hi): skip before, cut after
            end = start + batch.num_rows
            if end <= lo:
                start = end
                continue
            if start >= hi:
                return
            batch = batch.slice(max(0, lo - start), min(end, hi) - max(start, lo))
            start = max(start, lo)
        parts = []
        for name in features:
            column = batch.column(name)
            if pa.types.is_fixed_size_list(column.type):
                values = column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), -1)
            else:
                values = column.to_numpy(zero_copy_only=False).reshape(-1, 1)
            parts.append(values.astype(np.float64))
        x = np.concatenate(parts, axis=1)
        chunk = _check(x, start)
        if id_name is not None:
            ids = [str(v) for v in batch.column(id_name).to_pylist()]
            keep = set(chunk.rows.tolist())
            chunk.ids = [i for r, i in enumerate(ids, start) if r in keep]
        start += batch.num_rows
        yield chunk


# ---------------------------------------------------------------------------------------------- entry


def detect_format(path: Path) -> str:
    name = path.name.lower()
    for suffix, fmt in ((".csv", "csv"), (".csv.gz", "csv"), (".npy", "npy"), (".npz", "npz"), (".parquet", "parquet"),
                        (".pq", "parquet")):
        if name.endswith(suffix):
            return fmt
    if "idx" in name or name.endswith("ubyte") or name.endswith("ubyte.gz"):
        return "idx"
    raise InputError(f"{path}: cannot tell the format from the name; expected .csv, .parquet, .npy, .npz or an IDX "
                     "file (name containing 'idx' or ending in 'ubyte', optionally .gz); or pass `format`")


def open_input(path: str | Path, *, format: str | None = None, columns: str | None = None,
               id_column: str | None = None, header: str = "auto", key: str | None = None,
               chunk_rows: int = 4096, rows: tuple[int, int] | None = None,
               row_groups: list[int] | None = None, max_line: int | None = None) -> InputFile:
    """Open ``path`` for chunked reading (format from the name unless given).

    ``rows`` (``.npy``, Parquet) or ``row_groups`` (Parquet, consecutive) read a part of the file; chunks keep
    the rows' numbers in the whole file.  ``max_line`` (CSV): the longest line accepted (default: :class:`LineBound`).
    """
    path = Path(path)
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "no such file"
        raise InputError(f"{path}: {what}; expected an input file (.csv, .parquet, .npy, .npz or IDX)")
    fmt = format or detect_format(path)
    if fmt not in ("csv", "parquet") and (columns or id_column):
        raise InputError(f"`columns` and `id_column` apply to CSV and Parquet input, but {path} is {fmt}", usage=True)
    try:
        if fmt == "csv":
            if path.name.lower().endswith(".gz"):
                raise InputError(f"{path}: gzipped CSV is not supported; decompress it first")
            return _open_csv(path, columns, id_column, header, chunk_rows, max_line)
        if fmt == "parquet":
            return _open_parquet(path, columns, id_column, chunk_rows, row_groups, rows)
        if fmt == "npy":
            return _open_npy(path, chunk_rows, rows)
        if fmt == "npz":
            return _open_npz(path, key, chunk_rows)
        if fmt == "idx":
            return _open_idx(path, chunk_rows)
    except UnicodeDecodeError as err:
        raise InputError(f"{path}: is not UTF-8 text ({err.reason}); expected CSV") from err
    except OSError as err:
        raise InputError(f"{path}: cannot read: {err.strerror or err}") from err
    raise InputError(f"`format` {fmt!r}: expected csv, parquet, npy, npz or idx", usage=True)
