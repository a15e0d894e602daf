"""The service's settings: one :class:`ServiceSettings` field per ``MCDROP_*`` variable (pydantic-settings), read
explicitly when the service starts (never at import) and turned into the :class:`ServiceConfig` it runs with.

Every variable is optional and a blank one counts as unset; a bad value raises :class:`SettingError`, one line
naming the variable and what it takes.  The README's settings table (:func:`settings_table`), the OpenAPI
description (:data:`SETTINGS`) and ``mcdrop serve``'s flags (:func:`flags`) are generated from the fields.
Torch-free, so ``mcdrop serve`` checks the settings before it starts a server.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

from mcdrop.errors import ParameterError
from mcdrop.request import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_ROWS, DEFAULT_MAX_SAMPLES
from mcdrop.schemas import Limits

__all__ = ["LOOPBACK_HOSTS", "PRECISIONS", "SETTINGS", "ServiceConfig", "ServiceSettings", "SettingError", "flags",
           "settings_table", "variable", "workers_from_env"]

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


class SettingError(ParameterError):
    """A setting with an unusable value; ``variable`` names it."""

    def __init__(self, variable: str, message: str) -> None:
        super().__init__(f"{variable}: {message}", variable)
        self.variable = variable


def _parse_number(raw: str, *, integer: bool = False, minimum: float = 0.0, allow_zero: bool = False) -> float:
    """``raw`` as an integer or a finite number ``>= minimum`` (``> 0`` when ``minimum`` is 0, unless ``allow_zero``);
    ValueError ``expected ..., but got '...'`` otherwise."""
    text = raw.strip()
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        raise ValueError(f"expected {'an integer' if integer else 'a number'}, but got {text!r}") from None
    if not math.isfinite(value) or value < minimum or (value == 0 and not allow_zero and minimum == 0):
        bound = f">= {minimum:g}" if minimum else "> 0"
        raise ValueError(f"expected a number {bound}, but got {text!r}")
    return value


def _number(**bounds: Any) -> BeforeValidator:
    """A field validator parsing the variable's text with :func:`_parse_number` (defaults pass through)."""
    return BeforeValidator(lambda raw: _parse_number(raw, **bounds) if isinstance(raw, str) else raw)


def _choice(pattern: str, expected: str) -> BeforeValidator:
    """Lower-cased text matching ``pattern``; ValueError ``expected <expected>, but got '...'`` otherwise."""

    def parse(raw: Any) -> Any:
        text = raw.strip().lower() if isinstance(raw, str) else raw
        if isinstance(text, str) and not re.fullmatch(pattern, text):
            raise ValueError(f"expected {expected}, but got {text!r}")
        return text

    return BeforeValidator(parse)


def _names(raw: Any) -> Any:
    """Comma-separated names, blanks dropped."""
    return tuple(part.strip() for part in raw.split(",") if part.strip()) if isinstance(raw, str) else raw


def _flag(raw: Any) -> Any:
    text = raw.strip().lower() if isinstance(raw, str) else raw
    if isinstance(text, str) and text not in ("0", "1", "true", "false"):
        raise ValueError(f"expected 0 or 1, but got {text!r}")
    return text in ("1", "true") if isinstance(text, str) else text


def _text(raw: Any) -> Any:
    return raw.strip() if isinstance(raw, str) else raw


def _g(value: float) -> str:
    """A number as the docs print it: 60, 2e12."""
    return re.sub(r"e\+0*", "e", f"{value:g}")


def _setting(default: Any, meaning: str, *, flag: str | None = None, shown: str | None = None) -> Any:
    """A field: ``meaning`` is its documentation (README table, OpenAPI), ``flag`` the ``mcdrop serve`` flag that
    sets it, ``shown`` its default as the docs print it (else the default itself)."""
    return Field(default, description=meaning, json_schema_extra={"flag": flag, "shown": shown})


_ENVIRON: ContextVar[Mapping[str, str] | None] = ContextVar("mcdrop_settings_environ", default=None)


class _Environ(EnvSettingsSource):
    """pydantic-settings' environment source over a given mapping (``os.environ`` unless :meth:`ServiceSettings.read`
    got one): names as written, upper-case (``mcdrop_max_rows`` is not ``MCDROP_MAX_ROWS``); blank values unset."""

    def _load_env_vars(self) -> Mapping[str, str | None]:  # the hook pydantic-settings' DotEnvSettingsSource overrides
        environ = _ENVIRON.get()
        environ = os.environ if environ is None else environ
        return {k.lower(): v for k, v in environ.items() if k == k.upper() and v.strip()}


