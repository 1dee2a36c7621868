"""Run a manifest on a data set beside onnxruntime on the source model, and compare.

For the `crossbar` backend, `evaluate` runs `trials` independent chip instances (seeds seed, seed+1, ...), the
integer backend (the ideal chip) once and onnxruntime once, all on the same inputs, and reports per trial and in
aggregate: accuracy, top-1 agreement and largest output difference against the integer backend, timings, and (with
`layers=True`) each crossbar layer's error against the exact integer product and its ADC clipping rate.
On a quantised backend every crossbar layer's input clipping (values beyond its input quantiser's calibrated range)
is counted too, and a first layer clipping more than INPUT_CLIP_WARN of its inputs gives a warning.
"""
from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort

from cimc.batching import fixed_batch, run_chunked
from cimc.data import Dataset
from cimc.errors import ConfigError, DataError, ModelError
from cimc.executor import Session
from cimc.frontend import model_digest
from cimc.ir import XbarOp


class Progress:
    """A one-line progress counter on stderr, shown only on a terminal."""

    def __init__(self, label: str, total: int, enabled: bool):
        self.label, self.total = label, total
        self.enabled = enabled and sys.stderr.isatty()
        self.start = time.perf_counter()

    def update(self, done: int, extra: str = "") -> None:
        if self.enabled:
            width = 30
            filled = int(width * done / max(self.total, 1))
            elapsed = time.perf_counter() - self.start
            eta = elapsed / done * (self.total - done) if done else 0.0
            sys.stderr.write(f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] {done}/{self.total} "
                             f"{elapsed:.0f}s elapsed, ~{eta:.0f}s left {extra}   ")
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
    digest = model_digest(path)   # covers external data files too
    if digest != source["sha256"]:
        print(f"cimc: warning: {path} differs from the model the manifest was compiled from "
              f"(sha256 {digest[:12]}... vs {source['sha256'][:12]}...)", file=sys.stderr)
    try:
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelError(f"{path}: onnxruntime cannot load it ({exc})") from None
    _check_reference_interface(sess, manifest, path)
    return sess, path


def _check_reference_interface(sess: ort.InferenceSession, manifest, path: str) -> None:
    """The reference model must take the manifest's inputs (names, non-batch sizes) and give its first output."""
    hint = "pass --reference with the ONNX file the manifest was compiled from"
    theirs = {i.name: i.shape for i in sess.get_inputs()}
    ours = {t.name: t.shape for t in manifest.graph.inputs}
    if set(theirs) != set(ours):
        raise ModelError(f"{path}: the reference model's inputs {sorted(theirs)} differ from the manifest's "
                         f"{sorted(ours)}; {hint}")
    for name, shape in ours.items():
        other = theirs[name]
        if len(other) != len(shape) or any(isinstance(a, int) and isinstance(b, int) and a != b
                                           for a, b in zip(shape[1:], other[1:])):
            raise ModelError(f"{path}: the reference model's input {name!r} has shape {other}, the manifest's "
                             f"{['N' if d is None else d for d in shape]}; {hint}")
    out = manifest.graph.outputs[0].name
    if out not in {o.name for o in sess.get_outputs()}:
        raise ModelError(f"{path}: the reference model has no output {out!r} (the manifest's output); {hint}")


INPUT_CLIP_WARN = 0.05     # warn when more than this share of a first layer's input values clip at its quantiser


class InputClipping:
    """Per crossbar layer: how many input values fall outside its input quantiser's range (code rint(x / s) above
    qmax or below qmin), observed on the integer backend's run."""

    def __init__(self):
        self.clipped: dict[str, int] = {}
        self.values: dict[str, int] = {}

    def observe(self, op: XbarOp, x: np.ndarray) -> None:
        q = op.input_quant
        t = np.rint(x / np.float32(q.scale))
        self.clipped[op.name] = self.clipped.get(op.name, 0) + int(np.count_nonzero((t > q.qmax) | (t < q.qmin)))
        self.values[op.name] = self.values.get(op.name, 0) + int(t.size)

    def rates(self) -> dict[str, float]:
        return {name: self.clipped[name] / self.values[name] if self.values[name] else 0.0 for name in self.values}

    def warn(self, graph) -> None:
        """A warning for each first crossbar layer (reading the model input through digital ops only) where more
        than INPUT_CLIP_WARN of the input values clip: the data is likely scaled unlike the calibration data."""
        from cimc.calibrate import first_layers
        rates = self.rates()
        for source, layers in first_layers(graph).items():
            for name in layers:
                if rates.get(name, 0.0) > INPUT_CLIP_WARN:
                    warnings.warn(f"{rates[name]:.1%} of the input values of layer {name!r} (from model input "
                                  f"{source!r}) lie outside its input quantiser's calibrated range and are clipped; "
                                  "is the data scaled or normalised like the calibration data?", stacklevel=2)


