"""The floor plan: each folder of mcdrop/ imports only from the floors below it (no arrow back up), and the
torch-free modules import no torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import mcdrop

ROOT = Path(mcdrop.__file__).parent

FLOORS = [
    {"errors", "request", "schemas", "result", "plan", "inputs", "wire", "__init__", "__version__"},  # no torch
    {"client", "io"},  # no torch either
    {"sampling"},  # keyed randomness, layers, the engine
    {"uncertainty"},  # functions of samples, the predict loop, a model's calibration
    {"nets"},  # models, artifacts, import of a user's network
    {"training"},
    {"serving", "distributed"},
    {"service", "cli"},
]
"""Floors from the bottom up; a module may import from its own floor and the floors below."""


def _floor(part: str) -> int:
    for i, names in enumerate(FLOORS):
        if part in names:
            return i
    raise AssertionError(f"mcdrop/{part} is on no floor of tests/test_layers.py: add it to FLOORS")


def _imports(path: Path) -> set[str]:
    """The mcdrop packages a module imports, at any depth (lazy imports inside functions count too; imports
    only for type checking do not)."""
    tree = ast.parse(path.read_text())
    typing_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only.update(id(n) for child in node.body for n in ast.walk(child))
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] if node.module != "mcdrop" else [f"mcdrop.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        found.update(n.split(".")[1] for n in names if n.startswith("mcdrop.") and n.split(".")[1] != "bundled")
    return found


def test_no_folder_imports_from_a_floor_above_it():
    upward = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        own = rel.parts[0].removesuffix(".py")
        for target in _imports(path):
            if _floor(target) > _floor(own):
                upward.append(f"{rel} imports mcdrop.{target}")
    assert not upward, "imports up the floor plan:\n" + "\n".join(upward)


def test_the_vocabulary_and_the_client_import_no_torch():
    code = ("import sys; import mcdrop, mcdrop.request, mcdrop.schemas, mcdrop.result, mcdrop.plan, mcdrop.wire, "
            "mcdrop.client; bad = [m for m in ('torch', 'bentoml') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
