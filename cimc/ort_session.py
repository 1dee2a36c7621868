"""onnxruntime models and sessions as cimc builds them for its own use (digital segments, the import's run on
zeros, constant folding): one place for the IR version, the provider, the logging and the threading rules."""
from __future__ import annotations

import threading

import onnx
from onnx import helper

_thread = threading.local()      # use_threads: this thread's intra-op thread count


def use_threads(count: int | None) -> None:
    """Sessions that this thread builds from now on run on `count` intra-op threads (None: onnxruntime's default,
    one per core). cimc.concurrent_chunks' workers use 1: each runs one batch beside the others."""
    _thread.count = count


def thread_count() -> int | None:
    """This thread's use_threads() setting (None unless set)."""
    return getattr(_thread, "count", None)


def model(body: onnx.GraphProto, opset_imports) -> onnx.ModelProto:
    """A model of `body` importing `opset_imports` (OperatorSetIdProtos), at the oldest IR version that holds
    those opsets (what the widest range of onnxruntime versions reads), at least IR 4 (initializers need not be
    graph inputs)."""
    ids = list(opset_imports)
    result = helper.make_model(body, opset_imports=ids, producer_name="cimc")
    result.ir_version = max(4, helper.find_min_ir_version_for([i for i in ids if i.domain in ("", "ai.onnx")],
                                                              ignore_unknown=True))
    return result


def session(model_proto: onnx.ModelProto, optimize: bool = True):
    """A CPU session; raises onnxruntime's own error. Quiet: its errors reach the user as CimcErrors, not as log
    lines. No spin-waiting between runs: a graph holds dozens of these sessions, and their idle threads spinning
    took the cores from the crossbar's own kernels (numba's table reads ran 1.8x slower). `optimize=False` keeps
    every tensor as the model names it (no fusing). Intra-op threads: this thread's use_threads()."""
    import onnxruntime as ort
    ort.set_default_logger_severity(3)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    threads = thread_count()
    if threads:
        options.intra_op_num_threads = threads
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model_proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