def _batches(data: Dataset, batch_size: int):
    for start in range(0, len(data), batch_size):
        yield start, {k: v[start:start + batch_size] for k, v in data.inputs.items()}


def _run_session(session: Session, data: Dataset, batch_size: int, out_name: str, bar: Progress | None,
                 done: int = 0, clipping: InputClipping | None = None) -> tuple[np.ndarray, float]:
    """`clipping`: also count input clipping per crossbar layer (a quantised backend; the same outputs)."""
    outs, seconds = [], 0.0
    for start, batch in _batches(data, batch_size):
        t0 = time.perf_counter()
        y = session.run(batch, samples=start,              # each sample by its index in the data set
                        observe=None if clipping is None else clipping.observe)
        seconds += time.perf_counter() - t0
        outs.append(y if not isinstance(y, dict) else y[out_name])
        if bar is not None:
            bar.update(done + min(start + batch_size, len(data)))
    return np.concatenate(outs), seconds


def _run_reference(ref: ort.InferenceSession, data: Dataset, batch_size: int,
                   out_name: str) -> tuple[np.ndarray, float]:
    """onnxruntime on the source model; a model with a fixed batch in chunks of that batch (cimc.batching)."""
    fixed = fixed_batch([tuple(d if isinstance(d, int) else None for d in i.shape) for i in ref.get_inputs()])
    outs, seconds = [], 0.0
    for _, batch in _batches(data, batch_size):
        t0 = time.perf_counter()
        feeds = {k: v.astype(np.float32) for k, v in batch.items()}
        if fixed is None:
            outs.append(ref.run([out_name], feeds)[0])
        else:
            outs.append(run_chunked(lambda part: {out_name: ref.run([out_name], part)[0]}, feeds, fixed)[out_name])
        seconds += time.perf_counter() - t0
    return np.concatenate(outs), seconds


def evaluate(manifest, data: Dataset, backend: str = "integer", seed: int | None = None,
             reference: str | None = None, batch_size: int = 100, progress: bool = False, trials: int = 1,
             backend_options: dict | None = None, layers: bool = False) -> dict:
    """Run `backend` on `data` beside onnxruntime; see the module doc for the crossbar extras.
    `backend_options` go to the crossbar backend (cimc.backends.crossbar.CrossbarBackend)."""
    if trials < 1:
        raise ConfigError(f"--trials {trials}: must be at least 1")
    if backend != "crossbar" and (trials != 1 or backend_options or layers):
        raise ConfigError("--trials, --layers and the device/ADC options apply to --backend crossbar only")
    if backend == "crossbar":
        return _evaluate_crossbar(manifest, data, seed, reference, batch_size, progress, trials,
                                  dict(backend_options or {}), layers)
    session = Session(manifest, backend=backend, seed=seed, batch_size=batch_size)
    ref, ref_path = reference_session(session.manifest, reference)
    out_name = session.output_names[0]
    bar = Progress(f"cimc run ({backend})", len(data), progress)
    clipping = InputClipping() if session.backend.quantized else None
    y, backend_s = _run_session(session, data, batch_size, out_name, bar, clipping=clipping)
    bar.close()
    r, reference_s = _run_reference(ref, data, batch_size, out_name)
    result = {"backend": backend, "n": int(len(data)), "output": out_name}
    if clipping is not None:
        clipping.warn(session.graph)
        result["input_clip_rates"] = clipping.rates()
    result.update(_compare(y, r, data.labels))
    result.update({"backend_seconds": backend_s, "reference_seconds": reference_s, "reference_model": ref_path,
                   "seed": seed})
    return result


