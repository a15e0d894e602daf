"""`bentoml build` packs the service, the library and the bundled models into a Bento that serves on its own,
on 127.0.0.1 as the README says."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from tests.server import ROOT, running_server

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_bentoml_build_packs_and_serves_the_default_model(tmp_path, monkeypatch):
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path))
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "True"}
    bentoml = Path(sys.executable).with_name("bentoml")
    proc = subprocess.run([str(bentoml), "build", str(ROOT)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (bento,) = [p for p in (tmp_path / "bentos" / "mcdrop").iterdir() if p.name != "latest"]
    src = bento / "src"
    assert (src / "mcdrop" / "service" / "service.py").is_file() and (src / "mcdrop" / "sampling" / "engine.py").is_file()
    weights = src / "models" / "fashion-mnist" / "weights.safetensors"
    assert weights.read_bytes() == (ROOT / "models" / "fashion-mnist" / "weights.safetensors").read_bytes()
    assert not (src / "tests").exists() and not (src / ".venv").exists()
    meta = yaml.safe_load((bento / "bento.yaml").read_text())
    assert meta["service"] == "mcdrop.service.service:MCDrop"
    with running_server(target=str(bento)) as url:
        assert httpx.get(f"{url}/models").json()["default"] == "fashion-mnist"
