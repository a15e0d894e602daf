"""One consistent CLI: every command and subcommand answers --help; usage errors exit 2 (in-process)."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize(
    "command",
    [[], ["score"], ["evaluate"], ["serve"], ["train"], ["train", "fashion-mnist"], ["train", "uci"], ["bench"],
     ["bench", "uci"]],
)
def test_every_command_has_help(cli, command):
    run = cli(*command, "--help")
    assert run.returncode == 0 and run.stdout.startswith("usage: mcdrop")


def test_usage_errors_exit_2(cli):
    assert cli("frobnicate").returncode == 2
    assert cli("score", "in.csv").returncode == 2  # -o is required
    run = cli("train", "uci", "iris", "-o", "x")
    assert run.returncode == 2 and "unknown UCI dataset 'iris'" in run.stderr
    for command in (["bench", "uci", "--datasets", "yacht"], ["train", "uci", "yacht", "-o", "x"]):
        run = cli(*command, "--samples", "0", "--data-root", "/nonexistent")
        assert run.returncode == 2 and "--samples" in run.stderr and "Traceback" not in run.stderr, run.stderr
    run = cli("serve", "--port", "70000")
    assert run.returncode == 2 and "--port" in run.stderr
    run = cli("serve", "--max-rows", "0")
    assert run.returncode == 2 and "--max-rows" in run.stderr
