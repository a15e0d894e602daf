"""Streaming writers of scored rows: CSV, JSON Lines and ``.npz``, always written atomically.

A writer writes into a temporary file beside OUTPUT and renames it over OUTPUT only when
:meth:`Writer.commit` is called, so an interrupted or failed run never leaves a half-written OUTPUT.
Every format holds the row number (and the id, when the input had one), the prediction, the
probabilities or mean, and every uncertainty and decision field of :class:`~mcdrop.schemas.PredictResult`
(fields undefined in the run, e.g. mutual information in deterministic mode, are left out).  A conformal
``prediction_set`` is a list in JSON Lines, ``;``-separated class indices in CSV and a boolean mask ``(N, C)``
in ``.npz``; booleans are ``true``/``false`` in CSV.  ``.npz`` columns are appended to per-column temporary
files and packed at the end, so memory stays flat.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import stat
import sys
import tempfile
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from mcdrop.errors import DataError
from mcdrop.io.atomic import TMP_MARK as _TMP_MARK
from mcdrop.io.atomic import AtomicFile
from mcdrop.io.atomic import temp_prefix as _temp_prefix

__all__ = ["FORMATS", "OutputError", "ScoredRows", "Writer", "open_output"]

FORMATS = ("csv", "jsonl", "npz", "parquet")
_SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".npz": "npz", ".parquet": "parquet", ".pq": "parquet"}


class OutputError(DataError, OSError):
    """An output that cannot be written; the message names the path (``usage``: the path itself is wrong, exit 2)."""

    def __init__(self, message: str, *, usage: bool = False) -> None:
        super().__init__(message)
        self.usage = usage


def clean_stale(path: Path) -> list[Path]:
    """Remove the temporary files and folders a killed run writing ``path`` left beside it (their process is
    gone); returns what was removed."""
    removed = []
    for candidate in path.parent.glob(f".{glob_escape(path.name)}{_TMP_MARK}*"):
        pid = candidate.name[len(path.name) + 1 + len(_TMP_MARK):].split("-", 1)[0]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        if candidate.is_dir():
            shutil.rmtree(candidate, ignore_errors=True)
        else:
            candidate.unlink(missing_ok=True)
        removed.append(candidate)
    return removed


def glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_target(path: Path) -> None:
    """Refuse an OUTPUT that is not a regular file or a new name: a device, a FIFO, a socket, a directory."""
    try:
        st = path.stat()  # follows a symbolic link: what it points at is what would be replaced
    except FileNotFoundError:
        return
    except OSError as err:
        raise OutputError(f"{path}: cannot check it: {err.strerror or err}", usage=True) from err
    if stat.S_ISREG(st.st_mode):
        return
    kind = ("a directory" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode) else
            "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else
            "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file")
    raise OutputError(f"{path}: is {kind}; expected a regular file (or - for standard output)", usage=True)


class ScoredRows(Protocol):
    """What a writer reads of a result (:class:`~mcdrop.schemas.PredictResult` is one): its columns by name, each
    with one entry per row (``predicted_class`` holds class indices), and the model's class names, if any."""

    @property
    def columns(self) -> Mapping[str, np.ndarray]: ...

    @property
    def class_names(self) -> Sequence[str] | None: ...


def _fields(result: ScoredRows) -> list[str]:
    """The columns of this run in the order of the response fields (the first chunk decides for the file)."""
    names = [k for k in result.columns]
    if result.class_names and "predicted_class" in names:
        names.insert(names.index("predicted_class") + 1, "class_name")
    return names


def _class_names(result: ScoredRows) -> list[str]:
    names = result.class_names or []
    return [names[c] for c in result.columns["predicted_class"].tolist()]


