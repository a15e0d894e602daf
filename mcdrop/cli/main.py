"""``mcdrop``: score files, train, evaluate and report on models, run benchmarks, serve the HTTP API.

Exit codes: 0 success, 1 data or runtime error, 2 usage error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from mcdrop.cli import acquire, bench, evaluate, report, score, serve, study, train
from mcdrop.cli.common import CLIError

COMMANDS = {"score": score, "train": train, "evaluate": evaluate, "report": report, "bench": bench, "serve": serve,
            "study": study, "acquire": acquire}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mcdrop", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        module.add_parser(sub, name)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except CLIError as err:
        print(f"mcdrop {args.command}: error: {err}", file=sys.stderr)
        return err.code
    except KeyboardInterrupt:
        print(f"mcdrop {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
