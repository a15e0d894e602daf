"""Readers: CSV by Arrow and the csv module, reading the same (quotes, BOM, CRLF, blank lines, header decision),
Parquet, .npy (mapped), .npz, IDX; bad rows named; chunks of bounded size."""

from __future__ import annotations

import gzip

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcdrop.io.readers import InputError, open_input

X = np.arange(24, dtype=np.float32).reshape(6, 4) / 7


def read(path, **kw):
    source = open_input(path, chunk_rows=kw.pop("chunk_rows", 4), **kw)
    chunks = list(source.chunks)
    x = np.concatenate([c.x for c in chunks])
    rows = np.concatenate([c.rows for c in chunks])
    ids = [i for c in chunks for i in (c.ids or [])]
    bad = [b for c in chunks for b in c.bad]
    return source, x, rows, ids, bad


def csv_text(rows, header=None, newline="\n"):
    lines = ([",".join(header)] if header else []) + [",".join(map(repr, map(float, r))) for r in rows]
    return newline.join(lines) + newline


def test_csv_header_decided_and_said(tmp_path):
    (tmp_path / "h.csv").write_text(csv_text(X, ["a", "b", "c", "d"]))
    (tmp_path / "n.csv").write_text(csv_text(X))
    with_header, x, rows, _, _ = read(tmp_path / "h.csv")
    assert with_header.columns == ["a", "b", "c", "d"] and np.array_equal(x, X) and rows.tolist() == list(range(6))
    assert "is a header" in with_header.notes[0]
    without, x, _, _, _ = read(tmp_path / "n.csv")
    assert len(x) == 6 and "no header" in without.notes[0]


def test_csv_bom_crlf_and_trailing_blank_lines(tmp_path):
    """A headerless CSV starting with a UTF-8 byte-order mark keeps its first row; with a header, the BOM does not
    stick to the first name (so --id-column finds it)."""
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbf" + csv_text(X, newline="\r\n").encode() + b"\r\n\r\n")
    source, x, _, _, bad = read(tmp_path / "bom.csv")
    assert np.array_equal(x, X) and not bad and "no header" in source.notes[0]
    (tmp_path / "bomh.csv").write_bytes(b"\xef\xbb\xbf" + ("id,f1,f2,f3,f4\r\n" + "\r\n".join(
        f"r{i}," + ",".join(map(repr, map(float, r))) for i, r in enumerate(X))).encode())
    _, x, _, ids, _ = read(tmp_path / "bomh.csv", id_column="id")
    assert ids == [f"r{i}" for i in range(6)] and np.array_equal(x, X)


def test_csv_quoted_fields_hold_commas_quotes_and_line_breaks(tmp_path):
    text = 'id,a,b\n"x, the first",1,2\n"say ""hi""",3,4\n"two\nlines",5,6\n'
    (tmp_path / "q.csv").write_text(text)
    _, x, _, ids, bad = read(tmp_path / "q.csv", id_column="id")
    assert ids == ["x, the first", 'say "hi"', "two\nlines"] and x.tolist() == [[1, 2], [3, 4], [5, 6]] and not bad


def test_csv_bad_rows_are_named(tmp_path):
    (tmp_path / "b.csv").write_text("a,b\n1,2\n3\n4,x\n5,nan\n6,1e39\n7,8\n")
    _, x, rows, _, bad = read(tmp_path / "b.csv", chunk_rows=100)
    assert rows.tolist() == [0, 5] and x.tolist() == [[1, 2], [7, 8]]
    assert [r for r, _ in bad] == [1, 2, 3, 4]
    assert "has 1 columns" in bad[0][1] and "'x'" in bad[1][1] and "NaN" in bad[2][1] and "float32" in bad[3][1]


def test_csv_columns_and_header_flags(tmp_path):
    (tmp_path / "c.csv").write_text(csv_text(X, ["a", "b", "c", "d"]))
    source, x, _, _, _ = read(tmp_path / "c.csv", columns="b,3")
    assert source.columns == ["b", "d"] and np.array_equal(x, X[:, [1, 3]])
    with pytest.raises(InputError, match="no column 'zz'") as err:
        open_input(tmp_path / "c.csv", columns="zz")
    assert err.value.usage
    (tmp_path / "n.csv").write_text(csv_text(X))
    _, x, _, _, _ = read(tmp_path / "n.csv", header="yes")
    assert len(x) == 5  # the user said the first line is a header


def test_parquet_wide_and_list_columns(tmp_path):
    wide = pa.table({"id": [f"r{i}" for i in range(6)], **{f"f{j}": X[:, j] for j in range(4)}})
    pq.write_table(wide, tmp_path / "wide.parquet", row_group_size=4)
    source, x, _rows, ids, _ = read(tmp_path / "wide.parquet", id_column="id", chunk_rows=4)
    assert source.n_rows == 6 and source.width == 4 and np.allclose(x, X) and ids[2] == "r2"
    listed = pa.table({"features": pa.FixedSizeListArray.from_arrays(pa.array(X.ravel()), 4)})
    pq.write_table(listed, tmp_path / "list.parquet")
    source, x, _, _, _ = read(tmp_path / "list.parquet")
    assert source.width == 4 and np.allclose(x, X)
    pq.write_table(pa.table({"s": ["a", "b"]}), tmp_path / "text.parquet")
    with pytest.raises(InputError, match="column 's' holds string"):
        open_input(tmp_path / "text.parquet")


