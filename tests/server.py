"""A real ``bentoml serve`` on a free loopback port, for integration tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(env: dict[str, str] | None = None, port: int | None = None, timeout: float = 90.0,
                   target: str = "mcdrop.service.service:MCDrop", log_path: Path | None = None) -> Iterator[str]:
    """Start the service, wait for /readyz, yield its URL, always stop it (the whole process group).  The server's
    log goes to ``log_path`` when given (kept), else to a temporary file (removed)."""
    with server_process(env, port, timeout, target, log_path) as (url, _proc):
        yield url


@contextmanager
def server_process(env: dict[str, str] | None = None, port: int | None = None, timeout: float = 90.0,
                   target: str = "mcdrop.service.service:MCDrop", log_path: Path | None = None
                   ) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """:func:`running_server` that also yields the server's main process (its process group holds the workers)."""
    port = port or free_port()
    bentoml = Path(sys.executable).with_name("bentoml")
    # The server's log goes to a file: an unread pipe fills up and blocks the server.
    log = open(log_path, "wb") if log_path else tempfile.NamedTemporaryFile(  # noqa: SIM115
        prefix="mcdrop-server-", suffix=".log", delete=False)
    proc = subprocess.Popen(
        [str(bentoml), "serve", target, "--port", str(port)],
        cwd=tempfile.gettempdir(),  # the service is found as a package, wherever the command runs
        env={**os.environ, "BENTOML_DO_NOT_TRACK": "True", **(env or {})},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited with {proc.returncode}:\n{Path(log.name).read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not become ready within {timeout} s")
            time.sleep(0.3)
        yield url, proc
    finally:
        stop(proc)
        log.close()
        if log_path is None:
            Path(log.name).unlink(missing_ok=True)


def group_alive(pgid: int) -> list[int]:
    """The live (not zombie) processes of process group ``pgid``: a server's main process and its workers."""
    import psutil

    alive = []
    for p in psutil.process_iter(["pid", "status"]):
        with suppress(psutil.Error, OSError):
            if p.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(p.info["pid"]) == pgid:
                alive.append(p.info["pid"])
    return alive


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's process group, SIGKILL after 20 s; whatever stops the wait (a signal to the caller,
    a worker outliving its main process), nothing of the group is left running."""
    try:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    finally:
        if group_alive(proc.pid):
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
