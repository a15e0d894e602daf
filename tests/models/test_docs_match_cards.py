"""The numbers README and BENCHMARKS quote for the shipped classifiers are the cards' numbers, as rounded there."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from mcdrop.nets.artifacts import bundled_models_dir

ROOT = Path(__file__).resolve().parents[2]
PROXY_NAMES = {"digits": "digits", "letters": "characters", "flip": "flip", "rotate": "rotate", "invert": "invert",
               "noise": "noise"}


def card_metrics(name: str) -> dict:
    return json.loads((bundled_models_dir() / name / "card.json").read_text())["metrics"]


def same(quoted: str, value: float, percent: bool = False) -> bool:
    """``quoted`` is ``value`` rounded to as many decimals as it shows."""
    decimals = len(quoted.partition(".")[2])
    return quoted == f"{value * 100 if percent else value:.{decimals}f}"


@pytest.mark.parametrize("name", ["fashion-mnist", "fashion-cnn", "fashion-cnn-robust", "fashion-mnist-robust"])
def test_readme_models_table_quotes_the_card(name):
    row = next(line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith(f"| `{name}`"))
    metrics = card_metrics(name)
    mc = metrics["test_mc_50"]
    checked = 0
    for label, key in (("accuracy", "accuracy"), ("NLL", "nll"), ("ECE", "ece")):
        quoted = re.search(rf"{label} (\d\.\d+)", row).group(1)
        assert same(quoted, mc[key]), (name, label, quoted, mc[key])
        checked += 1
    answers, error = re.search(r"answers ([\d.]+)% with ([\d.]+)% error", row).groups()
    service = metrics["test_conformal"]["mc"]["abstention"]["with_ood_flag"]  # what the service answers by default
    assert same(answers, service["coverage"], percent=True) and same(error, service["risk"], percent=True), row
    for label, proxy in PROXY_NAMES.items():
        quoted = re.search(rf"{label} (\d\.\d+)", row.partition("AUROC")[2]).group(1)
        assert same(quoted, metrics["ood_proxies"][proxy]["ood_score"]["auroc"]), (name, label, quoted)
        checked += 1
    assert checked == 9


def test_benchmarks_abstention_and_conformal_tables_quote_the_card():
    text = (ROOT / "BENCHMARKS.md").read_text()
    section = text[text.index("### Abstention (default"):text.index("`concrete` (retrained on 70%")]
    card = card_metrics("fashion-mnist")["test_conformal"]
    rows = 0
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith(("deterministic", "mc")):  # abstention: mode, threshold, answered, error
            a = card[cells[0].split()[0]]["abstention"]
            assert same(cells[1], a["threshold"]) and same(cells[2].rstrip("%"), a["coverage"], percent=True) \
                and same(cells[3].rstrip("%"), a["risk"], percent=True), line
            rows += 1
        elif len(cells) == 7 and cells[0] in ("deterministic", "mc"):  # conformal: mode, method, level, cov, size, min, empty
            v = card[cells[0]][f"{cells[1]}@{cells[2]}"]
            assert same(cells[3], v["coverage"]) and same(cells[4], v["mean_size"]) \
                and same(cells[5], v["min_class_coverage"]) and same(cells[6].rstrip("%"), v["empty"], percent=True), line
            rows += 1
    assert rows == 2 + 24
    answers, error = re.search(r"the service's default decision[^:]*: MC answers ([\d.]+)% with ([\d.]+)% error",
                               section).groups()
    service = card["mc"]["abstention"]["with_ood_flag"]
    assert same(answers, service["coverage"], percent=True) and same(error, service["risk"], percent=True)
