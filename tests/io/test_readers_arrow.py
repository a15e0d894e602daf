"""CSV by Arrow (mcdrop.io.readers._arrow_csv_chunks): the same rows, values, ids, row numbers and bad rows as the
csv module gives (chunk boundaries aside), whether Arrow reads the whole file or hands over to the csv module part
way."""

from __future__ import annotations

import numpy as np
import pytest

from mcdrop.io import readers
from mcdrop.io.readers import open_input

pytest.importorskip("pyarrow")


def read(path, monkeypatch, arrow: bool, **kw):
    calls = []
    real = readers._csv_chunks_from
    monkeypatch.setattr(readers, "_csv_chunks_from", lambda *a: calls.append(a[1]) or real(*a))
    if not arrow:
        monkeypatch.setattr(readers, "_arrow_csv", lambda: None)
    try:
        source = open_input(path, chunk_rows=7, **kw)
        chunks = list(source.chunks)
    finally:
        monkeypatch.undo()
    assert all(len(c.rows) + len(c.bad) <= 7 for c in chunks)  # chunks of bounded size
    flat = (np.concatenate([c.x for c in chunks]).tolist(), np.concatenate([c.rows for c in chunks]).tolist(),
            [i for c in chunks for i in (c.ids or [])], [b for c in chunks for b in c.bad])
    return flat, source.columns, calls


def _text(rows: list[str], header: str | None = "id,a,b,c") -> str:
    return "\n".join(([header] if header else []) + rows) + "\n"


GOOD = [f"r{i},{i / 7!r},{-i * 1e-3!r},{i * 3.3e5!r}" for i in range(30)]


@pytest.mark.parametrize(("name", "lines", "handover"), [
    ("clean", GOOD, None),
    ("blank lines", [*GOOD[:10], "", "", *GOOD[10:], ""], None),
    ("bom and crlf", None, None),
    ("non-numeric at row 17", [*GOOD[:17], "r17,1.0,abc,2.0", *GOOD[18:]], 14),
    ("ragged row 20", [*GOOD[:20], "r20,1.0,2.0", *GOOD[21:]], 14),
    ("empty cell", [*GOOD[:3], "r3,,1.0,2.0", *GOOD[4:]], 0),
    ("nan and overflow", [*GOOD[:5], "r5,nan,1,2", "r6,1e39,1,2", "r7,NA,1,2", *GOOD[8:]], 0),
])
def test_arrow_gives_the_csv_modules_chunks(tmp_path, monkeypatch, name, lines, handover):
    path = tmp_path / "in.csv"
    if lines is None:
        path.write_bytes(("\ufeff" + "\r\n".join(["id,a,b,c", *GOOD]) + "\r\n").encode())
    else:
        path.write_text(_text(lines))
    want, columns, _ = read(path, monkeypatch, arrow=False, id_column="id")
    got, got_columns, calls = read(path, monkeypatch, arrow=True, id_column="id")
    assert got == want and got_columns == columns == ["a", "b", "c"]
    # Arrow hands over only where it must, from the first row it has not yielded (Arrow reads the whole of this
    # small file as one block, so a handover restarts at the last whole chunk before the bad row's block)
    if handover is None:
        assert calls == []
    else:
        assert len(calls) == 1 and calls[0] <= handover


def test_without_header_and_with_columns(tmp_path, monkeypatch):
    path = tmp_path / "in.csv"
    path.write_text("\n".join(",".join(repr(float(v)) for v in row) for row in np.arange(60.0).reshape(20, 3) / 9) + "\n")
    want, _, _ = read(path, monkeypatch, arrow=False, columns="2,0")
    got, _, calls = read(path, monkeypatch, arrow=True, columns="2,0")
    assert got == want and calls == [] and len(want[0]) == 20
