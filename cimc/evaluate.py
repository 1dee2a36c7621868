"""Run a manifest on a data set beside onnxruntime on the source model, and compare."""
from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from cimc.data import Dataset
from cimc.errors import DataError, ModelError
from cimc.executor import Session


class Progress:
    """A one-line progress counter on stderr, shown only on a terminal."""

    def __init__(self, label: str, total: int, enabled: bool):
        self.label, self.total = label, total
        self.enabled = enabled and sys.stderr.isatty()

    def update(self, done: int, extra: str = "") -> None:
        if self.enabled:
            sys.stderr.write(f"\r{self.label}: {done}/{self.total} {extra}   ")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


def reference_session(manifest, reference: str | None) -> tuple[ort.InferenceSession, str]:
    source = manifest.provenance["source_model"]
    path = reference or source.get("path")
    if not path or not Path(path).is_file():
        raise ModelError(f"the reference model {path!r} is not available; pass --reference model.onnx (the ONNX file "
                         "the manifest was compiled from)")
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    if digest != source["sha256"]:
        print(f"cimc: warning: {path} differs from the model the manifest was compiled from "
              f"(sha256 {digest[:12]}... vs {source['sha256'][:12]}...)", file=sys.stderr)
    try:
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelError(f"{path}: onnxruntime cannot load it ({exc})") from None
    return sess, path


def evaluate(manifest, data: Dataset, backend: str = "integer", seed: int | None = None,
             reference: str | None = None, batch_size: int = 100, progress: bool = False) -> dict:
    session = Session(manifest, backend=backend, seed=seed, batch_size=batch_size)
    ref, ref_path = reference_session(session.manifest, reference)
    out_name = session.output_names[0]
    n = len(data)
    outs, refs = [], []
    backend_s = reference_s = 0.0
    bar = Progress(f"cimc run ({backend})", n, progress)
    for start in range(0, n, batch_size):
        batch = {k: v[start:start + batch_size] for k, v in data.inputs.items()}
        t0 = time.perf_counter()
        y = session.run(batch)
        backend_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        r = ref.run([out_name], {k: v.astype(np.float32) for k, v in batch.items()})[0]
        reference_s += time.perf_counter() - t0
        outs.append(y if not isinstance(y, dict) else y[out_name])
        refs.append(r)
        bar.update(min(start + batch_size, n))
    bar.close()
    y, r = np.concatenate(outs), np.concatenate(refs)
    if y.shape != r.shape:
        raise DataError(f"backend output {list(y.shape)} and onnxruntime output {list(r.shape)} differ in shape")
    top, ref_top = _top1(y), _top1(r)
    result = {"backend": backend, "n": int(n), "output": out_name,
              "agreement": float(np.mean(top == ref_top)),
              "max_abs_error": float(np.max(np.abs(y - r))),
              "max_rel_error": float(np.max(np.abs(y - r)) / max(float(np.max(np.abs(r))), 1e-30)),
              "accuracy": None, "reference_accuracy": None,
              "backend_seconds": backend_s, "reference_seconds": reference_s, "reference_model": ref_path,
              "seed": seed}
    if data.labels is not None:
        result["accuracy"] = float(np.mean(top == data.labels))
        result["reference_accuracy"] = float(np.mean(ref_top == data.labels))
    return result


def _top1(y: np.ndarray) -> np.ndarray:
    return y.reshape(len(y), -1).argmax(axis=1)
