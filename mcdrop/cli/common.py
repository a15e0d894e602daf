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
    """Tune the allocator and set torch's threads: ``threads``, else ``$MCDROP_THREADS``, else torch's default."""
    import os

    import torch

    from mcdrop.sampling.runtime import tune_allocator

    tune_allocator()
    threads = threads or int(os.environ.get("MCDROP_THREADS") or 0)
    if threads:
        torch.set_num_threads(threads)
