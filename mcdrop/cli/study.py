"""``mcdrop study NAME -o DIR``: run one of the dropout chapter's exercises as a seeded study.

Writes DIR/results.json (every number, with 95% t-intervals over seeds), DIR/table.md (the answer and its
tables; the same command gives the same table), DIR/timings.md where the study times something (machine-
dependent) and PNG plots.  ``mcdrop study --list`` names the studies.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mcdrop.cli.common import CLIError, log, setup_torch


def add_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(name, help="run one of the dropout chapter's exercises as a study", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("study", metavar="NAME", nargs="?", help="the study (see --list)")
    p.add_argument("--list", action="store_true", help="list the studies and exit")
    p.add_argument("--output", "-o", type=Path, metavar="DIR", help="folder to write (created)")
    p.add_argument("--seeds", type=int, default=3, help="training seeds 0..K-1 (>= 2; default 3)")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: 2,000 training and 1,000 test images, fewer epochs, a smaller design")
    p.add_argument("--data-root", help="data root (default $MCDROP_DATA or ../shared/data)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.set_defaults(run=run)


def _names() -> str:
    from mcdrop.training.studies import STUDIES

    return "\n".join(f"  {name:<13} {what}" for name, what in STUDIES.items())


def run(args: argparse.Namespace) -> int:
    from mcdrop.training.studies import STUDIES

    if args.list:
        print(_names())
        return 0
    if args.study is None:
        raise CLIError(f"NAME is required: one of {', '.join(STUDIES)} (mcdrop study --list)", 2)
    if args.study not in STUDIES:
        raise CLIError(f"unknown study {args.study!r}: expected one of {', '.join(STUDIES)}", 2)
    if args.output is None:
        raise CLIError("--output is required: the folder to write the results, table and plots to", 2)
    if args.seeds < 2:
        raise CLIError(f"--seeds has to be an integer >= 2 (a confidence interval needs two seeds), but got {args.seeds}", 2)
    if args.threads < 1:
        raise CLIError(f"--threads has to be a positive integer, but got {args.threads}", 2)
    try:
        args.output.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CLIError(f"--output {args.output}: cannot create it: {err.strerror or err}", 2) from err

    from mcdrop.training.data import DataNotFoundError
    from mcdrop.training.studies import load_study
    from mcdrop.training.studies.common import Context, load_data, write_result

    setup_torch(args.threads)
    try:
        data = load_data(args.data_root, quick=args.quick)
    except DataNotFoundError as err:
        raise CLIError(str(err)) from err
    ctx = Context(data, list(range(args.seeds)), args.quick, log)
    log(f"study {args.study}: {STUDIES[args.study]} ({data.description}; seeds {ctx.seeds})")
    result = load_study(args.study).run(ctx)
    command = f"mcdrop study {args.study} -o {args.output} --seeds {args.seeds}" + (" --quick" if args.quick else "")
    for path in write_result(result, ctx, args.output, command):
        log(f"wrote {path}")
    print(result.answer)
    return 0
