"""``mcdrop serve``: start the BentoML HTTP service (default: the bundled model on 127.0.0.1:3000)."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from mcdrop.cli.common import CLIError, log

ROOT = Path(__file__).resolve().parents[2]


def add_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(name, help="serve models over HTTP", description=__doc__)
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=3000, help="port (default 3000)")
    p.add_argument("--models", help="comma-separated model names or paths; the first is the default")
    p.add_argument("--max-rows", type=int, help="rows per request (MCDROP_MAX_ROWS, default 1024)")
    p.add_argument("--max-samples", type=int, help="MC passes per request (MCDROP_MAX_SAMPLES, default 2000)")
    p.add_argument("--threads", type=int, help="torch threads (MCDROP_THREADS)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if not (ROOT / "service" / "service.py").is_file():
        raise CLIError(f"the service definition is missing: expected {ROOT / 'service' / 'service.py'}")
    if not 0 < args.port < 65536:
        raise CLIError(f"--port has to be between 1 and 65535, but got {args.port}", 2)
    env = dict(os.environ, BENTOML_DO_NOT_TRACK="True")
    for flag, var in (("models", "MCDROP_SERVE_MODELS"), ("max_rows", "MCDROP_MAX_ROWS"),
                      ("max_samples", "MCDROP_MAX_SAMPLES"), ("threads", "MCDROP_THREADS")):
        if getattr(args, flag) is not None:
            env[var] = str(getattr(args, flag))
    if "MCDROP_SERVE_MODELS" not in env:
        from mcdrop.artifacts import ArtifactError, resolve_model

        try:
            resolve_model(None)
        except ArtifactError as err:
            raise CLIError(f"{err}. Train it with `mcdrop train fashion-mnist --preset tuned -o models/fashion-mnist`") from err
    bentoml = shutil.which("bentoml", path=str(Path(sys.executable).parent)) or shutil.which("bentoml")
    if bentoml is None:
        raise CLIError("bentoml is not installed in this environment (pip install 'bentoml<1.4.40')")
    log(f"serving on http://{args.host}:{args.port} (POST /predict, GET /models, /readyz, /metrics)")
    os.chdir(ROOT)
    os.execve(bentoml, [bentoml, "serve", "service.service:MCDrop", "--host", args.host, "--port", str(args.port)], env)
    return 0  # pragma: no cover - exec does not return
