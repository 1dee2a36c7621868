"""Shared fixtures: compiled models are cached per session because compiling ResNet-56 takes seconds."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

import cimc
from cimc import zoo


@pytest.fixture(scope="session")
def resnet56_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "resnet56.onnx"
    onnx.save(zoo.resnet56(seed=0), path)
    return path


@pytest.fixture(scope="session")
def resnet56_manifest(resnet56_path, tmp_path_factory):
    calib = np.random.default_rng(100).standard_normal((16, 3, 32, 32)).astype(np.float32)
    manifest = cimc.compile(resnet56_path, "yao2020-resnet", calibration=calib, replicate={"conv1": 4})
    manifest.save(tmp_path_factory.mktemp("manifests") / "resnet56")
    return manifest


@pytest.fixture(scope="session")
def mcnn_dir(tmp_path_factory):
    """Yao's mCNN (cimc.zoo, random weights) as mcnn.onnx, with 16 calibration images as calib.npz."""
    d = tmp_path_factory.mktemp("mcnn")
    onnx.save(zoo.mcnn(), d / "mcnn.onnx")
    np.savez(d / "calib.npz", x=np.random.default_rng(0).random((16, 1, 28, 28), dtype=np.float32))
    return d


def pytest_terminal_summary(terminalreporter):
    """How many bad inputs the fuzz suite refused (tests/refusal.py)."""
    import sys
    refusal = sys.modules.get("refusal")
    if refusal is not None and refusal.CASES:
        terminalreporter.write_line(f"refusal cases checked: {len(refusal.CASES)}")