class ServiceSettings(BaseSettings):
    """The ``MCDROP_*`` variables the service reads, one field each (the field's name without the prefix).

    Read with :meth:`read`; :meth:`config` turns them into the :class:`ServiceConfig` the service uses.
    """

    model_config = SettingsConfigDict(env_prefix="MCDROP_", case_sensitive=False, enable_decoding=False, frozen=True,
                                      extra="ignore")

    serve_models: Annotated[tuple[str, ...], BeforeValidator(_names)] = _setting(
        (), "comma-separated model names or folders; the first is the default", flag="--models", shown="`fashion-mnist`")
    max_rows: Annotated[int, _number(integer=True, minimum=1)] = _setting(
        DEFAULT_MAX_ROWS, "rows per request", flag="--max-rows")
    max_samples: Annotated[int, _number(integer=True, minimum=1)] = _setting(
        DEFAULT_MAX_SAMPLES, "MC passes per row, also the adaptive cap", flag="--max-samples")
    max_cost: Annotated[float, _number(allow_zero=True)] = _setting(
        DEFAULT_MAX_COST, "multiply-adds per request: rows × passes × the model's per pass (`cost` on its card); "
        "0 turns it off")
    request_timeout: Annotated[float, _number(minimum=0.001)] = _setting(
        60.0, "seconds before a request is cancelled with 504")
    max_body_bytes: Annotated[int, _number(integer=True, minimum=1024)] = _setting(
        DEFAULT_MAX_BODY_BYTES, "request body size in bytes", shown=f"{DEFAULT_MAX_BODY_BYTES >> 20} MiB")
    allowed_hosts: Annotated[tuple[str, ...], BeforeValidator(_names)] = _setting(
        LOOPBACK_HOSTS, "Host names clients use, comma-separated, or `*`", flag="--allowed-hosts",
        shown="loopback names")
    allowed_origins: Annotated[tuple[str, ...], BeforeValidator(_names)] = _setting(
        (), "browser origins allowed to call the API, comma-separated (turns CORS on)")
    api_key: Annotated[str | None, BeforeValidator(_text)] = _setting(
        None, "bearer token (16 characters or more) required on every endpoint but `/livez` and `/readyz`")
    api_key_file: Annotated[Path | None, BeforeValidator(_text)] = _setting(
        None, "file holding the bearer token (instead of `MCDROP_API_KEY`)")
    docs: Annotated[bool, BeforeValidator(_flag)] = _setting(
        False, "`1` serves an OpenAPI page at `/docs` (local assets only)", shown="`0`: off")
    header_timeout: Annotated[float, _number(minimum=0.001)] = _setting(
        10.0, "seconds a client may take to send its request line and headers")
    body_timeout: Annotated[float, _number(minimum=0.001)] = _setting(
        30.0, "seconds a request body may stall between two pieces (408 after it)")
    body_deadline: Annotated[float, _number(minimum=0.001)] = _setting(
        60.0, "seconds a whole request body may take, however steadily it trickles (408 after it)")
    batch_wait_ms: Annotated[float, _number(allow_zero=True)] = _setting(
        2.0, "how long an idle server waits to batch concurrent requests")
    slice_cost: Annotated[float | None, _number(minimum=1.0)] = _setting(
        None, "multiply-adds computed between two scheduling decisions",
        shown=f"{SLICE_SECONDS * 1e3:g} ms of work at the rate measured at start-up, ≥ {_g(DEFAULT_SLICE_COST)}")
    threads: Annotated[int | None, _number(integer=True, minimum=1)] = _setting(
        None, "torch threads", flag="--threads", shown="torch's default")
    device: Annotated[str, _choice(r"cpu|auto|cuda(:\d+)?", "cpu, cuda, cuda:N or auto")] = _setting(
        "cpu", "where the models run: `cpu`, `cuda`, `cuda:N`, or `auto` (CUDA when there is one); answers are "
        "computed on the CPU from the samples", shown="`cpu`")
    precision: Annotated[str, _choice("|".join(PRECISIONS), f"one of {', '.join(PRECISIONS)}")] = _setting(
        "float32", "`float32`, `tf32` (CUDA only) or `bfloat16`; see \"Reproducibility\"", shown="`float32`")
    workers: Annotated[int, _number(integer=True, minimum=1)] = _setting(
        1, "server processes, each with its own models and scheduler; with `MCDROP_THREADS` unset each takes "
        "cores / workers torch threads (see \"On a GPU or a many-core server\")")

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource) -> tuple[PydanticBaseSettingsSource, ...]:
        """Keyword arguments, then the environment; no ``.env`` file, no secrets folder."""
        return init_settings, _Environ(settings_cls)

    @classmethod
    def read(cls, env: Mapping[str, str] | None = None) -> ServiceSettings:
        """The settings in ``env`` (default ``os.environ``); :class:`SettingError` names the first bad variable."""
        token = _ENVIRON.set(env)
        try:
            return cls()
        except ValidationError as err:
            first = err.errors(include_url=False)[0]
            cause = first.get("ctx", {}).get("error")
            raise SettingError(variable(str(first["loc"][0]) if first["loc"] else ""),
                               str(cause) if cause is not None else first["msg"]) from None
        finally:
            _ENVIRON.reset(token)

    def config(self) -> ServiceConfig:
        """The :class:`ServiceConfig` these settings make (reads ``MCDROP_API_KEY_FILE`` when it is set)."""
        key = self.api_key or None
        if self.api_key_file is not None:
            try:
                key = self.api_key_file.read_text().strip() or None
            except OSError as err:
                raise SettingError("MCDROP_API_KEY_FILE",
                                   f"cannot read {self.api_key_file}: {err.strerror or err}") from err
            if key is None:
                raise SettingError("MCDROP_API_KEY_FILE", f"{self.api_key_file} is empty; expected the bearer token")
        if key is not None and len(key) < 16:
            raise SettingError("MCDROP_API_KEY_FILE" if self.api_key_file else "MCDROP_API_KEY",
                               "expected a token of at least 16 characters (e.g. `openssl rand -hex 32`)")
        limits = Limits(max_rows=self.max_rows, max_samples=self.max_samples, max_body_bytes=self.max_body_bytes,
                        max_cost=self.max_cost or None, timeout_s=self.request_timeout)
        return ServiceConfig(models=self.serve_models, limits=limits, batch_wait_ms=self.batch_wait_ms,
                             slice_cost=self.slice_cost, threads=self.threads, device=self.device,
                             allowed_hosts=self.allowed_hosts or LOOPBACK_HOSTS, allowed_origins=self.allowed_origins,
                             api_key=key, docs=self.docs, header_timeout_s=self.header_timeout,
                             body_timeout_s=self.body_timeout, body_deadline_s=self.body_deadline,
                             precision=self.precision, workers=self.workers)


