"""The CLI's shared set-up: the thread count from --threads or MCDROP_THREADS, a bad one named in one line."""

from __future__ import annotations

import pytest
import torch

from mcdrop.cli.common import CLIError, setup_torch


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
