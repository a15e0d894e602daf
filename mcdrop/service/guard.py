"""The door of every HTTP request (an ASGI middleware): host, origin, key, content type, body size and pace.

In order, for every ``http`` request:

1. ``Host`` must be one of the allowed names (loopback names by default): a page on another site that a
   DNS-rebinding attack points at the server sends its own host name and is refused (400, ``host``).
2. A browser's ``Origin`` must be the server itself or an allowed origin (403, ``origin``); allowed origins
   get CORS headers and preflight answers.  CORS is off when none is configured.
3. With an API key configured, ``Authorization: Bearer <key>`` is required everywhere but the probes
   (401, compared in constant time).
4. BentoML's own documentation page (it loads a third-party tag manager) is never served; mcdrop's OpenAPI
   page replaces it when enabled.  BentoML's service schema (``/schema.json``, what its HTTP clients read) is.
5. A ``POST`` to a route that reads a body (``/predict``) must have a content type the service reads (JSON or
   ``.npy``), else 415: ``text/plain`` or a form would let a page on another site send requests without a CORS
   preflight, and BentoML would unpickle ``application/vnd.bentoml+pickle`` in some set-ups.  A ``POST``
   elsewhere goes, unread, to the router, whose answer (404, or 405 with ``Allow``) says what is wrong.
6. The body is read here, at most ``max_body_bytes`` (413 as soon as it is exceeded, with or without a
   ``Content-Length``), with ``body_timeout_s`` between chunks (408 for a stalled or lying client) and
   ``body_deadline_s`` for the whole body (408 for a client that trickles it: a byte a second never stalls),
   then replayed to the application.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import re
import time
from collections.abc import Iterable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["PROBES", "READABLE_TYPES", "Guard"]

PROBES = frozenset({"/livez", "/readyz", "/healthz"})
READABLE_TYPES = frozenset({"application/json", "application/x-npy"})
_BENTOML_DOCS = ("/static_content/", "/docs.json")


async def respond(send: Send, status: int, error: str, field: str | None, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    """Send a JSON error ``{"error": ..., "field": ...}`` (the service's error shape)."""
    body = json.dumps({"error": error, "field": field}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


_HOST = re.compile(r"(?:\[(?P<ip6>[0-9a-f:.]+)\]|(?P<name>[a-z0-9._-]+))(?::[0-9]{1,5})?")


def _host_name(host: str) -> str | None:
    """The name in a ``Host`` header (``name[:port]`` or ``[ipv6][:port]``), or None when it is not of that form:
    ``localhost:1@evil.example`` is not localhost (a URL parser would take ``evil.example`` from it)."""
    match = _HOST.fullmatch(host.strip().lower())
    return None if match is None else match["ip6"] or match["name"]


class Guard:
    """See the module docs.

    Args:
        app: the ASGI application behind the guard.
        allowed_hosts: accepted ``Host`` names (``*`` accepts any).
        allowed_origins: browser origins allowed to call the API (``*`` allows any).
        api_key: the bearer token, or None.
        max_body_bytes: the largest body accepted.
        body_timeout_s: the longest wait for the next piece of a body.
        body_deadline_s: the longest time to receive a whole body (from the end of the headers).
        body_paths: the routes that read a ``POST`` body (content type, size and pace are checked there only).
        docs: whether mcdrop's OpenAPI page (``/docs``) is served.
    """

    def __init__(self, app: ASGIApp, *, allowed_hosts: Iterable[str], allowed_origins: Iterable[str] = (),
                 api_key: str | None = None, max_body_bytes: int = 16 << 20, body_timeout_s: float = 30.0,
                 docs: bool = False, body_deadline_s: float = 60.0, body_paths: Iterable[str] = ("/predict",)) -> None:
        self.app = app
        self.hosts = frozenset(h.lower() for h in allowed_hosts)
        self.origins = frozenset(o.rstrip("/").lower() for o in allowed_origins)
        self.api_key = api_key.encode() if api_key else None
        self.max_body, self.body_timeout, self.docs = max_body_bytes, body_timeout_s, docs
        self.body_deadline, self.body_paths = body_deadline_s, frozenset(body_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        path, method = scope.get("path", ""), scope.get("method", "GET")
        host = headers.get(b"host", b"").decode("latin-1")
        if "*" not in self.hosts and (_host_name(host) or "") not in self.hosts:
            return await respond(send, 400, f"Host {host[:100]!r} is not served here; allowed: "
                                 f"{', '.join(sorted(self.hosts))} (MCDROP_ALLOWED_HOSTS)", "host")
        origin = headers.get(b"origin", b"").decode("latin-1").rstrip("/").lower()
        cors: list[tuple[bytes, bytes]] = []
        if origin:
            same = origin == f"{scope.get('scheme', 'http')}://{host.strip().lower()}"  # scheme, host and port
            if not same and "*" not in self.origins and origin not in self.origins:
                return await respond(send, 403, f"Origin {origin[:100]!r} may not call this API "
                                     "(MCDROP_ALLOWED_ORIGINS)", "origin")
            if not same:
                cors = [(b"access-control-allow-origin", origin.encode()), (b"vary", b"Origin")]
                if method == "OPTIONS":
                    await send({"type": "http.response.start", "status": 204, "headers": [
                        *cors, (b"access-control-allow-methods", b"GET, POST, OPTIONS"),
                        (b"access-control-allow-headers", b"authorization, content-type, accept"),
                        (b"access-control-max-age", b"600")]})
                    return await send({"type": "http.response.body", "body": b""})
        if self.api_key is not None and path not in PROBES:
            auth = headers.get(b"authorization", b"")
            scheme, _, token = auth.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.api_key):
                return await respond(send, 401, "this API needs `Authorization: Bearer <key>` (MCDROP_API_KEY)",
                                     "authorization", [(b"www-authenticate", b"Bearer"), *cors])
        if path == "/" or (path.startswith(_BENTOML_DOCS) and not (self.docs and path.startswith("/static_content/"))):
            return await respond(send, 404, "not found" + ("" if self.docs else "; the API is described at /openapi.json"),
                                 None, cors)
        send_with_cors = send if not cors else _with_headers(send, cors)
        if method != "POST" or path not in self.body_paths:  # a POST elsewhere gets the router's 404 or 405
            return await self.app(scope, receive, send_with_cors)
        media = headers.get(b"content-type", b"").split(b";")[0].strip().lower().decode("latin-1")
        if media not in READABLE_TYPES:
            return await respond(send, 415, f"POST bodies have to be application/json or application/x-npy, but "
                                 f"Content-Type is {media[:100] or 'missing'!r}", "content-type", cors)
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            return await respond(send, 413, f"the request body is larger than this server's limit of {self.max_body} "
                                 "bytes (MCDROP_MAX_BODY_BYTES); split the batch", "body", cors)
        body = await self._read(receive, send, cors)
        if body is None:
            return None
        return await self.app(scope, _replay(body, receive), send_with_cors)

    async def _read(self, receive: Receive, send: Send, cors: list[tuple[bytes, bytes]]) -> bytes | None:
        """The whole body, or None after answering 413/408 (or when the client left)."""
        chunks, size = [], 0
        deadline = time.monotonic() + self.body_deadline
        while True:
            left = deadline - time.monotonic()
            try:
                message = await asyncio.wait_for(receive(), min(self.body_timeout, max(left, 0.0)))
            except TimeoutError:
                if left <= self.body_timeout:
                    text = (f"the request body was not complete after {self.body_deadline:g} s "
                            f"(MCDROP_BODY_DEADLINE; {size} bytes received): send it faster, or send less")
                else:
                    text = (f"the request body stalled for {self.body_timeout:g} s (MCDROP_BODY_TIMEOUT; a "
                            "Content-Length larger than the body, or a slow connection)")
                await respond(send, 408, text, "body", [(b"connection", b"close"), *cors])
                return None
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                await respond(send, 413, f"the request body is larger than this server's limit of {self.max_body} "
                              "bytes (MCDROP_MAX_BODY_BYTES); split the batch", "body", [(b"connection", b"close"), *cors])
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # waits for the client to disconnect

    return replay


def _with_headers(send: Send, extra: list[tuple[bytes, bytes]]) -> Send:
    async def wrapped(message: Any) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)

    return wrapped