class Writer:
    """Base: a temporary file beside ``path``; :meth:`commit` renames it over ``path``, :meth:`abort` removes it."""

    suffix = ".tmp"
    binary = False

    def __init__(self, path: Path, *, with_ids: bool) -> None:
        self.path, self.with_ids = path, with_ids
        self.rows_written = 0
        self.fields: list[str] | None = None
        self.tmp: Path | None = None
        if str(path) == "-":  # standard output: streamed, nothing to rename
            self.fh: Any = sys.stdout.buffer if self.binary else sys.stdout
            return
        try:
            self.out = AtomicFile(path, binary=self.binary, suffix=self.suffix, newline="")
        except OSError as err:
            raise OutputError(f"{path}: cannot write there: {err.strerror}") from err
        self.tmp, self.fh = self.out.tmp, self.out.fh

    def write(self, rows: np.ndarray, ids: list[str] | None, result: ScoredRows) -> None:
        with self._failing():
            if self.fields is None:
                self.fields = _fields(result)
                self._begin(result)
            self._write(rows, ids, result)
        self.rows_written += len(rows)

    @contextlib.contextmanager
    def _failing(self) -> Iterator[None]:
        """A failed write (a full device, a lost mount) as an :class:`OutputError` naming OUTPUT; a closed pipe
        stays a ``BrokenPipeError`` (the CLI stops quietly)."""
        try:
            yield
        except (BrokenPipeError, OutputError):
            raise
        except OSError as err:
            where = "standard output" if self.tmp is None else str(self.path)
            raise OutputError(f"{where}: cannot write: {err.strerror or err}") from err

    def _begin(self, result: ScoredRows) -> None:
        pass

    def _write(self, rows: np.ndarray, ids: list[str] | None, result: ScoredRows) -> None:
        raise NotImplementedError

    def _finish(self) -> None:
        pass

    def commit(self) -> None:
        """Finish the file and move it into place, with the permissions the umask gives a new file."""
        with self._failing():
            self._finish()
            if self.tmp is None:
                self.fh.flush()
                return
            self.out.commit()

    def abort(self) -> None:
        """Remove the temporary file (OUTPUT is left as it was)."""
        if self.tmp is None:
            with contextlib.suppress(OSError):  # the failure being reported may be this stream's
                self.fh.flush()
            return
        self.out.abort()


class CSVWriter(Writer):
    """One line per row: ``row[,id],<fields>``, 2-D fields expanded as ``field_0..field_{C-1}``; RFC 4180 quoting."""

    def _begin(self, result: ScoredRows) -> None:
        names = ["row"] + (["id"] if self.with_ids else [])
        for name in self.fields or []:
            value = result.columns.get(name)
            wide = value is not None and value.ndim == 2 and name != "prediction_set"
            names += [f"{name}_{i}" for i in range(value.shape[1])] if wide else [name]  # type: ignore[union-attr]
        self.fh.write(",".join(names) + "\n")

    def _write(self, rows: np.ndarray, ids: list[str] | None, result: ScoredRows) -> None:
        blocks: list[list[str]] = [[str(r) for r in rows.tolist()]]
        if self.with_ids:
            blocks.append([csv_text(i) for i in ids or [""] * len(rows)])
        for name in self.fields or []:
            if name == "class_name":
                blocks.append([csv_text(n) for n in _class_names(result)])
                continue
            values = result.columns[name]
            if name == "prediction_set":
                blocks.append([";".join(map(str, np.flatnonzero(m))) for m in values])
            elif values.dtype == bool:
                blocks.append(["true" if v else "false" for v in values.tolist()])
            else:
                buf = io.StringIO()
                fmt = "%d" if values.dtype.kind in "iu" else "%.9g"
                np.savetxt(buf, values.reshape(len(rows), -1), fmt=fmt, delimiter=",")
                blocks.append(buf.getvalue().splitlines())
        self.fh.write("".join(",".join(cells) + "\n" for cells in zip(*blocks, strict=True)))


def csv_text(text: str) -> str:
    """A CSV cell (RFC 4180): quoted, with doubled quotes, when it holds a comma, a quote or a line break."""
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n\r') else text


class JSONLWriter(Writer):
    """One JSON object per row: ``{"row": ..., ["id": ...,] <fields>}``."""

    def _write(self, rows: np.ndarray, ids: list[str] | None, result: ScoredRows) -> None:
        keep = self.fields or []
        columns: dict[str, list[Any]] = {}
        for name in keep:
            if name == "class_name":
                columns[name] = _class_names(result)
            elif name == "prediction_set":
                columns[name] = [np.flatnonzero(m).tolist() for m in result.columns[name]]
            else:
                columns[name] = result.columns[name].tolist()
        lines = []
        for i, row in enumerate(rows.tolist()):
            record: dict[str, Any] = {"row": row}
            if self.with_ids:
                record["id"] = ids[i] if ids else None
            record.update((k, columns[k][i]) for k in keep)
            lines.append(json.dumps(record, allow_nan=True))
        self.fh.write("\n".join(lines) + "\n")


