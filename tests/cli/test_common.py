"""The CLI's shared set-up and door: a library error's parameter (```key```) reaches the user as its flag; the thread
count from --threads or MCDROP_THREADS, a bad one named in one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mcdrop.cli.common import INPUT_FLAGS, CLIError, as_flags, setup_torch
from mcdrop.errors import ParameterError


def test_as_flags_writes_each_marked_parameter_as_its_flag():
    assert as_flags("`key` 'x': no such array; `id_column` too") == "--key 'x': no such array; --id-column too"
    assert as_flags("a larger `max_line` allows it") == "a larger --max-line-length allows it"  # PARAM_FLAGS
    assert as_flags("or pass `format`", INPUT_FLAGS) == "or pass --input-format"
    assert as_flags("`data.npz` and `Key` are not parameters") == "`data.npz` and `Key` are not parameters"
    assert str(CLIError("`n_samples` 0: expected >= 1", 2)) == "--samples 0: expected >= 1"


@pytest.fixture
def two_arrays(tmp_path):
    path = tmp_path / "two.npz"
    np.savez(path, a=np.zeros((3, 4), np.float32), b=np.zeros((3, 4), np.float32))
    return path


def test_a_readers_error_names_the_flag_on_the_command_line(cli, tmp_path, two_arrays):
    run = cli("score", two_arrays, "-o", tmp_path / "out.csv", "--key", "nope")
    assert run.returncode == 2 and f"--key 'nope': {two_arrays} holds no such array" in run.stderr, run.stderr
    run = cli("score", two_arrays, "-o", tmp_path / "out.csv")
    assert run.returncode == 1 and "choose the inputs with --key" in run.stderr and "`" not in run.stderr, run.stderr


def test_a_bad_id_column_is_named_as_itself_not_as_columns(cli, tmp_path):
    src = tmp_path / "in.csv"
    src.write_text("id,a,b\nr1,1,2\n")
    run = cli("score", src, "-o", tmp_path / "out.csv", "--id-column", "zz")
    assert run.returncode == 2 and "--id-column: no column 'zz'" in run.stderr, run.stderr


def test_a_library_error_no_command_words_is_one_line_with_flags(cli, monkeypatch, tmp_path):
    """An MCDropError that escapes a command: one line naming the flag, exit 2 for a parameter, no traceback."""
    from mcdrop.cli import score

    def refuse(_args):
        raise ParameterError("`batch_size` 0: expected a positive number of rows", "batch_size")

    monkeypatch.setattr(score, "_options", refuse)
    run = cli("score", tmp_path / "in.csv", "-o", tmp_path / "out.csv")
    assert run.returncode == 2 and run.stderr == "mcdrop score: error: --batch-size 0: expected a positive number of rows\n"


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("raw", ["two", "0", "-3", "1.5"])
def test_a_bad_mcdrop_threads_is_a_usage_error_naming_it(monkeypatch, threads, raw):
    monkeypatch.setenv("MCDROP_THREADS", raw)
    with pytest.raises(CLIError, match=f"^MCDROP_THREADS: expected an integer >= 1, but got '{raw}'$") as err:
        setup_torch(None)
    assert err.value.code == 2


def test_the_flag_wins_over_the_variable_and_is_checked(monkeypatch, threads):
    monkeypatch.setenv("MCDROP_THREADS", "1")
    setup_torch(2)
    assert torch.get_num_threads() == 2
    setup_torch(None)
    assert torch.get_num_threads() == 1
    with pytest.raises(CLIError, match="--threads has to be an integer >= 1, but got 0") as err:
        setup_torch(0)
    assert err.value.code == 2
