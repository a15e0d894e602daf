"""``mcdrop serve``: not built yet."""

from __future__ import annotations

import argparse
from typing import Any

from mcdrop.cli.common import CLIError


def add_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(name, help="(not built yet)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    raise CLIError("not built yet")
