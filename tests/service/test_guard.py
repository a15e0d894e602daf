"""The guard in front of every route: Host, Origin and CORS, the API key, content types, body size and pace."""

from __future__ import annotations

import asyncio
import json

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from mcdrop.service.guard import Guard

KEY = "0123456789abcdef-key"


async def echo(request: Request) -> JSONResponse:
    body = await request.body()
    return JSONResponse({"bytes": len(body)})


INNER = Starlette(routes=[Route("/predict", echo, methods=["POST"]), Route("/models", echo, methods=["GET"]),
                          Route("/livez", echo, methods=["GET"])])


def client(**options) -> TestClient:
    settings = {"allowed_hosts": ("127.0.0.1", "localhost", "::1"), "max_body_bytes": 1000, **options}
    return TestClient(Guard(INNER, **settings), base_url="http://127.0.0.1:3000")


def post(c: TestClient, body: bytes = b"{}", content_type: str | None = "application/json", **headers):
    if content_type is not None:
        headers["content-type"] = content_type
    return c.post("/predict", content=body, headers=headers)


@pytest.mark.parametrize("host", ["evil.example", "127.0.0.2:3000", "localhost.evil.example"])
def test_foreign_hosts_are_refused(host):
    r = client().get("/models", headers={"host": host})
    assert r.status_code == 400 and r.json()["field"] == "host" and "MCDROP_ALLOWED_HOSTS" in r.json()["error"]


@pytest.mark.parametrize("host", ["127.0.0.1:3000", "localhost", "LOCALHOST:3000", "[::1]:3000"])
def test_loopback_hosts_pass(host):
    assert client().get("/models", headers={"host": host}).status_code == 200


def test_any_host_when_configured():
    assert client(allowed_hosts=("*",)).get("/models", headers={"host": "api.example.com"}).status_code == 200


def test_cross_site_origins_are_refused_unless_allowed():
    c = client()
    r = c.get("/models", headers={"origin": "https://evil.example"})
    assert r.status_code == 403 and r.json()["field"] == "origin"
    assert c.get("/models", headers={"origin": "http://127.0.0.1:3000"}).status_code == 200  # same origin
    allowed = client(allowed_origins=("https://app.example",))
    r = allowed.get("/models", headers={"origin": "https://app.example"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example"
    pre = allowed.options("/predict", headers={"origin": "https://app.example", "access-control-request-method": "POST"})
    assert pre.status_code == 204 and "POST" in pre.headers["access-control-allow-methods"]
    assert "access-control-allow-origin" not in c.get("/models").headers  # CORS off by default


def test_api_key_is_required_except_on_probes():
    c = client(api_key=KEY)
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": KEY}, {"authorization": f"Basic {KEY}"}):
        r = c.get("/models", headers=headers)
        assert r.status_code == 401 and r.json()["field"] == "authorization" and r.headers["www-authenticate"] == "Bearer"
    assert c.get("/models", headers={"authorization": f"Bearer {KEY}"}).status_code == 200
    assert c.get("/livez").status_code == 200


@pytest.mark.parametrize("content_type", [
    None, "text/plain", "application/octet-stream", "application/xml", "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x", "application/vnd.bentoml+pickle", "application/python-pickle",
    "APPLICATION/VND.BENTOML+PICKLE",
])
def test_only_readable_content_types_are_accepted(content_type):
    """Pickle is never read, and the types a cross-site form can send without a preflight are refused."""
    r = post(client(), b'{"inputs": [[1]]}', content_type)
    assert r.status_code == 415 and r.json()["field"] == "content-type"


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8", "application/x-npy"])
def test_readable_content_types_pass(content_type):
    assert post(client(), b"{}", content_type).json() == {"bytes": 2}


def test_bodies_over_the_limit_are_413_with_or_without_a_length():
    c = client()
    r = post(c, b"x" * 1001)
    assert r.status_code == 413 and r.json()["field"] == "body"
    chunked = c.post("/predict", content=iter([b"x" * 600, b"y" * 600]), headers={"content-type": "application/json"})
    assert chunked.status_code == 413 and chunked.json()["field"] == "body"
    assert post(c, b"x" * 1000).json() == {"bytes": 1000}


def test_a_stalled_body_gets_408():
    guard = Guard(INNER, allowed_hosts=("*",), max_body_bytes=1000, body_timeout_s=0.2)
    sent: list[dict] = []

    async def receive():
        await asyncio.sleep(10)  # a Content-Length larger than the body: nothing more ever comes

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/predict",
             "headers": [(b"host", b"x"), (b"content-type", b"application/json"), (b"content-length", b"10")]}
    asyncio.run(asyncio.wait_for(guard(scope, receive, send), 5))
    assert sent[0]["status"] == 408 and json.loads(sent[1]["body"])["field"] == "body"


def test_bentoml_docs_page_is_never_served():
    """BentoML's page at / loads a third-party tag manager: the guard answers 404 before BentoML sees it."""
    for path in ("/", "/docs.json", "/static_content/swagger-ui.css"):
        assert client().get(path).status_code == 404
    assert client(docs=True).get("/static_content/swagger-ui.css").status_code == 404  # reaches the app (none here)


def test_a_trickling_body_gets_408_at_the_overall_deadline():
    """A byte every 50 ms never stalls for body_timeout_s, but the whole body has body_deadline_s."""
    guard = Guard(INNER, allowed_hosts=("*",), max_body_bytes=1000, body_timeout_s=1.0, body_deadline_s=0.3)
    sent: list[dict] = []

    async def receive():
        await asyncio.sleep(0.05)
        return {"type": "http.request", "body": b"{", "more_body": True}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/predict",
             "headers": [(b"host", b"x"), (b"content-type", b"application/json"), (b"content-length", b"999")]}
    asyncio.run(asyncio.wait_for(guard(scope, receive, send), 5))
    error = json.loads(sent[1]["body"])
    assert sent[0]["status"] == 408 and error["field"] == "body" and "MCDROP_BODY_DEADLINE" in error["error"]


@pytest.mark.parametrize("host", ["localhost:1@evil.example", "localhost@evil.example", "127.0.0.1:3000/x",
                                  "localhost:3000:1", "[::1]evil", ""])
def test_hosts_that_only_start_like_loopback_are_refused(host):
    r = client().get("/models", headers={"host": host})
    assert r.status_code == 400 and r.json()["field"] == "host"


def test_an_origin_with_another_scheme_is_another_origin():
    """https://127.0.0.1:3000 is not the same origin as the http server on 127.0.0.1:3000."""
    r = client().get("/models", headers={"origin": "https://127.0.0.1:3000"})
    assert r.status_code == 403 and r.json()["field"] == "origin"
    assert client().get("/models", headers={"origin": "HTTP://127.0.0.1:3000"}).status_code == 200


def test_a_post_to_a_route_without_a_body_reaches_the_router():
    """The content-type check is for routes that read a body: a POST to a GET route is the router's 405, not 415."""
    r = client().post("/models", content=b"x", headers={"content-type": "text/plain"})
    assert r.status_code == 405 and "GET" in r.headers["allow"]
