"""ONNX external data, read safely: a tensor's `location` is a file inside the model file's own folder.

An ONNX file may keep tensor bytes in side files (`onnx.save(..., save_as_external_data=True)`, what
`torch.onnx.export(..., dynamo=True)` writes). The location comes from the file, so it is untrusted: it is resolved
against the model's folder (never the working directory), and absolute paths, `..`, symbolic links and anything
that is not a regular file inside that folder are refused before a byte is read. The bytes themselves are read by
onnx's own loader; the provenance digest covers them.
"""
from __future__ import annotations

import hashlib
import os
import sys
import warnings
from pathlib import PurePosixPath, PureWindowsPath

import onnx
from onnx.external_data_helper import ExternalDataInfo, load_external_data_for_model, uses_external_data

from cimc.errors import ModelError


def graph_tensors(graph: onnx.GraphProto):
    """Every TensorProto of a graph: initializers and tensor attributes, in subgraphs too."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from graph_tensors(attr.g)
            for sub in attr.graphs:
                yield from graph_tensors(sub)


def model_folder(model_path) -> str:
    """The folder external data is read from: the model file's own folder (as onnx.load does), fully resolved."""
    return os.path.realpath(os.path.dirname(os.path.abspath(model_path)))


def _why_outside(folder: str, location: str) -> str | None:
    """Why `location` is not a plain file inside `folder` (a realpath), or None when it is."""
    if not location:
        return "is empty"
    if "\0" in location:
        return "contains a NUL character"
    if os.path.isabs(location) or PureWindowsPath(location).is_absolute() or PureWindowsPath(location).drive:
        return "is an absolute path"
    if ".." in PurePosixPath(location.replace("\\", "/")).parts:
        return "climbs out with '..'"
    joined = os.path.normpath(os.path.join(folder, location))
    real = os.path.realpath(joined)
    if real != joined:   # some component is a symbolic link (onnx's own loader refuses links too)
        return f"goes through a symbolic link (to {real})"
    if not os.path.isfile(real):
        return "does not exist" if not os.path.lexists(real) else "is not a regular file"
    return None


def external_data_files(model: onnx.ModelProto, model_path) -> list[str]:
    """The external data files `model` (read from `model_path`) refers to, as paths relative to the model's folder,
    sorted; ModelError naming the tensor and the location for one that is not a regular file inside that folder."""
    folder = model_folder(model_path)
    files = set()
    for tensor in graph_tensors(model.graph):
        if not uses_external_data(tensor):
            continue
        try:
            with warnings.catch_warnings(record=True) as said:   # onnx warns about unknown keys, and ignores them
                warnings.simplefilter("always")
                location = ExternalDataInfo(tensor).location
            for warning in said:
                print(f"cimc: warning: {model_path}: {warning.message}", file=sys.stderr)
        except Exception as exc:  # malformed offset/length entries
            raise ModelError(f"{model_path}: tensor {tensor.name!r} has malformed external data fields ({exc})") \
                from None
        why = _why_outside(folder, location)
        if why:
            raise ModelError(f"{model_path}: tensor {tensor.name!r} keeps its data at external location "
                             f"{location!r}, which {why}; external data must be a file inside the model's folder "
                             f"{folder} (re-save the model with onnx.save(..., save_as_external_data=True))")
        files.add(os.path.normpath(location))
    return sorted(files)


def load_external_data(model: onnx.ModelProto, model_path) -> list[str]:
    """Read every external tensor of `model` into it, from the model's own folder; returns the files read."""
    files = external_data_files(model, model_path)
    if files:
        folder = model_folder(model_path)
        try:
            with warnings.catch_warnings():   # unknown keys: already reported by external_data_files
                warnings.simplefilter("ignore")
                load_external_data_for_model(model, folder)
        except Exception as exc:  # onnx's ValidationError (bad path) or ValueError (offset/length past the end)
            raise ModelError(f"{model_path}: cannot read its external data ({exc})") from None
    return files


def digest(model_bytes: bytes, model_path, files: list[str]) -> str:
    """sha256 of the model file, extended by each external data file's name and content. A model without external
    data gets the plain sha256 of its file, so digests recorded before external data was covered still match."""
    h = hashlib.sha256(model_bytes)
    for name in files:
        with open(os.path.join(model_folder(model_path), name), "rb") as f:
            h.update(b"\0" + name.encode() + b"\0" + hashlib.file_digest(f, "sha256").digest())
    return h.hexdigest()
