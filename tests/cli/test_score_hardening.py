"""`mcdrop score` as a subprocess where it used to read too much, say too little or print a traceback: a CSV
without line breaks, 0-255 pixels in a CSV, a full or closed standard output, a client-only install, help."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mcdrop import DropoutMLP
from mcdrop.io.readers import CHARS_PER_CELL, LINE_SLACK
from mcdrop.nets.artifacts import save_model

pytestmark = [pytest.mark.integration, pytest.mark.slow]
MCDROP = [sys.executable, "-m", "mcdrop.cli.main"]


@pytest.fixture(scope="module")
def pixel_model(tmp_path_factory) -> Path:
    """A 4-feature classifier whose card says its inputs are in [0, 1]."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("models") / "tiny-pixels"
    save_model(DropoutMLP(4, [16], 3, dropout=0.3), path, {
        "name": "tiny-pixels", "version": "1", "task": "classification", "input_shape": [4], "input_size": 4,
        "input_range": [0.0, 1.0], "normalisation": "pixels scaled to [0, 1]", "class_names": ["a", "b", "c"]})
    return path


def mcdrop(*args: object, stdout: object = subprocess.PIPE) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MCDROP, *map(str, args)], stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=300,
                          env={**os.environ, "BENTOML_DO_NOT_TRACK": "True"})


def one_line_error(proc: subprocess.CompletedProcess[str], code: int = 1) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, proc.stderr
    return errors[0]


# ------------------------------------------------------------------------------------- 7: long CSV lines


def test_a_csv_without_line_breaks_is_refused_at_the_bound_naming_file_and_line(tmp_path, pixel_model):
    """3 MB and no line break: refused after reading the bound, not the whole file (which a 1 GB file made 2 GB)."""
    src = tmp_path / "one-line.csv"
    src.write_text("0.5," * 800_000)
    out = tmp_path / "out.csv"
    line = one_line_error(mcdrop("score", src, "-o", out, "--model", pixel_model, "--max-line-length", 100_000, "-q"))
    assert f"{src}: line 1 is longer than 100,000 characters" in line and "line breaks" in line
    assert not out.exists()


def test_the_default_bound_follows_the_width_of_the_first_line(tmp_path, pixel_model):
    src = tmp_path / "long-second-line.csv"
    src.write_text("0.1,0.2,0.3,0.4\n" + "0.5," * 500_000 + "1\n0.1,0.2,0.3,0.4\n")
    line = one_line_error(mcdrop("score", src, "-o", tmp_path / "out.csv", "--model", pixel_model, "-q"))
    limit = max(CHARS_PER_CELL * 4, 8 * 16) + LINE_SLACK
    assert f"{src}: line 2 is longer than {limit:,} characters (the limit for rows of 4 columns)" in line
    ok = tmp_path / "ok.csv"  # lines within the bound, CRLF included, are read as before
    ok.write_bytes(b"a,b,c,d\r\n0.1,0.2,0.3,0.4\r\n0.5,0.6,0.7,0.8\r\n")
    proc = mcdrop("score", ok, "-o", tmp_path / "ok-out.csv", "--model", pixel_model, "--seed", 1)
    assert proc.returncode == 0, proc.stderr
    assert "wrote 2 rows" in proc.stderr


# ------------------------------------------------------------------------------------- 12: 0-255 inputs


def test_pixels_as_0_to_255_in_a_csv_warn_once(tmp_path, pixel_model):
    x = np.random.default_rng(0).integers(0, 256, size=(300, 4))
    src = tmp_path / "pixels.csv"
    src.write_text("\n".join(",".join(map(str, row)) for row in x) + "\n")
    proc = mcdrop("score", src, "-o", tmp_path / "out.csv", "--model", pixel_model, "--seed", 1, "--batch-size", 64,
                  "-q")
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1, proc.stderr  # once, not once per batch; shown even with --quiet
    assert "0-255" in warnings[0] and "'tiny-pixels'" in warnings[0] and "--scale" in warnings[0]
    scaled = mcdrop("score", src, "-o", tmp_path / "out2.csv", "--model", pixel_model, "--seed", 1,
                    "--scale", 1 / 255, "-q")
    assert scaled.returncode == 0 and "warning" not in scaled.stderr, scaled.stderr


# ------------------------------------------------------------------------------ 8: one line, never a traceback


@pytest.fixture(scope="module")
def many_rows(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("inputs") / "x.npy"
    np.save(path, np.random.default_rng(0).random((5000, 4), dtype=np.float32))
    return path


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_a_full_device_on_standard_output_is_one_line(many_rows, pixel_model):
    with open("/dev/full", "w") as full:
        proc = mcdrop("score", many_rows, "-o", "-", "--model", pixel_model, "--seed", 1, "-n", 2, stdout=full)
    line = one_line_error(proc)
    assert "standard output: cannot write: No space left on device" in line


def test_a_reader_that_stops_early_ends_the_run_quietly(many_rows, pixel_model):
    """`mcdrop score ... -o - | head -3`: exit 141 (128 + SIGPIPE, what a shell reports for a Unix tool whose
    reader went away), nothing on standard error."""
    proc = subprocess.Popen([*MCDROP, "score", str(many_rows), "-o", "-", "--model", str(pixel_model), "--seed", "1",
                             "-n", "2", "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "BENTOML_DO_NOT_TRACK": "True"})
    assert proc.stdout is not None and proc.stderr is not None
    head = [proc.stdout.readline() for _ in range(3)]
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141, err
    assert head[0].startswith("row,") and err == ""


BLOCK_TORCH = """
import sys
class Block:  # a client-only install: the torch extra's modules cannot be imported
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("torch", "scipy", "safetensors", "bentoml"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Block())
from mcdrop.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("command", [["score", "{x}", "-o", "{out}"], ["evaluate"]])
def test_a_client_only_install_names_the_extra_to_install(tmp_path, many_rows, command):
    argv = [a.format(x=many_rows, out=tmp_path / "out.csv") for a in command]
    proc = subprocess.run([sys.executable, "-c", BLOCK_TORCH, *argv], capture_output=True, text=True, timeout=120)
    line = one_line_error(proc)
    assert "pip install 'mcdrop[torch]'" in line and "torch" in line
    assert ("--url" in line) == (command[0] == "score")


# ------------------------------------------------------------------------------------------ 13: help texts


@pytest.mark.parametrize("command", [[], ["score"], ["train"], ["train", "fashion-mnist"], ["train", "uci"],
                                     ["evaluate"], ["report"], ["bench"], ["bench", "uci"], ["serve"], ["study"]])
def test_help_is_plain_text(command):
    """The descriptions are the modules' docstrings, written in reStructuredText: no ``x`` or :func:`x` in help."""
    proc = mcdrop(*command, "--help")
    assert proc.returncode == 0, proc.stderr
    assert "``" not in proc.stdout and ":func:" not in proc.stdout and ":class:" not in proc.stdout


def test_score_help_names_every_input_and_output_format():
    description = mcdrop("score", "--help").stdout.split("positional arguments")[0]
    for fmt in ("CSV", "Parquet", ".npy", ".npz", "IDX", ".jsonl", ".parquet"):
        assert fmt in description, fmt
