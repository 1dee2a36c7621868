"""onnx's checker runs in a child process made by a fork server (cimc.onnx_checks): a plain fork after
onnxruntime's threads had started could hang. A fork-server child is prepared like a spawned one, which would
re-run the parent's __main__ script; cimc hides it, so a user's script without an `if __name__ == "__main__":`
guard runs once, not once more per check."""
from __future__ import annotations

import subprocess
import sys
import textwrap


def test_a_script_without_a_main_guard_runs_once(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(__import__("pathlib").Path(__file__).parent)!r})
        import numpy as np
        import onnx_models as om
        import cimc
        print("script body ran", flush=True)
        model = om.small_cnn()
        manifest = cimc.compile(model, "ideal", calibration=om.random_feeds(model, batch=8, seed=0))
        cimc.Session(manifest, "float").run(om.random_feeds(model, batch=2, seed=1))   # onnxruntime threads now
        cimc.count(model, "ideal")                                                      # a second checker child
        print("done", flush=True)
    """))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("script body ran") == 1, result.stdout + result.stderr
    assert result.stdout.count("done") == 1
