"""Streaming writers of scored rows: CSV, JSON Lines and ``.npz``, always written atomically.

A writer writes into a temporary file beside OUTPUT and renames it over OUTPUT only when
:meth:`Writer.commit` is called, so an interrupted or failed run never leaves a half-written OUTPUT.
Every format holds the row number (and the id, when the input had one), the prediction, the
probabilities or mean, and every uncertainty field of :class:`~mcdrop.schemas.PredictResponse`
(fields undefined in the run's mode, e.g. mutual information in deterministic mode, are left out).
``.npz`` columns are appended to per-column temporary files and packed at the end, so memory stays flat.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from mcdrop.schemas import PredictResponse

__all__ = ["FORMATS", "OutputError", "Writer", "open_output"]

FORMATS = ("csv", "jsonl", "npz")


class OutputError(OSError):
    """OUTPUT cannot be written; the message names the path."""


def _fields(response: PredictResponse) -> list[str]:
    """Fields with a value in this run (the first chunk decides for the whole file)."""
    first = response.predictions[0].model_dump()
    return [k for k, v in first.items() if v is not None]


class Writer:
    """Base: a temporary file beside ``path``; :meth:`commit` renames it over ``path``, :meth:`abort` removes it."""

    suffix = ".tmp"

    def __init__(self, path: Path, *, with_ids: bool) -> None:
        self.path, self.with_ids = path, with_ids
        self.rows_written = 0
        self.fields: list[str] | None = None
        try:
            fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=self.suffix, dir=path.parent or ".")
        except OSError as err:
            raise OutputError(f"{path}: cannot write there: {err.strerror}") from err
        self.tmp = Path(name)
        self.fh = os.fdopen(fd, "w", encoding="utf-8", newline="")

    def write(self, rows: np.ndarray, ids: list[str] | None, response: PredictResponse) -> None:
        if self.fields is None:
            self.fields = _fields(response)
            self._begin(response)
        self._write(rows, ids, response)
        self.rows_written += len(rows)

    def _begin(self, response: PredictResponse) -> None:
        pass

    def _write(self, rows: np.ndarray, ids: list[str] | None, response: PredictResponse) -> None:
        raise NotImplementedError

    def _finish(self) -> None:
        pass

    def commit(self) -> None:
        """Finish the file and move it into place."""
        self._finish()
        self.fh.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        """Remove the temporary file (OUTPUT is left as it was)."""
        self.fh.close()
        self.tmp.unlink(missing_ok=True)


class CSVWriter(Writer):
    """One line per row: ``row[,id],<scalar fields>,<list fields expanded as field_0..field_{C-1}>``."""

    def _begin(self, response: PredictResponse) -> None:
        first = response.predictions[0]
        names = ["row"] + (["id"] if self.with_ids else [])
        for name in self.fields or []:
            value = getattr(first, name)
            names += [f"{name}_{i}" for i in range(len(value))] if isinstance(value, list) else [name]
        self.fh.write(",".join(names) + "\n")

    def _write(self, rows: np.ndarray, ids: list[str] | None, response: PredictResponse) -> None:
        blocks: list[list[str]] = [[str(r) for r in rows.tolist()]]
        if self.with_ids:
            blocks.append([_csv_text(i) for i in ids or [""] * len(rows)])
        for name in self.fields or []:
            if name == "class_name":
                blocks.append([_csv_text(p.class_name or "") for p in response.predictions])  # type: ignore[union-attr]
                continue
            values = response.column(name)
            buf = io.StringIO()
            fmt = "%d" if name in ("predicted_class", "n_samples") else "%.9g"
            np.savetxt(buf, values.reshape(len(rows), -1), fmt=fmt, delimiter=",")
            blocks.append(buf.getvalue().splitlines())
        self.fh.write("".join(",".join(cells) + "\n" for cells in zip(*blocks, strict=True)))


def _csv_text(text: str) -> str:
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n\r') else text


class JSONLWriter(Writer):
    """One JSON object per row: ``{"row": ..., ["id": ...,] <prediction fields>}``."""

    def _write(self, rows: np.ndarray, ids: list[str] | None, response: PredictResponse) -> None:
        keep = self.fields or []
        lines = []
        for i, (row, p) in enumerate(zip(rows.tolist(), response.predictions, strict=True)):
            record: dict[str, Any] = {"row": row}
            if self.with_ids:
                record["id"] = ids[i] if ids else None
            values = p.model_dump()
            record.update((k, values[k]) for k in keep)
            lines.append(json.dumps(record, allow_nan=True))
        self.fh.write("\n".join(lines) + "\n")


class NPZWriter(Writer):
    """Arrays ``row``, ``id`` (if any) and one per field (``(N,)`` or ``(N, C)``), plus ``class_names``."""

    suffix = ".npz.tmp"

    def __init__(self, path: Path, *, with_ids: bool, class_names: list[str] | None = None) -> None:
        super().__init__(path, with_ids=with_ids)
        self.class_names = class_names
        self.parts = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".parts", dir=path.parent or "."))
        self.columns: dict[str, tuple[np.dtype[Any], tuple[int, ...]]] = {}

    def _append(self, name: str, values: np.ndarray) -> None:
        self.columns.setdefault(name, (values.dtype, values.shape[1:]))
        with (self.parts / f"{name}.bin").open("ab") as f:
            f.write(np.ascontiguousarray(values).tobytes())

    def _write(self, rows: np.ndarray, ids: list[str] | None, response: PredictResponse) -> None:
        self._append("row", rows.astype(np.int64))
        if self.with_ids:
            with (self.parts / "id.txt").open("a", encoding="utf-8") as f:
                f.write("".join(json.dumps(i) + "\n" for i in ids or [""] * len(rows)))
        for name in self.fields or []:
            if name == "class_name":
                continue
            values = response.column(name)
            if name in ("predicted_class", "n_samples"):
                values = values.astype(np.int64)
            self._append(name, values)

    def _finish(self) -> None:
        n = self.rows_written
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


def open_output(
    path: str | Path, *, format: str | None = None, with_ids: bool = False, class_names: list[str] | None = None
) -> Writer:
    """A writer for ``path``; the format comes from the suffix (``.csv``, ``.jsonl``/``.ndjson``, ``.npz``)."""
    path = Path(path)
    fmt = format or {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".npz": "npz"}.get(path.suffix.lower())
    if fmt not in FORMATS:
        raise OutputError(f"{path}: cannot tell the output format from the suffix {path.suffix!r}; expected .csv, "
                          ".jsonl or .npz, or pass --output-format")
    if path.is_dir():
        raise OutputError(f"{path}: is a directory; expected a file name")
    if not path.parent.is_dir():
        raise OutputError(f"{path}: the folder {path.parent} does not exist")
    if fmt == "npz":
        return NPZWriter(path, with_ids=with_ids, class_names=class_names)
    return {"csv": CSVWriter, "jsonl": JSONLWriter}[fmt](path, with_ids=with_ids)
