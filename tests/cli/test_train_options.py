"""`mcdrop train` as a subprocess: what its help says about the presets, one spelling of the model-name flag for
both datasets (the old one still works, with a warning), a printed config without another architecture's fields,
a README whose retrain lines do not overwrite the bundled models, and presets that are the shipped models' recipes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from mcdrop.cli.train import PRESETS, SHIPPED
from mcdrop.training.configs import ClassifierConfig
from tests.cli.test_evaluate_bench_train import write_fashion_mnist
from tests.cli.test_score import mcdrop

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def test_fashion_mnist_help_says_what_each_preset_sets_and_which_built_the_shipped_models():
    text = " ".join(mcdrop("train", "fashion-mnist", "--help").stdout.split())
    assert "reference: architecture=mlp, hidden=256 256, dropout=0.2 0.5" in text and "lr=0.1" in text
    assert re.search(r"tuned: architecture=mlp, hidden=1024 1024, .*built the shipped models/fashion-mnist", text)
    assert re.search(r"cnn: architecture=cnn, .*channels=32 64, .*built the shipped models/fashion-cnn", text)
    assert re.search(r"tuned-robust: .*shift_augment=True, .*epochs=80, .*built the shipped models/fashion-mnist-robust",
                     text)
    for flag in ("--model-name", "--preset"):
        assert flag in text
    assert "--model-name" in mcdrop("train", "uci", "--help").stdout


def test_model_name_flag_its_deprecated_spelling_and_an_mlp_config_without_cnn_fields(tmp_path, monkeypatch):
    monkeypatch.setenv("MCDROP_CACHE", str(tmp_path / "cache"))
    root = write_fashion_mnist(tmp_path / "data", n_train=300, n_test=100)
    flags = ["--data-root", root, "--hidden", "32", "--dropout", "0.2", "--epochs", "1", "--eval-samples", "5"]
    new = mcdrop("train", "fashion-mnist", "-o", tmp_path / "a", "--model-name", "new-name", *flags)
    card = json.loads((tmp_path / "a" / "card.json").read_text())
    assert card["name"] == "new-name" and "deprecated" not in new.stderr
    printed = next(line for line in new.stderr.splitlines() if line.startswith("training {"))
    for cnn_only in ("channels", "channel_dropout", "convs_per_block"):
        assert cnn_only not in printed and cnn_only not in card["training"]
    old = mcdrop("train", "fashion-mnist", "-o", tmp_path / "b", "--name", "old-name", *flags)
    assert json.loads((tmp_path / "b" / "card.json").read_text())["name"] == "old-name"
    assert "--name is deprecated; use --model-name" in old.stderr


def test_the_readme_retrains_beside_the_bundled_models():
    lines = [line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("mcdrop train")]
    assert lines, "the README shows no retrain line"
    for line in lines:
        assert " -o models/" not in line, line


@pytest.mark.parametrize("preset", sorted(SHIPPED))
def test_a_preset_that_built_a_shipped_model_is_the_recipe_its_card_records(preset):
    """``--preset P`` retrains what ``P``'s shipped model was trained with: the card's training block read back as
    a config equals the preset's."""
    card = json.loads((ROOT / SHIPPED[preset] / "card.json").read_text())
    assert ClassifierConfig.from_card(card["training"]) == ClassifierConfig(**PRESETS[preset])