class NPZWriter(Writer):
    """Arrays ``row``, ``id`` (if any) and one per field (``(N,)`` or ``(N, C)``), plus ``class_names``."""

    suffix = ".npz.tmp"

    def __init__(self, path: Path, *, with_ids: bool, class_names: list[str] | None = None) -> None:
        super().__init__(path, with_ids=with_ids)
        self.class_names = class_names
        self.parts = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=".parts", dir=path.parent or "."))
        self.columns: dict[str, tuple[np.dtype[Any], tuple[int, ...]]] = {}

    def _append(self, name: str, values: np.ndarray) -> None:
        self.columns.setdefault(name, (values.dtype, values.shape[1:]))
        with (self.parts / f"{name}.bin").open("ab") as f:
            f.write(np.ascontiguousarray(values).tobytes())

    def _write(self, rows: np.ndarray, ids: list[str] | None, result: ScoredRows) -> None:
        self._append("row", rows.astype(np.int64))
        if self.with_ids:
            with (self.parts / "id.txt").open("a", encoding="utf-8") as f:
                f.write("".join(json.dumps(i) + "\n" for i in ids or [""] * len(rows)))
        for name in self.fields or []:
            if name != "class_name":
                self._append(name, result.columns[name])

    def _finish(self) -> None:
        n = self.rows_written
        assert self.tmp is not None  # .npz never goes to standard output
        with zipfile.ZipFile(self.tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
            for name, (dtype, tail) in self.columns.items():
                with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array_header_2_0(member, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                                  "fortran_order": False, "shape": (n, *tail)})
                    with (self.parts / f"{name}.bin").open("rb") as src:
                        shutil.copyfileobj(src, member, 1 << 20)
            if self.with_ids:
                with (self.parts / "id.txt").open(encoding="utf-8") as f:
                    ids = np.array([json.loads(line) for line in f], dtype=str)  # ids only: small beside the inputs
                with archive.open("id.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, ids)
            if self.class_names:
                with archive.open("class_names.npy", "w") as member:
                    np.lib.format.write_array(member, np.array(self.class_names, dtype=str))
        shutil.rmtree(self.parts, ignore_errors=True)

    def abort(self) -> None:
        super().abort()
        shutil.rmtree(self.parts, ignore_errors=True)


class ParquetWriter(Writer):
    """A Parquet table: ``row``, ``id`` (if any), one column per field; 2-D fields as fixed-size lists, a
    conformal ``prediction_set`` as a list of class indices; one row group per chunk (pyarrow)."""

    binary = True

    def __init__(self, path: Path, *, with_ids: bool) -> None:
        try:
            import pyarrow  # noqa: F401
        except ImportError as err:
            raise OutputError("writing Parquet needs pyarrow: pip install 'mcdrop[parquet]'", usage=True) from err
        super().__init__(path, with_ids=with_ids)
        self.writer: Any = None

    def _write(self, rows: np.ndarray, ids: list[str] | None, result: ScoredRows) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        columns: dict[str, Any] = {"row": pa.array(rows.astype(np.int64))}
        if self.with_ids:
            columns["id"] = pa.array(ids or [""] * len(rows), type=pa.string())
        for name in self.fields or []:
            if name == "class_name":
                columns[name] = pa.array(_class_names(result), type=pa.string())
                continue
            values = result.columns[name]
            if name == "prediction_set":
                columns[name] = pa.array([np.flatnonzero(m).tolist() for m in values], type=pa.list_(pa.int32()))
            elif values.ndim == 2:
                columns[name] = pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), values.shape[1])
            else:
                columns[name] = pa.array(values)
        table = pa.table(columns)
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.fh, table.schema)
        self.writer.write_table(table)

    def _finish(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def abort(self) -> None:
        if self.writer is not None:
            with contextlib.suppress(OSError):
                self.writer.close()
        super().abort()


def open_output(
    path: str | Path, *, format: str | None = None, with_ids: bool = False, class_names: list[str] | None = None
) -> Writer:
    """A writer for ``path`` (``-``: standard output, CSV or JSON Lines); the format comes from the suffix
    (``.csv``, ``.jsonl``/``.ndjson``, ``.npz``, ``.parquet``) unless given.  Temporary files a killed run left
    beside ``path`` are removed first."""
    path = Path(path)
    stdout = str(path) == "-"
    fmt = format or ("csv" if stdout else _SUFFIXES.get(path.suffix.lower()))
    if fmt not in FORMATS:
        raise OutputError(f"{path}: cannot tell the output format from the suffix {path.suffix!r}; expected .csv, "
                          ".jsonl, .npz or .parquet, or pass `format`", usage=True)
    if stdout:
        if fmt not in ("csv", "jsonl"):
            raise OutputError(f"- (standard output) takes csv or jsonl, not {fmt}", usage=True)
        return {"csv": CSVWriter, "jsonl": JSONLWriter}[fmt](path, with_ids=with_ids)
    check_target(path)
    if not path.parent.is_dir():
        raise OutputError(f"{path}: the folder {path.parent} does not exist", usage=True)
    clean_stale(path)
    if fmt == "npz":
        return NPZWriter(path, with_ids=with_ids, class_names=class_names)
    return {"csv": CSVWriter, "jsonl": JSONLWriter, "parquet": ParquetWriter}[fmt](path, with_ids=with_ids)
