"""Atomic files: the old file or the new one, never half of one; no temporary file left; the umask's mode."""

import os
import stat

import pytest

from mcdrop.io.atomic import AtomicFile, atomic_write, new_mode, temp_prefix, umask


@pytest.fixture
def mask():
    """Run the test under umask 027 (and put the old one back)."""
    old = os.umask(0o027)
    yield 0o027
    os.umask(old)


def test_write_replaces_the_file_with_the_umasks_mode(tmp_path, mask):
    (tmp_path / "f.txt").write_text("old")
    atomic_write(tmp_path / "f.txt", "new ✓")
    atomic_write(tmp_path / "g.bin", b"\x00\xff")
    assert (tmp_path / "f.txt").read_text(encoding="utf-8") == "new ✓" and (tmp_path / "g.bin").read_bytes() == b"\x00\xff"
    assert stat.S_IMODE((tmp_path / "g.bin").stat().st_mode) == 0o640  # not mkstemp's 0o600
    assert stat.S_IMODE((tmp_path / "f.txt").stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt", "g.bin"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path):
    (tmp_path / "f.txt").write_text("old")
    with pytest.raises(RuntimeError, match="disk on fire"), AtomicFile(tmp_path / "f.txt") as fh:
        fh.write("half of the new")
        fh.flush()
        assert any(p.name.startswith(temp_prefix(tmp_path / "f.txt")) for p in tmp_path.iterdir())  # written beside it
        raise RuntimeError("disk on fire")
    assert (tmp_path / "f.txt").read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_a_failed_rename_leaves_the_old_file_and_no_temporary_file(tmp_path):
    (tmp_path / "d").mkdir()  # a folder cannot be replaced by a file
    (tmp_path / "d" / "inside").write_text("kept")
    with pytest.raises(IsADirectoryError):
        atomic_write(tmp_path / "d", "text")
    assert (tmp_path / "d" / "inside").read_text() == "kept" and [p.name for p in tmp_path.iterdir()] == ["d"]


def test_abort_and_a_missing_folder(tmp_path):
    out = AtomicFile(tmp_path / "f.bin", binary=True)
    out.fh.write(b"abc")
    out.abort()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(FileNotFoundError):
        AtomicFile(tmp_path / "missing" / "f.txt")


def test_commit_after_a_library_closed_the_file(tmp_path):
    out = AtomicFile(tmp_path / "f.bin", binary=True)
    out.fh.write(b"abc")
    out.fh.close()  # pyarrow's ParquetWriter closes the file it was given
    out.commit()
    assert (tmp_path / "f.bin").read_bytes() == b"abc" and [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_umask_is_read_without_changing_it(mask):
    assert umask() == 0o027 and umask() == 0o027
    assert new_mode() == 0o640 and new_mode(directory=True) == 0o750
