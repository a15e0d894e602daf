"""What the commands share: errors with exit codes, flags for the library's parameter names, logging to stderr."""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping

from mcdrop.errors import MCDropError

PARAM_FLAGS = {"max_line": "--max-line-length", "root": "--data-root", "n_samples": "--samples"}
"""The flag of each library parameter whose name is not its flag's (otherwise ``id_column`` is ``--id-column``)."""
INPUT_FLAGS = {"format": "--input-format"}
"""The flags of :func:`mcdrop.io.readers.open_input`'s parameters where they differ from :data:`PARAM_FLAGS`."""
OUTPUT_FLAGS = {"format": "--output-format"}
"""The flags of :func:`mcdrop.io.writers.open_output`'s parameters where they differ from :data:`PARAM_FLAGS`."""
_PARAM = re.compile(r"`([a-z][a-z0-9_]*)`")


def as_flags(message: str, flags: Mapping[str, str] | None = None) -> str:
    """``message`` with each parameter the library marks ```name``` written as the command's flag: ``flags[name]``,
    else ``PARAM_FLAGS[name]``, else ``--name`` with dashes (see :mod:`mcdrop.errors`)."""

    def flag(match: re.Match[str]) -> str:
        name = match[1]
        return (flags or {}).get(name) or PARAM_FLAGS.get(name) or "--" + name.replace("_", "-")

    return _PARAM.sub(flag, message)


class CLIError(MCDropError):
    """A failure reported as one line; ``code`` 1 for data/runtime errors, 2 for usage errors.  Parameters the
    message names as the library does (```key```) are written as flags (:func:`as_flags`, ``flags``)."""

    def __init__(self, message: str, code: int = 1, *, flags: Mapping[str, str] | None = None) -> None:
        super().__init__(as_flags(message, flags))
        self.code = code


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def is_terminal() -> bool:
    return sys.stderr.isatty()


def setup_torch(threads: int | None) -> None:
    """Tune the allocator and set torch's threads: ``threads`` (``--threads``), else ``$MCDROP_THREADS``, else torch's
    default; a count below 1 is a usage error naming the flag or the variable."""
    import os

    import torch

    from mcdrop.sampling.runtime import tune_allocator

    if threads is not None and threads < 1:
        raise CLIError(f"--threads has to be an integer >= 1, but got {threads}", 2)
    raw = os.environ.get("MCDROP_THREADS", "").strip()
    if threads is None and raw:
        if not raw.isdigit() or int(raw) < 1:
            raise CLIError(f"MCDROP_THREADS: expected an integer >= 1, but got {raw!r}", 2)
        threads = int(raw)
    tune_allocator()
    if threads:
        torch.set_num_threads(threads)
