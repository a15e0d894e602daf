"""What the commands share: errors with exit codes, logging to stderr, progress on a terminal."""

from __future__ import annotations

import sys


class CLIError(Exception):
    """A failure reported as one line; ``code`` 1 for data/runtime errors, 2 for usage errors."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
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
