"""cimc: compile ONNX models onto memristor crossbar arrays and run them bit-accurately.

    manifest = cimc.compile("model.onnx", target="yao2020-resnet", calibration="calib.npz")
    manifest.save("out/")
    session = cimc.Session("out/", backend="integer")
    logits = session.run(x)
"""
from __future__ import annotations

import importlib

from cimc.version import __version__  # noqa: E402

# The names below load on first use (PEP 562): importing any cimc module (the `cimc` command, the onnx checker's
# fork server, cimc.onnx_checks) then pays only for what it imports, not for the compiler and every backend.
_LAZY = {"compile": "cimc.compiler", "count": "cimc.compiler", "Session": "cimc.executor",
         "Manifest": "cimc.manifest", "load": "cimc.manifest", "load_target": "cimc.targets.registry"}

__all__ = ["compile", "count", "load", "Manifest", "Session", "load_target", "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    try:                          # `import cimc; cimc.errors.X`: a submodule, as the eager package gave them
        return importlib.import_module(f"cimc.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"cimc.{name}":
            raise
        raise AttributeError(f"module 'cimc' has no attribute {name!r}") from None


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
