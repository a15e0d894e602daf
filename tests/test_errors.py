"""One exception root: every exception class in mcdrop/ is an MCDropError, found by reading every module (so a new
root cannot sneak in), the tree drawn in mcdrop.errors' docstring is the real one, and library messages name
parameters, not CLI flags."""

from __future__ import annotations

import ast
import builtins
import importlib
import re
from pathlib import Path

import pytest

import mcdrop
from mcdrop import errors
from mcdrop.errors import MCDropError

PACKAGE = Path(mcdrop.__file__).parent
SOURCES = sorted(PACKAGE.rglob("*.py"))
_DRAWN = re.compile(r"^(?P<indent>[ │]*)(?:[├└]── )?(?P<name>[A-Z]\w+)(?: \((?P<builtin>\w+)\))?(?:\s|$)")


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _classes() -> list[tuple[str, str]]:
    """(module, name) of every class defined at the top level of a module of mcdrop/."""
    return [
        (_module(path), node.name)
        for path in SOURCES
        for node in ast.parse(path.read_text()).body
        if isinstance(node, ast.ClassDef)
    ]


def exception_classes() -> dict[str, type[BaseException]]:
    """Every exception class defined in mcdrop/, by name (its module imported)."""
    found: dict[str, type[BaseException]] = {}
    for module, name in _classes():
        obj = getattr(importlib.import_module(module), name)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            assert name not in found, f"two exception classes named {name}: {found[name].__module__} and {module}"
            found[name] = obj
    return found


def drawing() -> list[tuple[int, str, str | None]]:
    """(depth, name, builtin base or None) of each class in the tree drawn in mcdrop.errors' docstring."""
    doc = errors.__doc__ or ""
    block = doc.split("Our exception hierarchy::", 1)[1].strip("\n").split("\n\n", 1)[0]
    rows = []
    for line in block.splitlines():
        match = _DRAWN.match(line.removeprefix("    "))
        assert match, f"cannot read the drawing's line {line!r}"
        rows.append((len(match["indent"]) // 4 + (1 if "──" in line else 0), match["name"], match["builtin"]))
    return rows


def test_every_exception_class_in_mcdrop_is_an_mcdrop_error():
    found = exception_classes()
    assert {"InputError", "PredictError", "ClientError", "DropoutConfigError", "CLIError"} <= set(found)  # the walk works
    assert [name for name, cls in found.items() if not issubclass(cls, MCDropError)] == []


def test_no_exception_class_hides_inside_a_function_or_class():
    """The walk above sees top-level classes; a nested one deriving from an exception would escape it."""
    exception_names = {*exception_classes(), *(n for n in dir(builtins) if n.endswith(("Error", "Exception")))}
    nested = []
    for path in SOURCES:
        tree = ast.parse(path.read_text())
        top = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and id(node) not in top:
                bases = {b.id if isinstance(b, ast.Name) else b.attr if isinstance(b, ast.Attribute) else "" for b in node.bases}
                if bases & exception_names:
                    nested.append(f"{path.relative_to(PACKAGE)}: {node.name}")
    assert nested == []


def test_the_drawing_lists_every_class_under_its_real_parent_with_its_builtin_base():
    found = exception_classes()
    rows = drawing()
    assert rows[0] == (0, "MCDropError", None)
    drawn = [name for _, name, _ in rows]
    assert sorted(drawn) == sorted(found), "the drawing and the code disagree"
    parents: list[str] = []
    for depth, name, builtin in rows:
        parents = parents[:depth]
        cls = found[name]
        if parents:
            assert parents[-1] in (c.__name__ for c in cls.__bases__), f"{name} is drawn under {parents[-1]}"
        if builtin is not None:
            base = getattr(builtins, builtin)
            assert issubclass(cls, base) and base in cls.__mro__[1:], f"{name} is drawn as a {builtin}"
        parents.append(name)


@pytest.mark.parametrize(
    ("name", "builtin"),
    [
        ("InputError", ValueError),
        ("OutputError", OSError),
        ("DataNotFoundError", FileNotFoundError),
        ("SamplingCancelled", RuntimeError),
        ("ArtifactError", ValueError),
        ("ConfigError", ValueError),
        ("SettingError", ValueError),
        ("WireError", ValueError),
        ("KernelBuildError", RuntimeError),
    ],
)
def test_a_users_except_clause_for_the_old_builtin_base_still_catches(name, builtin):
    cls = exception_classes()[name]
    args = ("field", "message") if name in ("ConfigError", "SettingError") else ("message",)
    with pytest.raises(builtin):
        raise cls(*args)
    with pytest.raises(MCDropError):
        raise cls(*args)


def test_the_root_is_exported_from_mcdrop():
    assert mcdrop.MCDropError is MCDropError and "MCDropError" in mcdrop.__all__


_FLAG = re.compile(r"(?<![\w-])--[a-z]")


def _strings(node: ast.AST) -> list[str]:
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def test_library_errors_name_parameters_not_cli_flags():
    """Outside mcdrop/cli, a raised message names ``key``, not ``--key``: the CLI translates (cli/common.py)."""
    offenders = []
    for path in SOURCES:
        if path.relative_to(PACKAGE).parts[0] == "cli":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and node.exc is not None and any(_FLAG.search(s) for s in _strings(node.exc)):
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert offenders == []
