"""A new user's first hour, README only: how to install (not from an index), `make serve` on another port, and
a first `make` that says what it is doing."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def make_dry_run(*args: str) -> str:
    """What ``make`` would run (``-n``: nothing is run), for a fresh virtual environment that does not exist."""
    proc = subprocess.run(["make", "-n", "-C", str(ROOT), "VENV=/nonexistent/venv", *args], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@needs_make
def test_make_serve_takes_a_port():
    assert re.search(r"mcdrop serve --port 3001$", make_dry_run("serve", "PORT=3001"), re.M)
    assert re.search(r"mcdrop serve --port 3000$", make_dry_run("serve"), re.M)


@needs_make
def test_the_first_make_says_what_it_does_and_shows_pips_progress():
    steps = make_dry_run("install")
    assert "takes about a minute" in steps
    install = next(line for line in steps.splitlines() if "pip install" in line)
    assert "--quiet" not in install and " -q " not in install


def test_the_readme_says_how_to_install_without_an_index():
    install = (ROOT / "README.md").read_text().split("## Install", 1)[1].split("\n## ", 1)[0]
    assert "not published on a package index" in install
    assert "pip install '.[torch]'" in install and "pip wheel --no-deps -w dist ." in install
    table = [line for line in install.splitlines() if line.startswith("|")]
    assert table and not any("`pip install mcdrop" in line for line in table), "an install line that finds nothing"