def _compare(y: np.ndarray, r: np.ndarray, labels) -> dict:
    if y.shape != r.shape:
        raise DataError(f"backend output {list(y.shape)} and onnxruntime output {list(r.shape)} differ in shape")
    top, ref_top = _top1(y), _top1(r)
    out = {"agreement": float(np.mean(top == ref_top)),
           "max_abs_error": float(np.max(np.abs(y - r))),
           "max_rel_error": float(np.max(np.abs(y - r)) / max(float(np.max(np.abs(r))), 1e-30)),
           "accuracy": None, "reference_accuracy": None}
    if labels is not None:
        out["accuracy"] = float(np.mean(top == labels))
        out["reference_accuracy"] = float(np.mean(ref_top == labels))
    return out


def _evaluate_crossbar(manifest, data, seed, reference, batch_size, progress, trials, options, layers) -> dict:
    from cimc.backends.crossbar import combine_layer_stats
    from cimc.manifest import Manifest, load
    manifest = manifest if isinstance(manifest, Manifest) else load(Path(manifest))
    seed = 0 if seed is None else int(seed)
    ref, ref_path = reference_session(manifest, reference)
    n = len(data)
    integer = Session(manifest, backend="integer", batch_size=batch_size)
    out_name = integer.output_names[0]
    bar = Progress("cimc run (crossbar)", n * (trials + 1), progress)
    clipping = InputClipping()     # the integer chip quantises inputs exactly as every chip instance does
    y_int, integer_s = _run_session(integer, data, batch_size, out_name, bar, clipping=clipping)
    clipping.warn(integer.graph)
    r, reference_s = _run_reference(ref, data, batch_size, out_name)
    if y_int.shape != r.shape:
        raise DataError(f"backend output {list(y_int.shape)} and onnxruntime output {list(r.shape)} differ in shape")
    int_top = _top1(y_int)
    per_trial, backends = [], []
    backend_s = bind_s = 0.0
    for t in range(trials):
        t0 = time.perf_counter()
        session = Session(manifest, backend="crossbar", seed=seed + t, batch_size=batch_size,
                          diagnostics=layers, **options)
        bind_s += time.perf_counter() - t0
        y, seconds = _run_session(session, data, batch_size, out_name, bar, done=n * (t + 1))
        backend_s += seconds
        cmp = _compare(y, r, data.labels)
        per_trial.append({"seed": seed + t, "accuracy": cmp["accuracy"], "agreement": cmp["agreement"],
                          "max_abs_error": cmp["max_abs_error"], "max_rel_error": cmp["max_rel_error"],
                          "agreement_with_integer": float(np.mean(_top1(y) == int_top)),
                          "max_abs_diff_vs_integer": float(np.max(np.abs(y.astype(np.float64) - y_int))),
                          "backend_seconds": seconds})
        backends.append(session.backend)
    bar.close()
    accs = [p["accuracy"] for p in per_trial]
    labelled = data.labels is not None
    result = {
        "backend": "crossbar", "n": int(n), "output": out_name, "seed": seed, "seeds": [p["seed"] for p in per_trial],
        "trials": accs,
        "accuracy": float(np.mean(accs)) if labelled else None,
        "accuracy_mean": float(np.mean(accs)) if labelled else None,
        "accuracy_std": (float(np.std(accs, ddof=1)) if trials > 1 else 0.0) if labelled else None,
        "reference_accuracy": _compare(y_int, r, data.labels)["reference_accuracy"],
        "integer_accuracy": float(np.mean(int_top == data.labels)) if labelled else None,
        "agreement": float(np.mean([p["agreement"] for p in per_trial])),
        "max_abs_error": max(p["max_abs_error"] for p in per_trial),
        "max_rel_error": max(p["max_rel_error"] for p in per_trial),
        "agreement_with_integer": float(np.mean([p["agreement_with_integer"] for p in per_trial])),
        "max_abs_diff_vs_integer": max(p["max_abs_diff_vs_integer"] for p in per_trial),
        "backend_seconds": backend_s, "reference_seconds": reference_s, "integer_seconds": integer_s,
        "bind_seconds": bind_s, "reference_model": ref_path,
        "per_trial": per_trial,
        "crossbar": backends[0].describe(),
        "input_clip_rates": clipping.rates(),
    }
    if layers:
        result["layers"] = combine_layer_stats(backends)
        for row in result["layers"]:
            row["input_clip_rate"] = result["input_clip_rates"].get(row["name"])
    return result


def _top1(y: np.ndarray) -> np.ndarray:
    return y.reshape(len(y), -1).argmax(axis=1)
