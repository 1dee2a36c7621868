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


def test_table_without_timings_shows_dashes():
    study = {"limit": 500, "sweeps": {"program_sigma": {
        "summary": [{"params": {"program_sigma": "1uS"}, "accuracy_mean": 0.9, "accuracy_std": 0.01,
                     "tuned_accuracy_mean": 0.95, "tuned_accuracy_std": 0.005}], "timing": []}}}
    lines = _module().table(study).splitlines()
    assert lines[2] == "| programming error sigma | 1uS | 90.00 ± 1.00 | 95.00 ± 0.50 | - | - |"


def _exit_message(argv) -> str:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        try:
            _module().main(argv)
        except SystemExit as exc:
            return str(exc.code)
    raise AssertionError(f"{argv} was accepted")


def test_resume_refuses_a_missing_folder_and_another_models_study(tmp_path):
    assert "no such folder" in _exit_message(["--resume", "--out", str(tmp_path / "nowhere")])
    assert "--resume needs --out" in _exit_message(["--resume"])
    (tmp_path / "resnet56").mkdir()                     # a ResNet-56 study's manifest folder: not the mCNN's
    before = snapshot(tmp_path)
    assert "holds a study of resnet56" in _exit_message(["--resume", "--out", str(tmp_path)])
    assert snapshot(tmp_path) == before


def test_resnet56_names_the_missing_standin_files(tmp_path):
    message = _exit_message(["--resnet56", str(tmp_path), "--out", str(tmp_path / "out")])
    assert "resnet56_mnist.onnx" in message and "train_mnist_standin.py" in message
    assert not (tmp_path / "out").exists()
