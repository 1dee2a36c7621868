"""Presets cite the papers themselves, not a notes file that ships with no checkout (issue 11, newcomer friction)."""
from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PRESETS = sorted((ROOT / "targets" / "presets").glob("*.toml"))
TITLES = {"Yao et al.": '"Fully hardware-implemented memristor convolutional neural network", Nature 577, 641 (2020)',
          "Li et al.": '"Efficient and self-adaptive in-situ learning in multilayer memristor neural networks", '
                       "Nature Communications 9, 2385 (2018)"}


def _flat(text: str) -> str:
    """Comment text with the `#` and line breaks removed, so a citation may wrap."""
    return " ".join(line.lstrip("# ").strip() for line in text.splitlines())


def test_presets_exist():
    assert {p.stem for p in PRESETS} >= {"ideal", "li2018", "yao2020-macro", "yao2020-mcnn", "yao2020-resnet"}


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_preset_cites_no_missing_file(preset):
    assert "papers.md" not in preset.read_text()


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_preset_from_a_paper_gives_its_full_citation(preset):
    text = preset.read_text()
    description = next(line for line in text.splitlines() if line.startswith("description"))
    for author, title in TITLES.items():
        if author in description:
            assert f"{author}, {title}" in _flat(text)
