"""Newcomer friction in what cimc prints: the replication line names only baselines that exist, and a missing
optional extra is named by the extra that provides it (pyproject's `fast` / `insitu`)."""
from __future__ import annotations

import json
import sys

import pytest
from refusal import assert_refused, run_cli

import cimc.insitu


@pytest.fixture(scope="module")
def compiled(mcnn_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("friction") / "mcnn"
    code, _, err = run_cli(["compile", mcnn_dir / "mcnn.onnx", "--target", "yao2020-mcnn",
                            "--calibration", mcnn_dir / "calib.npz", "-o", out])
    assert code == 0, err
    return out


# -- replication summary -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("flags", [["--no-optimize"], ["--target-fps", "1000"], ["--target-fps", "50000", "--set", "chip.chips=0"],
                                   ["--replicate", "C1=2", "--no-optimize"], ["--pack"]])
def test_no_greedy_baseline_line_without_a_greedy_plan(mcnn_dir, flags):
    code, out, err = run_cli(["count", mcnn_dir / "mcnn.onnx", "--target", "yao2020-mcnn", *flags])
    assert code == 0, err
    line = out.strip().splitlines()[-1]
    assert line.startswith("replication:")
    assert "None" not in line
    assert "greedy baseline" not in line


def test_budget_plan_prints_its_greedy_baseline(mcnn_dir):
    argv = ["count", mcnn_dir / "mcnn.onnx", "--target", "yao2020-mcnn"]
    code, out, _ = run_cli(argv)
    assert code == 0
    _, js, _ = run_cli(argv + ["--json"])
    rep = json.loads(js)["replication"]
    assert rep["greedy_bottleneck_cycles"] is not None
    assert (f"greedy baseline {rep['greedy_bottleneck_cycles']} cycles on {rep['greedy_arrays']} arrays"
            in out.strip().splitlines()[-1])


# -- missing extras ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("modules", [("sklearn", "sklearn.datasets"), ("sklearn.datasets",)])
def test_insitu_without_scikit_learn_names_the_insitu_extra(monkeypatch, tmp_path, modules):
    for module in modules:           # `from sklearn.datasets import ...` now raises ImportError, imported before or not
        monkeypatch.setitem(sys.modules, module, None)
    monkeypatch.setattr(cimc.insitu, "_DIGITS_CACHE", {})
    monkeypatch.chdir(tmp_path)
    err = assert_refused(["insitu", "--epochs", "1"], ["scikit-learn", "pip install -e '.[insitu]'"],
                         watch=[tmp_path])
    assert "dev extra" not in err


def test_gemm_lut_without_numba_names_the_fast_extra(monkeypatch, compiled, mcnn_dir):
    monkeypatch.setitem(sys.modules, "numba", None)
    err = assert_refused(["run", compiled, "--data", mcnn_dir / "calib.npz", "--backend", "crossbar",
                          "--gemm", "lut"], ["numba", "pip install -e '.[fast]'"], watch=[compiled, mcnn_dir])
    assert "pip install numba" not in err
