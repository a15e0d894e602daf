"""The service's settings, read explicitly from the environment at start-up (never at import).

Every variable is optional; a bad value raises :class:`SettingError` naming the variable and what it takes.
Torch-free, so ``mcdrop serve`` checks the settings before it starts a server.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mcdrop.errors import ParameterError
from mcdrop.request import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_ROWS, DEFAULT_MAX_SAMPLES
from mcdrop.schemas import Limits

__all__ = ["LOOPBACK_HOSTS", "PRECISIONS", "SETTINGS", "ServiceConfig", "SettingError", "workers_from_env"]

PRECISIONS = ("float32", "tf32", "bfloat16")
"""mcdrop.sampling.precision.PRECISIONS, repeated here to keep this module torch-free (a test checks they agree)."""

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")

DEFAULT_MAX_COST = 2e12
"""Multiply-adds one request may cost (rows x passes x the model's multiply-adds per pass).  The shipped
classifier does about 1.9e6 per pass, so this is 1,024 rows x 1,000 passes: about 4 s with the fused kernel on
a 2-core EPYC, 25-40 s on the generic path (BENCHMARKS.md §7, "Hardening")."""
DEFAULT_SLICE_COST = 2e9
"""The least work done between two scheduling decisions (multiply-adds).  Unless MCDROP_SLICE_COST is set, a slice
is :data:`SLICE_SECONDS` of work at the throughput the predictor measures at start-up, and at least this."""
SLICE_SECONDS = 0.05
"""About how long a slice runs: a small request waits at most about that long per large request in flight."""

SETTINGS: dict[str, str] = {
    "MCDROP_SERVE_MODELS": "comma-separated model names or folders; the first is the default (default fashion-mnist)",
    "MCDROP_MAX_ROWS": f"rows per request (default {DEFAULT_MAX_ROWS})",
    "MCDROP_MAX_SAMPLES": f"MC passes per row, also the adaptive cap (default {DEFAULT_MAX_SAMPLES})",
    "MCDROP_MAX_BODY_BYTES": f"request body size in bytes (default {DEFAULT_MAX_BODY_BYTES})",
    "MCDROP_MAX_COST": f"multiply-adds per request: rows x passes x the model's per pass (default {DEFAULT_MAX_COST:g}; "
                       "0 turns the budget off)",
    "MCDROP_REQUEST_TIMEOUT": "seconds before a request is cancelled with 504 (default 60)",
    "MCDROP_HEADER_TIMEOUT": "seconds a connection may take to send its request line and headers (default 10)",
    "MCDROP_BODY_TIMEOUT": "seconds a request body may stall between two pieces (default 30)",
    "MCDROP_BODY_DEADLINE": "seconds a whole request body may take to arrive, however steadily it trickles (default 60)",
    "MCDROP_BATCH_WAIT_MS": "how long an idle server waits to batch concurrent requests (default 2)",
    "MCDROP_SLICE_COST": f"multiply-adds computed between two scheduling decisions (default: {SLICE_SECONDS * 1e3:g} ms "
                         f"of work at the throughput measured at start-up, at least {DEFAULT_SLICE_COST:g})",
    "MCDROP_THREADS": "torch threads (default: torch's choice)",
    "MCDROP_DEVICE": "cpu, cuda, cuda:N or auto (cuda when one is available) (default cpu)",
    "MCDROP_PRECISION": "float32, tf32 (CUDA only) or bfloat16 (default float32; README \"Reproducibility\")",
    "MCDROP_WORKERS": "server processes, each with its own models and scheduler (default 1); with MCDROP_THREADS unset "
                      "each takes cores / workers torch threads",
    "MCDROP_ALLOWED_HOSTS": "Host header values accepted, comma-separated, or * (default: loopback names)",
    "MCDROP_ALLOWED_ORIGINS": "browser origins allowed to call the API (CORS), comma-separated (default: none)",
    "MCDROP_API_KEY": "bearer token required on every endpoint but /livez and /readyz (default: none)",
    "MCDROP_API_KEY_FILE": "file holding the bearer token (instead of MCDROP_API_KEY)",
    "MCDROP_DOCS": "1 serves the OpenAPI page at /docs (default 0: off)",
}


class SettingError(ParameterError):
    """A setting with an unusable value; ``variable`` names it."""

    def __init__(self, variable: str, message: str) -> None:
        super().__init__(f"{variable}: {message}", variable)
        self.variable = variable


def _number(env: Mapping[str, str], name: str, default: float, *, integer: bool = False, minimum: float = 0.0,
            allow_zero: bool = False) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        raise SettingError(name, f"expected {'an integer' if integer else 'a number'}, but got {raw!r}") from None
    if not math.isfinite(value) or value < minimum or (value == 0 and not allow_zero and minimum == 0):
        bound = f">= {minimum:g}" if minimum else "> 0"
        raise SettingError(name, f"expected a number {bound}, but got {raw!r}")
    return value


def _names(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in env.get(name, "").split(",") if part.strip())


@dataclass(frozen=True)
class ServiceConfig:
    """Everything the service reads from its environment (see :data:`SETTINGS`)."""

    models: tuple[str, ...] = ()
    limits: Limits = field(default_factory=Limits)
    batch_wait_ms: float = 2.0
    slice_cost: float | None = None  # None: SLICE_SECONDS of work at the measured rate (Scheduler)
    threads: int | None = None
    device: str = "cpu"
    allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS
    allowed_origins: tuple[str, ...] = ()
    api_key: str | None = None
    docs: bool = False
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    body_deadline_s: float = 60.0
    precision: str = "float32"
    workers: int = 1

    def worker_threads(self, cores: int | None = None) -> int | None:
        """Torch threads per worker: MCDROP_THREADS, else ``cores // workers`` (at least 1) when there are several
        workers (so they do not oversubscribe the cores), else None (torch's choice)."""
        if self.threads or self.workers == 1:
            return self.threads
        return max(1, (cores or os.cpu_count() or 1) // self.workers)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ServiceConfig:
        env = os.environ if env is None else env
        max_cost = _number(env, "MCDROP_MAX_COST", DEFAULT_MAX_COST, allow_zero=True)
        limits = Limits(
            max_rows=int(_number(env, "MCDROP_MAX_ROWS", DEFAULT_MAX_ROWS, integer=True, minimum=1)),
            max_samples=int(_number(env, "MCDROP_MAX_SAMPLES", DEFAULT_MAX_SAMPLES, integer=True, minimum=1)),
            max_body_bytes=int(_number(env, "MCDROP_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES, integer=True, minimum=1024)),
            max_cost=max_cost or None,
            timeout_s=_number(env, "MCDROP_REQUEST_TIMEOUT", 60.0, minimum=0.001),
        )
        threads = env.get("MCDROP_THREADS", "").strip()
        key = env.get("MCDROP_API_KEY", "").strip() or None
        key_file = env.get("MCDROP_API_KEY_FILE", "").strip()
        if key_file:
            try:
                key = Path(key_file).read_text().strip() or None
            except OSError as err:
                raise SettingError("MCDROP_API_KEY_FILE", f"cannot read {key_file}: {err.strerror or err}") from err
            if key is None:
                raise SettingError("MCDROP_API_KEY_FILE", f"{key_file} is empty; expected the bearer token")
        if key is not None and len(key) < 16:
            raise SettingError("MCDROP_API_KEY_FILE" if key_file else "MCDROP_API_KEY",
                               "expected a token of at least 16 characters (e.g. `openssl rand -hex 32`)")
        device = env.get("MCDROP_DEVICE", "").strip().lower() or "cpu"
        if not re.fullmatch(r"cpu|auto|cuda(:\d+)?", device):
            raise SettingError("MCDROP_DEVICE", f"expected cpu, cuda, cuda:N or auto, but got {device!r}")
        precision = env.get("MCDROP_PRECISION", "").strip().lower() or "float32"
        if precision not in PRECISIONS:
            raise SettingError("MCDROP_PRECISION", f"expected one of {', '.join(PRECISIONS)}, but got {precision!r}")
        docs = env.get("MCDROP_DOCS", "0").strip().lower()
        if docs not in ("0", "1", "true", "false", ""):
            raise SettingError("MCDROP_DOCS", f"expected 0 or 1, but got {docs!r}")
        return cls(
            models=_names(env, "MCDROP_SERVE_MODELS"),
            limits=limits,
            batch_wait_ms=_number(env, "MCDROP_BATCH_WAIT_MS", 2.0, allow_zero=True),
            slice_cost=_number(env, "MCDROP_SLICE_COST", 0, minimum=1.0) if env.get("MCDROP_SLICE_COST", "").strip()
            else None,
            threads=int(_number(env, "MCDROP_THREADS", 0, integer=True, minimum=1)) if threads else None,
            device=device,
            allowed_hosts=_names(env, "MCDROP_ALLOWED_HOSTS") or LOOPBACK_HOSTS,
            allowed_origins=_names(env, "MCDROP_ALLOWED_ORIGINS"),
            api_key=key,
            docs=docs in ("1", "true"),
            header_timeout_s=_number(env, "MCDROP_HEADER_TIMEOUT", 10.0, minimum=0.001),
            body_timeout_s=_number(env, "MCDROP_BODY_TIMEOUT", 30.0, minimum=0.001),
            body_deadline_s=_number(env, "MCDROP_BODY_DEADLINE", 60.0, minimum=0.001),
            precision=precision,
            workers=workers_from_env(env),
        )


def workers_from_env(env: Mapping[str, str] | None = None, *, strict: bool = True) -> int:
    """MCDROP_WORKERS (default 1).  The service reads it when its class is defined (BentoML takes the worker count
    from the decorator) with ``strict=False``, 1 for a bad value, which :meth:`ServiceConfig.from_env` then reports."""
    try:
        return int(_number(os.environ if env is None else env, "MCDROP_WORKERS", 1, integer=True, minimum=1))
    except SettingError:
        if strict:
            raise
        return 1
