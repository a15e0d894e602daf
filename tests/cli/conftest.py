"""The CLI in this process (the fast tier: usage errors and help need no subprocess and no second torch import)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from mcdrop.cli.main import main


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., Run]:
    """``cli("score", "x.csv", ...)`` runs ``mcdrop`` in-process and returns its exit code and output."""

    def run(*args: object) -> Run:
        capsys.readouterr()
        try:
            code = main([str(a) for a in args])
        except SystemExit as exit_:  # argparse's own usage errors and --help
            code = int(exit_.code or 0)
        out = capsys.readouterr()
        return Run(code, out.out, out.err)

    return run
