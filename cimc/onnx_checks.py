"""Is an ONNX model valid, as onnxruntime would judge it, and are its constants finite?

`check_valid` runs onnx.checker and onnx's strict shape inference (what `check_model(full_check=True)` does) and
turns what they refuse into a ModelError naming the file. Two things the checker refuses but onnxruntime runs stay
accepted: nodes out of topological order (the front end sorts them first) and declared shapes (value_info, graph
outputs) that disagree with the inferred ones (onnxruntime merges them leniently; cimc uses the inferred shapes).

`first_nonfinite` finds the first NaN/Inf of an array, for messages that name the index.
"""
from __future__ import annotations

import contextlib
import faulthandler
import os
import re
import sys
import tempfile
from collections import Counter

import numpy as np
import onnx

from cimc import checker_server, data
from cimc.errors import ModelError


def _duplicates(names) -> list[str]:
    return sorted(n for n, k in Counter(n for n in names if n).items() if k > 1)


def clip_bounds_only(nodes) -> set[str]:
    """Tensors read only as a Clip min/max: there an infinite value means "no bound", the one place a constant may
    be +-Inf (NaN never)."""
    bounds = {t for n in nodes if n.op_type == "Clip" for t in n.input[1:3] if t}
    return bounds - {t for n in nodes for i, t in enumerate(n.input) if n.op_type != "Clip" or i == 0}


def check_names(model: onnx.ModelProto, where: str) -> None:
    """Initializer names, and the tensors written by nodes and graph inputs, must be unique (SSA), and every tensor a
    node reads must be written. The checker says so too, but less plainly; these messages name the nodes."""
    g = model.graph
    dup = _duplicates(i.name for i in g.initializer)
    if dup:
        raise ModelError(f"{where}: initializer {dup[0]!r} is defined more than once (initializer names must be "
                         "unique; onnxruntime and cimc would disagree on which one holds); re-export the model")
    dup = _duplicates(n.name for n in g.node)
    if dup:   # the checker lets it pass; onnxruntime refuses the model ("two nodes with same node name")
        raise ModelError(f"{where}: two nodes are named {dup[0]!r}; node names must be unique (onnxruntime "
                         "refuses the model too); re-export it or rename the nodes")
    writers: dict[str, list[str]] = {}
    inputs = {vi.name for vi in g.input}
    for vi in g.input:
        writers.setdefault(vi.name, []).append("graph input")
    for init in g.initializer:
        if init.name not in inputs:   # IR-3 files list their initializers as graph inputs too: one definition
            writers.setdefault(init.name, []).append("initializer")
    for index, node in enumerate(g.node):
        for out in node.output:
            if out:
                writers.setdefault(out, []).append(f"node {node.name or f'#{index}'!r} ({node.op_type})")
    for tensor, who in writers.items():
        if len(who) > 1:
            raise ModelError(f"{where}: tensor {tensor!r} is written more than once (by {', '.join(who)}); every "
                             "tensor must have exactly one producer; re-export the model")
    for index, node in enumerate(g.node):
        for tensor in node.input:
            if tensor and tensor not in writers:   # the checker would call this "not topologically sorted"
                raise ModelError(f"{where}: node {node.name or f'#{index}'!r} ({node.op_type}) reads tensor "
                                 f"{tensor!r}, which no node, initializer or graph input provides")


def check_valid(model: onnx.ModelProto, where: str) -> onnx.ModelProto:
    """ModelError unless onnx.checker and strict shape inference accept `model` (nodes already in topological
    order), ignoring declared intermediate and output shapes, which onnxruntime merges leniently. Returns the model
    with the shapes inference found (in value_info and the graph outputs).

    onnx's C++ code can abort the whole process on a malformed file (an assertion in a shape function, seen with
    a Conv whose output size comes out negative feeding a Slice; onnxruntime aborts the same way), so where the
    platform can fork, the checks run in a child process and a crash there becomes a ModelError."""
    check_names(model, where)
    if not checker_server.available():
        return _check_and_infer(model, where)     # a daemonic process (a Dask worker) may not start children
    try:
        return _check_in_child(model, where)
    except OSError:   # no child to be had (process limits, no temporary folder): check here, unprotected
        return _check_and_infer(model, where)


def _check_in_child(model: onnx.ModelProto, where: str) -> onnx.ModelProto:
    # A forkserver child, not a plain fork: by now this process may run onnxruntime sessions whose threads hold
    # locks (malloc's, the thread pool's), and a child forked from it could wait on them forever. The fork server
    # is a fresh process (onnx preloaded) that forks the checkers.
    context = checker_server.context()
    receive, send = context.Pipe(duplex=False)
    with tempfile.NamedTemporaryFile() as stderr:   # what onnx's C++ code prints before it aborts
        child = context.Process(target=_child, args=(send, model.SerializeToString(), where, stderr.name),
                                daemon=True)
        with _main_module_hidden():
            child.start()
        send.close()
        try:
            status, payload = receive.recv()
        except EOFError:           # the child died without a word: a crash inside onnx
            status, payload = None, None
        finally:
            receive.close()
            child.join()
        stderr.seek(0)
        said = " ".join(stderr.read().decode(errors="replace").split())[-300:]
    if status == "ok":      # the checked model came back without its initializers (unchanged): ours go in again
        checked = onnx.load_from_string(payload)
        checked.graph.initializer.extend(model.graph.initializer)
        return checked
    if status == "error":
        raise ModelError(payload)
    raise ModelError(f"{where}: onnx's checker or shape inference crashed on this model (exit code "
                     f"{child.exitcode}{'; it said: ' + said if said else ''}); the file is malformed (look for "
                     "attributes that make a tensor size zero or negative, such as a kernel larger than its input); "
                     "onnxruntime cannot load it either")


