"""uvicorn as the service configures it: a header deadline (tests/service/test_service.py, real server) and a
bounded graceful shutdown."""

from __future__ import annotations

import uvicorn

from mcdrop.service import protocol


def test_graceful_shutdown_is_bounded_by_the_request_deadline(monkeypatch):
    """BentoML passes no bound: uvicorn then waits for request tasks however long they take."""
    protocol.install()
    monkeypatch.setenv("MCDROP_REQUEST_TIMEOUT", "7")
    config = uvicorn.Config(app=None, timeout_graceful_shutdown=None)
    assert config.http is protocol.HeaderDeadlineProtocol
    assert 7 < config.timeout_graceful_shutdown <= 7 + protocol.SHUTDOWN_GRACE_S
    assert uvicorn.Config(app=None, timeout_graceful_shutdown=3).timeout_graceful_shutdown == 3  # an explicit bound stays
    monkeypatch.setenv("MCDROP_REQUEST_TIMEOUT", "soon")  # a bad setting is the start-up check's to report
    assert uvicorn.Config(app=None).timeout_graceful_shutdown > 0
