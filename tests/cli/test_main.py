"""One consistent CLI: every command and subcommand answers --help; usage errors exit 2."""

from __future__ import annotations

import pytest

from tests.cli.test_score import mcdrop

pytestmark = [pytest.mark.integration]


@pytest.mark.parametrize(
    "command",
    [[], ["score"], ["evaluate"], ["serve"], ["train"], ["train", "fashion-mnist"], ["train", "uci"], ["bench"],
     ["bench", "uci"]],
)
def test_every_command_has_help(command):
    proc = mcdrop(*command, "--help")
    assert proc.stdout.startswith("usage: mcdrop")


def test_usage_errors_exit_2():
    assert mcdrop("frobnicate", check=False).returncode == 2
    assert mcdrop("score", "in.csv", check=False).returncode == 2  # -o is required
    proc = mcdrop("train", "uci", "iris", "-o", "x", check=False)
    assert proc.returncode == 2 and "unknown UCI dataset 'iris'" in proc.stderr
    for command in (["bench", "uci", "--datasets", "yacht"], ["train", "uci", "yacht", "-o", "x"]):
        proc = mcdrop(*command, "--samples", "0", "--data-root", "/nonexistent", check=False)
        assert proc.returncode == 2 and "--samples" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
