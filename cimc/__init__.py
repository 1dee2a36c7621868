"""cimc: compile ONNX models onto memristor crossbar arrays and run them bit-accurately.

    manifest = cimc.compile("model.onnx", target="yao2020-resnet", calibration="calib.npz")
    manifest.save("out/")
    session = cimc.Session("out/", backend="integer")
    logits = session.run(x)
"""
from cimc.version import __version__  # noqa: E402
from cimc.compiler import compile, count  # noqa: E402
from cimc.executor import Session  # noqa: E402
from cimc.manifest import Manifest, load  # noqa: E402
from cimc.targets.registry import load_target  # noqa: E402

__all__ = ["compile", "count", "load", "Manifest", "Session", "load_target", "__version__"]
