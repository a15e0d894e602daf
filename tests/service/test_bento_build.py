"""`bentoml build` packs the service, the library and the bundled models into a Bento."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.server import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_bentoml_build_includes_the_default_model(tmp_path):
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "True", "BENTOML_HOME": str(tmp_path)}
    bentoml = Path(sys.executable).with_name("bentoml")
    proc = subprocess.run([str(bentoml), "build", str(ROOT)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (bento,) = [p for p in (tmp_path / "bentos" / "mcdrop").iterdir() if p.name != "latest"]
    src = bento / "src"
    assert (src / "service" / "service.py").is_file() and (src / "mcdrop" / "engine.py").is_file()
    weights = src / "models" / "fashion-mnist" / "weights.safetensors"
    assert weights.read_bytes() == (ROOT / "models" / "fashion-mnist" / "weights.safetensors").read_bytes()
    assert not (src / "tests").exists() and not (src / ".venv").exists()
    meta = yaml.safe_load((bento / "bento.yaml").read_text())
    assert meta["service"] == "service.service:MCDrop"
    assert [r["route"] for r in meta["schema"]["routes"]] == ["/predict"]
