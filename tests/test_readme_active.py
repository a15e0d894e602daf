"""The README's examples of decision-based stopping and acquisition, run as written (python blocks in one
namespace; the shell lines through the installed `mcdrop` on files made here)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "### Decisions at the least cost, and what to label next"


def blocks(kind: str) -> list[str]:
    text = README.read_text()
    start = text.index(SECTION)
    end = text.index("\n## ", start)
    return re.findall(rf"```{kind}\n(.*?)```", text[start:end], flags=re.S)


def test_python_examples_run():
    code = blocks("python")
    assert len(code) == 2
    namespace: dict = {}
    for block in code:
        exec(compile(block, str(README), "exec"), namespace)


def test_shell_examples_run(tmp_path):
    np.save(tmp_path / "images.npy", np.random.default_rng(0).random((40, 784), dtype=np.float32))
    lines = [line for block in blocks("sh") for line in block.splitlines() if line.strip()]
    assert len(lines) == 2
    for line in lines:
        args = shlex.split(line)
        assert args[0] == "mcdrop"
        proc = subprocess.run([sys.executable, "-m", "mcdrop.cli.main", *args[1:]], cwd=tmp_path, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "scores.csv").is_file() and len((tmp_path / "next.csv").read_text().splitlines()) == 21
