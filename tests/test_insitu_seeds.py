"""`cimc insitu --seeds N`: chip instances S..S+N-1, each exactly the single-seed run, and mean ± std over them
(one instance is a noisy sample; README's figures are 5-seed means)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from refusal import assert_refused, run_cli

pytest.importorskip("sklearn")


def _timeless(value):
    """The result without wall-clock timings (`seconds`), which differ between any two runs."""
    if isinstance(value, dict):
        return {k: _timeless(v) for k, v in value.items() if k != "seconds"}
    if isinstance(value, list):
        return [_timeless(v) for v in value]
    return value


def _json(argv) -> dict:
    code, out, err = run_cli(["insitu", "--epochs", "1", *argv, "--json"])
    assert code == 0, err
    return json.loads(out)


@pytest.fixture(scope="module")
def singles():
    return {s: _json(["--seed", str(s), "--curve"]) for s in (3, 4)}


@pytest.fixture(scope="module")
def pair():
    return _json(["--seed", "3", "--seeds", "2", "--curve"])


def test_each_seed_equals_its_single_run(pair, singles):
    assert pair["seeds"] == [3, 4]
    assert [_timeless(r) for r in pair["runs"]] == [_timeless(singles[3]), _timeless(singles[4])]


@pytest.mark.parametrize("key, pick", [
    ("ideal_simulation", lambda r: r["ideal_simulation"]["final_accuracy"]),
    ("in_situ", lambda r: r["in_situ"]["final_accuracy"]),
    ("ex_situ", lambda r: r["ex_situ"]["final_accuracy"]),
    ("software", lambda r: r["ex_situ"]["software_accuracy"]),
    ("gap_points", lambda r: r["gap_points"])])
def test_summary_is_mean_and_std_of_the_single_runs(pair, singles, key, pick):
    values = [pick(singles[3]), pick(singles[4])]
    assert pair["summary"][key]["per_seed"] == values
    assert pair["summary"][key]["mean"] == pytest.approx(np.mean(values))
    assert pair["summary"][key]["std"] == pytest.approx(np.std(values))


def test_curve_summary_averages_the_per_seed_curves(pair, singles):
    for k, row in enumerate(pair["summary"]["defect_tolerance"]):
        for side in ("in_situ", "ex_situ"):
            values = [singles[s]["defect_tolerance"][k][side] for s in (3, 4)]
            assert row[side]["mean"] == pytest.approx(np.mean(values))
            assert row[side]["std"] == pytest.approx(np.std(values))


def test_text_prints_each_seed_and_the_mean(singles):
    code, out, err = run_cli(["insitu", "--epochs", "1", "--seed", "3", "--seeds", "2"])
    assert code == 0, err
    for s, r in singles.items():
        assert (f"seed {s}: ideal {100 * r['ideal_simulation']['final_accuracy']:.2f}%, in situ "
                f"{100 * r['in_situ']['final_accuracy']:.2f}%, gap {r['gap_points']:.2f} points") in out
    gaps = [singles[s]["gap_points"] for s in (3, 4)]
    assert f"gap: {np.mean(gaps):.2f} ± {np.std(gaps):.2f} points" in out
    assert "mean ± std over 2 chip instances" in out and "seeds 3..4" in out


def test_one_seed_keeps_the_single_run_output(singles):
    assert _timeless(_json(["--seed", "3", "--seeds", "1", "--curve"])) == _timeless(singles[3])


@pytest.mark.parametrize("value", ["0", "-1", "-100", "two", "1.5", "", "1e3", "nan"])
def test_bad_seeds_are_refused(tmp_path, monkeypatch, value):
    monkeypatch.chdir(tmp_path)
    assert_refused(["insitu", "--epochs", "1", "--seeds", value], "--seeds", watch=[tmp_path])
