"""examples/physics_study: where it writes (as every example: a new or empty --out, never over files) and its table."""
from __future__ import annotations

import contextlib
import importlib.util
import io
from pathlib import Path

from refusal import snapshot

STUDY = Path(__file__).resolve().parents[1] / "examples" / "physics_study" / "run_study.py"


def _module():
    spec = importlib.util.spec_from_file_location("example_physics_study", STUDY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_refuses_an_occupied_out_and_touches_nothing(tmp_path):
    (tmp_path / "study.json").write_text("an earlier study")
    before = snapshot(tmp_path)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        try:
            _module().main(["--out", str(tmp_path)])
            raise AssertionError("an occupied --out was accepted")
        except SystemExit as exc:
            code = exc.code
    assert "already holds files" in str(code)
    assert snapshot(tmp_path) == before


def test_table_rows_are_the_sweeps_points_in_percent():
    study = {"limit": 200, "sweeps": {"wire": {
        "summary": [{"params": {"wire_resistance": "0"}, "accuracy_mean": 0.98833, "accuracy_std": 0.00289,
                     "tuned_accuracy_mean": 0.98833, "tuned_accuracy_std": 0.00289},
                    {"params": {"wire_resistance": "5ohm"}, "accuracy_mean": 0.985, "accuracy_std": 0.00866}],
        "timing": [{"run_cpu_s": 0.05, "tune_cpu_s": 0.49}, {"run_cpu_s": 0.14, "tune_cpu_s": 0.8}]}}}
    lines = _module().table(study).splitlines()
    assert lines[2] == "| wire resistance per segment | 0 | 98.83 ± 0.29 | 98.83 ± 0.29 | 0.05 | 0.49 |"
    assert lines[3] == "| wire resistance per segment | 5ohm | 98.50 ± 0.87 | - | 0.14 | 0.80 |"
    assert len(lines) == 4
