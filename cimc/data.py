"""Data files. An npz holds the model input under `x` (single-input models) or under each input's name, in the
model's layout and any real numeric dtype (converted to float32), and optionally integer labels under `y`.

Every value must be a finite number: NaN, inf, or a float64 beyond float32's range is refused, naming the file, the
key and the first bad index. Files are read through cimc.npz (headers first, bounded, only the samples asked for).
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

from cimc.errors import DataError
from cimc.npz import NpzReader, data_limit_bytes

_CHECK_ROWS = 1 << 20     # elements per finiteness check: bounds the boolean mask beside the array


@dataclass
class Dataset:
    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    path: str | None
    sha256: str | None

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))


def read_npz(path, what: str = "data file") -> dict[str, np.ndarray]:
    """Every array of an .npz file (bounded by the data limit); errors name the file and say what it was meant
    to be."""
    with NpzReader(path, what) as z:
        budget = data_limit_bytes()
        out = {}
        for key in z.keys():
            out[key] = z.read(key, budget=budget)
            budget -= out[key].nbytes
        return out


def first_nonfinite(a: np.ndarray) -> tuple[int, ...] | None:
    """The index of the first NaN or infinite value of a float array (C order), or None."""
    flat = a.reshape(-1)
    for start in range(0, flat.size, _CHECK_ROWS):
        bad = ~np.isfinite(flat[start:start + _CHECK_ROWS])
        if bad.any():
            return tuple(int(i) for i in np.unravel_index(start + int(np.argmax(bad)), a.shape))
    return None


def as_float32_input(array, where: str) -> np.ndarray:
    """A model input as float32, refusing what is not a real finite number. `where` names the file and key."""
    a = np.asarray(array)
    if a.dtype == np.bool_ or a.dtype.kind not in "iuf":
        raise DataError(f"{where} has dtype {a.dtype}; a model input must hold real numbers (integer or float "
                        "arrays)" + ("; the imaginary part would be lost" if a.dtype.kind == "c" else ""))
    if a.ndim == 0:
        raise DataError(f"{where} is a scalar; it must be an array with one row per sample")
    with np.errstate(over="ignore"):
        x = a.astype(np.float32, copy=False)
    if a.dtype.kind == "f":
        index = first_nonfinite(x)
        if index is not None:
            v = a[index]
            what = "NaN" if np.isnan(v) else (f"{v}" if np.isinf(v) else f"{v:g}, beyond float32's range,")
            raise DataError(f"{where} holds {what} at index {index}; every input value must be a finite number "
                            "(fix or drop that sample)")
    return x


def check_labels(labels: np.ndarray | None, n_classes: int | None, where: str) -> None:
    """Class labels: integers in 0..n_classes-1 (n_classes None: only >= 0). `where` names the file."""
    if labels is None:
        return
    if labels.dtype == np.bool_ or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{where}: 'y' must hold integer class labels, got dtype {labels.dtype}")
    if labels.ndim != 1:
        raise DataError(f"{where}: 'y' must be a 1-D array with one label per sample, got shape "
                        f"{list(labels.shape)}")
    hi = math.inf if n_classes is None else n_classes
    bad = np.flatnonzero((labels < 0) | (labels >= hi))
    if bad.size:
        i = int(bad[0])
        allowed = "must be >= 0" if n_classes is None else f"must lie in 0..{n_classes - 1} (the model has " \
                                                           f"{n_classes} outputs)"
        raise DataError(f"{where}: 'y' holds label {labels[i]} at index {i}; labels {allowed}")


def load_npz(path, input_names: list[str], limit: int | None = None, what: str = "data file") -> Dataset:
    """The inputs (float32) and labels of an npz data file; `limit`: read only the first `limit` samples."""
    path = str(path)
    with NpzReader(path, what) as z:
        if len(input_names) == 1 and "x" in z.members:
            keys = {input_names[0]: "x"}
        else:
            missing = [n for n in input_names if n not in z.members]
            if missing:
                expected = "'x'" if len(input_names) == 1 else ", ".join(map(repr, input_names))
                raise DataError(f"{path}: no array {expected} for the model input(s); keys present: "
                                f"{sorted(z.members)}")
            keys = {n: n for n in input_names}
        headers = {name: z.members[key] for name, key in keys.items()}
        for name, m in headers.items():
            if not m.shape:
                raise DataError(f"{path}: {keys[name]!r} is a scalar; it must be an array with one row per sample")
        sizes = {keys[name]: m.shape[0] for name, m in headers.items()}
        if len(set(sizes.values())) != 1:
            raise DataError(f"{path}: the input arrays hold different numbers of samples {sizes}")
        n = next(iter(sizes.values()))
        if n == 0:
            raise DataError(f"{path}: {', '.join(map(repr, sizes))} holds 0 samples; the {what} needs at least one")
        y = z.members.get("y")
        if y is not None and (len(y.shape) != 1 or y.shape[0] != n):
            raise DataError(f"{path}: 'y' must be a 1-D array with one label per sample ({n}), got shape "
                            f"{list(y.shape)}")
        rows = n if limit is None else min(limit, n)
        budget = data_limit_bytes()
        inputs = {}
        for name, key in keys.items():
            m = headers[name]
            # the float32 copy is what stays in memory
            inputs[name] = as_float32_input(z.read(key, rows, budget=budget * m.dtype.itemsize //
                                                   max(m.dtype.itemsize, 4)), f"{path}: {key!r}")
            budget -= inputs[name].nbytes
        labels = None if y is None else z.read("y", rows, budget=budget)
    check_labels(labels, None, path)
    return Dataset(inputs, labels, path, file_sha256(path))


def file_sha256(path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