def variable(name: str) -> str:
    """The environment variable of a :class:`ServiceSettings` field: ``max_rows`` -> ``MCDROP_MAX_ROWS``."""
    return f"MCDROP_{name.upper()}"


def _shown(info: FieldInfo) -> str:
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    if extra.get("shown"):
        return str(extra["shown"])
    value = info.default
    if value is None or value == ():
        return "none"
    return _g(value) if isinstance(value, float) else str(value)


def documented() -> Iterator[tuple[str, str | None, str, str]]:
    """``(variable, flag or None, meaning, default as shown)`` for every field, in declaration order."""
    for name, info in ServiceSettings.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        flag = extra.get("flag")
        yield variable(name), str(flag) if flag else None, info.description or "", _shown(info)


def flags() -> dict[str, str]:
    """``mcdrop serve``'s flags and the variables they set: ``{"--max-rows": "MCDROP_MAX_ROWS", ...}``."""
    return {flag: var for var, flag, _, _ in documented() if flag}


def settings_table() -> str:
    """The README's settings table (Markdown), generated from the fields; tests/serving/test_config.py checks that
    README.md holds exactly this text."""
    rows = ["| variable | flag | meaning | default |", "|---|---|---|---|"]
    for var, flag, meaning, shown in documented():
        rows.append("|" + "|".join(f" {cell} " if cell else " " for cell in (f"`{var}`", flag and f"`{flag}`", meaning, shown))
                    + "|")
    return "\n".join(rows) + "\n"


SETTINGS: dict[str, str] = {var: f"{meaning} (default {shown.replace('`', '')})" for var, _, meaning, shown in documented()}
"""Every variable and what it does, for the OpenAPI description."""


@dataclass(frozen=True)
class ServiceConfig:
    """What the service runs with, made from its :class:`ServiceSettings` (see :data:`SETTINGS`)."""

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
        """The configuration in ``env`` (default ``os.environ``): :meth:`ServiceSettings.read`, then
        :meth:`ServiceSettings.config`."""
        return ServiceSettings.read(env).config()


def workers_from_env(env: Mapping[str, str] | None = None, *, strict: bool = True) -> int:
    """MCDROP_WORKERS (default 1).  The service reads it when its class is defined (BentoML takes the worker count
    from the decorator) with ``strict=False``, 1 for a bad value, which :meth:`ServiceConfig.from_env` then reports."""
    raw = (os.environ if env is None else env).get("MCDROP_WORKERS", "")
    try:
        return int(_parse_number(raw, integer=True, minimum=1)) if raw.strip() else 1
    except ValueError as err:
        if strict:
            raise SettingError("MCDROP_WORKERS", str(err)) from None
        return 1
