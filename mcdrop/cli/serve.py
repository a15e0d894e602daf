"""``mcdrop serve``: start the BentoML HTTP service (default: the bundled model on http://127.0.0.1:3000).

The flags set the service's environment variables (see ``/openapi.json`` or README for all of them); the
settings and every model are checked before a worker starts, and a bad one stops the command with one line.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from typing import Any

from mcdrop.cli.common import CLIError, log

ANNOUNCE = "MCDROP_ANNOUNCE_URL"
"""Set by ``mcdrop serve`` for the service: the URL it prints once it is ready (a failed start prints no URL)."""

def add_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(name, help="serve models over HTTP", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to listen on (default 127.0.0.1; 0.0.0.0 for every interface, then also set "
                        "--allowed-hosts)")
    p.add_argument("--port", type=int, default=3000, help="port (default 3000)")
    p.add_argument("--models", help="comma-separated model names or folders; the first is the default")
    p.add_argument("--max-rows", type=int, help="rows per request (MCDROP_MAX_ROWS, default 1024)")
    p.add_argument("--max-samples", type=int, help="MC passes per row (MCDROP_MAX_SAMPLES, default 2000)")
    p.add_argument("--threads", type=int, help="torch threads (MCDROP_THREADS)")
    p.add_argument("--allowed-hosts", help="Host names clients use, comma-separated, or * (MCDROP_ALLOWED_HOSTS; "
                                           "default: loopback names)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if not 0 < args.port < 65536:
        raise CLIError(f"--port has to be between 1 and 65535, but got {args.port}", 2)
    missing = [name for name in ("bentoml", "pydantic_settings") if importlib.util.find_spec(name) is None]
    if missing:
        raise CLIError(f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed in this environment: "
                       "pip install 'mcdrop[serve]'")
    from mcdrop.serving.config import ServiceConfig, SettingError, flags

    env = dict(os.environ, BENTOML_DO_NOT_TRACK="True")
    for flag, var in flags().items():  # each flag sets its variable (the settings' fields name them)
        if (value := getattr(args, flag[2:].replace("-", "_"))) is not None:
            env[var] = str(value)
    try:
        ServiceConfig.from_env(env)
    except SettingError as err:
        flag = next((f for f, v in flags().items() if v == err.variable), err.variable)
        raise CLIError(f"{flag}: {str(err).split(': ', 1)[1]}", 2) from err
    log(f"starting the server on http://{args.host}:{args.port} (it says when it is serving)")
    env[ANNOUNCE] = f"http://{args.host}:{args.port}"  # the service prints "serving on" once its models are loaded
    os.execve(sys.executable, [sys.executable, "-m", "bentoml", "serve", "mcdrop.service.service:MCDrop", "--host",
                               args.host, "--port", str(args.port)], env)
    return 0  # pragma: no cover - exec does not return