def test_npy_is_mapped_in_chunks_and_checked(tmp_path):
    big = np.random.default_rng(0).normal(size=(1000, 3)).astype(np.float32)
    big[500, 1] = np.inf
    np.save(tmp_path / "a.npy", big)
    source, x, _rows, _, bad = read(tmp_path / "a.npy", chunk_rows=128)
    assert source.n_rows == 1000 and len(x) == 999 and bad[0][0] == 500
    np.save(tmp_path / "f.npy", np.asfortranarray(big[:10]))
    _, x, _, _, _ = read(tmp_path / "f.npy")
    assert np.array_equal(x[:5], big[:5])
    np.save(tmp_path / "o.npy", np.array([[{"a": 1}]], dtype=object))
    with pytest.raises(InputError, match="expected numbers"):
        open_input(tmp_path / "o.npy")


def test_idx_gz_and_npz(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, size=(5, 2, 2), dtype=np.uint8)
    idx = b"\0\0\x08\x03" + np.array([5, 2, 2], dtype=">i4").tobytes() + images.tobytes()
    (tmp_path / "in-idx3-ubyte.gz").write_bytes(gzip.compress(idx))
    source, x, _, _, _ = read(tmp_path / "in-idx3-ubyte.gz")
    assert source.dtype == np.uint8 and np.array_equal(x, images.reshape(5, 4))
    np.savez(tmp_path / "in.npz", labels=np.zeros(5), images=images)
    _, x, _, _, _ = read(tmp_path / "in.npz", key="images")
    assert np.array_equal(x, images.reshape(5, 4))
    np.savez(tmp_path / "two.npz", a=images, b=images)
    with pytest.raises(InputError, match="choose the inputs with `key`"):
        open_input(tmp_path / "two.npz")


@pytest.mark.parametrize("group_rows", [3000, 20000])  # many row groups, and one (a part must cut inside it)
@pytest.mark.parametrize(("lo", "hi"), [(0, 5000), (4999, 12001), (19000, 20000), (7, 7)])
def test_parquet_row_ranges_read_exactly_those_rows(tmp_path, group_rows, lo, hi):
    """Ray's parts of a Parquet file are row ranges (a one-group file used to be one part for one actor)."""
    x = np.random.default_rng(1).random((20000, 3)).astype(np.float32)
    path = tmp_path / "x.parquet"
    pq.write_table(pa.table({f"f{i}": x[:, i] for i in range(3)}), path, row_group_size=group_rows)
    source = open_input(path, rows=(lo, hi), chunk_rows=1024)
    chunks = list(source.chunks)
    assert source.n_rows == hi - lo
    rows = np.concatenate([c.rows for c in chunks]) if chunks else np.zeros(0, np.int64)
    np.testing.assert_array_equal(rows, np.arange(lo, hi))
    if chunks:
        np.testing.assert_array_equal(np.concatenate([c.x for c in chunks]), x[lo:hi])
    with pytest.raises(InputError, match="outside"):
        open_input(path, rows=(0, 20001))


def test_csv_progress_counts_the_bytes_read(tmp_path):
    """CSV rows are not counted ahead (that reads the file twice); the bytes read against the file's size give
    the progress bar a total and an ETA."""
    path = tmp_path / "x.csv"
    path.write_text("a,b\n" + "".join(f"{i},{i / 7:.6f}\n" for i in range(5000)))
    source = open_input(path, chunk_rows=512)
    assert source.n_rows is None and source.size == path.stat().st_size and source.position is not None
    seen = []
    for _ in source.chunks:
        seen.append(source.position())
    assert seen == sorted(seen) and 0 < seen[0] < source.size
    assert seen[-1] == source.size


# Cells as users write them: numbers in many spellings (one that float32 rounds differently when parsed directly
# rather than through float64, as NumPy and float() do), spellings Arrow reads and float() refuses (nan(ind)) or
# the other way round (1_0, Arabic-Indic digits), non-numbers, empty cells, non-finite values, quoted cells.
NUMBERS = ["0", "1", "-2.5", "1e3", "7.", ".5", "+.25", "1.0000000596046447755", "0.1", "3.4028235e38", " 4", "5 "]
ODD = ["1e39", "1_0", "nan", "-inf", "Infinity", "nan(ind)", "", "x", "\u0661", '"6"', '"1,5"', '"a\nb"']