@contextlib.contextmanager
def _main_module_hidden():
    """A forkserver child re-imports the parent's __main__ script (spawn's rule), which would run a user's script
    that has no `if __name__ == "__main__":` guard again inside the checker. The child needs nothing from it, so
    while the child is prepared, __main__ shows no file or spec (as in an interactive session)."""
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    spec, has_file, file = getattr(main, "__spec__", None), hasattr(main, "__file__"), getattr(main, "__file__", None)
    main.__spec__ = None
    if has_file:
        del main.__file__
    try:
        yield
    finally:
        main.__spec__ = spec
        if has_file:
            main.__file__ = file


def _child(send, model_bytes: bytes, where, stderr_path: str) -> None:
    faulthandler.disable()     # a crash is reported by the parent, not as a Python stack dump
    with open(stderr_path, "wb") as stderr:
        os.dup2(stderr.fileno(), 2)
    try:
        checked = _check_and_infer(onnx.load_from_string(model_bytes), where)
        del checked.graph.initializer[:]     # the parent has them: send back only what inference added
        send.send(("ok", checked.SerializeToString()))
    except ModelError as exc:
        send.send(("error", str(exc)))
    except BaseException as exc:  # noqa: BLE001 - whatever it is, the parent reports it as a ModelError
        send.send(("error", f"{where}: cannot check the model ({type(exc).__name__}: {_first_lines(exc)})"))
    finally:
        send.close()


def _check_and_infer(model: onnx.ModelProto, where: str) -> onnx.ModelProto:
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    # Files below IR 4 (IR 3 exporters, hand-made files with IR 0-2): the checker refuses their opset_import
    # (IR < 3) and initializers that are not also graph inputs (IR < 4); onnxruntime runs both, so check as IR 4.
    probe.ir_version = max(probe.ir_version, 4)
    for out in probe.graph.output:   # the checker wants a shape on every graph output; onnxruntime does not
        if out.type.HasField("tensor_type") and not out.type.tensor_type.HasField("shape"):
            out.type.tensor_type.shape.SetInParent()
    try:
        onnx.checker.check_model(probe)
    except onnx.checker.ValidationError as exc:
        raise ModelError(f"{where}: not a valid ONNX model, onnx.checker says: {_first_lines(exc)}") from None
    except Exception as exc:  # e.g. a model over protobuf's 2 GB limit
        raise ModelError(f"{where}: onnx.checker cannot check it ({type(exc).__name__}: {_first_lines(exc)})") \
            from None
    del probe.graph.value_info[:]
    for out in probe.graph.output:     # keep the element type (onnxruntime checks it), forget the shape
        out.type.tensor_type.ClearField("shape")
    try:
        return onnx.shape_inference.infer_shapes(probe, check_type=True, strict_mode=True, data_prop=True)
    except Exception as exc:  # InferenceError names the node, op type and attribute at fault
        raise ModelError(f"{where}: not a valid ONNX model, onnx shape inference says: {_first_lines(exc)}") \
            from None


# where onnx's messages name the node at fault: "(op_type:Conv, node name: conv)" and "Name: conv OpType: Conv"
_NODE_IN_MESSAGE = (re.compile(r"op_type:\s*(?P<op>[\w.]+), node name:\s*(?P<name>[^)]*)\)"),
                    re.compile(r"Name:\s*(?P<name>\S*)\s+OpType:\s*(?P<op>[\w.]+)"))


def _first_lines(exc: Exception, limit: int = 600) -> str:
    """onnx's message on one line, led by the node it names (if any) in cimc's usual form."""
    text = " ".join(str(exc).split())
    text = text if len(text) <= limit else text[:limit] + " ..."
    for pattern in _NODE_IN_MESSAGE:
        found = pattern.search(text)
        if found:
            return f"node {found['name']!r} ({found['op']}): {text}"
    return text


def first_nonfinite(array) -> str | None:
    """'NaN at index (3, 0, 1, 2)' (or Inf / -Inf) for the first non-finite entry of a float array, else None."""
    a = np.asarray(array)
    if a.dtype.kind in "iubSUO" or a.size == 0:
        return None
    if a.dtype.kind not in "fc":
        a = a.astype(np.float64)     # float16 / bfloat16 and friends
    index = data.first_nonfinite(a)
    if index is None:
        return None
    value = a[index]
    kind = "NaN" if np.isnan(value) else ("Inf" if np.real(value) > 0 else "-Inf")
    return f"{kind} at index {index}" if a.ndim else kind
