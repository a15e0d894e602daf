"""README "Serve your own model", executed as written: its Python blocks in one namespace, its `mcdrop` lines as
commands, `mcdrop serve` as a real server (tests/server.py) and the client block against it."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mcdrop.sampling.engine import MCEngine
from tests.server import ROOT, running_server
from tests.tolerances import assert_outputs_close


def section(title: str) -> list[tuple[str, str]]:
    """The fenced blocks ``(language, code)`` of README section ``title``."""
    text = (ROOT / "README.md").read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    body = text[start:end if end > 0 else None]
    return re.findall(r"```(\w+)\n(.*?)```", body, flags=re.S)


@pytest.mark.integration
@pytest.mark.slow
def test_serve_your_own_model_runs_as_documented(tmp_path, monkeypatch):
    blocks = section("Serve your own model")
    assert [lang for lang, _ in blocks] == ["python", "sh", "python"]
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    exec(compile(blocks[0][1], "README.md: Serve your own model", "exec"), namespace)
    assert (tmp_path / "my-model" / "card.json").is_file()
    mcdrop_cli = Path(sys.executable).with_name("mcdrop")
    serve_line = None
    for line in blocks[1][1].splitlines():
        argv = shlex.split(line)
        assert argv[0] == "mcdrop", line
        if argv[1] == "serve":
            serve_line = argv
            continue
        proc = subprocess.run([str(mcdrop_cli), *argv[1:]], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "MCDROP_THREADS": "1"})
        assert proc.returncode == 0, f"{line}\n{proc.stderr[-2000:]}"
        if argv[1] == "calibrate":
            assert "calibrated my-model" in proc.stdout and "rows" in proc.stdout and "coverage up to" in proc.stdout
    assert (tmp_path / "scores.csv").read_text().splitlines()[0].count("conformal_low") == 1
    assert serve_line is not None
    models = serve_line[serve_line.index("--models") + 1].replace("./my-model", str(tmp_path / "my-model"))
    with running_server(env={"MCDROP_SERVE_MODELS": models, "MCDROP_THREADS": "1"}) as url:
        code = blocks[2][1].replace("http://127.0.0.1:3000", url)
        exec(compile(code, "README.md: Serve your own model (client)", "exec"), namespace)
    answer = namespace["answer"]
    low, high = answer.column("conformal_low"), answer.column("conformal_high")  # type: ignore[attr-defined]
    assert (low < high).all() and len(low) == 5
    # the served samples are MCEngine's on the original module (same seed, rows 0..4, the default 50 passes)
    x = torch.from_numpy(namespace["held_out"][:5, :8])  # type: ignore[index]
    want = MCEngine(namespace["net"]).sample(x, 50, seed=1).mean(0).squeeze(-1)  # type: ignore[arg-type]
    assert_outputs_close(answer.column("mean"), want.numpy())  # type: ignore[attr-defined]
