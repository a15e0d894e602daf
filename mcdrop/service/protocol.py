"""A header deadline for uvicorn's HTTP/1.1 protocol: slow or silent clients cannot hold connections.

uvicorn (as BentoML runs it) times out idle keep-alive connections only after a response; a client that
opens a connection and sends its headers a byte at a time, or nothing, keeps it open for ever.
:class:`HeaderDeadlineProtocol` closes a connection whose request line and headers are not complete within
``HEADER_TIMEOUT_S`` of its opening (or of the previous response).  :func:`install` makes it uvicorn's
default protocol in this process: BentoML's worker builds its ``uvicorn.Config`` after importing the
service module, which calls it.  Slow *bodies* are timed out by :class:`mcdrop.service.guard.Guard`.

:func:`install` also bounds uvicorn's graceful shutdown (BentoML passes none, so SIGTERM waited for every
request task however long it took): requests in flight get their own deadline (``MCDROP_REQUEST_TIMEOUT``) plus
:data:`SHUTDOWN_GRACE_S` to finish, then uvicorn cancels what is left and the worker exits.
"""

from __future__ import annotations

import asyncio
import functools
import http
import json
from typing import Any

import h11
import uvicorn
from h11._connection import DEFAULT_MAX_INCOMPLETE_EVENT_SIZE
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["HEADER_TIMEOUT_S", "LINGER_S", "SHUTDOWN_GRACE_S", "HeaderDeadlineProtocol", "graceful_shutdown_s", "install"]

HEADER_TIMEOUT_S = 10.0
LINGER_S = 2.0
"""How long a connection refused for an unreadable request keeps reading (and dropping) what the client still
sends, so that the answer reaches it instead of a TCP reset."""
SHUTDOWN_GRACE_S = 10.0
"""Seconds beyond a request's own deadline that a graceful shutdown waits for requests in flight."""


class HeaderDeadlineProtocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for the request line and headers (``timeout_s``, which the
    service sets from ``MCDROP_HEADER_TIMEOUT`` when it starts)."""

    timeout_s = HEADER_TIMEOUT_S
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.timeout_s, self._expire)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _expire(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._linger is not None:
            self._linger.cancel()
        super().connection_lost(exc)

    # ------------------------------------------------------------------ requests h11 cannot read

    _linger: asyncio.TimerHandle | None = None

    def shutdown(self) -> None:
        if self._linger is not None:  # answered and lingering: h11 has no state to close cleanly from
            self.transport.close()
            return
        super().shutdown()

    def data_received(self, data: bytes) -> None:
        if self._linger is None:
            super().data_received(data)  # else: refused, and the rest of the request is dropped

    def send_400_response(self, msg: str) -> None:
        """Answer a request h11 refused (uvicorn: a plain 400, then a close that resets the connection while the
        client is still sending, so it never sees the answer): 414 for a request line, 431 for headers beyond
        h11's buffer, else 400; JSON in the service's error shape; then a lingering close."""
        data, _ = self.conn.trailing_data
        limit = self.config.h11_max_incomplete_event_size or DEFAULT_MAX_INCOMPLETE_EVENT_SIZE
        if len(data) > limit:
            line = data.find(b"\n")
            if line < 0 or line > limit:
                status, text = 414, f"the request line (method and URL) is longer than {limit} bytes"
            else:
                status, text = 431, f"the request headers are larger than {limit} bytes in all"
        else:
            status, text = 400, "the request is not valid HTTP/1.1"
        body = json.dumps({"error": text, "field": "headers" if status == 431 else "url" if status == 414 else None})
        self.transport.write(f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
                             f"content-length: {len(body)}\r\nconnection: close\r\n\r\n{body}".encode())
        self._disarm()
        self._linger = self.loop.call_later(LINGER_S, self.transport.close)
        if self.transport.can_write_eof():
            self.transport.write_eof()  # the answer is complete; keep reading so the client is not reset
        self.transport.resume_reading()


def graceful_shutdown_s() -> float:
    """How long uvicorn's graceful shutdown waits for requests in flight: their deadline plus the grace."""
    from mcdrop.serving.config import ServiceConfig, SettingError

    try:
        deadline = ServiceConfig.from_env().limits.timeout_s or 60.0
    except SettingError:  # reported by the service's start-up check; the bound must not fail here
        deadline = 60.0
    return deadline + SHUTDOWN_GRACE_S


def install() -> None:
    """Make :class:`HeaderDeadlineProtocol` the default ``http`` protocol of ``uvicorn.Config`` and bound its
    graceful shutdown (:func:`graceful_shutdown_s`) when none is given (idempotent)."""
    init = uvicorn.Config.__init__
    if getattr(init, "_mcdrop", False):
        return

    @functools.wraps(init)
    def patched(self: uvicorn.Config, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("http", HeaderDeadlineProtocol)
        if kwargs.get("timeout_graceful_shutdown") is None:
            kwargs["timeout_graceful_shutdown"] = graceful_shutdown_s()
        init(self, *args, **kwargs)

    patched._mcdrop = True  # type: ignore[attr-defined]
    uvicorn.Config.__init__ = patched  # type: ignore[method-assign]
