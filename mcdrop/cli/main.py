"""``mcdrop``: score files, train, evaluate and report on models, calibrate them, run benchmarks, serve the HTTP API.

Exit codes: 0 success, 1 data or runtime error, 2 usage error, 130 interrupted, 141 standard output closed
by its reader (``mcdrop score ... -o - | head``: stops quietly, like a Unix tool killed by SIGPIPE).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence

from mcdrop.cli import acquire, bench, calibrate, evaluate, report, score, serve, study, train
from mcdrop.cli.common import CLIError, as_flags
from mcdrop.errors import MCDropError, ParameterError

COMMANDS = {"score": score, "train": train, "evaluate": evaluate, "report": report, "bench": bench, "serve": serve,
            "study": study, "calibrate": calibrate, "acquire": acquire}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mcdrop", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        module.add_parser(sub, name)
    _plain_help(parser)
    return parser


_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")


def plain(text: str | None) -> str | None:
    """Help text without reStructuredText markup: ``x`` and :func:`x` become x (the docstrings are also API docs)."""
    return None if text is None else _ROLE.sub(r"\1", text).replace("``", "")


def _plain_help(parser: argparse.ArgumentParser) -> None:
    """:func:`plain` on the descriptions and help strings of ``parser`` and all its subcommands."""
    parser.description, parser.epilog = plain(parser.description), plain(parser.epilog)
    for action in parser._actions:
        if action.help not in (None, argparse.SUPPRESS):
            action.help = plain(action.help)
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                choice.help = plain(choice.help)
            for child in dict.fromkeys(action.choices.values()):
                _plain_help(child)


EXTRAS = {"torch": "torch", "scipy": "torch", "safetensors": "torch", "bentoml": "serve", "torchvision": "train",
          "matplotlib": "train", "sklearn": "train", "pyarrow": "parquet", "ray": "ray", "pandas": "ray"}
"""The extra that installs each optional dependency (pyproject.toml), named when a command needs a missing one."""
SIGPIPE_EXIT = 141
"""128 + SIGPIPE: what a shell reports for a Unix tool whose reader closed the pipe."""


def _detach_stdout() -> None:
    """Point standard output at /dev/null, so the interpreter's last flush of what is still buffered cannot fail
    (a closed pipe, a full device) and print a second error."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _missing(command: str, err: ModuleNotFoundError) -> str:
    root = (err.name or "").partition(".")[0]
    extra = EXTRAS.get(root)
    if extra is None:
        return f"a module is missing: {err}"
    hint = " (or score through a running server with --url, which needs only the client)" if command == "score" else ""
    return f"this needs {root}, which is not installed here (a client-only install?): pip install 'mcdrop[{extra}]'{hint}"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except CLIError as err:
        print(f"mcdrop {args.command}: error: {err}", file=sys.stderr)
        return err.code
    except MCDropError as err:  # a library error the command did not word itself: one line, parameters as flags
        if isinstance(err, OSError):  # an OutputError: as for any OSError below, nothing more goes to stdout
            _detach_stdout()
        print(f"mcdrop {args.command}: error: {as_flags(str(err))}", file=sys.stderr)
        return 2 if isinstance(err, ParameterError) or getattr(err, "usage", False) else 1
    except KeyboardInterrupt:
        print(f"mcdrop {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        _detach_stdout()
        return SIGPIPE_EXIT
    except ModuleNotFoundError as err:
        print(f"mcdrop {args.command}: error: {_missing(args.command, err)}", file=sys.stderr)
        return 1
    except OSError as err:  # a device or file failure not named further down (a full disk, a lost mount)
        _detach_stdout()
        where = f"{err.filename}: " if getattr(err, "filename", None) else ""
        print(f"mcdrop {args.command}: error: {where}{err.strerror or err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