def _oracle(text: str, header: bool, id_column: str | None, columns: str | None):
    """What the csv module alone makes of ``text``: every record at once, blank ones dropped, parsed row by row
    by the reader's own record parser (the code before Arrow's blocks)."""
    import csv
    import io

    import mcdrop.io.readers as readers

    try:
        records = [r for r in csv.reader(io.StringIO(text, newline="")) if any(c.strip() for c in r)]
    except csv.Error:
        return "error"
    if not records:
        return "error"
    n_cols = len(records[0])
    names = [c.strip() for c in records[0]] if header else [str(i) for i in range(n_cols)]
    try:
        id_index = None if id_column is None else readers._select(id_column, names, None, "id_column")[0]
        use = readers._select(columns, names, id_index)
    except InputError:
        return "error"
    data = records[1:] if header else records
    if not data:
        return b"", [], [], []
    chunk = readers._parse_block(data, 0, n_cols, use, id_index, "cells.csv")
    return chunk.x.tobytes(), chunk.rows.tolist(), chunk.ids or [], chunk.bad


def _read_all(path, **kw):
    try:
        chunks = list(open_input(path, **kw).chunks)
    except InputError:
        return "error"
    return (b"".join(c.x.tobytes() for c in chunks), [r for c in chunks for r in c.rows.tolist()],
            [i for c in chunks for i in (c.ids or [])], [b for c in chunks for b in c.bad])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.one_of(*[st.lists(st.sampled_from(NUMBERS), min_size=3, max_size=3)] * 3,
                               st.lists(st.sampled_from(NUMBERS + ODD), min_size=2, max_size=4)),
                     min_size=1, max_size=16),
       blank=st.lists(st.integers(0, 16), max_size=5), newline=st.sampled_from(["\n", "\r\n", "\r"]),
       header=st.booleans(), ids=st.booleans(), columns=st.sampled_from([None, "1,1", "0:2"]),
       chunk_rows=st.integers(1, 5))
def test_csv_reads_what_the_csv_module_alone_reads(tmp_path, rows, blank, newline, header, ids, columns, chunk_rows):
    """Whatever the cells, blank lines, line breaks, header, ids, column selection and chunk size: the rows, their
    numbers, values (bit for bit), ids and the reasons given for bad rows are what the csv module alone reads
    from the whole file, and one fails where the other does."""
    lines = [",".join(r) for r in rows]
    for i in blank:
        lines.insert(min(i, len(lines)), "  ")
    width = len(rows[0])
    text = newline.join(([",".join(f"c{j}" for j in range(width))] if header else []) + lines) + newline
    path = tmp_path / "cells.csv"
    path.write_text(text, newline="")
    id_column = "2" if ids else None
    got = _read_all(path, chunk_rows=chunk_rows, header="yes" if header else "no", id_column=id_column,
                    columns=columns)
    assert got == _oracle(text, header, id_column, columns)


def test_csv_edge_cases_found_in_review(tmp_path):
    """A run of blank lines after a quote does not end the file; a line number after the hand-off to the csv
    module is the file's; a cell Arrow reads as NaN and float() refuses is named as the csv module names it."""
    (tmp_path / "b.csv").write_text('1,2\n"3",4\n\n\n\n\n5,6\n7,8\n')
    _, x, rows, _, _ = read(tmp_path / "b.csv", chunk_rows=2)
    assert rows.tolist() == [0, 1, 2, 3] and x[:, 0].tolist() == [1, 3, 5, 7]
    long_field = '"' + "a" * 140_000 + '",1'
    (tmp_path / "l.csv").write_text("\n".join(["1,2"] * 12 + [long_field] + ["3,4"] * 10) + "\n")
    with pytest.raises(InputError, match=r"line 13: not CSV"):
        read(tmp_path / "l.csv", chunk_rows=4, max_line=10**6)
    (tmp_path / "n.csv").write_text("1,2\nnan(ind),3\n")
    _, _, rows, _, bad = read(tmp_path / "n.csv")
    assert rows.tolist() == [0] and bad == [(1, "column 0 holds 'nan(ind)'; expected a number")]


def test_csv_plain_blocks_go_through_arrow_until_the_first_quote(tmp_path, monkeypatch):
    """Not vacuous: plain numeric blocks are Arrow's (the spy sees them parsed), a quote hands the rest to the csv
    module, and the rows read are the file's."""
    import mcdrop.io.readers as readers

    parsed = []
    real = readers._arrow_block

    def spy(lines, *args):
        chunk = real(lines, *args)
        parsed.append(chunk is not None)
        return chunk

    monkeypatch.setattr(readers, "_arrow_block", spy)
    quoted = X.copy()
    text = csv_text(X[:4]) + '"{}",{},{},{}\n'.format(*X[4]) + csv_text(X[5:])
    (tmp_path / "q.csv").write_text(text)
    _, x, rows, _, _ = read(tmp_path / "q.csv", chunk_rows=2)
    assert np.array_equal(x, quoted) and rows.tolist() == list(range(6))
    assert parsed == [True, True]  # rows 0-1 (the first as its line) and 2-3; the block of rows 4-5 has a quote
